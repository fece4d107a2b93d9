//! virtio-blk requests in guest memory (virtio 1.2 §5.2.6) and the device config space.
//!
//! A request is a descriptor chain: device-readable descriptors carrying the 16-byte
//! header (`type: le32, reserved: le32, sector: le64`) and, for a write, the data;
//! then device-writable descriptors carrying, for a read or GET_ID, the data and, last,
//! the 1-byte status. The device must not assume any particular framing, so the header
//! may span descriptors and data may share a descriptor with the header or the status:
//! the parser works on byte ranges, not on descriptor boundaries.

use bdev_pov::{BlockOp, BufferError, IoBuffer};
use std::cell::Cell;
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Size of the virtio-blk request header, bytes.
pub const HEADER_LEN: usize = 16;
/// Largest data segment the device accepts (`size_max`): one PoV slot, 1 MiB + 4 KiB,
/// so that no PoV request ever needs splitting. Bytes.
pub const SIZE_MAX: u32 = pov_proto::layout::SLOT_SIZE as u32;
/// Largest number of data segments per request (`seg_max`): a 1 MiB + 4 KiB buffer in
/// 4 KiB pages is 257 segments, 258 if unaligned; rounded up.
pub const SEG_MAX: u32 = 260;
/// Default logical block size reported to the driver (`blk_size`), bytes; a device
/// may report another ([`crate::blockdev::BlockDevice::block_size`]).
pub const BLK_SIZE: u32 = 512;

/// A contiguous range of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address of the first byte.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// A request whose chain was well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// Head descriptor index (returned in the used ring).
    pub head: u16,
    /// Request type.
    pub op: BlockOp,
    /// Byte offset on the device (`sector` × 512).
    pub offset: u64,
    /// Data segments, in order (device-readable for a write, device-writable for a
    /// read or GET_ID, empty otherwise).
    pub data: Vec<Segment>,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

/// A chain that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChain {
    /// Head descriptor index (returned in the used ring).
    pub head: u16,
    /// Where an error status can still be written, if anywhere.
    pub status: Option<GuestAddress>,
    /// What is wrong with it.
    pub why: &'static str,
}

/// [`BadChain::why`] of a chain with a descriptor outside the guest memory.
pub const OUTSIDE_MEMORY: &str = "descriptor outside guest memory";

impl BadChain {
    /// `true` if a descriptor lies outside the memory the chain was checked against
    /// (the only failure a newer memory snapshot can cure).
    pub fn outside_memory(&self) -> bool {
        self.why == OUTSIDE_MEMORY
    }
}

/// Splits a descriptor chain into a [`ParsedRequest`] or a [`BadChain`]. Never panics:
/// descriptors outside `mem`, a missing status byte, device-readable descriptors after
/// device-writable ones, a short header or a sector that overflows become a
/// [`BadChain`].
pub fn parse_chain(head: u16, descs: impl Iterator<Item = Descriptor>, mem: &GuestMemoryMmap) -> Result<ParsedRequest, BadChain> {
    // One vector for the whole chain (it becomes the data segments): the
    // device-readable segments, then the device-writable ones from `n_readable` on.
    let mut segs: Vec<Segment> = Vec::with_capacity(4);
    let mut n_readable = 0;
    let mut last_writable: Option<Segment> = None;
    let mut order_ok = true;
    let mut in_memory = true;
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        let seg = Segment { addr: d.addr(), len: d.len() };
        in_memory &= mem.check_range(seg.addr, seg.len as usize);
        if d.is_write_only() {
            last_writable = Some(seg);
        } else {
            order_ok &= n_readable == segs.len();
            n_readable += 1;
        }
        segs.push(seg);
    }
    // The status byte is the last byte of the device-writable part.
    let status = last_writable.and_then(|s| s.addr.checked_add(u64::from(s.len) - 1)).filter(|a| mem.check_range(*a, 1));
    let bad = |why| Err(BadChain { head, status, why });
    if !order_ok {
        return bad("device-readable descriptor after a device-writable one");
    }
    if !in_memory {
        return bad(OUTSIDE_MEMORY);
    }
    let Some(status_addr) = status else {
        return bad("no device-writable status byte");
    };
    let mut header = [0u8; HEADER_LEN];
    if gather(mem, &segs[..n_readable], &mut header).is_err() {
        return bad("request header shorter than 16 bytes");
    }
    let rtype = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
    let Some(offset) = sector.checked_mul(u64::from(BLK_SIZE)) else {
        return bad("sector out of range");
    };
    let op = match rtype {
        VIRTIO_BLK_T_IN => BlockOp::Read,
        VIRTIO_BLK_T_OUT => BlockOp::Write,
        VIRTIO_BLK_T_FLUSH => BlockOp::Flush,
        VIRTIO_BLK_T_GET_ID => BlockOp::GetId,
        t => BlockOp::Other(t),
    };
    match op {
        BlockOp::Read | BlockOp::GetId => {
            segs.drain(..n_readable);
            trim_back(&mut segs, 1);
        }
        BlockOp::Write => {
            segs.truncate(n_readable);
            skip_front(&mut segs, HEADER_LEN);
        }
        BlockOp::Flush | BlockOp::Other(_) => segs.clear(),
    }
    Ok(ParsedRequest { head, op, offset, data: segs, status: status_addr })
}

