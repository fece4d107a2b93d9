//! Fuzz target body for a PoV device driven by block IO (feature `fuzzing`; the
//! cargo-fuzz target `pov_device` in `fuzz/` calls it, and this crate's tests replay
//! its seed corpus `fuzz/seeds/pov_device/` through it).
//!
//! The input is decoded with `arbitrary` into a device geometry and a sequence of
//! steps: arbitrary block IO (READ, WRITE, FLUSH, GET_ID, unknown types) at arbitrary
//! offsets and sizes with arbitrary data; honest protocol-v2 session opens (Hello,
//! OpenSession with the HMAC proof, an authenticated CreateQueue: `docs/protocol.md`);
//! admin requests built from what the host learned, authenticated with the right keys,
//! another session's or none, with right, replayed or arbitrary sequence numbers,
//! naming any mailbox; IO requests sealed with the session's keys (or another's, or
//! not at all) with wrong IDs, lying lengths, split or partly dropped writes; polls in
//! between; and, when the device has a proxy, what that proxy (an in-memory listener)
//! does: answer, answer with forged tags, send garbage, hang up.
//!
//! Checked, beyond "never panics": every block IO completes exactly once (after
//! [`PovDevice::shutdown`] at the latest), never with an unknown tag or more bytes
//! than its buffer; the answers to the honest exchanges open with their exchange keys
//! in the mailbox they belong in; a response in a queue's slot names that queue; a
//! response to a request sealed by a session opens with that session's keys; and no
//! READ anywhere on the device returns a confidential session's read data in clear
//! (the attack a co-tenant process makes: `docs/security.md`, "Sessions").

use crate::block::{BlockCompletion, BlockOp, BlockRequest, BufferError, IoBuffer};
use crate::device::{PovDevice, PovDeviceConfig};
use crate::forward::{Gathering, GatheringControl};
use crate::tenant::TenantTable;
use crate::BlockDevice;
use arbitrary::{Arbitrary, Unstructured};
use pov_proto::admin::{
    AdminOp, AdminRequest, AdminResponse, QosClass, ADMIN_MAC_OFFSET, ADMIN_REQUEST_SIZE, ADMIN_RESPONSE_SIZE,
    GRANT_INTEGRITY_ONLY, GRANT_READ_ONLY, SESSION_MAILBOX,
};
use pov_proto::crypto::{self, Protection, SessionKeys, NONCE_LEN};
use pov_proto::io::{round_to_sector, Op, RequestHeader, ResponseHeader, SdkHint, REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET};
use pov_proto::layout::{self, Geometry, ADMIN_MAILBOXES, HEADER_SIZE, SECTOR_SIZE};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use pov_runtime::transport::mem::MemListener;
use pov_runtime::transport::{Listener, Transport};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most steps one input runs (longer inputs are cut).
const MAX_STEPS: usize = 64;
/// Largest block IO buffer, sectors (a whole request slot and a bit more).
const MAX_SECTORS: u16 = 2 * 1024 + 16;
/// Bytes of a proxy's read data the clear-text check looks for.
const MARKER_LEN: usize = 16;
/// The tenants of the device under test: name, secret.
const TENANTS: [(&str, &[u8]); 2] = [("acme", b"pw"), ("other", b"pw2")];

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
    Mailbox(u16),
    SessionMailbox(u16),
    RequestSlot(Pick),
    ResponseSlot(Pick),
    Capacity,
    Anywhere(u64),
    /// A response window of the picked queue, for request IDs of this parity.
    ResponseWindow(Pick, bool),
}

/// How an admin request is authenticated.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Mac {
    None,
    /// With the picked session's admin key.
    Own,
    /// With another session's admin key.
    Other,
    Garbage(u8),
}

