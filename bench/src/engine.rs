//! The load loop: keeps `qd` IOs in flight on one libblkio queue, measures each IO's
//! latency from submission to its last completion, and stops after a duration or an
//! IO count.
//!
//! What one "IO" means is up to a [`Target`]: one block request for a plain
//! vhost-user-blk device ([`crate::block::BlockTarget`]), or a request WRITE plus a
//! parked response READ for PoV file IO ([`crate::pov::PovFileTarget`]).

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion};
use hdrhistogram::Histogram;

use crate::workload::{Io, Workload};

/// libblkio driver for vhost-user-blk sockets.
pub const DRIVER: &str = "virtio-blk-vhost-user";

/// One libblkio connection with a single started queue.
pub struct Conn {
    // Dropped before `blkio`.
    /// The queue IO is submitted on.
    pub q: Blkioq,
    /// The libblkio instance (owns the memory regions).
    pub blkio: Blkio,
    /// Device capacity in bytes.
    pub capacity: u64,
}

impl Conn {
    /// Connects to the vhost-user-blk socket at `socket` with one queue.
    ///
    /// Errors: connection or negotiation failures, with libblkio's message.
    pub fn connect(socket: &Path) -> anyhow::Result<Conn> {
        let ctx = |what: &str, e: blkio::Error| anyhow::anyhow!("{}: libblkio {what}: {e}", socket.display());
        let path = socket.to_str().ok_or_else(|| anyhow::anyhow!("socket path is not UTF-8"))?;
        let mut b = Blkio::new(DRIVER).map_err(|e| ctx("new", e))?;
        b.set_str("path", path).map_err(|e| ctx("set path", e))?;
        b.connect().map_err(|e| ctx("connect", e))?;
        b.set_i32("num-queues", 1).map_err(|e| ctx("set num-queues", e))?;
        let capacity = b.get_u64("capacity").map_err(|e| ctx("get capacity", e))?;
        let mut started = b.start().map_err(|e| ctx("start", e))?;
        let q = started.queues.pop().ok_or_else(|| anyhow::anyhow!("{}: libblkio started no queue", socket.display()))?;
        Ok(Conn { q, blkio: b, capacity })
    }
}

/// What one IO of the benchmark is, on top of block requests.
pub trait Target {
    /// Most IOs this target can keep in flight (its number of slots).
    fn slots(&self) -> usize;

    /// Enqueues the block requests of `io` in slot `slot` on `q`, each with
    /// `user_data = slot`, and returns how many completions the IO will produce.
    /// The slot is free (no request of it is in flight).
    fn submit(&mut self, q: &mut Blkioq, slot: usize, io: &Io) -> usize;

    /// Called when every request of the IO in `slot` completed successfully; checks
    /// the outcome at the target's level (e.g. the PoV response status).
    ///
    /// Errors: a description of what went wrong.
    fn complete(&mut self, slot: usize) -> Result<(), String>;
}

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long: no IO is submitted after it; IOs in flight then complete and count.
    Time(Duration),
    /// After this many IOs have completed.
    Ios(u64),
}

/// Figures of one job's run.
pub struct JobResult {
    /// IOs completed and counted.
    pub ios: u64,
    /// Bytes moved by those IOs.
    pub bytes: u64,
    /// Wall-clock time from the first submission to the last counted completion.
    pub elapsed: Duration,
    /// Latency of each IO in nanoseconds.
    pub hist: Histogram<u64>,
}

struct Slot {
    start: Instant,
    pending: usize,
    len: usize,
}

/// Runs `workload` on `target` with `qd` IOs in flight until `stop`. `poll` busy-polls
/// for completions (`do_io` with `min_completions = 0`) instead of sleeping in the
/// kernel until one arrives.
///
/// Errors: an IO error completion, a target-level failure, a libblkio error; the
/// message names the IO. IOs in flight at that point are drained before returning.
pub fn run(
    conn: &mut Conn,
    target: &mut dyn Target,
    workload: &mut Workload,
    qd: usize,
    stop: Stop,
    poll: bool,
) -> anyhow::Result<JobResult> {
    anyhow::ensure!(qd >= 1 && qd <= target.slots(), "queue depth {qd} outside 1..={}", target.slots());
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut slots: Vec<Slot> = (0..qd).map(|_| Slot { start: Instant::now(), pending: 0, len: 0 }).collect();
    let mut comps: Vec<MaybeUninit<Completion>> = (0..qd * 4).map(|_| MaybeUninit::uninit()).collect();
    let (mut ios, mut bytes, mut submitted, mut inflight) = (0u64, 0u64, 0u64, 0usize);
    let mut failure: Option<String> = None;
    let t0 = Instant::now();
    let mut last = t0;
    let want_more = |submitted: u64, now: Instant| match stop {
        Stop::Time(d) => now.duration_since(t0) < d,
        Stop::Ios(n) => submitted < n,
    };
    for (i, s) in slots.iter_mut().enumerate() {
        if !want_more(submitted, Instant::now()) {
            break;
        }
        let io = workload.next_io();
        s.start = Instant::now();
        s.pending = target.submit(&mut conn.q, i, &io);
        s.len = io.len;
        submitted += 1;
        inflight += 1;
    }
    while inflight > 0 {
        let min = if poll { 0 } else { 1 };
        let n = match conn.q.do_io(&mut comps, min, None, None) {
            Ok(n) => n,
            Err(e) if e.errno() == blkio::Errno::INTR => continue,
            Err(e) => anyhow::bail!("libblkio do_io: {e}"),
        };
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let c = unsafe { c.assume_init_read() };
            let i = c.user_data;
            let Some(s) = slots.get_mut(i).filter(|s| s.pending > 0) else {
                failure.get_or_insert_with(|| format!("completion for unknown slot {i}"));
                continue;
            };
            if c.ret < 0 {
                let e = std::io::Error::from_raw_os_error(-c.ret);
                failure.get_or_insert_with(|| format!("IO in slot {i} completed with error: {e}"));
            }
            s.pending -= 1;
            if s.pending > 0 {
                continue;
            }
            inflight -= 1;
            let now = Instant::now();
            if failure.is_none() {
                if let Err(e) = target.complete(i) {
                    failure = Some(format!("IO in slot {i}: {e}"));
                }
            }
            if failure.is_some() {
                continue;
            }
            hist.saturating_record(now.duration_since(s.start).as_nanos().max(1) as u64);
            ios += 1;
            bytes += s.len as u64;
            last = now;
            if want_more(submitted, now) {
                let io = workload.next_io();
                s.start = Instant::now();
                s.pending = target.submit(&mut conn.q, i, &io);
                s.len = io.len;
                submitted += 1;
                inflight += 1;
            }
        }
    }
    if let Some(f) = failure {
        anyhow::bail!(f);
    }
    Ok(JobResult { ios, bytes, elapsed: last.duration_since(t0), hist })
}
