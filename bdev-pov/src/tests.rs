//! Unit tests of the PoV device against a fake proxy over real TCP, driven by a small
//! protocol-v2 client written here from `pov_proto` (challenge-response open, request
//! tags, sealed responses, mailboxes), including the attacks a co-tenant process can
//! make on a shared device.

use crate::block::{BlockCompletion, BlockOp, BlockRequest, BlockStatus};
use crate::device::{PovDevice, PovDeviceConfig};
use crate::tenant::TenantTable;
use pov_proto::admin::{
    AdminOp, AdminRequest, AdminResponse, ADMIN_MAC_OFFSET, ADMIN_RESPONSE_SIZE, GRANT_INTEGRITY_ONLY, GRANT_READ_ONLY,
    SESSION_MAILBOX,
};
use pov_proto::crypto::{self, Protection, SessionKeys};
use pov_proto::io::{flags, Op, RequestHeader, ResponseHeader, SdkHint, REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET};
use pov_proto::layout::{self, ConfigSpace, HEADER_SIZE};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A fake proxy: one thread, blocking IO, files in a HashMap keyed by tenant/path.
/// `delay_ms` in the path "slow" makes it wait before answering.
fn fake_proxy() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut files: HashMap<String, Vec<u8>> = HashMap::new();
                let mut out = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let r = ProxyRequest::decode(&body).unwrap();
                    let key = format!("{}/{}", r.req.tenant, r.req.path);
                    if r.req.path == "slow" {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let (status, result, payload) = match r.req.op {
                        Op::Open => {
                            if r.req.flags & flags::CREATE != 0 {
                                files.entry(key).or_default();
                                (Status::Ok, 0, vec![])
                            } else if files.contains_key(&key) {
                                (Status::Ok, 0, vec![])
                            } else {
                                (Status::NotFound, 0, vec![])
                            }
                        }
                        Op::Write => {
                            let f = files.entry(key).or_default();
                            let end = r.req.offset as usize + r.payload.len();
                            if f.len() < end {
                                f.resize(end, 0);
                            }
                            f[r.req.offset as usize..end].copy_from_slice(r.payload);
                            (Status::Ok, r.payload.len() as u64, vec![])
                        }
                        Op::Read => {
                            let f = files.get(&key).cloned().unwrap_or_default();
                            let s = (r.req.offset as usize).min(f.len());
                            let e = (s + r.req.length as usize).min(f.len());
                            (Status::Ok, (e - s) as u64, f[s..e].to_vec())
                        }
                        // The destination arrives as the payload.
                        Op::Rename => match files.remove(&key) {
                            Some(v) => {
                                files.insert(format!("{}/{}", r.req.tenant, String::from_utf8_lossy(r.payload)), v);
                                (Status::Ok, 0, vec![])
                            }
                            None => (Status::NotFound, 0, vec![]),
                        },
                        _ => (Status::Ok, 0, vec![]),
                    };
                    ProxyResponse { op: r.req.op as u16, tag: r.req.tag, status, result, flags: 0 }
                        .encode_frame(&payload, &mut out);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Harness {
    dev: PovDevice,
    next_tag: u64,
    done: HashMap<u64, BlockCompletion>,
    /// Next mailbox to name (cycling: no two exchanges of a test share one within its
    /// hold time).
    next_mailbox: u16,
}

/// A session as its client holds it.
struct Sess {
    id: u64,
    area: u32,
    pid: u32,
    keys: SessionKeys,
    protection: Protection,
    seq: u64,
}

impl Harness {
    fn new(proxy: &str, tweak: impl FnOnce(&mut PovDeviceConfig)) -> Harness {
        let tenants = TenantTable::default();
        tenants.create("acme", b"pw").unwrap();
        tenants.create("other", b"pw2").unwrap();
        let mut cfg = PovDeviceConfig::new("dev0", vec![format!("tcp:{proxy}")]);
        cfg.num_queues = 4;
        cfg.max_sessions = 8;
        tweak(&mut cfg);
        Harness { dev: PovDevice::new(cfg, tenants).unwrap(), next_tag: 1, done: HashMap::new(), next_mailbox: 0 }
    }

    fn submit(&mut self, op: BlockOp, offset: u64, buf: Vec<u8>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.dev.submit(BlockRequest { op, offset, buf: Box::new(buf), tag });
        tag
    }

    fn pump(&mut self) {
        self.dev.poll(&mut ());
        let mut v = Vec::new();
        self.dev.take_completions(&mut v);
        for c in v {
            self.done.insert(c.tag, c);
        }
    }

    fn wait(&mut self, tag: u64) -> (BlockStatus, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.pump();
            if let Some(c) = self.done.remove(&tag) {
                let mut data = vec![0u8; c.buf.len()];
                c.buf.read_at(0, &mut data).unwrap();
                return (c.status, data);
            }
            assert!(Instant::now() < deadline, "IO {tag} never completed");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn io(&mut self, op: BlockOp, offset: u64, buf: Vec<u8>) -> (BlockStatus, Vec<u8>) {
        let t = self.submit(op, offset, buf);
        self.wait(t)
    }

    /// One admin exchange (MACed with `keys` for an in-session request of the session
    /// in IO area `area`); the answer opened with the exchange's key: from the
    /// session's mailbox for an in-session request (the named shared one if the device
    /// did not take the request as the session's), else from the named one.
    fn exchange(&mut self, mut req: AdminRequest, session: Option<(&SessionKeys, u32)>) -> AdminResponse {
        req.mailbox = self.next_mailbox;
        self.next_mailbox = (self.next_mailbox + 1) % layout::ADMIN_MAILBOXES;
        req.exchange_key = crypto::random();
        let mut b = req.encode().unwrap();
        if let Some((k, _)) = session {
            k.mac_admin(&mut b, ADMIN_MAC_OFFSET);
        }
        let (st, _) = self.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, b.to_vec());
        assert_eq!(st, BlockStatus::Ok, "admin WRITE refused");
        if let Some((_, area)) = session {
            let at = self.dev.geometry().session_mailbox(area);
            let (st, m) = self.io(BlockOp::Read, at, vec![0; ADMIN_RESPONSE_SIZE]);
            assert_eq!(st, BlockStatus::Ok);
            if let Ok(r) = AdminResponse::open(&m, SESSION_MAILBOX, &req.exchange_key) {
                return r;
            }
        }
        let (st, m) = self.io(BlockOp::Read, layout::mailbox_offset(req.mailbox), vec![0; ADMIN_RESPONSE_SIZE]);
        assert_eq!(st, BlockStatus::Ok);
        AdminResponse::open(&m, req.mailbox, &req.exchange_key).expect("our answer opens with our key")
    }

    /// Hello + OpenSession with the given grant; the session if it opened.
    fn open_with(&mut self, tenant: &str, secret: &[u8], pid: u32, grant: u8, prefix: &str) -> (AdminResponse, Option<Sess>) {
        let nc: [u8; 32] = crypto::random();
        let hello = AdminRequest { tenant: tenant.into(), nonce: nc, ..AdminRequest::new(AdminOp::Hello, pid) };
        let ch = self.exchange(hello, None);
        assert_eq!(ch.status(), Status::Ok, "Hello is answered for any valid tenant name");
        let proof = crypto::open_proof(secret, tenant, &nc, &ch.device_nonce, pid, grant, prefix);
        let open = AdminRequest {
            exchange_id: ch.exchange_id,
            grant_flags: grant,
            prefix: prefix.into(),
            mac: proof,
            ..AdminRequest::new(AdminOp::OpenSession, pid)
        };
        let r = self.exchange(open, None);
        let protection = if grant & GRANT_INTEGRITY_ONLY != 0 { Protection::IntegrityOnly } else { Protection::Confidential };
        let sess = (r.status() == Status::Ok).then(|| Sess {
            id: r.session_id,
            area: r.area,
            pid,
            keys: SessionKeys::derive(secret, &nc, &ch.device_nonce, tenant, r.session_id),
            protection,
            seq: 1,
        });
        (r, sess)
    }

    fn open_session(&mut self, tenant: &str, secret: &[u8], pid: u32) -> (AdminResponse, Option<Sess>) {
        self.open_with(tenant, secret, pid, 0, "")
    }

    /// An in-session admin request of `s` (`fill` may change any field, e.g. the PID).
    fn admin_in(&mut self, s: &mut Sess, op: AdminOp, fill: impl FnOnce(&mut AdminRequest)) -> AdminResponse {
        let mut req = AdminRequest { session_id: s.id, seq: s.seq, ..AdminRequest::new(op, s.pid) };
        s.seq += 1;
        fill(&mut req);
        self.exchange(req, Some((&s.keys, s.area)))
    }

    fn create_queue(&mut self, s: &mut Sess) -> AdminResponse {
        self.admin_in(s, AdminOp::CreateQueue, |_| {})
    }

    /// A request as `s` writes it: header, payload, tag.
    fn request_bytes(s: &Sess, h: &RequestHeader, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; pov_proto::io::round_to_sector(HEADER_SIZE + payload.len())];
        h.encode_into(&mut b);
        b[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
        s.keys.seal_request(h.queue_id, h.request_id, &mut b[..HEADER_SIZE + payload.len()], REQUEST_TAG_OFFSET);
        b
    }

    /// Opens a response slot image read from the device with `s`'s keys.
    fn open_response(s: &Sess, q: u32, b: &mut [u8]) -> (ResponseHeader, Vec<u8>) {
        let rh = ResponseHeader::decode(b).unwrap();
        let total = HEADER_SIZE + rh.payload_len as usize;
        s.keys
            .open_response(q, rh.request_id, &mut b[..total], HEADER_SIZE, RESPONSE_TAG_OFFSET, s.protection)
            .expect("a response of our session opens with our keys");
        let p = b[HEADER_SIZE..total].to_vec();
        (rh, p)
    }

    /// Sends a request and reads the response (READ submitted right after the WRITE,
    /// so it parks until the proxy answers).
    fn call(&mut self, s: &Sess, q: u32, h: &RequestHeader, payload: &[u8], resp_len: usize) -> (ResponseHeader, Vec<u8>) {
        let g = self.dev.geometry();
        let w = self.submit(BlockOp::Write, g.request_slot(q), Self::request_bytes(s, h, payload));
        let r = self.submit(BlockOp::Read, g.response_slot(q), vec![0; pov_proto::io::round_to_sector(HEADER_SIZE + resp_len)]);
        assert_eq!(self.wait(w).0, BlockStatus::Ok);
        let (st, mut b) = self.wait(r);
        assert_eq!(st, BlockStatus::Ok);
        let (rh, p) = Self::open_response(s, q, &mut b);
        assert_eq!(rh.request_id, h.request_id);
        (rh, p)
    }

    /// Reads and opens the current response of queue `q`.
    fn read_response(&mut self, s: &Sess, q: u32, len: usize) -> (ResponseHeader, Vec<u8>) {
        let g = self.dev.geometry();
        let (st, mut b) = self.io(BlockOp::Read, g.response_slot(q), vec![0; len]);
        assert_eq!(st, BlockStatus::Ok);
        Self::open_response(s, q, &mut b)
    }
}

fn hdr(op: Op, q: u32, s: &Sess, rid: u64) -> RequestHeader {
    RequestHeader {
        op,
        queue_id: q,
        pid: s.pid,
        session_id: s.id,
        request_id: rid,
        file_handle: 0,
        offset: 0,
        length: 0,
        flags: 0,
        payload_len: 0,
        hint: SdkHint::default(),
    }
}

/// Opens a session of acme and one queue.
fn setup(h: &mut Harness, pid: u32) -> (Sess, u32) {
    let (r, s) = h.open_session("acme", b"pw", pid);
    assert_eq!(r.status(), Status::Ok);
    let mut s = s.unwrap();
    let q = h.create_queue(&mut s);
    assert_eq!(q.status(), Status::Ok);
    (s, q.queue_id)
}

fn open_file(h: &mut Harness, s: &Sess, q: u32, rid: u64, path: &str, fl: u32) -> (Status, u64) {
    let mut o = hdr(Op::Open, q, s, rid);
    o.flags = fl;
    o.payload_len = path.len() as u32;
    let (r, _) = h.call(s, q, &o, path.as_bytes(), 0);
    (r.status, r.result)
}

#[test]
fn config_guard_and_serial() {
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    let (st, b) = h.io(BlockOp::Read, 0, vec![0; 4096]);
    assert_eq!(st, BlockStatus::Ok);
    let c = ConfigSpace::decode(&b).unwrap();
    assert_eq!(c.name, "dev0");
    assert_eq!(c.geometry.queues_per_area, 4);
    assert_eq!(h.io(BlockOp::Write, 0, vec![0; 512]).0, BlockStatus::IoErr, "config is read-only");
    let (st, b) = h.io(BlockOp::Read, 8192, vec![1; 512]);
    assert_eq!((st, b.iter().all(|x| *x == 0)), (BlockStatus::Ok, true), "guard reads zeros");
    assert_eq!(h.io(BlockOp::Write, 8192, vec![0; 512]).0, BlockStatus::IoErr);
    let cap = h.dev.capacity_sectors() * 512;
    assert_eq!(h.io(BlockOp::Read, cap - 512, vec![0; 1024]).0, BlockStatus::IoErr, "past the end");
    let (st, b) = h.io(BlockOp::GetId, 0, vec![0; 20]);
    assert_eq!(st, BlockStatus::Ok);
    assert!(layout::is_pov_serial(&b));
    assert_eq!(h.io(BlockOp::Other(99), 0, vec![]).0, BlockStatus::Unsupported);
    // Misaligned offset.
    assert_eq!(h.io(BlockOp::Read, 100, vec![0; 512]).0, BlockStatus::IoErr);
}

#[test]
fn authentication_and_admin_errors() {
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    assert_eq!(h.open_session("acme", b"wrong", 1).0.status(), Status::AuthFailed);
    assert_eq!(h.open_session("nobody", b"pw", 1).0.status(), Status::AuthFailed);
    let (r, s) = h.open_session("acme", b"pw", 7);
    assert_eq!(r.status(), Status::Ok);
    assert_eq!(r.max_queues, 4);
    let mut s = s.unwrap();
    assert_eq!(h.admin_in(&mut s, AdminOp::CreateQueue, |r| r.pid = 8).status(), Status::PidMismatch);
    assert_eq!(h.admin_in(&mut s, AdminOp::CreateQueue, |r| r.session_id = 12345).status(), Status::BadSession);
    for _ in 0..4 {
        assert_eq!(h.create_queue(&mut s).status(), Status::Ok);
    }
    assert_eq!(h.create_queue(&mut s).status(), Status::NoResources);
    // In-session requests need the session's MAC and a sequence number above the last.
    let mut replay = Sess { seq: s.seq - 1, ..s };
    assert_eq!(h.admin_in(&mut replay, AdminOp::Heartbeat, |_| {}).status(), Status::AuthFailed, "replayed sequence");
    let forger = Sess { keys: SessionKeys::derive(b"pw", &[0; 32], &[0; 32], "acme", replay.id), ..replay };
    let mut forger = Sess { seq: 1000, ..forger };
    assert_eq!(h.admin_in(&mut forger, AdminOp::Heartbeat, |_| {}).status(), Status::AuthFailed, "wrong keys");
    // A record without magic has nowhere to be answered: its WRITE fails.
    assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, vec![0xAB; 1024]).0, BlockStatus::IoErr);
    // One that is too short, likewise.
    assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, vec![0; 512]).0, BlockStatus::IoErr);
    // A well-formed record with an unknown operation gets a sealed error answer.
    let mut b =
        AdminRequest { mailbox: 200, exchange_key: [9; 32], ..AdminRequest::new(AdminOp::Heartbeat, 7) }.encode().unwrap();
    b[6] = 77;
    assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, b.to_vec()).0, BlockStatus::Ok);
    let (_, m) = h.io(BlockOp::Read, layout::mailbox_offset(200), vec![0; 512]);
    assert_eq!(AdminResponse::open(&m, 200, &[9; 32]).unwrap().status(), Status::UnknownOp);
    assert!(h.dev.stats().auth_failures >= 4);
}

