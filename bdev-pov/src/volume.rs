//! Plain volumes: ordinary virtio-blk disks whose data the proxy stores (issue 3), and
//! the device-path null volume (data never leaves the DPU).
//!
//! A [`VolumeDevice`] serves READ, WRITE, FLUSH and GET_ID like any disk. Each READ or
//! WRITE becomes `VolumeRead` / `VolumeWrite` frames (`docs/protocol.md`, "Plain
//! volumes") sent on the device's proxy connections (the same [`ProxyConn`] fast path
//! as a PoV device, round-robin per frame); an IO larger than 1 MiB is split into
//! 1 MiB frames and completes when every piece has been answered (`IOERR` if any
//! failed). Rules:
//!
//! * A WRITE completes only after the proxy acknowledged every piece.
//! * A FLUSH first waits until every WRITE submitted before it has completed, then
//!   sends `VolumeFlush` on every proxy connection that acknowledged writes since its
//!   last flush (or still has a flush outstanding), and completes when all of them
//!   answered `Ok`. So a FLUSH covers writes acknowledged through any connection.
//! * An IO whose offset or length is not a multiple of the block size, that reaches
//!   past the end, or whose buffer is unmapped completes with `IOERR`; nothing panics.
//! * A request without an answer within `request_timeout_ms`, or on a connection that
//!   breaks or cannot be made, completes with `IOERR`. The connection is retried on
//!   later IO (at most every 500 ms), so the device recovers when the proxy is back.
//! * GET_ID returns the serial `vol-<name>` (truncated to 20 bytes), which no host
//!   mistakes for a PoV device (`pov-`).
//!
//! The volume is opened (created if missing) by [`open_volume`] before the device is
//! built, so a size mismatch fails the control call, not the first IO.
//!
//! A [`NullVolume`] (like SPDK's null bdev) checks IOs the same way but never touches
//! a transport: reads return zeros, writes are dropped, FLUSH completes at once. It
//! measures the device path alone.

use crate::block::{BlockCompletion, BlockOp, BlockRequest, BlockStatus};
use crate::forward::{GatherStats, Gathering, ProxyConn, RxFrames};
use pov_proto::io::{flags, Op, SdkHint};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::{Status, MAX_IO_BYTES};
use pov_runtime::{FdRegistry, PollStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Prefix of a volume's virtio-blk serial.
pub const VOLUME_SERIAL_PREFIX: &str = "vol-";
/// Largest volume device name, bytes (the serial keeps its first 16 bytes).
pub const MAX_VOLUME_NAME: usize = 63;

/// The 20-byte virtio-blk serial of volume device `name`: `vol-<name>`, truncated to
/// 20 bytes and NUL padded.
pub fn volume_serial(name: &str) -> [u8; pov_proto::layout::SERIAL_LEN] {
    let mut s = [0u8; pov_proto::layout::SERIAL_LEN];
    let full = format!("{VOLUME_SERIAL_PREFIX}{name}");
    let n = full.len().min(s.len());
    s[..n].copy_from_slice(&full.as_bytes()[..n]);
    s
}

/// Parameters of a volume device (a `pov_volume_create` call, defaults resolved).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Device name (tenant-name rules); the serial is `vol-<name>`.
    pub name: String,
    /// Name of the backing volume on the proxy.
    pub volume: String,
    /// Size in bytes, a non-zero multiple of `block_size`.
    pub size: u64,
    /// Block size in bytes: 512 or 4096. IO must be aligned to it.
    pub block_size: u32,
    /// Proxy endpoints (`tcp:HOST:PORT`); empty for a null volume.
    pub proxies: Vec<String>,
    /// A proxy request without an answer for this long fails with IOERR, ms.
    pub request_timeout_ms: u32,
}

/// Default request timeout of a volume, ms.
pub const DEFAULT_VOLUME_TIMEOUT_MS: u32 = 30_000;

/// Why a volume could not be opened or its device built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// A parameter is out of range.
    #[error("invalid volume parameter {field}: {why}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The backing volume exists with another size (volumes are never resized).
    #[error("backing volume {volume:?} on proxy {proxy} exists with a size other than {size} bytes (block size {block_size}); volumes are never resized")]
    SizeMismatch {
        /// Backing volume name.
        volume: String,
        /// The proxy that answered.
        proxy: String,
        /// The size asked for, bytes.
        size: u64,
        /// The block size asked for, bytes.
        block_size: u32,
    },
    /// The proxy answered with an error status.
    #[error("proxy {proxy} refused to open volume {volume:?}: {status}")]
    Refused {
        /// Backing volume name.
        volume: String,
        /// The proxy.
        proxy: String,
        /// Its answer.
        status: Status,
    },
    /// No proxy could be reached or answered in time.
    #[error("no proxy answered VolumeOpen for {volume:?}: {why}")]
    Unreachable {
        /// Backing volume name.
        volume: String,
        /// The last error seen.
        why: String,
    },
}

