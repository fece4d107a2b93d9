//! The admin space of a PoV device (paper §4.3.1 control plane, §4.6 keep-alive;
//! protocol v2, `docs/security.md` "Sessions"): the session table by IO area, the
//! two-step session open (Hello, then OpenSession with a proof of the tenant secret),
//! authenticated in-session requests (queues, heartbeats, close), per-tenant limits,
//! the answer mailboxes, the rate limit of failed authentications, and the reclamation
//! of sessions whose heartbeats stopped.

use crate::device::DeviceState;
use crate::forward::RouteKey;
use crate::queue::Queue;
use crate::session::{QueueOwner, Session, SessionState};
use pov_proto::admin::{
    AdminOp, AdminRequest, AdminResponse, ADMIN_MAC_OFFSET, ADMIN_REQUEST_SIZE, ADMIN_RESPONSE_SIZE, GRANT_INTEGRITY_ONLY,
    GRANT_READ_ONLY, MAILBOX_HOLD_MS, MAX_BATCH_QUEUES, SESSION_MAILBOX,
};
use pov_proto::crypto::{self, Protection, NONCE_LEN};
use pov_proto::io::Grant;
use pov_proto::layout::{ADMIN_MAILBOXES, MAILBOX_SIZE};
use pov_proto::Status;
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// How often session keep-alive is checked.
pub(crate) const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a Hello's exchange waits for its OpenSession.
const EXCHANGE_TTL: Duration = Duration::from_secs(10);
/// Most session opens under way at once (Hello answered, OpenSession not yet), per
/// tenant name and in all.
const MAX_EXCHANGES_PER_TENANT: usize = 32;
const MAX_EXCHANGES: usize = 1024;
/// Failed authentications a tenant may have in a burst, and how fast the allowance
/// comes back (one per this interval).
const AUTH_BURST: f64 = 5.0;
const AUTH_REFILL: Duration = Duration::from_secs(2);
/// Most tenant names the rate limiter tracks; failures of further names share one
/// bucket (a peer cannot grow the table without bound).
const MAX_LIMITED_TENANTS: usize = 1024;
/// Least time between two log lines about failed authentications of one tenant.
const AUTH_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A session open in progress: what the Hello brought.
pub(crate) struct Exchange {
    tenant: String,
    nc: [u8; NONCE_LEN],
    nd: [u8; NONCE_LEN],
    started: Instant,
}

/// Token bucket of failed authentications of one tenant (Firecracker's rate limiter
/// shape: throttling is a state, not an error).
struct AuthBucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
    logged: Option<Instant>,
}

impl AuthBucket {
    fn new(now: Instant) -> AuthBucket {
        AuthBucket { tokens: AUTH_BURST, at: now, suppressed: 0, logged: None }
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.duration_since(self.at).as_secs_f64() / AUTH_REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(AUTH_BURST);
        self.at = now;
    }
}

/// The admin state of a device beyond the session table.
#[derive(Default)]
pub(crate) struct AdminState {
    /// Answers, one record per mailbox.
    mailboxes: Vec<u8>,
    /// When each shared mailbox last got an answer.
    written: Vec<Option<Instant>>,
    /// Session mailboxes by IO area (zeros until the area's session gets an answer).
    session_boxes: FxHashMap<u32, [u8; ADMIN_RESPONSE_SIZE]>,
    /// Session opens under way, by exchange ID.
    exchanges: FxHashMap<u64, Exchange>,
    /// Failed authentications by tenant name (`""`: every name past the table's bound).
    auth: FxHashMap<String, AuthBucket>,
}

impl AdminState {
    pub(crate) fn new() -> AdminState {
        AdminState {
            mailboxes: vec![0; ADMIN_MAILBOXES as usize * MAILBOX_SIZE as usize],
            written: vec![None; ADMIN_MAILBOXES as usize],
            session_boxes: FxHashMap::default(),
            exchanges: FxHashMap::default(),
            auth: FxHashMap::default(),
        }
    }

    /// The mailbox region's bytes (what READs of it return).
    pub(crate) fn mailbox_bytes(&self) -> &[u8] {
        &self.mailboxes
    }

