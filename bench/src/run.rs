//! Command-line options and the orchestration of one benchmark run: jobs on threads,
//! warm-up, CPU samples around the measured interval, aggregation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;

use crate::block::BlockTarget;
use crate::cpu::CpuSample;
use crate::engine::{self, Conn, JobResult, Stop, Target};
use crate::pov::{PovFileSpec, PovFileTarget};
use crate::report::{latency, quantiles, CpuUse, Report};
use crate::workload::{parse_size, Pattern, Workload};
use pov_proto::crypto::Protection;

/// What a job drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Plain virtio-blk IO to the socket (a volume, qemu-storage-daemon, SPDK, ...).
    Block,
    /// PoV file IO through the whole path (the socket must be a PoV device).
    PovFile,
}

/// pov-bench: load generator for PoV devices, PoV volumes and any vhost-user-blk socket.
#[derive(Debug, Parser)]
#[command(name = "pov-bench", version)]
pub struct Options {
    /// vhost-user-blk socket to measure.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// block: virtio-blk IO to the device; pov-file: PoV file IO through the whole path.
    #[arg(long, value_enum, default_value = "block")]
    pub mode: Mode,
    /// Access pattern (fio's names).
    #[arg(long, value_enum, default_value = "randread")]
    pub pattern: Pattern,
    /// Percent reads for `randrw`.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_pct: u8,
    /// IO size: bytes, or with a k/m suffix (4k, 64k, 1m). A multiple of 512.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// IOs in flight per job (1-128).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub qd: u16,
    /// Jobs at once: each has its own libblkio connection (and, in pov-file mode, its
    /// own PoV session and file).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Measure for this many seconds ...
    #[arg(long, value_name = "SECS", default_value_t = 3.0, conflicts_with = "ios")]
    pub time: f64,
    /// ... or until this many IOs per job have completed.
    #[arg(long, value_name = "N")]
    pub ios: Option<u64>,
    /// Unmeasured warm-up before the measured interval, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    pub warmup: f64,
    /// Bytes of the device (block mode) or file (pov-file mode) to spread IO over.
    #[arg(long, default_value = "256m", value_parser = parse_size)]
    pub size: u64,
    /// Idle this many seconds after set-up and warm-up, right before the measured
    /// interval (with `--ios 1`: the latency of the first request after idling).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub idle_before: f64,
    /// Busy-poll for completions instead of sleeping until one arrives.
    #[arg(long)]
    pub poll: bool,
    /// pov-file mode: tenant of the session (repeat for jobs of different tenants,
    /// assigned round-robin). The secret comes from $POV_SECRET or --secret-file.
    #[arg(long, default_value = "bench")]
    pub tenant: Vec<String>,
    /// pov-file mode: file holding the tenant secret (instead of $POV_SECRET; default
    /// $POV_SECRET_FILE).
    #[arg(long, env = "POV_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// pov-file mode: open sessions whose response payloads are authenticated but not
    /// encrypted (the session's protection; default: encrypted).
    #[arg(long)]
    pub integrity_only: bool,
    /// pov-file mode: file path; job N uses PATH.N when there are several jobs.
    #[arg(long, default_value = "/pov-bench/data")]
    pub file: String,
    /// Another process whose CPU time to report, as NAME=PID (repeatable).
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid)]
    pub pids: Vec<(String, u32)>,
    /// Label of the run in the table and JSON.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the JSON record to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print only the table row (no header).
    #[arg(long)]
    pub no_header: bool,
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("'{s}' is not NAME=PID"))?;
    let pid = pid.parse().map_err(|_| format!("'{pid}' is not a process ID"))?;
    if name.is_empty() {
        return Err("empty process name".into());
    }
    Ok((name.to_string(), pid))
}

fn secret(o: &Options) -> anyhow::Result<Vec<u8>> {
    if let Some(f) = &o.secret_file {
        let s = std::fs::read(f).with_context(|| format!("read secret file {}", f.display()))?;
        return Ok(s.trim_ascii_end().to_vec());
    }
    std::env::var("POV_SECRET")
        .map(String::into_bytes)
        .map_err(|_| anyhow::anyhow!("pov-file mode needs $POV_SECRET or --secret-file"))
}

struct Job {
    // Dropped first: the target's memory and session, then the connection.
    target: Box<dyn Target>,
    conn: Conn,
    workload: Workload,
}

fn setup_job(o: &Options, i: usize, secret: &[u8]) -> anyhow::Result<Job> {
    let bs = o.bs as usize;
    let mut conn = Conn::connect(&o.socket)?;
    let target: Box<dyn Target> = match o.mode {
        Mode::Block => {
            anyhow::ensure!(conn.capacity >= o.bs, "device of {} bytes is smaller than one IO", conn.capacity);
            Box::new(BlockTarget::new(&mut conn.blkio, o.qd as usize, bs)?)
        }
        Mode::PovFile => {
            let path = if o.jobs > 1 { format!("{}.{i}", o.file) } else { o.file.clone() };
            let protection = if o.integrity_only { Protection::IntegrityOnly } else { Protection::Confidential };
            let spec = PovFileSpec {
                tenant: o.tenant[i % o.tenant.len()].clone(),
                secret: secret.to_vec(),
                path,
                size: o.size,
                protection,
            };
            Box::new(PovFileTarget::new(&mut conn.blkio, &o.socket, &spec, o.qd as usize, bs)?)
        }
    };
    let region = match o.mode {
        Mode::Block => o.size.min(conn.capacity),
        Mode::PovFile => o.size,
    };
    let blocks = region / o.bs;
    let workload = Workload::new(o.pattern, o.read_pct, bs, region, blocks * i as u64 / o.jobs as u64, 0x9e37 + i as u64)?;
    Ok(Job { target, conn, workload })
}

