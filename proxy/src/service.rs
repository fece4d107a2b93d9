//! Request execution, free of any transport: one frame body in, one response frame out.
//!
//! [`Service::handle_frame`] decodes a `pov_proto::wire` proxy request, re-checks the
//! tenant and path, runs the operation on the [`Backend`] and encodes the
//! [`ProxyResponse`] (tag echoed). Every per-request failure is a response status,
//! never an `Err` and never a panic. A frame that does not decode is answered with
//! the status of its [`pov_proto::DecodeError`] and the tag found at body bytes
//! 8..16 (and operation at 6..8); a frame too short to hold a tag is dropped.
//!
//! Results per operation ([`Op`]):
//!
//! | op | result | response payload |
//! |---|---|---|
//! | Open, Close, Remove, Fsync, Stat | 0 | Stat: one 32-byte [`pov_proto::entry::Stat`] |
//! | Mkdir, Rename, SetAttr | 0 | — (Rename: the request payload is the destination path) |
//! | StatFs | 0 | one 48-byte [`pov_proto::entry::StatFs`] |
//! | Read | bytes read | the data |
//! | Write | bytes written | — |
//! | Append | offset the data landed at | — |
//! | Truncate | new size | — |
//! | List | number of entries returned | [`pov_proto::entry::DirEntry`] records, [`flags::MORE`] if entries remain |
//! | VolumeOpen | volume size (bytes) | — |
//! | VolumeRead | bytes read (= `length`) | the data |
//! | VolumeWrite | bytes written | — |
//! | VolumeFlush | 0 | — |
//!
//! Volume operations name the volume in the tenant field and carry an empty path
//! (else [`Status::Invalid`]); they are counted under the volume's name.
//!
//! **Who may ask.** A service carries the [`Access`] of its connection's peer
//! ([`Service::set_access`]; [`Access::Open`] unless set). A request the peer may not
//! make (its tenant or volume is not in the peer's grant, `crate::access`) is
//! answered [`Status::Permission`] before anything else is looked at, counted in
//! `denied`, and never reaches the backend. [`Service::refuse`] is the same check for
//! requests that run elsewhere (the worker pool of a blocking backend).

use crate::access::Access;
use crate::backend::{resolve, Backend};
use crate::stats::{ProxyStats, TenantCache};
use pov_proto::entry::STAT_SIZE;
use pov_proto::io::{flags, Op};
use pov_proto::trace::nanos;
use pov_proto::wire::{ProxyRequest, ProxyResponse, LEN_PREFIX, PROXY_RESPONSE_HEADER};
use pov_proto::{Status, MAX_IO_BYTES};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Outcome of one operation (the response fields besides op, tag and payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Status of the operation.
    pub status: Status,
    /// Result field (see the module table).
    pub result: u64,
    /// Response flags ([`flags::MORE`]).
    pub flags: u32,
}

impl Completion {
    fn ok(result: u64) -> Completion {
        Completion { status: Status::Ok, result, flags: 0 }
    }

    fn err(status: Status) -> Completion {
        Completion { status, result: 0, flags: 0 }
    }
}

/// The most bytes the answer to the request frame `body` (length prefix stripped) can
/// take, its length prefix included: the response header, plus `length` (at most
/// [`MAX_IO_BYTES`]) for reads, [`MAX_IO_BYTES`] for a listing and one
/// [`pov_proto::entry::Stat`] for a stat. Read from the fixed header fields alone
/// (operation at bytes 6..8, length at 24..28), without decoding the frame; a body
/// too short or with an unknown operation is bounded by the bare header (it gets an
/// error answer or none). Used to reserve room for answers before a request runs
/// (back-pressure, `crate::server`).
pub fn answer_bound(body: &[u8]) -> usize {
    let base = LEN_PREFIX + PROXY_RESPONSE_HEADER;
    if body.len() < 28 {
        return base;
    }
    let op = u16::from_le_bytes([body[6], body[7]]);
    let length = u32::from_le_bytes([body[24], body[25], body[26], body[27]]).min(MAX_IO_BYTES) as usize;
    match Op::from_u16(op) {
        Ok(Op::Read | Op::VolumeRead) => base + length,
        Ok(Op::List) => base + MAX_IO_BYTES as usize,
        Ok(Op::Stat) => base + STAT_SIZE,
        _ => base,
    }
}

