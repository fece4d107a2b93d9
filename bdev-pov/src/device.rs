//! A PoV device: the block-level front of the PoV server.

use crate::block::{BlockCompletion, BlockRequest};
use crate::tenant::TenantTable;
use pov_runtime::{FdRegistry, PollStatus};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Parameters of a PoV device (the `pov_device_create` RPC's parameters).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PovDeviceConfig {
    /// Device name (1..=31 bytes); the virtio-blk serial is `pov-<name>`.
    pub name: String,
    /// Proxy endpoints (`tcp:HOST:PORT`); queues are mapped to them round-robin.
    pub proxies: Vec<String>,
    /// Queues one session may create (1..=64).
    #[serde(default = "default_num_queues")]
    pub num_queues: u32,
    /// Sessions open at once (1..=4096).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Heartbeat interval the host is told to use, ms.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u32,
    /// A session without a heartbeat for this long is reclaimed, ms.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// A forwarded request without a proxy answer for this long fails with
    /// `Timeout`, ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u32,
}

fn default_num_queues() -> u32 {
    16
}
fn default_max_sessions() -> u32 {
    64
}
fn default_heartbeat_ms() -> u32 {
    1000
}
fn default_session_timeout_ms() -> u32 {
    10_000
}
fn default_request_timeout_ms() -> u32 {
    30_000
}

impl PovDeviceConfig {
    /// A configuration with defaults for everything but name and proxies.
    pub fn new(name: &str, proxies: Vec<String>) -> PovDeviceConfig {
        PovDeviceConfig {
            name: name.to_string(),
            proxies,
            num_queues: default_num_queues(),
            max_sessions: default_max_sessions(),
            heartbeat_interval_ms: default_heartbeat_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A parameter is out of range.
    #[error("invalid device parameter {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// Counters of one device (shown by `pov_device_get_devices`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceStats {
    pub sessions: u32,
    pub queues: u32,
    pub requests: u64,
    /// Requests answered with a non-Ok status, whatever the cause (including the
    /// backend's `NotFound` for a missing file).
    pub request_errors: u64,
    pub in_flight: u32,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub admin_requests: u64,
    pub sessions_reclaimed: u64,
    /// Request slot writes that did not carry a whole request (block-layer split).
    pub split_requests: u64,
    /// Block IOs rejected because they crossed a region boundary (block-layer merge).
    pub crossing_ios: u64,
    /// Largest single block WRITE received on a request slot, bytes (a whole 1 MiB
    /// request arrives as 1 MiB + 512 unless the host block layer split it).
    pub max_request_write_bytes: u64,
    /// Largest single block READ received on a response slot, bytes.
    pub max_response_read_bytes: u64,
    /// Block IOs (virtio-blk READ/WRITE/...) completed with `VIRTIO_BLK_S_IOERR` or
    /// `UNSUPP`: unaligned, crossing, aimed at guard or read-only space, a request slot
    /// overwritten while in flight, a foreign owner. A correct host never causes one.
    pub block_io_errors: u64,
    /// Requests whose remaining bytes never arrived (a split that lost a piece).
    pub incomplete_requests: u64,
    pub proxies_connected: u32,
    pub stale_proxy_responses: u64,
    /// Frames per send and per receive on the proxy connections (gathering IO).
    pub gathering: GatherStats,
}

use crate::block::{BlockOp, BlockStatus};
use crate::forward::{Broken, GatherStats, Gathering, ProxyConn};
use crate::session::{Handle, QueueOwner, Session, SessionState};
use pov_proto::admin::{AdminOp, AdminRequest, AdminResponse, ADMIN_REQUEST_SIZE, ADMIN_RESPONSE_SIZE};
use pov_proto::io::{flags, Op, RequestHeader, ResponseHeader};
use pov_proto::layout::{ConfigSpace, Geometry, Region, HEADER_SIZE, SLOT_SIZE};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::{Status, MAX_IO_BYTES};
use rustc_hash::FxHashMap;
use std::time::Duration;

/// How long a partially written request may wait for its remaining bytes (a block
/// layer split delivers them within microseconds).
const INCOMPLETE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often session keep-alive is checked.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// State of a queue's response slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespState {
    /// No request was ever dispatched on this queue.
    Empty,
    /// A request is being written (some of its bytes arrived) or is at the proxy.
    Pending,
    /// The response is in `resp_buf`.
    Ready,
}

/// One open IO queue: its owner, request and response slots.
struct Queue {
    owner: QueueOwner,
    req_buf: Vec<u8>,
    /// Byte ranges of the request slot written since the last dispatch, merged.
    covered: Vec<(usize, usize)>,
    incomplete_since: Option<Instant>,
    resp_buf: Vec<u8>,
    resp_len: usize,
    resp: RespState,
    /// Response-slot READs waiting for the response, with their slot offsets.
    parked: Vec<(BlockRequest, usize)>,
    /// Tag of the request at the proxy, if any.
    in_flight: Option<u64>,
}

impl Queue {
    fn new(owner: QueueOwner) -> Queue {
        Queue {
            owner,
            req_buf: vec![0; SLOT_SIZE as usize],
            covered: Vec::new(),
            incomplete_since: None,
            resp_buf: vec![0; SLOT_SIZE as usize],
            resp_len: 0,
            resp: RespState::Empty,
            parked: Vec::new(),
            in_flight: None,
        }
    }