#[test]
fn a_process_holding_every_mailbox_cannot_starve_a_session() {
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    let (mut s, _) = setup(&mut h, 7);
    std::thread::sleep(Duration::from_millis(pov_proto::admin::MAILBOX_HOLD_MS + 10));
    // The attacker answers itself into all 256 mailboxes (bogus requests with a valid
    // magic get sealed error answers), so every mailbox is held.
    for m in 0..layout::ADMIN_MAILBOXES {
        let mut b =
            AdminRequest { mailbox: m, exchange_key: [1; 32], ..AdminRequest::new(AdminOp::Heartbeat, 9) }.encode().unwrap();
        b[6] = 77;
        assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, b.to_vec()).0, BlockStatus::Ok);
    }
    // Another unauthenticated request (a Hello) must wait for a mailbox...
    let hello = AdminRequest { mailbox: 3, exchange_key: [2; 32], tenant: "acme".into(), ..AdminRequest::new(AdminOp::Hello, 8) };
    assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, hello.encode().unwrap().to_vec()).0, BlockStatus::IoErr);
    // ...and so must a forged in-session one...
    let guessed = SessionKeys::derive(b"pw", &[0; 32], &[0; 32], "acme", s.id);
    let forged = AdminRequest {
        mailbox: 5,
        exchange_key: [3; 32],
        session_id: s.id,
        seq: 1000,
        ..AdminRequest::new(AdminOp::Heartbeat, 7)
    };
    let mut f = forged.encode().unwrap();
    guessed.mac_admin(&mut f, ADMIN_MAC_OFFSET);
    assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, f.to_vec()).0, BlockStatus::IoErr);
    let busy = h.dev.stats().admin_mailbox_busy;
    assert_eq!(busy, 2);
    // ...but the session's own heartbeat and queue requests go through.
    assert_eq!(h.admin_in(&mut s, AdminOp::Heartbeat, |_| {}).status(), Status::Ok);
    assert_eq!(h.create_queue(&mut s).status(), Status::Ok);
    assert_eq!(h.dev.stats().admin_mailbox_busy, busy);
}