/// How many undecodable frames per connection are logged at `warn` (later ones at
/// `debug`), so a misbehaving peer cannot flood the log.
const BAD_FRAME_WARNINGS: u32 = 10;
/// How many refused requests per connection are logged at `warn` (later ones at
/// `debug`).
const DENIED_WARNINGS: u32 = 10;

/// Executes requests for one connection on one backend channel.
pub struct Service {
    backend: Box<dyn Backend>,
    tenants: TenantCache,
    payload: Vec<u8>,
    bad_frames_warned: u32,
    access: Access,
    denied_warned: u32,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("backend", &self.backend.kind()).finish()
    }
}

impl Service {
    /// A service running requests on `backend`, counting them in `stats`, for a peer
    /// trusted with every tenant ([`Access::Open`]; see [`Service::set_access`]).
    pub fn new(backend: Box<dyn Backend>, stats: Arc<ProxyStats>) -> Service {
        Service {
            backend,
            tenants: TenantCache::new(stats),
            payload: Vec::new(),
            bad_frames_warned: 0,
            access: Access::Open,
            denied_warned: 0,
            cluster: None,
        }
    }

    /// Sets what the connection's peer may do; every later request is checked.
    pub fn set_access(&mut self, access: Access) {
        self.access = access;
    }

    /// Makes the service a member of `cluster` (see [`Service::route_check`]).
    pub fn set_cluster(&mut self, cluster: Option<Arc<crate::cluster::Cluster>>) {
        self.cluster = cluster;
    }

    /// For a cluster member: the complete [`Status::Redirect`] response frame if
    /// `body` was routed with a stale table to a slot another member owns (it must not
    /// run; [`crate::cluster::Cluster::check`]). `None`: run it.
    pub fn route_check(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let answer = self.cluster.as_ref()?.check(body)?;
        self.tenants.server().frames.fetch_add(1, Ordering::Relaxed);
        Some(answer)
    }

    /// The peer's access.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Checks a frame body that will run elsewhere: if it decodes and the peer may not
    /// make it, counts it and returns the complete `Permission` response frame (the
    /// request must not run). `None` otherwise (allowed, or not decodable: whoever
    /// runs it answers that).
    pub fn refuse(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        if self.access.is_open() {
            return None;
        }
        match ProxyRequest::decode(body) {
            Ok(r) if !self.access.allows(&r.req) => {
                let mut out = Vec::new();
                self.answer_denied(&r.req, &mut out);
                Some(out)
            }
            _ => None,
        }
    }

    /// The server-wide counters this service adds to.
    pub fn stats(&self) -> &crate::stats::ProxyStats {
        self.tenants.server()
    }

    /// `true` if frame body `body` decodes far enough to show a request that changes
    /// data ([`Op::mutates`]): what must not run once the DPU has given up on it.
    pub fn mutates(body: &[u8]) -> bool {
        if body.len() < 32 {
            return false;
        }
        let op = u16::from_le_bytes([body[6], body[7]]);
        let fl = u32::from_le_bytes([body[28], body[29], body[30], body[31]]);
        Op::from_u16(op).is_ok_and(|o| o.mutates(fl))
    }

    /// Answers `body` at once if it is a liveness probe ([`Op::Ping`]): writes the
    /// `Ok` response frame into `out` and returns `true`. Any peer that reached the
    /// service may probe (the answer carries nothing); a ping never reaches the backend
    /// or the worker pool, so it measures the proxy and the link, not the backend.
    pub fn answer_ping(&mut self, body: &[u8], out: &mut Vec<u8>) -> bool {
        if body.len() < 16 || u16::from_le_bytes([body[6], body[7]]) != Op::Ping as u16 {
            return false;
        }
        let Ok(r) = ProxyRequest::decode(body) else { return false };
        self.tenants.server().pings.fetch_add(1, Ordering::Relaxed);
        ProxyResponse { op: Op::Ping as u16, tag: r.req.tag, status: Status::Ok, result: 0, flags: 0 }.encode_frame(&[], out);
        true
    }

