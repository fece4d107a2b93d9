//! The request engine: the IO queues of one session and the request/response round
//! trip on them.
//!
//! An [`Engine`] owns a session's [`Channel`]s (one PoV queue each, with its request
//! and response buffers) in a pool. [`Engine::call`] leases a free channel (blocking
//! while all are busy), encodes one PoV request into the queue's request slot, submits
//! the slot WRITE and the response-slot READ as one batch on the queue's transport
//! lane, checks that the response answers that request, fetches the rest of a response
//! larger than the first read, opens it with the session's keys (every request carries
//! a tag only the session's key holder can make; every response is authenticated and,
//! unless the session is integrity-only, its payload encrypted: `pov_proto::crypto`),
//! and hands header and payload to the caller. A non-Ok
//! status becomes an `io::Error` (see [`crate::error::status_error`]); `BadSession`
//! also marks the session dead.
//!
//! The engine knows nothing about opening or closing sessions (that is
//! [`crate::session`], which builds an engine from the queues it created) nor about
//! files ([`crate::file`] and [`crate::session`] build [`Call`]s). It also holds the
//! encode/decode helpers of the data path: [`encode_request`], [`response_read_len`],
//! [`split`], [`run_parallel`], [`wire_path`].

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use pov_proto::crypto::{Protection, SessionKeys};
use pov_proto::entry::Stat;
use pov_proto::io::{
    round_to_sector, Op, RequestHeader, ResponseHeader, SdkHint, MAX_PATH, REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET,
};
use pov_proto::layout::{HEADER_SIZE, SLOT_SIZE};
use pov_proto::{Status, MAX_IO_BYTES};

use crate::device::Device;
use crate::error::{protocol_error, status_error};
use crate::mem::{round_up, IoBuf, IO_ALIGN};
use crate::transport::{BlockOp, BlockTransport, Dir, Lane};

/// One PoV queue with its request and response buffers (each [`SLOT_SIZE`] bytes,
/// allocated by the device's transport).
pub(crate) struct Channel {
    /// Index within the session (0-based); selects the transport lane.
    index: usize,
    /// Global queue ID.
    queue_id: u32,
    req: IoBuf,
    resp: IoBuf,
    /// The session incarnation it belongs to (see [`Engine::recover`]).
    generation: u64,
    /// Next request ID of this queue and the end of its block of IDs (taken from the
    /// session's sequence, [`REQUEST_ID_BLOCK`] at a time): consecutive IDs per queue
    /// alternate between its two response windows.
    next_request: u64,
    request_ids_end: u64,
}

/// Request IDs a channel takes from its session's sequence at once (IDs stay unique
/// in the session; within a block they are consecutive).
const REQUEST_ID_BLOCK: u64 = 1 << 32;

/// Times a joint round trip reads its response window again when it got another
/// request's response (its READ waited out `EARLY_READ_TIMEOUT` on the device, or the
/// queue's IDs jumped to a new block).
const WINDOW_REREADS: usize = 2;

impl Channel {
    /// The channel of queue `queue_id`, the `index`-th queue of its session, with
    /// buffers of at least [`SLOT_SIZE`] bytes from the device's transport.
    pub(crate) fn new(index: usize, queue_id: u32, req: IoBuf, resp: IoBuf) -> Channel {
        debug_assert!(req.len() >= SLOT_SIZE as usize && resp.len() >= SLOT_SIZE as usize);
        Channel { index, queue_id, req, resp, generation: 0, next_request: 0, request_ids_end: 0 }
    }

    /// The next request ID of this queue, taking a new block from `sequence` when the
    /// current one is used up.
    fn take_request_id(&mut self, sequence: &AtomicU64) -> u64 {
        if self.next_request >= self.request_ids_end {
            self.next_request = sequence.fetch_add(REQUEST_ID_BLOCK, Ordering::Relaxed);
            self.request_ids_end = self.next_request + REQUEST_ID_BLOCK;
        }
        let id = self.next_request;
        self.next_request += 1;
        id
    }
}

struct Pool {
    free: Vec<Channel>,
    closed: bool,
    /// Incarnation of the channels in `free`; a channel of an older one is dropped
    /// when its lease ends.
    generation: u64,
    /// Channels of the current incarnation.
    total: usize,
    /// A failover is re-establishing the session: callers wait.
    recovering: bool,
}

