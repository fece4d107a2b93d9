//! The one test body every [`BlockDevice`] implementation must pass (like the
//! transport and backend suites): what the virtqueue adapter relies on, whatever the
//! device is.
//!
//! Checked: geometry and `write_config_json` shape; `io_type_supported` agrees with
//! what `submit` does; GET_ID (whole and truncated); FLUSH; every bad request (unaligned,
//! past the end, into memory that cannot be accessed, an unknown type) completes with
//! an error status instead of panicking; every request completes exactly once; the
//! device's data model (stores, zeros, or the PoV protocol); an idle device reports
//! idle; `destruct` completes everything still in progress.

use crate::block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus, BufferError, IoBuffer};
use pov_runtime::PollStatus;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a device's data space behaves, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataModel {
    /// A READ returns what WRITEs stored (RAM disk, plain volume).
    Stores,
    /// A READ returns zeros, WRITEs are dropped (null volume).
    Zeros,
    /// The space carries the PoV device protocol: the first sector is the
    /// configuration space (magic `PoVD`), which cannot be written.
    PovProtocol,
}

/// A device under test.
pub struct Subject {
    /// The device.
    pub dev: Box<dyn BlockDevice>,
    /// What its GET_ID answer starts with.
    pub serial_prefix: &'static [u8],
    /// Its data model.
    pub data: DataModel,
}

/// An [`IoBuffer`] whose every access fails (host memory that is not mapped).
pub struct Unmapped(pub usize);

impl IoBuffer for Unmapped {
    fn len(&self) -> usize {
        self.0
    }
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BufferError> {
        Err(BufferError { offset, len: dst.len() })
    }
    fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), BufferError> {
        Err(BufferError { offset, len: src.len() })
    }
}

struct Rig {
    dev: Box<dyn BlockDevice>,
    next_tag: u64,
    done: HashMap<u64, BlockCompletion>,
    submitted: u64,
}

impl Rig {
    fn submit_buf(&mut self, op: BlockOp, offset: u64, buf: Box<dyn IoBuffer>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.submitted += 1;
        self.dev.submit(BlockRequest { op, offset, buf, tag });
        tag
    }

    fn submit(&mut self, op: BlockOp, offset: u64, buf: Vec<u8>) -> u64 {
        self.submit_buf(op, offset, Box::new(buf))
    }

    fn reap(&mut self) {
        let mut v = Vec::new();
        self.dev.take_completions(&mut v);
        for c in v {
            assert!(c.tag < self.next_tag, "completion with a tag never submitted: {}", c.tag);
            assert!(self.done.insert(c.tag, c).is_none(), "a request completed twice");
        }
    }

    fn pump(&mut self) {
        self.dev.poll(&mut ());
        self.reap();
    }

