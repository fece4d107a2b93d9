//! [`BlockTransport`] over a kernel block device (`/dev/vdX`, the guest's own
//! virtio-blk driver), opened `O_RDWR | O_DIRECT` so that every read reaches the device
//! (the page cache would otherwise serve stale responses). Joint batches (a request
//! WRITE and its response READ) go through an io_uring per thread, one
//! `io_uring_enter(2)` for the whole batch.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::mem::IoBuf;
use crate::transport::{BlockOp, BlockTransport, Dir, Lane};

/// Entries of each thread's io_uring: the largest joint batch.
const RING_ENTRIES: u32 = 8;

thread_local! {
    /// This thread's io_uring for joint batches: created at first use; `Err` (kept, so
    /// that it is tried once per thread) where the kernel or a seccomp filter refuses
    /// io_uring, and then joint batches run op by op.
    /// Kept with the PID that made it: after a `fork(2)` the child's copy of this
    /// thread's ring is the parent's (shared mappings), so the child makes its own.
    static RING: RefCell<Option<(u32, io::Result<io_uring::IoUring>)>> = const { RefCell::new(None) };
}

/// A PoV device seen through the kernel's block layer.
///
/// IO is synchronous `pwrite`/`pread`, or one io_uring submission per joint batch (one
/// request at a time per calling thread; many threads may call at once). No lock:
/// admin exchanges are kept apart by mailboxes.
pub struct KernelTransport {
    file: File,
    path: PathBuf,
    capacity: u64,
    /// See [`BlockTransport::round_trips`].
    round_trips: AtomicU64,
}

impl KernelTransport {
    /// Opens `path` read-write with `O_DIRECT`.
    ///
    /// Errors: the `open(2)` errno (`EACCES` without permission on the device node,
    /// `EINVAL` on a file system without direct IO), or a seek failure while sizing it.
    pub fn open(path: &Path) -> io::Result<KernelTransport> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {} (O_RDWR|O_DIRECT): {e}", path.display())))?;
        let capacity = file.seek(SeekFrom::End(0))?;
        Ok(KernelTransport { file, path: path.to_path_buf(), capacity, round_trips: AtomicU64::new(0) })
    }

    /// Runs a checked joint batch through this thread's io_uring. `None`: no io_uring
    /// here (the caller runs the ops one by one).
    fn joint(&self, ops: &mut [BlockOp<'_>]) -> Option<io::Result<()>> {
        if ops.len() > RING_ENTRIES as usize {
            return None;
        }
        RING.with(|cell| {
            let mut cell = cell.borrow_mut();
            let pid = std::process::id();
            if cell.as_ref().is_some_and(|(made_by, _)| *made_by != pid) {
                // A forked child: drop its view of the parent's ring (closing the child's
                // descriptor and mappings leaves the parent's ring alone).
                *cell = None;
            }
            let (_, ring) = cell.get_or_insert_with(|| {
                let ring = io_uring::IoUring::new(RING_ENTRIES)
                    .inspect_err(|e| log::debug!("no io_uring ({e}): requests take two round trips"));
                (pid, ring)
            });
            let ring = ring.as_mut().ok()?;
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let results = match crate::mem::uring_rw(ring, self.file.as_raw_fd(), ops) {
                Ok(r) => r,
                Err(e) => {
                    // Nothing is in flight (see uring_rw): a fresh ring next time.
                    *cell = None;
                    return Some(Err(io::Error::new(e.kind(), format!("io_uring_enter on {}: {e}", self.path.display()))));
                }
            };
            for (o, r) in ops.iter().zip(results) {
                if r != o.len as i32 {
                    let verb = if o.dir == Dir::Write { "write" } else { "read" };
                    let e = if r < 0 { io::Error::from_raw_os_error(-r) } else { io::Error::from(io::ErrorKind::UnexpectedEof) };
                    let why = if r < 0 { e.to_string() } else { format!("moved {r} bytes") };
                    return Some(Err(io::Error::new(
                        e.kind(),
                        format!(
                            "io_uring {verb} of {} bytes at device offset {:#x} on {}: {why}",
                            o.len,
                            o.dev_offset,
                            self.path.display()
                        ),
                    )));
                }
            }
            Some(Ok(()))
        })
    }

    fn one(&self, op: &mut BlockOp<'_>) -> io::Result<()> {
        op.check()?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let range = op.buf_offset..op.buf_offset + op.len;
        let res = match op.dir {
            Dir::Write => self.file.write_all_at(&op.buf[range], op.dev_offset),
            Dir::Read => self.file.read_exact_at(&mut op.buf[range], op.dev_offset),
        };
        res.map_err(|e| {
            let verb = if op.dir == Dir::Write { "pwrite" } else { "pread" };
            io::Error::new(
                e.kind(),
                format!("{verb} of {} bytes at device offset {:#x} on {}: {e}", op.len, op.dev_offset, self.path.display()),
            )
        })
    }
}