/// An open session's authentic admin requests are answered in its own session mailbox,
/// which no other exchange writes: two sessions' requests naming the same shared
/// mailbox never see each other's answers; unauthentic ones are answered in the shared
/// mailbox they name and leave the session mailbox alone.
#[test]
fn session_answers_go_to_the_sessions_own_mailbox() {
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    let (mut a, _) = setup(&mut h, 7);
    let (mut b, _) = setup(&mut h, 8);
    let g = h.dev.geometry();
    let write_in = |h: &mut Harness, s: &mut Sess, keys: Option<&SessionKeys>, op: AdminOp, m: u16| {
        let req = AdminRequest {
            session_id: s.id,
            seq: s.seq,
            mailbox: m,
            exchange_key: crypto::random(),
            ..AdminRequest::new(op, s.pid)
        };
        s.seq += 1;
        let mut rec = req.encode().unwrap();
        keys.unwrap_or(&s.keys).mac_admin(&mut rec, ADMIN_MAC_OFFSET);
        assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, rec.to_vec()).0, BlockStatus::Ok);
        req.exchange_key
    };
    let read = |h: &mut Harness, at: u64| h.io(BlockOp::Read, at, vec![0; 512]).1;
    // Both sessions name shared mailbox 40, one right after the other.
    let key_a = write_in(&mut h, &mut a, None, AdminOp::CreateQueue, 40);
    let key_b = write_in(&mut h, &mut b, None, AdminOp::Heartbeat, 40);
    let ra = AdminResponse::open(&read(&mut h, g.session_mailbox(a.area)), SESSION_MAILBOX, &key_a).expect("A's answer");
    assert_eq!((ra.status(), ra.op), (Status::Ok, AdminOp::CreateQueue as u16));
    let rb = AdminResponse::open(&read(&mut h, g.session_mailbox(b.area)), SESSION_MAILBOX, &key_b).expect("B's answer");
    assert_eq!(rb.status(), Status::Ok);
    assert!(AdminResponse::open(&read(&mut h, layout::mailbox_offset(40)), 40, &key_a).is_err(), "nothing in the shared one");
    // Mailbox 40 was not used: a Hello may take it at once.
    let hello =
        AdminRequest { mailbox: 40, exchange_key: [4; 32], tenant: "acme".into(), ..AdminRequest::new(AdminOp::Hello, 9) };
    assert_eq!(h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, hello.encode().unwrap().to_vec()).0, BlockStatus::Ok);
    // A forged in-session request of session A is answered in the shared mailbox it
    // names; A's session mailbox still holds A's answer.
    let guessed = SessionKeys::derive(b"pw", &[0; 32], &[0; 32], "acme", a.id);
    let key_f = write_in(&mut h, &mut a.clone_ids(), Some(&guessed), AdminOp::Heartbeat, 41);
    let rf = AdminResponse::open(&read(&mut h, layout::mailbox_offset(41)), 41, &key_f).unwrap();
    assert_eq!(rf.status(), Status::AuthFailed);
    assert!(AdminResponse::open(&read(&mut h, g.session_mailbox(a.area)), SESSION_MAILBOX, &key_a).is_ok());
    // A closed session's heartbeat gets BadSession (in the mailbox it names).
    assert_eq!(h.admin_in(&mut a, AdminOp::CloseSession, |_| {}).status(), Status::Ok);
    assert_eq!(h.admin_in(&mut a, AdminOp::Heartbeat, |_| {}).status(), Status::BadSession);
}

