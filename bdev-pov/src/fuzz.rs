//! Fuzz target body for a PoV device driven by block IO (feature `fuzzing`; the
//! cargo-fuzz target `pov_device` in `fuzz/` calls it, and this crate's tests replay
//! its seed corpus `fuzz/seeds/pov_device/` through it).
//!
//! The input is decoded with `arbitrary` into a device geometry and a sequence of
//! steps: arbitrary block IO (READ, WRITE, FLUSH, GET_ID, unknown types) at arbitrary
//! offsets and sizes with arbitrary data, and well-formed admin and IO requests built
//! the way a host builds them (from the session, queue and handle IDs the device
//! answered before, or deliberately wrong ones), so that the fuzzer gets past the magic
//! and ownership checks; polls in between; and, when the device has a proxy, what that
//! proxy (an in-memory listener) does: answer, answer with forged tags, send garbage,
//! hang up.

use crate::block::{BlockCompletion, BlockOp, BlockRequest, BufferError, IoBuffer};
use crate::device::{PovDevice, PovDeviceConfig};
use crate::forward::{Gathering, GatheringControl};
use crate::tenant::TenantTable;
use crate::BlockDevice;
use arbitrary::{Arbitrary, Unstructured};
use pov_proto::admin::{AdminOp, AdminRequest, AdminResponse, QosClass, ADMIN_REQUEST_SIZE};
use pov_proto::io::{round_to_sector, Op, RequestHeader, ResponseHeader, SdkHint};
use pov_proto::layout::{self, Geometry, HEADER_SIZE, SECTOR_SIZE};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use pov_runtime::transport::mem::MemListener;
use pov_runtime::transport::{Listener, Transport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most steps one input runs (longer inputs are cut).
const MAX_STEPS: usize = 64;
/// Largest block IO buffer, sectors (a whole request slot and a bit more).
const MAX_SECTORS: u16 = 2 * 1024 + 16;

#[derive(Arbitrary, Debug)]
struct Input {
    /// A proxy listens (an in-memory listener this body drives); else the device's
    /// endpoint has no listener and every forwarded request fails.
    proxy: bool,
    areas: u8,
    queues_per_area: u8,
    /// Requests time out after 1 ms instead of 60 s.
    short_timeout: bool,
    /// The gathering setting the device follows (see [`Step::Gathering`]).
    gathering: (bool, u8, u16),
    steps: Vec<Step>,
}

/// A gathering setting: enabled, `1 + batch % 8` frames, `window % 200` µs.
fn gathering((enabled, batch, window): (bool, u8, u16)) -> Gathering {
    Gathering { enabled, batch_size: 1 + u32::from(batch % 8), window_us: u32::from(window % 200) }
}

/// An index into what the host learned (sessions, queues, handles); values from 240 on
/// pick an ID the device never gave.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Pick(u8);

#[derive(Arbitrary, Debug)]
enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Other(u32),
}

