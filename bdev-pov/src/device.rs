//! A PoV device: the block-level front of the PoV server (paper §5), and its
//! orchestration.
//!
//! Block IO is classified by region ([`pov_proto::layout::Geometry::classify`]): the
//! read-only configuration space and serial, the admin space ([`crate::admin`]:
//! sessions, queues, heartbeats), and the IO areas, whose request and response slots
//! are the queues' state machines ([`crate::queue`]). A complete request is checked
//! against its session (handle, access mode, tenant namespace), waits its turn in the
//! device's [`Scheduler`] (arrival order today), and goes to the queue's proxy through
//! the [`Forwarder`]; the answer lands in the queue's response slot.

use crate::admin::{AdminOutcome, AdminState};
use crate::block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus, Completions};
use crate::forward::health::{conn_bit, release_held};
use crate::forward::{Forwarder, GatherStats, Gathering, GatheringControl, Outcome, RoundRobin, RouteControl, RouteView, Router};
use crate::queue::{copy_out, Queue, SlotWrite};
use crate::session::{Handle, Session, SessionState};
use crate::tenant::TenantTable;
use hdrhistogram::Histogram;
use pov_proto::admin::ADMIN_REQUEST_SIZE;
use pov_proto::io::{flags, Op, RequestHeader, ResponseHeader, REQUEST_TAG_OFFSET};
use pov_proto::layout::{features, ConfigSpace, Geometry, Region};
use pov_proto::route::RouteInput;
use pov_proto::trace::{nanos, Trace};
use pov_proto::wire::ProxyRequestView;
use pov_proto::Status;
use pov_runtime::sched::{Fifo, Scheduler, Ticket};
use pov_runtime::transport::Endpoint;
use pov_runtime::{FdRegistry, PollStatus};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
    /// Most sessions one tenant may have open on this device (default: `max_sessions`
    /// - 1, at least 1, so that one tenant cannot take every area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_tenant: Option<u32>,
    /// Most queues one tenant may have on this device, all sessions together (default:
    /// no limit but the sessions').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues_per_tenant: Option<u32>,
    /// With requests in flight and nothing heard from a proxy for this long, it is
    /// pinged, ms (10-60000; `forward::health`).
    #[serde(default = "crate::forward::health::default_ping_after_ms")]
    pub proxy_ping_after_ms: u32,
    /// A ping unanswered for this long declares the proxy down, ms (50-60000).
    #[serde(default = "crate::forward::health::default_down_after_ms")]
    pub proxy_down_after_ms: u32,
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
            max_sessions_per_tenant: None,
            max_queues_per_tenant: None,
            proxy_ping_after_ms: crate::forward::health::default_ping_after_ms(),
            proxy_down_after_ms: crate::forward::health::default_down_after_ms(),
        }
    }

    /// The per-tenant session limit in force (see
    /// [`PovDeviceConfig::max_sessions_per_tenant`]).
    pub fn tenant_session_limit(&self) -> u32 {
        self.max_sessions_per_tenant.unwrap_or(self.max_sessions.saturating_sub(1).max(1))
    }
}

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A parameter is out of range.
    #[error("invalid device parameter {field}: {why}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Counters of one device (shown by `pov_device_get_devices`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceStats {
    pub sessions: u32,
    pub queues: u32,
    pub requests: u64,
    /// Requests answered with a status other than `Ok` and `NotFound`.
    pub request_errors: u64,
    /// Requests answered `NotFound` (a missing file: often a probe, e.g. `pov-host cp`
    /// checking whether its destination exists, so not counted as an error).
    pub requests_not_found: u64,
    pub in_flight: u32,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub admin_requests: u64,
    /// Sessions freed because their heartbeats stopped (or their tenant was deleted).
    pub sessions_reclaimed: u64,
    /// Sessions the host closed (CloseSession), freed once their requests were answered.
    pub sessions_closed: u64,
    /// Request slot writes that did not carry a whole request (block-layer split).
    pub split_requests: u64,
    /// Block IOs rejected because they crossed a region boundary (block-layer merge).
    pub crossing_ios: u64,
    /// Largest single block WRITE received on a request slot, bytes (a whole 1 MiB
    /// request arrives as 1 MiB + 512 unless the host block layer split it).
    pub max_request_write_bytes: u64,
    /// Largest single block READ received on a response slot, bytes.
    pub max_response_read_bytes: u64,
    /// Block WRITEs received on request slots (one per request unless the host's
    /// block layer split it).
    pub request_writes: u64,
    /// Block READs received on response slots and windows (one per request when the
    /// host guessed the response's size).
    pub response_reads: u64,
    /// Of `response_reads`, those on a response window (`docs/protocol.md`, "Response
    /// windows").
    pub window_reads: u64,
    /// Window READs that arrived before their request's WRITE and waited for it.
    pub window_reads_early: u64,
    /// Window READs answered after `EARLY_READ_TIMEOUT` (1 s) without a request of
    /// their parity (a host that gave up on its request, or another process).
    pub window_reads_expired: u64,
    /// Block IOs (virtio-blk READ/WRITE/...) completed with `VIRTIO_BLK_S_IOERR` or
    /// `UNSUPP`: unaligned, crossing, aimed at guard or read-only space, a request slot
    /// overwritten while in flight, a foreign owner. A correct host never causes one.
    pub block_io_errors: u64,
    /// Requests whose remaining bytes never arrived (a split that lost a piece).
    pub incomplete_requests: u64,
    /// Failed authentications: OpenSession proofs, admin MACs and sequence numbers, IO
    /// request tags and request IDs.
    pub auth_failures: u64,
    /// Admin requests refused because the mailbox they named was held for another
    /// exchange (the host retries with another).
    pub admin_mailbox_busy: u64,
    pub proxies_connected: u32,
    /// Proxy failover counters and each proxy's state (flattened into the JSON).
    #[serde(flatten)]
    pub failover: crate::forward::FailoverStats,
    pub stale_proxy_responses: u64,
    /// Frames per send and per receive on the proxy connections (gathering IO).
    pub gathering: GatherStats,
    /// The QoS scheduler's counters (absent with the FIFO of a device built without
    /// the daemon's QoS table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<pov_runtime::qos::QosStats>,
    /// BC request bytes at the proxies now (bounded by the window).
    pub bc_in_flight_bytes: u64,
    /// The most BC request bytes at the proxies at once since the device started.
    pub bc_in_flight_peak_bytes: u64,
    /// The BC window's controller (with a QoS scheduler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bc_window: Option<crate::qos::WindowState>,
    /// Time from the scheduler to the proxy's answer, per effective class, since the
    /// device started (with a QoS scheduler; FIFO devices count everything as LC).
    pub latency: ClassLatency,
    /// Per tenant: requests by operation, errors by status, bytes, sessions, requests
    /// in flight and latency (from the request slot WRITE to the response), sorted by
    /// tenant.
    pub tenants: Vec<pov_metrics::TenantSnapshot>,
}