#[test]
fn failed_authentications_are_rate_limited_per_tenant() {
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(h.open_session("acme", format!("guess{i}").as_bytes(), 1).0.status());
    }
    let failed = statuses.iter().filter(|s| **s == Status::AuthFailed).count();
    let limited = statuses.iter().filter(|s| **s == Status::RateLimited).count();
    assert_eq!((failed, limited), (5, 7), "{statuses:?}");
    // While limited, even the right secret waits (a guesser learns nothing from a hit).
    assert_eq!(h.open_session("acme", b"pw", 1).0.status(), Status::RateLimited);
    // Other tenants are not affected.
    assert_eq!(h.open_session("other", b"pw2", 1).0.status(), Status::Ok);
    assert_eq!(h.dev.stats().auth_failures, 5);
}

#[test]
fn file_round_trip_through_proxy() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    let (st, fh) = open_file(&mut h, &s, q, 10, "/dir/f", flags::CREATE | flags::WRITE);
    assert_eq!(st, Status::Ok);
    assert!(fh > 0);
    let data: Vec<u8> = (0..pov_proto::MAX_IO_BYTES).map(|i| (i % 251) as u8).collect();
    let mut w = hdr(Op::Write, q, &s, 11);
    w.file_handle = fh;
    w.payload_len = data.len() as u32;
    let (r, _) = h.call(&s, q, &w, &data, 0);
    assert_eq!((r.status, r.result), (Status::Ok, data.len() as u64));
    let mut rd = hdr(Op::Read, q, &s, 12);
    rd.file_handle = fh;
    rd.length = data.len() as u32;
    let (r, p) = h.call(&s, q, &rd, &[], data.len());
    assert_eq!(r.status, Status::Ok);
    assert_eq!(p, data);
    // Re-reading the response slot returns the same response; what is stored there is
    // ciphertext (another process reading the slot learns nothing).
    let g = h.dev.geometry();
    let (_, raw) = h.io(BlockOp::Read, g.response_slot(q) + 4096, vec![0; 4096]);
    assert_ne!(&raw[..], &data[4096 - HEADER_SIZE..8192 - HEADER_SIZE]);
    let (r2, p2) = h.read_response(&s, q, HEADER_SIZE + data.len());
    assert_eq!((r2.request_id, p2 == data), (12, true));
    // Close, then the handle is gone.
    let mut c = hdr(Op::Close, q, &s, 13);
    c.file_handle = fh;
    assert_eq!(h.call(&s, q, &c, &[], 0).0.status, Status::Ok);
    rd.request_id = 14;
    assert_eq!(h.call(&s, q, &rd, &[], 16).0.status, Status::BadHandle);
    let st = h.dev.stats();
    assert_eq!(st.sessions, 1);
    assert!(st.requests >= 4);
    assert_eq!((st.block_io_errors, st.incomplete_requests, st.crossing_ios), (0, 0, 0));
    assert_eq!(st.max_request_write_bytes, (HEADER_SIZE + data.len()) as u64);
    // The tenant's live counters: one of each operation, the bad handle as an error by
    // status, the file data both ways, one session, nothing in flight.
    assert_eq!(st.tenants.len(), 1, "{:?}", st.tenants);
    let t = &st.tenants[0];
    assert_eq!(t.tenant, "acme");
    assert_eq!((t.requests, t.errors, t.sessions, t.in_flight), (5, 1, 1, 0));
    assert_eq!((t.read_bytes, t.write_bytes), (data.len() as u64, data.len() as u64));
    let by_op: Vec<(&str, u64)> = t.by_op.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(by_op, [("close", 1), ("open", 1), ("read", 2), ("write", 1)]);
    assert_eq!(t.errors_by_status.get("bad_handle"), Some(&1));
    assert_eq!(t.latency.count, 5);
}

