//! The polled-mode server: reactors, the accept poller and connection pollers.
//!
//! [`Server::start`] binds the listen endpoint, opens the backend and starts one
//! reactor per configured core ([`pov_runtime::Runtime`]). Reactor 0 runs the
//! *acceptor* poller; each accepted connection is handed, round robin, to a reactor
//! where a *connection* poller owns it for its whole life: it reads frames, runs each
//! request on its own backend channel ([`Backend::channel`]) through a
//! [`Service`], and queues the responses on the transport: the responses of one poll
//! leave together in one send (gathering, paper §4.3.2). No state is shared between
//! connections except the backend's store and the atomic counters ([`ProxyStats`]).
//!
//! **Idle cost.** Pollers report [`PollStatus::Busy`] only when bytes moved or
//! requests ran, and register their descriptors with
//! [`ReactorContext::watch_fd_for`], so an idle proxy's reactors sleep in
//! `epoll_wait`. A connection with unsent response bytes also watches its socket for
//! writability, so a full socket wakes the reactor when it drains (no polling).
//!
//! **Blocking backends.** When the backend asks for workers
//! ([`Backend::workers`], e.g. Ceph), the server starts one [`WorkerPool`] and each
//! connection submits its requests there through an [`Offload`] instead of running
//! them on the reactor: up to [`crate::offload::MAX_IN_FLIGHT`] requests per
//! connection are in flight at once, complete out of order, wake the reactor through
//! an eventfd, and time out with [`pov_proto::Status::Timeout`] after
//! [`Backend::op_timeout`]. One slow backend call therefore never stalls the others.
//!
//! **Failures.** A request that fails is a response with a status. A connection whose
//! transport fails (peer closed, socket error, over-long frame) is closed and its
//! poller removed; other connections are not affected. A failing `accept` (e.g. out
//! of descriptors) pauses accepting for [`ACCEPT_BACKOFF`].
//!
//! **Peers.** [`ServerConfig::peers`] says whom the server serves. With
//! [`Peers::Enrolled`] the listener must authenticate its peers (`tls:`): the
//! acceptor turns each connection's verified identity into an [`Access`] that its
//! service checks every request against. [`Peers::Anyone`] (plain TCP, the
//! development default) serves whoever connects and says so loudly in the log.
//!
//! **Back-pressure and timeouts** ([`ConnLimits`], docs/security.md "Resource
//! limits"). A connection's *outstanding* answer bytes are the answers not yet
//! handed to its socket plus the room reserved for its requests being served
//! ([`crate::service::answer_bound`]: a read reserves its length). A request is
//! started only while it fits [`ConnLimits::max_outstanding_bytes`] (and, on a
//! blocking backend, [`ConnLimits::max_requests`]); one that does not wait in
//! arrival order, and the connection stops reading its socket until answers drain, so
//! a peer that sends requests and never reads the answers fills its own TCP window,
//! not the proxy's memory. No request is dropped or failed for this. Each poll reads
//! at most [`RECV_BUDGET`] bytes, which bounds the requests waiting. A connection that
//! has not completed its first frame, or leaves a frame incomplete, for
//! [`ConnLimits::frame_timeout`] while the proxy reads it is closed; one that is idle
//! between frames is kept (a DPU's connections are long-lived and may idle) unless
//! [`ConnLimits::idle_timeout`] is set.

use crate::access::{Access, Peers};
use crate::backend::{Backend, BackendSpec};
use crate::cluster::Cluster;
use crate::offload::{Offload, WorkerPool};
use crate::service::{answer_bound, Service};
use crate::stats::{ProxyStats, ServerStats, TenantStats};
use crate::Error;
use pov_runtime::reactor::{PollStatus, Poller, PollerId, ReactorConfig, ReactorContext, ReactorHandle, Runtime};
use pov_runtime::transport::{Listener, Transport, TransportError};
use pov_runtime::Interest;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long accepting pauses after `accept` fails.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most connections accepted per acceptor poll.
const ACCEPT_BATCH: usize = 32;
/// Response buffers kept for reuse per connection.
const SPARE_BUFFERS: usize = 4;
/// Most bytes one poll of a connection reads from its socket (16 receive chunks). It
/// bounds the requests a connection at its bound holds waiting: at most this much
/// plus one frame.
pub const RECV_BUDGET: usize = 16 * pov_runtime::transport::RECV_CHUNK;

