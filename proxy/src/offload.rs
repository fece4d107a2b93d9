//! Running a blocking backend off the reactors: a bounded worker pool per server and
//! a per-connection submission/completion queue.
//!
//! A backend whose calls block (Ceph: a network round trip per call, a timeout
//! during an outage) asks for workers ([`crate::backend::Backend::workers`]). The
//! server starts one [`WorkerPool`] of that many threads; each thread owns a
//! [`Service`] on its own backend channel. A connection poller gets an [`Offload`]:
//!
//! * [`Offload::submit`] hands a frame body to the pool (at most
//!   [`MAX_IN_FLIGHT`] per connection; more wait in a per-connection backlog in
//!   arrival order). The connection poller bounds what it submits (requests in
//!   service and the answer bytes reserved for them, [`Offload::reserved_bytes`]:
//!   `crate::server::ConnLimits`), so the backlog is bounded too.
//! * Workers run the request and push the response frame onto the connection's
//!   completion list, then signal its eventfd ([`Offload::fd`]), which the poller
//!   watches with `ReactorContext::watch_fd`: an idle reactor sleeps, a completion
//!   wakes it.
//! * [`Offload::reap`] collects finished responses (in completion order, not
//!   submission order: responses carry the request's tag) and answers every request
//!   older than the backend's deadline with [`Status::Timeout`] itself; the late
//!   result is then dropped. A request still waiting for a worker when its deadline
//!   passes is not run at all.
//!
//! This is the "equivalent that keeps many operations in flight" of issue 4 for
//! libcephfs, which has no asynchronous API for path operations.
//!
//! **QoS** ([`crate::qos`]): with a [`QosGate`] the backlog is a per-tenant, per-class
//! [`QosScheduler`] (LC first, BC tenants by equal weight), BC requests are handed to
//! the pool only while the gate's PID-controlled window has room, and workers take LC
//! jobs before BC jobs. Without one (`--qos off`) the backlog is arrival order and
//! there is one job queue.

use crate::backend::Backend;
use crate::qos::{QosConfig, QosGate};
use crate::service::{answer_bound, Service};
use crate::stats::ProxyStats;
use crossbeam_channel::{Receiver, Sender};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use pov_runtime::qos::{Policy, PolicyLookup, QosScheduler, LC};
use pov_runtime::sched::{Fifo, Scheduler, Ticket};
use pov_runtime::sys::EventFd;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most requests of one connection handed to the pool at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// How soon a connection with BC requests held by the QoS window looks again.
const WINDOW_RECHECK: Duration = Duration::from_micros(500);

struct Job {
    seq: u64,
    body: Vec<u8>,
    deadline: Option<Instant>,
    done: Arc<Completions>,
    /// QoS class (0 LC, 1 BC) and when it was handed to the pool.
    class: u8,
    since: Instant,
    /// When the connection received it (a trace's start).
    received: Instant,
}

/// Completed responses of one connection: `(sequence number, frame)`; an empty frame
/// means "no answer" (dropped frame, or expired before it ran).
struct Completions {
    list: Mutex<Vec<(u64, Vec<u8>)>>,
    efd: EventFd,
    /// The DPU closed the connection: requests that change data and have not started
    /// are not run (it may have resent them to another proxy).
    abandoned: AtomicBool,
}

/// Threads running requests on channels of one backend.
pub struct WorkerPool {
    /// Job queues: LC, BC (with QoS; without, everything goes to the first).
    jobs: Option<[Sender<Job>; 2]>,
    threads: Vec<JoinHandle<()>>,
    timeout: Option<Duration>,
    qos: Option<Arc<QosGate>>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("workers", &self.threads.len()).field("timeout", &self.timeout).finish()
    }
}

