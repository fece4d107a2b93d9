//! Unit tests of the PoV device against a fake proxy over real TCP.

use crate::block::{BlockCompletion, BlockOp, BlockRequest, BlockStatus};
use crate::device::{PovDevice, PovDeviceConfig};
use crate::tenant::TenantTable;
use pov_proto::admin::{AdminOp, AdminRequest, AdminResponse, QosClass};
use pov_proto::io::{flags, Op, RequestHeader, ResponseHeader, SdkHint};
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
        Harness { dev: PovDevice::new(cfg, tenants).unwrap(), next_tag: 1, done: HashMap::new() }
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

    fn admin(&mut self, req: AdminRequest) -> AdminResponse {
        let (st, _) = self.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, req.encode().unwrap().to_vec());
        assert_eq!(st, BlockStatus::Ok);
        let (st, b) = self.io(BlockOp::Read, layout::ADMIN_RESP_OFFSET, vec![0; 512]);
        assert_eq!(st, BlockStatus::Ok);
        AdminResponse::decode(&b).unwrap()
    }

    fn open_session(&mut self, tenant: &str, secret: &[u8], pid: u32) -> AdminResponse {
        self.admin(AdminRequest {
            op: AdminOp::OpenSession,
            pid,
            queue_id: 0,
            session_id: 0,
            request_id: 1,
            qos: QosClass::Latency,
            tenant: tenant.into(),
            secret: secret.to_vec(),
        })
    }

    fn create_queue(&mut self, session: u64, pid: u32) -> AdminResponse {
        self.admin(AdminRequest {
            op: AdminOp::CreateQueue,
            pid,
            queue_id: 0,
            session_id: session,
            request_id: 2,
            qos: QosClass::Latency,
            tenant: String::new(),
            secret: vec![],
        })
    }

    fn request_bytes(h: &RequestHeader, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; pov_proto::io::round_to_sector(HEADER_SIZE + payload.len())];
        h.encode_into(&mut b);
        b[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
        b
    }

    /// Sends a request and reads the response (READ submitted right after the WRITE,
    /// so it parks until the proxy answers).
    fn call(&mut self, q: u32, h: &RequestHeader, payload: &[u8], resp_len: usize) -> (ResponseHeader, Vec<u8>) {
        let g = self.dev.geometry();
        let w = self.submit(BlockOp::Write, g.request_slot(q), Self::request_bytes(h, payload));
        let r = self.submit(BlockOp::Read, g.response_slot(q), vec![0; pov_proto::io::round_to_sector(HEADER_SIZE + resp_len)]);
        assert_eq!(self.wait(w).0, BlockStatus::Ok);
        let (st, b) = self.wait(r);
        assert_eq!(st, BlockStatus::Ok);
        let rh = ResponseHeader::decode(&b).unwrap();
        assert_eq!(rh.request_id, h.request_id);
        let p = b[HEADER_SIZE..HEADER_SIZE + rh.payload_len as usize].to_vec();
        (rh, p)
    }
}

fn hdr(op: Op, q: u32, pid: u32, session: u64, rid: u64) -> RequestHeader {
    RequestHeader {
        op,
        queue_id: q,
        pid,
        session_id: session,
        request_id: rid,
        file_handle: 0,
        offset: 0,
        length: 0,
        flags: 0,
        payload_len: 0,
        hint: SdkHint::default(),
    }
}

/// Opens a session and one queue; returns (session, queue).
fn setup(h: &mut Harness, pid: u32) -> (u64, u32) {
    let s = h.open_session("acme", b"pw", pid);
    assert_eq!(s.status(), Status::Ok);
    let q = h.create_queue(s.session_id, pid);
    assert_eq!(q.status(), Status::Ok);
    (s.session_id, q.queue_id)
}

fn open_file(h: &mut Harness, q: u32, pid: u32, session: u64, path: &str, fl: u32) -> (Status, u64) {
    let mut o = hdr(Op::Open, q, pid, session, 10);
    o.flags = fl;
    o.payload_len = path.len() as u32;
    let (r, _) = h.call(q, &o, path.as_bytes(), 0);
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
    assert_eq!(h.open_session("acme", b"wrong", 1).status(), Status::AuthFailed);
    assert_eq!(h.open_session("nobody", b"pw", 1).status(), Status::AuthFailed);
    let s = h.open_session("acme", b"pw", 7);
    assert_eq!(s.status(), Status::Ok);
    assert_eq!(s.max_queues, 4);
    assert_eq!(h.create_queue(s.session_id, 8).status(), Status::PidMismatch);
    assert_eq!(h.create_queue(12345, 7).status(), Status::BadSession);
    for _ in 0..4 {
        assert_eq!(h.create_queue(s.session_id, 7).status(), Status::Ok);
    }
    assert_eq!(h.create_queue(s.session_id, 7).status(), Status::NoResources);
    // Garbage admin record.
    let (st, _) = h.io(BlockOp::Write, layout::ADMIN_REQ_OFFSET, vec![0xAB; 512]);
    assert_eq!(st, BlockStatus::Ok);
    let (_, b) = h.io(BlockOp::Read, layout::ADMIN_RESP_OFFSET, vec![0; 512]);
    assert_eq!(AdminResponse::decode(&b).unwrap().status(), Status::BadMagic);
}

