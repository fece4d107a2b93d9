//! [`BlockTransport`] over a vhost-user-blk socket through libblkio (crate `blkio`,
//! driver `virtio-blk-vhost-user`): the host path when no kernel driver sits between
//! the application and the PoV device.
//!
//! libblkio can only do IO to memory it has mapped for the device, so every buffer comes
//! from a pool of mapped regions. Each libblkio queue is guarded by a mutex; PoV queue `i` of a
//! session travels on data queue `i % data_queues` and admin traffic on a queue of its
//! own when the device offers more than one. A request and its response READ go out in
//! one `do_io` call: one device round trip.
//!
//! libblkio cannot issue virtio-blk GET_ID, so a PoV device is recognised here by the
//! configuration space magic only.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blkio::{Blkio, Blkioq, ReqFlags};

use crate::mem::{blkio_err, blkio_reap, IoBuf, RegionPool};
use crate::transport::{BlockOp, BlockTransport, Dir, Lane};

/// libblkio driver name for vhost-user-blk.
pub const DRIVER: &str = "virtio-blk-vhost-user";

struct QueueState {
    q: Blkioq,
    /// Set when an IO was abandoned on this queue; the queue is not used again.
    broken: Option<String>,
}

/// A PoV device reached through a vhost-user-blk UNIX socket.
pub struct VhostUserTransport {
    // Dropped first: queues, then the pool, then libblkio itself.
    queues: Vec<Mutex<QueueState>>,
    pool: Arc<RegionPool>,
    _blkio: Arc<Mutex<Blkio>>,
    path: PathBuf,
    capacity: u64,
    timeout: Option<Duration>,
    /// Set by [`BlockTransport::abandon`].
    abandoned: AtomicBool,
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
        let queues: Vec<_> = started.queues.into_iter().map(|q| Mutex::new(QueueState { q, broken: None })).collect();
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
        })
    }

    /// Number of libblkio queues in use.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }
}

impl BlockTransport for VhostUserTransport {
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn describe(&self) -> String {
        format!("vhost-user:{}", self.path.display())
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn alloc_buf(&self, len: usize) -> io::Result<IoBuf> {
        self.pool.alloc(len)
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
        let qi = queue_for(lane, self.queues.len());
        let mut st = self.queues[qi].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &st.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("libblkio queue {qi} retired: {why}")));
        }
        // Admin exchanges never wait for a proxy: a short bound tells a dead device.
        let timeout = match lane {
            Lane::Admin => Some(self.timeout.map_or(ADMIN_IO_TIMEOUT, |t| t.min(ADMIN_IO_TIMEOUT))),
            Lane::Data(_) => self.timeout,
        };
        for (i, op) in ops.iter_mut().enumerate() {
            let ptr = op.buf.ptr_at(op.buf_offset);
            // The buffer stays borrowed (and so alive and unmoved) until blkio_reap below
            // has seen this request complete, or is marked in doubt if it never does.
            match op.dir {
                Dir::Read => st.q.read(op.dev_offset, ptr, op.len, i, ReqFlags::empty()),
                Dir::Write => st.q.write(op.dev_offset, ptr, op.len, i, ReqFlags::empty()),
            }
        }
        let reaped = match blkio_reap(&mut st.q, ops.len(), timeout, &self.abandoned) {
            Ok(r) => r,
            Err(e) => {
                // Requests may still be in flight: never touch this queue or these
                // buffers' memory again.
                st.broken = Some(e.to_string());
                for op in ops.iter_mut() {
                    op.buf.set_in_doubt();
                }
                return Err(io::Error::new(e.kind(), format!("{}: {e}", self.describe())));
            }
        };
        let mut results: Vec<Option<io::Result<()>>> = (0..ops.len()).map(|_| None).collect();
        for r in reaped {
            if let Some(slot) = results.get_mut(r.user_data) {
                *slot = Some(r.result);
            }
        }
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
                None => return Err(io::Error::other("libblkio returned a completion for an unknown request")),
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