#[test]
fn bad_requests_get_errors_and_device_keeps_serving() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    let g = h.dev.geometry();
    // Random bytes: ownership cannot be established -> the WRITE fails.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), noise).0, BlockStatus::IoErr);
    // Wrong PID: the WRITE fails and the owner's queue is untouched.
    let other_pid = Sess { pid: 6, ..Sess { keys: SessionKeys::derive(b"x", &[0; 32], &[0; 32], "acme", 0), ..s.clone_ids() } };
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&other_pid, &hdr(Op::Stat, q, &other_pid, 1), &[])).0,
        BlockStatus::IoErr
    );
    // Wrong session ID.
    let other_sid = Sess { id: s.id ^ 1, ..s.clone_ids() };
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&other_sid, &hdr(Op::Stat, q, &other_sid, 1), &[])).0,
        BlockStatus::IoErr
    );
    // Queue that is not open / out of range.
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q + 1), Harness::request_bytes(&s, &hdr(Op::Stat, q + 1, &s, 1), &[])).0,
        BlockStatus::IoErr
    );
    assert_eq!(h.io(BlockOp::Write, g.capacity_bytes(), vec![0; 512]).0, BlockStatus::IoErr);
    // Owner's malformed requests (header sealed alone): error responses.
    let mut bad = Harness::request_bytes(&s, &hdr(Op::Stat, q, &s, 21), &[]);
    bad[0] = b'X';
    s.keys.seal_request(q, 21, &mut bad[..HEADER_SIZE], REQUEST_TAG_OFFSET);
    let w = h.submit(BlockOp::Write, g.request_slot(q), bad);
    assert_eq!(h.wait(w).0, BlockStatus::Ok);
    let (r, _) = h.read_response(&s, q, 512);
    assert_eq!((r.status, r.request_id), (Status::BadMagic, 21));
    let mut unk = Harness::request_bytes(&s, &hdr(Op::Stat, q, &s, 22), &[]);
    unk[6] = 200;
    s.keys.seal_request(q, 22, &mut unk[..HEADER_SIZE], REQUEST_TAG_OFFSET);
    h.io(BlockOp::Write, g.request_slot(q), unk);
    assert_eq!(h.read_response(&s, q, 512).0.status, Status::UnknownOp);
    let mut big = hdr(Op::Read, q, &s, 23);
    big.length = pov_proto::MAX_IO_BYTES + 1;
    let mut bb = vec![0u8; HEADER_SIZE];
    big.encode_into(&mut bb);
    s.keys.seal_request(q, 23, &mut bb, REQUEST_TAG_OFFSET);
    h.io(BlockOp::Write, g.request_slot(q), bb);
    assert_eq!(h.read_response(&s, q, 512).0.status, Status::TooLarge);
    // Escaping the tenant namespace.
    assert_eq!(open_file(&mut h, &s, q, 24, "/../other/secret", flags::CREATE).0, Status::Permission);
    // Truncated request: header announces more payload than ever arrives.
    let mut t = hdr(Op::Write, q, &s, 25);
    t.payload_len = 8192;
    let mut b = vec![0u8; 512];
    t.encode_into(&mut b);
    h.io(BlockOp::Write, g.request_slot(q), b);
    let (r, _) = h.read_response(&s, q, 512);
    assert_eq!((r.status, r.request_id), (Status::Invalid, 25));
    // Its ID is used up: the whole request arriving late is refused, so the device
    // never seals two answers under one (queue, request ID) nonce.
    let late = Harness::request_bytes(&s, &t, &[7u8; 8192]);
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), late).0, BlockStatus::IoErr);
    assert_eq!(h.read_response(&s, q, 512).0.request_id, 25, "the answer stays");
    // The device still serves the session.
    let (st, _) = open_file(&mut h, &s, q, 26, "/ok", flags::CREATE);
    assert_eq!(st, Status::Ok);
    // Six WRITEs above failed at the block level; one request never got its payload.
    let st = h.dev.stats();
    assert_eq!((st.block_io_errors, st.incomplete_requests), (6, 1));
}

impl Sess {
    /// The same session's identity with a copy of its keys (for tests that forge).
    fn clone_ids(&self) -> Sess {
        Sess {
            id: self.id,
            area: self.area,
            pid: self.pid,
            keys: SessionKeys::derive(b"?", &[1; 32], &[1; 32], "?", 0),
            protection: self.protection,
            seq: self.seq,
        }
    }
}

#[test]
fn other_tenant_cannot_use_handles_or_paths() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    let (_, fh) = open_file(&mut h, &s, q, 10, "/secret", flags::CREATE | flags::WRITE);
    let (_, s2) = h.open_session("other", b"pw2", 9);
    let mut s2 = s2.unwrap();
    let q2 = h.create_queue(&mut s2).queue_id;
    // A handle of another session is not valid here.
    let mut rd = hdr(Op::Read, q2, &s2, 1);
    rd.file_handle = fh;
    rd.length = 10;
    assert_eq!(h.call(&s2, q2, &rd, &[], 10).0.status, Status::BadHandle);
    // The same path resolves inside the other tenant's namespace: not found there.
    let errors = h.dev.stats().request_errors;
    assert_eq!(open_file(&mut h, &s2, q2, 2, "/secret", 0).0, Status::NotFound);
    let st = h.dev.stats();
    assert_eq!((st.requests_not_found, st.request_errors), (1, errors), "NotFound is counted apart from errors");
    // And a session cannot use another session's queue.
    let g = h.dev.geometry();
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&s2, &hdr(Op::Stat, q, &s2, 3), &[])).0,
        BlockStatus::IoErr
    );
}

/// The attacks of issue 10 on a shared device: another process with the device open —
/// of the same tenant (it knows the secret) and of another — reads every response slot
/// and every mailbox while an honest session does verified IO, and forges requests on
/// the honest queue with the honest session's identity. It learns none of the data,
/// and nothing it writes is served.
#[test]
fn another_process_can_neither_read_responses_nor_place_requests() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    let marker = b"PLAINTEXT-MARKER-0123456789";
    let data: Vec<u8> = marker.iter().copied().cycle().take(64 * 1024).collect();
    let (_, fh) = open_file(&mut h, &s, q, 10, "/victim", flags::CREATE | flags::WRITE);
    let mut w = hdr(Op::Write, q, &s, 11);
    w.file_handle = fh;
    w.payload_len = data.len() as u32;
    assert_eq!(h.call(&s, q, &w, &data, 0).0.status, Status::Ok);
    let mut rd = hdr(Op::Read, q, &s, 12);
    rd.file_handle = fh;
    rd.length = data.len() as u32;
    assert_eq!(h.call(&s, q, &rd, &[], data.len()).1, data, "the honest session reads its data");
    // The attacker of the same tenant: opens its own session (it knows the secret)...
    let (_, mate) = h.open_session("acme", b"pw", 5);
    let mate = mate.unwrap();
    assert_ne!(mate.id, s.id);
    // ...and reads everything a host process can read.
    let g = h.dev.geometry();
    let mut seen = Vec::new();
    for qid in 0..g.total_queues() {
        seen.extend(h.io(BlockOp::Read, g.response_slot(qid), vec![0; HEADER_SIZE + data.len()]).1);
    }
    // The response window that serves the last answer (request 12: parity 0) at once.
    let (st, b) = h.io(BlockOp::Read, g.response_window(q, 12), vec![0; HEADER_SIZE + data.len()]);
    assert_eq!(st, BlockStatus::Ok);
    assert_eq!(ResponseHeader::decode(&b).unwrap().request_id, 12, "the window holds the answer, sealed");
    seen.extend(b);
    seen.extend(h.io(BlockOp::Read, layout::ADMIN_MAILBOX_OFFSET, vec![0; 256 * 512]).1);
    assert!(!seen.windows(marker.len()).any(|w| w == marker), "plaintext leaked to another process");
    assert!(!seen.windows(8).any(|w| w == s.id.to_le_bytes()), "the honest session ID is readable");
    // Forged requests on the honest queue with the honest identity: with its own keys,
    // with keys derived from the secret and guessed nonces, and a replay.
    for keys in [mate.keys, SessionKeys::derive(b"pw", &[0; 32], &[0; 32], "acme", s.id)] {
        let forger = Sess { keys, ..s.clone_ids() };
        let mut f = hdr(Op::Read, q, &forger, 100);
        f.file_handle = fh;
        f.length = 16;
        let b = Harness::request_bytes(&forger, &f, &[]);
        assert_eq!(h.io(BlockOp::Write, g.request_slot(q), b).0, BlockStatus::IoErr, "forged request served");
    }
    let replay = Harness::request_bytes(&s, &rd, &[]);
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), replay).0, BlockStatus::IoErr, "replayed request served");
    // The honest session keeps working, and its last response is still its own.
    let (r, p) = h.read_response(&s, q, HEADER_SIZE + data.len());
    assert_eq!((r.request_id, p == data), (12, true));
    rd.request_id = 13;
    assert_eq!(h.call(&s, q, &rd, &[], data.len()).1, data);
    assert!(h.dev.stats().auth_failures >= 3);
}

