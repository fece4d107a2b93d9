//! Test doubles and the conformance body of the block-device seam (the `testing`
//! feature): [`MemDisk`], a RAM disk, and [`conformance`], the one test body every
//! [`BlockDevice`] implementation passes.

pub mod conformance;

use crate::block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus};
use pov_runtime::{FdRegistry, PollStatus};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Instant;

/// Counters of a [`MemDisk`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MemDiskStats {
    /// Requests submitted.
    pub requests: u64,
    /// Requests completed with an error status.
    pub errors: u64,
    /// Bytes read by the host, bytes.
    pub bytes_read: u64,
    /// Bytes written by the host, bytes.
    pub bytes_written: u64,
}

/// A RAM disk implementing [`BlockDevice`]: a test double for the front end and a
/// baseline for its cost.
///
/// READ, WRITE, FLUSH and GET_ID are served; any other type completes with
/// [`BlockStatus::Unsupported`]; an IO that leaves the disk or touches unmapped host
/// memory completes with [`BlockStatus::IoErr`]. With
/// [`with_deferred_completions`](MemDisk::with_deferred_completions), a request
/// completes at the second [`poll`](BlockDevice::poll) after its submission, and
/// requests submitted together complete in reverse order, to exercise asynchronous,
/// out-of-order completion paths.
pub struct MemDisk {
    data: Vec<u8>,
    serial: [u8; 20],
    name: String,
    config: Value,
    defer: bool,
    /// Deferred: submitted since the last poll (newest first).
    pending: VecDeque<BlockCompletion>,
    /// Deferred: seen by one poll, completed by the next.
    aging: Vec<BlockCompletion>,
    done: Vec<BlockCompletion>,
    stats: MemDiskStats,
}

impl MemDisk {
    /// A zero-filled disk of `bytes` bytes (rounded down to whole 512-byte sectors)
    /// whose GET_ID answer is `serial` (truncated or zero-padded to 20 bytes).
    pub fn new(bytes: usize, serial: &str) -> MemDisk {
        let mut s = [0u8; 20];
        let n = serial.len().min(20);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        MemDisk {
            data: vec![0; bytes / 512 * 512],
            serial: s,
            name: serial.to_string(),
            config: json!({ "method": "testing_memdisk_create", "params": { "name": serial, "size": bytes / 512 * 512 } }),
            defer: false,
            pending: VecDeque::new(),
            aging: Vec::new(),
            done: Vec::new(),
            stats: MemDiskStats::default(),
        }
    }

    /// Makes [`BlockDevice::write_config_json`] return `call` (a test double standing in
    /// for another kind of device writes that kind's call).
    pub fn with_config_json(mut self, call: Value) -> MemDisk {
        self.config = call;
        self
    }

    /// Completes requests two polls late, in reverse submission order.
    pub fn with_deferred_completions(mut self) -> MemDisk {
        self.defer = true;
        self
    }

    /// The disk's contents.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Counters.
    pub fn stats(&self) -> &MemDiskStats {
        &self.stats
    }

    fn execute(&mut self, req: &mut BlockRequest) -> (BlockStatus, u32) {
        let len = req.buf.len();
        // Whole 512-byte sectors only, as on any virtio-blk disk.
        let range = usize::try_from(req.offset)
            .ok()
            .filter(|o| o % 512 == 0 && len % 512 == 0)
            .and_then(|o| Some(o..o.checked_add(len)?))
            .filter(|r| r.end <= self.data.len());
        match req.op {
            BlockOp::Read => {
                let Some(r) = range else { return (BlockStatus::IoErr, 0) };
                match req.buf.write_at(0, &self.data[r]) {
                    Ok(()) => {
                        self.stats.bytes_read += len as u64;
                        (BlockStatus::Ok, len as u32)
                    }
                    Err(_) => (BlockStatus::IoErr, 0),
                }
            }
            BlockOp::Write => {
                let Some(r) = range else { return (BlockStatus::IoErr, 0) };
                match req.buf.read_at(0, &mut self.data[r]) {
                    Ok(()) => {
                        self.stats.bytes_written += len as u64;
                        (BlockStatus::Ok, 0)
                    }
                    Err(_) => (BlockStatus::IoErr, 0),
                }
            }
            BlockOp::Flush => (BlockStatus::Ok, 0),
            BlockOp::GetId => {
                let n = len.min(self.serial.len());
                match req.buf.write_at(0, &self.serial[..n]) {
                    Ok(()) => (BlockStatus::Ok, n as u32),
                    Err(_) => (BlockStatus::IoErr, 0),
                }
            }
            BlockOp::Other(_) => (BlockStatus::Unsupported, 0),
        }
    }
}