/// Default [`ConnLimits::max_outstanding_bytes`]: 8 MiB, eight 1 MiB answers (and 64
/// of the DPU's usual 128 KiB ones) on top of what the kernel's socket buffer holds.
pub const DEFAULT_MAX_OUTSTANDING_BYTES: usize = 8 << 20;
/// Default [`ConnLimits::max_requests`]: as many as a connection may have in flight on
/// the worker pool ([`crate::offload::MAX_IN_FLIGHT`]).
pub const DEFAULT_MAX_REQUESTS: usize = crate::offload::MAX_IN_FLIGHT;
/// Default [`ConnLimits::frame_timeout`]: 30 s.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// What one connection may hold of the proxy, and how long it may keep a frame
/// incomplete (see the module docs, "Back-pressure and timeouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most answer bytes one connection may have outstanding (answers not yet handed
    /// to its socket plus the room reserved for its requests being served). At the
    /// bound it stops reading requests until answers drain. A request is always
    /// started when nothing is outstanding, so a bound below one answer (1 MiB + 44
    /// bytes at most) still makes progress.
    pub max_outstanding_bytes: usize,
    /// Most requests one connection may have being served at once on a blocking
    /// backend's worker pool (at least 1; requests served on the reactor run one at a
    /// time).
    pub max_requests: usize,
    /// A connection that has not completed its first frame since it was accepted, or
    /// has received part of a frame, is closed when this passes without the frame
    /// completing (time the proxy does not read it, because of back-pressure, does not
    /// count). `None`: never.
    pub frame_timeout: Option<Duration>,
    /// A connection with nothing outstanding that receives nothing for this long is
    /// closed. `None` (the default): never; a DPU connects on first use and keeps the
    /// connection open while idle (it reconnects on its next request if closed, but a
    /// request sent just as the proxy closes would fail).
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_outstanding_bytes: DEFAULT_MAX_OUTSTANDING_BYTES,
            max_requests: DEFAULT_MAX_REQUESTS,
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
            idle_timeout: None,
        }
    }
}

impl ConnLimits {
    /// Whether a request whose answer takes up to `cost` bytes may start now, with
    /// `outstanding` answer bytes and `in_service` requests being served.
    fn admits(&self, outstanding: usize, in_service: usize, cost: usize) -> bool {
        in_service < self.max_requests.max(1)
            && (outstanding == 0 || outstanding.saturating_add(cost) <= self.max_outstanding_bytes)
    }
}

/// Configuration of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Endpoint to listen on: `tcp:HOST:PORT` or `HOST:PORT` (port 0 picks one).
    pub listen: String,
    /// Where files live.
    pub backend: BackendSpec,
    /// One entry per reactor: `Some(cpu)` pins it, `None` leaves it unpinned. Empty
    /// means one unpinned reactor.
    pub cores: Vec<Option<usize>>,
    /// Adaptive-polling tuning of every reactor.
    pub reactor: ReactorConfig,
    /// Back-pressure bounds and timeouts of every connection.
    pub limits: ConnLimits,
    /// Whom to serve: [`Peers::Anyone`] (default; plain TCP, development) or only
    /// enrolled DPUs (needs a `tls:` listen endpoint).
    pub peers: Peers,
    /// Cluster membership ([`crate::cluster`]): route table and redirects; `None`: a
    /// standalone proxy that serves every request.
    pub cluster: Option<Arc<Cluster>>,
    /// Worker threads for backend calls: `None` (default) as the backend asks
    /// ([`Backend::workers`]: 0 for the local backend, which then runs on the
    /// reactors); `Some(n)` overrides it (`Some(0)`: on the reactors).
    pub workers: Option<usize>,
    /// The QoS stage over the worker pool ([`crate::qos`]); `None`: arrival order.
    pub qos: Option<crate::qos::QosConfig>,
}

