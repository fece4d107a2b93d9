//! The forwarder: the fast path from a device to its proxies, shared by every device
//! kind that stores through a proxy (PoV devices and plain volumes).
//!
//! A [`Forwarder`] owns the device's proxy connections ([`conn`]: connect, reconnect
//! every [`conn::RECONNECT_INTERVAL`] at most, never blocking the reactor), the tag
//! table of requests in flight (tags are assigned here, so a peer cannot choose
//! colliding ones), request timeouts and the gathering policy ([`gather`]). A device
//! hands it a request with a context value `C` ([`Forwarder::send_until`]) and gets that
//! context back exactly once, with the proxy's answer or a local failure
//! ([`Outcome`]), from [`Forwarder::poll`] or [`Forwarder::shutdown`]. Answers are
//! handed over straight from the receive buffer (no copy of the frame).
//!
//! Paper §4.6: an answer that matches no request in flight on the connection it came
//! from (after a timeout, a restart, or a forged tag) is counted and dropped.
//!
//! Which connection a request takes is the device's choice: its home connection from a
//! [`Router`] ([`route`]), moved by [`Forwarder::pick`] to a usable one when the home
//! proxy is down ([`health`]: liveness pings, down detection, probing and rejoin).
//! Whether a request that failed with its proxy is resent is the device's choice too
//! (only idempotent ones, `pov_proto::io::Op::is_idempotent`).

pub mod conn;
pub mod gather;
pub mod health;
pub mod route;

pub use gather::{GatherStats, Gathering, GatheringControl, MAX_BATCH_SIZE, MAX_WINDOW_US};
pub use route::{RoundRobin, RouteControl, RouteKey, RouteView, Router};

use conn::{Broken, ProxyConn};
use gather::GatheringView;
use health::{Check, Health, Liveness};
use pov_proto::io::Op;
use pov_proto::route::RouteTable;
use pov_proto::wire::{ProxyRequestView, ProxyResponse};
use pov_proto::Status;
use pov_runtime::transport::{Endpoint, TransportCounters};
use pov_runtime::{ErrorChain, FdRegistry};
use rustc_hash::FxHashMap;
use std::sync::Arc;
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
        /// The proxy's times, for a traced request whose proxy sent them.
        trace: Option<pov_proto::trace::ProxyTrace>,
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
    /// Proxies declared down now.
    pub proxies_down: u32,
    /// Times a proxy was declared down ([`health`]).
    pub proxy_downs: u64,
    /// Liveness pings sent.
    pub pings: u64,
}

/// Failover counters of a device (PoV device or plain volume), shown by
/// `pov_device_get_devices`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FailoverStats {
    /// Proxies declared down now (requests go to the others; see [`health`]).
    pub proxies_down: u32,
    /// Times a proxy was declared down.
    pub proxy_downs: u64,
    /// Requests sent to a proxy other than their home one (it was down).
    pub rerouted: u64,
    /// Requests resent after their proxy failed before answering (idempotent ones).
    pub resent: u64,
    /// Liveness pings sent.
    pub pings: u64,
    /// Requests held because no proxy could take them (sent when one came back, or
    /// failed at their deadline).
    pub held: u64,
    /// Requests answered with a redirect (routed by an older route table than the
    /// proxy's; resent after installing the proxy's table).
    pub redirects: u64,
    /// Epoch of the route table in force (0: none; queues keep a home proxy).
    pub route_epoch: u32,
    /// Route tables installed from redirects.
    pub route_tables_learned: u64,
    /// Each proxy connection's state.
    pub proxies: Vec<ProxyState>,
}

impl FailoverStats {
    /// Fills the route-table fields from `routes`.
    pub fn fill_route(&mut self, routes: &RouteControl) {
        self.route_epoch = routes.get().map_or(0, |t| t.epoch);
        self.route_tables_learned = routes.learned();
    }
}