/// Runs the benchmark described by `o` and returns its figures.
///
/// Errors: bad options, connection or session setup failures, any failed IO (the run
/// stops: a benchmark that drops errors would report wrong figures).
pub fn run(o: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(o.bs > 0 && o.bs % 512 == 0, "--bs must be a non-zero multiple of 512");
    anyhow::ensure!(
        o.time > 0.0 && o.warmup >= 0.0 && o.idle_before >= 0.0,
        "--time must be positive, --warmup and --idle-before not negative"
    );
    let secret = if o.mode == Mode::PovFile { secret(o)? } else { Vec::new() };
    let jobs = o.jobs as usize;
    let bar = Arc::new(Barrier::new(jobs + 1));
    let stop = match o.ios {
        Some(n) => Stop::Ios(n),
        None => Stop::Time(Duration::from_secs_f64(o.time)),
    };
    let mut pids = o.pids.clone();
    pids.push(("pov-bench".into(), std::process::id()));
    let (before, after, results) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|i| {
                let bar = Arc::clone(&bar);
                let secret = &secret;
                s.spawn(move || -> anyhow::Result<JobResult> {
                    let job = setup_job(o, i, secret).with_context(|| format!("job {i}: setup"));
                    bar.wait();
                    let job = job.and_then(|mut j| {
                        if o.warmup > 0.0 {
                            let w = Stop::Time(Duration::from_secs_f64(o.warmup));
                            engine::run(&mut j.conn, j.target.as_mut(), &mut j.workload, o.qd as usize, w, o.poll)
                                .with_context(|| format!("job {i}: warm-up"))?;
                        }
                        Ok(j)
                    });
                    bar.wait();
                    bar.wait();
                    let res = job.and_then(|mut j| {
                        let r = engine::run(&mut j.conn, j.target.as_mut(), &mut j.workload, o.qd as usize, stop, o.poll)
                            .with_context(|| format!("job {i}"))?;
                        Ok((r, j))
                    });
                    bar.wait();
                    bar.wait();
                    res.map(|(r, j)| {
                        drop(j);
                        r
                    })
                })
            })
            .collect();
        bar.wait();
        bar.wait();
        if o.idle_before > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(o.idle_before));
        }
        let before = CpuSample::take(&pids);
        bar.wait();
        bar.wait();
        let after = CpuSample::take(&pids);
        bar.wait();
        let results: Vec<anyhow::Result<JobResult>> =
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("job thread panicked")))).collect();
        (before, after, results)
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut ios, mut bytes, mut secs) = (0u64, 0u64, 0f64);
    for r in results {
        let r = r?;
        hist.add(&r.hist)?;
        ios += r.ios;
        bytes += r.bytes;
        secs = secs.max(r.elapsed.as_secs_f64());
    }
    anyhow::ensure!(ios > 0 && secs > 0.0, "no IO completed");
    let cpu: BTreeMap<String, CpuUse> = before
        .delta(&after)
        .into_iter()
        .map(|(n, (pid, s))| (n, CpuUse { pid, seconds: s, pct_of_cpu: 100.0 * s / secs, us_per_io: 1e6 * s / ios as f64 }))
        .collect();
    Ok(Report {
        label: o.label.clone(),
        target: o.socket.display().to_string(),
        mode: match o.mode {
            Mode::Block => "block".into(),
            Mode::PovFile => "pov-file".into(),
        },
        pattern: o.pattern,
        read_pct: o.read_pct,
        block_size: o.bs as usize,
        qd: o.qd as usize,
        jobs,
        ios,
        seconds: secs,
        iops: ios as f64 / secs,
        mib_s: bytes as f64 / secs / (1 << 20) as f64,
        lat_us: latency(&hist),
        quantiles: quantiles(&hist),
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let o = Options::try_parse_from([
            "pov-bench",
            "--socket",
            "/tmp/s",
            "--bs",
            "1m",
            "--qd",
            "32",
            "--pid",
            "dpud=42",
            "--pattern",
            "randrw",
        ])
        .unwrap();
        assert_eq!(o.bs, 1 << 20);
        assert_eq!(o.pids, vec![("dpud".to_string(), 42)]);
        assert!(Options::try_parse_from(["pov-bench", "--socket", "/s", "--qd", "129"]).is_err());
        let o = Options::try_parse_from(["pov-bench", "--socket", "/s", "--ios", "1", "--idle-before", "2"]).unwrap();
        assert_eq!((o.ios, o.idle_before), (Some(1), 2.0));
        assert!(Options::try_parse_from(["pov-bench", "--socket", "/s", "--pid", "x"]).is_err());
        assert!(Options::try_parse_from(["pov-bench", "--socket", "/s", "--time", "1", "--ios", "5"]).is_err());
    }
}