/// Default listen endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4420";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.to_string(),
            backend: BackendSpec::Local("./pov-data".into()),
            cores: vec![None],
            reactor: ReactorConfig::default(),
            limits: ConnLimits::default(),
            peers: Peers::Anyone,
            cluster: None,
            workers: None,
            qos: Some(crate::qos::QosConfig::default()),
        }
    }
}

/// A running proxy. Dropping it shuts it down like [`Server::shutdown`].
pub struct Server {
    runtime: Option<Runtime>,
    /// The route-table refresher of a cluster member: its stop flag and thread.
    refresher: Option<(Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>,
    local_addr: String,
    backend_kind: &'static str,
    stats: Arc<ProxyStats>,
    qos: Option<Arc<crate::qos::QosGate>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).field("backend", &self.backend_kind).finish()
    }
}

impl Server {
    /// Opens `config.backend` and starts serving (see [`Server::start_with_backend`]).
    ///
    /// Errors: [`Error::BackendSetup`], then as [`Server::start_with_backend`].
    pub fn start(config: ServerConfig) -> Result<Server, Error> {
        let backend = config.backend.open()?;
        Server::start_with_backend(config, backend)
    }

    /// Starts serving with an already-open backend (`config.backend` is ignored):
    /// binds `config.listen`, starts the reactors and registers the acceptor. When
    /// this returns, connections are being accepted.
    ///
    /// Errors: [`Error::Peers`] (`config.peers` does not fit the listener),
    /// [`Error::Listen`] (cannot bind), [`Error::Runtime`] (cannot start the reactors),
    /// [`Error::ReactorStopped`].
    pub fn start_with_backend(config: ServerConfig, backend: Box<dyn Backend>) -> Result<Server, Error> {
        let tls = config.listen.starts_with("tls:");
        let peers_error = |why: &str| Error::Peers { endpoint: config.listen.clone(), why: why.into() };
        match &config.peers {
            Peers::Enrolled(_) if !tls => {
                return Err(peers_error(
                    "only enrolled peers are to be served, but the listener authenticates nobody: use tls:HOST:PORT",
                ))
            }
            Peers::Anyone if tls => {
                return Err(peers_error("a TLS listener serves enrolled DPUs only: give the enrollment (--enrolled FILE)"))
            }
            _ => {}
        }
        let listener = pov_runtime::transport::listen(&config.listen)
            .map_err(|source| Error::Listen { endpoint: config.listen.clone(), source })?;
        let local_addr = listener.local_addr();
        match &config.peers {
            Peers::Anyone => log::warn!(
                "pov-proxy on {local_addr} TRUSTS ANY PEER: plain TCP, no authentication; whoever connects may read and \
                 write every tenant's files and every volume. For development only: use --listen tls:HOST:PORT with \
                 --tls-cert, --tls-key, --tls-ca and --enrolled (docs/security.md)"
            ),
            Peers::Enrolled(e) => log::info!("pov-proxy serves {} enrolled DPU(s) over mutual TLS on {local_addr}", e.len()),
        }
        let runtime = Runtime::start(&config.cores, config.reactor.clone()).map_err(Error::Runtime)?;
        let stats = Arc::new(ProxyStats::default());
        let backend_kind = backend.kind();
        let reactors = runtime.reactors().to_vec();
        let workers = config.workers.unwrap_or_else(|| backend.workers());
        let pool = if workers > 0 {
            Some(Arc::new(WorkerPool::start(backend.as_ref(), stats.clone(), workers, config.qos).map_err(Error::Runtime)?))
        } else {
            None
        };
        let qos = pool.as_ref().and_then(|p| p.qos().cloned());
        let acceptor = Acceptor {
            listener,
            watching: false,
            retry_at: None,
            backend,
            pool,
            reactors,
            next: 0,
            stats: stats.clone(),
            limits: config.limits,
            peers: config.peers.clone(),
            cluster: config.cluster.clone(),
        };
        runtime.reactors()[0]
            .call(move |ctx| {
                let mut acceptor = acceptor;
                acceptor.watch(ctx);
                ctx.add_poller(Box::new(acceptor));
            })
            .ok_or(Error::ReactorStopped(0))?;
        log::info!("pov-proxy serving {backend_kind} backend on {local_addr} with {} reactor(s)", runtime.reactors().len());
        let refresher =
            config.cluster.clone().map(|c| start_refresher(c, config.backend.clone())).transpose().map_err(Error::Runtime)?;
        Ok(Server { runtime: Some(runtime), refresher, local_addr, backend_kind, stats, qos })
    }

