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

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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
use crate::transport::{BlockOp, Dir, Lane};

/// One PoV queue with its request and response buffers (each [`SLOT_SIZE`] bytes,
/// allocated by the device's transport).
pub(crate) struct Channel {
    /// Index within the session (0-based); selects the transport lane.
    index: usize,
    /// Global queue ID.
    queue_id: u32,
    req: IoBuf,
    resp: IoBuf,
}

impl Channel {
    /// The channel of queue `queue_id`, the `index`-th queue of its session, with
    /// buffers of at least [`SLOT_SIZE`] bytes from the device's transport.
    pub(crate) fn new(index: usize, queue_id: u32, req: IoBuf, resp: IoBuf) -> Channel {
        debug_assert!(req.len() >= SLOT_SIZE as usize && resp.len() >= SLOT_SIZE as usize);
        Channel { index, queue_id, req, resp }
    }
}

struct Pool {
    free: Vec<Channel>,
    closed: bool,
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
}

impl<'a> Call<'a> {
    /// A request whose payload is a path.
    pub(crate) fn path(op: Op, path: &'a str, expect: usize) -> Call<'a> {
        Call { op, handle: 0, offset: 0, length: 0, flags: 0, payload: path.as_bytes(), expect, target: path }
    }

    /// A request about an open file.
    pub(crate) fn handle(op: Op, handle: u64, target: &'a str) -> Call<'a> {
        Call { op, handle, offset: 0, length: 0, flags: 0, payload: &[], expect: 0, target }
    }
}

/// The IO queues of one session and the request round trip on them. `Send + Sync`:
/// each call leases its own queue, so up to [`Engine::queue_count`] calls run at once.
pub(crate) struct Engine {
    device: Device,
    pid: u32,
    session_id: u64,
    keys: Arc<SessionKeys>,
    protection: Protection,
    queue_ids: Vec<u32>,
    pool: Mutex<Pool>,
    returned: Condvar,
    next_request: AtomicU64,
    health: Arc<Health>,
}

/// A channel taken from the pool for one round trip; returned on drop.
struct Lease<'a> {
    engine: &'a Engine,
    ch: Option<Channel>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(ch) = self.ch.take() {
            self.engine.pool().free.push(ch);
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
        Engine {
            device,
            pid,
            session_id,
            keys,
            protection,
            queue_ids,
            pool: Mutex::new(Pool { free: channels, closed: false }),
            returned: Condvar::new(),
            next_request: AtomicU64::new(1),
            health: Arc::new(Health::default()),
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

    /// Global IDs of the queues, in index order.
    pub(crate) fn queue_ids(&self) -> &[u32] {
        &self.queue_ids
    }

    /// Number of IO queues (the most requests in flight at once).
    pub(crate) fn queue_count(&self) -> usize {
        self.queue_ids.len()
    }

    /// Process ID sent in every request header.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes `n` request IDs out of the sequence for someone else's use; returns the
    /// first.
    pub(crate) fn reserve_request_ids(&self, n: u64) -> u64 {
        self.next_request.fetch_add(n, Ordering::Relaxed)
    }

    /// The request ID the next call will use (for unique names; not reserved).
    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_request.load(Ordering::Relaxed)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses new calls and waits until every leased queue is back (requests in
    /// flight finish first).
    pub(crate) fn drain(&self) {
        let mut p = self.pool();
        p.closed = true;
        while p.free.len() < self.queue_ids.len() {
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
            if let Some(ch) = p.free.pop() {
                return Ok(Lease { engine: self, ch: Some(ch) });
            }
            p = self.returned.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sends one request on a free queue and hands the response header and payload to
    /// `f`. A non-Ok status becomes an error (see [`status_error`]).
    ///
    /// Errors: `InvalidInput` for a payload or length over 1 MiB, `NotConnected` once
    /// the session is closed or lost, transport errors, `InvalidData` for a response
    /// that does not decode or does not answer this request, the device's status, or
    /// whatever `f` returns.
    pub(crate) fn call<R>(&self, c: &Call<'_>, f: impl FnOnce(&ResponseHeader, &[u8]) -> io::Result<R>) -> io::Result<R> {
        if c.payload.len() > MAX_IO_BYTES as usize || c.length > MAX_IO_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "PoV request over 1 MiB"));
        }
        let mut lease = self.acquire()?;
        let ch = lease.ch.as_mut().expect("leased channel");
        let geometry = self.device.geometry();
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let hdr = RequestHeader {
            op: c.op,
            queue_id: ch.queue_id,
            pid: self.pid,
            session_id: self.session_id,
            request_id,
            file_handle: c.handle,
            offset: c.offset,
            length: c.length,
            flags: c.flags,
            payload_len: c.payload.len() as u32,
            hint: SdkHint::default(),
        };
        let wlen = encode_request(&mut ch.req, &hdr, c.payload);
        self.keys.seal_request(ch.queue_id, request_id, &mut ch.req[..HEADER_SIZE + c.payload.len()], REQUEST_TAG_OFFSET);
        let mut rlen = response_read_len(c.expect);
        let req_slot = geometry.request_slot(ch.queue_id);
        let resp_slot = geometry.response_slot(ch.queue_id);
        let t = self.device.transport();
        t.submit(
            Lane::Data(ch.index),
            &mut [BlockOp::write(req_slot, &mut ch.req, wlen), BlockOp::read(resp_slot, &mut ch.resp, rlen)],
        )?;
        let resp = ResponseHeader::decode(&ch.resp[..HEADER_SIZE])
            .map_err(|e| protocol_error(format!("queue {}: bad response header: {e}", ch.queue_id)))?;
        if resp.request_id != request_id || resp.queue_id != ch.queue_id {
            return Err(protocol_error(format!(
                "response mismatch on queue {}: sent request {request_id}, got response to request {} of queue {}",
                ch.queue_id, resp.request_id, resp.queue_id
            )));
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
            t.submit(Lane::Data(ch.index), std::slice::from_mut(&mut op))?;
            rlen = end;
        }
        // Nothing of the response counts before it authenticates (its status neither).
        self.keys
            .open_response(ch.queue_id, request_id, &mut ch.resp[..total], HEADER_SIZE, RESPONSE_TAG_OFFSET, self.protection)
            .map_err(|e| protocol_error(format!("queue {}: response to request {request_id}: {e}", ch.queue_id)))?;
        if !resp.status.is_ok() {
            if resp.status == Status::BadSession {
                self.health.mark_dead(format!("the device answered {:?} to a {:?} request", resp.status, c.op));
            }
            return Err(status_error(resp.status, c.op, c.target));
        }
        debug_assert!(total <= rlen);
        f(&resp, &ch.resp[HEADER_SIZE..total])
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