/// One proxy connection as `pov_device_get_devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProxyState {
    /// Its endpoint.
    pub endpoint: String,
    /// `"up"` (connected and usable), `"idle"` (usable, not connected: connected on
    /// first use) or `"down"` (declared down, probed; requests go to the others).
    pub state: &'static str,
    /// Requests in flight on it.
    pub in_flight: u32,
    /// Times it was declared down.
    pub downs: u64,
    /// Requests sent on it (pings excluded).
    pub sent: u64,
    /// `"any"`, or `"lc"` for a latency-critical lane ([`Forwarder::lc_lane`]).
    pub lane: &'static str,
}

struct Pending<C> {
    conn: usize,
    deadline: Instant,
    ctx: C,
    /// The request changes data ([`Op::mutates`]): see [`health`], "silent proxies".
    mutating: bool,
}

/// A device's proxy connections and requests in flight. See the module docs.
pub struct Forwarder<C> {
    /// `"device NAME"` or `"volume NAME"`, for logs.
    name: String,
    conns: Vec<ProxyConn>,
    /// Liveness of each connection (same index).
    health: Vec<Health>,
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
    pings: u64,
    /// The route table the member → connection map was built for, and the map.
    members: Option<(Arc<RouteTable>, Vec<Option<usize>>)>,
    /// Detection times of silent proxies.
    liveness: Liveness,
    /// The latency-critical lane of each connection, once made (index into `conns`).
    lanes: Vec<Option<usize>>,
    /// `true` at the index of each lane.
    is_lane: Vec<bool>,
}

/// Most proxy connections of one device (its own endpoints plus route-table members).
pub const MAX_CONNS: usize = 64;

impl<C> Forwarder<C> {
    /// A forwarder over `endpoints` (no connection is made before the first send) whose
    /// requests fail with [`Status::Timeout`] after `timeout`, gathering as `gathering`
    /// says.
    pub fn new(name: String, endpoints: &[Endpoint], timeout: Duration, gathering: GatheringControl) -> Forwarder<C> {
        Forwarder {
            name,
            conns: endpoints.iter().cloned().map(ProxyConn::new).collect(),
            health: endpoints.iter().map(|_| Health::new(Instant::now())).collect(),
            in_flight: FxHashMap::default(),
            next_tag: 1,
            gathering: GatheringView::new(gathering),
            timeout,
            frame: Vec::new(),
            stopping: false,
            stale: 0,
            timeouts: 0,
            pings: 0,
            members: None,
            liveness: Liveness::default(),
            lanes: Vec::new(),
            is_lane: vec![false; endpoints.len()],
        }
    }

    /// The latency-critical **lane** of connection `i`: a second connection to the same
    /// proxy that carries only LC requests, so that an LC request never waits in a TCP
    /// stream behind the bytes of BC requests (head-of-line blocking: one 1 MiB write
    /// ahead costs an LC read ~1.6 ms at 600 MiB/s; `docs/qos.md`). Made on first use
    /// (connected on first send); it has its own liveness like any connection and is
    /// listed in the stats with lane `"lc"`. `i` itself when `i` is a lane or the device
    /// has [`MAX_CONNS`] connections.
    pub fn lc_lane(&mut self, i: usize) -> usize {
        if i >= self.conns.len() || self.is_lane[i] {
            return i;
        }
        if self.lanes.len() <= i {
            self.lanes.resize(i + 1, None);
        }
        if let Some(l) = self.lanes[i] {
            return l;
        }
        if self.conns.len() >= MAX_CONNS {
            return i;
        }
        let e = self.conns[i].endpoint.clone();
        log::info!("{}: a latency-critical lane to proxy {e}", self.name);
        self.conns.push(ProxyConn::new(e));
        self.health.push(Health::new(Instant::now()));
        self.is_lane.push(true);
        self.lanes[i] = Some(self.conns.len() - 1);
        self.conns.len() - 1
    }