    /// The address actually bound (`HOST:PORT`).
    pub fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// Kind of the backend (`"local"`, `"null"`).
    pub fn backend_kind(&self) -> &'static str {
        self.backend_kind
    }

    /// Server-wide counters.
    pub fn stats(&self) -> ServerStats {
        self.stats.server()
    }

    /// Per-tenant counters, sorted by tenant.
    pub fn tenant_stats(&self) -> Vec<TenantStats> {
        self.stats.tenants()
    }

    /// Copies of every plain volume's counters (`tenant` is the volume's name).
    pub fn volume_stats(&self) -> Vec<TenantStats> {
        self.stats.volumes()
    }

    /// The QoS stage (`None`: QoS off, or a backend served on the reactors).
    pub fn qos(&self) -> Option<&Arc<crate::qos::QosGate>> {
        self.qos.as_ref()
    }

    /// Everything counted, as one JSON object: `{"server": {..}, "tenants": [..],
    /// "volumes": [..], "qos": {..} | null}` (what `pov-proxy --stats-file` writes).
    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({
            "server": self.stats(),
            "tenants": self.tenant_stats(),
            "volumes": self.stats.volumes(),
            "qos": self.qos.as_ref().map(|q| q.stats_json()),
        })
    }

    /// The reactors (for their counters, e.g. CPU time).
    pub fn reactors(&self) -> &[ReactorHandle] {
        self.runtime.as_ref().map(|r| r.reactors()).unwrap_or(&[])
    }

    /// Stops accepting, closes every connection and stops the reactors; returns when
    /// all reactor threads have exited.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some((stop, thread)) = self.refresher.take() {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown();
            log::info!("pov-proxy on {} stopped", self.local_addr);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the thread that keeps a cluster member's route table current: re-reads the
/// cluster file when it changes and, with Ceph placement, follows the OSD map through
/// `backend`'s monitors, every [`crate::cluster::REFRESH`] (sleeping between steps;
/// it checks its stop flag every 50 ms).
fn start_refresher(
    cluster: Arc<Cluster>,
    backend: BackendSpec,
) -> std::io::Result<(Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new().name("pov-route".into()).spawn(move || {
        let mut monitor = None;
        let mut failures = 0u32;
        let mut no_ceph_told = false;
        while !flag.load(Ordering::Acquire) {
            cluster.reload_if_changed();
            if cluster.ceph_pool().is_some() {
                if monitor.is_none() && !no_ceph_told {
                    match backend.monitor() {
                        Some(Ok(m)) => monitor = Some(m),
                        Some(Err(e)) => log::warn!("route controller: cannot reach the Ceph monitors: {e}"),
                        None => {
                            log::warn!("route controller: Ceph placement needs the ceph backend; routes stay as they are");
                            no_ceph_told = true;
                        }
                    }
                }
                if let Some(m) = &monitor {
                    match cluster.refresh_ceph(m.as_ref()) {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            if failures <= 3 || failures % 60 == 0 {
                                log::warn!("route controller: reading the OSD map failed ({failures} in a row): {e}");
                            }
                        }
                    }
                }
            }
            let until = Instant::now() + crate::cluster::REFRESH;
            while !flag.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })?;
    Ok((stop, thread))
}

