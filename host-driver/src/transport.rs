//! The device-access seam: how the driver moves sectors to and from a PoV device.
//!
//! [`BlockTransport`] is all the PoV protocol layer ([`crate::Device`],
//! [`crate::Session`]) needs from a block device: sector-aligned reads and writes from
//! [`IoBuf`]s, submitted in small ordered batches (no lock: admin exchanges are kept
//! apart by mailboxes, see `pov_proto::admin`). Two
//! implementations ship with the crate: [`crate::kernel::KernelTransport`] (a `/dev/vdX`
//! opened with `O_DIRECT`) and [`crate::vhost::VhostUserTransport`] (libblkio speaking
//! vhost-user to a socket).

use std::io;

use pov_proto::layout::SECTOR_SIZE;

use crate::mem::IoBuf;

/// Direction of one block IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Device to memory (virtio-blk `IN`).
    Read,
    /// Memory to device (virtio-blk `OUT`).
    Write,
}

/// Which device queue a batch should travel on.
///
/// A transport with several hardware queues keeps admin traffic off the data queues so
/// that heartbeats are not stuck behind a parked response READ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Admin requests and the configuration space.
    Admin,
    /// Data requests of the PoV queue with this index within its session (0-based).
    Data(usize),
}

/// One sector-aligned IO: `len` bytes between device byte `dev_offset` and
/// `buf[buf_offset..buf_offset + len]`.
#[derive(Debug)]
pub struct BlockOp<'a> {
    /// Direction.
    pub dir: Dir,
    /// Device byte offset; a multiple of 512.
    pub dev_offset: u64,
    /// The memory side; must come from the same transport's
    /// [`alloc_buf`](BlockTransport::alloc_buf).
    pub buf: &'a mut IoBuf,
    /// Byte offset into `buf`; a multiple of 512.
    pub buf_offset: usize,
    /// Bytes to move; a non-zero multiple of 512.
    pub len: usize,
}

impl<'a> BlockOp<'a> {
    /// A read of `len` bytes at `dev_offset` into the start of `buf`.
    pub fn read(dev_offset: u64, buf: &'a mut IoBuf, len: usize) -> BlockOp<'a> {
        BlockOp { dir: Dir::Read, dev_offset, buf, buf_offset: 0, len }
    }

    /// A write of the first `len` bytes of `buf` at `dev_offset`.
    pub fn write(dev_offset: u64, buf: &'a mut IoBuf, len: usize) -> BlockOp<'a> {
        BlockOp { dir: Dir::Write, dev_offset, buf, buf_offset: 0, len }
    }

    /// Checks sector alignment and bounds; transports call it before any IO.
    ///
    /// Errors: `InvalidInput` naming the offending field.
    pub fn check(&self) -> io::Result<()> {
        let sector = SECTOR_SIZE as usize;
        let bad = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        if self.dev_offset % SECTOR_SIZE != 0 {
            return bad(format!("device offset {} is not sector aligned", self.dev_offset));
        }
        if self.len == 0 || self.len % sector != 0 {
            return bad(format!("IO length {} is not a non-zero multiple of 512", self.len));
        }
        if self.buf_offset % sector != 0 {
            return bad(format!("buffer offset {} is not sector aligned", self.buf_offset));
        }
        match self.buf_offset.checked_add(self.len) {
            Some(end) if end <= self.buf.len() => Ok(()),
            _ => bad(format!(
                "IO of {} bytes at buffer offset {} overruns a {}-byte buffer",
                self.len,
                self.buf_offset,
                self.buf.len()
            )),
        }
    }
}

/// Sector access to one PoV device. Implementations are shared by every thread of a
/// [`crate::Device`], hence `Send + Sync`.
pub trait BlockTransport: Send + Sync {
    /// Human-readable name of the device, e.g. `/dev/vdb` or `vhost-user:/run/pov.sock`.
    fn describe(&self) -> String;

    /// Device capacity, in bytes.
    fn capacity(&self) -> u64;

    /// A zeroed buffer of at least `len` bytes that this transport can do IO with
    /// (aligned to 4 KiB; for libblkio, inside memory mapped for the device).
    ///
    /// Errors: allocation or mapping failures.
    fn alloc_buf(&self, len: usize) -> io::Result<IoBuf>;

    /// Like [`BlockTransport::alloc_buf`], but the contents are unspecified: a reused
    /// buffer holds what this process last put there (never another process's data).
    /// For buffers whose every byte is written before it is sent or read, such as a
    /// queue's request and response buffers; saves clearing 1 MiB per buffer.
    ///
    /// Default: [`BlockTransport::alloc_buf`]. Errors: as it.
    fn alloc_scratch_buf(&self, len: usize) -> io::Result<IoBuf> {
        self.alloc_buf(len)
    }

    /// Executes `ops` in order on `lane` and returns when all of them have completed.
    /// Later ops may be submitted before earlier ones complete (the libblkio transport
    /// submits a whole batch in one round trip), but the device sees them in order.
    ///
    /// Errors: the first failed op's error (an IO error completion, a short transfer,
    /// an invalid op per [`BlockOp::check`]).
    fn submit(&self, lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()>;

    /// Executes `ops` on `lane` like [`BlockTransport::submit`], but the device may
    /// receive them in any order and the caller waits for one round trip, not one per
    /// op: the kernel path submits all of them with one `io_uring_enter(2)`. For ops
    /// that do not depend on each other's order, e.g. a request WRITE and the READ of
    /// its response window (`pov_proto::layout`, "response windows").
    ///
    /// Default: [`BlockTransport::submit`] (in order, which is one of the orders).
    ///
    /// Errors: as [`BlockTransport::submit`].
    fn submit_joint(&self, lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        self.submit(lane, ops)
    }

    /// Device round trips waited for so far: every time a caller waited for the device
    /// to answer (a batch submitted together counts once; ops run one after the other
    /// count one each). A diagnostic; 0 from a transport that does not count.
    fn round_trips(&self) -> u64 {
        0
    }

    /// Gives up on this transport (the session is moving to a new connection): IO
    /// waiting for a device that will never answer (a `pov-dpud` that died) returns an
    /// error within about 100 ms instead of waiting on, and nothing is submitted any
    /// more. Default: nothing to do (a kernel block device finishes or fails its IO by
    /// itself).
    fn abandon(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_checked() {
        let mut b = IoBuf::aligned(8192).unwrap();
        assert!(BlockOp::read(4096, &mut b, 4096).check().is_ok());
        assert!(BlockOp::read(100, &mut b, 512).check().is_err());
        assert!(BlockOp::read(0, &mut b, 0).check().is_err());
        assert!(BlockOp::read(0, &mut b, 513).check().is_err());
        assert!(BlockOp::write(0, &mut b, 8192 + 512).check().is_err());
        let op = BlockOp { dir: Dir::Write, dev_offset: 0, buf: &mut b, buf_offset: 7680, len: 512 };
        assert!(op.check().is_ok());
        let op = BlockOp { dir: Dir::Write, dev_offset: 0, buf: &mut b, buf_offset: 7680, len: 1024 };
        assert!(op.check().is_err());
        let op = BlockOp { dir: Dir::Write, dev_offset: 0, buf: &mut b, buf_offset: 1, len: 512 };
        assert!(op.check().is_err());
        let op = BlockOp { dir: Dir::Write, dev_offset: 0, buf: &mut b, buf_offset: usize::MAX, len: 512 };
        assert!(op.check().is_err());
    }
}