    /// Session mailbox `area`'s bytes (zeros if it never got an answer).
    pub(crate) fn session_mailbox_bytes(&self, area: u32) -> &[u8] {
        self.session_boxes.get(&area).map_or(&[], |b| &b[..])
    }

    fn bucket(&mut self, tenant: &str, now: Instant) -> &mut AuthBucket {
        let key = if self.auth.contains_key(tenant) || self.auth.len() < MAX_LIMITED_TENANTS { tenant } else { "" };
        let b = self.auth.entry(key.to_string()).or_insert_with(|| AuthBucket::new(now));
        b.refill(now);
        b
    }
}

/// What the admin request WRITE completes with.
pub(crate) enum AdminOutcome {
    /// The answer is in the named mailbox.
    Answered,
    /// The request could not be answered (no magic, a mailbox out of range or held
    /// for another exchange): the WRITE fails, the host names another mailbox.
    Refused,
}

impl DeviceState {
    /// Executes one admin request record (at least [`ADMIN_REQUEST_SIZE`] bytes) and puts
    /// the sealed answer where its sender will read it.
    ///
    /// An open session's authentic request (MAC verified) is answered in the session's
    /// own mailbox (`layout::SESSION_MAILBOX_OFFSET`): no other exchange ever writes
    /// there, so nothing another process does can disturb or delay it. Every other
    /// request is answered in the shared mailbox it names, which then keeps the answer
    /// for [`MAILBOX_HOLD_MS`] so that its reader gets it: a request naming a held
    /// mailbox is refused (its WRITE fails, nothing runs, the host names another). A
    /// process flooding the admin space can so delay session opens (documented in
    /// docs/security.md), never an open session's admin requests.
    pub(crate) fn admin(&mut self, b: &mut [u8], now: Instant) -> AdminOutcome {
        let Some(ret) = AdminRequest::peek_return(b) else { return AdminOutcome::Refused };
        let m = ret.mailbox as usize;
        let decoded = AdminRequest::decode(b);
        let own_box = self.authentic_in_session(&decoded, b);
        if own_box.is_none() {
            match self.admin_state.written.get(m) {
                None => return AdminOutcome::Refused,
                Some(Some(t)) if now.duration_since(*t) < Duration::from_millis(MAILBOX_HOLD_MS) => {
                    self.stats.admin_mailbox_busy += 1;
                    return AdminOutcome::Refused;
                }
                Some(_) => {}
            }
        }
        let mut resp = AdminResponse { op: ret.op, seq: ret.seq, ..Default::default() };
        let status = match decoded {
            Err(e) => e.status(),
            Ok(req) => {
                resp.session_id = req.session_id;
                match req.op {
                    AdminOp::Hello => self.hello(&req, &mut resp, now),
                    AdminOp::OpenSession => self.open_session(&req, &mut resp, now),
                    _ => self.in_session(&req, &mut b[..ADMIN_REQUEST_SIZE], &mut resp, now),
                }
            }
        };
        resp.status = status.as_u32();
        let a = &mut self.admin_state;
        match own_box {
            Some(area) => {
                a.session_boxes.insert(area, resp.seal(SESSION_MAILBOX, &ret.exchange_key));
            }
            None => {
                let sealed = resp.seal(ret.mailbox, &ret.exchange_key);
                let at = m * MAILBOX_SIZE as usize;
                a.mailboxes[at..at + MAILBOX_SIZE as usize].copy_from_slice(&sealed);
                a.written[m] = Some(now);
            }
        }
        AdminOutcome::Answered
    }

    /// The IO area of the session if `req` (decoded from record `b`) is an in-session
    /// request of an open session, from its process, whose MAC verifies (the sequence
    /// number is checked when it runs).
    fn authentic_in_session(&mut self, req: &Result<AdminRequest, pov_proto::DecodeError>, b: &[u8]) -> Option<u32> {
        let req = req.as_ref().ok().filter(|r| r.op.in_session())?;
        let s = owned_session(&mut self.areas, req).ok()?;
        let mut record = [0u8; ADMIN_REQUEST_SIZE];
        record.copy_from_slice(&b[..ADMIN_REQUEST_SIZE]);
        s.keys.verify_admin(&mut record, ADMIN_MAC_OFFSET).ok().map(|()| s.area)
    }