/// Latency summaries per QoS class.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassLatency {
    pub lc: LatencySummary,
    pub bc: LatencySummary,
}

/// A latency distribution in brief, µs (3 significant digits).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// The summary of `h` (µs samples).
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A histogram of 1 µs to 100 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Where a request's path comes from.
#[derive(Clone)]
enum Target {
    /// Resolved from the request payload (Open, List, Remove, Stat by path, Mkdir,
    /// SetAttr, StatFs).
    Path(String),
    /// Rename's two names, both normalized and inside the session's grant; the
    /// destination travels to the proxy as the payload.
    Rename { from: String, to: String },
    /// The path of the open file the request's handle names.
    Handle,
}

/// A request accepted from a queue, waiting for its turn in the scheduler.
struct Ready {
    queue: u32,
    header: RequestHeader,
    target: Target,
    /// For Open: the handle to create on success.
    open: Option<Handle>,
    /// When it entered the scheduler.
    since: Instant,
}

/// What a request at the proxy is for, to finish it when the answer comes.
struct InFlight {
    queue: u32,
    request_id: u64,
    op: Op,
    /// For Open: the handle to create on success.
    open: Option<Handle>,
    /// For an idempotent request: what it takes to resend it to another proxy if its
    /// proxy fails before answering.
    resend: Option<Resend>,
    /// Its effective QoS class and when it entered the scheduler (per-class latency).
    class: u8,
    since: Instant,
    /// Its bytes counted in the device's BC work in flight (0 for LC).
    bc_bytes: u64,
    /// A traced request ([`flags::TRACE`]): when its last try was sent, and how many
    /// tries there were.
    traced: Option<(Instant, u32)>,
}

/// How many times one request may be sent (the first try included).
pub const MAX_TRIES: u32 = 3;
/// How many redirects one request follows (each installs a newer route table, after
/// which the proxies serve it: more means tables that keep changing).
pub const MAX_REDIRECTS: u32 = 2;

/// A request's tries so far (see [`Op::is_idempotent`]).
#[derive(Debug, Clone, Copy)]
struct Tries {
    /// Connections tried (bit i: connection i; connections past 63 are not tracked).
    tried: u64,
    count: u32,
    /// Redirects followed (at most [`MAX_REDIRECTS`]).
    redirects: u32,
    /// The first try's deadline: a resent request never gets more time.
    deadline: Instant,
    /// The effective QoS class the scheduler gave it, and when it entered the scheduler.
    class: u8,
    since: Instant,
}

/// What it takes to send an idempotent request again (kept while it is in flight).
struct Resend {
    header: RequestHeader,
    target: Target,
    tries: Tries,
}

/// Everything of a PoV device but its forwarder (so that answers can be finished
/// while the forwarder hands them over).
pub(crate) struct DeviceState {
    pub(crate) name: String,
    pub(crate) geometry: Geometry,
    pub(crate) tenants: TenantTable,
    pub(crate) heartbeat_interval_ms: u32,
    pub(crate) session_timeout_ms: u32,
    pub(crate) max_sessions_per_tenant: u32,
    pub(crate) max_queues_per_tenant: Option<u32>,
    config_record: Vec<u8>,
    serial: [u8; pov_proto::layout::SERIAL_LEN],
    /// Mailboxes, exchanges under way, the rate limit of failed authentications.
    pub(crate) admin_state: AdminState,
    /// Sessions by IO area.
    pub(crate) areas: Vec<Option<Session>>,
    /// Where the search for a free IO area starts at the next OpenSession (areas are
    /// handed out in turn, so a just-freed one, whose session mailbox its closing host
    /// may still be reading, is reused last).
    pub(crate) next_area: usize,
    /// Open queues by global queue ID (FxHash: the keys are IDs this device assigns,
    /// so a peer cannot choose colliding ones).
    pub(crate) queues: FxHashMap<u32, Queue>,
    /// Queue -> proxy connection (the mapping table).
    pub(crate) router: Box<dyn Router>,
    ready: Box<dyn Scheduler<Ready>>,
    pub(crate) out: Completions,
    pub(crate) stats: DeviceStats,
    /// Live counters per tenant (requests by operation, errors by status, bytes,
    /// sessions, queue depth, latency).
    pub(crate) tenant_counters: pov_metrics::CounterRegistry,
    pub(crate) last_session_check: Instant,
    /// Requests whose proxy failed, to resend elsewhere after the forwarder's poll.
    resend: Vec<(Ready, Tries)>,
    /// Requests no proxy could take, waiting for one (see `PovDevice::hold`).
    held: Vec<(Ready, Tries)>,
    /// The device's route table (redirects offer newer ones).
    routes: RouteControl,
    /// The forwarder is stopping: nothing is resent.
    stopping: bool,
    /// With a QoS scheduler: the daemon's table (options, LC targets) and the
    /// controller of the bound on BC bytes at the proxies.
    bc_window: Option<(crate::qos::QosTable, crate::qos::WindowControl)>,
    /// BC request bytes at the proxies now.
    bc_in_flight: u64,
    /// Time from the scheduler to the answer, µs, per effective class (LC, BC).
    latency: [Histogram<u64>; 2],
}

