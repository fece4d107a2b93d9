//! Results of one benchmark run: a table row on stdout and a JSON record.
//!
//! JSON shape (one object per run): `label`, `target`, `mode`, `pattern`, `read_pct`,
//! `block_size` (bytes), `qd`, `jobs`, `ios`, `seconds`, `iops`, `mib_s` (MiB/s, 2^20
//! bytes), `lat_us` {`mean`, `p50`, `p99`, `p999`, `max`} in microseconds, `quantiles`
//! ([quantile, µs] pairs for plotting the latency distribution), `cpu`
//! {name: {`pid`, `seconds`, `pct_of_cpu`, `us_per_io`}}.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::Pattern;

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// CPU used by one process during the measured interval.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// Process ID.
    pub pid: u32,
    /// User + system CPU seconds.
    pub seconds: f64,
    /// Percent of one CPU over the interval.
    pub pct_of_cpu: f64,
    /// CPU microseconds per IO.
    pub us_per_io: f64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free-form label given on the command line.
    pub label: String,
    /// The socket measured.
    pub target: String,
    /// `block` or `pov-file`.
    pub mode: String,
    /// Access pattern.
    pub pattern: Pattern,
    /// Percent reads (for `randrw`).
    pub read_pct: u8,
    /// IO size in bytes.
    pub block_size: usize,
    /// IOs in flight per job.
    pub qd: usize,
    /// Jobs (sessions/connections) at once.
    pub jobs: usize,
    /// IOs completed.
    pub ios: u64,
    /// Measured wall-clock seconds.
    pub seconds: f64,
    /// IOs per second.
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
    /// Latency summary.
    pub lat_us: Latency,
    /// `[quantile, latency µs]` pairs.
    pub quantiles: Vec<[f64; 2]>,
    /// CPU time per process (the benchmark itself is `pov-bench`).
    pub cpu: BTreeMap<String, CpuUse>,
}

/// Quantiles written to `quantiles` for plots.
pub const PLOT_QUANTILES: [f64; 17] =
    [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

/// Latency summary of a histogram of nanoseconds.
pub fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        mean: h.mean() / 1000.0,
        p50: us(h.value_at_quantile(0.5)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    }
}

/// `[quantile, µs]` pairs of a histogram of nanoseconds at [`PLOT_QUANTILES`].
pub fn quantiles(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    PLOT_QUANTILES.iter().map(|&q| [q, h.value_at_quantile(q) as f64 / 1000.0]).collect()
}

impl Report {
    /// Table header matching [`Report::row`].
    pub fn header() -> String {
        format!(
            "{:<22} {:<9} {:>6} {:>3} {:>4} {:>10} {:>9} {:>9} {:>9} {:>9}  cpu (% of a CPU, µs/IO)",
            "label", "pattern", "bs", "qd", "jobs", "IOPS", "MiB/s", "p50 µs", "p99 µs", "p99.9 µs"
        )
    }

    /// One table line.
    pub fn row(&self) -> String {
        let cpu: Vec<String> = self.cpu.iter().map(|(n, c)| format!("{n} {:.0}% {:.1}", c.pct_of_cpu, c.us_per_io)).collect();
        format!(
            "{:<22} {:<9} {:>6} {:>3} {:>4} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {}",
            self.label,
            format!("{:?}", self.pattern).to_lowercase(),
            human_size(self.block_size),
            self.qd,
            self.jobs,
            self.iops,
            self.mib_s,
            self.lat_us.p50,
            self.lat_us.p99,
            self.lat_us.p999,
            cpu.join(", ")
        )
    }
}

fn human_size(b: usize) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}k", b >> 10),
        b => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_in_microseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let l = latency(&h);
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() < 1.0, "{l:?}");
        let q = quantiles(&h);
        assert_eq!(q.len(), PLOT_QUANTILES.len());
        assert!(q.windows(2).all(|w| w[0][1] <= w[1][1]));
        assert_eq!(human_size(4096), "4k");
        assert_eq!(human_size(1 << 20), "1M");
        assert_eq!(human_size(1000), "1000");
    }
}