/// Reads `dst.len()` bytes from the start of `segs`.
fn gather(mem: &GuestMemoryMmap, segs: &[Segment], dst: &mut [u8]) -> Result<(), ()> {
    let mut done = 0;
    for s in segs {
        if done == dst.len() {
            break;
        }
        let n = (s.len as usize).min(dst.len() - done);
        mem.read_slice(&mut dst[done..done + n], s.addr).map_err(|_| ())?;
        done += n;
    }
    if done == dst.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// Drops the first `n` bytes of `segs`, in place.
fn skip_front(segs: &mut Vec<Segment>, mut n: usize) {
    let mut whole = 0;
    for s in segs.iter_mut() {
        let len = s.len as usize;
        if n >= len {
            n -= len;
            whole += 1;
            continue;
        }
        // n < len <= u32::MAX, so the casts are lossless.
        s.addr = s.addr.unchecked_add(n as u64);
        s.len = (len - n) as u32;
        break;
    }
    segs.drain(..whole);
}

/// Drops the last `n` bytes of `segs`, in place.
fn trim_back(segs: &mut Vec<Segment>, mut n: usize) {
    while n > 0 {
        let Some(last) = segs.last_mut() else { break };
        let len = last.len as usize;
        if n >= len {
            n -= len;
            segs.pop();
        } else {
            last.len = (len - n) as u32;
            n = 0;
        }
    }
}

/// The data buffer of a request: a list of guest memory segments read and written by
/// copying. It holds a snapshot of the guest memory map, so memory the client unmaps
/// while the request is in flight stays mapped (and harmless) until the request
/// completes. Accesses outside the buffer or outside guest memory fail with
/// [`BufferError`].
pub struct GuestBuffer {
    mem: Arc<GuestMemoryMmap>,
    segs: Vec<Segment>,
    /// Total length, bytes.
    len: usize,
    /// `(i, start)`: segment `i` starts at buffer offset `start`; where the last access
    /// began, so that accesses in increasing order find their segment without a scan
    /// from the start.
    cursor: Cell<(usize, usize)>,
}

impl GuestBuffer {
    /// A buffer over `segs` of `mem`.
    pub fn new(mem: Arc<GuestMemoryMmap>, segs: Vec<Segment>) -> GuestBuffer {
        let len = segs.iter().fold(0usize, |a, s| a.saturating_add(s.len as usize));
        GuestBuffer { mem, segs, len, cursor: Cell::new((0, 0)) }
    }

    /// Calls `f(segment address, range within the local slice)` for each piece of
    /// `offset..offset + len`.
    fn for_each_piece(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> Result<(), BufferError> {
        let err = BufferError { offset, len };
        let end = offset.checked_add(len).filter(|e| *e <= self.len).ok_or(err.clone())?;
        if len == 0 {
            return Ok(());
        }
        let (mut i, mut seg_start) = self.cursor.get();
        if offset < seg_start {
            (i, seg_start) = (0, 0);
        }
        // The segment holding `offset` (there is one: offset < end <= self.len).
        while let Some(seg) = self.segs.get(i).filter(|s| seg_start + s.len as usize <= offset) {
            seg_start += seg.len as usize;
            i += 1;
        }
        self.cursor.set((i, seg_start));
        let mut pos = offset;
        while pos < end {
            let seg = self.segs.get(i).ok_or(err.clone())?;
            let within = pos - seg_start;
            let n = (seg.len as usize - within).min(end - pos);
            let addr = seg.addr.checked_add(within as u64).ok_or(err.clone())?;
            if !f(addr, pos - offset..pos - offset + n) {
                return Err(err);
            }
            pos += n;
            seg_start += seg.len as usize;
            i += 1;
        }
        Ok(())
    }
}

impl IoBuffer for GuestBuffer {
    fn len(&self) -> usize {
        self.len
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BufferError> {
        let mem = &self.mem;
        self.for_each_piece(offset, dst.len(), |addr, r| mem.read_slice(&mut dst[r], addr).is_ok())
    }

    fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), BufferError> {
        let mem = &self.mem;
        self.for_each_piece(offset, src.len(), |addr, r| mem.write_slice(&src[r], addr).is_ok())
    }
}

/// The virtio-blk configuration space (`struct virtio_blk_config`, little endian as
/// virtio 1.x requires), with the fields this device offers: `capacity` (sectors),
/// `size_max`, `seg_max`, `blk_size` (bytes) and `num_queues`.
pub fn config_space(capacity_sectors: u64, num_queues: u16, blk_size: u32) -> Vec<u8> {
    use std::mem::{offset_of, size_of};
    let mut c = vec![0u8; size_of::<virtio_blk_config>()];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(virtio_blk_config, capacity), &capacity_sectors.to_le_bytes());
    put(offset_of!(virtio_blk_config, size_max), &SIZE_MAX.to_le_bytes());
    put(offset_of!(virtio_blk_config, seg_max), &SEG_MAX.to_le_bytes());
    put(offset_of!(virtio_blk_config, blk_size), &blk_size.to_le_bytes());
    put(offset_of!(virtio_blk_config, num_queues), &num_queues.to_le_bytes());
    c
}

/// Exactly `size` bytes of `config` starting at `offset`, zero-filled past its end
/// (the vhost crate sends an empty reply unless the size matches).
pub fn config_slice(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let start = (offset as usize).min(config.len());
    let end = (offset as usize).saturating_add(size as usize).min(config.len());
    out[..end - start].copy_from_slice(&config[start..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const MEM: u64 = 0x10_0000;
    const HDR: u64 = 0x2_0000;
    const DATA: u64 = 0x3_0000;
    const STATUS: u64 = 0x5_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn header(m: &GuestMemoryMmap, at: u64, rtype: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&rtype.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Builds `descs` as one chain on a mock queue and parses it.
    fn parse(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<ParsedRequest, BadChain> {
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        parse_chain(chain.head_index(), chain, m)
    }

    #[test]
    fn read_with_two_data_descriptors() {
        let m = mem();
        header(&m, HDR, VIRTIO_BLK_T_IN, 8);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, 4096, W), d(DATA + 8192, 512, W), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.op, BlockOp::Read);
        assert_eq!(r.offset, 4096);
        assert_eq!(
            r.data,
            vec![Segment { addr: GuestAddress(DATA), len: 4096 }, Segment { addr: GuestAddress(DATA + 8192), len: 512 }]
        );
        assert_eq!(r.status, GuestAddress(STATUS));
    }

    #[test]
    fn write_with_header_and_data_in_one_descriptor() {
        let m = mem();
        header(&m, HDR, VIRTIO_BLK_T_OUT, 1);
        let r = parse(&m, &[d(HDR, 16 + 1024, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.op, BlockOp::Write);
        assert_eq!(r.offset, 512);
        assert_eq!(r.data, vec![Segment { addr: GuestAddress(HDR + 16), len: 1024 }]);
    }

    #[test]
    fn header_split_and_data_sharing_status_descriptor() {
        let m = mem();
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..].copy_from_slice(&3u64.to_le_bytes());
        m.write_slice(&h[..5], GuestAddress(HDR)).unwrap();
        m.write_slice(&h[5..], GuestAddress(HDR + 0x100)).unwrap();
        let r = parse(&m, &[d(HDR, 5, 0), d(HDR + 0x100, 11, 0), d(DATA, 513, W)]).unwrap();
        assert_eq!(r.offset, 1536);
        assert_eq!(r.data, vec![Segment { addr: GuestAddress(DATA), len: 512 }]);
        assert_eq!(r.status, GuestAddress(DATA + 512));
    }

    #[test]
    fn flush_getid_and_unknown_types() {
        let m = mem();
        header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
        let r = parse(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!((r.op, r.data.len()), (BlockOp::Flush, 0));
        header(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.op, BlockOp::GetId);
        assert_eq!(r.data, vec![Segment { addr: GuestAddress(DATA), len: 20 }]);
        header(&m, HDR, 11, 0);
        let r = parse(&m, &[d(HDR, 16 + 16, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!((r.op, r.data.len()), (BlockOp::Other(11), 0));
    }

    #[test]
    fn malformed_chains() {
        let m = mem();
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        // No writable descriptor at all: nowhere to put a status.
        let e = parse(&m, &[d(HDR, 16, 0), d(DATA, 512, 0)]).unwrap_err();
        assert_eq!(e.status, None);
        // Status descriptor outside guest memory.
        let e = parse(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(MEM + 10, 1, W)]).unwrap_err();
        assert_eq!(e.status, None);
        // Data descriptor outside guest memory: error status is still written.
        let e = parse(&m, &[d(HDR, 16, 0), d(MEM - 256, 512, W), d(STATUS, 1, W)]).unwrap_err();
        assert_eq!(e.status, Some(GuestAddress(STATUS)));
        assert_eq!(e.why, "descriptor outside guest memory");
        // Address that overflows.
        let e = parse(&m, &[d(HDR, 16, 0), d(u64::MAX - 10, 512, W), d(STATUS, 1, W)]).unwrap_err();
        assert_eq!(e.status, Some(GuestAddress(STATUS)));
        // Readable after writable.
        let e = parse(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, 0)]).unwrap_err();
        assert_eq!(e.status, Some(GuestAddress(DATA + 511)));
        // Short header.
        let e = parse(&m, &[d(HDR, 8, 0), d(STATUS, 1, W)]).unwrap_err();
        assert_eq!(e.why, "request header shorter than 16 bytes");
        // Header writable (wrong direction): header is missing.
        let e = parse(&m, &[d(HDR, 16, W), d(STATUS, 1, W)]).unwrap_err();
        assert_eq!(e.status, Some(GuestAddress(STATUS)));
        // Sector overflow.
        header(&m, HDR, VIRTIO_BLK_T_IN, u64::MAX);
        let e = parse(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]).unwrap_err();
        assert_eq!(e.why, "sector out of range");
    }

    #[test]
    fn looping_chain_terminates() {
        let m = mem();
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&m, 4);
        // 0 -> 1 -> 0 -> ... : the chain iterator stops after the queue size.
        let f = VRING_DESC_F_NEXT as u16;
        q.desc_table().store(0, RawDescriptor::from(Descriptor::new(HDR, 16, f, 1))).unwrap();
        q.desc_table().store(1, RawDescriptor::from(Descriptor::new(STATUS, 1, f | W, 0))).unwrap();
        q.avail().ring().ref_at(0).unwrap().store(0);
        q.avail().idx().store(1);
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.iter(&m).unwrap().next().unwrap();
        // Readable descriptors after the writable status: rejected, no panic, no hang.
        assert!(parse_chain(chain.head_index(), chain, &m).is_err());
    }

    #[test]
    fn guest_buffer_copies_across_segments_and_fails_out_of_range() {
        let m = Arc::new(mem());
        let segs = vec![Segment { addr: GuestAddress(DATA), len: 10 }, Segment { addr: GuestAddress(DATA + 100), len: 10 }];
        let mut b = GuestBuffer::new(m.clone(), segs);
        assert_eq!(b.len(), 20);
        let src: Vec<u8> = (0..20).collect();
        b.write_at(0, &src).unwrap();
        let mut got = [0u8; 6];
        b.read_at(7, &mut got).unwrap();
        assert_eq!(got, [7, 8, 9, 10, 11, 12]);
        let mut raw = [0u8; 3];
        m.read_slice(&mut raw, GuestAddress(DATA + 100)).unwrap();
        assert_eq!(raw, [10, 11, 12]);
        assert_eq!(b.read_at(15, &mut [0u8; 6]), Err(BufferError { offset: 15, len: 6 }));
        assert!(b.write_at(usize::MAX, &[1]).is_err());
        b.read_at(20, &mut []).unwrap();
        // A segment that is not mapped fails instead of panicking.
        let mut bad = GuestBuffer::new(m, vec![Segment { addr: GuestAddress(MEM - 4), len: 8 }]);
        assert!(bad.write_at(0, &[0u8; 8]).is_err());
        assert!(bad.read_at(0, &mut [0u8; 8]).is_err());
    }

    /// Accesses in any order (forwards, backwards, repeated) find the right segments.
    #[test]
    fn guest_buffer_accesses_in_any_order() {
        let m = Arc::new(mem());
        let lens = [3u32, 1, 7, 5, 16];
        let mut at = DATA;
        let segs: Vec<Segment> = lens
            .iter()
            .map(|&len| {
                let s = Segment { addr: GuestAddress(at), len };
                at += 64;
                s
            })
            .collect();
        let mut b = GuestBuffer::new(m, segs);
        let total = b.len();
        assert_eq!(total, 32);
        for chunk in [1usize, 2, 3, 5, 32] {
            let starts: Vec<usize> = (0..total).step_by(chunk).collect();
            for &o in starts.iter().rev() {
                let n = chunk.min(total - o);
                let src: Vec<u8> = (o..o + n).map(|x| (x * 7 + chunk) as u8).collect();
                b.write_at(o, &src).unwrap();
            }
            for &o in starts.iter().chain(starts.iter().rev()) {
                let n = chunk.min(total - o);
                let mut got = vec![0u8; n];
                b.read_at(o, &mut got).unwrap();
                assert_eq!(got, (o..o + n).map(|x| (x * 7 + chunk) as u8).collect::<Vec<_>>(), "chunk {chunk} at {o}");
            }
        }
    }

    #[test]
    fn config_space_layout_and_slices() {
        let c = config_space(0x1234, 4, BLK_SIZE);
        assert_eq!(c.len(), std::mem::size_of::<virtio_blk_config>());
        assert_eq!(&c[0..8], &0x1234u64.to_le_bytes());
        assert_eq!(&c[8..12], &SIZE_MAX.to_le_bytes());
        assert_eq!(&c[12..16], &SEG_MAX.to_le_bytes());
        assert_eq!(&c[20..24], &512u32.to_le_bytes());
        assert_eq!(&c[34..36], &4u16.to_le_bytes());
        assert_eq!(&config_space(8, 1, 4096)[20..24], &4096u32.to_le_bytes());
        assert_eq!(config_slice(&c, 0, 8), c[0..8].to_vec());
        let tail = config_slice(&c, c.len() as u32 - 2, 6);
        assert_eq!(tail.len(), 6);
        assert_eq!(config_slice(&c, u32::MAX, 4), vec![0; 4]);
    }
}