impl BlockTransport for KernelTransport {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn alloc_buf(&self, len: usize) -> io::Result<IoBuf> {
        IoBuf::aligned(len)
    }

    fn submit(&self, _lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        ops.iter_mut().try_for_each(|op| self.one(op))
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn submit_joint(&self, lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        ops.iter().try_for_each(BlockOp::check)?;
        if ops.len() < 2 {
            return self.submit(lane, ops);
        }
        match self.joint(ops) {
            Some(r) => r,
            None => self.submit(lane, ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exercises the transport on a regular file when the temp file system supports
    /// O_DIRECT (tmpfs does not; then the test only checks that the error is clear).
    #[test]
    fn direct_io_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let t = match KernelTransport::open(&p) {
            Ok(t) => t,
            Err(e) => {
                assert!(e.to_string().contains("O_DIRECT"), "{e}");
                return;
            }
        };
        assert_eq!(t.capacity(), 1 << 20);
        let mut w = t.alloc_buf(8192).unwrap();
        w[..4].copy_from_slice(b"PoV!");
        w[4096..4100].copy_from_slice(b"tail");
        let mut r = t.alloc_buf(8192).unwrap();
        t.submit(Lane::Data(0), &mut [BlockOp::write(65536, &mut w, 8192), BlockOp::read(65536, &mut r, 8192)]).unwrap();
        assert_eq!(&r[..4], b"PoV!");
        assert_eq!(&r[4096..4100], b"tail");
        // Reading past the end is a clear error, not a silent short read.
        let e = t.submit(Lane::Admin, &mut [BlockOp::read((1 << 20) - 512, &mut r, 1024)]).unwrap_err();
        assert!(e.to_string().contains("pread"), "{e}");
        // A joint batch (io_uring where the kernel allows it) moves the same bytes;
        // its ops are not ordered, so they touch different places here.
        w[..4].copy_from_slice(b"ring");
        let mut r2 = t.alloc_buf(8192).unwrap();
        t.submit_joint(Lane::Data(0), &mut [BlockOp::write(131072, &mut w, 4096), BlockOp::read(65536, &mut r2, 8192)]).unwrap();
        assert_eq!(&r2[4096..4100], b"tail");
        t.submit_joint(Lane::Data(0), &mut [BlockOp::read(131072, &mut r2, 512), BlockOp::read(0, &mut r, 512)]).unwrap();
        assert_eq!(&r2[..4], b"ring");
        let e = t
            .submit_joint(Lane::Data(0), &mut [BlockOp::read(0, &mut r, 512), BlockOp::read((1 << 20) - 512, &mut r2, 1024)])
            .unwrap_err();
        assert!(e.to_string().contains("1024 bytes at device offset 0xffe00"), "{e}");
        // Joint batches are one round trip each (where io_uring works), ops one by one
        // one each: 1 + 1 + 2 for the first `submit`, 1 for the failed read.
        let rt = t.round_trips();
        t.submit_joint(Lane::Data(0), &mut [BlockOp::write(131072, &mut w, 4096), BlockOp::read(65536, &mut r2, 8192)]).unwrap();
        t.submit(Lane::Data(0), &mut [BlockOp::write(131072, &mut w, 4096), BlockOp::read(65536, &mut r2, 8192)]).unwrap();
        let joint = if io_uring::IoUring::new(2).is_ok() { 1 } else { 2 };
        assert_eq!(t.round_trips() - rt, joint + 2);
    }
}