/// Accepts connections and hands them to reactors.
struct Acceptor {
    listener: Box<dyn Listener>,
    watching: bool,
    retry_at: Option<Instant>,
    /// Prototype backend: each connection gets a channel of it.
    backend: Box<dyn Backend>,
    /// Workers of a blocking backend, shared by all connections.
    pool: Option<Arc<WorkerPool>>,
    reactors: Vec<ReactorHandle>,
    next: usize,
    stats: Arc<ProxyStats>,
    limits: ConnLimits,
    /// Whom to serve: each connection's access comes from its peer's identity.
    peers: Peers,
    /// This proxy's cluster membership (route table, redirects), if any.
    cluster: Option<Arc<Cluster>>,
}

impl Acceptor {
    fn watch(&mut self, ctx: &mut ReactorContext) {
        if !self.watching {
            ctx.watch_fd(self.listener.fd());
            self.watching = true;
        }
    }

    fn unwatch(&mut self, ctx: &mut ReactorContext) {
        if self.watching {
            ctx.unwatch_fd(self.listener.fd());
            self.watching = false;
        }
    }

    fn dispatch(&mut self, transport: Box<dyn Transport>, ctx: &mut ReactorContext) {
        self.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let target = self.reactors[self.next % self.reactors.len()].clone();
        self.next = self.next.wrapping_add(1);
        let stats = self.stats.clone();
        let limits = self.limits;
        let mut service = Service::new(self.backend.channel(), stats.clone());
        service.set_access(self.peers.access_for(transport.peer_identity()));
        service.set_cluster(self.cluster.clone());
        let offload = match self.pool.as_ref().map(|p| Offload::new(p.clone())).transpose() {
            Ok(o) => o,
            Err(e) => {
                log::warn!("cannot set up a completion queue for a connection ({e}); connection dropped");
                return;
            }
        };
        if target.id() == ctx.reactor_id() {
            Connection::register(ctx, transport, service, offload, stats, limits);
        } else if !target.send(move |ctx| Connection::register(ctx, transport, service, offload, stats, limits)) {
            log::warn!("reactor {} stopped; connection dropped", target.id());
        }
    }
}

impl Poller for Acceptor {
    fn name(&self) -> String {
        format!("proxy_accept({})", self.listener.local_addr())
    }

    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return PollStatus::Idle;
            }
            self.retry_at = None;
            self.watch(ctx);
        }
        let mut busy = false;
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok(Some(t)) => {
                    busy = true;
                    self.dispatch(t, ctx);
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("accept on {}: {e}; pausing for {ACCEPT_BACKOFF:?}", self.listener.local_addr());
                    // The pending connection keeps the descriptor readable: stop
                    // watching it so the reactor can sleep until the retry.
                    self.unwatch(ctx);
                    self.retry_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.retry_at, self.listener.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_unregister(&mut self, ctx: &mut ReactorContext) {
        self.unwatch(ctx);
    }
}

/// Serves one connection.
struct Connection {
    transport: Option<Box<dyn Transport>>,
    fd: Option<RawFd>,
    peer: String,
    id: Option<PollerId>,
    service: Service,
    /// Set for a blocking backend: requests run on the worker pool.
    offload: Option<Offload>,
    stats: Arc<ProxyStats>,
    outbox: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    limits: ConnLimits,
    /// Requests received while the connection was at its bound, in arrival order;
    /// served before anything more is read (at most [`RECV_BUDGET`] plus one frame).
    waiting: VecDeque<Vec<u8>>,
    /// Bytes of the answers in `outbox`.
    outbox_bytes: usize,
    /// What the reactor watches the transport's descriptor for (`None`: nothing).
    watching: Option<Interest>,
    /// Since when a frame is awaited: the accept until the first frame completes, then
    /// the first byte of an incomplete frame (see [`ConnLimits::frame_timeout`]).
    frame_since: Option<Instant>,
    /// Last time bytes moved (for [`ConnLimits::idle_timeout`]).
    last_activity: Instant,
    /// Reading is paused at the bound.
    paused: bool,
}