/// The device-side identity of the session, replaced by a failover.
struct Incarnation {
    session_id: u64,
    keys: Arc<SessionKeys>,
    queue_ids: Vec<u32>,
}

/// A session opened again by the session layer for [`Engine::recover`].
pub(crate) struct Fresh {
    pub(crate) session_id: u64,
    pub(crate) keys: Arc<SessionKeys>,
    pub(crate) channels: Vec<Channel>,
}

/// Re-establishes the session after the device lost it: gets the transport that
/// failed (if it was the transport), returns the new session.
pub(crate) type Reestablish = dyn Fn(Option<&Arc<dyn BlockTransport>>) -> crate::error::Result<Fresh> + Send + Sync;

/// An open file as the engine tracks it, so that a failover can open it again.
struct OpenHandle {
    /// The device's handle in the current incarnation.
    device: u64,
    /// Wire path and Open flags it was opened with.
    path: String,
    flags: u32,
    /// The location key it was opened with (SDK hint of its requests).
    location: u64,
    /// Why it could not be opened again after a failover (calls on it fail).
    lost: Option<String>,
}

/// Why a round trip failed.
enum Failure {
    /// The session is gone with the device (transport error, `BadSession`, an answer
    /// that does not authenticate): a failover may save the call. Carries the
    /// transport when that failed.
    Lost(io::Error, Option<Arc<dyn BlockTransport>>),
    /// Any other error: the caller gets it.
    Other(io::Error),
}

/// Liveness of a session, shared by its engine and its heartbeat thread.
#[derive(Default)]
pub(crate) struct Health {
    closed: AtomicBool,
    dead: Mutex<Option<String>>,
    heartbeats: AtomicU64,
}

impl Health {
    /// Records that the device lost the session (the first reason wins).
    pub(crate) fn mark_dead(&self, why: String) {
        log::error!("PoV session lost: {why}");
        let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        d.get_or_insert(why);
    }

    /// Why the session was lost, if it was.
    pub(crate) fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks the session closed; returns whether it already was.
    pub(crate) fn close(&self) -> bool {
        self.closed.swap(true, Ordering::AcqRel)
    }

    /// `true` once the session was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Counts one acknowledged heartbeat.
    pub(crate) fn heartbeat_acked(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Heartbeats acknowledged so far.
    pub(crate) fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// `Ok` while the session is open and alive.
    ///
    /// Errors: `NotConnected`, saying whether the session was lost (and why) or closed.
    pub(crate) fn check(&self) -> io::Result<()> {
        if let Some(why) = self.dead.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, format!("PoV session is dead: {why}")));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "PoV session is closed"));
        }
        Ok(())
    }
}

/// One IO request to send.
pub(crate) struct Call<'a> {
    pub(crate) op: Op,
    pub(crate) handle: u64,
    pub(crate) offset: u64,
    pub(crate) length: u32,
    pub(crate) flags: u32,
    pub(crate) payload: &'a [u8],
    /// Response payload bytes expected (read in the same round trip as the request).
    pub(crate) expect: usize,
    /// What the request is about, for error messages.
    pub(crate) target: &'a str,
    /// SDK hint: the proxy location key (0: the device decides; see
    /// [`crate::OpenOptions::location_key`]). A call on a handle uses the handle's.
    pub(crate) location: u64,
}

impl<'a> Call<'a> {
    /// A request whose payload is a path.
    pub(crate) fn path(op: Op, path: &'a str, expect: usize) -> Call<'a> {
        Call { op, handle: 0, offset: 0, length: 0, flags: 0, payload: path.as_bytes(), expect, target: path, location: 0 }
    }

    /// A request about an open file.
    pub(crate) fn handle(op: Op, handle: u64, target: &'a str) -> Call<'a> {
        Call { op, handle, offset: 0, length: 0, flags: 0, payload: &[], expect: 0, target, location: 0 }
    }
}

/// The IO queues of one session and the request round trip on them. `Send + Sync`:
/// each call leases its own queue, so up to [`Engine::queue_count`] calls run at once.
pub(crate) struct Engine {
    device: Device,
    pid: u32,
    protection: Protection,
    inc: RwLock<Arc<Incarnation>>,
    pool: Mutex<Pool>,
    returned: Condvar,
    next_request: AtomicU64,
    health: Arc<Health>,
    /// Open files by the library's handle ID (what [`crate::File`] holds).
    handles: Mutex<HashMap<u64, OpenHandle>>,
    next_handle: AtomicU64,
    /// How to open the session again; unset: no failover.
    reestablish: OnceLock<(Box<Reestablish>, Duration)>,
    failovers: AtomicU64,
    /// With a tracer, every request is traced and its times reported to it.
    tracer: RwLock<Option<crate::trace::Tracer>>,
}

/// A channel taken from the pool for one round trip; returned on drop.
struct Lease<'a> {
    engine: &'a Engine,
    ch: Option<Channel>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(ch) = self.ch.take() {
            let mut p = self.engine.pool();
            // A channel of an earlier incarnation (its queue and buffers are gone with
            // the old session and connection) is dropped.
            if ch.generation == p.generation {
                p.free.push(ch);
            }
            drop(p);
            self.engine.returned.notify_all();
        }
    }
}

