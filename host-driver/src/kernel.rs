//! [`BlockTransport`] over a kernel block device (`/dev/vdX`, the guest's own
//! virtio-blk driver), opened `O_RDWR | O_DIRECT` so that every read reaches the device
//! (the page cache would otherwise serve stale responses).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::mem::IoBuf;
use crate::transport::{BlockOp, BlockTransport, Dir, Lane};

/// A PoV device seen through the kernel's block layer.
///
/// IO is synchronous `pwrite`/`pread` (one request at a time per calling thread; many
/// threads may call at once). No lock: admin exchanges are kept apart by mailboxes.
pub struct KernelTransport {
    file: File,
    path: PathBuf,
    capacity: u64,
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
        Ok(KernelTransport { file, path: path.to_path_buf(), capacity })
    }

    fn one(&self, op: &mut BlockOp<'_>) -> io::Result<()> {
        op.check()?;
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
    }
}
