//! Workload shapes: which block IOs a job issues, in what order, over which byte range.
//!
//! Offsets are byte offsets, always a multiple of the block size. Random patterns draw
//! uniformly over the region; sequential patterns walk it from the job's start point and
//! wrap around (fio's `rw=read`/`rw=randread` semantics).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Direction of one IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Dir {
    /// Device or file to memory.
    Read,
    /// Memory to device or file.
    Write,
}

/// Access pattern, named as in fio's `rw=` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Uniformly random reads.
    Randread,
    /// Uniformly random writes.
    Randwrite,
    /// Uniformly random offsets, each IO a read with probability `read_pct`%.
    Randrw,
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
}

/// One IO to issue: direction, byte offset and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    /// Direction.
    pub dir: Dir,
    /// Byte offset in the device or file (a multiple of the block size).
    pub offset: u64,
    /// Length in bytes (the block size).
    pub len: usize,
}

/// Generates the IOs of one job.
#[derive(Debug)]
pub struct Workload {
    pattern: Pattern,
    read_pct: u8,
    block: u64,
    blocks: u64,
    cursor: u64,
    rng: SmallRng,
}

impl Workload {
    /// A job doing `pattern` with IOs of `block` bytes over the first `region` bytes;
    /// sequential jobs start at block `start_block` (mod the region). `read_pct` (0–100)
    /// only matters for [`Pattern::Randrw`]. `seed` makes the offset sequence repeatable.
    ///
    /// Errors: a zero block size, or a region smaller than one block.
    pub fn new(
        pattern: Pattern,
        read_pct: u8,
        block: usize,
        region: u64,
        start_block: u64,
        seed: u64,
    ) -> anyhow::Result<Workload> {
        anyhow::ensure!(block > 0, "block size must not be zero");
        let blocks = region / block as u64;
        anyhow::ensure!(blocks > 0, "region of {region} bytes holds no {block}-byte block");
        Ok(Workload {
            pattern,
            read_pct: read_pct.min(100),
            block: block as u64,
            blocks,
            cursor: start_block % blocks,
            rng: SmallRng::seed_from_u64(seed),
        })
    }

    /// The next IO.
    pub fn next_io(&mut self) -> Io {
        let (dir, block) = match self.pattern {
            Pattern::Randread => (Dir::Read, self.rng.gen_range(0..self.blocks)),
            Pattern::Randwrite => (Dir::Write, self.rng.gen_range(0..self.blocks)),
            Pattern::Randrw => {
                let dir = if self.rng.gen_range(0..100u8) < self.read_pct { Dir::Read } else { Dir::Write };
                (dir, self.rng.gen_range(0..self.blocks))
            }
            Pattern::Read | Pattern::Write => {
                let b = self.cursor;
                self.cursor = (self.cursor + 1) % self.blocks;
                (if self.pattern == Pattern::Read { Dir::Read } else { Dir::Write }, b)
            }
        };
        Io { dir, offset: block * self.block, len: self.block as usize }
    }
}

/// Parses a size with an optional binary suffix: `4096`, `4k`, `64K`, `1m`, `2g`.
///
/// Errors: an empty or malformed number, or an overflow.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(format!("unknown size suffix in '{s}' (use k, m or g)")),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size"))?;
    n.checked_mul(mul).ok_or_else(|| format!("size '{s}' overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_offsets_are_aligned_and_in_range() {
        let mut w = Workload::new(Pattern::Randread, 100, 4096, 1 << 20, 0, 1).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let io = w.next_io();
            assert_eq!(io.dir, Dir::Read);
            assert_eq!(io.offset % 4096, 0);
            assert!(io.offset + 4096 <= 1 << 20);
            seen.insert(io.offset);
        }
        assert_eq!(seen.len(), 256, "every block of the region is reached");
    }

    #[test]
    fn mix_follows_read_percentage() {
        let mut w = Workload::new(Pattern::Randrw, 70, 4096, 1 << 30, 0, 7).unwrap();
        let reads = (0..100_000).filter(|_| w.next_io().dir == Dir::Read).count();
        assert!((68_000..72_000).contains(&reads), "{reads} reads of 100000");
    }

    #[test]
    fn sequential_wraps_from_start_block() {
        let mut w = Workload::new(Pattern::Write, 0, 1 << 20, 3 << 20, 2, 0).unwrap();
        let offs: Vec<u64> = (0..4).map(|_| w.next_io().offset).collect();
        assert_eq!(offs, vec![2 << 20, 0, 1 << 20, 2 << 20]);
        assert!(Workload::new(Pattern::Read, 0, 4096, 100, 0, 0).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999g").is_err());
    }
}