#[derive(Arbitrary, Debug)]
enum Place {
    Config,
    AdminRequest,
    AdminResponse,
    RequestSlot(Pick),
    ResponseSlot(Pick),
    Capacity,
    Anywhere(u64),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// One block IO at `place` + `sectors_off` sectors + `bytes_off` bytes, of `sectors`
    /// sectors + `extra` bytes, its buffer filled with `fill` (failing at byte `broken`).
    Block { kind: Kind, place: Place, sectors_off: i16, bytes_off: u8, sectors: u16, extra: u8, fill: u8, broken: Option<u32> },
    /// An admin request (op code `op`, fields from what the host knows or wrong), a
    /// byte of it changed if `corrupt`, then (if `read`) the READ of the response.
    Admin {
        op: u8,
        session: Pick,
        pid: Pick,
        queue: Pick,
        qos: u8,
        tenant: u8,
        secret_ok: bool,
        request_id: u64,
        corrupt: Option<(u16, u8)>,
        read: bool,
    },
    /// An IO request on a queue the host knows (or not): `wrong` bits 0/1/2 give a
    /// wrong session/PID/queue ID; `payload_len` other than the payload's if `lie`;
    /// written in two pieces cut at sector `split` (second first if `reverse`, one
    /// left out if `drop`); then a READ of the response slot of `read` sectors.
    Io {
        queue: Pick,
        wrong: u8,
        op: u8,
        handle: Pick,
        offset: u64,
        length: u32,
        flags: u32,
        payload: Payload,
        lie: Option<u32>,
        split: Option<u16>,
        reverse: bool,
        drop: bool,
        read: u8,
    },
    /// What a host does first: open a session (tenant `tenant % 2`, right secret) and
    /// create a queue in it, reading both responses.
    Start { tenant: u8, qos: u8 },
    /// A READ of a response slot at `sectors_off`, `sectors` long.
    ReadResponse { queue: Pick, sectors_off: u16, sectors: u8 },
    /// `1 + times % 4` polls of the device and the proxy.
    Poll { times: u8 },
    /// The proxy's turn.
    Proxy(ProxyStep),
    /// The daemon changes the gathering setting.
    Gathering((bool, u8, u16)),
}

/// The payload of an IO request.
#[derive(Arbitrary, Debug)]
enum Payload {
    /// One of [`PATHS`].
    Path(u8),
    /// `len % 70000` bytes of a pattern (a Write's data).
    Data {
        len: u32,
        seed: u8,
    },
    Raw(Vec<u8>),
}

/// Paths an IO request may carry: plain ones and ones the device must refuse.
const PATHS: [&str; 8] = ["f", "dir/file", "/", "a//b/./c", "../escape", "a/\0b", "", "d/../../x"];

#[derive(Arbitrary, Debug)]
enum ProxyStep {
    /// Answers every request received so far: `status`, `result`, `flags`, and a
    /// payload of up to `payload` bytes (a Read's: at most its length).
    AnswerAll { status: u8, result: u64, flags: u32, payload: u16 },
    /// Answers with a tag and op of its own choosing (stale or forged).
    Forged { tag: u64, op: u16, status: u8 },
    /// Raw bytes on the connection.
    Garbage(Vec<u8>),
    /// Hangs up.
    Close,
}

/// A buffer that fails every access touching byte `broken` (like unmapped guest
/// memory).
struct FuzzBuf {
    data: Vec<u8>,
    broken: Option<usize>,
}

impl FuzzBuf {
    fn check(&self, offset: usize, len: usize) -> Result<(), BufferError> {
        match self.broken {
            Some(b) if b >= offset && b < offset.saturating_add(len) => Err(BufferError { offset, len }),
            _ => Ok(()),
        }
    }
}

impl IoBuffer for FuzzBuf {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BufferError> {
        self.check(offset, dst.len())?;
        self.data.read_at(offset, dst)
    }
    fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), BufferError> {
        self.check(offset, src.len())?;
        self.data.write_at(offset, src)
    }
}

/// What a submitted block IO was for, to learn from its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Plain,
    /// The admin response to the request `request_id` (`None`: unknown), sent by `pid`.
    AdminResponse {
        request_id: Option<u64>,
        pid: u32,
    },
    ResponseSlot {
        queue: u32,
        at_start: bool,
    },
}

/// A session the device opened.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: u64,
    pid: u32,
}

/// The host side: submits block IO, checks every completion, learns IDs from answers.
struct Host {
    dev: PovDevice,
    geometry: Geometry,
    next_tag: u64,
    outstanding: HashMap<u64, Purpose>,
    sessions: Vec<Known>,
    queues: Vec<(u32, usize)>,
    handles: Vec<u64>,
    done: Vec<BlockCompletion>,
}