/// Runs one request now: on the reactor (its answer joins `outbox`) or on the worker
/// pool.
fn serve(
    service: &mut Service,
    offload: &mut Option<Offload>,
    outbox: &mut Vec<Vec<u8>>,
    outbox_bytes: &mut usize,
    spare: &mut Vec<Vec<u8>>,
    body: &[u8],
    fd: Option<RawFd>,
) {
    let mut frame = spare.pop().unwrap_or_default();
    if service.answer_ping(body, &mut frame) {
        *outbox_bytes += frame.len();
        outbox.push(frame);
        return;
    }
    // Routed by a stale table to a proxy that does not own it: not run, redirected.
    if let Some(answer) = service.route_check(body) {
        spare.push(frame);
        *outbox_bytes += answer.len();
        outbox.push(answer);
        return;
    }
    // A DPU that gave up on this proxy closed the connection and may have resent its
    // requests elsewhere: one that changes data must not run late (it could overwrite
    // what the resend and later writes stored). Checked right before it would run.
    if Service::mutates(body) && fd.is_some_and(crate::sys::peer_closed) {
        let n = service.stats().abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        log::info!("not running a data-changing request: the DPU closed its connection ({n} so far)");
        if let Some(o) = offload.as_ref() {
            o.abandon();
        }
        spare.push(frame);
        return;
    }
    if let Some(o) = offload.as_mut() {
        spare.push(frame);
        // Refused requests (beyond the peer's enrollment) are answered here and never
        // reach the workers.
        match service.refuse(body) {
            Some(answer) => {
                *outbox_bytes += answer.len();
                outbox.push(answer);
            }
            None => o.submit(body),
        }
        return;
    }
    if service.handle_frame(body, &mut frame) {
        *outbox_bytes += frame.len();
        outbox.push(frame);
    } else {
        spare.push(frame);
    }
}

/// `(requests being served, answer bytes reserved for them)` on the worker pool.
fn in_service(offload: &Option<Offload>) -> (usize, usize) {
    offload.as_ref().map_or((0, 0), |o| (o.in_flight() + o.backlog(), o.reserved_bytes()))
}

impl Connection {
    fn register(
        ctx: &mut ReactorContext,
        transport: Box<dyn Transport>,
        service: Service,
        offload: Option<Offload>,
        stats: Arc<ProxyStats>,
        limits: ConnLimits,
    ) {
        let fd = transport.fd();
        if let Some(fd) = fd {
            ctx.watch_fd(fd);
        }
        if let Some(o) = &offload {
            ctx.watch_fd(o.fd());
        }
        let peer = transport.peer().to_string();
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        match service.access() {
            access @ Access::Denied { .. } => log::warn!("connection from {peer} on reactor {}: {access}", ctx.reactor_id()),
            access => log::info!("connection from {peer} on reactor {} ({access})", ctx.reactor_id()),
        }
        let now = Instant::now();
        let conn = Connection {
            transport: Some(transport),
            fd,
            peer,
            id: None,
            service,
            offload,
            stats,
            outbox: Vec::new(),
            spare: Vec::new(),
            limits,
            waiting: VecDeque::new(),
            outbox_bytes: 0,
            watching: fd.map(|_| Interest::Read),
            frame_since: Some(now),
            last_activity: now,
            paused: false,
        };
        let id = ctx.add_poller(Box::new(conn));
        if let Some(c) = ctx.poller_mut::<Connection>(id) {
            c.id = Some(id);
        }
    }