impl Engine {
    /// An engine for session `session_id` of process `pid` on `device` (with the
    /// session's `keys` and response `protection`), running its requests on `channels`
    /// (in index order; queue 0 is used first).
    pub(crate) fn new(
        device: Device,
        pid: u32,
        session_id: u64,
        keys: Arc<SessionKeys>,
        protection: Protection,
        mut channels: Vec<Channel>,
    ) -> Engine {
        let queue_ids = channels.iter().map(|c| c.queue_id).collect();
        // The pool pops from the end: keep low indexes busy first for predictability.
        channels.reverse();
        let total = channels.len();
        Engine {
            device,
            pid,
            protection,
            inc: RwLock::new(Arc::new(Incarnation { session_id, keys, queue_ids })),
            pool: Mutex::new(Pool { free: channels, closed: false, generation: 0, total, recovering: false }),
            returned: Condvar::new(),
            next_request: AtomicU64::new(1),
            health: Arc::new(Health::default()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            reestablish: OnceLock::new(),
            failovers: AtomicU64::new(0),
            tracer: RwLock::new(None),
        }
    }

    /// Installs (or, with `None`, removes) the tracer: while one is installed every
    /// request carries the trace switch and its times are reported to it.
    pub(crate) fn set_tracer(&self, tracer: Option<crate::trace::Tracer>) {
        *self.tracer.write().unwrap_or_else(|e| e.into_inner()) = tracer;
    }

    /// Turns failover on: when the device loses the session (see [`Engine::call`]),
    /// `reestablish` opens it again, trying for at most `timeout`.
    pub(crate) fn enable_failover(&self, reestablish: Box<Reestablish>, timeout: Duration) {
        let _ = self.reestablish.set((reestablish, timeout));
    }

    /// The incarnation calls use now (see [`Engine::recover`]).
    pub(crate) fn generation(&self) -> u64 {
        self.pool().generation
    }

    /// Times the session was re-established.
    pub(crate) fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    fn incarnation(&self) -> Arc<Incarnation> {
        self.inc.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The device's session ID now.
    pub(crate) fn session_id(&self) -> u64 {
        self.incarnation().session_id
    }

    /// The session's keys now.
    pub(crate) fn keys(&self) -> Arc<SessionKeys> {
        self.incarnation().keys.clone()
    }

    /// Records a file the device opened as handle `device` (from `path` with Open
    /// `flags` and SDK location key `location`); returns the library's handle ID for it
    /// (never 0).
    pub(crate) fn register_handle(&self, device: u64, path: &str, flags: u32, location: u64) -> u64 {
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let h = OpenHandle { device, path: path.to_string(), flags, location, lost: None };
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(id, h);
        id
    }

    /// Forgets handle ID `id` (closed).
    pub(crate) fn forget_handle(&self, id: u64) {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// The device's handle for handle ID `id` now.
    pub(crate) fn device_handle(&self, id: u64, target: &str) -> io::Result<u64> {
        self.handle_of(id, target).map(|(h, _)| h)
    }

    /// The device's handle for handle ID `id` now, and its location key.
    fn handle_of(&self, id: u64, target: &str) -> io::Result<(u64, u64)> {
        match self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            Some(OpenHandle { lost: Some(why), .. }) => {
                Err(io::Error::new(io::ErrorKind::NotConnected, format!("{target}: {why}")))
            }
            Some(h) => Ok((h.device, h.location)),
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{target}: file handle {id} is not open"))),
        }
    }

    /// The session's liveness (shared with its heartbeat thread).
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// `Ok` while the session is open and alive (see [`Health::check`]).
    pub(crate) fn check(&self) -> io::Result<()> {
        self.health.check()
    }

    /// Global IDs of the queues now, in index order.
    pub(crate) fn queue_ids(&self) -> Vec<u32> {
        self.incarnation().queue_ids.clone()
    }

    /// Number of IO queues (the most requests in flight at once).
    pub(crate) fn queue_count(&self) -> usize {
        self.incarnation().queue_ids.len()
    }

    /// Takes `n` request IDs out of the sequence for someone else's use; returns the
    /// first.
    pub(crate) fn reserve_request_ids(&self, n: u64) -> u64 {
        self.next_request.fetch_add(n, Ordering::Relaxed)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses new calls and waits until every leased queue is back (requests in
    /// flight finish first).
    pub(crate) fn drain(&self) {
        let mut p = self.pool();
        p.closed = true;
        while p.recovering || p.free.len() < p.total {
            p = self.returned.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn acquire(&self) -> io::Result<Lease<'_>> {
        self.health.check()?;
        let mut p = self.pool();
        loop {
            if p.closed {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "PoV session is closed"));
            }
            if !p.recovering {
                if let Some(ch) = p.free.pop() {
                    return Ok(Lease { engine: self, ch: Some(ch) });
                }
            }
            p = self.returned.wait(p).unwrap_or_else(|e| e.into_inner());
            drop(p);
            self.health.check()?;
            p = self.pool();
        }
    }

    /// Failover: re-establishes the session after a call of incarnation `seen` found
    /// it lost (`failed`: the transport, if that failed). One caller does the work;
    /// the others wait for it. On success every open file is opened again (without
    /// create, exclusive or truncate) and calls go on with the new session; a file
    /// that cannot be opened again fails its calls with the reason. On failure (the
    /// device did not come back within the failover timeout) the session is dead.
    ///
    /// Errors: `NotConnected` (closed, or the failover failed: why).
    pub(crate) fn recover(&self, seen: u64, failed: Option<&Arc<dyn BlockTransport>>, why: &io::Error) -> io::Result<()> {
        let Some((reestablish, timeout)) = self.reestablish.get() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, format!("PoV session lost: {why}")));
        };
        let mut p = self.pool();
        loop {
            if p.closed {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "PoV session is closed"));
            }
            if p.generation != seen {
                return self.health.check();
            }
            if !p.recovering {
                p.recovering = true;
                break;
            }
            p = self.returned.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        drop(p);
        let session_id = self.session_id();
        log::warn!("PoV session {session_id:#x} lost ({why}): re-establishing it (for up to {timeout:?})");
        let started = Instant::now();
        let deadline = started + *timeout;
        let fresh = loop {
            if self.health.is_closed() {
                break Err(crate::error::Error::new(
                    crate::error::ErrorKind::Closed,
                    "the session was closed during its failover",
                ));
            }
            match reestablish(failed) {
                Ok(f) => break Ok(f),
                // Only a device that cannot be reached (yet) is worth waiting for; a
                // refusal (the secret no longer opens a session, another device
                // answers, nothing to reconnect from) is final.
                Err(e) if Instant::now() < deadline && matches!(e.kind(), crate::error::ErrorKind::Access) => {
                    log::debug!("failover of session {session_id:#x}: {}", crate::error::Chain(&e));
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => break Err(e),
            }
        };
        let result = match fresh {
            Ok(mut f) => {
                let generation = seen + 1;
                for ch in f.channels.iter_mut() {
                    ch.generation = generation;
                }
                let queue_ids = f.channels.iter().map(|c| c.queue_id).collect();
                *self.inc.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::new(Incarnation { session_id: f.session_id, keys: f.keys, queue_ids });
                self.reopen_files(&mut f.channels);
                f.channels.reverse();
                let mut p = self.pool();
                p.total = f.channels.len();
                p.free = f.channels;
                p.generation = generation;
                self.failovers.fetch_add(1, Ordering::Relaxed);
                log::warn!("PoV session re-established as {:#x} after {:?}", self.session_id(), started.elapsed());
                Ok(())
            }
            Err(e) => {
                let msg = format!("the device did not come back within {timeout:?}: {}", crate::error::Chain(&e));
                self.health.mark_dead(msg.clone());
                Err(io::Error::new(io::ErrorKind::NotConnected, format!("PoV session lost: {msg}")))
            }
        };
        self.pool().recovering = false;
        self.returned.notify_all();
        result
    }