/// A PoV device: serves the PoV device protocol over block IO and forwards file
/// requests to proxies. Owned by one reactor; see the module docs.
pub struct PovDevice {
    cfg: PovDeviceConfig,
    fwd: Forwarder<InFlight>,
    st: DeviceState,
    route: RouteView,
}

impl PovDevice {
    /// Creates a device. Proxy connections are made lazily, on first use; endpoints are
    /// parsed here (no IO).
    ///
    /// Errors: [`DeviceError::Invalid`] for an empty or over-long name, no proxies or a
    /// malformed endpoint, or `num_queues`/`max_sessions`/timeouts out of range.
    pub fn new(cfg: PovDeviceConfig, tenants: TenantTable) -> Result<PovDevice, DeviceError> {
        let inv = |field, why: &str| DeviceError::Invalid { field, why: why.to_string() };
        if cfg.name.is_empty() || cfg.name.len() > pov_proto::layout::MAX_DEVICE_NAME {
            return Err(inv("name", "must be 1-31 bytes"));
        }
        if cfg.proxies.is_empty() {
            return Err(inv("proxies", "at least one proxy endpoint is needed"));
        }
        let endpoints = parse_endpoints(&cfg.proxies)?;
        if cfg.heartbeat_interval_ms == 0 || cfg.session_timeout_ms <= cfg.heartbeat_interval_ms {
            return Err(inv("session_timeout_ms", "must be larger than heartbeat_interval_ms (> 0)"));
        }
        if cfg.request_timeout_ms == 0 {
            return Err(inv("request_timeout_ms", "must be > 0"));
        }
        if cfg.max_sessions_per_tenant == Some(0) || cfg.max_queues_per_tenant == Some(0) {
            return Err(inv("max_sessions_per_tenant/max_queues_per_tenant", "must be > 0 when given"));
        }
        let liveness = crate::forward::health::Liveness::from_ms(cfg.proxy_ping_after_ms, cfg.proxy_down_after_ms)
            .map_err(|e| inv("proxy_ping_after_ms/proxy_down_after_ms", &e))?;
        let geometry =
            Geometry::new(cfg.max_sessions, cfg.num_queues).map_err(|e| inv("num_queues/max_sessions", &e.to_string()))?;
        let name = format!("device {}", cfg.name);
        let timeout = Duration::from_millis(cfg.request_timeout_ms as u64);
        let mut fwd = Forwarder::new(name, &endpoints, timeout, GatheringControl::default());
        fwd.set_liveness(liveness);
        let st = DeviceState {
            name: cfg.name.clone(),
            geometry,
            tenants,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            session_timeout_ms: cfg.session_timeout_ms,
            max_sessions_per_tenant: cfg.tenant_session_limit(),
            max_queues_per_tenant: cfg.max_queues_per_tenant,
            config_record: ConfigSpace { geometry, name: cfg.name.clone(), features: features::ALL }.encode().to_vec(),
            serial: pov_proto::layout::serial_for(&cfg.name),
            admin_state: AdminState::new(),
            areas: (0..geometry.areas).map(|_| None).collect(),
            next_area: 0,
            queues: FxHashMap::default(),
            router: Box::new(RoundRobin::new(endpoints.len())),
            ready: Box::new(Fifo::default()),
            out: Completions::default(),
            stats: DeviceStats::default(),
            tenant_counters: pov_metrics::CounterRegistry::default(),
            last_session_check: Instant::now(),
            resend: Vec::new(),
            held: Vec::new(),
            routes: RouteControl::default(),
            stopping: false,
            bc_window: None,
            bc_in_flight: 0,
            latency: [latency_histogram(), latency_histogram()],
        };
        let route = RouteView::new(st.routes.clone());
        Ok(PovDevice { cfg, fwd, st, route })
    }

    /// Schedules ready requests by tenants' QoS policies in `qos` (the daemon's table:
    /// LC before BC, BC by weight, reservations and limits; `pov_runtime::qos`) instead
    /// of arrival order.
    pub fn with_qos(mut self, qos: &crate::qos::QosTable) -> PovDevice {
        self.st.ready = Box::new(pov_runtime::qos::QosScheduler::new(qos.lookup()));
        self.st.bc_window = Some((qos.clone(), crate::qos::WindowControl::new(Instant::now())));
        self
    }

    /// Routes by `routes` (the daemon's route table of this device, shared with its
    /// RPC methods) instead of a private one.
    pub fn with_routes(mut self, routes: RouteControl) -> PovDevice {
        self.st.routes = routes.clone();
        self.route = RouteView::new(routes);
        self
    }

    /// Follows `control` for the gathering policy of the proxy connections (normally
    /// the daemon's, shared by every device) instead of a private default.
    pub fn with_gathering(mut self, control: GatheringControl) -> PovDevice {
        self.fwd.follow(control);
        self
    }

    /// The device's configuration.
    pub fn config(&self) -> &PovDeviceConfig {
        &self.cfg
    }

    /// The device's geometry.
    pub fn geometry(&self) -> Geometry {
        self.st.geometry
    }

    /// Capacity in 512-byte sectors (virtio-blk `capacity`).
    pub fn capacity_sectors(&self) -> u64 {
        self.st.geometry.capacity_sectors()
    }