#[test]
fn file_round_trip_through_proxy() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (sid, q) = setup(&mut h, 5);
    let (st, fh) = open_file(&mut h, q, 5, sid, "/dir/f", flags::CREATE | flags::WRITE);
    assert_eq!(st, Status::Ok);
    assert!(fh > 0);
    let data: Vec<u8> = (0..pov_proto::MAX_IO_BYTES).map(|i| (i % 251) as u8).collect();
    let mut w = hdr(Op::Write, q, 5, sid, 11);
    w.file_handle = fh;
    w.payload_len = data.len() as u32;
    let (r, _) = h.call(q, &w, &data, 0);
    assert_eq!((r.status, r.result), (Status::Ok, data.len() as u64));
    let mut rd = hdr(Op::Read, q, 5, sid, 12);
    rd.file_handle = fh;
    rd.length = data.len() as u32;
    let (r, p) = h.call(q, &rd, &[], data.len());
    assert_eq!(r.status, Status::Ok);
    assert_eq!(p, data);
    // Re-reading the response slot returns the same response.
    let g = h.dev.geometry();
    let (_, b) = h.io(BlockOp::Read, g.response_slot(q) + 4096, vec![0; 4096]);
    assert_eq!(&b[..], &data[4096 - HEADER_SIZE..8192 - HEADER_SIZE]);
    // Close, then the handle is gone.
    let mut c = hdr(Op::Close, q, 5, sid, 13);
    c.file_handle = fh;
    assert_eq!(h.call(q, &c, &[], 0).0.status, Status::Ok);
    assert_eq!(h.call(q, &rd, &[], 16).0.status, Status::BadHandle);
    let st = h.dev.stats();
    assert_eq!(st.sessions, 1);
    assert!(st.requests >= 4);
    assert_eq!((st.block_io_errors, st.incomplete_requests, st.crossing_ios), (0, 0, 0));
    assert_eq!(st.max_request_write_bytes, (HEADER_SIZE + data.len()) as u64);
}

#[test]
fn bad_requests_get_errors_and_device_keeps_serving() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (sid, q) = setup(&mut h, 5);
    let g = h.dev.geometry();
    // Random bytes: ownership cannot be established -> the WRITE fails.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), noise).0, BlockStatus::IoErr);
    // Wrong PID: the WRITE fails and the owner's queue is untouched.
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&hdr(Op::Stat, q, 6, sid, 1), &[])).0,
        BlockStatus::IoErr
    );
    // Wrong session ID.
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&hdr(Op::Stat, q, 5, sid ^ 1, 1), &[])).0,
        BlockStatus::IoErr
    );
    // Queue that is not open / out of range.
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q + 1), Harness::request_bytes(&hdr(Op::Stat, q + 1, 5, sid, 1), &[])).0,
        BlockStatus::IoErr
    );
    assert_eq!(h.io(BlockOp::Write, g.capacity_bytes(), vec![0; 512]).0, BlockStatus::IoErr);
    // Owner's malformed requests: error responses.
    let mut bad = Harness::request_bytes(&hdr(Op::Stat, q, 5, sid, 21), &[]);
    bad[0] = b'X';
    let w = h.submit(BlockOp::Write, g.request_slot(q), bad);
    assert_eq!(h.wait(w).0, BlockStatus::Ok);
    let (_, b) = h.io(BlockOp::Read, g.response_slot(q), vec![0; 512]);
    let r = ResponseHeader::decode(&b).unwrap();
    assert_eq!((r.status, r.request_id), (Status::BadMagic, 21));
    let mut unk = Harness::request_bytes(&hdr(Op::Stat, q, 5, sid, 22), &[]);
    unk[6] = 200;
    h.io(BlockOp::Write, g.request_slot(q), unk);
    let (_, b) = h.io(BlockOp::Read, g.response_slot(q), vec![0; 512]);
    assert_eq!(ResponseHeader::decode(&b).unwrap().status, Status::UnknownOp);
    let mut big = hdr(Op::Read, q, 5, sid, 23);
    big.length = pov_proto::MAX_IO_BYTES + 1;
    assert_eq!(h.call(q, &big, &[], 0).0.status, Status::TooLarge);
    // Escaping the tenant namespace.
    assert_eq!(open_file(&mut h, q, 5, sid, "/../other/secret", flags::CREATE).0, Status::Permission);
    // Truncated request: header announces more payload than ever arrives.
    let mut t = hdr(Op::Write, q, 5, sid, 24);
    t.payload_len = 8192;
    let mut b = vec![0u8; 512];
    t.encode_into(&mut b);
    h.io(BlockOp::Write, g.request_slot(q), b);
    let (_, b) = h.io(BlockOp::Read, g.response_slot(q), vec![0; 512]);
    let r = ResponseHeader::decode(&b).unwrap();
    assert_eq!((r.status, r.request_id), (Status::Invalid, 24));
    // The device still serves the session.
    let (st, _) = open_file(&mut h, q, 5, sid, "/ok", flags::CREATE);
    assert_eq!(st, Status::Ok);
    // Five WRITEs above failed at the block level; one request never got its payload.
    let st = h.dev.stats();
    assert_eq!((st.block_io_errors, st.incomplete_requests), (5, 1));
}