impl WorkerPool {
    /// Starts `workers` threads (at least 1; named `pov-worker-N`), each serving
    /// requests on its own channel of `backend`; with `qos`, the proxy's QoS stage
    /// ([`crate::qos`]) over them.
    ///
    /// Errors: a thread cannot be spawned.
    pub fn start(
        backend: &dyn Backend,
        stats: Arc<ProxyStats>,
        workers: usize,
        qos: Option<QosConfig>,
    ) -> std::io::Result<WorkerPool> {
        let workers = workers.max(1);
        let (lc_tx, lc_rx) = crossbeam_channel::unbounded::<Job>();
        let (bc_tx, bc_rx) = crossbeam_channel::unbounded::<Job>();
        let gate = qos.map(|c| Arc::new(QosGate::new(c, workers)));
        let mut pool =
            WorkerPool { jobs: Some([lc_tx, bc_tx]), threads: Vec::new(), timeout: backend.op_timeout(), qos: gate.clone() };
        for i in 0..workers {
            let (lc_rx, bc_rx): (Receiver<Job>, Receiver<Job>) = (lc_rx.clone(), bc_rx.clone());
            let mut service = Service::new(backend.channel(), stats.clone());
            let stats = stats.clone();
            let gate = gate.clone();
            let t = std::thread::Builder::new().name(format!("pov-worker-{i}")).spawn(move || {
                while let Some(job) = next_job(&lc_rx, &bc_rx) {
                    let mut out = Vec::new();
                    let expired = job.deadline.is_some_and(|d| Instant::now() >= d);
                    let abandoned = job.done.abandoned.load(Ordering::Acquire) && Service::mutates(&job.body);
                    if abandoned {
                        stats.abandoned.fetch_add(1, Ordering::Relaxed);
                    }
                    if expired || abandoned || !service.handle_frame_at(&job.body, job.received, &mut out) {
                        out.clear();
                    }
                    if let Some(g) = &gate {
                        g.finished(job.class, job.since, Instant::now());
                    }
                    job.done.list.lock().unwrap_or_else(|e| e.into_inner()).push((job.seq, out));
                    job.done.efd.notify();
                }
            })?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// The QoS stage's state (`None`: QoS off).
    pub fn qos(&self) -> Option<&Arc<QosGate>> {
        self.qos.as_ref()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }
}

/// The next job: an LC one if any is queued, else whichever comes first. `None` once
/// the pool is closed and both queues are empty.
fn next_job(lc: &Receiver<Job>, bc: &Receiver<Job>) -> Option<Job> {
    if let Ok(j) = lc.try_recv() {
        return Some(j);
    }
    crossbeam_channel::select! {
        recv(lc) -> j => j.ok().or_else(|| bc.recv().ok()),
        recv(bc) -> j => j.ok().or_else(|| lc.recv().ok()),
    }
}

impl Drop for WorkerPool {
    /// Closes the job queue and waits for the workers to finish what they run (each
    /// backend call is bounded by the backend's own timeouts).
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a connection remembers about a request in flight.
struct Pending {
    /// `(op, tag)` read from the frame, to answer a timeout; `None` for a frame too
    /// short to carry a tag (it gets no answer anyway).
    ids: Option<(u16, u64)>,
    deadline: Option<Instant>,
    /// Room reserved for its answer ([`answer_bound`]).
    reserved: usize,
}

/// A request waiting for the pool: its frame body and when it was received.
type Waiting = (Vec<u8>, Instant);

/// One connection's view of a [`WorkerPool`].
pub struct Offload {
    pool: Arc<WorkerPool>,
    done: Arc<Completions>,
    pending: HashMap<u64, Pending>,
    /// Requests not yet handed to the pool: by class and tenant with QoS, else in
    /// arrival order.
    backlog: Box<dyn Scheduler<Waiting>>,
    next_seq: u64,
    taken: Vec<(u64, Vec<u8>)>,
    timeouts: u64,
    reserved: usize,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").field("in_flight", &self.pending.len()).field("backlog", &self.backlog.len()).finish()
    }
}

impl Offload {
    /// A submission queue onto `pool` with its own completion eventfd.
    ///
    /// Errors: the eventfd cannot be created.
    pub fn new(pool: Arc<WorkerPool>) -> std::io::Result<Offload> {
        let done =
            Arc::new(Completions { list: Mutex::new(Vec::new()), efd: EventFd::new()?, abandoned: AtomicBool::new(false) });
        let backlog: Box<dyn Scheduler<Waiting>> = match pool.qos {
            // The DPU put the tenant's effective class in the header; tenants share BC
            // by equal weight here (their policies live on the DPUs).
            Some(_) => {
                let lookup: PolicyLookup = Arc::new(|_: &str| Policy { max_class: LC, ..Policy::default() });
                Box::new(QosScheduler::new(lookup))
            }
            None => Box::new(Fifo::default()),
        };
        Ok(Offload { pool, done, pending: HashMap::new(), backlog, next_seq: 0, taken: Vec::new(), timeouts: 0, reserved: 0 })
    }

    /// The DPU closed the connection: requests that change data and have not started
    /// running are dropped unanswered (nobody waits for them, and the DPU may have
    /// resent them elsewhere: running them late could overwrite newer data).
    pub fn abandon(&self) {
        self.done.abandoned.store(true, Ordering::Release);
    }

    /// The descriptor that becomes readable when a request completes.
    pub fn fd(&self) -> RawFd {
        self.done.efd.as_raw_fd()
    }

    /// Requests handed to workers and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Requests waiting for a free slot ([`MAX_IN_FLIGHT`]).
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Room reserved for the answers of the requests submitted and not yet reaped
    /// (in flight and in the backlog), bytes: the sum of their [`answer_bound`]s.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// Requests answered with [`Status::Timeout`] by this connection so far.
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// Queues one frame body (length prefix stripped), reserving
    /// [`answer_bound`]`(body)` bytes until its answer is reaped.
    pub fn submit(&mut self, body: &[u8]) {
        self.reserved += answer_bound(body);
        let (class, tenant, bytes) = ProxyRequest::peek_ticket(body).unwrap_or((0, "", 0));
        // The proxy sets no limits: the direction does not matter here.
        self.backlog.push(Ticket { class, tenant, bytes, write: false }, (body.to_vec(), Instant::now()));
        self.pump();
    }

    /// Hands backlog requests to the pool while there are free slots (and, for BC
    /// ones, room in the QoS window). Returns `true` if any went.
    fn pump(&mut self) -> bool {
        let mut moved = false;
        let now = Instant::now();
        while self.pending.len() < MAX_IN_FLIGHT && !self.backlog.is_empty() {
            let bc = self.pool.qos.as_ref().map_or(true, |g| g.bc_room());
            let Some((class, (body, received))) = self.backlog.pop_class(now, bc) else {
                if let Some(g) = &self.pool.qos {
                    g.held();
                }
                break;
            };
            moved = true;
            self.dispatch(body, received, class);
        }
        moved
    }

    fn dispatch(&mut self, body: Vec<u8>, received: Instant, class: u8) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = self.pool.timeout.map(|t| Instant::now() + t);
        let ids = (body.len() >= 16).then(|| {
            let op = u16::from_le_bytes([body[6], body[7]]);
            let mut tag = [0u8; 8];
            tag.copy_from_slice(&body[8..16]);
            (op, u64::from_le_bytes(tag))
        });
        let reserved = answer_bound(&body);
        self.pending.insert(seq, Pending { ids, deadline, reserved });
        if let Some(g) = &self.pool.qos {
            g.started(class);
        }
        let since = Instant::now();
        let job = Job { seq, body, deadline, done: self.done.clone(), class, since, received };
        let queue = usize::from(class.min(1) == 1 && self.pool.qos.is_some());
        let sent = self.pool.jobs.as_ref().is_some_and(|tx| tx[queue].send(job).is_ok());
        if !sent {
            if let Some(g) = &self.pool.qos {
                g.finished(class, since, since);
            }
            // The pool is shutting down: answer as unavailable.
            self.release(seq);
            if let Some((op, tag)) = ids {
                let mut f = Vec::new();
                ProxyResponse { op, tag, status: Status::Unavailable, result: 0, flags: 0 }.encode_frame(&[], &mut f);
                self.done.list.lock().unwrap_or_else(|e| e.into_inner()).push((u64::MAX, f));
            }
        }
    }

    /// Moves finished response frames to `out` (and timeout answers for expired
    /// requests), then refills free slots from the backlog. Returns `true` if
    /// anything moved.
    pub fn reap(&mut self, out: &mut Vec<Vec<u8>>) -> bool {
        self.done.efd.drain();
        std::mem::swap(&mut self.taken, &mut self.done.list.lock().unwrap_or_else(|e| e.into_inner()));
        let mut moved = !self.taken.is_empty();
        let mut taken = std::mem::take(&mut self.taken);
        for (seq, frame) in taken.drain(..) {
            // Unknown sequence numbers were answered already (timeout) or are
            // pool-shutdown answers (u64::MAX).
            if (self.release(seq).is_some() || seq == u64::MAX) && !frame.is_empty() {
                out.push(frame);
            }
        }
        self.taken = taken;
        let now = Instant::now();
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.deadline.is_some_and(|d| now >= d)).map(|(s, _)| *s).collect();
        for seq in expired {
            moved = true;
            self.timeouts += 1;
            if let Some(Pending { ids: Some((op, tag)), .. }) = self.release(seq) {
                log::warn!("request tag {tag:#x} (op {op}) timed out in the backend");
                let mut f = Vec::new();
                ProxyResponse { op, tag, status: Status::Timeout, result: 0, flags: 0 }.encode_frame(&[], &mut f);
                out.push(f);
            }
        }
        if let Some(g) = &self.pool.qos {
            g.tick(now);
        }
        moved |= self.pump();
        moved
    }

    /// Forgets request `seq` and the room reserved for its answer.
    fn release(&mut self, seq: u64) -> Option<Pending> {
        let p = self.pending.remove(&seq)?;
        self.reserved = self.reserved.saturating_sub(p.reserved);
        Some(p)
    }

    /// The earliest deadline of a request in flight (the poller must run by then).
    pub fn deadline(&self) -> Option<Instant> {
        let op = self.pending.values().filter_map(|p| p.deadline).min();
        // BC requests held by the QoS window: room is made by any connection's
        // completion, which wakes only that connection, so look again shortly.
        let held = (self.pool.qos.is_some() && !self.backlog.is_empty()).then(|| Instant::now() + WINDOW_RECHECK);
        op.into_iter().chain(held).min()
    }
}
