//! The device-path null volume (like SPDK's null bdev, but reads are zero-filled):
//! data never leaves the DPU, to measure the device path alone.

use crate::block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus, Completions};
use crate::volume::{io_in_range, volume_serial, VolumeConfig, VolumeError};
use pov_runtime::{FdRegistry, PollStatus};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Instant;

/// Counters of a [`NullVolume`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct NullVolumeStats {
    /// Block requests served.
    pub requests: u64,
    /// Requests completed with IOERR or UNSUPP.
    pub errors: u64,
    /// Bytes read by the host (zeros).
    pub bytes_read: u64,
    /// Bytes written by the host (dropped).
    pub bytes_written: u64,
}

/// The device-path null volume (like SPDK's null bdev, but reads are zero-filled):
/// data never leaves the DPU. Same checks and serial as a [`VolumeDevice`].
pub struct NullVolume {
    cfg: VolumeConfig,
    serial: [u8; pov_proto::layout::SERIAL_LEN],
    zeros: Vec<u8>,
    out: Completions,
    stats: NullVolumeStats,
}

impl NullVolume {
    /// Builds a null volume (`proxies` is ignored).
    ///
    /// # Errors
    /// [`VolumeError::Invalid`] (see [`VolumeConfig::validate`]).
    pub fn new(cfg: VolumeConfig) -> Result<NullVolume, VolumeError> {
        cfg.validate(true)?;
        Ok(NullVolume {
            serial: volume_serial(&cfg.name),
            cfg,
            zeros: vec![0; 64 * 1024],
            out: Completions::default(),
            stats: NullVolumeStats::default(),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &VolumeConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> NullVolumeStats {
        NullVolumeStats { errors: self.out.errors, ..self.stats.clone() }
    }

    /// Serves one block request at once.
    pub fn submit(&mut self, mut req: BlockRequest) {
        self.stats.requests += 1;
        let len = req.buf.len();
        let (status, written) = match req.op {
            BlockOp::GetId => return self.out.get_id(req, &self.serial),
            BlockOp::Flush => (BlockStatus::Ok, 0),
            BlockOp::Other(_) => (BlockStatus::Unsupported, 0),
            _ if !io_in_range(req.offset, len, self.cfg.size, self.cfg.block_size) => (BlockStatus::IoErr, 0),
            BlockOp::Write => {
                self.stats.bytes_written += len as u64;
                (BlockStatus::Ok, 0)
            }
            BlockOp::Read => {
                let mut off = 0;
                let mut ok = true;
                while off < len && ok {
                    let n = (len - off).min(self.zeros.len());
                    ok = req.buf.write_at(off, &self.zeros[..n]).is_ok();
                    off += n;
                }
                if ok {
                    self.stats.bytes_read += len as u64;
                    (BlockStatus::Ok, len as u32)
                } else {
                    (BlockStatus::IoErr, 0)
                }
            }
        };
        self.out.complete(req, status, written);
    }

    /// Takes every completion produced so far.
    pub fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        self.out.take(out);
    }
}

/// Completes at submission; nothing to poll, nothing in flight at destruct.
impl BlockDevice for NullVolume {
    fn name(&self) -> &str {
        &self.cfg.name
    }
    fn capacity_sectors(&self) -> u64 {
        self.cfg.capacity_sectors()
    }
    fn block_size(&self) -> u32 {
        self.cfg.block_size
    }
    fn submit(&mut self, req: BlockRequest) {
        NullVolume::submit(self, req)
    }
    fn poll(&mut self, _fds: &mut dyn FdRegistry) -> PollStatus {
        PollStatus::Idle
    }
    fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        NullVolume::take_completions(self, out)
    }
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn stats_json(&self) -> Value {
        serde_json::to_value(NullVolume::stats(self)).unwrap_or(Value::Null)
    }
    /// `pov_volume_create` with `"null": true`.
    fn write_config_json(&self) -> Value {
        let c = &self.cfg;
        json!({ "method": "pov_volume_create", "params": {
            "name": c.name, "size": c.size, "block_size": c.block_size, "null": true,
            "request_timeout_ms": c.request_timeout_ms,
        }})
    }
    fn destruct(&mut self, _fds: &mut dyn FdRegistry) {}
}