/// An integrity-only session (its tenant's containers trust each other) leaves payloads
/// readable, and still refuses forged requests.
#[test]
fn integrity_only_sessions_authenticate_but_do_not_encrypt() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (r, s) = h.open_with("acme", b"pw", 5, GRANT_INTEGRITY_ONLY, "");
    assert_eq!(r.status(), Status::Ok);
    let mut s = s.unwrap();
    let q = h.create_queue(&mut s).queue_id;
    let (_, fh) = open_file(&mut h, &s, q, 10, "/open", flags::CREATE | flags::WRITE);
    let data = b"visible-to-co-tenants".repeat(100);
    let mut w = hdr(Op::Write, q, &s, 11);
    w.file_handle = fh;
    w.payload_len = data.len() as u32;
    h.call(&s, q, &w, &data, 0);
    let mut rd = hdr(Op::Read, q, &s, 12);
    rd.file_handle = fh;
    rd.length = data.len() as u32;
    assert_eq!(h.call(&s, q, &rd, &[], data.len()).1, data);
    let g = h.dev.geometry();
    let (st, raw) = h.io(BlockOp::Read, g.response_slot(q), vec![0; pov_proto::io::round_to_sector(HEADER_SIZE + data.len())]);
    assert_eq!(st, BlockStatus::Ok);
    assert!(raw[HEADER_SIZE..HEADER_SIZE + data.len()] == data[..], "payload in clear");
    let forger = Sess { keys: SessionKeys::derive(b"pw", &[0; 32], &[0; 32], "acme", s.id), ..s.clone_ids() };
    let b = Harness::request_bytes(&forger, &hdr(Op::Stat, q, &forger, 50), &[]);
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), b).0, BlockStatus::IoErr);
}

/// A session opened with a narrower grant than its tenant's: read-only, a path prefix.
#[test]
fn grants_limit_what_a_session_may_do() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (full, q) = setup(&mut h, 5);
    assert_eq!(open_file(&mut h, &full, q, 10, "/pub/a", flags::CREATE | flags::WRITE).0, Status::Ok);
    assert_eq!(open_file(&mut h, &full, q, 11, "/private/b", flags::CREATE | flags::WRITE).0, Status::Ok);
    // Read-only, limited to /pub.
    let (r, ro) = h.open_with("acme", b"pw", 6, GRANT_READ_ONLY, "pub");
    assert_eq!(r.status(), Status::Ok);
    let mut ro = ro.unwrap();
    let q2 = h.create_queue(&mut ro).queue_id;
    assert_eq!(open_file(&mut h, &ro, q2, 1, "/pub/a", 0).0, Status::Ok, "reading inside the prefix");
    assert_eq!(open_file(&mut h, &ro, q2, 2, "/pub/a", flags::WRITE).0, Status::Permission, "writing");
    assert_eq!(open_file(&mut h, &ro, q2, 3, "/pub/new", flags::CREATE | flags::WRITE).0, Status::Permission, "creating");
    assert_eq!(open_file(&mut h, &ro, q2, 4, "/private/b", 0).0, Status::Permission, "outside the prefix");
    assert_eq!(open_file(&mut h, &ro, q2, 5, "/pubx", 0).0, Status::Permission, "a sibling of the prefix");
    let mut rm = hdr(Op::Remove, q2, &ro, 6);
    rm.payload_len = 6;
    assert_eq!(h.call(&ro, q2, &rm, b"/pub/a", 0).0.status, Status::Permission, "removing");
    let mut ls = hdr(Op::List, q2, &ro, 7);
    ls.payload_len = 1;
    assert_eq!(h.call(&ro, q2, &ls, b"/", 0).0.status, Status::Permission, "listing above the prefix");
    // The grant is bound into the proof: claiming more than was proven fails.
    let nc: [u8; 32] = crypto::random();
    let ch = h.exchange(AdminRequest { tenant: "acme".into(), nonce: nc, ..AdminRequest::new(AdminOp::Hello, 7) }, None);
    let proof = crypto::open_proof(b"pw", "acme", &nc, &ch.device_nonce, 7, GRANT_READ_ONLY, "pub");
    let open = AdminRequest {
        exchange_id: ch.exchange_id,
        grant_flags: 0,
        prefix: String::new(),
        mac: proof,
        ..AdminRequest::new(AdminOp::OpenSession, 7)
    };
    assert_eq!(h.exchange(open, None).status(), Status::AuthFailed);
}

/// Rename names two paths: both must lie inside the session's grant (an attacker
/// holding a prefix grant can neither move a file out of it nor pull one in), and a
/// malformed payload is refused at the DPU. The names reach the proxy normalized.
#[test]
fn rename_checks_both_names_against_the_grant() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (full, q) = setup(&mut h, 5);
    assert_eq!(open_file(&mut h, &full, q, 10, "/pub/a", flags::CREATE | flags::WRITE).0, Status::Ok);
    assert_eq!(open_file(&mut h, &full, q, 11, "/private/b", flags::CREATE | flags::WRITE).0, Status::Ok);
    let (r, rw) = h.open_with("acme", b"pw", 6, 0, "pub");
    assert_eq!(r.status(), Status::Ok);
    let mut rw = rw.unwrap();
    let q2 = h.create_queue(&mut rw).queue_id;
    let rename = |h: &mut Harness, s: &Sess, q: u32, id: u64, payload: &[u8]| {
        let mut m = hdr(Op::Rename, q, s, id);
        m.payload_len = payload.len() as u32;
        h.call(s, q, &m, payload, 0).0.status
    };
    let join = pov_proto::path::join_rename;
    assert_eq!(rename(&mut h, &rw, q2, 1, &join("/pub/a", "/private/a")), Status::Permission, "moving a file out");
    assert_eq!(rename(&mut h, &rw, q2, 2, &join("/private/b", "/pub/b")), Status::Permission, "pulling one in");
    assert_eq!(rename(&mut h, &rw, q2, 3, &join("/pub/a", "/pub/../private/a")), Status::Permission, "dot-dot");
    assert_eq!(rename(&mut h, &rw, q2, 4, b"/pub/a/pub/c"), Status::Invalid, "no separator");
    assert_eq!(rename(&mut h, &rw, q2, 5, &join("/pub", "/")), Status::Permission, "onto the root");
    assert_eq!(rename(&mut h, &rw, q2, 6, &join("//pub/./a", "pub/c")), Status::Ok, "inside the prefix");
    assert_eq!(open_file(&mut h, &full, q, 12, "/pub/c", 0).0, Status::Ok, "the proxy got both names, normalized");
    assert_eq!(open_file(&mut h, &full, q, 13, "/pub/a", 0).0, Status::NotFound);
    // A read-only session may not rename, make directories or set attributes.
    let (r, ro) = h.open_with("acme", b"pw", 7, GRANT_READ_ONLY, "");
    assert_eq!(r.status(), Status::Ok);
    let mut ro = ro.unwrap();
    let q3 = h.create_queue(&mut ro).queue_id;
    assert_eq!(rename(&mut h, &ro, q3, 1, &join("/pub/c", "/pub/d")), Status::Permission);
    for (i, op) in [Op::Mkdir, Op::SetAttr].into_iter().enumerate() {
        let mut m = hdr(op, q3, &ro, 10 + i as u64);
        m.payload_len = 4;
        assert_eq!(h.call(&ro, q3, &m, b"/pub", 0).0.status, Status::Permission, "{op:?}");
    }
    let mut f = hdr(Op::StatFs, q3, &ro, 20);
    f.payload_len = 1;
    assert_eq!(h.call(&ro, q3, &f, b"/", 0).0.status, Status::Ok, "statfs reads nothing of anyone's");
}