    /// Waits (bounded: 10 s) for `tag`'s completion.
    fn wait(&mut self, tag: u64) -> (BlockStatus, u32, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.reap();
            if let Some(c) = self.done.remove(&tag) {
                let mut data = vec![0u8; c.buf.len()];
                let _ = c.buf.read_at(0, &mut data);
                return (c.status, c.written, data);
            }
            assert!(Instant::now() < deadline, "request {tag} never completed");
            self.pump();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn io(&mut self, op: BlockOp, offset: u64, buf: Vec<u8>) -> (BlockStatus, u32, Vec<u8>) {
        let t = self.submit(op, offset, buf);
        self.wait(t)
    }
}

/// Runs the body against the device `make` builds (called once per section, so every
/// section starts from a fresh device).
pub fn run(make: &mut dyn FnMut() -> Subject) {
    shape(make());
    types_and_ids(make());
    bad_requests(make());
    data_model(make());
    exactly_once_and_destruct(make());
}

fn new_rig(s: Subject) -> (Rig, &'static [u8], DataModel) {
    (Rig { dev: s.dev, next_tag: 1, done: HashMap::new(), submitted: 0 }, s.serial_prefix, s.data)
}

/// Geometry and the config call.
fn shape(s: Subject) {
    let (r, _, _) = new_rig(s);
    let d = &r.dev;
    assert!(!d.name().is_empty(), "a device has a name");
    assert!(d.capacity_sectors() > 0, "capacity");
    assert!(matches!(d.block_size(), 512 | 4096), "block size {}", d.block_size());
    assert_eq!((d.capacity_sectors() * 512) % u64::from(d.block_size()), 0, "capacity is whole blocks");
    let call = d.write_config_json();
    assert!(call["method"].as_str().is_some_and(|m| !m.is_empty()), "write_config_json names a method: {call}");
    assert_eq!(call["params"]["name"], d.name(), "write_config_json carries the name: {call}");
}

/// Supported types, GET_ID, FLUSH.
fn types_and_ids(s: Subject) {
    let (mut r, prefix, _) = new_rig(s);
    for op in [BlockOp::Read, BlockOp::Write, BlockOp::Flush, BlockOp::GetId] {
        assert!(r.dev.io_type_supported(op), "{op:?} must be supported");
    }
    assert!(!r.dev.io_type_supported(BlockOp::Other(99)));
    assert_eq!(r.io(BlockOp::Other(99), 0, vec![0; 512]).0, BlockStatus::Unsupported);
    let (st, n, id) = r.io(BlockOp::GetId, 0, vec![0; 20]);
    assert_eq!((st, n), (BlockStatus::Ok, 20), "GET_ID fills 20 bytes");
    assert!(id.starts_with(prefix), "serial {id:?} starts with {prefix:?}");
    let (st, n, short) = r.io(BlockOp::GetId, 0, vec![0; 4]);
    assert_eq!((st, n), (BlockStatus::Ok, 4), "a short GET_ID buffer gets the first bytes");
    assert_eq!(short, id[..4]);
    assert_eq!(r.io(BlockOp::Flush, 0, Vec::new()).0, BlockStatus::Ok);
}

/// Bad requests fail with a status; the device keeps serving.
fn bad_requests(s: Subject) {
    let (mut r, prefix, model) = new_rig(s);
    let bs = u64::from(r.dev.block_size());
    let end = r.dev.capacity_sectors() * 512;
    let b = bs as usize;
    assert_eq!(r.io(BlockOp::Read, 1, vec![0; b]).0, BlockStatus::IoErr, "unaligned offset");
    assert_eq!(r.io(BlockOp::Read, 0, vec![0; b + 1]).0, BlockStatus::IoErr, "unaligned length");
    assert_eq!(r.io(BlockOp::Write, 7, vec![0; b]).0, BlockStatus::IoErr, "unaligned write");
    assert_eq!(r.io(BlockOp::Read, end, vec![0; b]).0, BlockStatus::IoErr, "past the end");
    assert_eq!(r.io(BlockOp::Read, end - bs, vec![0; 2 * b]).0, BlockStatus::IoErr, "reaching past the end");
    assert_eq!(r.io(BlockOp::Write, u64::MAX - bs + 1, vec![0; b]).0, BlockStatus::IoErr, "offset overflow");
    let t = r.submit_buf(BlockOp::Read, 0, Box::new(Unmapped(b)));
    assert_eq!(r.wait(t).0, BlockStatus::IoErr, "READ into unmapped memory");
    let t = r.submit_buf(BlockOp::GetId, 0, Box::new(Unmapped(20)));
    assert_eq!(r.wait(t).0, BlockStatus::IoErr, "GET_ID into unmapped memory");
    if model != DataModel::Zeros {
        // (A null volume drops writes without reading them.)
        let t = r.submit_buf(BlockOp::Write, bs, Box::new(Unmapped(b)));
        assert_eq!(r.wait(t).0, BlockStatus::IoErr, "WRITE from unmapped memory");
    }
    // Still serving.
    let (st, _, id) = r.io(BlockOp::GetId, 0, vec![0; 20]);
    assert!(st == BlockStatus::Ok && id.starts_with(prefix), "the device stopped serving after bad requests");
}

/// What READ returns after WRITE.
fn data_model(s: Subject) {
    let (mut r, _, model) = new_rig(s);
    let b = r.dev.block_size() as usize;
    let pattern: Vec<u8> = (0..2 * b).map(|i| (i * 7 + 3) as u8).collect();
    match model {
        DataModel::Stores | DataModel::Zeros => {
            let off = 2 * b as u64;
            assert_eq!(r.io(BlockOp::Write, off, pattern.clone()).0, BlockStatus::Ok);
            assert_eq!(r.io(BlockOp::Flush, 0, Vec::new()).0, BlockStatus::Ok);
            let (st, n, back) = r.io(BlockOp::Read, off, vec![0xee; 2 * b]);
            assert_eq!((st, n as usize), (BlockStatus::Ok, 2 * b));
            if model == DataModel::Stores {
                assert_eq!(back, pattern, "a READ returns what was written");
                let (_, _, before) = r.io(BlockOp::Read, 0, vec![0xee; b]);
                assert!(before.iter().all(|x| *x == 0), "unwritten blocks read as zeros");
            } else {
                assert!(back.iter().all(|x| *x == 0), "a null volume reads zeros");
            }
        }
        DataModel::PovProtocol => {
            let (st, n, cfg) = r.io(BlockOp::Read, 0, vec![0; 512]);
            assert_eq!((st, n), (BlockStatus::Ok, 512));
            assert_eq!(&cfg[..4], b"PoVD", "the configuration space comes first");
            assert_eq!(r.io(BlockOp::Write, 0, pattern[..512].to_vec()).0, BlockStatus::IoErr, "it is read-only");
            let (_, _, again) = r.io(BlockOp::Read, 0, vec![0; 512]);
            assert_eq!(again, cfg, "and unchanged");
        }
    }
}

/// Many requests at once complete exactly once each; an idle device says so; destruct
/// completes what is left and the device stays quiet after.
fn exactly_once_and_destruct(s: Subject) {
    let (mut r, _, model) = new_rig(s);
    let b = r.dev.block_size() as usize;
    let mut tags = Vec::new();
    for i in 0..32u64 {
        let off = (i % 4) * b as u64;
        let t = match (i % 4, model) {
            (0, _) => r.submit(BlockOp::GetId, 0, vec![0; 20]),
            (1, _) => r.submit(BlockOp::Flush, 0, Vec::new()),
            (2, DataModel::PovProtocol) => r.submit(BlockOp::Read, 0, vec![0; 512]),
            (2, _) => r.submit(BlockOp::Write, off, vec![i as u8; b]),
            _ => r.submit(BlockOp::Read, if model == DataModel::PovProtocol { 0 } else { off }, vec![0; b]),
        };
        tags.push(t);
    }
    for t in &tags {
        let (st, _, _) = r.wait(*t);
        assert_eq!(st, BlockStatus::Ok, "request {t}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut idle = false;
    while !idle {
        assert!(Instant::now() < deadline, "an idle device keeps reporting work");
        idle = r.dev.poll(&mut ()) == PollStatus::Idle;
        std::thread::sleep(Duration::from_millis(1));
    }
    r.reap();
    assert!(r.done.is_empty(), "completions nobody asked for");
    // Requests in progress at destruct complete (any status), exactly once.
    let pending: Vec<u64> = (0..4).map(|_| r.submit(BlockOp::GetId, 0, vec![0; 20])).collect();
    r.dev.destruct(&mut ());
    r.reap();
    for t in pending {
        assert!(r.done.remove(&t).is_some(), "request {t} lost at destruct");
    }
    r.dev.poll(&mut ());
    r.reap();
    assert!(r.done.is_empty(), "completions after destruct");
}
