//! [`BlockTransport`] over a vhost-user-blk socket through libblkio (crate `blkio`,
//! driver `virtio-blk-vhost-user`): the host path when no kernel driver sits between
//! the application and the PoV device.
//!
//! libblkio can only do IO to memory it has mapped for the device, so every buffer comes
//! from a pool of mapped regions. PoV queue `i` of a session travels on data queue
//! `i % data_queues` and admin traffic on a queue of its own when the device offers more
//! than one. A request and its response READ go out in one `do_io` call: one device
//! round trip.
//!
//! Several threads share a libblkio queue without holding its lock across a round
//! trip (which made 16 threads on 3 data queues convoy: p99 25–50× p50, some threads
//! starved). The lock covers only enqueueing and reaping: a thread enqueues its
//! requests (tagged with tickets), submits them and then waits. One waiter at a time
//! is the queue's *reaper*: it sleeps on the queue's completion fd (an eventfd the
//! device signals) without the lock, reaps whatever completed, files each completion
//! under its ticket and wakes the others; a thread whose completions are all filed
//! takes them and leaves (the next waiter becomes the reaper). So requests of many
//! threads are in flight on one queue at once, and a thread waits for its own IO
//! only.
//!
//! libblkio cannot issue virtio-blk GET_ID, so a PoV device is recognised here by the
//! configuration space magic only.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, ReqFlags};

use crate::mem::{blkio_err, blkio_reap_ready, wait_eventfd, IoBuf, RegionPool};
use crate::transport::{BlockOp, BlockTransport, Dir, Lane};

/// libblkio driver name for vhost-user-blk.
pub const DRIVER: &str = "virtio-blk-vhost-user";

struct QueueState {
    q: Blkioq,
    /// Set when an IO was abandoned on this queue; the queue is not used again.
    broken: Option<String>,
    /// Completions reaped by any thread, by ticket (`user_data`), until their thread
    /// takes them.
    done: HashMap<usize, io::Result<()>>,
    /// Requests enqueued and not yet reaped.
    in_flight: usize,
    /// A thread is waiting on the completion fd for everyone (see the module docs).
    reaping: bool,
    next_ticket: usize,
}

