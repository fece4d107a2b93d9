//! The forwarder: the fast path from a device to its proxies, shared by every device
//! kind that stores through a proxy (PoV devices and plain volumes).
//!
//! A [`Forwarder`] owns the device's proxy connections ([`conn`]: connect, reconnect
//! every [`conn::RECONNECT_INTERVAL`] at most, never blocking the reactor), the tag
//! table of requests in flight (tags are assigned here, so a peer cannot choose
//! colliding ones), request timeouts and the gathering policy ([`gather`]). A device
//! hands it a request with a context value `C` ([`Forwarder::send`]) and gets that
//! context back exactly once, with the proxy's answer or a local failure
//! ([`Outcome`]), from [`Forwarder::poll`] or [`Forwarder::shutdown`]. Answers are
//! handed over straight from the receive buffer (no copy of the frame).
//!
//! Paper §4.6: an answer that matches no request in flight on the connection it came
//! from (after a timeout, a restart, or a forged tag) is counted and dropped.
//!
//! Which connection a request takes is the device's choice, through a [`Router`]
//! ([`route`]).

pub mod conn;
pub mod gather;
pub mod route;

pub use gather::{GatherStats, Gathering, GatheringControl, MAX_BATCH_SIZE, MAX_WINDOW_US};
pub use route::{RoundRobin, RouteKey, Router};

use conn::{Broken, ProxyConn};
use gather::GatheringView;
use pov_proto::wire::{ProxyRequestView, ProxyResponse};
use pov_proto::Status;
use pov_runtime::transport::{Endpoint, TransportCounters};
use pov_runtime::{ErrorChain, FdRegistry};
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// How a request sent through a [`Forwarder`] ended.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The proxy answered.
    Answered {
        /// Its status.
        status: Status,
        /// Its result field (bytes moved, new handle, ...).
        result: u64,
        /// Its flags.
        flags: u32,
        /// Its payload, borrowed from the receive buffer.
        payload: &'a [u8],
    },
    /// No answer: [`Status::Timeout`] (the request timeout passed) or
    /// [`Status::Unavailable`] (the connection broke or the device stopped).
    Failed(Status),
}

/// Counters of a forwarder.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardStats {
    /// Requests in flight.
    pub in_flight: u32,
    /// Connections up.
    pub proxies_connected: u32,
    /// Answers matching no request in flight (dropped).
    pub stale_responses: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Frame and syscall counters of every connection, past and present.
    pub transport: TransportCounters,
}

struct Pending<C> {
    conn: usize,
    deadline: Instant,
    ctx: C,
}

/// A device's proxy connections and requests in flight. See the module docs.
pub struct Forwarder<C> {
    /// `"device NAME"` or `"volume NAME"`, for logs.
    name: String,
    conns: Vec<ProxyConn>,
    /// Requests at the proxies by tag (FxHash: tags are assigned here, never chosen by
    /// a peer; SipHash cost ~3% of the DPU's CPU).
    in_flight: FxHashMap<u64, Pending<C>>,
    next_tag: u64,
    gathering: GatheringView,
    timeout: Duration,
    frame: Vec<u8>,
    stopping: bool,
    stale: u64,
    timeouts: u64,
}

impl<C> Forwarder<C> {
    /// A forwarder over `endpoints` (no connection is made before the first send) whose
    /// requests fail with [`Status::Timeout`] after `timeout`, gathering as `gathering`
    /// says.
    pub fn new(name: String, endpoints: &[Endpoint], timeout: Duration, gathering: GatheringControl) -> Forwarder<C> {
        Forwarder {
            name,
            conns: endpoints.iter().cloned().map(ProxyConn::new).collect(),
            in_flight: FxHashMap::default(),
            next_tag: 1,
            gathering: GatheringView::new(gathering),
            timeout,
            frame: Vec::new(),
            stopping: false,
            stale: 0,
            timeouts: 0,
        }
    }