    /// Hello: remembers the client nonce and answers a device nonce. An unknown tenant
    /// gets an answer too (its OpenSession fails), so a Hello tells nothing about which
    /// tenants exist.
    fn hello(&mut self, req: &AdminRequest, resp: &mut AdminResponse, now: Instant) -> Status {
        if !pov_proto::path::valid_tenant_name(&req.tenant) {
            return Status::Invalid;
        }
        let a = &mut self.admin_state;
        a.exchanges.retain(|_, x| now.duration_since(x.started) < EXCHANGE_TTL);
        // Bounded: a flood of Hellos evicts the oldest exchanges of its own tenant
        // first, and only then anyone's.
        let of_tenant = a.exchanges.values().filter(|x| x.tenant == req.tenant).count();
        let full = of_tenant >= MAX_EXCHANGES_PER_TENANT || a.exchanges.len() >= MAX_EXCHANGES;
        if full {
            let own = of_tenant >= MAX_EXCHANGES_PER_TENANT;
            let victim = a
                .exchanges
                .iter()
                .filter(|(_, x)| !own || x.tenant == req.tenant)
                .min_by_key(|(_, x)| x.started)
                .map(|(id, _)| *id);
            if let Some(id) = victim {
                a.exchanges.remove(&id);
            }
        }
        let mut id = 0;
        while id == 0 || a.exchanges.contains_key(&id) {
            id = u64::from_le_bytes(crypto::random());
        }
        let nd = crypto::random();
        a.exchanges.insert(id, Exchange { tenant: req.tenant.clone(), nc: req.nonce, nd, started: now });
        resp.exchange_id = id;
        resp.device_nonce = nd;
        Status::Ok
    }

    /// OpenSession: checks the proof for the exchange, then opens a session with the
    /// grant asked for (within the tenant's limits).
    fn open_session(&mut self, req: &AdminRequest, resp: &mut AdminResponse, now: Instant) -> Status {
        let Some(x) = self.admin_state.exchanges.remove(&req.exchange_id) else { return Status::AuthFailed };
        if now.duration_since(x.started) >= EXCHANGE_TTL {
            return Status::AuthFailed;
        }
        let (name, dev) = (x.tenant.clone(), self.name.clone());
        let b = self.admin_state.bucket(&name, now);
        if b.tokens < 1.0 {
            b.suppressed += 1;
            return Status::RateLimited;
        }
        if !self.tenants.check_proof(&x.tenant, &x.nc, &x.nd, req.pid, req.grant_flags, &req.prefix, &req.mac) {
            let b = self.admin_state.bucket(&name, now);
            b.tokens -= 1.0;
            self.stats.auth_failures += 1;
            if b.logged.map_or(true, |t| now.duration_since(t) >= AUTH_LOG_INTERVAL) {
                let more = std::mem::take(&mut b.suppressed);
                b.logged = Some(now);
                log::warn!("device {dev}: authentication failed for tenant {name:?} (pid {}); {more} more not logged", req.pid);
            } else {
                b.suppressed += 1;
            }
            return Status::AuthFailed;
        }
        let prefix = match pov_proto::path::normalize(req.prefix.as_bytes()) {
            Ok(p) => p,
            Err(st) => return st,
        };
        let tenant_sessions = self.areas.iter().flatten().filter(|s| s.tenant == x.tenant).count() as u32;
        if tenant_sessions >= self.max_sessions_per_tenant {
            log::warn!("device {dev}: tenant {name} is at its limit of {} sessions", self.max_sessions_per_tenant);
            return Status::Quota;
        }
        let n = self.areas.len();
        let Some(area) = (0..n).map(|i| (self.next_area + i) % n).find(|&a| self.areas[a].is_none()) else {
            return Status::NoResources;
        };
        self.next_area = (area + 1) % n;
        let mut id = 0;
        while id == 0 || self.areas.iter().flatten().any(|s| s.id == id) {
            id = u64::from_le_bytes(crypto::random());
        }
        let Some(keys) = self.tenants.session_keys(&x.tenant, &x.nc, &x.nd, id) else { return Status::AuthFailed };
        let protection =
            if req.grant_flags & GRANT_INTEGRITY_ONLY != 0 { Protection::IntegrityOnly } else { Protection::Confidential };
        let grant = Grant { read_only: req.grant_flags & GRANT_READ_ONLY != 0, prefix };
        log::info!(
            "device {dev}: session {id:#x} opened for tenant {name} pid {} in area {area} ({protection:?}, {grant:?})",
            req.pid
        );
        // The area's session mailbox holds nothing of a former session.
        self.admin_state.session_boxes.remove(&(area as u32));
        let counters = self.tenant_counters.get(&x.tenant);
        self.areas[area] = Some(Session::new(id, x.tenant, req.pid, area as u32, keys, protection, grant, now, counters));
        resp.session_id = id;
        resp.area = area as u32;
        resp.max_queues = self.geometry.queues_per_area;
        resp.heartbeat_interval_ms = self.heartbeat_interval_ms;
        resp.session_timeout_ms = self.session_timeout_ms;
        Status::Ok
    }