/// Per-tenant limits: one tenant opening sessions until refused leaves room for another.
#[test]
fn one_tenant_cannot_take_every_area() {
    let mut h = Harness::new("127.0.0.1:1", |c| {
        c.max_sessions = 4;
        c.max_queues_per_tenant = Some(3);
    });
    let mut mine = Vec::new();
    loop {
        let (r, s) = h.open_session("acme", b"pw", 1);
        if r.status() != Status::Ok {
            assert_eq!(r.status(), Status::Quota, "refused by the tenant's limit, not by a full device");
            break;
        }
        mine.push(s.unwrap());
        assert!(mine.len() <= 4, "no limit");
    }
    assert_eq!(mine.len(), 3, "max_sessions - 1 by default");
    let (r, _) = h.open_session("other", b"pw2", 2);
    assert_eq!(r.status(), Status::Ok, "another tenant still gets a session");
    // The queue limit counts every session of the tenant.
    let mut s0 = mine.remove(0);
    let mut s1 = mine.remove(0);
    assert_eq!(h.create_queue(&mut s0).status(), Status::Ok);
    assert_eq!(h.create_queue(&mut s0).status(), Status::Ok);
    assert_eq!(h.create_queue(&mut s1).status(), Status::Ok);
    assert_eq!(h.create_queue(&mut s1).status(), Status::Quota);
}

#[test]
fn split_request_is_reassembled() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    let (_, fh) = open_file(&mut h, &s, q, 10, "/split", flags::CREATE | flags::WRITE);
    let data = vec![7u8; 64 * 1024];
    let mut w = hdr(Op::Write, q, &s, 30);
    w.file_handle = fh;
    w.payload_len = data.len() as u32;
    let all = Harness::request_bytes(&s, &w, &data);
    let g = h.dev.geometry();
    // Deliver the tail first, then the head (a split the block layer could produce).
    let cut = 32 * 1024;
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q) + cut as u64, all[cut..].to_vec()).0, BlockStatus::Ok);
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), all[..cut].to_vec()).0, BlockStatus::Ok);
    let (r, _) = h.read_response(&s, q, 512);
    assert_eq!((r.status, r.result, r.request_id), (Status::Ok, data.len() as u64, 30));
    let st = h.dev.stats();
    assert!(st.split_requests >= 1);
    // The largest piece was the tail; the response READ was one header.
    assert_eq!(st.max_request_write_bytes, (all.len() - cut) as u64);
    assert_eq!(st.max_response_read_bytes, 512);
}

#[test]
fn parked_read_and_proxy_unavailable() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    // The fake proxy answers "slow" after 200 ms: the response READ parks meanwhile.
    let t0 = Instant::now();
    let (st, _) = open_file(&mut h, &s, q, 10, "slow", flags::CREATE);
    assert_eq!(st, Status::Ok);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    // No proxy listening: the request is held for a proxy to come back, then fails
    // with Unavailable at its deadline, not a hang.
    let mut h = Harness::new("127.0.0.1:1", |c| c.request_timeout_ms = 300);
    let (s, q) = setup(&mut h, 5);
    let t0 = Instant::now();
    assert_eq!(open_file(&mut h, &s, q, 10, "/x", flags::CREATE).0, Status::Unavailable);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "held until its deadline: {waited:?}");
    assert!(h.dev.stats().failover.held >= 1);
}

#[test]
fn a_clean_close_is_counted_as_closed_not_reclaimed() {
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    let (mut s, _q) = setup(&mut h, 5);
    assert_eq!(h.admin_in(&mut s, AdminOp::CloseSession, |_| {}).status(), Status::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.dev.stats().sessions_closed == 0 {
        assert!(Instant::now() < deadline, "closed session never freed");
        h.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.dev.stats().sessions_reclaimed, 0, "a clean close is not a reclaim");
    assert_eq!(h.dev.stats().tenants[0].sessions, 0, "the tenant's open sessions drop back");
}

#[test]
fn dead_session_is_reclaimed() {
    let mut h = Harness::new("127.0.0.1:1", |c| {
        c.heartbeat_interval_ms = 20;
        c.session_timeout_ms = 100;
    });
    let (mut s, q) = setup(&mut h, 5);
    assert_eq!(h.admin_in(&mut s, AdminOp::Heartbeat, |_| {}).status(), Status::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.dev.stats().sessions_reclaimed == 0 {
        assert!(Instant::now() < deadline, "session never reclaimed");
        h.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.admin_in(&mut s, AdminOp::Heartbeat, |_| {}).status(), Status::BadSession);
    let g = h.dev.geometry();
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&s, &hdr(Op::Stat, q, &s, 1), &[])).0,
        BlockStatus::IoErr
    );
    assert_eq!(h.dev.stats().sessions, 0);
}