#[test]
fn other_tenant_cannot_use_handles_or_paths() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (sid, q) = setup(&mut h, 5);
    let (_, fh) = open_file(&mut h, q, 5, sid, "/secret", flags::CREATE | flags::WRITE);
    let s2 = h.open_session("other", b"pw2", 9);
    let q2 = h.create_queue(s2.session_id, 9).queue_id;
    // A handle of another session is not valid here.
    let mut rd = hdr(Op::Read, q2, 9, s2.session_id, 1);
    rd.file_handle = fh;
    rd.length = 10;
    assert_eq!(h.call(q2, &rd, &[], 10).0.status, Status::BadHandle);
    // The same path resolves inside the other tenant's namespace: not found there.
    assert_eq!(open_file(&mut h, q2, 9, s2.session_id, "/secret", 0).0, Status::NotFound);
    // And a session cannot use another session's queue.
    let g = h.dev.geometry();
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&hdr(Op::Stat, q, 9, s2.session_id, 1), &[])).0,
        BlockStatus::IoErr
    );
}

#[test]
fn split_request_is_reassembled() {
    let proxy = fake_proxy();
    let mut h = Harness::new(&proxy, |_| {});
    let (sid, q) = setup(&mut h, 5);
    let (_, fh) = open_file(&mut h, q, 5, sid, "/split", flags::CREATE | flags::WRITE);
    let data = vec![7u8; 64 * 1024];
    let mut w = hdr(Op::Write, q, 5, sid, 30);
    w.file_handle = fh;
    w.payload_len = data.len() as u32;
    let all = Harness::request_bytes(&w, &data);
    let g = h.dev.geometry();
    // Deliver the tail first, then the head (a split the block layer could produce).
    let cut = 32 * 1024;
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q) + cut as u64, all[cut..].to_vec()).0, BlockStatus::Ok);
    assert_eq!(h.io(BlockOp::Write, g.request_slot(q), all[..cut].to_vec()).0, BlockStatus::Ok);
    let (_, b) = h.io(BlockOp::Read, g.response_slot(q), vec![0; 512]);
    let r = ResponseHeader::decode(&b).unwrap();
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
    let (sid, q) = setup(&mut h, 5);
    // The fake proxy answers "slow" after 200 ms: the response READ parks meanwhile.
    let t0 = Instant::now();
    let (st, _) = open_file(&mut h, q, 5, sid, "slow", flags::CREATE);
    assert_eq!(st, Status::Ok);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    // No proxy listening: the request fails with Unavailable, not a hang.
    let mut h = Harness::new("127.0.0.1:1", |_| {});
    let (sid, q) = setup(&mut h, 5);
    assert_eq!(open_file(&mut h, q, 5, sid, "/x", flags::CREATE).0, Status::Unavailable);
}

#[test]
fn dead_session_is_reclaimed() {
    let mut h = Harness::new("127.0.0.1:1", |c| {
        c.heartbeat_interval_ms = 20;
        c.session_timeout_ms = 100;
    });
    let (sid, q) = setup(&mut h, 5);
    let hb = |h: &mut Harness| {
        h.admin(AdminRequest {
            op: AdminOp::Heartbeat,
            pid: 5,
            queue_id: 0,
            session_id: sid,
            request_id: 3,
            qos: QosClass::Latency,
            tenant: String::new(),
            secret: vec![],
        })
    };
    assert_eq!(hb(&mut h).status(), Status::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.dev.stats().sessions_reclaimed == 0 {
        assert!(Instant::now() < deadline, "session never reclaimed");
        h.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(hb(&mut h).status(), Status::BadSession);
    let g = h.dev.geometry();
    assert_eq!(
        h.io(BlockOp::Write, g.request_slot(q), Harness::request_bytes(&hdr(Op::Stat, q, 5, sid, 1), &[])).0,
        BlockStatus::IoErr
    );
    assert_eq!(h.dev.stats().sessions, 0);
}