    /// Detects silent proxies with `liveness` instead of the defaults.
    pub fn set_liveness(&mut self, liveness: Liveness) {
        self.liveness = liveness;
    }

    /// The connection to member `member` of `table`. A member the device has no
    /// connection to yet gets one (connected on first use: the cluster told the device
    /// about a proxy it was not configured with); `None` if its endpoint does not parse
    /// or the device has [`MAX_CONNS`] connections.
    pub fn member_conn(&mut self, table: &Arc<RouteTable>, member: usize) -> Option<usize> {
        if !self.members.as_ref().is_some_and(|(t, _)| Arc::ptr_eq(t, table)) {
            let mut map = Vec::with_capacity(table.members.len());
            for m in &table.members {
                let conn = match Endpoint::parse(m) {
                    Ok(e) => {
                        let name = e.to_string();
                        let lanes = &self.is_lane;
                        match self.conns.iter().enumerate().position(|(i, c)| !lanes[i] && c.endpoint.to_string() == name) {
                            Some(i) => Some(i),
                            None if self.conns.len() < MAX_CONNS => {
                                log::info!("{}: route table member {name} is new: adding a connection to it", self.name);
                                self.conns.push(ProxyConn::new(e));
                                self.health.push(Health::new(Instant::now()));
                                self.is_lane.push(false);
                                Some(self.conns.len() - 1)
                            }
                            None => None,
                        }
                    }
                    Err(e) => {
                        log::warn!("{}: route table member {m:?}: {e}", self.name);
                        None
                    }
                };
                map.push(conn);
            }
            self.members = Some((table.clone(), map));
        }
        self.members.as_ref().and_then(|(_, m)| m.get(member).copied().flatten())
    }

    /// The connection a request whose home connection is `home` should take: `home`
    /// while its proxy is usable, else the next usable one in ring order, skipping
    /// those `avoid` names (already tried, or on the request's retry-forbidden list);
    /// `None` if `avoid` names every connection. See [`health`].
    pub fn pick(&self, home: usize, avoid: &dyn Fn(usize) -> bool) -> Option<usize> {
        health::pick(&self.health, home.min(self.conns.len().saturating_sub(1)), avoid)
    }

    /// `true` while some proxy is not declared down.
    pub fn any_usable(&self) -> bool {
        self.health.iter().any(Health::usable)
    }

    /// `true` once [`Forwarder::shutdown`] ran: nothing is sent any more.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Fills the forwarder's part of `f` from its counters `s` ([`Forwarder::stats`])
    /// and each proxy's state; the device counts the rest.
    pub fn fill_failover(&self, s: &ForwardStats, f: &mut FailoverStats) {
        f.proxies_down = s.proxies_down;
        f.proxy_downs = s.proxy_downs;
        f.pings = s.pings;
        f.proxies = self.proxy_states();
    }