/// The sequence number of an in-session admin request.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    /// The session's next one.
    Next,
    /// The one it used last (a replay).
    Replay,
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// One block IO at `place` + `sectors_off` sectors + `bytes_off` bytes, of `sectors`
    /// sectors + `extra` bytes, its buffer filled with `fill` (failing at byte `broken`).
    Block { kind: Kind, place: Place, sectors_off: i16, bytes_off: u8, sectors: u16, extra: u8, fill: u8, broken: Option<u32> },
    /// An admin request (op code `op`, fields from what the host knows or wrong),
    /// naming `mailbox`, authenticated per `mac`, a byte of it changed if `corrupt`,
    /// then (if `read`) READs of its mailbox and of the session's mailbox.
    Admin {
        op: u8,
        session: Pick,
        wrong_pid: bool,
        queue: Pick,
        qos: u8,
        tenant: u8,
        grant: u8,
        mailbox: u16,
        mac: Mac,
        seq: Seq,
        nonce: u8,
        exchange_id: u64,
        corrupt: Option<(u16, u8)>,
        read: bool,
    },
    /// An IO request on a queue the host knows (or not): `wrong` bits 0/1/2 give a
    /// wrong session/PID/queue ID, bit 3 leaves it unsealed, bit 4 seals it with
    /// another session's keys, bit 5 reuses the queue's last request ID;
    /// `payload_len` other than the payload's if `lie`; written in two pieces cut at
    /// sector `split` (second first if `reverse`, one left out if `drop`); then a READ
    /// of the response slot of `read` sectors.
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
    /// What a host does first: open a session (tenant `tenant % 2`, right secret, a
    /// grant from `grant`) and create a queue in it, reading every answer.
    Start { tenant: u8, qos: u8, grant: u8 },
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

/// What a submitted block IO was for, to check and learn from its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Plain,
    /// A READ of a response slot of `queue` (from its start if `at_start`).
    ResponseSlot {
        queue: u32,
        at_start: bool,
    },
}

/// A session the device opened, as its client holds it.
struct Known {
    id: u64,
    area: u32,
    pid: u32,
    keys: SessionKeys,
    protection: Protection,
    /// The next in-session sequence number.
    seq: u64,
    closed: bool,
}

/// The host side: submits block IO, checks every completion, learns IDs from answers.
struct Host {
    dev: PovDevice,
    geometry: Geometry,
    next_tag: u64,
    outstanding: HashMap<u64, Purpose>,
    sessions: Vec<Known>,
    /// Queues the host created: queue ID, session index, last request ID sealed.
    queues: Vec<(u32, usize, u64)>,
    handles: Vec<u64>,
    /// Requests sealed with a session's keys: (queue, request ID) → session index.
    sealed: HashMap<(u32, u64), usize>,
    /// Request IDs come from one counter across sessions and queues, so that a
    /// response's (queue, request ID) names the one request that asked for it.
    next_request: u64,
    /// Shared mailboxes the fuzzed admin requests named (the honest ones use others).
    named: HashSet<u16>,
    next_mailbox: u16,
    /// The first bytes of the read data a proxy sent for confidential sessions.
    markers: Vec<[u8; MARKER_LEN]>,
    done: Vec<BlockCompletion>,
}

/// A completed block IO.
struct Done {
    status: crate::BlockStatus,
    data: Vec<u8>,
}

impl Host {
    fn new(dev: PovDevice) -> Host {
        Host {
            geometry: dev.geometry(),
            dev,
            next_tag: 1,
            outstanding: HashMap::new(),
            sessions: Vec::new(),
            queues: Vec::new(),
            handles: Vec::new(),
            sealed: HashMap::new(),
            next_request: 1,
            named: HashSet::new(),
            next_mailbox: 0,
            markers: Vec::new(),
            done: Vec::new(),
        }
    }