impl VolumeConfig {
    /// Capacity in 512-byte sectors (virtio-blk `capacity`).
    pub fn capacity_sectors(&self) -> u64 {
        self.size / 512
    }

    /// Checks name, size, block size and timeout; `null` volumes need no proxies.
    ///
    /// # Errors
    /// [`VolumeError::Invalid`] naming the bad parameter.
    pub fn validate(&self, null: bool) -> Result<(), VolumeError> {
        let inv = |field, why: &str| Err(VolumeError::Invalid { field, why: why.to_string() });
        if !pov_proto::path::valid_tenant_name(&self.name) {
            return inv("name", "use 1-63 characters of A-Z a-z 0-9 _ . - (not starting with '.')");
        }
        if !pov_proto::path::valid_tenant_name(&self.volume) {
            return inv("volume", "use 1-63 characters of A-Z a-z 0-9 _ . - (not starting with '.')");
        }
        if self.block_size != 512 && self.block_size != 4096 {
            return inv("block_size", "must be 512 or 4096");
        }
        if self.size == 0 || self.size.checked_rem(self.block_size as u64) != Some(0) || self.size > i64::MAX as u64 {
            return inv("size", "must be a non-zero multiple of block_size (bytes)");
        }
        if self.request_timeout_ms == 0 {
            return inv("request_timeout_ms", "must be > 0");
        }
        if !null && self.proxies.is_empty() {
            return inv("proxies", "at least one proxy endpoint is needed (or null: true)");
        }
        Ok(())
    }
}

/// Opens the backing volume (creating it, zero-filled, if missing) on the first
/// proxy that answers, blocking for at most `timeout` per proxy. Returns the volume
/// size in bytes. Call it off the reactors (it sleeps while waiting).
///
/// # Errors
/// [`VolumeError::SizeMismatch`] if the volume exists with another size,
/// [`VolumeError::Refused`] for another error status, [`VolumeError::Unreachable`] if no
/// proxy answered.
pub fn open_volume(cfg: &VolumeConfig, timeout: Duration) -> Result<u64, VolumeError> {
    let mut why = String::from("no proxy endpoints");
    for endpoint in &cfg.proxies {
        let mut t = match pov_runtime::transport::connect(endpoint) {
            Ok(t) => t,
            Err(e) => {
                why = e.to_string();
                continue;
            }
        };
        let req = volume_request(Op::VolumeOpen, 1, cfg.size, cfg.block_size, flags::CREATE, 0, &cfg.volume);
        let mut frame = Vec::new();
        if let Err(e) = req.encode_frame(&[], &mut frame) {
            return Err(VolumeError::Invalid { field: "volume", why: e.to_string() });
        }
        if let Err(e) = t.send_frame(&frame) {
            why = e.to_string();
            continue;
        }
        let deadline = Instant::now() + timeout;
        let mut answer: Option<(Status, u64)> = None;
        let mut failed = None;
        while answer.is_none() && Instant::now() < deadline {
            let r = t.poll(&mut |f| {
                if let Ok((r, _)) = ProxyResponse::decode(f) {
                    if r.tag == 1 {
                        answer = Some((r.status, r.result));
                    }
                }
            });
            if let Err(e) = r {
                failed = Some(e.to_string());
                break;
            }
            if answer.is_none() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        match answer {
            Some((Status::Ok, size)) if size == cfg.size => return Ok(size),
            Some((Status::Ok, _)) | Some((Status::Invalid, _)) => {
                return Err(VolumeError::SizeMismatch {
                    volume: cfg.volume.clone(),
                    proxy: endpoint.clone(),
                    size: cfg.size,
                    block_size: cfg.block_size,
                })
            }
            Some((status, _)) => {
                return Err(VolumeError::Refused { volume: cfg.volume.clone(), proxy: endpoint.clone(), status })
            }
            None => why = failed.unwrap_or_else(|| format!("{endpoint}: no answer within {} ms", timeout.as_millis())),
        }
    }
    Err(VolumeError::Unreachable { volume: cfg.volume.clone(), why })
}

#[allow(clippy::too_many_arguments)]
fn volume_request(op: Op, tag: u64, offset: u64, length: u32, fl: u32, load: u32, volume: &str) -> ProxyRequest {
    ProxyRequest {
        op,
        tag,
        offset,
        length,
        flags: fl,
        hint: SdkHint::default(),
        trace: false,
        qos: 0,
        load,
        session_id: 0,
        tenant: volume.to_string(),
        path: String::new(),
    }
}

/// Checks a READ/WRITE against the volume: aligned to `block_size`, inside `size`.
fn io_in_range(offset: u64, len: usize, size: u64, block_size: u32) -> bool {
    let bs = block_size as u64;
    offset.checked_rem(bs) == Some(0)
        && (len as u64).checked_rem(bs) == Some(0)
        && offset.checked_add(len as u64).is_some_and(|e| e <= size)
}

fn get_id(mut req: BlockRequest, serial: &[u8]) -> BlockCompletion {
    let n = req.buf.len().min(serial.len());
    let (status, written) = match req.buf.write_at(0, &serial[..n]) {
        Ok(()) => (BlockStatus::Ok, n as u32),
        Err(_) => (BlockStatus::IoErr, 0),
    };
    BlockCompletion { tag: req.tag, status, written, buf: req.buf }
}

/// Counters of a volume device (shown by `pov_device_get_devices`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VolumeStats {
    /// READs completed.
    pub reads: u64,
    /// WRITEs completed.
    pub writes: u64,
    /// FLUSHes completed.
    pub flushes: u64,
    /// Block requests completed with IOERR or UNSUPP.
    pub errors: u64,
    /// Bytes read by the host.
    pub bytes_read: u64,
    /// Bytes written by the host.
    pub bytes_written: u64,
    /// Proxy requests sent (pieces of ≤ 1 MiB and flushes).
    pub proxy_requests: u64,
    /// Proxy requests that timed out.
    pub timeouts: u64,
    /// Proxy answers matching no request (after a timeout), dropped.
    pub stale_proxy_responses: u64,
    /// Block requests in progress.
    pub in_flight: u32,
    /// Proxy connections up.
    pub proxies_connected: u32,
    /// Frames per send and per receive on the proxy connections (gathering IO).
    pub gathering: GatherStats,
}

