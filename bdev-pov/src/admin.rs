//! The admin request space of a PoV device (paper §4.3.1 control plane, §4.6
//! keep-alive): the session table by IO area, session open/close and heartbeats,
//! queue creation and deletion (the queue → proxy mapping table), and the reclamation
//! of sessions whose heartbeats stopped.

use crate::device::DeviceState;
use crate::forward::RouteKey;
use crate::queue::Queue;
use crate::session::{QueueOwner, Session, SessionState};
use pov_proto::admin::{AdminOp, AdminRequest, AdminResponse};
use pov_proto::Status;
use std::time::{Duration, Instant};

/// How often session keep-alive is checked.
pub(crate) const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl DeviceState {
    /// Executes one admin request record (`b` is [`pov_proto::admin::ADMIN_REQUEST_SIZE`]
    /// bytes) and returns the response to put in the admin response space.
    pub(crate) fn admin(&mut self, b: &[u8]) -> AdminResponse {
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
            AdminOp::CloseSession => match owned_session(&mut self.areas, &req) {
                Ok(s) => {
                    s.state = SessionState::Reclaiming;
                    Status::Ok
                }
                Err(st) => st,
            },
            AdminOp::Heartbeat => match owned_session(&mut self.areas, &req) {
                Ok(s) if !self.tenants.exists(&s.tenant) => {
                    s.state = SessionState::Reclaiming;
                    Status::BadSession
                }
                Ok(s) => {
                    s.last_heartbeat = Instant::now();
                    Status::Ok
                }
                Err(st) => st,
            },
            AdminOp::CreateQueue => self.create_queue(&req, &mut resp),
            AdminOp::DeleteQueue => self.delete_queue(&req),
        };
        resp.status = status.as_u32();
        resp
    }

    fn open_session(&mut self, req: &AdminRequest, resp: &mut AdminResponse) -> Status {
        if !self.tenants.authenticate(&req.tenant, &req.secret) {
            log::warn!("device {}: authentication failed for tenant {:?} (pid {})", self.name, req.tenant, req.pid);
            return Status::AuthFailed;
        }
        let Some(area) = self.areas.iter().position(|a| a.is_none()) else { return Status::NoResources };
        let mut id = 0;
        while id == 0 || self.areas.iter().flatten().any(|s| s.id == id) {
            id = rand::random::<u64>();
        }
        self.areas[area] = Some(Session::new(id, req.tenant.clone(), req.pid, area as u32, Instant::now()));
        log::info!("device {}: session {id:#x} opened for tenant {} pid {} in area {area}", self.name, req.tenant, req.pid);
        resp.session_id = id;
        resp.area = area as u32;
        resp.max_queues = self.geometry.queues_per_area;
        resp.heartbeat_interval_ms = self.heartbeat_interval_ms;
        resp.session_timeout_ms = self.session_timeout_ms;
        Status::Ok
    }

    fn create_queue(&mut self, req: &AdminRequest, resp: &mut AdminResponse) -> Status {
        let s = match owned_session(&mut self.areas, req) {
            Ok(s) => s,
            Err(st) => return st,
        };
        let g = self.geometry;
        let Some(index) = (0..g.queues_per_area).find(|i| !s.queues.contains(&g.queue_id(s.area, *i))) else {
            return Status::NoResources;
        };
        let qid = g.queue_id(s.area, index);
        // Mapping table: queue -> proxy connection.
        let proxy = self.router.route(RouteKey::Queue(qid));
        self.queues.insert(qid, Queue::new(QueueOwner { session_id: s.id, pid: s.pid, qos: req.qos, proxy }));
        s.queues.push(qid);
        resp.queue_id = qid;
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
            for q in s.queues {
                self.free_queue(q);
            }
            self.stats.sessions_reclaimed += 1;
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