    /// Opens every open file again in the new incarnation, on `channels` (before
    /// anyone else may use them).
    fn reopen_files(&self, channels: &mut [Channel]) {
        let Some(ch) = channels.first_mut() else { return };
        let inc = self.incarnation();
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        for h in handles.values_mut() {
            let fl = h.flags & !(pov_proto::io::flags::CREATE | pov_proto::io::flags::EXCL | pov_proto::io::flags::TRUNCATE);
            let c = Call { flags: fl, location: h.location, ..Call::path(Op::Open, &h.path, 0) };
            let mut take = Some(|r: &ResponseHeader, _: &[u8]| Ok(r.result));
            match self.exchange(ch, &inc, &c, (0, c.location), &mut take) {
                Ok(device) if device != 0 => h.device = device,
                Ok(_) => h.lost = Some("reopening it after a failover gave file handle 0".into()),
                Err(Failure::Lost(e, _) | Failure::Other(e)) => {
                    h.lost = Some(format!("the file could not be opened again after the PoV session failed over: {e}"));
                }
            }
        }
    }

    /// Sends one request on a free queue and hands the response header and payload to
    /// `f`. A non-Ok status becomes an error (see [`status_error`]).
    ///
    /// Failover: when the device lost the session (the transport failed, `BadSession`,
    /// an answer that does not authenticate) and failover is on, the session is
    /// re-established ([`Engine::recover`]) and an idempotent request
    /// (`Op::is_idempotent`) is sent again, so the caller sees a delay; a
    /// non-idempotent one (append, remove, exclusive create) gets an error saying its
    /// outcome is unknown.
    ///
    /// Errors: `InvalidInput` for a payload or length over 1 MiB, `NotConnected` once
    /// the session is closed or lost, transport errors, `InvalidData` for a response
    /// that does not decode or does not answer this request, the device's status, or
    /// whatever `f` returns.
    pub(crate) fn call<R>(&self, c: &Call<'_>, f: impl FnOnce(&ResponseHeader, &[u8]) -> io::Result<R>) -> io::Result<R> {
        if c.payload.len() > MAX_IO_BYTES as usize || c.length > MAX_IO_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "PoV request over 1 MiB"));
        }
        let mut f = Some(f);
        for attempt in 0..3 {
            let mut lease = self.acquire()?;
            let ch = lease.ch.as_mut().expect("leased channel");
            let generation = ch.generation;
            let handle = if c.handle == 0 { (0, c.location) } else { self.handle_of(c.handle, c.target)? };
            let inc = self.incarnation();
            match self.exchange(ch, &inc, c, handle, &mut f) {
                Ok(r) => return Ok(r),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Lost(e, failed)) => {
                    drop(lease);
                    if self.reestablish.get().is_none() || attempt == 2 {
                        self.health.mark_dead(format!("{e}"));
                        return Err(e);
                    }
                    self.recover(generation, failed.as_ref(), &e)?;
                    if !c.op.is_idempotent(c.flags) {
                        return Err(io::Error::new(
                            e.kind(),
                            crate::error::OutcomeUnknown(format!(
                                "{} {}: the PoV session failed over while it was in flight; whether it ran is unknown ({e})",
                                crate::error::op_name(c.op),
                                c.target
                            )),
                        ));
                    }
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::NotConnected, "PoV session lost"))
    }

    /// One round trip on channel `ch` of incarnation `inc` (`handle`: the device's
    /// file handle for the call and its SDK location key); calls `f` (taken) on success.
    fn exchange<R, F>(
        &self,
        ch: &mut Channel,
        inc: &Incarnation,
        c: &Call<'_>,
        (handle, location): (u64, u64),
        f: &mut Option<F>,
    ) -> Result<R, Failure>
    where
        F: FnOnce(&ResponseHeader, &[u8]) -> io::Result<R>,
    {
        let geometry = self.device.geometry();
        let tracer = self.tracer.read().unwrap_or_else(|e| e.into_inner()).clone();
        let started = Instant::now();
        let request_id = ch.take_request_id(&self.next_request);
        let hdr = RequestHeader {
            op: c.op,
            queue_id: ch.queue_id,
            pid: self.pid,
            session_id: inc.session_id,
            request_id,
            file_handle: handle,
            offset: c.offset,
            length: c.length,
            flags: if tracer.is_some() { c.flags | pov_proto::io::flags::TRACE } else { c.flags },
            payload_len: c.payload.len() as u32,
            hint: SdkHint { location_key: location, ..SdkHint::default() },
        };
        let wlen = encode_request(&mut ch.req, &hdr, c.payload);
        inc.keys.seal_request(ch.queue_id, request_id, &mut ch.req[..HEADER_SIZE + c.payload.len()], REQUEST_TAG_OFFSET);
        let mut rlen = response_read_len(c.expect);
        let req_slot = geometry.request_slot(ch.queue_id);
        let joint = self.device.joint_round_trip();
        let resp_slot =
            if joint { geometry.response_window(ch.queue_id, request_id) } else { geometry.response_slot(ch.queue_id) };
        let t = self.device.transport();
        // A transport error is a lost session only when the device is gone or silent;
        // an IO error completion is an error for this call.
        let lost = |e: io::Error, t: &Arc<dyn BlockTransport>| {
            if crate::error::io_device_gone(&e) {
                Failure::Lost(e, Some(t.clone()))
            } else {
                Failure::Other(e)
            }
        };
        let mut ops = [BlockOp::write(req_slot, &mut ch.req, wlen), BlockOp::read(resp_slot, &mut ch.resp, rlen)];
        if joint { t.submit_joint(Lane::Data(ch.index), &mut ops) } else { t.submit(Lane::Data(ch.index), &mut ops) }
            .map_err(|e| lost(e, &t))?;
        let decode = |b: &IoBuf| {
            ResponseHeader::decode(&b[..HEADER_SIZE])
                .map_err(|e| Failure::Lost(protocol_error(format!("queue {}: bad response header: {e}", ch.queue_id)), None))
        };
        let mut resp = decode(&ch.resp)?;
        for _ in 0..WINDOW_REREADS {
            // An older response in the window: the READ gave up waiting for this
            // request before it arrived (see the const); the request is in, so reading
            // again waits for its answer.
            if !joint || resp.request_id >= request_id || resp.queue_id != ch.queue_id {
                break;
            }
            t.submit(Lane::Data(ch.index), &mut [BlockOp::read(resp_slot, &mut ch.resp, rlen)]).map_err(|e| lost(e, &t))?;
            resp = decode(&ch.resp)?;
        }
        if resp.request_id != request_id || resp.queue_id != ch.queue_id {
            return Err(Failure::Lost(
                protocol_error(format!(
                    "response mismatch on queue {}: sent request {request_id}, got response to request {} of queue {}",
                    ch.queue_id, resp.request_id, resp.queue_id
                )),
                None,
            ));
        }
        let total = HEADER_SIZE + resp.payload_len as usize;
        if total > rlen {
            // The response is larger than we guessed: it stays readable until the next
            // request on this queue, so fetch the rest.
            let end = round_up(total, IO_ALIGN).min(SLOT_SIZE as usize);
            let mut op = BlockOp {
                dir: Dir::Read,
                dev_offset: resp_slot + rlen as u64,
                buf: &mut ch.resp,
                buf_offset: rlen,
                len: end - rlen,
            };
            t.submit(Lane::Data(ch.index), std::slice::from_mut(&mut op)).map_err(|e| lost(e, &t))?;
            rlen = end;
        }
        // Nothing of the response counts before it authenticates (its status neither).
        inc.keys
            .open_response(ch.queue_id, request_id, &mut ch.resp[..total], HEADER_SIZE, RESPONSE_TAG_OFFSET, self.protection)
            .map_err(|e| {
                Failure::Lost(protocol_error(format!("queue {}: response to request {request_id}: {e}", ch.queue_id)), None)
            })?;
        if let Some(t) = tracer {
            let traced = resp.flags & pov_proto::io::flags::TRACED != 0;
            t(&crate::trace::RequestTrace {
                op: c.op,
                target: c.target.to_string(),
                status: resp.status,
                bytes: match c.op {
                    Op::Read => u64::from(resp.payload_len),
                    op if op.carries_data() => c.payload.len() as u64,
                    _ => 0,
                },
                host: started.elapsed(),
                dpu: traced.then(|| pov_proto::trace::Trace::decode(&ch.resp[..HEADER_SIZE])).flatten(),
            });
        }
        if !resp.status.is_ok() {
            let e = status_error(resp.status, c.op, c.target);
            if resp.status == Status::BadSession {
                return Err(Failure::Lost(e, None));
            }
            return Err(Failure::Other(e));
        }
        debug_assert!(total <= rlen);
        let f = f.take().ok_or_else(|| Failure::Other(io::Error::other("response handler used twice")))?;
        f(&resp, &ch.resp[HEADER_SIZE..total]).map_err(Failure::Other)
    }
}

