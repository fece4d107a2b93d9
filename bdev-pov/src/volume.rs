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
//! * With several proxies, a piece whose proxy fails before answering is resent to
//!   another (every volume request is idempotent; `forward::health`); a piece no proxy
//!   can take is held until one answers again. An IO completes with `IOERR` only when
//!   its `request_timeout_ms` passes first, so a proxy restart costs a delay.
//! * Built with [`VolumeDevice::new_opening`] (a configuration replay while the proxies
//!   are down), the device opens its backing volume itself in the background; IO
//!   waits for that (within its timeout); a refused open fails every IO.
//! * GET_ID returns the serial `vol-<name>` (truncated to 20 bytes), which no host
//!   mistakes for a PoV device (`pov-`).
//!
//! The volume is opened (created if missing) by [`open_volume`] before the device is
//! built, so a size mismatch fails the control call, not the first IO.
//!
//! A [`NullVolume`] (like SPDK's null bdev) checks IOs the same way but never touches
//! a transport: reads return zeros, writes are dropped, FLUSH completes at once. It
//! measures the device path alone.

use crate::block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus, Completions};
use crate::device::parse_endpoints;
use crate::forward::health::{conn_bit, release_held};
use crate::forward::{
    Forwarder, GatherStats, Gathering, GatheringControl, Outcome, RoundRobin, RouteControl, RouteKey, RouteView, Router,
};
use pov_proto::io::{flags, Op, SdkHint};
use pov_proto::route::RouteInput;
use pov_proto::wire::{ProxyRequestView, ProxyResponse};
use pov_proto::{Status, MAX_IO_BYTES};
use pov_runtime::transport::Endpoint;
use pov_runtime::{ErrorChain, FdRegistry, PollStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub use crate::null::{NullVolume, NullVolumeStats};

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
    /// Silence before a proxy is pinged, ms (10-60000; `forward::health`).
    #[serde(default = "crate::forward::health::default_ping_after_ms")]
    pub proxy_ping_after_ms: u32,
    /// A ping unanswered for this long declares the proxy down, ms (50-60000).
    #[serde(default = "crate::forward::health::default_down_after_ms")]
    pub proxy_down_after_ms: u32,
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
        if let Err(e) = crate::forward::health::Liveness::from_ms(self.proxy_ping_after_ms, self.proxy_down_after_ms) {
            return inv("proxy_ping_after_ms/proxy_down_after_ms", &e);
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
        let ep = Endpoint::parse(endpoint).map_err(|e| VolumeError::Invalid { field: "proxies", why: e.to_string() })?;
        let mut t = match pov_runtime::transport::connect_blocking(&ep, pov_runtime::transport::CONNECT_TIMEOUT) {
            Ok(t) => t,
            Err(e) => {
                why = ErrorChain(&e).to_string();
                continue;
            }
        };
        let req =
            ProxyRequestView { tag: 1, ..volume_request(Op::VolumeOpen, cfg.size, cfg.block_size, flags::CREATE, &cfg.volume) };
        let mut frame = Vec::new();
        if let Err(e) = req.encode_frame(&[], &mut frame) {
            return Err(VolumeError::Invalid { field: "volume", why: e.to_string() });
        }
        if let Err(e) = t.send_frame(&frame) {
            why = ErrorChain(&e).to_string();
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
                failed = Some(ErrorChain(&e).to_string());
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

/// A volume request (tag 0: the forwarder assigns it) on backing volume `volume`.
fn volume_request(op: Op, offset: u64, length: u32, fl: u32, volume: &str) -> ProxyRequestView<'_> {
    ProxyRequestView {
        op,
        tag: 0,
        offset,
        length,
        flags: fl,
        hint: SdkHint::default(),
        trace: false,
        qos: 0,
        load: 0,
        epoch: 0,
        session_id: 0,
        tenant: volume,
        path: "",
        read_only: false,
        prefix: "",
    }
}

/// Checks a READ/WRITE against the volume: aligned to `block_size`, inside `size`.
pub(crate) fn io_in_range(offset: u64, len: usize, size: u64, block_size: u32) -> bool {
    let bs = block_size as u64;
    offset.checked_rem(bs) == Some(0)
        && (len as u64).checked_rem(bs) == Some(0)
        && offset.checked_add(len as u64).is_some_and(|e| e <= size)
}

/// Counters of a volume device (shown by `pov_device_get_devices`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VolumeStats {
    /// `"ready"`, `"opening"` (the backing volume is being opened in the background:
    /// IO waits; `open_error` says why the last try failed) or `"failed"` (a proxy
    /// refused the open: every IO fails; `open_error` says why).
    pub state: &'static str,
    /// Why the backing volume is not open, if it is not.
    pub open_error: Option<String>,
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
    /// Proxy failover counters and each proxy's state (flattened into the JSON).
    #[serde(flatten)]
    pub failover: crate::forward::FailoverStats,
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

/// One proxy request in flight (the forwarder's context of it).
struct Piece {
    io: u64,
    /// Byte offset of the piece in the volume.
    offset: u64,
    /// Byte offset of the piece within the block request's buffer.
    buf_offset: usize,
    len: usize,
    op: Op,
    /// The connection it is on.
    proxy: usize,
    /// Connections tried (bit i: connection i; past 63 not tracked).
    tried: u64,
    /// Times sent.
    tries: u32,
    /// The first try's deadline (a resend never gets more time).
    deadline: Instant,
    /// Redirects followed (see `crate::device::MAX_REDIRECTS`).
    redirects: u32,
}

/// Whether the backing volume has been opened (see [`VolumeDevice::new_opening`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenState {
    /// Opened (by [`open_volume`] before the device was built, or in the background).
    Ready,
    /// Not opened yet: a `VolumeOpen` is sent through the forwarder (at most one at a
    /// time, the next not before `next_try`); IO waits.
    Opening { next_try: Instant, in_flight: bool, last_error: Option<String> },
    /// A proxy refused the open (size mismatch, permission): every IO fails.
    Failed(String),
}

/// How long a background open waits before trying again after a failed try.
const OPEN_RETRY: Duration = Duration::from_millis(500);
/// Longest wait for the answer to one background `VolumeOpen`.
const VOLUME_OPEN_TRY: Duration = Duration::from_secs(5);
/// The [`Piece::io`] of a background `VolumeOpen`.
const OPEN_IO: u64 = u64::MAX;

/// What [`VolumeDevice::dispatch`] did with a piece.
enum Dispatched {
    Sent,
    /// No proxy could take it now (nothing was sent): the piece, to hold.
    NoProxy(Piece),
    /// It cannot be sent at all (its buffer is unreadable, it cannot be encoded, the
    /// device is stopping).
    Failed,
}

/// A FLUSH waiting for the WRITEs submitted before it.
struct PendingFlush {
    io: u64,
    /// WRITEs with a sequence number below this must complete first.
    barrier: u64,
}

/// Everything of a volume but its forwarder.
struct VolumeState {
    /// The device's name and the volume's size, bytes (for the background open).
    name: String,
    size: u64,
    /// Per connection: writes were acknowledged on it since its last flush was sent.
    dirty: Vec<bool>,
    /// Per connection: flushes sent and not answered.
    flushes_out: Vec<u32>,
    router: RoundRobin,
    ios: HashMap<u64, Io>,
    next_io: u64,
    writes_in_flight: BTreeSet<u64>,
    next_write_seq: u64,
    flushes: Vec<PendingFlush>,
    /// A WRITE completed while FLUSHes wait: see whether their barrier passed.
    flush_check: bool,
    /// Scratch buffer for the payload of a piece of WRITE.
    data: Vec<u8>,
    out: Completions,
    stats: VolumeStats,
    /// Pieces whose proxy failed before answering, to resend after the poll (every
    /// volume request is idempotent).
    resend: Vec<Piece>,
    /// Pieces no proxy could take, waiting for one until their deadline.
    held: Vec<Piece>,
    open: OpenState,
    /// Block requests that arrived before the volume was opened, with their deadline.
    waiting_open: Vec<(BlockRequest, Instant)>,
    stopping: bool,
    /// The volume's route table (redirects offer newer ones).
    routes: RouteControl,
}

/// A plain volume backed by a proxy. See the module documentation. Owned by one
/// reactor and driven by its poller.
pub struct VolumeDevice {
    cfg: VolumeConfig,
    serial: [u8; pov_proto::layout::SERIAL_LEN],
    fwd: Forwarder<Piece>,
    st: VolumeState,
    route: RouteView,
}

impl VolumeDevice {
    /// Builds the device (no IO: proxy connections are made on first use). Open the
    /// volume first with [`open_volume`].
    ///
    /// # Errors
    /// [`VolumeError::Invalid`] (see [`VolumeConfig::validate`]; also a malformed
    /// endpoint).
    pub fn new(cfg: VolumeConfig) -> Result<VolumeDevice, VolumeError> {
        cfg.validate(false)?;
        let endpoints =
            parse_endpoints(&cfg.proxies).map_err(|e| VolumeError::Invalid { field: "proxies", why: e.to_string() })?;
        let n = endpoints.len();
        let timeout = Duration::from_millis(cfg.request_timeout_ms as u64);
        let routes = RouteControl::default();
        let mut fwd = Forwarder::new(format!("volume {}", cfg.name), &endpoints, timeout, GatheringControl::default());
        if let Ok(l) = crate::forward::health::Liveness::from_ms(cfg.proxy_ping_after_ms, cfg.proxy_down_after_ms) {
            fwd.set_liveness(l);
        }
        Ok(VolumeDevice {
            serial: volume_serial(&cfg.name),
            fwd,
            st: VolumeState {
                name: cfg.name.clone(),
                size: cfg.size,
                dirty: vec![false; n],
                flushes_out: vec![0; n],
                router: RoundRobin::new(n),
                ios: HashMap::new(),
                next_io: 1,
                writes_in_flight: BTreeSet::new(),
                next_write_seq: 0,
                flushes: Vec::new(),
                flush_check: false,
                data: Vec::new(),
                out: Completions::default(),
                stats: VolumeStats::default(),
                resend: Vec::new(),
                held: Vec::new(),
                open: OpenState::Ready,
                waiting_open: Vec::new(),
                stopping: false,
                routes: routes.clone(),
            },
            route: RouteView::new(routes),
            cfg,
        })
    }

    /// Builds the device for a backing volume not opened yet (its proxies did not answer
    /// [`open_volume`], e.g. while `pov-dpud` replays its configuration before they are
    /// up): the device opens it itself, in the background, retrying every 500 ms; IO
    /// waits meanwhile (at most `request_timeout_ms`, then `IOERR`). A proxy that
    /// refuses the open (another size) makes every IO fail; [`VolumeStats::state`]
    /// says which.
    ///
    /// # Errors
    /// As [`VolumeDevice::new`].
    pub fn new_opening(cfg: VolumeConfig) -> Result<VolumeDevice, VolumeError> {
        let mut d = VolumeDevice::new(cfg)?;
        d.st.open = OpenState::Opening { next_try: Instant::now(), in_flight: false, last_error: None };
        Ok(d)
    }

    /// Follows `control` for the gathering policy of the proxy connections (normally
    /// the daemon's) instead of a private default.
    pub fn with_gathering(mut self, control: GatheringControl) -> VolumeDevice {
        self.fwd.follow(control);
        self
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
        let mut s = self.st.stats.clone();
        let f = self.fwd.stats();
        s.errors = self.st.out.errors;
        s.in_flight = self.st.ios.len() as u32;
        s.timeouts = f.timeouts;
        s.stale_proxy_responses = f.stale_responses;
        s.proxies_connected = f.proxies_connected;
        self.fwd.fill_failover(&f, &mut s.failover);
        s.failover.fill_route(&self.st.routes);
        s.gathering = GatherStats::from_counters(f.transport);
        (s.state, s.open_error) = match &self.st.open {
            OpenState::Ready => ("ready", None),
            OpenState::Opening { last_error, .. } => ("opening", last_error.clone()),
            OpenState::Failed(why) => ("failed", Some(why.clone())),
        };
        s
    }

    /// The gathering policy in force.
    pub fn gathering(&self) -> Gathering {
        self.fwd.gathering()
    }

    /// Takes every completion produced so far.
    pub fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        self.st.out.take(out);
    }

    /// The next instant [`VolumeDevice::poll`] must run even if nothing arrives (the
    /// earliest request timeout).
    pub fn deadline(&self) -> Option<Instant> {
        let held = self.st.held.iter().map(|p| p.deadline).min();
        let waiting = self.st.waiting_open.iter().map(|(_, d)| *d).min();
        let open = match &self.st.open {
            OpenState::Opening { next_try, in_flight: false, .. } => Some(*next_try),
            _ => None,
        };
        [self.fwd.deadline(), held, waiting, open].into_iter().flatten().min()
    }

    /// Serves one block request; its completion comes later through
    /// [`VolumeDevice::take_completions`].
    pub fn submit(&mut self, req: BlockRequest) {
        match (&self.st.open, req.op) {
            (_, BlockOp::GetId | BlockOp::Other(_)) | (OpenState::Ready, _) => {}
            (OpenState::Failed(_), _) => return self.st.out.complete(req, BlockStatus::IoErr, 0),
            (OpenState::Opening { .. }, _) => {
                let deadline = self.fwd.deadline_from_now();
                self.st.waiting_open.push((req, deadline));
                return;
            }
        }
        match req.op {
            BlockOp::GetId => self.st.out.get_id(req, &self.serial),
            BlockOp::Other(_) => self.st.out.complete(req, BlockStatus::Unsupported, 0),
            BlockOp::Flush => {
                let id = self.st.new_io(req, None);
                self.st.flushes.push(PendingFlush { io: id, barrier: self.st.next_write_seq });
                self.start_flushes();
            }
            BlockOp::Read | BlockOp::Write => self.submit_rw(req),
        }
    }

    fn submit_rw(&mut self, req: BlockRequest) {
        let len = req.buf.len();
        if !io_in_range(req.offset, len, self.cfg.size, self.cfg.block_size) {
            return self.st.out.complete(req, BlockStatus::IoErr, 0);
        }
        if len == 0 {
            return self.st.out.complete(req, BlockStatus::Ok, 0);
        }
        let is_write = req.op == BlockOp::Write;
        let seq = is_write.then(|| {
            let s = self.st.next_write_seq;
            self.st.next_write_seq += 1;
            self.st.writes_in_flight.insert(s);
            s
        });
        let base = req.offset;
        let id = self.st.new_io(req, seq);
        let mut off = 0usize;
        while off < len {
            let n = (len - off).min(MAX_IO_BYTES as usize);
            let op = if is_write { Op::VolumeWrite } else { Op::VolumeRead };
            if !self.send_piece(id, op, base + off as u64, off, n) {
                // Pieces already sent finish on their own; the IO fails.
                self.st.ios.get_mut(&id).expect("just added").failed = true;
                break;
            }
            off += n;
        }
        self.st.maybe_finish(id);
        self.check_flushes();
    }

    /// Sends one piece of IO `id`; `false` if it could not be sent (the caller marks
    /// the IO failed).
    fn send_piece(&mut self, id: u64, op: Op, offset: u64, buf_offset: usize, len: usize) -> bool {
        let home = match self.routed_home(offset) {
            Some(conn) => conn,
            None => self.st.router.route(RouteKey::Volume { offset }),
        };
        self.send(id, op, offset, home, buf_offset, len)
    }

    /// The connection of the route-table member that owns byte `offset`'s slot (`None`:
    /// no table, or no owner).
    fn routed_home(&mut self, offset: u64) -> Option<usize> {
        let t = self.route.table()?;
        let conn =
            t.owner(t.slot(RouteInput::Volume { name: &self.cfg.volume, offset })).and_then(|m| self.fwd.member_conn(t, m));
        // A member new to the device has a connection now: track its flushes too.
        let n = self.fwd.conns();
        if self.st.dirty.len() < n {
            self.st.dirty.resize(n, false);
            self.st.flushes_out.resize(n, 0);
        }
        conn
    }

    /// Routes by `routes` (the daemon's route table of this volume, shared with its
    /// RPC methods) instead of a private one.
    pub fn with_routes(mut self, routes: RouteControl) -> VolumeDevice {
        self.st.routes = routes.clone();
        self.route = RouteView::new(routes);
        self
    }

    /// Sends a new request of `op` for IO `id` to connection `home` (or the next usable
    /// one if its proxy is down); `false` if it could not be sent.
    fn send(&mut self, id: u64, op: Op, offset: u64, home: usize, buf_offset: usize, len: usize) -> bool {
        let deadline = self.fwd.deadline_from_now();
        let piece = Piece { io: id, offset, buf_offset, len, op, proxy: home, tried: 0, tries: 0, deadline, redirects: 0 };
        let sent = match self.dispatch(piece, home) {
            Dispatched::Sent => true,
            Dispatched::NoProxy(p) => self.st.hold(p),
            Dispatched::Failed => false,
        };
        if sent {
            self.st.ios.get_mut(&id).expect("live io").outstanding += 1;
        }
        sent
    }

    /// Sends (or resends) `p` to a usable connection from `home` on that it has not been
    /// tried on.
    fn dispatch(&mut self, mut p: Piece, home: usize) -> Dispatched {
        let epoch = self.route.table().map_or(0, |t| t.epoch);
        let VolumeDevice { cfg, fwd, st, .. } = self;
        st.data.clear();
        if p.op == Op::VolumeWrite {
            st.data.resize(p.len, 0);
            match st.ios.get(&p.io) {
                Some(io) if io.req.buf.read_at(p.buf_offset, &mut st.data).is_ok() => {}
                _ => return Dispatched::Failed,
            }
        }
        let length = if p.op == Op::VolumeRead { p.len as u32 } else { 0 };
        let payload = if p.op == Op::VolumeWrite { &st.data[..] } else { &[] };
        for _ in 0..fwd.conns() {
            let Some(conn) = fwd.pick(home, &|i| p.tried & conn_bit(i) != 0) else { break };
            let resend = p.tries > 0;
            p.tried |= conn_bit(conn);
            p.proxy = conn;
            p.tries += 1;
            let (op, deadline) = (p.op, p.deadline);
            let req = ProxyRequestView { epoch, ..volume_request(op, p.offset, length, 0, &cfg.volume) };
            match fwd.send_until(conn, req, payload, p, deadline) {
                Ok(_) => {
                    st.stats.proxy_requests += 1;
                    st.stats.failover.resent += u64::from(resend);
                    st.stats.failover.rerouted += u64::from(conn != home);
                    if op == Op::VolumeFlush {
                        st.flushes_out[conn] += 1;
                    }
                    return Dispatched::Sent;
                }
                // Nothing was sent: the next connection may take it.
                Err((back, Status::Unavailable)) => {
                    p = back;
                    p.tries -= 1;
                    if fwd.stopping() {
                        break;
                    }
                }
                Err(_) => return Dispatched::Failed,
            }
        }
        Dispatched::NoProxy(p)
    }

    /// Background open: sends a `VolumeOpen` when one is due; once opened, submits the
    /// IO that waited; fails waiting IO whose deadline passed.
    fn drive_open(&mut self) -> bool {
        let now = Instant::now();
        let mut busy = false;
        match self.st.open.clone() {
            OpenState::Ready if !self.st.waiting_open.is_empty() => {
                for (req, _) in std::mem::take(&mut self.st.waiting_open) {
                    self.submit(req);
                }
                return true;
            }
            OpenState::Failed(_) if !self.st.waiting_open.is_empty() => {
                for (req, _) in std::mem::take(&mut self.st.waiting_open) {
                    self.st.out.complete(req, BlockStatus::IoErr, 0);
                }
                return true;
            }
            OpenState::Opening { next_try, in_flight: false, last_error } if now >= next_try && !self.st.stopping => {
                let VolumeDevice { cfg, fwd, st, .. } = self;
                let req = volume_request(Op::VolumeOpen, cfg.size, cfg.block_size, flags::CREATE, &cfg.volume);
                let home = fwd.pick(0, &|_| false).unwrap_or(0);
                let deadline = fwd.deadline_from_now().min(now + VOLUME_OPEN_TRY);
                let piece = Piece {
                    io: OPEN_IO,
                    offset: 0,
                    buf_offset: 0,
                    len: 0,
                    op: Op::VolumeOpen,
                    proxy: home,
                    tried: 0,
                    tries: 1,
                    deadline,
                    redirects: 0,
                };
                let sent = fwd.send_until(home, req, &[], piece, deadline).is_ok();
                st.open = OpenState::Opening {
                    next_try: if sent { now } else { now + OPEN_RETRY },
                    in_flight: sent,
                    last_error: if sent { last_error } else { Some(format!("proxy {} cannot be reached", fwd.endpoint(home))) },
                };
                busy = true;
            }
            _ => {}
        }
        let before = self.st.waiting_open.len();
        let (expired, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.st.waiting_open).into_iter().partition(|(_, d)| now >= *d);
        self.st.waiting_open = keep;
        for (req, _) in expired {
            self.st.out.complete(req, BlockStatus::IoErr, 0);
        }
        busy || self.st.waiting_open.len() != before
    }

    /// Sends held pieces once a proxy is usable; fails the IO of those whose deadline
    /// passed.
    fn release_held(&mut self) -> bool {
        let (expired, ready) = release_held(&mut self.st.held, self.fwd.any_usable(), |p| p.deadline);
        let busy = !expired.is_empty() || !ready.is_empty();
        for p in expired {
            self.st.fail_piece(p.io);
        }
        self.st.resend.extend(ready);
        self.resend_failed();
        busy
    }

    /// Resends the pieces whose proxy failed; a piece no proxy takes is held (see
    /// [`VolumeDevice::release_held`]) or, past its deadline, fails its IO.
    fn resend_failed(&mut self) {
        for p in std::mem::take(&mut self.st.resend) {
            // The route table may have changed (a redirect): its owner first.
            let routed = if p.op == Op::VolumeFlush { None } else { self.routed_home(p.offset) };
            let (io, home, op) = (p.io, routed.unwrap_or(p.proxy), p.op);
            let going = match self.dispatch(p, home) {
                Dispatched::Sent => true,
                Dispatched::NoProxy(p) => self.st.hold(p),
                Dispatched::Failed => false,
            };
            if !going {
                if op == Op::VolumeFlush {
                    // Whatever that flush covered is not known durable.
                    self.st.dirty[home] = true;
                }
                self.st.fail_piece(io);
            }
        }
    }

    /// Starts the FLUSHes whose barrier passed, if a WRITE completed meanwhile.
    fn check_flushes(&mut self) {
        if std::mem::take(&mut self.st.flush_check) {
            self.start_flushes();
        }
    }

    /// Sends the FLUSHes whose barrier has passed.
    fn start_flushes(&mut self) {
        let oldest_write = self.st.writes_in_flight.first().copied().unwrap_or(u64::MAX);
        let ready: Vec<u64> = self.st.flushes.iter().filter(|f| f.barrier <= oldest_write).map(|f| f.io).collect();
        if ready.is_empty() {
            return;
        }
        self.st.flushes.retain(|f| f.barrier > oldest_write);
        for id in ready {
            for pidx in 0..self.fwd.conns() {
                if !self.st.dirty[pidx] && self.st.flushes_out[pidx] == 0 {
                    continue;
                }
                // Cleared now: writes acknowledged from here on need a later flush.
                self.st.dirty[pidx] = false;
                if !self.send(id, Op::VolumeFlush, 0, pidx, 0, 0) {
                    self.st.dirty[pidx] = true;
                    self.st.ios.get_mut(&id).expect("live io").failed = true;
                }
            }
            self.st.maybe_finish(id);
        }
    }

    /// Moves proxy traffic and expires timeouts. Returns [`PollStatus::Busy`] if it
    /// did any work or still has bytes to send.
    pub fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus {
        let st = &mut self.st;
        let mut busy = self.fwd.poll(fds, &mut |p, outcome| st.finish_piece(p, outcome));
        self.resend_failed();
        busy |= self.release_held();
        busy |= self.drive_open();
        self.check_flushes();
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Stops the device: every request in progress completes with IOERR and proxy
    /// connections are closed.
    pub fn shutdown(&mut self, fds: &mut dyn FdRegistry) {
        // FLUSHes still behind their barrier fail with everything else below.
        self.st.flushes.clear();
        self.st.stopping = true;
        let st = &mut self.st;
        self.fwd.shutdown(fds, &mut |p, outcome| st.finish_piece(p, outcome));
        for (req, _) in std::mem::take(&mut self.st.waiting_open) {
            self.st.out.complete(req, BlockStatus::IoErr, 0);
        }
        for p in std::mem::take(&mut self.st.held).into_iter().chain(std::mem::take(&mut self.st.resend)) {
            if let Some(io) = self.st.ios.get_mut(&p.io) {
                io.outstanding -= 1;
            }
        }
        let ids: Vec<u64> = self.st.ios.keys().copied().collect();
        for id in ids {
            if let Some(io) = self.st.ios.get_mut(&id) {
                io.failed = true;
            }
            self.st.maybe_finish(id);
        }
        self.st.flushes.clear();
    }
}

impl VolumeState {
    /// Holds a piece no proxy could take until one is usable; `false` (not held) when
    /// the device is stopping or the piece's deadline passed.
    fn hold(&mut self, p: Piece) -> bool {
        if self.stopping || Instant::now() >= p.deadline {
            return false;
        }
        self.stats.failover.held += 1;
        // A proxy that comes back is a new incarnation: it may be tried again.
        self.held.push(Piece { tried: 0, ..p });
        true
    }

    /// One piece of IO `io` ended without an answer: the IO fails (once all its pieces
    /// are done).
    fn fail_piece(&mut self, io: u64) {
        if let Some(x) = self.ios.get_mut(&io) {
            x.outstanding -= 1;
            x.failed = true;
        }
        self.maybe_finish(io);
    }

    fn new_io(&mut self, req: BlockRequest, write_seq: Option<u64>) -> u64 {
        let id = self.next_io;
        self.next_io += 1;
        self.ios.insert(id, Io { req, outstanding: 0, failed: false, write_seq });
        id
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
        self.out.complete(io.req, status, written);
        if io.write_seq.is_some() && !self.flushes.is_empty() {
            self.flush_check = true;
        }
    }

    /// Finishes a background `VolumeOpen`.
    fn finish_open(&mut self, outcome: Outcome<'_>) {
        let retry =
            |why: String| OpenState::Opening { next_try: Instant::now() + OPEN_RETRY, in_flight: false, last_error: Some(why) };
        self.open = match outcome {
            Outcome::Answered { status: Status::Ok, result, .. } if result == self.size => {
                log::info!("volume {}: backing volume opened", self.name);
                OpenState::Ready
            }
            Outcome::Answered { status: Status::Ok | Status::Invalid, .. } => {
                let why = "the backing volume exists with another size or block size (volumes are never resized)".to_string();
                log::error!("volume {}: {why}; every IO fails", self.name);
                OpenState::Failed(why)
            }
            Outcome::Answered { status, .. } if matches!(status, Status::Unavailable | Status::Timeout) => {
                retry(format!("the proxy answered {status}"))
            }
            Outcome::Answered { status, .. } => {
                let why = format!("the proxy refused the open: {status}");
                log::error!("volume {}: {why}; every IO fails", self.name);
                OpenState::Failed(why)
            }
            Outcome::Failed(status) => retry(format!("no answer: {status}")),
        };
    }

    /// Finishes one proxy request (answered, or failed locally).
    fn finish_piece(&mut self, p: Piece, outcome: Outcome<'_>) {
        if p.io == OPEN_IO {
            return self.finish_open(outcome);
        }
        if p.op == Op::VolumeFlush {
            self.flushes_out[p.proxy] = self.flushes_out[p.proxy].saturating_sub(1);
        }
        // Its proxy failed before answering: every volume request may run twice, so it
        // goes to another proxy (a flush there covers the volume: one backend).
        if let (Outcome::Failed(Status::Unavailable), false) = (&outcome, self.stopping) {
            if p.tries < crate::device::MAX_TRIES && Instant::now() < p.deadline && self.ios.contains_key(&p.io) {
                self.resend.push(p);
                return;
            }
        }
        // Redirected (not run): install the proxy's newer table and resend.
        if let (Outcome::Answered { status: Status::Redirect, payload, .. }, false) = (&outcome, self.stopping) {
            self.stats.failover.redirects += 1;
            self.routes.follow_redirect(payload, &format!("volume {}", self.name));
            if p.redirects < crate::device::MAX_REDIRECTS && Instant::now() < p.deadline && self.ios.contains_key(&p.io) {
                self.resend.push(Piece { redirects: p.redirects + 1, tries: p.tries.saturating_sub(1), ..p });
                return;
            }
        }
        let (status, result, payload) = match outcome {
            Outcome::Answered { status, result, payload, .. } => (status, result, payload),
            Outcome::Failed(status) => (status, 0, &[][..]),
        };
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
            // Whatever a failed flush covered is not known durable.
            Op::VolumeFlush if !ok => self.dirty[p.proxy] = true,
            _ => {}
        }
        if !ok {
            log::debug!("volume piece {:?} failed: {status}", p.op);
            io.failed = true;
        }
        self.maybe_finish(p.io);
    }
}

impl BlockDevice for VolumeDevice {
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
        VolumeDevice::submit(self, req)
    }
    fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus {
        VolumeDevice::poll(self, fds)
    }
    fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        VolumeDevice::take_completions(self, out)
    }
    fn deadline(&self) -> Option<Instant> {
        VolumeDevice::deadline(self)
    }
    fn stats_json(&self) -> Value {
        serde_json::to_value(VolumeDevice::stats(self)).unwrap_or(Value::Null)
    }
    /// `pov_volume_create` with the volume's parameters (defaults resolved).
    fn write_config_json(&self) -> Value {
        let c = &self.cfg;
        json!({ "method": "pov_volume_create", "params": {
            "name": c.name, "size": c.size, "block_size": c.block_size, "volume": c.volume,
            "proxies": c.proxies, "null": false, "request_timeout_ms": c.request_timeout_ms,
        }})
    }
    fn destruct(&mut self, fds: &mut dyn FdRegistry) {
        VolumeDevice::shutdown(self, fds)
    }
}
