//! Block IO as the device adapter hands it to a [`crate::PovDevice`].

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