    /// The 20-byte virtio-blk serial (`pov-<name>`).
    pub fn serial(&self) -> [u8; pov_proto::layout::SERIAL_LEN] {
        self.st.serial
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        let mut s = self.st.stats.clone();
        let f = self.fwd.stats();
        s.sessions = self.st.areas.iter().filter(|a| a.is_some()).count() as u32;
        s.queues = self.st.queues.len() as u32;
        s.in_flight = f.in_flight;
        s.proxies_connected = f.proxies_connected;
        self.fwd.fill_failover(&f, &mut s.failover);
        s.failover.fill_route(&self.st.routes);
        s.stale_proxy_responses = f.stale_responses;
        s.block_io_errors = self.st.out.errors;
        s.gathering = GatherStats::from_counters(f.transport);
        s.qos = self.st.ready.qos_stats();
        s.bc_in_flight_bytes = self.st.bc_in_flight;
        s.bc_window = self.st.bc_window.as_ref().map(|(_, c)| c.state());
        s.latency = ClassLatency { lc: LatencySummary::of(&self.st.latency[0]), bc: LatencySummary::of(&self.st.latency[1]) };
        s.tenants = self.st.tenant_counters.snapshot();
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

    /// The next instant [`PovDevice::poll`] must run even if no IO arrives.
    pub fn deadline(&self) -> Option<Instant> {
        let queues = self.st.queues.values().filter_map(Queue::deadline);
        let held = self.st.held.iter().map(|(_, t)| t.deadline).min();
        let others = [self.fwd.deadline(), self.st.session_deadline(), self.st.ready.next_wakeup(), held];
        queues.chain(others.into_iter().flatten()).min()
    }

    /// Serves one block request. The completion is queued (at once, or when the
    /// response it waits for is ready); fetch it with [`PovDevice::take_completions`].
    pub fn submit(&mut self, req: BlockRequest) {
        self.st.submit(req);
        self.forward_ready();
    }

    /// Sends the requests the scheduler lets go.
    fn forward_ready(&mut self) {
        if self.st.ready.is_empty() {
            return;
        }
        let now = Instant::now();
        let window = match &mut self.st.bc_window {
            Some((table, ctl)) => ctl.window(&table.options(), now),
            None => 0,
        };
        loop {
            // One BC request may always go, however large; then up to the window.
            let bc = window == 0 || self.st.bc_in_flight == 0 || self.st.bc_in_flight < window;
            let Some((class, r)) = self.st.ready.pop_class(now, bc) else { break };
            self.forward(r, class);
        }
    }

    /// Sends one request to its queue's proxy (borrowing the tenant name, the path and
    /// the payload from where they are: no copies but an idempotent request's path).
    fn forward(&mut self, r: Ready, class: u8) {
        let deadline = self.fwd.deadline_from_now();
        let tries = Tries { tried: 0, count: 0, redirects: 0, deadline, class, since: r.since };
        self.send_try(r, tries);
    }

    /// Sends a try of `r` to a usable proxy: its queue's home, or the next usable one
    /// (never one tried already, nor on the request's retry-forbidden list when it is
    /// a resend). A connection that cannot take it is skipped at once (nothing was
    /// sent, so even a non-idempotent request may go to the next).
    fn send_try(&mut self, r: Ready, mut tries: Tries) {
        let Ready { queue, header: h, target, open, .. } = r;
        let windowed = self.st.bc_window.is_some();
        let st = &mut self.st;
        let fail = |st: &mut DeviceState, status| st.respond(queue, h.op as u16, h.request_id, status, 0, 0, &[]);
        let Some(q) = st.queues.get(&queue) else { return };
        let owner = q.owner;
        let Some(s) = st.owner_session(queue, owner.session_id).filter(|s| s.state == SessionState::Open) else {
            return fail(st, Status::BadSession);
        };
        let (path, location) = match &target {
            Target::Path(p) => (p.as_str(), 0),
            Target::Rename { from, .. } => (from.as_str(), 0),
            Target::Handle => match s.handles.get(&h.file_handle) {
                Some(handle) => (handle.path.as_str(), handle.location),
                None => return fail(st, Status::BadHandle),
            },
        };
        // SDK hint: the host's location key, else the one the proxy gave at Open.
        let mut hint = h.hint;
        if hint.location_key == 0 {
            hint.location_key = location;
        }
        let payload = match &target {
            _ if h.op.carries_data() => q.payload(h.payload_len as usize),
            Target::Rename { to, .. } => to.as_bytes(),
            _ => &[],
        };
        let view = ProxyRequestView {
            op: h.op,
            tag: 0,
            offset: h.offset,
            length: h.length,
            flags: h.flags,
            hint,
            trace: h.flags & flags::TRACE != 0,
            // The effective class (the tenant's policy applied), which the proxy acts on.
            qos: tries.class,
            load: 0,
            epoch: 0,
            session_id: s.id,
            tenant: &s.tenant,
            path,
            read_only: s.grant.read_only,
            prefix: &s.grant.prefix,
        };
        // The route table's owner of the request's slot, else the queue's home proxy.
        let input = RouteInput::File { tenant: &s.tenant, path, location: hint.location_key, offset: h.offset };
        // (Borrowed, not cloned: no reference-count traffic per request.)
        let (base, epoch) = match self.route.table() {
            Some(t) => (t.owner(t.slot(input)).and_then(|m| self.fwd.member_conn(t, m)).unwrap_or(owner.proxy), t.epoch),
            None => (owner.proxy, 0),
        };
        let view = ProxyRequestView { epoch, ..view };
        // With QoS, LC requests take the proxy's latency-critical lane (no BC bytes
        // ahead of them in the stream).
        let base = if windowed && tries.class == pov_runtime::qos::LC { self.fwd.lc_lane(base) } else { base };
        // SDK hint (docs/protocol.md): reroute 1 starts from the proxy after the home.
        let home = if h.hint.reroute == 1 { base + 1 } else { base } % self.fwd.conns().max(1);
        let bytes = if h.op == Op::Read { u64::from(h.length) } else { u64::from(h.payload_len) };
        let bc_bytes = if tries.class == pov_runtime::qos::BC && windowed { bytes } else { 0 };
        let (class, since) = (tries.class, tries.since);
        let traced = None;
        let mut ctx = InFlight { queue, request_id: h.request_id, op: h.op, open, resend: None, class, since, bc_bytes, traced };
        for _ in 0..self.fwd.conns() {
            let resend = tries.count > 0;
            let avoid = |i: usize| tries.tried & conn_bit(i) != 0 || (resend && h.hint.forbids(i as u32));
            let Some(conn) = self.fwd.pick(home, &avoid) else { break };
            tries.tried |= conn_bit(conn);
            tries.count += 1;
            // Keep what a resend needs only while one is allowed (any op may follow a
            // redirect: it was not run; only idempotent ones are resent after a failure).
            if tries.count < MAX_TRIES {
                ctx.resend = Some(Resend { header: h.clone(), target: target.clone(), tries });
            }
            if view.trace {
                ctx.traced = Some((Instant::now(), tries.count));
            }
            match self.fwd.send_until(conn, view, payload, ctx, tries.deadline) {
                Ok(_) => {
                    self.st.bc_in_flight += bc_bytes;
                    self.st.stats.bc_in_flight_peak_bytes = self.st.stats.bc_in_flight_peak_bytes.max(self.st.bc_in_flight);
                    self.st.stats.failover.rerouted += u64::from(conn != base);
                    self.st.stats.failover.resent += u64::from(resend);
                    return;
                }
                // The device is stopping, or the request cannot be encoded.
                Err((_, status)) if status != Status::Unavailable || self.fwd.stopping() => {
                    return self.st.respond(queue, h.op as u16, h.request_id, status, 0, 0, &[]);
                }
                // Nothing was sent: try the next proxy, if any.
                Err((back, _)) => {
                    ctx = back;
                    ctx.resend = None;
                    tries.count -= 1;
                }
            }
        }
        // No proxy took it (nothing was sent this time): hold it until one is usable.
        self.hold(Ready { queue, header: h, target, open: ctx.open, since }, tries);
    }

    /// Holds a request no proxy can take now, until one becomes usable again or its
    /// deadline passes (then `Unavailable`): a restarting proxy costs a delay, not an
    /// error (like a multipath device queueing while it has no path, for a bounded
    /// time).
    fn hold(&mut self, r: Ready, mut tries: Tries) {
        if self.fwd.stopping() || Instant::now() >= tries.deadline {
            return self.st.respond(r.queue, r.header.op as u16, r.header.request_id, Status::Unavailable, 0, 0, &[]);
        }
        // A proxy that comes back is a new incarnation: it may be tried again.
        tries.tried = 0;
        self.st.stats.failover.held += 1;
        self.st.held.push((r, tries));
    }

    /// Sends the held requests once a proxy is usable; fails those whose deadline
    /// passed.
    fn release_held(&mut self) -> bool {
        let (expired, ready) = release_held(&mut self.st.held, self.fwd.any_usable(), |(_, t)| t.deadline);
        let busy = !expired.is_empty() || !ready.is_empty();
        for (r, _) in expired {
            self.st.respond(r.queue, r.header.op as u16, r.header.request_id, Status::Unavailable, 0, 0, &[]);
        }
        for (r, tries) in ready {
            self.send_try(r, tries);
        }
        busy
    }

    /// Resends the requests whose proxy failed (see [`DeviceState::finish`]).
    fn resend_failed(&mut self) {
        if self.st.resend.is_empty() {
            return;
        }
        for (r, tries) in std::mem::take(&mut self.st.resend) {
            self.send_try(r, tries);
        }
    }

    /// Moves proxy traffic, expires timeouts and incomplete requests, and reclaims dead
    /// sessions. Returns [`PollStatus::Busy`] if it did any work.
    pub fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus {
        let st = &mut self.st;
        let mut busy = self.fwd.poll(fds, &mut |f, outcome| st.finish(f, outcome));
        self.resend_failed();
        busy |= self.release_held();
        let now = Instant::now();
        busy |= self.st.expire_incomplete(now);
        busy |= self.st.reclaim_sessions(now);
        self.forward_ready();
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Stops the device: every parked and in-flight IO completes with an error and
    /// proxy connections are closed.
    pub fn shutdown(&mut self, fds: &mut dyn FdRegistry) {
        self.st.stopping = true;
        let st = &mut self.st;
        self.fwd.shutdown(fds, &mut |f, outcome| st.finish(f, outcome));
        let now = Instant::now();
        while let Some(r) = self.st.ready.pop(now) {
            self.st.respond(r.queue, r.header.op as u16, r.header.request_id, Status::Unavailable, 0, 0, &[]);
        }
        for (r, _) in std::mem::take(&mut self.st.held) {
            self.st.respond(r.queue, r.header.op as u16, r.header.request_id, Status::Unavailable, 0, 0, &[]);
        }
        let qids: Vec<u32> = self.st.queues.keys().copied().collect();
        for q in qids {
            self.st.free_queue(q);
        }
        for a in self.st.areas.iter_mut() {
            *a = None;
        }
    }
}

/// Parses every endpoint of a device's `proxies` (no IO).
///
/// # Errors
/// [`DeviceError::Invalid`] naming the first malformed one.
pub(crate) fn parse_endpoints(proxies: &[String]) -> Result<Vec<Endpoint>, DeviceError> {
    proxies
        .iter()
        .map(|p| Endpoint::parse(p).map_err(|e| DeviceError::Invalid { field: "proxies", why: e.to_string() }))
        .collect()
}

impl DeviceState {
    fn submit(&mut self, req: BlockRequest) {
        match req.op {
            BlockOp::Flush => self.out.complete(req, BlockStatus::Ok, 0),
            BlockOp::GetId => self.out.get_id(req, &self.serial),
            BlockOp::Other(_) => self.out.complete(req, BlockStatus::Unsupported, 0),
            BlockOp::Read | BlockOp::Write => self.submit_rw(req),
        }
    }

    fn submit_rw(&mut self, req: BlockRequest) {
        let len = req.buf.len() as u64;
        let is_read = req.op == BlockOp::Read;
        if req.offset % pov_proto::layout::SECTOR_SIZE != 0 || len % pov_proto::layout::SECTOR_SIZE != 0 {
            return self.out.complete(req, BlockStatus::IoErr, 0);
        }
        match self.geometry.classify(req.offset, len) {
            Region::Config { offset } if is_read => read_from(&mut self.out, req, &self.config_record, offset as usize),
            Region::Guard if is_read => read_from(&mut self.out, req, &[], 0),
            Region::AdminMailboxes { offset } if is_read => {
                read_from(&mut self.out, req, self.admin_state.mailbox_bytes(), offset as usize)
            }
            Region::SessionMailbox { area, offset } if is_read => {
                read_from(&mut self.out, req, self.admin_state.session_mailbox_bytes(area), offset as usize)
            }
            Region::AdminRequest { offset } if !is_read => {
                self.stats.admin_requests += 1;
                let mut b = [0u8; ADMIN_REQUEST_SIZE];
                // One whole record in one WRITE; a request whose answer has nowhere to
                // go fails its WRITE (the writer alone sees that).
                if offset != 0 || req.buf.len() < ADMIN_REQUEST_SIZE || req.buf.read_at(0, &mut b).is_err() {
                    return self.out.complete(req, BlockStatus::IoErr, 0);
                }
                match self.admin(&mut b, Instant::now()) {
                    AdminOutcome::Answered => self.out.complete(req, BlockStatus::Ok, 0),
                    AdminOutcome::Refused => self.out.complete(req, BlockStatus::IoErr, 0),
                }
            }
            Region::RequestSlot { queue, offset } if !is_read => self.write_request_slot(req, queue, offset as usize),
            Region::ResponseSlot { queue, offset } if is_read => self.read_response_slot(req, queue, offset as usize),
            Region::ResponseWindow { queue, parity, offset } if is_read => {
                self.read_response_window(req, queue, parity, offset as usize)
            }
            Region::Crossing => {
                self.stats.crossing_ios += 1;
                self.out.complete(req, BlockStatus::IoErr, 0)
            }
            // Writes to read-only or guard space.
            _ if !is_read => self.out.complete(req, BlockStatus::IoErr, 0),
            // Reading back a request slot or the admin request record returns zeros.
            _ => read_from(&mut self.out, req, &[], 0),
        }
    }

    fn write_request_slot(&mut self, req: BlockRequest, queue: u32, offset: usize) {
        self.stats.request_writes += 1;
        let len = req.buf.len();
        self.stats.max_request_write_bytes = self.stats.max_request_write_bytes.max(len as u64);
        let Some(q) = self.queues.get_mut(&queue) else {
            // Not an open queue: nobody to answer in a response slot.
            log::debug!("device {}: write to request slot of unopened queue {queue}", self.name);
            return self.out.complete(req, BlockStatus::IoErr, 0);
        };
        match q.write(queue, offset, req.buf.as_ref(), Instant::now()) {
            SlotWrite::Refused => self.out.complete(req, BlockStatus::IoErr, 0),
            SlotWrite::Foreign(st) => {
                log::debug!("device {}: request on queue {queue} rejected: {st}", self.name);
                self.stats.request_errors += 1;
                self.out.complete(req, BlockStatus::IoErr, 0)
            }
            SlotWrite::Partial => {
                self.stats.split_requests += 1;
                self.out.complete(req, BlockStatus::Ok, 0)
            }
            SlotWrite::Complete(Err((op, request_id, st))) => {
                // An undecodable request is answered only if its header carries the
                // session's tag (payload not counted: its length is not trusted).
                let owner = q.owner;
                let area = (queue / self.geometry.queues_per_area) as usize;
                let s = self.areas.get(area).and_then(Option::as_ref).filter(|s| s.id == owner.session_id);
                let authentic = s.is_some_and(|s| {
                    request_id > q.last_request
                        && s.keys.open_request(queue, request_id, q.request_mut(0), REQUEST_TAG_OFFSET).is_ok()
                });
                if !authentic {
                    self.stats.auth_failures += 1;
                    q.reject(queue, &mut self.out);
                    return self.out.complete(req, BlockStatus::IoErr, 0);
                }
                q.accept(request_id);
                if let Some(s) = s {
                    q.current = Some((Instant::now(), 0));
                    s.counters.add_in_flight(1);
                }
                self.out.complete(req, BlockStatus::Ok, 0);
                self.stats.requests += 1;
                self.respond(queue, op, request_id, st, 0, 0, &[])
            }
            SlotWrite::Complete(Ok(h)) => {
                // Only the session's key holder can place a request on its queue, and
                // each request ID only once (a replayed or reordered request fails).
                let owner = q.owner;
                let area = (queue / self.geometry.queues_per_area) as usize;
                let s = self.areas.get(area).and_then(Option::as_ref).filter(|s| s.id == owner.session_id);
                let authentic = s.is_some_and(|s| {
                    h.request_id > q.last_request
                        && s.keys
                            .open_request(queue, h.request_id, q.request_mut(h.payload_len as usize), REQUEST_TAG_OFFSET)
                            .is_ok()
                });
                if !authentic {
                    log::debug!("device {}: request {} on queue {queue} failed authentication", self.name, h.request_id);
                    self.stats.auth_failures += 1;
                    q.reject(queue, &mut self.out);
                    return self.out.complete(req, BlockStatus::IoErr, 0);
                }
                q.accept(h.request_id);
                if let Some(s) = s {
                    let data = if h.op.carries_data() { u64::from(h.payload_len) } else { 0 };
                    q.current = Some((Instant::now(), data));
                    s.counters.add_in_flight(1);
                }
                self.out.complete(req, BlockStatus::Ok, 0);
                self.stats.requests += 1;
                self.dispatch(queue, h)
            }
        }
    }

    fn read_response_slot(&mut self, req: BlockRequest, queue: u32, offset: usize) {
        self.stats.response_reads += 1;
        self.stats.max_response_read_bytes = self.stats.max_response_read_bytes.max(req.buf.len() as u64);
        match self.queues.get_mut(&queue) {
            Some(q) => q.read(queue, req, offset, &mut self.out),
            None => self.out.complete(req, BlockStatus::IoErr, 0),
        }
    }

    fn read_response_window(&mut self, req: BlockRequest, queue: u32, parity: u8, offset: usize) {
        self.stats.response_reads += 1;
        self.stats.window_reads += 1;
        self.stats.max_response_read_bytes = self.stats.max_response_read_bytes.max(req.buf.len() as u64);
        match self.queues.get_mut(&queue) {
            Some(q) => {
                if q.read_window(queue, req, offset, parity, Instant::now(), &mut self.out) {
                    self.stats.window_reads_early += 1;
                }
            }
            None => self.out.complete(req, BlockStatus::IoErr, 0),
        }
    }

    /// Writes a response into the queue's response slot and completes parked READs.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond(
        &mut self,
        queue: u32,
        op: u16,
        request_id: u64,
        status: Status,
        result: u64,
        flags: u32,
        payload: &[u8],
    ) {
        self.respond_traced(queue, op, request_id, (status, result, flags), payload, None)
    }

    /// [`DeviceState::respond`] with the trace of a traced request: completed with the
    /// DPU's total here and put in the response header ([`Trace`]).
    pub(crate) fn respond_traced(
        &mut self,
        queue: u32,
        op: u16,
        request_id: u64,
        (status, result, flags): (Status, u64, u32),
        payload: &[u8],
        mut trace: Option<Trace>,
    ) {
        if status == Status::NotFound {
            self.stats.requests_not_found += 1;
        } else if !status.is_ok() {
            self.stats.request_errors += 1;
        }
        let Some(q) = self.queues.get_mut(&queue) else { return };
        let area = (queue / self.geometry.queues_per_area) as usize;
        let Some(s) = self.areas.get(area).and_then(Option::as_ref).filter(|s| s.id == q.owner.session_id) else { return };
        if let Some((since, data)) = q.current.take() {
            if let Some(t) = trace.as_mut() {
                t.dpu_ns = nanos(since.elapsed());
            }
            if let Ok(o) = Op::from_u16(op) {
                let read = if status.is_ok() && o == Op::Read { payload.len() as u64 } else { 0 };
                let written = if status.is_ok() { data } else { 0 };
                s.counters.record(o, status, read, written, since.elapsed());
            }
            s.counters.add_in_flight(-1);
        }
        let flags = if trace.is_some() { flags | flags::TRACED } else { flags & !flags::TRACED };
        let h = ResponseHeader { op, status, queue_id: queue, request_id, result, payload_len: 0, flags };
        q.respond(queue, h, trace.as_ref(), payload, (&s.keys, s.protection), &mut self.out);
    }

    /// The session in the IO area of `queue` (queue IDs are numbered area by area), if
    /// it is `session_id`.
    fn owner_session(&self, queue: u32, session_id: u64) -> Option<&Session> {
        let area = (queue / self.geometry.queues_per_area) as usize;
        self.areas.get(area).and_then(Option::as_ref).filter(|s| s.id == session_id)
    }

    /// Checks a decoded request against its session and queues it for its proxy (or
    /// answers it here: errors, Close).
    fn dispatch(&mut self, queue: u32, h: RequestHeader) {
        let op = h.op as u16;
        let owner = self.queues[&queue].owner;
        let area = (queue / self.geometry.queues_per_area) as usize;
        let Some(s) = self.areas.get_mut(area).and_then(Option::as_mut).filter(|s| s.id == owner.session_id) else {
            return self.respond(queue, op, h.request_id, Status::BadSession, 0, 0, &[]);
        };
        if s.state != SessionState::Open {
            return self.respond(queue, op, h.request_id, Status::BadSession, 0, 0, &[]);
        }
        let payload = self.queues[&queue].payload(h.payload_len as usize);
        // Resolve the target path inside the tenant's namespace.
        let mut open = None;
        let target = match h.op {
            Op::Rename => pov_proto::path::split_rename(payload).map(|(from, to)| Target::Rename { from, to }),
            Op::Open | Op::List | Op::Remove | Op::Mkdir | Op::SetAttr | Op::StatFs => {
                match pov_proto::path::normalize(payload) {
                    Ok(p) if h.op == Op::Open && p.is_empty() => Err(Status::IsDir),
                    Ok(p) => {
                        if h.op == Op::Open {
                            open = Some(Handle { path: p.clone(), writable: h.flags & flags::WRITE != 0, location: 0 });
                        }
                        Ok(Target::Path(p))
                    }
                    Err(st) => Err(st),
                }
            }
            Op::Stat if h.file_handle == 0 => pov_proto::path::normalize(payload).map(Target::Path),
            _ => match s.handles.get(&h.file_handle) {
                None => Err(Status::BadHandle),
                Some(handle) if matches!(h.op, Op::Write | Op::Append | Op::Truncate) && !handle.writable => {
                    Err(Status::Permission)
                }
                Some(_) if h.op == Op::Close => {
                    s.handles.remove(&h.file_handle);
                    return self.respond(queue, op, h.request_id, Status::Ok, 0, 0, &[]);
                }
                Some(_) => Ok(Target::Handle),
            },
        };
        // The session's grant (read-only, path prefix), checked here and again at the
        // proxy.
        let target = target.and_then(|t| {
            let path = match &t {
                Target::Path(p) => p.as_str(),
                // Both names must be inside the grant: the destination is checked
                // here, the source below.
                Target::Rename { from, to } if s.grant.allows(h.op, h.flags, to) => from.as_str(),
                Target::Rename { .. } => return Err(Status::Permission),
                Target::Handle => s.handles.get(&h.file_handle).map_or("", |x| x.path.as_str()),
            };
            if s.grant.allows(h.op, h.flags, path) {
                Ok(t)
            } else {
                Err(Status::Permission)
            }
        });
        let target = match target {
            Ok(t) => t,
            Err(st) => return self.respond(queue, op, h.request_id, st, 0, 0, &[]),
        };
        if h.op == Op::Read {
            self.stats.bytes_read += h.length as u64;
        }
        if h.op.carries_data() {
            self.stats.bytes_written += h.payload_len as u64;
        }
        let bytes = if h.op == Op::Read { u64::from(h.length) } else { u64::from(h.payload_len) };
        let ticket = Ticket { class: owner.qos as u8, tenant: &s.tenant, bytes, write: h.op.carries_data() };
        self.queues.get_mut(&queue).expect("open").busy = true;
        self.ready.push(ticket, Ready { queue, header: h, target, open, since: Instant::now() });
    }

    /// Finishes a request the forwarder handed back: the proxy's answer, or a local
    /// failure.
    fn finish(&mut self, mut f: InFlight, outcome: Outcome<'_>) {
        self.bc_in_flight = self.bc_in_flight.saturating_sub(f.bc_bytes);
        // Its proxy failed before answering: resend an idempotent request to another,
        // within its first try's deadline (docs/protocol.md, "Proxy liveness and
        // rerouting"); anything else gets the failure.
        if let (Outcome::Failed(Status::Unavailable), false) = (&outcome, self.stopping) {
            let resendable = |r: &Resend| r.header.op.is_idempotent(r.header.flags) && Instant::now() < r.tries.deadline;
            if let Some(Resend { header, target, tries }) = f.resend.take().filter(resendable) {
                self.resend.push((Ready { queue: f.queue, header, target, open: f.open, since: f.since }, tries));
                return;
            }
        }
        // Redirected (not run): install the proxy's newer table and resend, whatever
        // the op (docs/protocol.md, "Route tables and redirects").
        if let (Outcome::Answered { status: Status::Redirect, payload, .. }, false) = (&outcome, self.stopping) {
            self.stats.failover.redirects += 1;
            self.routes.follow_redirect(payload, &format!("device {}", self.name));
            if let Some(Resend { header, target, mut tries }) =
                f.resend.take().filter(|r| r.tries.redirects < MAX_REDIRECTS && Instant::now() < r.tries.deadline)
            {
                tries.redirects += 1;
                self.resend.push((Ready { queue: f.queue, header, target, open: f.open, since: f.since }, tries));
                return;
            }
            return self.respond(f.queue, f.op as u16, f.request_id, Status::Unavailable, 0, 0, &[]);
        }
        let (mut status, mut result, flags, payload, proxy) = match outcome {
            Outcome::Answered { status, result, flags, payload, trace } => (status, result, flags, payload, trace),
            Outcome::Failed(status) => (status, 0, 0, &[][..], None),
        };
        // A traced request: the DPU's legs; respond() adds its total.
        let trace = f.traced.map(|(sent, tries)| {
            let accepted = self.queues.get(&f.queue).and_then(|q| q.current).map_or(f.since, |(t, _)| t);
            Trace {
                dpu_ns: 0,
                dpu_queue_ns: nanos(sent.saturating_duration_since(accepted)),
                proxy_rtt_ns: nanos(sent.elapsed()),
                proxy,
                tries,
            }
        });
        if let (Some(mut handle), true) = (f.open, status.is_ok()) {
            // The proxy's Open result is the file's location key.
            handle.location = result;
            let owner = self.queues.get(&f.queue).map(|q| q.owner.session_id);
            let area = (f.queue / self.geometry.queues_per_area) as usize;
            match self.areas.get_mut(area).and_then(Option::as_mut).filter(|s| Some(s.id) == owner) {
                Some(s) => match s.add_handle(handle) {
                    Some(h) => result = h,
                    None => status = Status::NoResources,
                },
                None => status = Status::BadSession,
            }
        }
        let payload = if status.is_ok() { payload } else { &[] };
        let us = u64::try_from(f.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency[usize::from(f.class.min(1))].saturating_record(us.max(1));
        if f.class == pov_runtime::qos::LC {
            let tenant = self.queues.get(&f.queue).and_then(|q| {
                let area = (f.queue / self.geometry.queues_per_area) as usize;
                self.areas.get(area).and_then(Option::as_ref).filter(|s| s.id == q.owner.session_id)
            });
            if let (Some(s), Some((table, ctl))) = (tenant, self.bc_window.as_mut()) {
                if let Some(target) = table.lc_target(&s.tenant) {
                    ctl.record(us, target);
                }
            }
        }
        self.respond_traced(f.queue, f.op as u16, f.request_id, (status, result, flags), payload, trace);
    }

    /// Answers `Invalid` to requests whose remaining bytes never came, and window READs
    /// that waited too long for a request ([`Queue::expire_windows`]). Returns `true`
    /// if there was one.
    ///
    /// The request's ID is taken as used (`accept`), so the rest arriving late cannot
    /// make the device seal a second answer under the same queue and request ID (an
    /// AES-GCM nonce must never be used twice with a key). One whose ID is not above
    /// the queue's last gets no answer: the response slot stays as it was.
    fn expire_incomplete(&mut self, now: Instant) -> bool {
        let (mut stuck, mut any) = (Vec::new(), false);
        for (id, q) in self.queues.iter_mut() {
            let expired = q.expire_windows(*id, now, &mut self.out);
            self.stats.window_reads_expired += expired as u64;
            any |= expired > 0;
            if let Some((op, rid)) = q.expire_incomplete(now) {
                any = true;
                self.stats.incomplete_requests += 1;
                if rid > q.last_request {
                    q.accept(rid);
                    stuck.push((*id, op, rid));
                } else {
                    q.reject(*id, &mut self.out);
                }
            }
        }
        for (qid, op, rid) in &stuck {
            self.respond(*qid, *op, *rid, Status::Invalid, 0, 0, &[]);
        }
        any
    }
}

/// Completes a READ with `data[offset..]`, zero-filled past the end of `data`.
fn read_from(out: &mut Completions, mut req: BlockRequest, data: &[u8], offset: usize) {
    let r = copy_out(&mut req, data, offset);
    out.complete_copy(req, r);
}

impl BlockDevice for PovDevice {
    fn name(&self) -> &str {
        &self.cfg.name
    }
    fn capacity_sectors(&self) -> u64 {
        PovDevice::capacity_sectors(self)
    }
    fn submit(&mut self, req: BlockRequest) {
        PovDevice::submit(self, req)
    }
    fn poll(&mut self, fds: &mut dyn FdRegistry) -> PollStatus {
        PovDevice::poll(self, fds)
    }
    fn take_completions(&mut self, out: &mut Vec<BlockCompletion>) {
        PovDevice::take_completions(self, out)
    }
    fn deadline(&self) -> Option<Instant> {
        PovDevice::deadline(self)
    }
    fn stats_json(&self) -> Value {
        serde_json::to_value(PovDevice::stats(self)).unwrap_or(Value::Null)
    }
    /// `pov_device_create` with the device's parameters (defaults resolved).
    fn write_config_json(&self) -> Value {
        json!({ "method": "pov_device_create", "params": self.cfg })
    }
    fn destruct(&mut self, fds: &mut dyn FdRegistry) {
        PovDevice::shutdown(self, fds)
    }
}