    /// An in-session request: the session must be open and owned by the request's PID,
    /// the MAC must verify with its admin key and the sequence number be above its last.
    fn in_session(&mut self, req: &AdminRequest, record: &mut [u8], resp: &mut AdminResponse, now: Instant) -> Status {
        let s = match owned_session(&mut self.areas, req) {
            Ok(s) => s,
            Err(st) => return st,
        };
        if s.keys.verify_admin(record, ADMIN_MAC_OFFSET).is_err() || req.seq <= s.admin_seq {
            self.stats.auth_failures += 1;
            return Status::AuthFailed;
        }
        s.admin_seq = req.seq;
        match req.op {
            AdminOp::CloseSession => {
                s.state = SessionState::Reclaiming;
                s.closed_by_host = true;
                // Its idle queues go now (the host closes a session with this one
                // exchange: a session opened right after must find the tenant's queue
                // count down); busy ones, and the area, at the next reclaim check.
                let queues = &self.queues;
                let (busy, idle): (Vec<u32>, Vec<u32>) =
                    s.queues.iter().partition(|q| queues.get(q).is_some_and(|q| q.busy || q.current.is_some()));
                s.queues = busy;
                let (area, done) = (s.area as usize, s.queues.is_empty());
                for q in idle {
                    self.free_queue(q);
                }
                if done {
                    // Nothing in flight: the session and its area go now too.
                    if let Some(s) = self.areas.get_mut(area).and_then(Option::take) {
                        s.counters.add_sessions(-1);
                        self.stats.sessions_closed += 1;
                    }
                }
                Status::Ok
            }
            AdminOp::Heartbeat if !self.tenants.exists(&s.tenant) => {
                s.state = SessionState::Reclaiming;
                Status::BadSession
            }
            AdminOp::Heartbeat => {
                s.last_heartbeat = now;
                Status::Ok
            }
            AdminOp::CreateQueue => self.create_queue(req, resp),
            AdminOp::DeleteQueue => self.delete_queue(req),
            AdminOp::Hello | AdminOp::OpenSession => Status::Invalid,
        }
    }

    /// Creates `req.count` queues (0 = 1) of the session, all or none: `Quota` past
    /// the tenant's queue limit, `NoResources` when its IO area has too few free
    /// queues, `Invalid` above [`MAX_BATCH_QUEUES`]. Answers the first queue's ID, and
    /// every ID in `queue_ids` when a count was given.
    fn create_queue(&mut self, req: &AdminRequest, resp: &mut AdminResponse) -> Status {
        let want = usize::from(req.count.max(1));
        if want > MAX_BATCH_QUEUES {
            return Status::Invalid;
        }
        let limit = self.max_queues_per_tenant;
        let s = match owned_session(&mut self.areas, req) {
            Ok(s) => s,
            Err(st) => return st,
        };
        let tenant = s.tenant.clone();
        let tenant_queues: usize =
            self.areas.iter().flatten().filter(|x| x.tenant == tenant).map(|x| x.queues.len()).sum::<usize>();
        if limit.is_some_and(|l| tenant_queues + want > l as usize) {
            log::warn!(
                "device {}: tenant {tenant} asked for {want} queue(s) with {tenant_queues} of its limit of {} in use",
                self.name,
                limit.unwrap_or(0)
            );
            return Status::Quota;
        }
        let s = match owned_session(&mut self.areas, req) {
            Ok(s) => s,
            Err(st) => return st,
        };
        let g = self.geometry;
        let free: Vec<u32> =
            (0..g.queues_per_area).map(|i| g.queue_id(s.area, i)).filter(|q| !s.queues.contains(q)).take(want).collect();
        if free.len() < want {
            return Status::NoResources;
        }
        for &qid in &free {
            // Mapping table: queue -> proxy connection.
            let proxy = self.router.route(RouteKey::Queue(qid));
            self.queues.insert(qid, Queue::new(QueueOwner { session_id: s.id, pid: s.pid, qos: req.qos, proxy }));
            s.queues.push(qid);
        }
        resp.queue_id = free[0];
        if req.count > 0 {
            resp.queue_ids = free;
        }
        Status::Ok
    }