    fn submit(&mut self, op: BlockOp, offset: u64, data: Vec<u8>, broken: Option<usize>, purpose: Purpose) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.outstanding.insert(tag, purpose);
        self.dev.submit(BlockRequest { op, offset, buf: Box::new(FuzzBuf { data, broken }), tag });
        self.reap();
    }

    /// Submits one block IO and returns its completion if it completed at once (admin
    /// space and mailboxes always do), after the usual checks.
    fn io_now(&mut self, op: BlockOp, offset: u64, data: Vec<u8>) -> Option<Done> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.outstanding.insert(tag, Purpose::Plain);
        self.dev.submit(BlockRequest { op, offset, buf: Box::new(data), tag });
        self.dev.take_completions(&mut self.done);
        let mut mine = None;
        for c in std::mem::take(&mut self.done) {
            let is_mine = c.tag == tag;
            let mut data = vec![0u8; c.buf.len()];
            let _ = c.buf.read_at(0, &mut data);
            let status = c.status;
            self.check(c);
            if is_mine {
                mine = Some(Done { status, data });
            }
        }
        mine
    }

    /// Takes the device's completions and checks each.
    fn reap(&mut self) {
        self.dev.take_completions(&mut self.done);
        for c in std::mem::take(&mut self.done) {
            self.check(c);
        }
    }

    /// Checks a completion: of a request in flight (exactly once), with no more bytes
    /// written than its buffer holds, no confidential read data in clear; a response
    /// slot's header names its queue and opens with the keys of the session that sealed
    /// the request it answers.
    fn check(&mut self, c: BlockCompletion) {
        let purpose = self.outstanding.remove(&c.tag).unwrap_or_else(|| panic!("completion with unknown tag {}", c.tag));
        assert!(c.written as usize <= c.buf.len(), "tag {}: {} bytes written into {}", c.tag, c.written, c.buf.len());
        if c.status != crate::BlockStatus::Ok {
            return;
        }
        let mut b = vec![0u8; c.buf.len()];
        if c.buf.read_at(0, &mut b).is_err() {
            return;
        }
        for m in &self.markers {
            assert!(!b.windows(MARKER_LEN).any(|w| w == m), "a confidential session's read data was readable in clear");
        }
        let Purpose::ResponseSlot { queue, at_start: true } = purpose else { return };
        if b.len() < HEADER_SIZE {
            return;
        }
        let r = ResponseHeader::decode(&b).unwrap_or_else(|e| panic!("response slot of queue {queue}: {e}"));
        assert_eq!(r.queue_id, queue, "a response in another queue's slot");
        let total = HEADER_SIZE + r.payload_len as usize;
        // A queue that has answered nothing yet reads as an unsealed `NoRequest` header
        // with request ID 0, which the device never accepts.
        if r.request_id == 0 && r.status == Status::NoRequest {
            return;
        }
        let Some(&s) = self.sealed.get(&(queue, r.request_id)) else { return };
        if total > b.len() {
            return;
        }
        let k = &self.sessions[s];
        k.keys
            .open_response(queue, r.request_id, &mut b[..total], HEADER_SIZE, RESPONSE_TAG_OFFSET, k.protection)
            .unwrap_or_else(|_| panic!("the response to request {} of queue {queue} does not open", r.request_id));
        if r.op == Op::Open as u16 && r.status == Status::Ok {
            self.handles.push(r.result);
        }
    }

    /// A shared mailbox no fuzzed request named (each honest exchange its own).
    fn fresh_mailbox(&mut self) -> u16 {
        for _ in 0..ADMIN_MAILBOXES {
            let m = self.next_mailbox;
            self.next_mailbox = (self.next_mailbox + 1) % ADMIN_MAILBOXES;
            if !self.named.contains(&m) {
                return m;
            }
        }
        0
    }

    /// Writes an admin request record and reads the answer: from the session's mailbox
    /// (area `area`) first when given, then from the named one. `None` if the WRITE
    /// failed or neither opens with the request's exchange key, which for an `honest`
    /// request the device took is a failure of the device.
    fn exchange(
        &mut self,
        req: &AdminRequest,
        rec: [u8; ADMIN_REQUEST_SIZE],
        area: Option<u32>,
        honest: bool,
    ) -> Option<AdminResponse> {
        let w = self.io_now(BlockOp::Write, layout::ADMIN_REQ_OFFSET, rec.to_vec())?;
        if w.status != crate::BlockStatus::Ok {
            return None;
        }
        let mut places = Vec::new();
        if let Some(a) = area {
            places.push((self.geometry.session_mailbox(a), SESSION_MAILBOX));
        }
        if req.mailbox < ADMIN_MAILBOXES {
            places.push((layout::mailbox_offset(req.mailbox), req.mailbox));
        }
        for (at, mailbox) in places {
            let d = self.io_now(BlockOp::Read, at, vec![0; ADMIN_RESPONSE_SIZE]).expect("mailbox READs complete at once");
            assert_eq!(d.status, crate::BlockStatus::Ok, "a mailbox READ failed");
            if let Ok(r) = AdminResponse::open(&d.data, mailbox, &req.exchange_key) {
                return Some(r);
            }
        }
        assert!(!honest, "the answer to an honest {:?} does not open in its mailbox", req.op);
        None
    }

    /// Learns from the answer to an in-session request of session `s`.
    fn learn(&mut self, s: usize, op: AdminOp, queue: u32, r: &AdminResponse) {
        if r.status() != Status::Ok {
            return;
        }
        match op {
            AdminOp::CreateQueue => self.queues.push((r.queue_id, s, 0)),
            AdminOp::DeleteQueue => self.queues.retain(|q| q.0 != queue),
            AdminOp::CloseSession => {
                self.sessions[s].closed = true;
                self.queues.retain(|q| q.1 != s);
            }
            _ => {}
        }
    }

    /// An honest open: Hello, OpenSession with the proof, one authenticated
    /// CreateQueue. Every answer whose request the device took must open with its
    /// exchange key in its mailbox.
    fn start(&mut self, tenant: usize, pid: u32, qos: QosClass, grant: u8) {
        let (name, secret) = TENANTS[tenant];
        let nc: [u8; NONCE_LEN] = crypto::random();
        let hello = AdminRequest {
            tenant: name.into(),
            nonce: nc,
            mailbox: self.fresh_mailbox(),
            exchange_key: crypto::random(),
            ..AdminRequest::new(AdminOp::Hello, pid)
        };
        let rec = hello.encode().expect("a short tenant name");
        let Some(ch) = self.exchange(&hello, rec, None, true) else { return };
        if ch.status() != Status::Ok {
            return;
        }
        let prefix = if grant & 4 != 0 { "dir" } else { "" };
        let grant = grant & (GRANT_READ_ONLY | GRANT_INTEGRITY_ONLY);
        let open = AdminRequest {
            exchange_id: ch.exchange_id,
            grant_flags: grant,
            prefix: prefix.into(),
            mac: crypto::open_proof(secret, name, &nc, &ch.device_nonce, pid, grant, prefix),
            mailbox: self.fresh_mailbox(),
            exchange_key: crypto::random(),
            ..AdminRequest::new(AdminOp::OpenSession, pid)
        };
        let rec = open.encode().expect("a short prefix");
        let Some(r) = self.exchange(&open, rec, None, true) else { return };
        if r.status() != Status::Ok {
            return;
        }
        assert!(r.area < self.geometry.areas, "session opened in area {} of {}", r.area, self.geometry.areas);
        let protection = if grant & GRANT_INTEGRITY_ONLY != 0 { Protection::IntegrityOnly } else { Protection::Confidential };
        let keys = SessionKeys::derive(secret, &nc, &ch.device_nonce, name, r.session_id);
        self.sessions.push(Known { id: r.session_id, area: r.area, pid, keys, protection, seq: 1, closed: false });
        let s = self.sessions.len() - 1;
        let create = AdminRequest {
            session_id: r.session_id,
            seq: 1,
            qos,
            mailbox: self.fresh_mailbox(),
            exchange_key: crypto::random(),
            ..AdminRequest::new(AdminOp::CreateQueue, pid)
        };
        self.sessions[s].seq = 2;
        let mut rec = create.encode().expect("no tenant name");
        self.sessions[s].keys.mac_admin(&mut rec, ADMIN_MAC_OFFSET);
        if let Some(q) = self.exchange(&create, rec, Some(r.area), true) {
            self.learn(s, AdminOp::CreateQueue, 0, &q);
        }
    }

    /// The queue a pick names: (queue ID, session index, last request ID), or an ID the
    /// device never gave with no session.
    fn queue(&self, p: Pick) -> (u32, Option<usize>, u64) {
        match self.queues.get(p.0 as usize % self.queues.len().max(1)).filter(|_| p.0 < 240) {
            Some(&(q, s, last)) => (q, Some(s), last),
            None => (p.0 as u32 % (self.geometry.total_queues() + 2), None, 0),
        }
    }

    fn session(&self, p: Pick) -> Option<usize> {
        (p.0 < 240 && !self.sessions.is_empty()).then(|| p.0 as usize % self.sessions.len())
    }

    /// Another session than `s` (if there is one).
    fn other(&self, s: Option<usize>) -> Option<usize> {
        (0..self.sessions.len()).find(|&i| Some(i) != s)
    }

    fn place(&self, place: &Place) -> u64 {
        match *place {
            Place::Config => 0,
            Place::AdminRequest => layout::ADMIN_REQ_OFFSET,
            Place::Mailbox(m) => layout::mailbox_offset(m % ADMIN_MAILBOXES),
            Place::SessionMailbox(a) => self.geometry.session_mailbox(u32::from(a) % self.geometry.areas),
            Place::RequestSlot(p) => self.geometry.request_slot(self.queue(p).0),
            Place::ResponseSlot(p) => self.geometry.response_slot(self.queue(p).0),
            Place::Capacity => self.geometry.capacity_bytes(),
            Place::Anywhere(o) => o,
            Place::ResponseWindow(p, odd) => self.geometry.response_window(self.queue(p).0, u64::from(odd)),
        }
    }
}