    fn answer_denied(&mut self, req: &ProxyRequest, out: &mut Vec<u8>) {
        let stats = self.tenants.server();
        stats.frames.fetch_add(1, Ordering::Relaxed);
        stats.denied.fetch_add(1, Ordering::Relaxed);
        let level = if self.denied_warned < DENIED_WARNINGS { log::Level::Warn } else { log::Level::Debug };
        self.denied_warned = self.denied_warned.saturating_add(1);
        let what = if req.op.is_volume() { "volume" } else { "tenant" };
        log::log!(level, "refused {:?} for {what} {:?} (tag {:#x}): {}", req.op, req.tenant, req.tag, self.access);
        ProxyResponse { op: req.op as u16, tag: req.tag, status: Status::Permission, result: 0, flags: 0 }.encode_frame(&[], out);
    }

    /// Handles one frame body (length prefix stripped). Writes the complete response
    /// frame (length prefix included) into `out` and returns `true`, or returns
    /// `false` when the frame is dropped without an answer (too short to carry a tag).
    pub fn handle_frame(&mut self, body: &[u8], out: &mut Vec<u8>) -> bool {
        self.handle_frame_at(body, std::time::Instant::now(), out)
    }

    /// [`Service::handle_frame`] for a frame received at `received` (before it waited
    /// for a worker): a traced request's answer carries the proxy's times from then
    /// ([`pov_proto::trace::ProxyTrace`]).
    pub fn handle_frame_at(&mut self, body: &[u8], received: std::time::Instant, out: &mut Vec<u8>) -> bool {
        let r = match ProxyRequest::decode(body) {
            Ok(r) => r,
            Err(e) => return self.answer_bad_frame(body, e, out),
        };
        if !self.access.allows(&r.req) {
            self.answer_denied(&r.req, out);
            return true;
        }
        let stats = self.tenants.server();
        stats.frames.fetch_add(1, Ordering::Relaxed);
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        let started = std::time::Instant::now();
        let c = self.execute(&r.req, r.payload, &mut payload);
        let req = &r.req;
        let trace = (req.trace || req.flags & flags::TRACE != 0).then(|| {
            let done = std::time::Instant::now();
            let t = pov_proto::trace::ProxyTrace {
                proxy_ns: nanos(done.saturating_duration_since(received)),
                queue_ns: nanos(started.saturating_duration_since(received)),
                backend_ns: nanos(done.saturating_duration_since(started)),
            };
            log::info!(
                target: "pov_proxy::trace",
                "session {:#x} tenant {} {:?} {:?} offset {} length {} payload {} -> {} result {} flags {:#x}: \
                 queue {} µs, backend {} µs, proxy {} µs",
                req.session_id, req.tenant, req.op, req.path, req.offset, req.length, r.payload.len(),
                c.status, c.result, c.flags, t.queue_ns / 1000, t.backend_ns / 1000, t.proxy_ns / 1000
            );
            t
        });
        ProxyResponse { op: req.op as u16, tag: req.tag, status: c.status, result: c.result, flags: c.flags }
            .encode_frame_traced(trace.as_ref(), &payload, out);
        self.payload = payload;
        true
    }

    fn answer_bad_frame(&mut self, body: &[u8], e: pov_proto::DecodeError, out: &mut Vec<u8>) -> bool {
        let stats = self.tenants.server();
        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        let level = if self.bad_frames_warned < BAD_FRAME_WARNINGS { log::Level::Warn } else { log::Level::Debug };
        self.bad_frames_warned = self.bad_frames_warned.saturating_add(1);
        if body.len() < 16 {
            stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
            log::log!(level, "dropping a {}-byte frame that does not decode ({e}) and carries no tag", body.len());
            return false;
        }
        let op = u16::from_le_bytes([body[6], body[7]]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&body[8..16]);
        let tag = u64::from_le_bytes(tag);
        log::log!(level, "bad frame (tag {tag:#x}, {} bytes): {e}", body.len());
        ProxyResponse { op, tag, status: e.status(), result: 0, flags: 0 }.encode_frame(&[], out);
        true
    }

    /// Runs one decoded request. `out` (empty on entry) receives the response payload;
    /// it is left empty when the status is not `Ok`. Counts the request for its
    /// tenant.
    pub fn execute(&mut self, req: &ProxyRequest, payload: &[u8], out: &mut Vec<u8>) -> Completion {
        let tenant_ok = pov_proto::path::valid_tenant_name(&req.tenant);
        let start = std::time::Instant::now();
        // Volume operations name the volume in the tenant field: counted per volume.
        if tenant_ok {
            self.tenants.of(req).add_in_flight(1);
        }
        let c = match resolve(&req.tenant, &req.path).and_then(|path| granted(req, path)) {
            Ok(path) => self.run(req, &path, payload, out),
            Err(s) => Completion::err(s),
        };
        if c.status != Status::Ok {
            out.clear();
        }
        if tenant_ok {
            let (read, written) = if c.status != Status::Ok {
                (0, 0)
            } else if matches!(req.op, Op::Read | Op::VolumeRead) {
                (out.len() as u64, 0)
            } else if req.op.carries_data() {
                (0, payload.len() as u64)
            } else {
                (0, 0)
            };
            let t = self.tenants.of(req);
            t.record(req.op, c.status, read, written, start.elapsed());
            t.add_in_flight(-1);
        }
        c
    }