/// One libblkio queue shared by threads (module docs).
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when the reaper filed completions or gave up its role.
    reaped: Condvar,
    /// The queue's completion fd (libblkio's eventfd, enabled at start).
    completion_fd: RawFd,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a waiter sleeps at most before looking again (an abandoned transport and
/// deadlines are noticed at this pace while the device stays silent).
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// A PoV device reached through a vhost-user-blk UNIX socket.
pub struct VhostUserTransport {
    // Dropped first: queues, then the pool, then libblkio itself.
    queues: Vec<Queue>,
    pool: Arc<RegionPool>,
    _blkio: Arc<Mutex<Blkio>>,
    path: PathBuf,
    capacity: u64,
    timeout: Option<Duration>,
    /// Set by [`BlockTransport::abandon`].
    abandoned: AtomicBool,
    /// See [`BlockTransport::round_trips`]: one per submitted batch.
    round_trips: AtomicU64,
}

/// Longest wait for one admin exchange's IO: admin requests never wait for a proxy, so
/// a device silent this long is gone (a `pov-dpud` that died), and the session moves on
/// (`crate::session`, "failover").
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Which libblkio queue carries `lane` when there are `n` queues: the last one is kept
/// for admin traffic when `n > 1`.
pub(crate) fn queue_for(lane: Lane, n: usize) -> usize {
    match (lane, n) {
        (_, 0 | 1) => 0,
        (Lane::Admin, n) => n - 1,
        (Lane::Data(i), n) => i % (n - 1),
    }
}

impl VhostUserTransport {
    /// Connects to the vhost-user-blk socket at `socket` and starts
    /// `min(data_queues + 1, device max-queues)` libblkio queues (one reserved for
    /// admin traffic when possible).
    ///
    /// `timeout` bounds every batch of IOs; `None` waits as long as the device takes.
    /// A timed-out queue is retired (its buffers are never reused).
    ///
    /// Errors: socket connection or vhost-user negotiation failures (with libblkio's
    /// message),.
    pub fn connect(socket: &Path, data_queues: usize, timeout: Option<Duration>) -> io::Result<VhostUserTransport> {
        let ctx = |what: &'static str| {
            let sock = socket.display().to_string();
            move |e: blkio::Error| {
                let e = blkio_err(what)(e);
                // Nothing listens there: say what usually is missing.
                let hint = if what == "connect" && matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
                {
                    " (no PoV device serves this socket: is pov-dpud running, and was the device created with \
                     `pov-rpc pov_device_create`? `pov-host list` shows the devices found)"
                } else {
                    ""
                };
                io::Error::new(e.kind(), format!("vhost-user socket {sock}: {e}{hint}"))
            }
        };
        let path_str = socket.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path is not UTF-8"))?;
        let mut b = Blkio::new(DRIVER).map_err(ctx("new"))?;
        b.set_str("path", path_str).map_err(ctx("set path"))?;
        b.connect().map_err(ctx("connect"))?;
        let max = b.get_i32("max-queues").map_err(ctx("get max-queues"))?.max(1) as usize;
        let want = data_queues.saturating_add(1).clamp(1, max);
        b.set_i32("num-queues", want as i32).map_err(ctx("set num-queues"))?;
        let capacity = b.get_u64("capacity").map_err(ctx("get capacity"))?;
        let seg = b.get_i32("max-segment-len").unwrap_or(0);
        if seg > 0 && (seg as u64) < pov_proto::layout::SLOT_SIZE {
            log::warn!(
                "{}: device limits segments to {seg} bytes; PoV requests of up to {} bytes may be refused",
                socket.display(),
                pov_proto::layout::SLOT_SIZE
            );
        }
        let started = b.start().map_err(ctx("start"))?;
        let blkio = Arc::new(Mutex::new(b));
        let pool = RegionPool::new(Arc::clone(&blkio))?;
        let mut queues = Vec::new();
        for mut q in started.queues {
            let completion_fd = q.get_completion_fd().ok_or_else(|| {
                io::Error::other(format!("{}: libblkio queue has no completion fd (a poll queue)", socket.display()))
            })?;
            // The device signals the fd on completions: waiters sleep on it.
            q.set_completion_fd_enabled(true);
            let state = QueueState { q, broken: None, done: HashMap::new(), in_flight: 0, reaping: false, next_ticket: 0 };
            queues.push(Queue { state: Mutex::new(state), reaped: Condvar::new(), completion_fd });
        }
        if queues.is_empty() {
            return Err(io::Error::other(format!("{}: libblkio started no queues", socket.display())));
        }
        log::debug!("{}: connected, {} queue(s) of {max}, capacity {capacity} bytes", socket.display(), queues.len());
        Ok(VhostUserTransport {
            queues,
            pool,
            _blkio: blkio,
            path: socket.to_path_buf(),
            capacity,
            timeout,
            abandoned: AtomicBool::new(false),
            round_trips: AtomicU64::new(0),
        })
    }

    /// Number of libblkio queues in use.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Submits what is enqueued on the queue of `st` and files every completion that
    /// is ready under its ticket, for the thread waiting for it.
    fn reap_into(st: &mut QueueState) -> io::Result<()> {
        let reaped = blkio_reap_ready(&mut st.q, st.in_flight.max(1))?;
        st.in_flight = st.in_flight.saturating_sub(reaped.len());
        for r in reaped {
            st.done.insert(r.user_data, r.result);
        }
        Ok(())
    }
}

impl BlockTransport for VhostUserTransport {
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("vhost-user:{}", self.path.display())
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn alloc_buf(&self, len: usize) -> io::Result<IoBuf> {
        self.pool.alloc(len, true)
    }

    fn alloc_scratch_buf(&self, len: usize) -> io::Result<IoBuf> {
        self.pool.alloc(len, false)
    }