/// Response windows (`docs/protocol.md`, "Response windows"): a READ of window
/// `request_id % 2` submitted with its request's WRITE gets that request's response in
/// either order of arrival, a stale response of the other parity is never served to
/// it, another process's READs neither steal nor delay the owner's, and a READ whose
/// request never comes is answered after `EARLY_READ_TIMEOUT`, not held forever.
#[test]
fn response_windows_serve_reads_that_arrive_before_their_write() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (s, q) = setup(&mut h, 5);
    let g = h.dev.geometry();
    let cfg = ConfigSpace::decode(&h.io(BlockOp::Read, 0, vec![0; 4096]).1).unwrap();
    assert!(cfg.has(layout::features::RESPONSE_WINDOWS));
    assert_eq!(h.dev.capacity_sectors() * 512, g.capacity_bytes());
    let read_window = |h: &mut Harness, rid: u64| h.submit(BlockOp::Read, g.response_window(q, rid), vec![0; 4096]);
    let opened = |h: &mut Harness, tag: u64| {
        let (st, mut b) = h.wait(tag);
        assert_eq!(st, BlockStatus::Ok);
        Harness::open_response(&s, q, &mut b).0
    };

    // READ first, WRITE second: the READ waits (no request of its parity yet), then
    // gets the response to request 1.
    let r = read_window(&mut h, 1);
    h.pump();
    assert!(!h.done.contains_key(&r), "a window READ before any request waits");
    let mut o = hdr(Op::Open, q, &s, 1);
    o.flags = flags::CREATE;
    o.payload_len = 2;
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&s, &o, b"/a")).0, BlockStatus::Ok);
    assert_eq!(opened(&mut h, r).request_id, 1);
    assert_eq!(h.dev.stats().window_reads_early, 1);

    // The slot now holds response 1 (odd). A READ for request 2 (even) sent before its
    // WRITE is not answered with response 1.
    let r = read_window(&mut h, 2);
    std::thread::sleep(Duration::from_millis(20));
    h.pump();
    assert!(!h.done.contains_key(&r), "a stale response of the other parity is not served");
    // Another process reads both windows meanwhile: its READs wait like the owner's
    // and change nothing for it.
    let spy_even = read_window(&mut h, 2);
    let spy_odd = read_window(&mut h, 3);
    h.pump();
    assert!(h.done.contains_key(&spy_odd), "the odd window serves response 1 at once");
    let mut st = hdr(Op::Stat, q, &s, 2);
    st.payload_len = 2;
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&s, &st, b"/a")).0, BlockStatus::Ok);
    assert_eq!(opened(&mut h, r).request_id, 2);
    assert_eq!(opened(&mut h, spy_even).request_id, 2, "the spy sees only ciphertext of the same response");

    // WRITE first, response ready, READ last: served at once (the usual order).
    let mut st3 = hdr(Op::Stat, q, &s, 3);
    st3.payload_len = 2;
    let w = h.submit(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&s, &st3, b"/a"));
    assert_eq!(h.wait(w).0, BlockStatus::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.dev.stats().in_flight > 0 {
        assert!(Instant::now() < deadline, "request 3 never answered");
        h.pump();
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = read_window(&mut h, 3);
    h.pump();
    assert!(h.done.contains_key(&r), "a ready response of the READ's parity is served at once");
    assert_eq!(opened(&mut h, r).request_id, 3);
    // The legacy slot still serves the last response.
    assert_eq!(h.read_response(&s, q, 4096).0.request_id, 3);

    // A READ whose request never comes is answered after EARLY_READ_TIMEOUT with the
    // slot as it is (its host sees a mismatch), and the device's poller wakes up for it.
    let t0 = Instant::now();
    let r = read_window(&mut h, 4);
    h.pump();
    let wake = h.dev.deadline().expect("a waiting window READ sets a deadline");
    assert!(wake > t0 && wake <= t0 + Duration::from_millis(1100), "{:?}", wake - t0);
    assert_eq!(opened(&mut h, r).request_id, 3);
    assert!(t0.elapsed() >= Duration::from_millis(900), "{:?}", t0.elapsed());
    let stats = h.dev.stats();
    assert_eq!(stats.window_reads_expired, 1);
    assert_eq!(stats.window_reads, 6);

    // A window READ parked behind a request whose tag fails is answered at once.
    let r = read_window(&mut h, 4);
    let mut bad = Harness::request_bytes(&s, &hdr(Op::Stat, q, &s, 4), &[]);
    bad[REQUEST_TAG_OFFSET] ^= 1;
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), bad).0, BlockStatus::IoErr);
    h.pump();
    assert!(h.done.contains_key(&r), "a rejected request releases the READ waiting for it");

    // Windows of a queue nobody opened fail like its response slot; their guard reads
    // zeros (what blkid probes at the end of the device finds).
    assert_eq!(h.io(BlockOp::Read, g.response_window(q + 1, 0), vec![0; 512]).0, BlockStatus::IoErr);
    let (st, b) = h.io(BlockOp::Read, g.capacity_bytes() - 4096, vec![1; 4096]);
    assert_eq!((st, b.iter().all(|x| *x == 0)), (BlockStatus::Ok, true));
    // Freeing the queue's session fails a READ still waiting in a window.
    let r = read_window(&mut h, 6);
    h.pump();
    h.dev.shutdown(&mut ());
    h.pump();
    assert_eq!(h.wait(r).0, BlockStatus::IoErr);
}

/// CreateQueue with a count creates every queue in one exchange, all or none: past the
/// tenant's limit or the area's free queues nothing is created; without a count the
/// answer is as before (one queue, no ID list).
#[test]
fn create_queue_batches_are_all_or_nothing() {
    let mut h = Harness::new("127.0.0.1:1", |c| {
        c.max_queues_per_tenant = Some(6);
        c.request_timeout_ms = 200;
    });
    let (r, s) = h.open_session("acme", b"pw", 5);
    assert_eq!(r.status(), Status::Ok);
    let mut s = s.unwrap();
    let r = h.admin_in(&mut s, AdminOp::CreateQueue, |r| r.count = 3);
    assert_eq!(r.status(), Status::Ok);
    let g = h.dev.geometry();
    let ids: Vec<u32> = (0..3).map(|i| g.queue_id(s.area, i)).collect();
    assert_eq!((r.queue_id, r.queue_ids.clone()), (ids[0], ids.clone()));
    assert_eq!(h.dev.stats().queues, 3);
    // The area holds 4 queues: 2 more do not fit, and none is created.
    assert_eq!(h.admin_in(&mut s, AdminOp::CreateQueue, |r| r.count = 2).status(), Status::NoResources);
    assert_eq!(h.dev.stats().queues, 3);
    assert_eq!(h.admin_in(&mut s, AdminOp::CreateQueue, |r| r.count = 65).status(), Status::Invalid);
    let one = h.create_queue(&mut s);
    assert_eq!((one.status(), one.queue_id, one.queue_ids.len()), (Status::Ok, g.queue_id(s.area, 3), 0));
    // A second session of the tenant: 4 more would pass its limit of 6 (4 in use).
    let (_, s2) = h.open_session("acme", b"pw", 6);
    let mut s2 = s2.unwrap();
    assert_eq!(h.admin_in(&mut s2, AdminOp::CreateQueue, |r| r.count = 4).status(), Status::Quota);
    assert_eq!(h.dev.stats().queues, 4);
    let two = h.admin_in(&mut s2, AdminOp::CreateQueue, |r| r.count = 2);
    assert_eq!((two.status(), two.queue_ids.len()), (Status::Ok, 2));
    // The queues work: a request on the last one of the batch is taken and answered
    // (no proxy listens here: Unavailable at its deadline).
    let q = two.queue_ids[1];
    let (rh, _) = h.call(&s2, q, &hdr(Op::Stat, q, &s2, 1), &[], 0);
    assert_eq!(rh.status, Status::Unavailable);
}