impl Host {
    fn submit(&mut self, op: BlockOp, offset: u64, data: Vec<u8>, broken: Option<usize>, purpose: Purpose) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.outstanding.insert(tag, purpose);
        self.dev.submit(BlockRequest { op, offset, buf: Box::new(FuzzBuf { data, broken }), tag });
        self.reap();
    }

    /// Takes the device's completions: each must be of a request in flight (exactly
    /// once), with no more bytes written than its buffer holds.
    fn reap(&mut self) {
        self.dev.take_completions(&mut self.done);
        for c in std::mem::take(&mut self.done) {
            let purpose = self.outstanding.remove(&c.tag).unwrap_or_else(|| panic!("completion with unknown tag {}", c.tag));
            assert!(c.written as usize <= c.buf.len(), "tag {}: {} bytes written into {}", c.tag, c.written, c.buf.len());
            if c.status != crate::BlockStatus::Ok || c.buf.len() < HEADER_SIZE {
                continue;
            }
            let mut b = [0u8; HEADER_SIZE];
            if c.buf.read_at(0, &mut b).is_err() {
                continue;
            }
            match purpose {
                Purpose::AdminResponse { request_id, pid } => {
                    let Ok(r) = AdminResponse::decode(&b) else { panic!("admin response space holds no response") };
                    if let Some(id) = request_id {
                        assert_eq!(r.request_id, id, "admin response to another request");
                    }
                    if r.status() != Status::Ok {
                        continue;
                    }
                    match AdminOp::from_u16(r.op) {
                        Ok(AdminOp::OpenSession) => self.sessions.push(Known { id: r.session_id, pid }),
                        Ok(AdminOp::CreateQueue) => {
                            let s = self.sessions.iter().position(|s| s.id == r.session_id).unwrap_or(0);
                            self.queues.push((r.queue_id, s));
                        }
                        _ => {}
                    }
                }
                Purpose::ResponseSlot { queue, at_start: true } => {
                    let r = ResponseHeader::decode(&b).unwrap_or_else(|e| panic!("response slot of queue {queue}: {e}"));
                    assert_eq!(r.queue_id, queue, "a response in another queue's slot");
                    if r.op == Op::Open as u16 && r.status == Status::Ok {
                        self.handles.push(r.result);
                    }
                }
                _ => {}
            }
        }
    }

    /// Writes an admin request and reads its response.
    fn admin(&mut self, req: &AdminRequest) {
        let b = req.encode().expect("a short tenant and secret").to_vec();
        self.submit(BlockOp::Write, layout::ADMIN_REQ_OFFSET, b, None, Purpose::Plain);
        let purpose = Purpose::AdminResponse { request_id: Some(req.request_id), pid: req.pid };
        self.submit(BlockOp::Read, layout::ADMIN_RESP_OFFSET, vec![0; ADMIN_REQUEST_SIZE], None, purpose);
    }

    /// The session, PID and queue a pick names (or IDs the device never gave).
    fn queue(&self, p: Pick) -> (u32, u64, u32) {
        match self.queues.get(p.0 as usize % self.queues.len().max(1)).filter(|_| p.0 < 240) {
            Some(&(q, s)) => {
                let s = self.sessions.get(s).copied().unwrap_or(Known { id: 0, pid: 0 });
                (q, s.id, s.pid)
            }
            None => (p.0 as u32 % (self.geometry.total_queues() + 2), u64::from(p.0) << 32, 7),
        }
    }

    fn session(&self, p: Pick) -> Known {
        match self.sessions.get(p.0 as usize % self.sessions.len().max(1)).filter(|_| p.0 < 240) {
            Some(s) => *s,
            None => Known { id: u64::from(p.0) * 0x9e37_79b9, pid: 7 },
        }
    }

    fn place(&self, place: &Place) -> u64 {
        match *place {
            Place::Config => 0,
            Place::AdminRequest => layout::ADMIN_REQ_OFFSET,
            Place::AdminResponse => layout::ADMIN_RESP_OFFSET,
            Place::RequestSlot(p) => self.geometry.request_slot(self.queue(p).0),
            Place::ResponseSlot(p) => self.geometry.response_slot(self.queue(p).0),
            Place::Capacity => self.geometry.capacity_bytes(),
            Place::Anywhere(o) => o,
        }
    }
}