impl BlockDevice for MemDisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn capacity_sectors(&self) -> u64 {
        self.data.len() as u64 / 512
    }

    fn submit(&mut self, mut req: BlockRequest) {
        self.stats.requests += 1;
        let (status, written) = self.execute(&mut req);
        if status != BlockStatus::Ok {
            self.stats.errors += 1;
        }
        let c = BlockCompletion { tag: req.tag, status, written, buf: req.buf };
        if self.defer {
            self.pending.push_front(c);
        } else {
            self.done.push(c);
        }
    }

    fn poll(&mut self, _fds: &mut dyn FdRegistry) -> PollStatus {
        if self.pending.is_empty() && self.aging.is_empty() {
            return PollStatus::Idle;
        }
        self.done.append(&mut self.aging);
        self.aging.extend(self.pending.drain(..));
        PollStatus::Busy
    }

    fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        out.append(&mut self.done);
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn stats_json(&self) -> Value {
        serde_json::to_value(&self.stats).unwrap_or(Value::Null)
    }

    fn write_config_json(&self) -> Value {
        self.config.clone()
    }

    fn destruct(&mut self, _fds: &mut dyn FdRegistry) {
        let aging = std::mem::take(&mut self.aging);
        for mut c in aging.into_iter().chain(self.pending.drain(..)) {
            c.status = BlockStatus::IoErr;
            c.written = 0;
            self.done.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: BlockOp, offset: u64, buf: Vec<u8>, tag: u64) -> BlockRequest {
        BlockRequest { op, offset, buf: Box::new(buf), tag }
    }

    #[test]
    fn memdisk_read_write_getid() {
        let mut d = MemDisk::new(8192, "mem-serial");
        assert_eq!(d.capacity_sectors(), 16);
        d.submit(req(BlockOp::Write, 512, vec![7u8; 1024], 1));
        d.submit(req(BlockOp::Read, 1024, vec![0u8; 512], 2));
        d.submit(req(BlockOp::Read, 8192, vec![0u8; 512], 3));
        d.submit(req(BlockOp::GetId, 0, vec![0u8; 20], 4));
        d.submit(req(BlockOp::Other(99), 0, Vec::new(), 5));
        let mut out = Vec::new();
        d.take_completions(&mut out);
        let st: Vec<_> = out.iter().map(|c| (c.tag, c.status, c.written)).collect();
        assert_eq!(
            st,
            vec![
                (1, BlockStatus::Ok, 0),
                (2, BlockStatus::Ok, 512),
                (3, BlockStatus::IoErr, 0),
                (4, BlockStatus::Ok, 20),
                (5, BlockStatus::Unsupported, 0)
            ]
        );
        let mut b = [0u8; 512];
        out[1].buf.read_at(0, &mut b).unwrap();
        assert!(b.iter().all(|x| *x == 7));
        let mut s = [0u8; 10];
        out[3].buf.read_at(0, &mut s).unwrap();
        assert_eq!(&s, b"mem-serial");
    }

    #[test]
    fn memdisk_deferred_and_shutdown() {
        let mut d = MemDisk::new(4096, "x").with_deferred_completions();
        d.submit(req(BlockOp::Flush, 0, Vec::new(), 1));
        d.submit(req(BlockOp::Flush, 0, Vec::new(), 2));
        let mut out = Vec::new();
        d.take_completions(&mut out);
        assert!(out.is_empty());
        assert_eq!(d.poll(&mut ()), PollStatus::Busy);
        d.take_completions(&mut out);
        assert!(out.is_empty());
        assert_eq!(d.poll(&mut ()), PollStatus::Busy);
        d.take_completions(&mut out);
        assert_eq!(out.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![2, 1]);
        d.submit(req(BlockOp::Flush, 0, Vec::new(), 3));
        d.destruct(&mut ());
        out.clear();
        d.take_completions(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, BlockStatus::IoErr);
    }
}
