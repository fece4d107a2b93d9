//! The block-device seam: block IO as the virtqueue adapter hands it to a device
//! model, and the [`BlockDevice`] trait every model implements (shaped like SPDK's
//! `spdk_bdev_fn_table`: submit, `io_type_supported`, completions polled by the
//! owning reactor, `write_config_json`, destruct).
//!
//! Implementations: [`crate::PovDevice`] (the PoV device protocol), [`crate::volume::VolumeDevice`]
//! (a plain volume stored by a proxy), [`crate::volume::NullVolume`] (data never
//! leaves the DPU) and, with the `testing` feature, `testing::MemDisk` (a RAM disk).
//! All of them pass the one conformance body `testing::conformance`.

use pov_runtime::{FdRegistry, PollStatus};
use std::time::Instant;

/// The virtio-blk request types a PoV device serves (virtio 1.2 §5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    /// VIRTIO_BLK_T_IN: the device fills the buffer.
    Read,
    /// VIRTIO_BLK_T_OUT: the device consumes the buffer.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: the device writes the 20-byte serial.
    GetId,
    /// Any other request type (answered [`BlockStatus::Unsupported`]).
    Other(u32),
}

/// Completion status, mapped 1:1 to virtio-blk's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// VIRTIO_BLK_S_OK.
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupported,
}

/// A buffer in host (guest) memory, gathered from one or more descriptors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("buffer access out of bounds or unmapped: offset {offset}, len {len}")]
pub struct BufferError {
    /// Byte offset of the failed access within the buffer.
    pub offset: usize,
    /// Length of the failed access, bytes.
    pub len: usize,
}

/// Access to the data buffer of one block request. Implementations copy between host
/// memory and local slices; they fail (never panic) on unmapped memory.
pub trait IoBuffer: Send {
    /// Total length in bytes.
    fn len(&self) -> usize;
    /// `true` if the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `dst.len()` bytes starting at byte `offset` of the buffer into `dst`.
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BufferError>;
    /// Copies `src` into the buffer starting at byte `offset`.
    fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), BufferError>;
}

/// An in-memory [`IoBuffer`], for tests and for adapters that bounce data.
impl IoBuffer for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BufferError> {
        let end = offset.checked_add(dst.len()).filter(|e| *e <= self.len());
        let end = end.ok_or(BufferError { offset, len: dst.len() })?;
        dst.copy_from_slice(&self[offset..end]);
        Ok(())
    }
    fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), BufferError> {
        let end = offset.checked_add(src.len()).filter(|e| *e <= self.len());
        let end = end.ok_or(BufferError { offset, len: src.len() })?;
        self[offset..end].copy_from_slice(src);
        Ok(())
    }
}

/// One block request.
pub struct BlockRequest {
    /// Request type.
    pub op: BlockOp,
    /// Byte offset on the device (virtio `sector` × 512).
    pub offset: u64,
    /// Data buffer (empty for FLUSH).
    pub buf: Box<dyn IoBuffer>,
    /// Opaque value chosen by the adapter, returned in the completion.
    pub tag: u64,
}

/// The completion of one [`BlockRequest`].
pub struct BlockCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Status byte to report.
    pub status: BlockStatus,
    /// Bytes the device wrote into the buffer (READ/GET_ID), excluding the status byte.
    pub written: u32,
    /// The request's buffer, handed back.
    pub buf: Box<dyn IoBuffer>,
}

/// A block device driven by one reactor poller.
///
/// Requests are submitted with [`submit`](BlockDevice::submit) (which never fails: a
/// bad request becomes a failed completion, never a panic) and complete later, in any
/// order, exactly once each, through [`take_completions`](BlockDevice::take_completions).
/// A device lives on the reactor that created it and is never shared between threads.
pub trait BlockDevice {
    /// The device name it was created with.
    fn name(&self) -> &str;

    /// Device capacity in 512-byte sectors (virtio-blk `capacity`).
    fn capacity_sectors(&self) -> u64;

    /// Logical block size in bytes (virtio-blk `blk_size`); 512 unless overridden.
    /// READ and WRITE offsets and lengths must be multiples of it.
    fn block_size(&self) -> u32 {
        512
    }

    /// Whether requests of type `op` are served (SPDK's `io_type_supported`); an
    /// unsupported type completes with [`BlockStatus::Unsupported`].
    fn io_type_supported(&self, op: BlockOp) -> bool {
        !matches!(op, BlockOp::Other(_))
    }

    /// Accepts one request; its completion is reported later (possibly at the next
    /// [`take_completions`](BlockDevice::take_completions)).
    fn submit(&mut self, req: BlockRequest);

    /// Drives the device's own work (transports, timers). `fds` lets the device ask the
    /// reactor to wake up when a descriptor becomes ready. Never blocks.
    fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus;

    /// Moves every finished request into `out`.
    fn take_completions(&mut self, out: &mut Vec<BlockCompletion>);

    /// The next instant the device must be polled even without events (timers).
    fn deadline(&self) -> Option<Instant>;

    /// Counters, as JSON (shown by `pov_device_get_devices`).
    fn stats_json(&self) -> serde_json::Value;

    /// The control call that recreates the device (SPDK's `write_config_json`):
    /// `{"method": ..., "params": {...}}` with every parameter the device was made with,
    /// defaults resolved. The front end adds its own parameters (socket, virtqueues).
    fn write_config_json(&self) -> serde_json::Value;

    /// Stops the device: every request still in progress completes with
    /// [`BlockStatus::IoErr`], descriptors are unwatched, nothing is sent any more.
    fn destruct(&mut self, fds: &mut dyn FdRegistry);
}

/// Completions of a device, with the count of those that failed (an error status is a
/// fault of the host's request or of the path, counted for the operator).
#[derive(Default)]
pub(crate) struct Completions {
    list: Vec<BlockCompletion>,
    /// Completions with a status other than [`BlockStatus::Ok`].
    pub errors: u64,
}

impl Completions {
    /// Completes `req` with `status`, `written` bytes put in its buffer.
    pub(crate) fn complete(&mut self, req: BlockRequest, status: BlockStatus, written: u32) {
        if status != BlockStatus::Ok {
            self.errors += 1;
        }
        self.list.push(BlockCompletion { tag: req.tag, status, written, buf: req.buf });
    }

    /// Completes a READ that copied `r` bytes into its buffer (IOERR if the copy failed).
    pub(crate) fn complete_copy(&mut self, req: BlockRequest, r: Result<u32, BufferError>) {
        match r {
            Ok(n) => self.complete(req, BlockStatus::Ok, n),
            Err(_) => self.complete(req, BlockStatus::IoErr, 0),
        }
    }

    /// Serves GET_ID: the first `min(len, 20)` bytes of `serial`.
    pub(crate) fn get_id(&mut self, mut req: BlockRequest, serial: &[u8]) {
        let n = req.buf.len().min(serial.len());
        let r = req.buf.write_at(0, &serial[..n]).map(|()| n as u32);
        self.complete_copy(req, r);
    }

    /// Moves every completion into `out`.
    pub(crate) fn take(&mut self, out: &mut Vec<BlockCompletion>) {
        out.append(&mut self.list);
    }
}