/// The in-memory proxy: accepts the device's connections and keeps what they sent.
struct Proxy {
    listener: MemListener,
    conns: Vec<Box<dyn Transport>>,
    /// Requests received and not answered: connection, tag, op, length.
    received: Vec<(usize, u64, u16, u32)>,
}

impl Proxy {
    fn poll(&mut self) {
        while let Ok(Some(t)) = self.listener.accept() {
            self.conns.push(t);
        }
        for (i, c) in self.conns.iter_mut().enumerate() {
            let received = &mut self.received;
            // A broken connection is the device's business; its requests stay unanswered.
            let _ = c.poll(&mut |f| {
                let r = ProxyRequest::decode(f).unwrap_or_else(|e| panic!("the device sent a bad frame: {e}"));
                received.push((i, r.req.tag, r.req.op as u16, r.req.length));
            });
        }
    }

    fn step(&mut self, s: ProxyStep) {
        let mut frame = Vec::new();
        match s {
            ProxyStep::AnswerAll { status, result, flags, payload } => {
                for (i, tag, op, length) in std::mem::take(&mut self.received) {
                    let n = if op == Op::Read as u16 { (payload as u32).min(length) } else { payload as u32 };
                    let data = pov_proto::testing::pattern(tag, n as usize);
                    let r = ProxyResponse { op, tag, status: Status::from_u32(status as u32 % 26), result, flags };
                    r.encode_frame(&data, &mut frame);
                    if let Some(c) = self.conns.get_mut(i) {
                        let _ = c.send_frame(&frame);
                    }
                }
            }
            ProxyStep::Forged { tag, op, status } => {
                ProxyResponse { op, tag, status: Status::from_u32(status as u32), result: 0, flags: 0 }
                    .encode_frame(&[], &mut frame);
                if let Some(c) = self.conns.last_mut() {
                    let _ = c.send_frame(&frame);
                }
            }
            ProxyStep::Garbage(bytes) => {
                if let Some(c) = self.conns.last_mut() {
                    let _ = c.send_frame(&bytes);
                }
            }
            ProxyStep::Close => {
                self.conns.clear();
                self.received.clear();
            }
        }
    }
}