/// Encodes `hdr` and `payload` into the start of a request buffer and returns the
/// number of bytes to WRITE: header + payload rounded up to a whole sector (the padding
/// is zeroed).
///
/// Panics if `buf` is shorter than that (callers size buffers to `SLOT_SIZE`).
pub(crate) fn encode_request(buf: &mut [u8], hdr: &RequestHeader, payload: &[u8]) -> usize {
    let len = round_to_sector(HEADER_SIZE + payload.len());
    hdr.encode_into(&mut buf[..HEADER_SIZE]);
    buf[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
    buf[HEADER_SIZE + payload.len()..len].fill(0);
    len
}

/// Bytes to READ from the response slot when `expect` payload bytes are expected: the
/// header plus the payload rounded up to 4 KiB (so that a follow-up read of the rest
/// starts 4 KiB aligned), never more than the slot.
pub(crate) fn response_read_len(expect: usize) -> usize {
    round_up(HEADER_SIZE + expect.min(MAX_IO_BYTES as usize), IO_ALIGN).min(SLOT_SIZE as usize)
}

/// Splits an IO of `len` bytes at file offset `offset` into pieces of at most `max`
/// bytes: `(file offset, range within the caller's buffer)`.
pub(crate) fn split(offset: u64, len: usize, max: usize) -> impl Iterator<Item = (u64, Range<usize>)> {
    assert!(max > 0);
    (0..len).step_by(max).map(move |start| (offset + start as u64, start..(start + max).min(len)))
}

/// Runs `f` on every item, on up to `workers` threads (the calling thread is one of
/// them), and returns the results in item order. After the first error, items not yet
/// started are skipped (their result is `None`); since items start in order, a `None`
/// always comes after an `Err`.
pub(crate) fn run_parallel<P: Send, T: Send>(
    items: Vec<P>,
    workers: usize,
    f: impl Fn(P) -> io::Result<T> + Sync,
) -> Vec<Option<io::Result<T>>> {
    let n = items.len();
    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        let mut out: Vec<Option<io::Result<T>>> = Vec::with_capacity(n);
        let mut failed = false;
        for item in items {
            if failed {
                out.push(None);
                continue;
            }
            let r = f(item);
            failed = r.is_err();
            out.push(Some(r));
        }
        return out;
    }
    let slots: Vec<Mutex<Option<P>>> = items.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let results: Vec<Mutex<Option<io::Result<T>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        if i >= n || abort.load(Ordering::Relaxed) {
            return;
        }
        let Some(item) = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take() else { continue };
        let r = f(item);
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
    results.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).collect()
}