/// A block request in progress (READ or WRITE split into pieces, or FLUSH).
struct Io {
    req: BlockRequest,
    /// Pieces (or per-connection flushes) not answered yet.
    outstanding: u32,
    failed: bool,
    /// WRITE: position in submission order (for FLUSH barriers).
    write_seq: Option<u64>,
}

/// One proxy request in flight.
struct Piece {
    io: u64,
    /// Byte offset of the piece within the block request's buffer.
    buf_offset: usize,
    len: usize,
    op: Op,
    proxy: usize,
    deadline: Instant,
}

/// A FLUSH waiting for the WRITEs submitted before it.
struct PendingFlush {
    io: u64,
    /// WRITEs with a sequence number below this must complete first.
    barrier: u64,
}

/// A plain volume backed by a proxy. See the module documentation. Owned by one
/// reactor and driven by its poller.
pub struct VolumeDevice {
    cfg: VolumeConfig,
    serial: [u8; pov_proto::layout::SERIAL_LEN],
    proxies: Vec<ProxyConn>,
    /// Per connection: writes were acknowledged on it since its last flush was sent.
    dirty: Vec<bool>,
    /// Per connection: flushes sent and not answered.
    flushes_out: Vec<u32>,
    next_proxy: usize,
    ios: HashMap<u64, Io>,
    pieces: HashMap<u64, Piece>,
    writes_in_flight: BTreeSet<u64>,
    next_write_seq: u64,
    flushes: Vec<PendingFlush>,
    next_tag: u64,
    completions: Vec<BlockCompletion>,
    frame: Vec<u8>,
    data: Vec<u8>,
    rx_frames: RxFrames,
    /// Gathering policy of the proxy connections.
    gathering: Gathering,
    /// Set by [`VolumeDevice::shutdown`]: nothing is sent any more.
    stopping: bool,
    stats: VolumeStats,
}