/// Target `pov_device`: see the module docs. Never panics; every block IO submitted
/// completes exactly once by the end (after [`PovDevice::shutdown`]), never with an
/// unknown tag, never with more bytes than its buffer; responses read from a queue's
/// response slot are that queue's; admin responses echo their request.
pub fn pov_device(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    static LISTENERS: AtomicU64 = AtomicU64::new(0);
    let mut proxy = None;
    let endpoint = if input.proxy {
        let name = format!("fuzz-pov-{}", LISTENERS.fetch_add(1, Ordering::Relaxed));
        let listener = MemListener::bind(&name).expect("a fresh mem listener name");
        proxy = Some(Proxy { listener, conns: Vec::new(), received: Vec::new() });
        format!("mem:{name}")
    } else {
        "mem:fuzz".to_string()
    };
    let tenants = TenantTable::default();
    tenants.create("acme", b"pw").expect("tenant");
    tenants.create("other", b"pw2").expect("tenant");
    let mut cfg = PovDeviceConfig::new("fuzz", vec![endpoint]);
    cfg.max_sessions = 1 + input.areas as u32 % 4;
    cfg.num_queues = 1 + input.queues_per_area as u32 % 4;
    cfg.request_timeout_ms = if input.short_timeout { 1 } else { 60_000 };
    let control = GatheringControl::new(gathering(input.gathering));
    let dev = PovDevice::new(cfg, tenants).expect("a valid device configuration").with_gathering(control.clone());
    let geometry = dev.geometry();
    let mut host = Host {
        dev,
        geometry,
        next_tag: 1,
        outstanding: HashMap::new(),
        sessions: Vec::new(),
        queues: Vec::new(),
        handles: Vec::new(),
        done: Vec::new(),
    };
    let mut pid = 100;
    for step in input.steps.into_iter().take(MAX_STEPS) {
        match step {
            Step::Block { kind, place, sectors_off, bytes_off, sectors, extra, fill, broken } => {
                let offset = host
                    .place(&place)
                    .wrapping_add_signed(i64::from(sectors_off) * SECTOR_SIZE as i64)
                    .wrapping_add(bytes_off as u64);
                let len = (sectors % MAX_SECTORS) as usize * SECTOR_SIZE as usize + extra as usize;
                let op = match kind {
                    Kind::Read => BlockOp::Read,
                    Kind::Write => BlockOp::Write,
                    Kind::Flush => BlockOp::Flush,
                    Kind::GetId => BlockOp::GetId,
                    Kind::Other(t) => BlockOp::Other(t),
                };
                let purpose = match place {
                    Place::ResponseSlot(p) if op == BlockOp::Read => {
                        Purpose::ResponseSlot { queue: host.queue(p).0, at_start: sectors_off == 0 && bytes_off == 0 }
                    }
                    _ => Purpose::Plain,
                };
                host.submit(op, offset, vec![fill; len], broken.map(|b| b as usize), purpose);
            }
            Step::Admin { op, session, pid: pid_pick, queue, qos, tenant, secret_ok, request_id, corrupt, read } => {
                let s = host.session(session);
                let op = match AdminOp::from_u16(1 + op as u16 % 6) {
                    Ok(op) => op,
                    Err(_) => AdminOp::Heartbeat,
                };
                let (tenant, secret): (&str, &[u8]) = match tenant % 4 {
                    0 => ("acme", if secret_ok { b"pw" } else { b"pW" }),
                    1 => ("other", if secret_ok { b"pw2" } else { b"pw" }),
                    2 => ("nobody", b"pw"),
                    _ => ("", b""),
                };
                let req_pid = match op {
                    AdminOp::OpenSession => {
                        pid += 1;
                        pid
                    }
                    _ if pid_pick.0 >= 240 => s.pid.wrapping_add(1),
                    _ => s.pid,
                };
                let req = AdminRequest {
                    op,
                    pid: req_pid,
                    queue_id: host.queue(queue).0,
                    session_id: if op == AdminOp::OpenSession { 0 } else { s.id },
                    request_id,
                    qos: if qos % 2 == 0 { QosClass::Latency } else { QosClass::Bandwidth },
                    tenant: tenant.to_string(),
                    secret: secret.to_vec(),
                };
                let mut b = req.encode().expect("a short tenant and secret").to_vec();
                if let Some((at, v)) = corrupt {
                    b[at as usize % ADMIN_REQUEST_SIZE] ^= v | 1;
                }
                host.submit(BlockOp::Write, layout::ADMIN_REQ_OFFSET, b, None, Purpose::Plain);
                if read {
                    let echo = corrupt.is_none().then_some(request_id);
                    let purpose = Purpose::AdminResponse { request_id: echo, pid: req_pid };
                    host.submit(BlockOp::Read, layout::ADMIN_RESP_OFFSET, vec![0; 512], None, purpose);
                }
            }
            Step::Io { queue, wrong, op, handle, offset, length, flags, payload, lie, split, reverse, drop, read } => {
                let (q, session_id, qpid) = host.queue(queue);
                let op = Op::from_u16(1 + op as u16 % 20).unwrap_or(Op::Stat);
                let file_handle = match host.handles.get(handle.0 as usize % host.handles.len().max(1)) {
                    Some(h) if handle.0 < 240 => *h,
                    _ => u64::from(handle.0 % 3),
                };
                let payload = match payload {
                    Payload::Path(i) => PATHS[i as usize % PATHS.len()].as_bytes().to_vec(),
                    Payload::Data { len, seed } => pov_proto::testing::pattern(seed.into(), len as usize % 70_000),
                    Payload::Raw(b) => b,
                };
                let h = RequestHeader {
                    op,
                    queue_id: if wrong & 4 != 0 { q ^ 1 } else { q },
                    pid: if wrong & 2 != 0 { qpid ^ 1 } else { qpid },
                    session_id: if wrong & 1 != 0 { session_id ^ 1 } else { session_id },
                    request_id: offset ^ u64::from(length),
                    file_handle,
                    offset,
                    length: length % (pov_proto::MAX_IO_BYTES + 2),
                    flags,
                    payload_len: lie.unwrap_or(payload.len() as u32),
                    hint: SdkHint::default(),
                };
                let mut b = vec![0u8; round_to_sector(HEADER_SIZE + payload.len())];
                h.encode_into(&mut b);
                b[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(&payload);
                let base = geometry.request_slot(q);
                let sectors = b.len() / SECTOR_SIZE as usize;
                match split.map(|s| s as usize % sectors) {
                    Some(cut) if cut > 0 => {
                        let second = b.split_off(cut * SECTOR_SIZE as usize);
                        let mut parts = vec![(base, b), (base + (cut as u64) * SECTOR_SIZE, second)];
                        if reverse {
                            parts.reverse();
                        }
                        if drop {
                            parts.pop();
                        }
                        for (at, part) in parts {
                            host.submit(BlockOp::Write, at, part, None, Purpose::Plain);
                        }
                    }
                    _ => host.submit(BlockOp::Write, base, b, None, Purpose::Plain),
                }
                if read > 0 {
                    let len = read as usize % 16 * SECTOR_SIZE as usize + HEADER_SIZE;
                    let purpose = Purpose::ResponseSlot { queue: q, at_start: true };
                    host.submit(BlockOp::Read, geometry.response_slot(q), vec![0; len], None, purpose);
                }
            }
            Step::Start { tenant, qos } => {
                pid += 1;
                let (name, secret): (&str, &[u8]) = if tenant % 2 == 0 { ("acme", b"pw") } else { ("other", b"pw2") };
                let open = AdminRequest {
                    op: AdminOp::OpenSession,
                    pid,
                    queue_id: 0,
                    session_id: 0,
                    request_id: u64::from(pid),
                    qos: QosClass::Latency,
                    tenant: name.to_string(),
                    secret: secret.to_vec(),
                };
                host.admin(&open);
                let session = host.sessions.last().map_or(0, |s| s.id);
                let qos = if qos % 2 == 0 { QosClass::Latency } else { QosClass::Bandwidth };
                let create = AdminRequest {
                    op: AdminOp::CreateQueue,
                    session_id: session,
                    qos,
                    tenant: String::new(),
                    secret: vec![],
                    ..open
                };
                host.admin(&create);
            }
            Step::ReadResponse { queue, sectors_off, sectors } => {
                let q = host.queue(queue).0;
                let at = geometry.response_slot(q) + u64::from(sectors_off % 2100) * SECTOR_SIZE;
                let len = (1 + sectors as usize) * SECTOR_SIZE as usize;
                host.submit(
                    BlockOp::Read,
                    at,
                    vec![0; len],
                    None,
                    Purpose::ResponseSlot { queue: q, at_start: sectors_off % 2100 == 0 },
                );
            }
            Step::Poll { times } => {
                for _ in 0..1 + times % 4 {
                    if let Some(p) = proxy.as_mut() {
                        p.poll();
                    }
                    host.dev.poll(&mut ());
                    host.reap();
                }
                let _ = (host.dev.deadline(), host.dev.stats_json(), host.dev.write_config_json());
            }
            Step::Gathering(g) => control.set(gathering(g)).expect("a valid gathering setting"),
            Step::Proxy(s) => {
                host.dev.poll(&mut ());
                if let Some(p) = proxy.as_mut() {
                    p.poll();
                    p.step(s);
                }
                host.dev.poll(&mut ());
                host.reap();
            }
        }
    }
    host.dev.shutdown(&mut ());
    host.reap();
    assert!(host.outstanding.is_empty(), "block IO never completed: {:?}", host.outstanding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpus_replays() {
        assert!(pov_proto::fuzz::replay("pov_device", pov_device) > 0);
    }
}