    fn run(&mut self, req: &ProxyRequest, path: &str, payload: &[u8], out: &mut Vec<u8>) -> Completion {
        if !req.op.carries_data() && req.op != Op::Rename && !payload.is_empty() {
            return Completion::err(Status::Invalid);
        }
        let t = req.tenant.as_str();
        let b = self.backend.as_mut();
        let sync = req.flags & flags::SYNC != 0;
        if req.op.is_volume() && !path.is_empty() {
            return Completion::err(Status::Invalid);
        }
        let r: Result<Completion, Status> = match req.op {
            // Normally answered by answer_ping before it gets here.
            Op::Ping => Ok(Completion::ok(0)),
            // result: the file's location key (the DPU routes the handle's IO by it).
            Op::Open => b.open(t, path, req.flags).map(Completion::ok),
            // The proxy keeps no handles: nothing to release.
            Op::Close => Ok(Completion::ok(0)),
            Op::Read => {
                if req.length > MAX_IO_BYTES {
                    return Completion::err(Status::TooLarge);
                }
                out.resize(req.length as usize, 0);
                b.read(t, path, req.offset, out).map(|n| {
                    out.truncate(n);
                    Completion::ok(n as u64)
                })
            }
            Op::Write => b.write(t, path, req.offset, payload, sync).map(|n| Completion::ok(n as u64)),
            Op::Append => b.append(t, path, payload, sync).map(Completion::ok),
            Op::Truncate => b.truncate(t, path, req.offset).map(Completion::ok),
            Op::Stat => b.stat(t, path).map(|s| {
                out.extend_from_slice(&s.encode());
                Completion::ok(0)
            }),
            Op::List => b.list(t, path, req.offset, MAX_IO_BYTES as usize).map(|l| {
                for e in &l.entries {
                    e.encode_into(out);
                }
                Completion { status: Status::Ok, result: l.entries.len() as u64, flags: if l.more { flags::MORE } else { 0 } }
            }),
            Op::Remove => b.remove(t, path).map(|()| Completion::ok(0)),
            Op::Fsync => b.fsync(t, path).map(|()| Completion::ok(0)),
            Op::Mkdir => {
                let mode = (req.flags & flags::SET_MODE != 0).then_some(req.length);
                b.mkdir(t, path, mode, req.flags & flags::PARENTS != 0).map(|()| Completion::ok(0))
            }
            // The destination travels as the payload; it is held to the same checks
            // as the source (normalized, inside the grant).
            Op::Rename => pov_proto::path::normalize(payload)
                .and_then(|to| granted(req, to))
                .and_then(|to| b.rename(t, path, &to, req.flags & flags::EXCL == 0, sync))
                .map(|()| Completion::ok(0)),
            Op::SetAttr => {
                let mode = (req.flags & flags::SET_MODE != 0).then_some(req.length);
                let mtime = (req.flags & flags::SET_MTIME != 0).then_some(req.offset);
                b.set_attr(t, path, mode, mtime).map(|()| Completion::ok(0))
            }
            Op::StatFs => b.statfs(t, path).map(|f| {
                out.extend_from_slice(&f.encode());
                Completion::ok(0)
            }),
            Op::VolumeOpen => b.volume_open(t, req.offset, req.length, req.flags & flags::CREATE != 0).map(Completion::ok),
            Op::VolumeRead => {
                if req.length > MAX_IO_BYTES {
                    return Completion::err(Status::TooLarge);
                }
                out.resize(req.length as usize, 0);
                b.volume_read(t, req.offset, out).map(|n| {
                    out.truncate(n);
                    Completion::ok(n as u64)
                })
            }
            Op::VolumeWrite => b.volume_write(t, req.offset, payload, sync).map(|n| Completion::ok(n as u64)),
            Op::VolumeFlush => b.volume_flush(t).map(|()| Completion::ok(0)),
        };
        r.unwrap_or_else(Completion::err)
    }
}

