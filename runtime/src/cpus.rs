//! CPU lists as operators write them (`0,2-3`), shared by every daemon's `--cpus`.

/// Most CPUs a list may name (indexes 0..1024, the kernel's `CPU_SETSIZE`).
pub const MAX_CPUS: usize = 1024;

/// Parses `0,2-3` into `[0, 2, 3]` (in the order given).
///
/// Errors: empty items, non-numbers, reversed ranges, duplicates, indexes of
/// [`MAX_CPUS`] or more.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let num = |t: &str| -> Result<usize, String> {
        let v: usize = t.trim().parse().map_err(|_| format!("{t:?} is not a CPU number"))?;
        if v >= MAX_CPUS {
            return Err(format!("CPU {v} is out of range (max {})", MAX_CPUS - 1));
        }
        Ok(v)
    };
    let mut out = Vec::new();
    for item in s.split(',') {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(item)?;
                (v, v)
            }
        };
        if a > b {
            return Err(format!("reversed range {item:?}"));
        }
        for c in a..=b {
            if out.contains(&c) {
                return Err(format!("CPU {c} listed twice"));
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// Formats CPUs as a list with ranges (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// Checks that every CPU of `cpus` exists and this process may run on it (its
/// affinity mask, `sched_getaffinity(2)`), so that `--cpus 0-99` on a 2-CPU machine is
/// refused instead of starting 98 reactors that cannot be pinned.
///
/// Errors: a message naming the first CPU that is not available and the ones that are.
pub fn check_available(cpus: &[usize]) -> Result<(), String> {
    let allowed = crate::sys::allowed_cpus().map_err(|e| format!("cannot read this process's CPU affinity: {e}"))?;
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(c) => {
            Err(format!("CPU {c} does not exist or is not available to this process (available: {})", format_cpu_list(&allowed)))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_strictly() {
        assert_eq!(parse_cpu_list("1").unwrap(), [1]);
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), [0, 2, 3]);
        assert_eq!(parse_cpu_list("2-4, 7").unwrap(), [2, 3, 4, 7]);
        for bad in ["", "a", "3-1", "1,1", "0-", "1024", "1,,2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 6]), "0-3,6");
    }

    #[test]
    fn cpus_beyond_the_machine_are_refused() {
        let allowed = crate::sys::allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        check_available(&allowed).unwrap();
        let e = check_available(&[MAX_CPUS - 1]).unwrap_err();
        assert!(e.contains("CPU 1023 does not exist") && e.contains("available: "), "{e}");
    }
}