    /// Each connection's state, in endpoint order.
    pub fn proxy_states(&self) -> Vec<ProxyState> {
        self.conns
            .iter()
            .zip(&self.health)
            .map(|(c, h)| ProxyState {
                endpoint: c.endpoint.to_string(),
                state: if !h.usable() {
                    "down"
                } else if c.is_up() {
                    "up"
                } else {
                    "idle"
                },
                in_flight: c.in_flight,
                downs: h.downs,
                sent: c.sent,
                lane: "any",
            })
            .zip(&self.is_lane)
            .map(|(s, &lane)| ProxyState { lane: if lane { "lc" } else { "any" }, ..s })
            .collect()
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

    /// The deadline a request sent now gets: now + the request timeout.
    pub fn deadline_from_now(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Sends `req` (its `tag` and `load` are filled in here) with `payload` on
    /// connection `conn`, to be answered by `deadline` (a resent request keeps its first
    /// try's: see [`Forwarder::deadline_from_now`]). `ctx` comes back with the outcome.
    /// Returns the tag. A connection that cannot take the frame is declared down (the
    /// caller may pick another).
    ///
    /// # Errors
    /// `(ctx, status)` if the request cannot be sent now: [`Status::Invalid`] if it
    /// cannot be encoded, [`Status::Unavailable`] if the device is stopping or the
    /// connection is down (within its reconnect interval) or failed.
    pub fn send_until(
        &mut self,
        conn: usize,
        mut req: ProxyRequestView<'_>,
        payload: &[u8],
        ctx: C,
        deadline: Instant,
    ) -> Result<u64, (C, Status)> {
        if self.stopping || conn >= self.conns.len() {
            return Err((ctx, Status::Unavailable));
        }
        let tag = self.next_tag;
        req.tag = tag;
        req.load = self.conns[conn].in_flight;
        let mutating = req.op.mutates(req.flags);
        if let Err(e) = req.encode_frame(payload, &mut self.frame) {
            log::warn!("{}: cannot encode proxy request: {e}", self.name);
            return Err((ctx, Status::Invalid));
        }
        let g = self.gathering.refresh();
        let c = &mut self.conns[conn];
        if !c.send(&self.frame, &g, &self.name) {
            self.declare_down(conn, "it cannot be reached");
            return Err((ctx, Status::Unavailable));
        }
        self.next_tag += 1;
        c.in_flight += 1;
        c.sent += 1;
        if c.in_flight == 1 {
            // Liveness counts from the first request after a quiet spell.
            let h = &mut self.health[conn];
            h.last_heard = h.last_heard.max(Instant::now());
        }
        self.in_flight.insert(tag, Pending { conn, deadline, ctx, mutating });
        Ok(tag)
    }

    /// Marks connection `i` down (logged once per outage).
    fn declare_down(&mut self, i: usize, why: &str) {
        if self.health[i].mark_down(Instant::now()) {
            let others = self.health.iter().filter(|h| h.usable()).count();
            log::warn!(
                "{}: proxy {} is down ({why}); {others} other proxy connection(s) usable; probing it from {:?} on, \
                 backing off to every {:?}",
                self.name,
                self.conns[i].endpoint,
                health::FIRST_PROBE,
                health::PROBE_INTERVAL
            );
        }
    }

    /// Sends a liveness ping on connection `i` (held while it connects).
    fn ping(&mut self, i: usize, now: Instant) -> bool {
        let tag = self.next_tag;
        let view = ProxyRequestView {
            op: Op::Ping,
            tag,
            offset: 0,
            length: 0,
            flags: 0,
            hint: Default::default(),
            trace: false,
            qos: 0,
            load: self.conns[i].in_flight,
            epoch: 0,
            session_id: 0,
            tenant: "",
            path: "",
            read_only: true,
            prefix: "",
        };
        if view.encode_frame(&[], &mut self.frame).is_err() {
            return false;
        }
        let g = self.gathering.refresh();
        if !self.conns[i].send(&self.frame, &g, &self.name) {
            return false;
        }
        self.next_tag += 1;
        self.pings += 1;
        self.health[i].ping = Some((tag, now));
        self.health[i].last_ping_tag = tag;
        true
    }

    /// Liveness of connection `i` after its poll: pings a quiet one, declares a silent
    /// one down (failing what it had in flight), probes a down one.
    fn watch_health(&mut self, i: usize, fds: &mut dyn FdRegistry, on_done: &mut dyn FnMut(C, Outcome<'_>)) -> bool {
        let now = Instant::now();
        if self.stopping {
            return false;
        }
        if !self.health[i].usable() {
            let draining = self.conns[i].in_flight > 0;
            if draining {
                // A silent proxy's data-changing requests wait for its answer (or their
                // deadline) on the connection they went out on; probes wait too.
                return false;
            }
            if self.conns[i].is_up() && self.health[i].ping.is_none() && self.health[i].silent {
                // The last one is done: close that connection (a reset, so that a
                // proxy that is only stalled drops what it has not run) and probe anew.
                self.health[i].silent = false;
                self.conns[i].abort(fds);
            }
            if self.health[i].ping.is_some_and(|(_, sent)| now.saturating_duration_since(sent) >= self.liveness.down_after) {
                // The probe's connection came up (or hangs) but nothing answered.
                self.health[i].ping = None;
                self.conns[i].disconnect(fds);
            }
            if self.health[i].probe_due(now) && !self.conns[i].is_connecting() {
                self.health[i].probed(now);
                // The probe schedule, not the reconnect interval, paces these attempts.
                self.conns[i].allow_attempt();
                self.ping(i, now);
                return true;
            }
            return false;
        }
        if !self.conns[i].is_up() {
            return false;
        }
        match self.health[i].check(now, self.conns[i].in_flight, &self.liveness) {
            Check::Wait => false,
            Check::Ping => self.ping(i, now),
            Check::Down => {
                self.declare_down(i, &format!("no answer to a ping within {:?}", self.liveness.down_after));
                // A silent proxy may be alive (stopped, or behind a link that heals)
                // and still run what it holds: resending a write elsewhere could let
                // its stale copy land after newer data. So only requests that change
                // nothing fail now (the device resends them); data-changing ones wait
                // for this proxy's answer on this connection until their deadline.
                self.health[i].silent = true;
                self.fail_where(|p| p.conn == i && !p.mutating, Status::Unavailable, on_done);
                if self.conns[i].in_flight == 0 {
                    self.health[i].silent = false;
                    self.conns[i].abort(fds);
                }
                true
            }
        }
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
            let mut heard = false;
            let ping_tag = Some(self.health[i].last_ping_tag).filter(|&t| t != 0);
            let polled = conn.poll(&g, name, &mut |f| {
                busy = true;
                heard = true;
                match ProxyResponse::decode_traced(f) {
                    Ok((r, _, _)) if Some(r.tag) == ping_tag => {}
                    Ok((r, trace, payload)) => match in_flight.get(&r.tag) {
                        Some(p) if p.conn == i => {
                            let p = in_flight.remove(&r.tag).expect("present");
                            answered += 1;
                            let (status, result, flags) = (r.status, r.result, r.flags);
                            on_done(p.ctx, Outcome::Answered { status, result, flags, payload, trace });
                        }
                        _ => *stale += 1,
                    },
                    Err(e) => log::warn!("{name}: bad frame from proxy {}: {e}", conn_endpoint(i)),
                }
            });
            let conn = &mut self.conns[i];
            conn.in_flight = conn.in_flight.saturating_sub(answered);
            if heard && self.health[i].heard(Instant::now()) {
                log::info!("{}: proxy {} answers again; it takes its requests back", self.name, self.conns[i].endpoint);
            }
            match polled {
                Ok(moved) => busy |= moved,
                Err(Broken(e)) => {
                    let why = match e {
                        Some(e) => {
                            log::warn!("{}: proxy {}: {}", self.name, self.conns[i].endpoint, ErrorChain(&e));
                            "its connection failed"
                        }
                        None => "a send failed",
                    };
                    self.declare_down(i, why);
                    // Nothing sent on the broken connection will be answered.
                    self.fail_where(|p| p.conn == i, Status::Unavailable, on_done);
                    busy = true;
                }
            }
            busy |= self.watch_health(i, fds, on_done);
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
        if self.stopping {
            return None;
        }
        let requests = self.in_flight.values().map(|p| p.deadline);
        let liveness = self.health.iter().zip(&self.conns).filter_map(|(h, c)| h.deadline(c.in_flight, &self.liveness));
        requests.chain(self.conns.iter().filter_map(ProxyConn::deadline)).chain(liveness).min()
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
            proxies_down: self.health.iter().filter(|h| !h.usable()).count() as u32,
            proxy_downs: self.health.iter().map(|h| h.downs).sum(),
            pings: self.pings,
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