impl VolumeDevice {
    /// Builds the device (no IO: proxy connections are made on first use). Open the
    /// volume first with [`open_volume`].
    ///
    /// # Errors
    /// [`VolumeError::Invalid`] (see [`VolumeConfig::validate`]).
    pub fn new(cfg: VolumeConfig) -> Result<VolumeDevice, VolumeError> {
        cfg.validate(false)?;
        let n = cfg.proxies.len();
        Ok(VolumeDevice {
            serial: volume_serial(&cfg.name),
            proxies: cfg.proxies.iter().map(|p| ProxyConn::new(p.clone())).collect(),
            dirty: vec![false; n],
            flushes_out: vec![0; n],
            cfg,
            next_proxy: 0,
            ios: HashMap::new(),
            pieces: HashMap::new(),
            writes_in_flight: BTreeSet::new(),
            next_write_seq: 0,
            flushes: Vec::new(),
            next_tag: 1,
            completions: Vec::new(),
            frame: Vec::new(),
            data: Vec::new(),
            rx_frames: RxFrames::default(),
            gathering: Gathering::default(),
            stopping: false,
            stats: VolumeStats::default(),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &VolumeConfig {
        &self.cfg
    }

    /// The 20-byte virtio-blk serial (`vol-<name>`).
    pub fn serial(&self) -> [u8; pov_proto::layout::SERIAL_LEN] {
        self.serial
    }

    /// Counters.
    pub fn stats(&self) -> VolumeStats {
        let mut s = self.stats.clone();
        s.in_flight = self.ios.len() as u32;
        s.proxies_connected = self.proxies.iter().filter(|p| p.transport.is_some()).count() as u32;
        s.gathering = GatherStats::of(&self.proxies);
        s
    }

    /// Sets the gathering policy of the proxy connections (checked by the caller with
    /// [`Gathering::validate`]); it applies from the next request on.
    pub fn set_gathering(&mut self, g: Gathering) {
        self.gathering = g;
    }

    /// The gathering policy in force.
    pub fn gathering(&self) -> Gathering {
        self.gathering
    }

    /// Takes every completion produced so far.
    pub fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        out.append(&mut self.completions);
    }

    /// The next instant [`VolumeDevice::poll`] must run even if nothing arrives (the
    /// earliest request timeout).
    pub fn deadline(&self) -> Option<Instant> {
        self.pieces.values().map(|p| p.deadline).min()
    }

    fn complete(&mut self, req: BlockRequest, status: BlockStatus, written: u32) {
        if status != BlockStatus::Ok {
            self.stats.errors += 1;
        }
        self.completions.push(BlockCompletion { tag: req.tag, status, written, buf: req.buf });
    }

    /// Serves one block request; its completion comes later through
    /// [`VolumeDevice::take_completions`].
    pub fn submit(&mut self, req: BlockRequest) {
        match req.op {
            BlockOp::GetId => {
                let c = get_id(req, &self.serial);
                if c.status != BlockStatus::Ok {
                    self.stats.errors += 1;
                }
                self.completions.push(c);
            }
            BlockOp::Other(_) => self.complete(req, BlockStatus::Unsupported, 0),
            BlockOp::Flush => {
                let id = self.new_io(req, None);
                self.flushes.push(PendingFlush { io: id, barrier: self.next_write_seq });
                self.start_flushes();
            }
            BlockOp::Read | BlockOp::Write => self.submit_rw(req),
        }
    }

    fn new_io(&mut self, req: BlockRequest, write_seq: Option<u64>) -> u64 {
        let id = self.next_tag;
        self.next_tag += 1;
        self.ios.insert(id, Io { req, outstanding: 0, failed: false, write_seq });
        id
    }

    fn submit_rw(&mut self, req: BlockRequest) {
        let len = req.buf.len();
        if !io_in_range(req.offset, len, self.cfg.size, self.cfg.block_size) {
            return self.complete(req, BlockStatus::IoErr, 0);
        }
        if len == 0 {
            return self.complete(req, BlockStatus::Ok, 0);
        }
        let is_write = req.op == BlockOp::Write;
        let seq = is_write.then(|| {
            let s = self.next_write_seq;
            self.next_write_seq += 1;
            self.writes_in_flight.insert(s);
            s
        });
        let base = req.offset;
        let id = self.new_io(req, seq);
        let mut off = 0usize;
        while off < len {
            let n = (len - off).min(MAX_IO_BYTES as usize);
            let op = if is_write { Op::VolumeWrite } else { Op::VolumeRead };
            if !self.send_piece(id, op, base + off as u64, off, n) {
                // Pieces already sent finish on their own; the IO fails.
                self.ios.get_mut(&id).expect("just added").failed = true;
                break;
            }
            off += n;
        }
        self.maybe_finish(id);
    }

    /// Sends one piece of IO `id`; `false` if it could not be sent (the caller marks
    /// the IO failed).
    fn send_piece(&mut self, id: u64, op: Op, offset: u64, buf_offset: usize, len: usize) -> bool {
        let pidx = self.next_proxy % self.proxies.len();
        self.next_proxy = self.next_proxy.wrapping_add(1);
        let mut data = std::mem::take(&mut self.data);
        data.clear();
        if op == Op::VolumeWrite {
            data.resize(len, 0);
            let io = self.ios.get(&id).expect("live io");
            if io.req.buf.read_at(buf_offset, &mut data).is_err() {
                self.data = data;
                return false;
            }
        }
        let length = if op == Op::VolumeRead { len as u32 } else { 0 };
        let sent = self.send(id, op, offset, length, pidx, &data, buf_offset, len);
        self.data = data;
        sent
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        id: u64,
        op: Op,
        offset: u64,
        length: u32,
        pidx: usize,
        payload: &[u8],
        buf_offset: usize,
        len: usize,
    ) -> bool {
        if self.stopping {
            return false;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let conn = &mut self.proxies[pidx];
        let req = volume_request(op, tag, offset, length, 0, conn.in_flight, &self.cfg.volume);
        if let Err(e) = req.encode_frame(payload, &mut self.frame) {
            log::warn!("volume {}: cannot encode proxy request: {e}", self.cfg.name);
            return false;
        }
        if conn.ensure_connected().is_none() {
            return false;
        }
        if let Err(e) = conn.send(&self.frame, &self.gathering) {
            log::warn!("volume {}: proxy {}: {e}", self.cfg.name, conn.endpoint);
            conn.drop_transport();
            return false;
        }
        conn.in_flight += 1;
        self.stats.proxy_requests += 1;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms as u64);
        self.pieces.insert(tag, Piece { io: id, buf_offset, len, op, proxy: pidx, deadline });
        self.ios.get_mut(&id).expect("live io").outstanding += 1;
        true
    }

    /// Sends the FLUSHes whose barrier has passed.
    fn start_flushes(&mut self) {
        let oldest_write = self.writes_in_flight.first().copied().unwrap_or(u64::MAX);
        let ready: Vec<u64> = self.flushes.iter().filter(|f| f.barrier <= oldest_write).map(|f| f.io).collect();
        if ready.is_empty() {
            return;
        }
        self.flushes.retain(|f| f.barrier > oldest_write);
        for id in ready {
            for pidx in 0..self.proxies.len() {
                if !self.dirty[pidx] && self.flushes_out[pidx] == 0 {
                    continue;
                }
                // Cleared now: writes acknowledged from here on need a later flush.
                self.dirty[pidx] = false;
                if self.send(id, Op::VolumeFlush, 0, 0, pidx, &[], 0, 0) {
                    self.flushes_out[pidx] += 1;
                } else {
                    self.dirty[pidx] = true;
                    self.ios.get_mut(&id).expect("live io").failed = true;
                }
            }
            self.maybe_finish(id);
        }
    }

    /// Completes IO `id` if nothing of it is outstanding.
    fn maybe_finish(&mut self, id: u64) {
        let Some(io) = self.ios.get(&id) else { return };
        if io.outstanding > 0 {
            return;
        }
        let io = self.ios.remove(&id).expect("present");
        let len = io.req.buf.len();
        let op = io.req.op;
        if let Some(seq) = io.write_seq {
            self.writes_in_flight.remove(&seq);
        }
        let status = if io.failed { BlockStatus::IoErr } else { BlockStatus::Ok };
        if status == BlockStatus::Ok {
            match op {
                BlockOp::Read => {
                    self.stats.reads += 1;
                    self.stats.bytes_read += len as u64;
                }
                BlockOp::Write => {
                    self.stats.writes += 1;
                    self.stats.bytes_written += len as u64;
                }
                _ => self.stats.flushes += 1,
            }
        }
        let written = if op == BlockOp::Read && status == BlockStatus::Ok { len as u32 } else { 0 };
        self.complete(io.req, status, written);
        if io.write_seq.is_some() && !self.flushes.is_empty() {
            self.start_flushes();
        }
    }

    /// Finishes one proxy request (answered, or failed locally with `status`).
    fn finish_piece(&mut self, tag: u64, status: Status, result: u64, payload: &[u8]) {
        let Some(p) = self.pieces.remove(&tag) else {
            self.stats.stale_proxy_responses += 1;
            return;
        };
        let conn = &mut self.proxies[p.proxy];
        conn.in_flight = conn.in_flight.saturating_sub(1);
        let Some(io) = self.ios.get_mut(&p.io) else { return };
        io.outstanding -= 1;
        let mut ok = status.is_ok();
        match p.op {
            Op::VolumeRead if ok => {
                ok = payload.len() == p.len && io.req.buf.write_at(p.buf_offset, payload).is_ok();
            }
            Op::VolumeWrite if ok => {
                ok = result == p.len as u64;
                self.dirty[p.proxy] = true;
            }
            Op::VolumeFlush => {
                self.flushes_out[p.proxy] = self.flushes_out[p.proxy].saturating_sub(1);
                if !ok {
                    // Whatever that flush covered is not known durable.
                    self.dirty[p.proxy] = true;
                }
            }
            _ => {}
        }
        if !ok {
            log::debug!("volume {}: {:?} piece failed: {status}", self.cfg.name, p.op);
            io.failed = true;
        }
        self.maybe_finish(p.io);
    }

    /// Moves proxy traffic and expires timeouts. Returns [`PollStatus::Busy`] if it
    /// did any work or still has bytes to send.
    pub fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus {
        let mut busy = false;
        let mut frames = std::mem::take(&mut self.rx_frames);
        for i in 0..self.proxies.len() {
            let (moved, broken) = self.proxies[i].poll_frames(&self.cfg.name, &self.gathering, &mut frames);
            // Bytes still to send: keep polling so that the transport drains them.
            busy |= moved || self.proxies[i].pending_send_bytes() > 0;
            for f in frames.iter() {
                busy = true;
                match ProxyResponse::decode(f) {
                    Ok((r, payload)) => self.finish_piece(r.tag, r.status, r.result, payload),
                    Err(e) => log::warn!("volume {}: bad frame from proxy: {e}", self.cfg.name),
                }
            }
            frames.clear();
            let conn = &mut self.proxies[i];
            if broken {
                conn.disconnect(fds);
                let lost: Vec<u64> = self.pieces.iter().filter(|(_, p)| p.proxy == i).map(|(t, _)| *t).collect();
                for tag in lost {
                    self.finish_piece(tag, Status::Unavailable, 0, &[]);
                }
                busy = true;
            } else {
                conn.sync_watch(fds);
            }
        }
        self.rx_frames = frames;
        let now = Instant::now();
        let expired: Vec<u64> = self.pieces.iter().filter(|(_, p)| p.deadline <= now).map(|(t, _)| *t).collect();
        for tag in expired {
            log::warn!("volume {}: proxy request {tag} timed out", self.cfg.name);
            self.stats.timeouts += 1;
            self.finish_piece(tag, Status::Timeout, 0, &[]);
            busy = true;
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Stops the device: every request in progress completes with IOERR and proxy
    /// connections are closed.
    pub fn shutdown(&mut self, fds: &mut dyn FdRegistry) {
        self.stopping = true;
        // FLUSHes still behind their barrier fail with everything else below.
        self.flushes.clear();
        let tags: Vec<u64> = self.pieces.keys().copied().collect();
        for tag in tags {
            self.finish_piece(tag, Status::Unavailable, 0, &[]);
        }
        let ids: Vec<u64> = self.ios.keys().copied().collect();
        for id in ids {
            if let Some(io) = self.ios.get_mut(&id) {
                io.failed = true;
            }
            self.maybe_finish(id);
        }
        for p in self.proxies.iter_mut() {
            p.disconnect(fds);
        }
    }
}

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
    completions: Vec<BlockCompletion>,
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
            completions: Vec::new(),
            stats: NullVolumeStats::default(),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &VolumeConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> NullVolumeStats {
        self.stats.clone()
    }

    /// Serves one block request at once.
    pub fn submit(&mut self, mut req: BlockRequest) {
        self.stats.requests += 1;
        let len = req.buf.len();
        let (status, written) = match req.op {
            BlockOp::GetId => {
                let c = get_id(req, &self.serial);
                if c.status != BlockStatus::Ok {
                    self.stats.errors += 1;
                }
                self.completions.push(c);
                return;
            }
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
        if status != BlockStatus::Ok {
            self.stats.errors += 1;
        }
        self.completions.push(BlockCompletion { tag: req.tag, status, written, buf: req.buf });
    }

    /// Takes every completion produced so far.
    pub fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        out.append(&mut self.completions);
    }
}
