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
//! [`ReactorContext::watch_fd`], so an idle proxy's reactors sleep in `epoll_wait`.
//! A connection with unsent response bytes asks to be polled again within
//! [`SEND_RETRY`] (the transport's descriptor only signals readability).
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
//! **Back-pressure** (not yet): responses are queued in the transport without a
//! bound; the DPU bounds what it has in flight per connection (the `load` field).

use crate::access::{Access, Peers};
use crate::backend::{Backend, BackendSpec};
use crate::offload::{Offload, WorkerPool};
use crate::service::Service;
use crate::stats::{ProxyStats, ServerStats, TenantStats};
use crate::Error;
use pov_runtime::reactor::{PollStatus, Poller, PollerId, ReactorConfig, ReactorContext, ReactorHandle, Runtime};
use pov_runtime::transport::{Listener, Transport, TransportError};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How soon a connection with unsent bytes is polled again.
pub const SEND_RETRY: Duration = Duration::from_millis(1);
/// How long accepting pauses after `accept` fails.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most connections accepted per acceptor poll.
const ACCEPT_BATCH: usize = 32;
/// Response buffers kept for reuse per connection.
const SPARE_BUFFERS: usize = 4;

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
    /// Whom to serve: [`Peers::Anyone`] (default; plain TCP, development) or only
    /// enrolled DPUs (needs a `tls:` listen endpoint).
    pub peers: Peers,
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
            peers: Peers::Anyone,
        }
    }
}

/// A running proxy. Dropping it shuts it down like [`Server::shutdown`].
pub struct Server {
    runtime: Option<Runtime>,
    local_addr: String,
    backend_kind: &'static str,
    stats: Arc<ProxyStats>,
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
        let pool = if backend.workers() > 0 {
            Some(Arc::new(WorkerPool::start(backend.as_ref(), stats.clone()).map_err(Error::Runtime)?))
        } else {
            None
        };
        let acceptor = Acceptor {
            listener,
            watching: false,
            retry_at: None,
            backend,
            pool,
            reactors,
            next: 0,
            stats: stats.clone(),
            peers: config.peers.clone(),
        };
        runtime.reactors()[0]
            .call(move |ctx| {
                let mut acceptor = acceptor;
                acceptor.watch(ctx);
                ctx.add_poller(Box::new(acceptor));
            })
            .ok_or(Error::ReactorStopped(0))?;
        log::info!("pov-proxy serving {backend_kind} backend on {local_addr} with {} reactor(s)", runtime.reactors().len());
        Ok(Server { runtime: Some(runtime), local_addr, backend_kind, stats })
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
    /// Whom to serve: each connection's access comes from its peer's identity.
    peers: Peers,
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
        let backend = self.backend.channel();
        let stats = self.stats.clone();
        let access = self.peers.access_for(transport.peer_identity());
        let offload = match self.pool.as_ref().map(|p| Offload::new(p.clone())).transpose() {
            Ok(o) => o,
            Err(e) => {
                log::warn!("cannot set up a completion queue for a connection ({e}); connection dropped");
                return;
            }
        };
        if target.id() == ctx.reactor_id() {
            Connection::register(ctx, transport, backend, offload, stats, access);
        } else if !target.send(move |ctx| Connection::register(ctx, transport, backend, offload, stats, access)) {
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
}

impl Connection {
    fn register(
        ctx: &mut ReactorContext,
        transport: Box<dyn Transport>,
        backend: Box<dyn Backend>,
        offload: Option<Offload>,
        stats: Arc<ProxyStats>,
        access: Access,
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
        match &access {
            Access::Denied { .. } => log::warn!("connection from {peer} on reactor {}: {access}", ctx.reactor_id()),
            _ => log::info!("connection from {peer} on reactor {} ({access})", ctx.reactor_id()),
        }
        let mut service = Service::new(backend, stats.clone());
        service.set_access(access);
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
        };
        let id = ctx.add_poller(Box::new(conn));
        if let Some(c) = ctx.poller_mut::<Connection>(id) {
            c.id = Some(id);
        }
    }

    /// Releases the transport (idempotent): stops watching its descriptor first.
    fn release(&mut self, ctx: &mut ReactorContext) {
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
        self.release(ctx);
        self.outbox.clear();
        self.spare.clear();
        if let Some(id) = self.id {
            ctx.remove_poller(id);
        }
    }
}

impl Poller for Connection {
    fn name(&self) -> String {
        format!("proxy_conn({})", self.peer)
    }

    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
        let Some(t) = self.transport.as_mut() else { return PollStatus::Idle };
        let (service, outbox, spare, offload) = (&mut self.service, &mut self.outbox, &mut self.spare, &mut self.offload);
        let polled = t.poll(&mut |body| {
            if let Some(o) = offload.as_mut() {
                // Refused requests are answered here and never reach the workers.
                match service.refuse(body) {
                    Some(answer) => outbox.push(answer),
                    None => o.submit(body),
                }
                return;
            }
            let mut frame = spare.pop().unwrap_or_default();
            if service.handle_frame(body, &mut frame) {
                outbox.push(frame);
            } else {
                spare.push(frame);
            }
        });
        let mut busy = matches!(polled, Ok(true));
        if let Some(o) = offload.as_mut() {
            busy |= o.reap(outbox);
        }
        let mut failure = polled.err();
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
            if failure.is_none() && t.pending_send_bytes() > 0 {
                if let Err(e) = t.flush() {
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            self.close(ctx, e);
            return PollStatus::Busy;
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let send = match &self.transport {
            Some(t) if t.pending_send_bytes() > 0 => Some(Instant::now() + SEND_RETRY),
            _ => None,
        };
        let op = self.offload.as_ref().and_then(|o| o.deadline());
        match (send, op) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_unregister(&mut self, ctx: &mut ReactorContext) {
        self.release(ctx);
    }
}
