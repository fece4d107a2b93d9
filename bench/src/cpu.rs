//! CPU time of processes, from `/proc/<pid>/stat` (fields 14 `utime` and 15 `stime`,
//! see proc(5)): user + system time of every thread of the process, in clock ticks
//! (`sysconf(_SC_CLK_TCK)`, normally 100 per second, so the resolution is 10 ms).

use std::collections::BTreeMap;

/// User + system CPU time of process `pid`, in seconds.
///
/// Errors: the process does not exist, or its stat line cannot be parsed.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("read {path}: {e}"))?;
    let ticks = parse_stat_ticks(&s).ok_or_else(|| anyhow::anyhow!("{path}: unexpected format"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_ticks(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11, stime index 12.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds of a named set of processes at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample(BTreeMap<String, (u32, f64)>);

impl CpuSample {
    /// Samples every `(name, pid)`. A process that cannot be read is left out, with a
    /// warning (it may have exited).
    pub fn take(pids: &[(String, u32)]) -> CpuSample {
        let mut m = BTreeMap::new();
        for (name, pid) in pids {
            match cpu_seconds(*pid) {
                Ok(s) => {
                    m.insert(name.clone(), (*pid, s));
                }
                Err(e) => log::warn!("CPU time of {name}: {e}"),
            }
        }
        CpuSample(m)
    }

    /// CPU seconds used by each process between `self` and `later`, with its PID.
    pub fn delta(&self, later: &CpuSample) -> BTreeMap<String, (u32, f64)> {
        self.0
            .iter()
            .filter_map(|(name, (pid, a))| {
                let (_, b) = later.0.get(name)?;
                Some((name.clone(), (*pid, (b - a).max(0.0))))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = "1234 (a b) c) R 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(line), Some(267));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        // Spin until /proc shows 30 ms more CPU time; a frozen or wrong counter never
        // does, and the 10 s cap turns that into a failure instead of a hang.
        let me = std::process::id();
        let a = cpu_seconds(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds(me).unwrap() - a < 0.03 {
            assert!(t.elapsed().as_secs() < 10, "CPU time did not grow while spinning");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