/// Converts a caller's path into the form sent on the wire (`/` + normalized path).
///
/// Errors: the status [`pov_proto::path::normalize`] gives (`Permission` for `..`,
/// `NameTooLong`, `Invalid`), as an `io::Error` for `op`.
pub(crate) fn wire_path(path: &str, op: Op) -> io::Result<String> {
    let n = pov_proto::path::normalize(path.as_bytes()).map_err(|s| status_error(s, op, path))?;
    let wire = format!("/{n}");
    if wire.len() > MAX_PATH {
        return Err(status_error(Status::NameTooLong, op, path));
    }
    Ok(wire)
}

/// `dir` + `/` + `name`.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Decodes the Stat record of a Stat response.
///
/// Errors: `InvalidData` if the record is malformed.
pub(crate) fn decode_stat(p: &[u8]) -> io::Result<Stat> {
    Stat::decode(p).map_err(|e| protocol_error(format!("stat record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::LIST_READ_BYTES;

    #[test]
    fn request_encoding_pads_to_a_sector() {
        let hdr = RequestHeader {
            op: Op::Write,
            queue_id: 9,
            pid: 77,
            session_id: 5,
            request_id: 42,
            file_handle: 3,
            offset: 4096,
            length: 0,
            flags: 0,
            payload_len: 3,
            hint: SdkHint::default(),
        };
        let mut buf = vec![0xeeu8; 4096];
        let n = encode_request(&mut buf, &hdr, b"abc");
        assert_eq!(n, 1024);
        assert_eq!(RequestHeader::decode(&buf[..512]).unwrap(), hdr);
        assert_eq!(&buf[512..515], b"abc");
        assert!(buf[515..1024].iter().all(|&b| b == 0), "padding zeroed");
        assert_eq!(buf[1024], 0xee, "nothing written past the IO");
        assert_eq!(encode_request(&mut buf, &RequestHeader { payload_len: 0, ..hdr.clone() }, b""), 512);
        let big = vec![1u8; MAX_IO_BYTES as usize];
        let mut slot = vec![0u8; SLOT_SIZE as usize];
        let n = encode_request(&mut slot, &RequestHeader { payload_len: MAX_IO_BYTES, ..hdr }, &big);
        assert_eq!(n, 512 + MAX_IO_BYTES as usize);
        assert!(n as u64 <= SLOT_SIZE);
    }

    #[test]
    fn response_reads_are_aligned_and_bounded() {
        assert_eq!(response_read_len(0), 4096);
        assert_eq!(response_read_len(32), 4096);
        assert_eq!(response_read_len(4096 - 512), 4096);
        assert_eq!(response_read_len(4096), 8192);
        assert_eq!(response_read_len(MAX_IO_BYTES as usize), SLOT_SIZE as usize);
        assert_eq!(response_read_len(usize::MAX / 2), SLOT_SIZE as usize);
        assert_eq!(response_read_len(LIST_READ_BYTES - HEADER_SIZE), LIST_READ_BYTES);
    }

    #[test]
    fn splitting_never_exceeds_one_mib() {
        let m = MAX_IO_BYTES as usize;
        assert_eq!(split(0, 0, m).count(), 0);
        assert_eq!(split(10, 5, m).collect::<Vec<_>>(), vec![(10, 0..5)]);
        assert_eq!(split(0, m, m).collect::<Vec<_>>(), vec![(0, 0..m)]);
        assert_eq!(split(7, m + 1, m).collect::<Vec<_>>(), vec![(7, 0..m), (7 + m as u64, m..m + 1)]);
        let len = 5 * m + 12345;
        let pieces: Vec<_> = split(1 << 40, len, m).collect();
        assert_eq!(pieces.len(), 6);
        let mut expect = 0;
        for (off, r) in &pieces {
            assert!(r.len() <= m && !r.is_empty());
            assert_eq!(r.start, expect);
            assert_eq!(*off, (1 << 40) + r.start as u64);
            expect = r.end;
        }
        assert_eq!(expect, len);
    }

    #[test]
    fn parallel_runs_keep_order_and_stop_after_errors() {
        for workers in [1, 3, 8] {
            let r = run_parallel((0..20u32).collect(), workers, |i| Ok(i * 2));
            let v: Vec<u32> = r.into_iter().map(|x| x.unwrap().unwrap()).collect();
            assert_eq!(v, (0..20).map(|i| i * 2).collect::<Vec<_>>(), "workers {workers}");

            let r = run_parallel((0..50u32).collect(), workers, |i| if i == 5 { Err(io::Error::other("boom")) } else { Ok(i) });
            assert_eq!(r.len(), 50);
            assert!(r[5].as_ref().unwrap().is_err());
            let first_none = r.iter().position(Option::is_none).unwrap_or(50);
            assert!(first_none > 5, "skipped items come after the error");
            assert!(r[..5].iter().all(|x| matches!(x, Some(Ok(_)))));
        }
        assert!(run_parallel(Vec::<u8>::new(), 4, |_| Ok(())).is_empty());
    }

    #[test]
    fn paths_are_normalized_and_checked() {
        assert_eq!(wire_path("a//b/./c", Op::Open).unwrap(), "/a/b/c");
        assert_eq!(wire_path("/", Op::List).unwrap(), "/");
        assert_eq!(wire_path("", Op::List).unwrap(), "/");
        let e = wire_path("/a/../../etc", Op::Open).unwrap_err();
        assert_eq!(crate::status_of(&e), Some(Status::Permission));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let long = format!("/{}", "x".repeat(300));
        assert_eq!(crate::status_of(&wire_path(&long, Op::Open).unwrap_err()), Some(Status::NameTooLong));
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(join("/", "b"), "/b");
    }
}