    /// Releases the transport (idempotent): stops watching its descriptor first.
    fn release(&mut self, ctx: &mut ReactorContext) {
        if let Some(o) = &self.offload {
            o.abandon();
        }
        if let Some(t) = self.transport.take() {
            if let Some(fd) = self.fd.take() {
                ctx.unwatch_fd(fd);
            }
            if let Some(o) = &self.offload {
                ctx.unwatch_fd(o.fd());
            }
            drop(t);
            self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn close(&mut self, ctx: &mut ReactorContext, e: TransportError) {
        match &e {
            TransportError::Closed { .. } => log::info!("connection from {} closed", self.peer),
            _ => log::warn!("connection from {} failed: {e}", self.peer),
        }
        self.teardown(ctx);
    }

    fn teardown(&mut self, ctx: &mut ReactorContext) {
        self.release(ctx);
        self.outbox.clear();
        self.spare.clear();
        self.waiting.clear();
        if let Some(id) = self.id {
            ctx.remove_poller(id);
        }
    }

    /// Answer bytes outstanding and requests being served.
    fn outstanding(&self, unsent: usize) -> (usize, usize) {
        let (n, reserved) = in_service(&self.offload);
        (unsent + self.outbox_bytes + reserved, n)
    }

    /// Why the connection must close now for a timeout, if it must.
    fn timed_out(&self, now: Instant, unsent: usize) -> Option<String> {
        let partial = self.transport.as_ref().map_or(0, |t| t.partial_frame_bytes());
        if let (Some(since), Some(limit)) = (self.frame_since, self.limits.frame_timeout) {
            if now.saturating_duration_since(since) >= limit {
                return Some(if partial > 0 {
                    format!("{partial} bytes of a frame, incomplete for {limit:?}")
                } else {
                    format!("no frame in the {limit:?} since it connected")
                });
            }
        }
        if let Some(limit) = self.limits.idle_timeout {
            if self.is_idle(unsent) && now.saturating_duration_since(self.last_activity) >= limit {
                return Some(format!("idle for {limit:?}"));
            }
        }
        None
    }

    /// Nothing outstanding, waiting or half received: the idle timeout may run.
    fn is_idle(&self, unsent: usize) -> bool {
        self.outstanding(unsent) == (0, 0)
            && self.waiting.is_empty()
            && self.transport.as_ref().is_some_and(|t| t.partial_frame_bytes() == 0)
    }
}

impl Poller for Connection {
    fn name(&self) -> String {
        format!("proxy_conn({})", self.peer)
    }

    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
        let fd = self.fd;
        let Some(t) = self.transport.as_mut() else { return PollStatus::Idle };
        let now = Instant::now();
        let limits = self.limits;
        // Answers first: what the socket takes is room for more requests.
        let mut failure = None;
        let mut busy = match t.flush() {
            Ok(sent) => sent,
            Err(e) => {
                failure = Some(e);
                false
            }
        };
        if busy {
            self.last_activity = now;
        }
        let (service, outbox, spare, offload) = (&mut self.service, &mut self.outbox, &mut self.spare, &mut self.offload);
        let (waiting, outbox_bytes) = (&mut self.waiting, &mut self.outbox_bytes);
        if let Some(o) = offload.as_mut() {
            let before = outbox.len();
            busy |= o.reap(outbox);
            *outbox_bytes += outbox[before..].iter().map(Vec::len).sum::<usize>();
        }
        let unsent = t.pending_send_bytes();
        // Requests that waited at the bound go first, in arrival order.
        while let Some(body) = waiting.front() {
            let (n, reserved) = in_service(offload);
            if !limits.admits(unsent + *outbox_bytes + reserved, n, answer_bound(body)) {
                break;
            }
            let body = waiting.pop_front().unwrap_or_default();
            serve(service, offload, outbox, outbox_bytes, spare, &body, fd);
            busy = true;
        }
        // Read more only with room for at least a bare answer: at the bound the peer's
        // requests stay in its socket (TCP back-pressure).
        let (n, reserved) = in_service(offload);
        let reading =
            failure.is_none() && waiting.is_empty() && limits.admits(unsent + *outbox_bytes + reserved, n, answer_bound(&[]));
        if reading {
            let frames_before = t.counters().frames_received;
            let r = t.receive_at_most(RECV_BUDGET, &mut |body| {
                let (n, reserved) = in_service(offload);
                if waiting.is_empty() && limits.admits(unsent + *outbox_bytes + reserved, n, answer_bound(body)) {
                    serve(service, offload, outbox, outbox_bytes, spare, body, fd);
                } else {
                    waiting.push_back(body.to_vec());
                }
            });
            match r {
                Ok(true) => {
                    busy = true;
                    self.last_activity = now;
                }
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
            let completed = t.counters().frames_received > frames_before;
            let partial = t.partial_frame_bytes() > 0;
            if completed {
                self.frame_since = partial.then_some(now);
            } else if partial && self.frame_since.is_none() {
                self.frame_since = Some(now);
            }
        } else if self.frame_since.is_some() {
            // Time the proxy does not read does not count against the peer.
            self.frame_since = Some(now);
        }
        if reading == self.paused {
            self.paused = !reading;
            if self.paused {
                self.stats.reads_paused.fetch_add(1, Ordering::Relaxed);
                log::debug!("connection from {}: at its bound, reading paused", self.peer);
            }
        }
        if failure.is_none() {
            // Gathered responses: every answer of this poll goes out in one send.
            for frame in self.outbox.drain(..) {
                busy = true;
                if let Err(e) = t.queue_frame(&frame) {
                    failure = Some(e);
                    break;
                }
                if self.spare.len() < SPARE_BUFFERS {
                    self.spare.push(frame);
                }
            }
            self.outbox_bytes = 0;
            if failure.is_none() && t.pending_send_bytes() > 0 {
                match t.flush() {
                    Ok(true) => self.last_activity = now,
                    Ok(false) => {}
                    Err(e) => failure = Some(e),
                }
            }
        }
        if let Some(e) = failure {
            self.close(ctx, e);
            return PollStatus::Busy;
        }
        let unsent = t.pending_send_bytes();
        if let Some(why) = self.timed_out(now, unsent) {
            log::warn!("closing the connection from {}: {why}", self.peer);
            self.stats.connections_timed_out.fetch_add(1, Ordering::Relaxed);
            self.teardown(ctx);
            return PollStatus::Busy;
        }
        // Wake on requests while there is room for them, on room in the socket while
        // answers wait for it; at the bound with nothing to send, only the worker
        // pool's completions (its eventfd) can make room.
        let read = self.waiting.is_empty() && {
            let (out, n) = self.outstanding(unsent);
            limits.admits(out, n, answer_bound(&[]))
        };
        let want = match (read, unsent > 0) {
            (true, false) => Some(Interest::Read),
            (true, true) => Some(Interest::ReadWrite),
            (false, true) => Some(Interest::Write),
            (false, false) => None,
        };
        if want != self.watching {
            if let Some(fd) = self.fd {
                match want {
                    Some(i) => ctx.watch_fd_for(fd, i),
                    None => ctx.unwatch_fd(fd),
                }
            }
            self.watching = want;
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let frame = self.frame_since.zip(self.limits.frame_timeout).map(|(since, limit)| since + limit);
        let unsent = self.transport.as_ref().map_or(0, |t| t.pending_send_bytes());
        let idle = self.limits.idle_timeout.filter(|_| self.is_idle(unsent)).map(|limit| self.last_activity + limit);
        let op = self.offload.as_ref().and_then(|o| o.deadline());
        [frame, idle, op].into_iter().flatten().min()
    }

    fn on_unregister(&mut self, ctx: &mut ReactorContext) {
        self.release(ctx);
    }
}