/// The in-memory proxy: accepts the device's connections and keeps what they sent.
struct Proxy {
    listener: MemListener,
    conns: Vec<Box<dyn Transport>>,
    /// Requests received and not answered: connection, tag, op, length, session ID.
    received: Vec<(usize, u64, u16, u32, u64)>,
    /// Seeds of the read data it sends (one per answer, so no two answers share bytes).
    next_seed: u64,
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
                received.push((i, r.req.tag, r.req.op as u16, r.req.length, r.req.session_id));
            });
        }
    }

    /// The proxy's turn; the first bytes of read data sent for a confidential session
    /// of `confidential` go to `markers`.
    fn step(&mut self, s: ProxyStep, confidential: &HashSet<u64>, markers: &mut Vec<[u8; MARKER_LEN]>) {
        let mut frame = Vec::new();
        match s {
            ProxyStep::AnswerAll { status, result, flags, payload } => {
                for (i, tag, op, length, session) in std::mem::take(&mut self.received) {
                    let n = if op == Op::Read as u16 { (payload as u32).min(length) } else { payload as u32 };
                    self.next_seed += 1;
                    let data = pov_proto::testing::pattern(self.next_seed, n as usize);
                    if op == Op::Read as u16 && data.len() >= MARKER_LEN && confidential.contains(&session) {
                        markers.push(data[..MARKER_LEN].try_into().expect("marker length"));
                    }
                    let r = ProxyResponse { op, tag, status: Status::from_u32(status as u32 % 27), result, flags };
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

/// Target `pov_device`: see the module docs.
pub fn pov_device(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    static LISTENERS: AtomicU64 = AtomicU64::new(0);
    let mut proxy = None;
    let endpoint = if input.proxy {
        let name = format!("fuzz-pov-{}", LISTENERS.fetch_add(1, Ordering::Relaxed));
        let listener = MemListener::bind(&name).expect("a fresh mem listener name");
        proxy = Some(Proxy { listener, conns: Vec::new(), received: Vec::new(), next_seed: 0 });
        format!("mem:{name}")
    } else {
        "mem:fuzz".to_string()
    };
    let tenants = TenantTable::default();
    for (name, secret) in TENANTS {
        tenants.create(name, secret).expect("tenant");
    }
    let mut cfg = PovDeviceConfig::new("fuzz", vec![endpoint]);
    cfg.max_sessions = 1 + input.areas as u32 % 4;
    cfg.num_queues = 1 + input.queues_per_area as u32 % 4;
    cfg.request_timeout_ms = if input.short_timeout { 1 } else { 60_000 };
    let control = GatheringControl::new(gathering(input.gathering));
    let dev = PovDevice::new(cfg, tenants).expect("a valid device configuration").with_gathering(control.clone());
    let geometry = dev.geometry();
    let mut host = Host::new(dev);
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
                if let (Place::Mailbox(m), BlockOp::Write) = (&place, op) {
                    host.named.insert(m % ADMIN_MAILBOXES);
                }
                let purpose = match place {
                    Place::ResponseSlot(p) if op == BlockOp::Read => {
                        Purpose::ResponseSlot { queue: host.queue(p).0, at_start: sectors_off == 0 && bytes_off == 0 }
                    }
                    _ => Purpose::Plain,
                };
                host.submit(op, offset, vec![fill; len], broken.map(|b| b as usize), purpose);
            }
            Step::Admin {
                op,
                session,
                wrong_pid,
                queue,
                qos,
                tenant,
                grant,
                mailbox,
                mac,
                seq,
                nonce,
                exchange_id,
                corrupt,
                read,
            } => {
                let s = host.session(session);
                let op = AdminOp::from_u16(1 + op as u16 % 6).unwrap_or(AdminOp::Heartbeat);
                let name = match tenant % 4 {
                    0 | 1 => TENANTS[tenant as usize % 2].0,
                    2 => "nobody",
                    _ => "",
                };
                let known = s.map(|i| &host.sessions[i]);
                let spid = known.map_or(7, |k| k.pid);
                let req_pid = if op == AdminOp::Hello || op == AdminOp::OpenSession {
                    pid += 1;
                    pid
                } else if wrong_pid {
                    spid.wrapping_add(1)
                } else {
                    spid
                };
                let next = known.map_or(1, |k| k.seq);
                let seq = match seq {
                    Seq::Next => next,
                    Seq::Replay => next.saturating_sub(1),
                    Seq::Any(v) => v,
                };
                if mailbox < ADMIN_MAILBOXES {
                    host.named.insert(mailbox);
                }
                let req = AdminRequest {
                    op,
                    pid: req_pid,
                    queue_id: host.queue(queue).0,
                    session_id: known.map_or(u64::from(session.0) * 0x9e37_79b9, |k| k.id),
                    seq,
                    qos: if qos % 2 == 0 { QosClass::Latency } else { QosClass::Bandwidth },
                    grant_flags: grant,
                    mailbox,
                    // CreateQueue batches of 0..=69 queues (over 64 is refused).
                    count: (exchange_id >> 56) as u16 % 70,
                    exchange_key: crypto::random(),
                    nonce: [nonce; NONCE_LEN],
                    exchange_id,
                    mac: [0; 32],
                    tenant: name.to_string(),
                    prefix: if grant & 0x80 != 0 { "dir".into() } else { String::new() },
                };
                let mut rec = req.encode().expect("a short tenant name and prefix");
                let signer = match mac {
                    Mac::None => None,
                    Mac::Own => s,
                    Mac::Other => host.other(s),
                    Mac::Garbage(v) => {
                        rec[ADMIN_MAC_OFFSET..ADMIN_MAC_OFFSET + 32].fill(v);
                        None
                    }
                };
                if let Some(i) = signer {
                    host.sessions[i].keys.mac_admin(&mut rec, ADMIN_MAC_OFFSET);
                }
                if let Some((at, v)) = corrupt {
                    rec[at as usize % ADMIN_REQUEST_SIZE] ^= v | 1;
                }
                // A request the device takes as the session's moves its sequence on;
                // its answer is read so that the host knows what changed.
                // (The device takes any sequence number above the last it took.)
                let authentic = op.in_session() && signer.is_some() && signer == s && corrupt.is_none() && seq >= next;
                if authentic {
                    let i = s.expect("a signer");
                    host.sessions[i].seq = seq.saturating_add(1);
                    let area = host.sessions[i].area;
                    if let Some(r) = host.exchange(&req, rec, Some(area), false) {
                        host.learn(i, op, req.queue_id, &r);
                    } else if op == AdminOp::CloseSession || op == AdminOp::DeleteQueue {
                        // Unknown outcome: stop using what may be gone.
                        host.queues.retain(|q| q.1 != i || (op == AdminOp::DeleteQueue && q.0 != req.queue_id));
                    }
                } else if read {
                    let area = s.map(|i| host.sessions[i].area);
                    let _ = host.exchange(&req, rec, area, false);
                } else {
                    host.submit(BlockOp::Write, layout::ADMIN_REQ_OFFSET, rec.to_vec(), None, Purpose::Plain);
                }
            }
            Step::Io { queue, wrong, op, handle, offset, length, flags, payload, lie, split, reverse, drop, read } => {
                let (q, owner, last) = host.queue(queue);
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
                let (session_id, qpid) =
                    owner.map_or((u64::from(queue.0) << 32, 7), |i| (host.sessions[i].id, host.sessions[i].pid));
                let request_id = if wrong & 32 != 0 {
                    last
                } else {
                    host.next_request += 1;
                    host.next_request
                };
                let h = RequestHeader {
                    op,
                    queue_id: if wrong & 4 != 0 { q ^ 1 } else { q },
                    pid: if wrong & 2 != 0 { qpid ^ 1 } else { qpid },
                    session_id: if wrong & 1 != 0 { session_id ^ 1 } else { session_id },
                    request_id,
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
                let signer = match wrong & 24 {
                    0 => owner,
                    16 => host.other(owner),
                    _ => None,
                };
                if let Some(i) = signer {
                    host.sessions[i].keys.seal_request(q, request_id, &mut b[..HEADER_SIZE + payload.len()], REQUEST_TAG_OFFSET);
                    // Only the queue's owner's requests can be answered; a forgery that
                    // reuses an ID must not make the owner's answer to it look foreign.
                    if signer == owner {
                        host.sealed.insert((q, request_id), i);
                    }
                }
                if let Some(e) = host.queues.iter_mut().find(|e| e.0 == q) {
                    e.2 = e.2.max(request_id);
                }
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
            Step::Start { tenant, qos, grant } => {
                pid += 1;
                let qos = if qos % 2 == 0 { QosClass::Latency } else { QosClass::Bandwidth };
                host.start(tenant as usize % 2, pid, qos, grant);
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
                    let confidential: HashSet<u64> = host
                        .sessions
                        .iter()
                        .filter(|k| k.protection == Protection::Confidential && !k.closed)
                        .map(|k| k.id)
                        .collect();
                    p.step(s, &confidential, &mut host.markers);
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

    /// The honest steps do what a host needs: a session opens, a queue is created, a
    /// sealed request is answered with a response that opens (checked in `check`).
    #[test]
    fn honest_steps_open_sessions_and_queues() {
        let tenants = TenantTable::default();
        for (name, secret) in TENANTS {
            tenants.create(name, secret).unwrap();
        }
        let dev = PovDevice::new(PovDeviceConfig::new("t", vec!["mem:nowhere".into()]), tenants).unwrap();
        let mut host = Host::new(dev);
        host.start(0, 100, QosClass::Latency, 0);
        host.start(1, 101, QosClass::Bandwidth, GRANT_INTEGRITY_ONLY);
        assert_eq!(host.sessions.len(), 2);
        assert_eq!(host.queues.len(), 2);
        assert!(host.sessions.iter().all(|s| s.seq == 2));
    }
}