    fn submit(&self, lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        for op in ops.iter() {
            op.check()?;
            if !op.buf.is_device_memory() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "libblkio IO buffer must come from the transport's alloc_buf",
                ));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        if self.abandoned.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, format!("{}: connection abandoned", self.describe())));
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let qi = queue_for(lane, self.queues.len());
        let queue = &self.queues[qi];
        // Admin exchanges never wait for a proxy: a short bound tells a dead device.
        let timeout = match lane {
            Lane::Admin => Some(self.timeout.map_or(ADMIN_IO_TIMEOUT, |t| t.min(ADMIN_IO_TIMEOUT))),
            Lane::Data(_) => self.timeout,
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = queue.lock();
        if let Some(why) = &st.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("libblkio queue {qi} retired: {why}")));
        }
        let base = st.next_ticket;
        st.next_ticket = st.next_ticket.wrapping_add(ops.len());
        for (i, op) in ops.iter_mut().enumerate() {
            let ptr = op.buf.ptr_at(op.buf_offset);
            // The buffer stays borrowed (and so alive and unmoved) until this thread has
            // taken this request's completion below, or is marked in doubt if it never
            // does.
            let ticket = base.wrapping_add(i);
            match op.dir {
                Dir::Read => st.q.read(op.dev_offset, ptr, op.len, ticket, ReqFlags::empty()),
                Dir::Write => st.q.write(op.dev_offset, ptr, op.len, ticket, ReqFlags::empty()),
            }
        }
        st.in_flight += ops.len();
        let mut results: Vec<Option<io::Result<()>>> = (0..ops.len()).map(|_| None).collect();
        // Submit now (and file what is already complete).
        let mut outcome = Self::reap_into(&mut st);
        let mut missing = ops.len();
        loop {
            if let Err(e) = outcome {
                // Requests may still be in flight: never touch this queue or these
                // buffers' memory again (every waiter on the queue sees `broken`).
                st.broken = Some(e.to_string());
                queue.reaped.notify_all();
                drop(st);
                for op in ops.iter_mut() {
                    op.buf.set_in_doubt();
                }
                return Err(io::Error::new(e.kind(), format!("{}: {e}", self.describe())));
            }
            for (i, slot) in results.iter_mut().enumerate() {
                if slot.is_none() {
                    if let Some(r) = st.done.remove(&base.wrapping_add(i)) {
                        *slot = Some(r);
                        missing -= 1;
                    }
                }
            }
            if missing == 0 {
                break;
            }
            let slice = deadline.map_or(WAIT_SLICE, |d| d.saturating_duration_since(Instant::now()).min(WAIT_SLICE));
            outcome = if let Some(why) = &st.broken {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("libblkio queue {qi} retired: {why}")))
            } else if self.abandoned.load(Ordering::Acquire) {
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the connection to the device was abandoned"))
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                Err(io::Error::new(io::ErrorKind::TimedOut, "libblkio do_io: timed out waiting for the device"))
            } else if !st.reaping {
                // Be the reaper: sleep on the completion fd without the lock.
                st.reaping = true;
                drop(st);
                let waited = wait_eventfd(queue.completion_fd, slice);
                st = queue.lock();
                st.reaping = false;
                let r = waited.and_then(|_| Self::reap_into(&mut st));
                queue.reaped.notify_all();
                r
            } else {
                st = queue.reaped.wait_timeout(st, slice).unwrap_or_else(|e| e.into_inner()).0;
                Ok(())
            };
        }
        drop(st);
        for (op, res) in ops.iter().zip(results) {
            match res {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let verb = if op.dir == Dir::Write { "WRITE" } else { "READ" };
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{verb} of {} bytes at device offset {:#x} on {}: {e}", op.len, op.dev_offset, self.describe()),
                    ));
                }
                None => return Err(io::Error::other("a libblkio request completed without a result")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_map_to_queues() {
        assert_eq!(queue_for(Lane::Admin, 1), 0);
        assert_eq!(queue_for(Lane::Data(3), 1), 0);
        assert_eq!(queue_for(Lane::Admin, 5), 4);
        for i in 0..4 {
            assert_eq!(queue_for(Lane::Data(i), 5), i);
        }
        assert_eq!(queue_for(Lane::Data(5), 5), 1);
        assert_eq!(queue_for(Lane::Data(7), 3), 1);
        assert_eq!(queue_for(Lane::Admin, 2), 1);
        assert_eq!(queue_for(Lane::Data(9), 2), 0);
    }

    #[test]
    fn connect_to_missing_socket_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let e = VhostUserTransport::connect(&sock, 4, None).err().expect("no server");
        assert!(e.to_string().contains("none.sock") && e.to_string().contains("is pov-dpud running"), "{e}");
        // No admin lock file any more (a world-writable one let anyone stall sessions).
        assert!(!dir.path().join("none.sock.lock").exists());
    }
}