    /// Adds `start..end` to the covered ranges, merged in place (no allocation once the
    /// vector has room).
    fn cover(&mut self, start: usize, end: usize) {
        self.covered.push((start, end));
        self.covered.sort_unstable();
        let mut kept = 0;
        for i in 0..self.covered.len() {
            let (s, e) = self.covered[i];
            if kept > 0 && s <= self.covered[kept - 1].1 {
                let last = &mut self.covered[kept - 1];
                last.1 = last.1.max(e);
            } else {
                self.covered[kept] = (s, e);
                kept += 1;
            }
        }
        self.covered.truncate(kept);
    }

    /// Bytes covered contiguously from the slot start.
    fn contiguous(&self) -> usize {
        match self.covered.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }
}

/// What a request at the proxy is for, to finish it when the answer comes.
struct InFlight {
    queue: u32,
    request_id: u64,
    op: Op,
    deadline: Instant,
    proxy: usize,
    /// For Open: the handle to create on success.
    open: Option<Handle>,
}

/// A PoV device: serves the PoV device protocol over block IO and forwards file
/// requests to proxies. Owned by one reactor; see the crate docs.
pub struct PovDevice {
    cfg: PovDeviceConfig,
    geometry: Geometry,
    tenants: TenantTable,
    config_record: Vec<u8>,
    serial: [u8; pov_proto::layout::SERIAL_LEN],
    admin_resp: [u8; ADMIN_RESPONSE_SIZE],
    /// Sessions by IO area.
    areas: Vec<Option<Session>>,
    /// Open queues by global queue ID (FxHash: the keys are IDs this device assigns,
    /// so a peer cannot choose colliding ones; SipHash cost ~3% of the DPU's CPU).
    queues: FxHashMap<u32, Queue>,
    proxies: Vec<ProxyConn>,
    next_proxy: usize,
    /// Requests at the proxies by tag (tags are assigned here, see `queues`).
    in_flight: FxHashMap<u64, InFlight>,
    next_tag: u64,
    completions: Vec<BlockCompletion>,
    frame: Vec<u8>,
    /// Gathering policy of the proxy connections.
    gathering: Gathering,
    last_session_check: Instant,
    stats: DeviceStats,
}

impl PovDevice {
    /// Creates a device. Proxy connections are made lazily, on first use.
    ///
    /// Errors: [`DeviceError::Invalid`] for an empty or over-long name, no proxies, or
    /// `num_queues`/`max_sessions`/timeouts out of range.
    pub fn new(cfg: PovDeviceConfig, tenants: TenantTable) -> Result<PovDevice, DeviceError> {
        let inv = |field, why: &str| DeviceError::Invalid { field, why: why.to_string() };
        if cfg.name.is_empty() || cfg.name.len() > pov_proto::layout::MAX_DEVICE_NAME {
            return Err(inv("name", "must be 1-31 bytes"));
        }
        if cfg.proxies.is_empty() {
            return Err(inv("proxies", "at least one proxy endpoint is needed"));
        }
        if cfg.heartbeat_interval_ms == 0 || cfg.session_timeout_ms <= cfg.heartbeat_interval_ms {
            return Err(inv("session_timeout_ms", "must be larger than heartbeat_interval_ms (> 0)"));
        }
        if cfg.request_timeout_ms == 0 {
            return Err(inv("request_timeout_ms", "must be > 0"));
        }
        let geometry =
            Geometry::new(cfg.max_sessions, cfg.num_queues).map_err(|e| inv("num_queues/max_sessions", &e.to_string()))?;
        let config_record = ConfigSpace { geometry, name: cfg.name.clone() }.encode().to_vec();
        Ok(PovDevice {
            serial: pov_proto::layout::serial_for(&cfg.name),
            proxies: cfg.proxies.iter().map(|p| ProxyConn::new(p.clone())).collect(),
            areas: (0..geometry.areas).map(|_| None).collect(),
            cfg,
            geometry,
            tenants,
            config_record,
            admin_resp: [0; ADMIN_RESPONSE_SIZE],
            queues: FxHashMap::default(),
            next_proxy: 0,
            in_flight: FxHashMap::default(),
            next_tag: 1,
            completions: Vec::new(),
            frame: Vec::new(),
            gathering: Gathering::default(),
            last_session_check: Instant::now(),
            stats: DeviceStats::default(),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &PovDeviceConfig {
        &self.cfg
    }

    /// The device's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Capacity in 512-byte sectors (virtio-blk `capacity`).
    pub fn capacity_sectors(&self) -> u64 {
        self.geometry.capacity_sectors()
    }

    /// The 20-byte virtio-blk serial (`pov-<name>`).
    pub fn serial(&self) -> [u8; pov_proto::layout::SERIAL_LEN] {
        self.serial
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        let mut s = self.stats.clone();
        s.sessions = self.areas.iter().filter(|a| a.is_some()).count() as u32;
        s.queues = self.queues.len() as u32;
        s.in_flight = self.in_flight.len() as u32;
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

    /// The next instant [`PovDevice::poll`] must run even if no IO arrives.
    pub fn deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut take = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        for f in self.in_flight.values() {
            take(f.deadline);
        }
        for q in self.queues.values() {
            if let Some(t) = q.incomplete_since {
                take(t + INCOMPLETE_TIMEOUT);
            }
        }
        if self.areas.iter().any(|a| a.is_some()) {
            take(self.last_session_check + SESSION_CHECK_INTERVAL);
        }
        d
    }

    /// Serves one block request. The completion is queued (at once, or when the
    /// response it waits for is ready); fetch it with [`PovDevice::take_completions`].
    pub fn submit(&mut self, req: BlockRequest) {
        match req.op {
            BlockOp::Flush => self.complete(req, BlockStatus::Ok, 0),
            BlockOp::GetId => {
                let mut req = req;
                let n = req.buf.len().min(self.serial.len());
                let serial = self.serial;
                match req.buf.write_at(0, &serial[..n]) {
                    Ok(()) => self.complete(req, BlockStatus::Ok, n as u32),
                    Err(_) => self.complete(req, BlockStatus::IoErr, 0),
                }
            }
            BlockOp::Other(_) => self.complete(req, BlockStatus::Unsupported, 0),
            BlockOp::Read | BlockOp::Write => self.submit_rw(req),
        }
    }

    fn complete(&mut self, req: BlockRequest, status: BlockStatus, written: u32) {
        if status != BlockStatus::Ok {
            self.stats.block_io_errors += 1;
        }
        self.completions.push(BlockCompletion { tag: req.tag, status, written, buf: req.buf });
    }

    fn submit_rw(&mut self, mut req: BlockRequest) {
        let len = req.buf.len() as u64;
        let is_read = req.op == BlockOp::Read;
        if req.offset % pov_proto::layout::SECTOR_SIZE != 0 || len % pov_proto::layout::SECTOR_SIZE != 0 {
            return self.complete(req, BlockStatus::IoErr, 0);
        }
        match self.geometry.classify(req.offset, len) {
            Region::Config { offset } if is_read => {
                let data = self.config_record.clone();
                self.read_from(req, &data, offset as usize)
            }
            Region::Guard if is_read => self.read_from(req, &[], 0),
            Region::AdminResponse { offset } if is_read => {
                let data = self.admin_resp;
                self.read_from(req, &data, offset as usize)
            }
            Region::AdminRequest { offset } if !is_read => {
                self.stats.admin_requests += 1;
                let mut b = [0u8; ADMIN_REQUEST_SIZE];
                if offset != 0 || req.buf.len() < ADMIN_REQUEST_SIZE {
                    self.admin_resp = AdminResponse { status: Status::Invalid.as_u32(), ..Default::default() }.encode();
                    return self.complete(req, BlockStatus::Ok, 0);
                }
                if req.buf.read_at(0, &mut b).is_err() {
                    return self.complete(req, BlockStatus::IoErr, 0);
                }
                self.admin_resp = self.admin(&b).encode();
                self.complete(req, BlockStatus::Ok, 0)
            }
            Region::RequestSlot { queue, offset } if !is_read => self.write_request_slot(req, queue, offset as usize),
            Region::ResponseSlot { queue, offset } if is_read => self.read_response_slot(req, queue, offset as usize),
            Region::Crossing => {
                self.stats.crossing_ios += 1;
                self.complete(req, BlockStatus::IoErr, 0)
            }
            // Writes to read-only or guard space; reads of request slots.
            _ => {
                if !is_read {
                    return self.complete(req, BlockStatus::IoErr, 0);
                }
                // Reading back a request slot or the admin request record returns zeros.
                let _ = &mut req;
                self.read_from(req, &[], 0)
            }
        }
    }

    /// Completes a READ with `data[offset..]`, zero-filled past the end of `data`.
    fn read_from(&mut self, mut req: BlockRequest, data: &[u8], offset: usize) {
        match copy_out(&mut req, data, offset) {
            Ok(len) => self.complete(req, BlockStatus::Ok, len),
            Err(_) => self.complete(req, BlockStatus::IoErr, 0),
        }
    }

    // ---- admin space ------------------------------------------------------------

    fn admin(&mut self, b: &[u8]) -> AdminResponse {
        let mut resp = AdminResponse {
            op: u16::from_le_bytes([b[6], b[7]]),
            request_id: u64::from_le_bytes(b[24..32].try_into().unwrap_or([0; 8])),
            ..Default::default()
        };
        let req = match AdminRequest::decode(b) {
            Ok(r) => r,
            Err(e) => {
                resp.status = e.status().as_u32();
                return resp;
            }
        };
        resp.session_id = req.session_id;
        let status = match req.op {
            AdminOp::OpenSession => self.open_session(&req, &mut resp),
            AdminOp::CloseSession => self.with_session(&req, |_, s| {
                s.state = SessionState::Reclaiming;
                Status::Ok
            }),
            AdminOp::Heartbeat => {
                let tenants = self.tenants.clone();
                self.with_session(&req, |_, s| {
                    if !tenants.exists(&s.tenant) {
                        s.state = SessionState::Reclaiming;
                        return Status::BadSession;
                    }
                    s.last_heartbeat = Instant::now();
                    Status::Ok
                })
            }
            AdminOp::CreateQueue => self.create_queue(&req, &mut resp),
            AdminOp::DeleteQueue => self.delete_queue(&req),
        };
        resp.status = status.as_u32();
        resp
    }

    fn find_session(&mut self, session_id: u64) -> Option<&mut Session> {
        self.areas.iter_mut().flatten().find(|s| s.id == session_id && s.state == SessionState::Open)
    }

    fn with_session(&mut self, req: &AdminRequest, f: impl FnOnce(&mut Self, &mut Session) -> Status) -> Status {
        let Some(s) = self.find_session(req.session_id) else { return Status::BadSession };
        if s.pid != req.pid {
            return Status::PidMismatch;
        }
        let area = s.area as usize;
        let mut s = self.areas[area].take().expect("found above");
        let st = f(self, &mut s);
        self.areas[area] = Some(s);
        st
    }

    fn open_session(&mut self, req: &AdminRequest, resp: &mut AdminResponse) -> Status {
        if !self.tenants.authenticate(&req.tenant, &req.secret) {
            log::warn!("device {}: authentication failed for tenant {:?} (pid {})", self.cfg.name, req.tenant, req.pid);
            return Status::AuthFailed;
        }
        let Some(area) = self.areas.iter().position(|a| a.is_none()) else { return Status::NoResources };
        let mut id = 0;
        while id == 0 || self.areas.iter().flatten().any(|s| s.id == id) {
            id = rand::random::<u64>();
        }
        self.areas[area] = Some(Session::new(id, req.tenant.clone(), req.pid, area as u32, Instant::now()));
        log::info!("device {}: session {id:#x} opened for tenant {} pid {} in area {area}", self.cfg.name, req.tenant, req.pid);
        resp.session_id = id;
        resp.area = area as u32;
        resp.max_queues = self.geometry.queues_per_area;
        resp.heartbeat_interval_ms = self.cfg.heartbeat_interval_ms;
        resp.session_timeout_ms = self.cfg.session_timeout_ms;
        Status::Ok
    }

    fn create_queue(&mut self, req: &AdminRequest, resp: &mut AdminResponse) -> Status {
        let qpa = self.geometry.queues_per_area;
        let nproxies = self.proxies.len();
        let mut out = None;
        let st = self.with_session(req, |dev, s| {
            let Some(index) = (0..qpa).find(|i| !s.queues.contains(&dev.geometry.queue_id(s.area, *i))) else {
                return Status::NoResources;
            };
            let qid = dev.geometry.queue_id(s.area, index);
            // Mapping table: queue -> proxy connection, round-robin over the proxies.
            let proxy = dev.next_proxy % nproxies;
            dev.next_proxy += 1;
            dev.queues.insert(qid, Queue::new(QueueOwner { session_id: s.id, pid: s.pid, qos: req.qos, proxy }));
            s.queues.push(qid);
            out = Some(qid);
            Status::Ok
        });
        if let Some(q) = out {
            resp.queue_id = q;
        }
        st
    }

    fn delete_queue(&mut self, req: &AdminRequest) -> Status {
        let qid = req.queue_id;
        self.with_session(req, |dev, s| {
            if !s.queues.contains(&qid) {
                return Status::BadQueue;
            }
            if dev.queues.get(&qid).is_some_and(|q| q.in_flight.is_some()) {
                return Status::Busy;
            }
            s.queues.retain(|q| *q != qid);
            dev.free_queue(qid);
            Status::Ok
        })
    }

    fn free_queue(&mut self, qid: u32) {
        if let Some(q) = self.queues.remove(&qid) {
            for (r, _) in q.parked {
                self.complete(r, BlockStatus::IoErr, 0);
            }
        }
    }

    // ---- IO queues ----------------------------------------------------------------

    /// Checks that a request's identity fields name the queue's owner.
    fn owns(&self, queue: u32, session_id: u64, pid: u32) -> Result<(), Status> {
        let q = self.queues.get(&queue).ok_or(Status::BadQueue)?;
        if q.owner.session_id != session_id {
            return Err(Status::BadSession);
        }
        if q.owner.pid != pid {
            return Err(Status::PidMismatch);
        }
        Ok(())
    }

    fn write_request_slot(&mut self, req: BlockRequest, queue: u32, offset: usize) {
        let len = req.buf.len();
        self.stats.max_request_write_bytes = self.stats.max_request_write_bytes.max(len as u64);
        let Some(q) = self.queues.get_mut(&queue) else {
            // Not an open queue: nobody to answer in a response slot.
            log::debug!("device {}: write to request slot of unopened queue {queue}", self.cfg.name);
            return self.complete(req, BlockStatus::IoErr, 0);
        };
        if q.in_flight.is_some() {
            // One request at a time per queue: the owner's request stays untouched.
            return self.complete(req, BlockStatus::IoErr, 0);
        }
        if req.buf.read_at(0, &mut q.req_buf[offset..offset + len]).is_err() {
            return self.complete(req, BlockStatus::IoErr, 0);
        }
        q.cover(offset, offset + len);
        let have = q.contiguous();
        if have < HEADER_SIZE {
            q.incomplete_since.get_or_insert_with(Instant::now);
            self.stats.split_requests += 1;
            return self.complete(req, BlockStatus::Ok, 0);
        }
        let Some(ids) = RequestHeader::peek_ids(&q.req_buf[..HEADER_SIZE]) else {
            return self.complete(req, BlockStatus::IoErr, 0);
        };
        // Ownership first: a request from a process that does not own the queue fails
        // its own WRITE and never touches the owner's response slot (paper §4.6).
        let owned = self.owns(queue, ids.session_id, ids.pid);
        if let Err(st) = owned.and(if ids.queue_id == queue { Ok(()) } else { Err(Status::BadQueue) }) {
            log::debug!("device {}: request on queue {queue} rejected: {st}", self.cfg.name);
            self.stats.request_errors += 1;
            let q = self.queues.get_mut(&queue).expect("checked");
            q.covered.clear();
            q.incomplete_since = None;
            return self.complete(req, BlockStatus::IoErr, 0);
        }
        let q = self.queues.get_mut(&queue).expect("checked");
        let header = RequestHeader::decode(&q.req_buf[..HEADER_SIZE]);
        if let Ok(h) = &header {
            let total = HEADER_SIZE + h.payload_len as usize;
            if have < total {
                // Split by the block layer: wait for the rest.
                q.incomplete_since.get_or_insert_with(Instant::now);
                q.resp = RespState::Pending;
                self.stats.split_requests += 1;
                return self.complete(req, BlockStatus::Ok, 0);
            }
        }
        q.covered.clear();
        q.incomplete_since = None;
        q.resp = RespState::Pending;
        self.complete(req, BlockStatus::Ok, 0);
        self.stats.requests += 1;
        match header {
            Ok(h) => self.dispatch(queue, h),
            Err(e) => {
                let st = e.status();
                self.respond(queue, ids.op, ids.request_id, st, 0, 0, &[]);
            }
        }
    }

    fn read_response_slot(&mut self, req: BlockRequest, queue: u32, offset: usize) {
        self.stats.max_response_read_bytes = self.stats.max_response_read_bytes.max(req.buf.len() as u64);
        let Some(q) = self.queues.get_mut(&queue) else {
            return self.complete(req, BlockStatus::IoErr, 0);
        };
        match q.resp {
            RespState::Pending => q.parked.push((req, offset)),
            RespState::Ready => {
                // Straight from the response slot into the READ's buffer (no copy).
                let mut req = req;
                match copy_out(&mut req, &q.resp_buf[..q.resp_len], offset) {
                    Ok(len) => self.complete(req, BlockStatus::Ok, len),
                    Err(_) => self.complete(req, BlockStatus::IoErr, 0),
                }
            }
            RespState::Empty => {
                let mut b = [0u8; HEADER_SIZE];
                ResponseHeader {
                    op: 0,
                    status: Status::NoRequest,
                    queue_id: queue,
                    request_id: 0,
                    result: 0,
                    payload_len: 0,
                    flags: 0,
                }
                .encode_into(&mut b);
                self.read_from(req, &b, offset)
            }
        }
    }

    /// Writes a response into the queue's response slot and completes parked READs.
    #[allow(clippy::too_many_arguments)]
    fn respond(&mut self, queue: u32, op: u16, request_id: u64, status: Status, result: u64, flags: u32, payload: &[u8]) {
        if !status.is_ok() {
            self.stats.request_errors += 1;
        }
        let Some(q) = self.queues.get_mut(&queue) else { return };
        let payload = &payload[..payload.len().min(MAX_IO_BYTES as usize)];
        ResponseHeader { op, status, queue_id: queue, request_id, result, payload_len: payload.len() as u32, flags }
            .encode_into(&mut q.resp_buf[..HEADER_SIZE]);
        q.resp_buf[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
        q.resp_len = HEADER_SIZE + payload.len();
        q.resp = RespState::Ready;
        q.in_flight = None;
        let mut parked = std::mem::take(&mut q.parked);
        for (r, offset) in parked.drain(..) {
            self.read_response_slot(r, queue, offset);
        }
        // Give the (now empty) vector back, so that the next park does not allocate.
        if let Some(q) = self.queues.get_mut(&queue) {
            if q.parked.is_empty() {
                q.parked = parked;
            }
        }
    }

    /// Checks a decoded request against its session and forwards it to the proxy.
    fn dispatch(&mut self, queue: u32, h: RequestHeader) {
        let op = h.op as u16;
        let fail = |dev: &mut Self, st: Status| dev.respond(queue, op, h.request_id, st, 0, 0, &[]);
        let owner = self.queues[&queue].owner;
        let Some(area) = self.areas.iter().position(|a| a.as_ref().is_some_and(|s| s.id == owner.session_id)) else {
            return fail(self, Status::BadSession);
        };
        let session = self.areas[area].as_mut().expect("found");
        if session.state != SessionState::Open {
            return fail(self, Status::BadSession);
        }
        let q = &self.queues[&queue];
        let payload = q.req_buf[HEADER_SIZE..HEADER_SIZE + h.payload_len as usize].to_vec();
        // Resolve the target path inside the tenant's namespace.
        let mut open = None;
        // Paths of open files and the tenant name are lent to the proxy request while
        // it is encoded (then put back): no string copies per request.
        let mut lent_path = false;
        let path = match h.op {
            Op::Open | Op::List | Op::Remove => match pov_proto::path::normalize(&payload) {
                Ok(p) => {
                    if h.op == Op::Open {
                        if p.is_empty() {
                            return fail(self, Status::IsDir);
                        }
                        open = Some(Handle { path: p.clone(), writable: h.flags & flags::WRITE != 0 });
                    }
                    p
                }
                Err(st) => return fail(self, st),
            },
            Op::Stat if h.file_handle == 0 => match pov_proto::path::normalize(&payload) {
                Ok(p) => p,
                Err(st) => return fail(self, st),
            },
            _ => {
                let Some(handle) = session.handles.get_mut(&h.file_handle) else { return fail(self, Status::BadHandle) };
                let writes = matches!(h.op, Op::Write | Op::Append | Op::Truncate);
                if writes && !handle.writable {
                    return fail(self, Status::Permission);
                }
                if h.op == Op::Close {
                    session.handles.remove(&h.file_handle);
                    return self.respond(queue, op, h.request_id, Status::Ok, 0, 0, &[]);
                }
                lent_path = true;
                std::mem::take(&mut handle.path)
            }
        };
        let tenant = std::mem::take(&mut session.tenant);
        let session_id = session.id;
        if h.op == Op::Read {
            self.stats.bytes_read += h.length as u64;
        }
        if h.op.carries_data() {
            self.stats.bytes_written += payload.len() as u64;
        }
        let data: &[u8] = if h.op.carries_data() { &payload } else { &[] };
        let tag = self.next_tag;
        self.next_tag += 1;
        let pidx = owner.proxy;
        let preq = ProxyRequest {
            op: h.op,
            tag,
            offset: h.offset,
            length: h.length,
            flags: h.flags,
            hint: h.hint,
            trace: h.flags & flags::TRACE != 0,
            qos: owner.qos as u8,
            load: self.proxies[pidx].in_flight,
            session_id,
            tenant,
            path,
        };
        let encoded = preq.encode_frame(data, &mut self.frame);
        let session = self.areas[area].as_mut().expect("found");
        session.tenant = preq.tenant;
        if lent_path {
            if let Some(handle) = session.handles.get_mut(&h.file_handle) {
                handle.path = preq.path;
            }
        }
        if let Err(e) = encoded {
            log::warn!("device {}: cannot encode proxy request: {e}", self.cfg.name);
            return fail(self, Status::Invalid);
        }
        let conn = &mut self.proxies[pidx];
        if conn.ensure_connected().is_none() {
            return fail(self, Status::Unavailable);
        }
        if let Err(e) = conn.send(&self.frame, &self.gathering) {
            log::warn!("device {}: proxy {}: {e}", self.cfg.name, conn.endpoint);
            conn.drop_transport();
            return fail(self, Status::Unavailable);
        }
        conn.in_flight += 1;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms as u64);
        self.in_flight.insert(tag, InFlight { queue, request_id: h.request_id, op: h.op, deadline, proxy: pidx, open });
        self.queues.get_mut(&queue).expect("open").in_flight = Some(tag);
    }

    /// Fails a request in flight locally (timeout, lost connection, shutdown).
    fn fail_in_flight(&mut self, tag: u64, status: Status) {
        if let Some(p) = self.finish(None, tag, status, 0, 0, &[]) {
            let conn = &mut self.proxies[p];
            conn.in_flight = conn.in_flight.saturating_sub(1);
        }
    }

    /// Finishes a request answered by proxy `from` (`None`: failed locally with
    /// `status`). Returns the index of the proxy the request was sent to (whose
    /// `in_flight` count the caller lowers), or `None` for a response that matches no
    /// request in flight on `from`.
    fn finish(
        &mut self,
        from: Option<usize>,
        tag: u64,
        status: Status,
        result: u64,
        flags: u32,
        payload: &[u8],
    ) -> Option<usize> {
        // Paper §4.6: a response that matches no context (e.g. after a timeout, or a
        // tag of another connection) is dropped.
        let matches = match (self.in_flight.get(&tag), from) {
            (Some(f), Some(p)) => f.proxy == p,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            self.stats.stale_proxy_responses += 1;
            return None;
        }
        let f = self.in_flight.remove(&tag)?;
        let mut result = result;
        let mut status = status;
        if let (Some(handle), true) = (f.open, status.is_ok()) {
            let owner = self.queues.get(&f.queue).map(|q| q.owner.session_id);
            match self.areas.iter_mut().flatten().find(|s| Some(s.id) == owner) {
                Some(s) => match s.add_handle(handle) {
                    Some(h) => result = h,
                    None => status = Status::NoResources,
                },
                None => status = Status::BadSession,
            }
        }
        let payload = if status.is_ok() { payload } else { &[] };
        self.respond(f.queue, f.op as u16, f.request_id, status, result, flags, payload);
        Some(f.proxy)
    }

    /// Moves proxy traffic, expires timeouts and reclaims dead sessions. Returns
    /// [`PollStatus::Busy`] if it did any work.
    pub fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus {
        let mut busy = false;
        let g = self.gathering;
        for i in 0..self.proxies.len() {
            // Taken out while polled, so that each response is finished straight from
            // the receive buffer (no copy of the frame).
            let mut conn = std::mem::take(&mut self.proxies[i]);
            let mut answered = 0u32;
            let polled = conn.poll_with(&g, &mut |f| {
                busy = true;
                match ProxyResponse::decode(f) {
                    Ok((r, payload)) => {
                        if self.finish(Some(i), r.tag, r.status, r.result, r.flags, payload).is_some() {
                            answered += 1;
                        }
                    }
                    Err(e) => log::warn!("device {}: bad frame from proxy: {e}", self.cfg.name),
                }
            });
            conn.in_flight = conn.in_flight.saturating_sub(answered);
            self.proxies[i] = conn;
            match polled {
                Ok(moved) => {
                    busy |= moved;
                    self.proxies[i].sync_watch(fds);
                }
                Err(Broken(e)) => {
                    if let Some(e) = e {
                        log::warn!("device {}: proxy {}: {e}", self.cfg.name, self.proxies[i].endpoint);
                    }
                    self.proxies[i].disconnect(fds);
                    // Nothing sent on the broken connection will be answered.
                    let lost: Vec<u64> = self.in_flight.iter().filter(|(_, f)| f.proxy == i).map(|(t, _)| *t).collect();
                    for tag in lost {
                        self.fail_in_flight(tag, Status::Unavailable);
                    }
                    busy = true;
                }
            }
        }
        let now = Instant::now();
        // Request timeouts.
        let expired: Vec<u64> = self.in_flight.iter().filter(|(_, f)| f.deadline <= now).map(|(t, _)| *t).collect();
        for tag in expired {
            log::warn!("device {}: request {tag} timed out at the proxy", self.cfg.name);
            self.fail_in_flight(tag, Status::Timeout);
            busy = true;
        }
        // Requests whose remaining bytes never came.
        let stuck: Vec<u32> = self
            .queues
            .iter()
            .filter(|(_, q)| q.incomplete_since.is_some_and(|t| now.duration_since(t) >= INCOMPLETE_TIMEOUT))
            .map(|(id, _)| *id)
            .collect();
        for qid in stuck {
            let q = self.queues.get_mut(&qid).expect("listed");
            q.covered.clear();
            q.incomplete_since = None;
            self.stats.incomplete_requests += 1;
            let ids = RequestHeader::peek_ids(&q.req_buf[..HEADER_SIZE]);
            let (op, rid) = ids.map_or((0, 0), |i| (i.op, i.request_id));
            self.respond(qid, op, rid, Status::Invalid, 0, 0, &[]);
            busy = true;
        }
        if now.duration_since(self.last_session_check) >= SESSION_CHECK_INTERVAL {
            self.last_session_check = now;
            busy |= self.reclaim_sessions(now);
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Keep-alive (paper §4.6): sessions without a heartbeat for the timeout are
    /// reclaimed in two steps — wait for their in-flight requests, then free queues.
    fn reclaim_sessions(&mut self, now: Instant) -> bool {
        let timeout = Duration::from_millis(self.cfg.session_timeout_ms as u64);
        let mut did = false;
        for area in 0..self.areas.len() {
            let Some(s) = self.areas[area].as_mut() else { continue };
            if s.state == SessionState::Open && now.duration_since(s.last_heartbeat) > timeout {
                log::warn!(
                    "device {}: session {:#x} (tenant {}, pid {}) missed heartbeats; reclaiming",
                    self.cfg.name,
                    s.id,
                    s.tenant,
                    s.pid
                );
                s.state = SessionState::Reclaiming;
            }
            if s.state != SessionState::Reclaiming {
                continue;
            }
            let busy = s.queues.iter().any(|q| self.queues.get(q).is_some_and(|q| q.in_flight.is_some()));
            if busy {
                continue;
            }
            let s = self.areas[area].take().expect("present");
            for q in s.queues {
                self.free_queue(q);
            }
            self.stats.sessions_reclaimed += 1;
            did = true;
        }
        did
    }

    /// Stops the device: every parked and in-flight IO completes with an error and
    /// proxy connections are closed.
    pub fn shutdown(&mut self, fds: &mut dyn FdRegistry) {
        let tags: Vec<u64> = self.in_flight.keys().copied().collect();
        for tag in tags {
            self.fail_in_flight(tag, Status::Unavailable);
        }
        let qids: Vec<u32> = self.queues.keys().copied().collect();
        for q in qids {
            self.free_queue(q);
        }
        for a in self.areas.iter_mut() {
            *a = None;
        }
        for p in self.proxies.iter_mut() {
            p.disconnect(fds);
        }
    }
}

/// Writes `data[offset..]` into the whole of `req`'s buffer, zero-filled past the end of
/// `data`. Returns the bytes written (the buffer length).
fn copy_out(req: &mut BlockRequest, data: &[u8], offset: usize) -> Result<u32, crate::block::BufferError> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let len = req.buf.len();
    let n = if offset < data.len() { (data.len() - offset).min(len) } else { 0 };
    if n > 0 {
        req.buf.write_at(0, &data[offset..offset + n])?;
    }
    let mut at = n;
    while at < len {
        let k = (len - at).min(ZEROS.len());
        req.buf.write_at(at, &ZEROS[..k])?;
        at += k;
    }
    Ok(len as u32)
}