/// Re-checks the session's grant (read-only, path prefix) that the DPU enforced
/// already: a DPU that is wrong or compromised cannot widen a session's rights here
/// (docs/security.md). `path` is normalized; so must the grant's prefix be, or the
/// request is `Invalid`. A refused request is `Permission`.
fn granted(req: &ProxyRequest, path: String) -> Result<String, Status> {
    let g = &req.grant;
    if !g.prefix.is_empty() && pov_proto::path::normalize(g.prefix.as_bytes()).ok().as_deref() != Some(g.prefix.as_str()) {
        return Err(Status::Invalid);
    }
    if g.allows(req.op, req.flags, &path) {
        Ok(path)
    } else {
        Err(Status::Permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use pov_proto::entry::{DirEntry, Kind, Stat};

    struct Fixture {
        _dir: tempfile::TempDir,
        svc: Service,
        stats: Arc<ProxyStats>,
        tag: u64,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let b = LocalBackend::open(dir.path()).unwrap();
        Fixture { _dir: dir, svc: Service::new(Box::new(b), stats.clone()), stats, tag: 0 }
    }

    fn req(op: Op, tenant: &str, path: &str) -> ProxyRequest {
        ProxyRequest { session_id: 1, ..ProxyRequest::new(op, tenant, path) }
    }

    impl Fixture {
        /// Sends `r` through the frame path; returns the decoded response and payload.
        fn call(&mut self, mut r: ProxyRequest, payload: &[u8]) -> (ProxyResponse, Vec<u8>) {
            self.tag += 1;
            r.tag = self.tag;
            let mut f = Vec::new();
            r.encode_frame(payload, &mut f).unwrap();
            let mut out = Vec::new();
            assert!(self.svc.handle_frame(&f[4..], &mut out));
            assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()) as usize, out.len() - 4);
            let (resp, p) = ProxyResponse::decode(&out[4..]).unwrap();
            assert_eq!(resp.tag, self.tag, "tag echoed");
            assert_eq!(resp.op, r.op as u16, "op echoed");
            (resp, p.to_vec())
        }
    }

    #[test]
    fn grants_are_rechecked() {
        use pov_proto::io::Grant;
        let mut fx = fixture();
        let mut r = req(Op::Open, "t", "logs/a/f");
        r.flags = flags::CREATE | flags::WRITE;
        assert_eq!(fx.call(r.clone(), &[]).0.status, Status::Ok);
        let ro = Grant { read_only: true, prefix: String::new() };
        let limited = Grant { read_only: false, prefix: "logs/a".into() };
        let with = |mut r: ProxyRequest, g: &Grant| {
            r.grant = g.clone();
            r
        };
        let mut w = req(Op::Write, "t", "logs/a/f");
        w.length = 1;
        assert_eq!(fx.call(with(w.clone(), &ro), b"x").0.status, Status::Permission, "read-only: no write");
        assert_eq!(fx.call(with(r.clone(), &ro), &[]).0.status, Status::Permission, "read-only: no open for writing");
        assert_eq!(fx.call(with(req(Op::Remove, "t", "logs/a/f"), &ro), &[]).0.status, Status::Permission);
        assert_eq!(fx.call(with(req(Op::Stat, "t", "logs/a/f"), &ro), &[]).0.status, Status::Ok, "read-only may read");
        assert_eq!(fx.call(with(w.clone(), &limited), b"x").0.status, Status::Ok, "inside the prefix");
        assert_eq!(fx.call(with(req(Op::Stat, "t", "logs"), &limited), &[]).0.status, Status::Permission, "above");
        assert_eq!(fx.call(with(req(Op::Stat, "t", "logs/ab"), &limited), &[]).0.status, Status::Permission, "sibling");
        let dotted = req(Op::Stat, "t", "logs/a/../b");
        assert_eq!(fx.call(with(dotted, &limited), &[]).0.status, Status::Permission, "dotted");
        assert_eq!(fx.call(with(req(Op::VolumeFlush, "t", ""), &limited), &[]).0.status, Status::Permission, "no volume");
        let odd = Grant { read_only: false, prefix: "logs/../x".into() };
        assert_eq!(fx.call(with(req(Op::Stat, "t", "x/f"), &odd), &[]).0.status, Status::Invalid, "odd prefix");
    }

    #[test]
    fn every_op_through_frames() {
        let mut fx = fixture();
        let mut r = req(Op::Open, "t", "dir/f");
        r.flags = flags::CREATE | flags::WRITE;
        assert_eq!(fx.call(r, &[]).0.status, Status::Ok);
        let mut w = req(Op::Write, "t", "dir/f");
        w.offset = 3;
        w.flags = flags::SYNC;
        let (resp, _) = fx.call(w, b"hello");
        assert_eq!((resp.status, resp.result), (Status::Ok, 5));
        let (resp, _) = fx.call(req(Op::Append, "t", "dir/f"), b"!!");
        assert_eq!((resp.status, resp.result), (Status::Ok, 8));
        let mut rd = req(Op::Read, "t", "dir/f");
        rd.length = 100;
        let (resp, p) = fx.call(rd.clone(), &[]);
        assert_eq!((resp.status, resp.result), (Status::Ok, 10));
        assert_eq!(p, b"\0\0\0hello!!");
        let (resp, p) = fx.call(req(Op::Stat, "t", "dir/f"), &[]);
        assert_eq!(resp.status, Status::Ok);
        let s = Stat::decode(&p).unwrap();
        assert_eq!((s.kind, s.size), (Kind::File, 10));
        let mut tr = req(Op::Truncate, "t", "dir/f");
        tr.offset = 4;
        assert_eq!(fx.call(tr, &[]).0.result, 4);
        let (resp, p) = fx.call(req(Op::List, "t", ""), &[]);
        assert_eq!((resp.status, resp.result, resp.flags), (Status::Ok, 1, 0));
        assert_eq!(DirEntry::decode_all(&p).unwrap(), [DirEntry { kind: Kind::Dir, size: 0, name: "dir".into() }]);
        assert_eq!(fx.call(req(Op::Fsync, "t", "dir/f"), &[]).0.status, Status::Ok);
        assert_eq!(fx.call(req(Op::Close, "t", "dir/f"), &[]).0.status, Status::Ok);
        assert_eq!(fx.call(req(Op::Remove, "t", "dir"), &[]).0.status, Status::NotEmpty);
        assert_eq!(fx.call(req(Op::Remove, "t", "dir/f"), &[]).0.status, Status::Ok);
        let (resp, p) = fx.call(rd, &[]);
        assert_eq!((resp.status, resp.result, p.len()), (Status::NotFound, 0, 0));
        let t = &fx.stats.tenants()[0];
        assert_eq!((t.tenant.as_str(), t.requests, t.errors, t.read_bytes, t.write_bytes), ("t", 12, 2, 10, 7));
    }

    #[test]
    fn volume_ops_through_frames() {
        let mut fx = fixture();
        let mut open = req(Op::VolumeOpen, "vol1", "");
        open.offset = 1 << 20;
        open.length = 512;
        assert_eq!(fx.call(open.clone(), &[]).0.status, Status::NotFound, "no CREATE");
        open.flags = flags::CREATE;
        let (resp, _) = fx.call(open.clone(), &[]);
        assert_eq!((resp.status, resp.result), (Status::Ok, 1 << 20));
        open.offset = 2 << 20;
        assert_eq!(fx.call(open, &[]).0.status, Status::Invalid, "size mismatch");
        let mut w = req(Op::VolumeWrite, "vol1", "");
        w.offset = 4096;
        w.flags = flags::SYNC;
        let (resp, _) = fx.call(w.clone(), b"volume data");
        assert_eq!((resp.status, resp.result), (Status::Ok, 11));
        let mut r = req(Op::VolumeRead, "vol1", "");
        r.offset = 4096;
        r.length = 11;
        let (resp, p) = fx.call(r.clone(), &[]);
        assert_eq!((resp.status, resp.result, p.as_slice()), (Status::Ok, 11, &b"volume data"[..]));
        assert_eq!(fx.call(req(Op::VolumeFlush, "vol1", ""), &[]).0.status, Status::Ok);
        r.offset = (1 << 20) - 5;
        let (resp, p) = fx.call(r.clone(), &[]);
        assert_eq!((resp.status, p.len()), (Status::Invalid, 0), "past the end");
        r.length = MAX_IO_BYTES + 1;
        assert_eq!(fx.call(r, &[]).0.status, Status::TooLarge);
        w.path = "x".into();
        assert_eq!(fx.call(w, b"x").0.status, Status::Invalid, "a volume op with a path");
        assert_eq!(fx.call(req(Op::VolumeFlush, "../v", ""), &[]).0.status, Status::Permission);
        assert_eq!(fx.call(req(Op::VolumeFlush, "vol1", ""), b"junk").0.status, Status::Invalid, "payload on flush");
        assert!(fx.stats.tenants().is_empty(), "volumes are not tenants");
        let t = &fx.stats.volumes()[0];
        assert_eq!((t.tenant.as_str(), t.read_bytes, t.write_bytes), ("vol1", 11, 11));
    }

    #[test]
    fn list_sets_more_when_entries_remain() {
        let mut fx = fixture();
        let long = "x".repeat(240);
        for i in 0..4300 {
            let mut r = req(Op::Open, "t", &format!("d/{i:05}{long}"));
            r.flags = flags::CREATE;
            assert_eq!(fx.call(r, &[]).0.status, Status::Ok);
        }
        let (resp, p) = fx.call(req(Op::List, "t", "d"), &[]);
        assert_eq!(resp.flags & flags::MORE, flags::MORE);
        assert!(p.len() <= MAX_IO_BYTES as usize);
        let first = DirEntry::decode_all(&p).unwrap();
        assert_eq!(first.len() as u64, resp.result);
        let mut r = req(Op::List, "t", "d");
        r.offset = resp.result;
        let (resp2, p2) = fx.call(r, &[]);
        assert_eq!(resp2.flags & flags::MORE, 0);
        assert_eq!(first.len() + DirEntry::decode_all(&p2).unwrap().len(), 4300);
    }

    /// Every answer fits the room [`answer_bound`] reserved for it.
    #[test]
    fn answers_fit_their_bound() {
        let mut fx = fixture();
        let mut open = req(Op::Open, "t", "f");
        open.flags = flags::CREATE | flags::WRITE;
        assert_eq!(fx.call(open.clone(), &[]).0.status, Status::Ok);
        assert_eq!(fx.call(req(Op::Write, "t", "f"), &[7u8; 5000]).0.status, Status::Ok);
        let mut cases = vec![(open, Vec::new()), (req(Op::Stat, "t", "f"), Vec::new()), (req(Op::List, "t", ""), Vec::new())];
        for length in [0, 1, 4096, 5000, 9000, MAX_IO_BYTES, MAX_IO_BYTES + 1, u32::MAX] {
            let mut r = req(Op::Read, "t", "f");
            r.length = length;
            cases.push((r, Vec::new()));
        }
        cases.push((req(Op::Write, "t", "f"), vec![1u8; 100]));
        for (mut r, payload) in cases {
            r.tag = 1;
            let mut f = Vec::new();
            r.encode_frame(&payload, &mut f).unwrap();
            let mut out = Vec::new();
            assert!(fx.svc.handle_frame(&f[4..], &mut out));
            assert!(
                out.len() <= answer_bound(&f[4..]),
                "{:?} length {}: {} > {}",
                r.op,
                r.length,
                out.len(),
                answer_bound(&f[4..])
            );
        }
        let mut r = req(Op::Read, "t", "f");
        r.length = 1 << 20;
        let mut f = Vec::new();
        r.encode_frame(&[], &mut f).unwrap();
        assert_eq!(answer_bound(&f[4..]), 4 + 40 + (1 << 20));
        for short in [&f[4..10], &[][..]] {
            assert_eq!(answer_bound(short), 44, "too short to carry a read");
        }
    }

    /// A peer enrolled for tenant `t` and volume `v` only: other tenants' and volumes'
    /// requests are answered `Permission`, counted, and never touch the backend; the
    /// same check answers for the worker pool (`refuse`).
    #[test]
    fn requests_beyond_the_peers_grant_are_refused_before_the_backend() {
        use crate::access::{Access, Grant, Names};
        let mut fx = fixture();
        let grant = Grant { tenants: Names::Only(["t".to_string()].into()), volumes: Names::Only(["v".to_string()].into()) };
        fx.svc.set_access(Access::Enrolled { name: "dpu-a".into(), grant: Arc::new(grant) });
        let mut open = req(Op::Open, "t", "f");
        open.flags = flags::CREATE | flags::WRITE;
        assert_eq!(fx.call(open.clone(), &[]).0.status, Status::Ok);
        open.tenant = "u".into();
        assert_eq!(fx.call(open, &[]).0.status, Status::Permission);
        assert_eq!(fx.call(req(Op::Write, "u", "f"), b"x").0.status, Status::Permission);
        assert_eq!(fx.call(req(Op::List, "u", ""), &[]).0.status, Status::Permission);
        let mut vol = req(Op::VolumeOpen, "w", "");
        (vol.offset, vol.length, vol.flags) = (1 << 20, 512, flags::CREATE);
        assert_eq!(fx.call(vol.clone(), &[]).0.status, Status::Permission, "volume w is not granted");
        vol.tenant = "t".into();
        assert_eq!(fx.call(vol.clone(), &[]).0.status, Status::Permission, "a tenant grant is no volume grant");
        vol.tenant = "v".into();
        assert_eq!(fx.call(vol, &[]).0.status, Status::Ok);
        let mut f = Vec::new();
        let mut r = req(Op::Remove, "u", "f");
        r.tag = 77;
        r.encode_frame(&[], &mut f).unwrap();
        let answer = fx.svc.refuse(&f[4..]).expect("refused");
        let (resp, _) = ProxyResponse::decode(&answer[4..]).unwrap();
        assert_eq!((resp.status, resp.tag), (Status::Permission, 77));
        req(Op::Stat, "t", "f").encode_frame(&[], &mut f).unwrap();
        assert!(fx.svc.refuse(&f[4..]).is_none(), "allowed: runs elsewhere");
        assert!(fx.svc.refuse(b"junk").is_none(), "undecodable: answered where it runs");
        assert_eq!(fx.stats.server().denied, 6);
        assert!(!fx._dir.path().join("u").exists() && !fx._dir.path().join("@volumes/w").exists(), "nothing reached the backend");
        assert!(fx.stats.tenants().iter().all(|t| t.tenant != "u"), "refusals are not counted as the tenant's requests");
    }

    #[test]
    fn bad_requests_are_answered_not_fatal() {
        let mut fx = fixture();
        assert_eq!(fx.call(req(Op::Open, "t", "../u/f"), &[]).0.status, Status::Permission);
        assert_eq!(fx.call(req(Op::Read, "../u", "f"), &[]).0.status, Status::Permission);
        assert_eq!(fx.call(req(Op::Stat, "t", "a\0b"), &[]).0.status, Status::Invalid);
        let mut big = req(Op::Read, "t", "f");
        big.length = MAX_IO_BYTES + 1;
        assert_eq!(fx.call(big, &[]).0.status, Status::TooLarge);
        assert_eq!(fx.call(req(Op::Stat, "t", "f"), b"junk").0.status, Status::Invalid, "payload on a non-data op");
        // Undecodable frames: the tag comes back when there is one.
        let mut f = Vec::new();
        let mut r = req(Op::Stat, "t", "f");
        r.tag = 0xabcd;
        r.encode_frame(&[], &mut f).unwrap();
        let mut body = f[4..].to_vec();
        body[6..8].copy_from_slice(&999u16.to_le_bytes());
        let mut out = Vec::new();
        assert!(fx.svc.handle_frame(&body, &mut out));
        let (resp, _) = ProxyResponse::decode(&out[4..]).unwrap();
        assert_eq!((resp.status, resp.tag, resp.op), (Status::UnknownOp, 0xabcd, 999));
        body[0] = b'X';
        assert!(fx.svc.handle_frame(&body, &mut out));
        assert_eq!(ProxyResponse::decode(&out[4..]).unwrap().0.status, Status::BadMagic);
        assert!(fx.svc.handle_frame(&body[..20], &mut out));
        assert!(!fx.svc.handle_frame(&body[..15], &mut out), "no tag: dropped");
        assert!(!fx.svc.handle_frame(&[], &mut out));
        let s = fx.stats.server();
        assert_eq!((s.bad_frames, s.dropped_frames), (5, 2));
        // Random bodies never panic.
        let mut x = 0x1234_5678_9abc_def1u64;
        for n in 0..3000usize {
            let mut b: Vec<u8> = (0..n % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if b.len() >= 8 && n % 2 == 0 {
                b[..4].copy_from_slice(b"PoVP");
                b[4..6].copy_from_slice(&1u16.to_le_bytes());
            }
            let _ = fx.svc.handle_frame(&b, &mut out);
        }
    }
}