    fn delete_queue(&mut self, req: &AdminRequest) -> Status {
        let qid = req.queue_id;
        let s = match owned_session(&mut self.areas, req) {
            Ok(s) => s,
            Err(st) => return st,
        };
        if !s.queues.contains(&qid) {
            return Status::BadQueue;
        }
        if self.queues.get(&qid).is_some_and(|q| q.busy) {
            return Status::Busy;
        }
        s.queues.retain(|q| *q != qid);
        self.free_queue(qid);
        Status::Ok
    }

    /// Frees a queue: parked response READs complete with IOERR.
    pub(crate) fn free_queue(&mut self, qid: u32) {
        if let Some(q) = self.queues.remove(&qid) {
            q.free(&mut self.out);
        }
    }

    /// Keep-alive (paper §4.6): sessions without a heartbeat for the timeout are
    /// reclaimed in two steps — wait for their requests in progress, then free
    /// queues. Runs at most every [`SESSION_CHECK_INTERVAL`]; returns `true` if it
    /// freed a session.
    pub(crate) fn reclaim_sessions(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last_session_check) < SESSION_CHECK_INTERVAL {
            return false;
        }
        self.last_session_check = now;
        let timeout = Duration::from_millis(self.session_timeout_ms as u64);
        let mut did = false;
        for area in 0..self.areas.len() {
            let Some(s) = self.areas[area].as_mut() else { continue };
            if s.state == SessionState::Open && now.duration_since(s.last_heartbeat) > timeout {
                log::warn!(
                    "device {}: session {:#x} (tenant {}, pid {}) missed heartbeats; reclaiming",
                    self.name,
                    s.id,
                    s.tenant,
                    s.pid
                );
                s.state = SessionState::Reclaiming;
            }
            if s.state != SessionState::Reclaiming {
                continue;
            }
            if s.queues.iter().any(|q| self.queues.get(q).is_some_and(|q| q.busy)) {
                continue;
            }
            let s = self.areas[area].take().expect("present");
            s.counters.add_sessions(-1);
            // A request answered after its session went would leave the tenant's
            // queue depth one too high.
            let unanswered = s.queues.iter().filter(|q| self.queues.get(q).is_some_and(|q| q.current.is_some())).count();
            s.counters.add_in_flight(-(unanswered as i64));
            for q in s.queues {
                self.free_queue(q);
            }
            if s.closed_by_host {
                self.stats.sessions_closed += 1;
            } else {
                self.stats.sessions_reclaimed += 1;
            }
            did = true;
        }
        did
    }

    /// When [`DeviceState::reclaim_sessions`] must run next, if any session is open.
    pub(crate) fn session_deadline(&self) -> Option<Instant> {
        self.areas.iter().any(|a| a.is_some()).then_some(self.last_session_check + SESSION_CHECK_INTERVAL)
    }
}

/// The open session `session_id` of the table.
fn open_session_mut(areas: &mut [Option<Session>], session_id: u64) -> Option<&mut Session> {
    areas.iter_mut().flatten().find(|s| s.id == session_id && s.state == SessionState::Open)
}

/// The open session an admin request names, if the request's PID owns it.
fn owned_session<'a>(areas: &'a mut [Option<Session>], req: &AdminRequest) -> Result<&'a mut Session, Status> {
    let s = open_session_mut(areas, req.session_id).ok_or(Status::BadSession)?;
    if s.pid != req.pid {
        return Err(Status::PidMismatch);
    }
    Ok(s)
}