    /// Number of proxy connections (endpoints).
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// The endpoint of connection `i`.
    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.conns[i].endpoint
    }

    /// Follows `control` for the gathering policy from now on.
    pub fn follow(&mut self, control: GatheringControl) {
        self.gathering = GatheringView::new(control);
    }

    /// The gathering policy in force.
    pub fn gathering(&self) -> Gathering {
        self.gathering.current()
    }

    /// Sends `req` (its `tag` and `load` are filled in here) with `payload` on
    /// connection `conn`. `ctx` comes back with the outcome. Returns the tag.
    ///
    /// # Errors
    /// `(ctx, status)` if the request cannot be sent now: [`Status::Invalid`] if it
    /// cannot be encoded, [`Status::Unavailable`] if the device is stopping or the
    /// connection is down (within its reconnect interval) or failed.
    pub fn send(&mut self, conn: usize, mut req: ProxyRequestView<'_>, payload: &[u8], ctx: C) -> Result<u64, (C, Status)> {
        if self.stopping || conn >= self.conns.len() {
            return Err((ctx, Status::Unavailable));
        }
        let tag = self.next_tag;
        req.tag = tag;
        req.load = self.conns[conn].in_flight;
        if let Err(e) = req.encode_frame(payload, &mut self.frame) {
            log::warn!("{}: cannot encode proxy request: {e}", self.name);
            return Err((ctx, Status::Invalid));
        }
        let g = self.gathering.refresh();
        let c = &mut self.conns[conn];
        if !c.send(&self.frame, &g, &self.name) {
            return Err((ctx, Status::Unavailable));
        }
        self.next_tag += 1;
        c.in_flight += 1;
        self.in_flight.insert(tag, Pending { conn, deadline: Instant::now() + self.timeout, ctx });
        Ok(tag)
    }

    /// Moves proxy traffic, finishes answered requests and fails those whose
    /// connection broke or whose timeout passed (each through `on_done`). Returns
    /// `true` if it did any work or must run again soon.
    pub fn poll(&mut self, fds: &mut dyn FdRegistry, on_done: &mut dyn FnMut(C, Outcome<'_>)) -> bool {
        let g = self.gathering.refresh();
        let mut busy = false;
        for i in 0..self.conns.len() {
            let (conns, in_flight, stale, name) = (&mut self.conns, &mut self.in_flight, &mut self.stale, &self.name);
            let conn = &mut conns[i];
            let mut answered = 0u32;
            let polled = conn.poll(&g, name, &mut |f| {
                busy = true;
                match ProxyResponse::decode(f) {
                    Ok((r, payload)) => match in_flight.get(&r.tag) {
                        Some(p) if p.conn == i => {
                            let p = in_flight.remove(&r.tag).expect("present");
                            answered += 1;
                            on_done(p.ctx, Outcome::Answered { status: r.status, result: r.result, flags: r.flags, payload });
                        }
                        _ => *stale += 1,
                    },
                    Err(e) => log::warn!("{name}: bad frame from proxy {}: {e}", conn_endpoint(i)),
                }
            });
            let conn = &mut self.conns[i];
            conn.in_flight = conn.in_flight.saturating_sub(answered);
            match polled {
                Ok(moved) => busy |= moved,
                Err(Broken(e)) => {
                    if let Some(e) = e {
                        log::warn!("{}: proxy {}: {}", self.name, conn.endpoint, ErrorChain(&e));
                    }
                    // Nothing sent on the broken connection will be answered.
                    self.fail_where(|p| p.conn == i, Status::Unavailable, on_done);
                    busy = true;
                }
            }
            self.conns[i].sync_watch(fds);
        }
        let now = Instant::now();
        if self.in_flight.values().any(|p| p.deadline <= now) {
            let before = self.in_flight.len();
            self.fail_where(|p| p.deadline <= now, Status::Timeout, on_done);
            let n = (before - self.in_flight.len()) as u64;
            log::warn!("{}: {n} proxy request(s) timed out", self.name);
            self.timeouts += n;
            busy = true;
        }
        busy
    }

    /// Fails (through `on_done`) every request in flight that `pred` selects.
    fn fail_where(&mut self, pred: impl Fn(&Pending<C>) -> bool, status: Status, on_done: &mut dyn FnMut(C, Outcome<'_>)) {
        let tags: Vec<u64> = self.in_flight.iter().filter(|(_, p)| pred(p)).map(|(t, _)| *t).collect();
        for tag in tags {
            if let Some(p) = self.in_flight.remove(&tag) {
                let c = &mut self.conns[p.conn];
                c.in_flight = c.in_flight.saturating_sub(1);
                on_done(p.ctx, Outcome::Failed(status));
            }
        }
    }

    /// The next instant [`Forwarder::poll`] must run even if nothing arrives: the
    /// earliest request timeout or connection-attempt timeout.
    pub fn deadline(&self) -> Option<Instant> {
        let requests = self.in_flight.values().map(|p| p.deadline);
        requests.chain(self.conns.iter().filter_map(ProxyConn::deadline)).min()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Stops: every request in flight fails with [`Status::Unavailable`] through
    /// `on_done`, connections close, nothing is sent any more.
    pub fn shutdown(&mut self, fds: &mut dyn FdRegistry, on_done: &mut dyn FnMut(C, Outcome<'_>)) {
        self.stopping = true;
        self.fail_where(|_| true, Status::Unavailable, on_done);
        for c in self.conns.iter_mut() {
            c.disconnect(fds);
        }
    }

    /// Counters.
    pub fn stats(&self) -> ForwardStats {
        let mut transport = TransportCounters::default();
        for c in &self.conns {
            transport += c.counters();
        }
        ForwardStats {
            in_flight: self.in_flight.len() as u32,
            proxies_connected: self.conns.iter().filter(|c| c.is_up()).count() as u32,
            stale_responses: self.stale,
            timeouts: self.timeouts,
            transport,
        }
    }

    /// The gathering counters of [`Forwarder::stats`].
    pub fn gather_stats(&self) -> GatherStats {
        GatherStats::from_counters(self.stats().transport)
    }
}

/// For a log line inside the receive callback (the connection itself is borrowed).
fn conn_endpoint(i: usize) -> String {
    format!("#{i}")
}
