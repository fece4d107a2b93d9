//! An in-memory PoV device for unit tests: a [`BlockTransport`] that decodes the
//! driver's sector IO with `pov_proto` and serves it from a tiny file system. It checks
//! what a real device checks (slots, queue ownership, PIDs, sessions, one request per
//! queue) and records what the driver sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pov_proto::admin::{AdminOp, AdminRequest, AdminResponse, ADMIN_RESPONSE_SIZE};
use pov_proto::entry::{DirEntry, Kind, Stat};
use pov_proto::io::{flags, Op, RequestHeader, ResponseHeader};
use pov_proto::layout::{ConfigSpace, Geometry, Region, HEADER_SIZE};
use pov_proto::Status;

use crate::mem::IoBuf;
use crate::transport::{AdminLock, BlockOp, BlockTransport, Dir, Lane};

pub(crate) const TENANT: &str = "acme";
pub(crate) const SECRET: &[u8] = b"s3cret";

#[derive(Default)]
struct Queue {
    session: u64,
    pid: u32,
    /// Encoded response (header + payload) of the last request.
    resp: Vec<u8>,
    busy: bool,
}

#[derive(Default)]
struct State {
    admin_resp: Vec<u8>,
    sessions: HashMap<u64, (u32, Vec<u32>)>,
    next_session: u64,
    queues: HashMap<u32, Queue>,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    handles: HashMap<u64, (String, bool)>,
    next_handle: u64,
    /// (op, payload_len, length) of every IO request.
    requests: Vec<(Op, u32, u32)>,
    violations: Vec<String>,
}

pub(crate) struct Fake {
    pub(crate) geometry: Geometry,
    config: Vec<u8>,
    state: Mutex<State>,
    admin: Mutex<()>,
    pub(crate) heartbeat_ms: AtomicU32,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) reclaimed: AtomicBool,
    pub(crate) corrupt_admin_id: AtomicBool,
    pub(crate) list_page: usize,
}

/// The transport handed to `Device::from_transport`; the test keeps the `Arc<Fake>`.
pub(crate) struct FakeTransport(pub(crate) Arc<Fake>);

impl Fake {
    pub(crate) fn new() -> Arc<Fake> {
        Fake::with_config(ConfigSpace { geometry: Geometry::new(4, 8).unwrap(), name: "fake0".into() }.encode().to_vec())
    }

    pub(crate) fn with_config(config: Vec<u8>) -> Arc<Fake> {
        let geometry = ConfigSpace::decode(&config).map(|c| c.geometry).unwrap_or(Geometry { areas: 1, queues_per_area: 1 });
        let state = State { next_session: 0x1000, next_handle: 1, ..State::default() };
        Arc::new(Fake {
            geometry,
            config,
            state: Mutex::new(state),
            admin: Mutex::new(()),
            heartbeat_ms: AtomicU32::new(60_000),
            heartbeats: AtomicU64::new(0),
            reclaimed: AtomicBool::new(false),
            corrupt_admin_id: AtomicBool::new(false),
            list_page: 7,
        })
    }

    pub(crate) fn transport(self: &Arc<Self>) -> Box<dyn BlockTransport> {
        Box::new(FakeTransport(Arc::clone(self)))
    }

    pub(crate) fn requests(&self) -> Vec<(Op, u32, u32)> {
        self.state.lock().unwrap().requests.clone()
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub(crate) fn open_sessions(&self) -> usize {
        self.state.lock().unwrap().sessions.len()
    }

    pub(crate) fn open_queues(&self) -> usize {
        self.state.lock().unwrap().queues.len()
    }

    pub(crate) fn open_handles(&self) -> usize {
        self.state.lock().unwrap().handles.len()
    }

    pub(crate) fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().files.get(path).cloned()
    }

    fn admin(&self, b: &[u8]) -> Vec<u8> {
        let req = AdminRequest::decode(b).expect("driver sent a bad admin request");
        let mut st = self.state.lock().unwrap();
        let mut r = AdminResponse { op: req.op as u16, request_id: req.request_id, ..AdminResponse::default() };
        if self.corrupt_admin_id.load(Ordering::Relaxed) {
            r.request_id ^= 1;
        }
        let status = match req.op {
            AdminOp::OpenSession => {
                if req.tenant == TENANT && req.secret == SECRET {
                    let id = st.next_session;
                    st.next_session += 1;
                    st.sessions.insert(id, (req.pid, Vec::new()));
                    r.session_id = id;
                    r.area = 1;
                    r.max_queues = self.geometry.queues_per_area;
                    r.heartbeat_interval_ms = self.heartbeat_ms.load(Ordering::Relaxed);
                    r.session_timeout_ms = r.heartbeat_interval_ms * 5;
                    Status::Ok
                } else {
                    Status::AuthFailed
                }
            }
            AdminOp::CreateQueue => match st.sessions.get(&req.session_id).map(|s| s.1.len() as u32) {
                Some(n) if n < self.geometry.queues_per_area => {
                    let q = self.geometry.queue_id(1, n);
                    st.sessions.get_mut(&req.session_id).unwrap().1.push(q);
                    st.queues.insert(q, Queue { session: req.session_id, pid: req.pid, ..Queue::default() });
                    r.queue_id = q;
                    Status::Ok
                }
                Some(_) => Status::NoResources,
                None => Status::BadSession,
            },
            AdminOp::DeleteQueue => match st.queues.get(&req.queue_id) {
                Some(q) if q.session == req.session_id => {
                    st.queues.remove(&req.queue_id);
                    Status::Ok
                }
                _ => Status::BadQueue,
            },
            AdminOp::Heartbeat => {
                if self.reclaimed.load(Ordering::Relaxed) || !st.sessions.contains_key(&req.session_id) {
                    Status::BadSession
                } else {
                    self.heartbeats.fetch_add(1, Ordering::Relaxed);
                    Status::Ok
                }
            }
            AdminOp::CloseSession => match st.sessions.remove(&req.session_id) {
                Some((_, qs)) => {
                    for q in qs {
                        st.queues.remove(&q);
                    }
                    Status::Ok
                }
                None => Status::BadSession,
            },
        };
        r.status = status.as_u32();
        r.encode().to_vec()
    }

    fn request(&self, queue: u32, b: &[u8]) {
        let hdr = RequestHeader::decode(b).expect("driver sent a bad request header");
        let payload = &b[HEADER_SIZE..HEADER_SIZE + hdr.payload_len as usize];
        let mut st = self.state.lock().unwrap();
        st.requests.push((hdr.op, hdr.payload_len, hdr.length));
        let mut out = Vec::new();
        let q = st.queues.get(&queue).map(|q| (q.busy, q.pid, q.session));
        let (status, result, fl) = match q {
            None => (Status::BadQueue, 0, 0),
            Some((true, _, _)) => {
                st.violations.push(format!("queue {queue} reused before its response was read"));
                (Status::Busy, 0, 0)
            }
            Some(_) if hdr.queue_id != queue => (Status::BadQueue, 0, 0),
            Some((_, pid, _)) if pid != hdr.pid => (Status::PidMismatch, 0, 0),
            Some((_, _, session)) if session != hdr.session_id || self.reclaimed.load(Ordering::Relaxed) => {
                (Status::BadSession, 0, 0)
            }
            Some(_) => match exec(&mut st, self.list_page, &hdr, payload, &mut out) {
                Ok((r, f)) => (Status::Ok, r, f),
                Err(s) => {
                    out.clear();
                    (s, 0, 0)
                }
            },
        };
        let resp = ResponseHeader {
            op: hdr.op as u16,
            status,
            queue_id: queue,
            request_id: hdr.request_id,
            result,
            payload_len: out.len() as u32,
            flags: fl,
        };
        let mut bytes = vec![0u8; HEADER_SIZE];
        resp.encode_into(&mut bytes);
        bytes.extend_from_slice(&out);
        if let Some(q) = st.queues.get_mut(&queue) {
            q.resp = bytes;
            q.busy = true;
        }
    }

    fn one(&self, op: &mut BlockOp<'_>) -> io::Result<()> {
        op.check()?;
        let range = op.buf_offset..op.buf_offset + op.len;
        let eio = || Err(io::Error::from_raw_os_error(libc::EIO));
        match (self.geometry.classify(op.dev_offset, op.len as u64), op.dir) {
            (Region::Config { offset }, Dir::Read) => {
                let dst = &mut op.buf[range];
                dst.fill(0);
                let src = self.config.get(offset as usize..).unwrap_or(&[]);
                let n = src.len().min(dst.len());
                dst[..n].copy_from_slice(&src[..n]);
            }
            (Region::AdminRequest { offset: 0 }, Dir::Write) => {
                let resp = self.admin(&op.buf[range]);
                self.state.lock().unwrap().admin_resp = resp;
            }
            (Region::AdminResponse { offset: 0 }, Dir::Read) => {
                let st = self.state.lock().unwrap();
                op.buf[range.start..range.start + ADMIN_RESPONSE_SIZE].copy_from_slice(&st.admin_resp);
            }
            (Region::RequestSlot { queue, offset: 0 }, Dir::Write) => self.request(queue, &op.buf[range]),
            (Region::ResponseSlot { queue, offset }, Dir::Read) => {
                let mut st = self.state.lock().unwrap();
                let Some(q) = st.queues.get_mut(&queue) else { return eio() };
                let dst = &mut op.buf[range];
                dst.fill(0);
                let src = q.resp.get(offset as usize..).unwrap_or(&[]);
                let n = src.len().min(dst.len());
                dst[..n].copy_from_slice(&src[..n]);
                if offset == 0 {
                    q.busy = false;
                }
            }
            _ => return eio(),
        }
        Ok(())
    }
}

fn norm(p: &[u8]) -> Result<String, Status> {
    pov_proto::path::normalize(p)
}

fn parent(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

fn exec(st: &mut State, page: usize, h: &RequestHeader, payload: &[u8], out: &mut Vec<u8>) -> Result<(u64, u32), Status> {
    let handle = |st: &State| st.handles.get(&h.file_handle).cloned().ok_or(Status::BadHandle);
    match h.op {
        Op::Open => {
            let p = norm(payload)?;
            if st.dirs.contains(&p) || p.is_empty() {
                return Err(Status::IsDir);
            }
            let exists = st.files.contains_key(&p);
            if exists && h.flags & flags::EXCL != 0 {
                return Err(Status::Exists);
            }
            if !exists {
                if h.flags & flags::CREATE == 0 {
                    return Err(Status::NotFound);
                }
                let mut d = parent(&p);
                while !d.is_empty() {
                    st.dirs.insert(d.to_string());
                    d = parent(d);
                }
                st.files.insert(p.clone(), Vec::new());
            }
            if h.flags & flags::TRUNCATE != 0 {
                st.files.get_mut(&p).unwrap().clear();
            }
            let id = st.next_handle;
            st.next_handle += 1;
            st.handles.insert(id, (p, h.flags & flags::WRITE != 0));
            Ok((id, 0))
        }
        Op::Close => st.handles.remove(&h.file_handle).map(|_| (0, 0)).ok_or(Status::BadHandle),
        Op::Read => {
            let (p, _) = handle(st)?;
            let data = &st.files[&p];
            let start = (h.offset as usize).min(data.len());
            let end = (start + h.length as usize).min(data.len());
            out.extend_from_slice(&data[start..end]);
            Ok(((end - start) as u64, 0))
        }
        Op::Write | Op::Append => {
            let (p, w) = handle(st)?;
            if !w {
                return Err(Status::Permission);
            }
            let data = st.files.get_mut(&p).unwrap();
            let at = if h.op == Op::Append { data.len() } else { h.offset as usize };
            if data.len() < at + payload.len() {
                data.resize(at + payload.len(), 0);
            }
            data[at..at + payload.len()].copy_from_slice(payload);
            Ok((if h.op == Op::Append { at as u64 } else { payload.len() as u64 }, 0))
        }
        Op::Truncate => {
            let (p, w) = handle(st)?;
            if !w {
                return Err(Status::Permission);
            }
            st.files.get_mut(&p).unwrap().resize(h.offset as usize, 0);
            Ok((h.offset, 0))
        }
        Op::Stat => {
            let p = if h.file_handle != 0 { handle(st)?.0 } else { norm(payload)? };
            let s = match st.files.get(&p) {
                Some(d) => Stat { kind: Kind::File, size: d.len() as u64, mtime_ns: 1 },
                None if p.is_empty() || st.dirs.contains(&p) => Stat { kind: Kind::Dir, size: 0, mtime_ns: 1 },
                None => return Err(Status::NotFound),
            };
            out.extend_from_slice(&s.encode());
            Ok((0, 0))
        }
        Op::List => {
            let p = norm(payload)?;
            if st.files.contains_key(&p) {
                return Err(Status::NotDir);
            }
            if !p.is_empty() && !st.dirs.contains(&p) {
                return Err(Status::NotFound);
            }
            let mut all: Vec<DirEntry> = Vec::new();
            for d in st.dirs.iter().filter(|d| parent(d) == p) {
                all.push(DirEntry { kind: Kind::Dir, size: 0, name: d.rsplit('/').next().unwrap().into() });
            }
            for (f, data) in st.files.iter().filter(|(f, _)| parent(f) == p) {
                all.push(DirEntry { kind: Kind::File, size: data.len() as u64, name: f.rsplit('/').next().unwrap().into() });
            }
            all.sort_by(|a, b| a.name.cmp(&b.name));
            let from = (h.offset as usize).min(all.len());
            let to = (from + page).min(all.len());
            for e in &all[from..to] {
                e.encode_into(out);
            }
            Ok(((to - from) as u64, if to < all.len() { flags::MORE } else { 0 }))
        }
        Op::Remove => {
            let p = norm(payload)?;
            if st.files.remove(&p).is_some() {
                return Ok((0, 0));
            }
            if !st.dirs.contains(&p) {
                return Err(Status::NotFound);
            }
            let prefix = format!("{p}/");
            if st.files.keys().chain(st.dirs.iter()).any(|k| k.starts_with(&prefix)) {
                return Err(Status::NotEmpty);
            }
            st.dirs.remove(&p);
            Ok((0, 0))
        }
        Op::Fsync => handle(st).map(|_| (0, 0)),
        // DPU -> proxy only; a host header carrying one does not decode.
        Op::VolumeOpen | Op::VolumeRead | Op::VolumeWrite | Op::VolumeFlush => Err(Status::UnknownOp),
    }
}

impl BlockTransport for FakeTransport {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn capacity(&self) -> u64 {
        self.0.geometry.capacity_bytes()
    }

    fn alloc_buf(&self, len: usize) -> io::Result<IoBuf> {
        IoBuf::aligned(len)
    }

    fn submit(&self, _lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        for op in ops.iter_mut() {
            self.0.one(op)?;
            // Let other threads in between a request and its response.
            std::thread::yield_now();
        }
        Ok(())
    }

    fn lock_admin(&self) -> io::Result<AdminLock<'_>> {
        AdminLock::new(self.0.admin.lock().unwrap_or_else(|e| e.into_inner()), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{status_of, Device, ErrorKind, OpenOptions, Session};
    use pov_proto::MAX_IO_BYTES;
    use std::time::Duration;

    fn setup() -> (Arc<Fake>, Device, Session) {
        let fake = Fake::new();
        let dev = Device::from_transport(fake.transport()).unwrap();
        let s = Session::open(&dev, TENANT, SECRET, 4).unwrap();
        (fake, dev, s)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn device_validates_config() {
        let fake = Fake::new();
        let dev = Device::from_transport(fake.transport()).unwrap();
        assert_eq!(dev.name(), "fake0");
        assert_eq!(dev.geometry(), Geometry::new(4, 8).unwrap());

        let mut bad = ConfigSpace { geometry: Geometry::new(4, 8).unwrap(), name: "x".into() }.encode().to_vec();
        bad[0] = b'X';
        let e = Device::from_transport(Fake::with_config(bad).transport()).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::NotPovDevice);
        assert!(crate::error::Chain(&e).to_string().contains("bad magic"), "{e}");
        let e = Device::from_transport(Fake::with_config(vec![0; 4096]).transport()).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::NotPovDevice);
    }

    #[test]
    fn session_lifecycle() {
        let fake = Fake::new();
        let dev = Device::from_transport(fake.transport()).unwrap();
        let e = Session::open(&dev, TENANT, b"wrong", 2).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Admin(Status::AuthFailed));
        assert_eq!(e.status(), Some(Status::AuthFailed));
        assert!(e.to_string().contains("acme"), "{e}");
        assert_eq!(Session::open(&dev, "../evil", SECRET, 2).unwrap_err().kind(), &ErrorKind::InvalidArgument);
        assert_eq!(Session::open(&dev, TENANT, SECRET, 0).unwrap_err().kind(), &ErrorKind::InvalidArgument);

        // More queues than the area holds: capped at max_queues.
        let s = Session::open(&dev, TENANT, SECRET, 100).unwrap();
        assert_eq!(s.queue_ids().len(), 8);
        assert_eq!(fake.open_queues(), 8);
        s.close().unwrap();
        assert_eq!((fake.open_sessions(), fake.open_queues()), (0, 0));

        // Drop closes too.
        {
            let _s = Session::open(&dev, TENANT, SECRET, 3).unwrap();
            assert_eq!((fake.open_sessions(), fake.open_queues()), (1, 3));
        }
        assert_eq!((fake.open_sessions(), fake.open_queues()), (0, 0));
    }

    #[test]
    fn admin_mismatch_is_detected() {
        let fake = Fake::new();
        let dev = Device::from_transport(fake.transport()).unwrap();
        fake.corrupt_admin_id.store(true, Ordering::Relaxed);
        let e = Session::open(&dev, TENANT, SECRET, 1).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::AdminMismatch);
        assert!(e.to_string().contains("mismatch"), "{e}");
    }

    #[test]
    fn large_io_is_split_into_one_mib_requests() {
        let (fake, _dev, s) = setup();
        let data = pattern(3 * MAX_IO_BYTES as usize + 12345, 1);
        let f = s.create("/big/file.bin").unwrap();
        assert_eq!(f.write_at(&data, 0).unwrap(), data.len());
        let writes: Vec<_> = fake.requests().into_iter().filter(|r| r.0 == Op::Write).collect();
        assert_eq!(writes.len(), 4);
        assert!(writes.iter().all(|w| w.1 <= MAX_IO_BYTES));
        assert_eq!(fake.file("big/file.bin").unwrap(), data);

        let mut back = vec![0u8; data.len() + 100];
        assert_eq!(f.read_at(&mut back, 0).unwrap(), data.len(), "short only at EOF");
        assert_eq!(&back[..data.len()], &data[..]);
        let reads: Vec<_> = fake.requests().into_iter().filter(|r| r.0 == Op::Read).collect();
        assert!(reads.iter().all(|r| r.2 <= MAX_IO_BYTES && r.1 == 0));

        // Unaligned offsets and lengths.
        let mut mid = vec![0u8; 1_500_000];
        f.read_exact_at(&mut mid, 777).unwrap();
        assert_eq!(&mid[..], &data[777..777 + 1_500_000]);
        assert_eq!(f.read_at(&mut mid, data.len() as u64 + 5).unwrap(), 0);
        let e = f.read_exact_at(&mut mid, data.len() as u64 - 10).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(f.stat().unwrap().size, data.len() as u64);
        assert!(fake.violations().is_empty());
    }

    #[test]
    fn file_operations() {
        let (fake, _dev, s) = setup();
        let f = s.create("/d/a").unwrap();
        assert_eq!(f.append(b"hello").unwrap(), 0);
        assert_eq!(f.append(b" world").unwrap(), 5);
        assert_eq!(f.append(b"").unwrap(), 11);
        f.write_at(b"J", 0).unwrap();
        f.set_len(5).unwrap();
        f.sync().unwrap();
        assert_eq!(s.read("/d/a").unwrap(), b"Jello");
        let st = s.stat("d/a").unwrap();
        assert_eq!((st.kind, st.size), (Kind::File, 5));
        assert_eq!(s.stat("/d").unwrap().kind, Kind::Dir);
        f.close().unwrap();

        // Zero-byte files.
        s.write("/d/empty", b"").unwrap();
        assert_eq!(s.read("/d/empty").unwrap(), b"");

        // Read-only handles cannot write; create_new refuses existing files.
        let ro = s.open_file("/d/a", &OpenOptions::new()).unwrap();
        let e = ro.write_at(b"x", 0).unwrap_err();
        assert_eq!(status_of(&e), Some(Status::Permission));
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        drop(ro);
        let e = s.open_file("/d/a", OpenOptions::new().write(true).create_new(true)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        let e = s.open_file("/nope", &OpenOptions::new()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("open /nope"), "{e}");
        assert_eq!(s.stat("/nope").unwrap_err().kind(), std::io::ErrorKind::NotFound);

        // Remove: files, empty dirs; non-empty dirs need remove_all.
        let e = s.remove("/d").unwrap_err();
        assert_eq!(status_of(&e), Some(Status::NotEmpty));
        s.remove("/d/empty").unwrap();
        s.write("/d/e/f/g", b"1").unwrap();
        s.create_dir_all("/d/empty/dir").unwrap();
        s.create_dir_all("/d/empty/dir").unwrap();
        assert!(s.list("/d/empty/dir").unwrap().is_empty());
        assert_eq!(s.stat("/d/empty").unwrap().kind, Kind::Dir);
        assert_eq!(s.create_dir_all("/d/e/f/g").unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        s.remove_all("/d").unwrap();
        assert!(s.list("/").unwrap().is_empty());
        assert_eq!(fake.open_handles(), 0, "every handle closed");
    }

    #[test]
    fn listing_pages_and_large_responses() {
        let (fake, _dev, s) = setup();
        let long = "n".repeat(250);
        let mut names = Vec::new();
        for i in 0..30 {
            let name = format!("{long}{i:03}");
            s.write(&format!("/dir/{name}"), &[0u8; 3][..i % 4]).unwrap();
            names.push(name);
        }
        s.write("/dir/sub/x", b"x").unwrap();
        let entries = s.list("/dir").unwrap();
        assert_eq!(entries.len(), 31);
        assert!(names.iter().all(|n| entries.iter().any(|e| &e.name == n && e.kind == Kind::File)));
        assert!(entries.iter().any(|e| e.name == "sub" && e.kind == Kind::Dir));
        let lists = fake.requests().into_iter().filter(|r| r.0 == Op::List).count();
        assert_eq!(lists, 5, "31 entries at 7 per page");
        assert_eq!(status_of(&s.list("/dir/sub/x").unwrap_err()), Some(Status::NotDir));
    }

    #[test]
    fn list_response_larger_than_first_read() {
        let fake = Fake::new();
        // One page holds everything: ~200 KiB of entries, more than the 64 KiB first read.
        let fake = Arc::new(Fake { list_page: 10_000, ..Arc::try_unwrap(fake).ok().unwrap() });
        let dev = Device::from_transport(fake.transport()).unwrap();
        let s = Session::open(&dev, TENANT, SECRET, 1).unwrap();
        let long = "m".repeat(240);
        for i in 0..800 {
            s.write(&format!("/many/{long}{i:04}"), b"").unwrap();
        }
        let entries = s.list("/many").unwrap();
        assert_eq!(entries.len(), 800);
        assert_eq!(fake.requests().into_iter().filter(|r| r.0 == Op::List).count(), 1);
    }

    #[test]
    fn threads_share_a_session_and_never_overlap_on_a_queue() {
        let fake = Fake::new();
        let dev = Device::from_transport(fake.transport()).unwrap();
        let s = Arc::new(Session::open(&dev, TENANT, SECRET, 2).unwrap());
        let handles: Vec<_> = (0..8u8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let data = pattern(200_000 + t as usize, t);
                    let path = format!("/t/{t}");
                    let f = s.create(&path).unwrap();
                    for (i, chunk) in data.chunks(7_000).enumerate() {
                        f.write_at(chunk, (i * 7_000) as u64).unwrap();
                    }
                    f.close().unwrap();
                    assert_eq!(s.read(&path).unwrap(), data);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        Arc::try_unwrap(s).unwrap().close().unwrap();
        assert_eq!(fake.open_sessions(), 0);
    }

    #[test]
    fn heartbeats_run_and_a_reclaimed_session_is_surfaced() {
        let fake = Fake::new();
        fake.heartbeat_ms.store(5, Ordering::Relaxed);
        let dev = Device::from_transport(fake.transport()).unwrap();
        let s = Session::open(&dev, TENANT, SECRET, 1).unwrap();
        assert_eq!(s.info().heartbeat_interval, Duration::from_millis(5));
        let f = s.create("/hb").unwrap();
        let t0 = std::time::Instant::now();
        while s.heartbeats() < 3 {
            assert!(t0.elapsed() < Duration::from_secs(10), "heartbeats never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        fake.reclaimed.store(true, Ordering::Relaxed);
        while s.check().is_ok() {
            assert!(t0.elapsed() < Duration::from_secs(10), "reclaim never noticed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let e = f.write_at(b"x", 0).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
        assert!(e.to_string().contains("reclaimed"), "{e}");
        drop(f);
        let e = s.close().unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Closed);
    }

    #[test]
    fn closed_session_fails_file_ops_cleanly() {
        let fake = Fake::new();
        let dev = Device::from_transport(fake.transport()).unwrap();
        let s = Session::open(&dev, TENANT, SECRET, 1).unwrap();
        let f = s.create("/x").unwrap();
        s.close().unwrap();
        let e = f.read_at(&mut [0u8; 4], 0).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
        assert_eq!(f.close().unwrap_err().kind(), std::io::ErrorKind::NotConnected);
    }

    #[cfg(feature = "cli")]
    fn tree_of(root: &std::path::Path) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, Option<Vec<u8>>)>) {
            let mut es: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            es.sort();
            for p in es {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if p.is_dir() {
                    out.push((rel, None));
                    walk(root, &p, out);
                } else {
                    out.push((rel, Some(std::fs::read(&p).unwrap())));
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    #[cfg(feature = "cli")]
    #[test]
    fn cli_copies_trees_in_and_out() {
        use crate::cli::{cat, copy, ls, rm, Loc};
        let (fake, _dev, s) = setup();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(src.join("empty")).unwrap();
        std::fs::write(src.join("zero"), b"").unwrap();
        std::fs::write(src.join("one"), b"1").unwrap();
        std::fs::write(src.join("sub/page"), pattern(4096, 3)).unwrap();
        std::fs::write(src.join("sub/deeper/big"), pattern(3 * (1 << 20) + 7, 4)).unwrap();
        std::fs::write(src.join("sub/exact"), pattern(1 << 20, 5)).unwrap();

        let local = |p: &std::path::Path| Loc::Local(p.to_path_buf());
        let e = copy(&s, &local(&src), &Loc::parse("pov:/tree"), false, 4).unwrap_err();
        assert!(e.to_string().contains("use -r"), "{e}");
        let summary = copy(&s, &local(&src), &Loc::parse("pov:/tree"), true, 4).unwrap();
        assert!(summary.starts_with("copied 5 files"), "{summary}");
        assert!(summary.contains("MiB/s"), "{summary}");
        assert_eq!(fake.file("tree/sub/deeper/big").unwrap(), pattern(3 * (1 << 20) + 7, 4));
        assert_eq!(fake.file("tree/zero").unwrap(), b"");
        assert_eq!(s.stat("/tree/empty").unwrap().kind, Kind::Dir, "empty directories are kept");

        let out = tmp.path().join("out");
        copy(&s, &Loc::parse("pov:/tree"), &local(&out), true, 4).unwrap();
        assert_eq!(tree_of(&src), tree_of(&out));

        // Into an existing directory: lands under the source's name.
        copy(&s, &Loc::parse("pov:/tree/one"), &local(&out), false, 1).unwrap();
        assert_eq!(std::fs::read(out.join("one")).unwrap(), b"1");
        copy(&s, &local(&src.join("sub/page")), &Loc::parse("pov:/tree/sub/"), false, 2).unwrap();
        copy(&s, &Loc::parse("pov:/tree/sub/deeper/big"), &Loc::parse("pov:/copy/big2"), false, 3).unwrap();
        assert_eq!(fake.file("copy/big2").unwrap(), pattern(3 * (1 << 20) + 7, 4));
        assert!(copy(&s, &local(&src), &local(&out), true, 1).is_err(), "local to local refused");
        let e = copy(&s, &Loc::parse("pov:/nothing"), &local(&out), false, 1).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");

        let mut text = Vec::new();
        cat(&s, "/tree/sub/deeper/big", &mut text).unwrap();
        assert_eq!(text, pattern(3 * (1 << 20) + 7, 4));
        let mut text = Vec::new();
        cat(&s, "/tree/sub/exact", &mut text).unwrap();
        assert_eq!(text.len(), 1 << 20);

        let mut listing = Vec::new();
        ls(&s, "/tree", false, &mut listing).unwrap();
        assert_eq!(String::from_utf8(listing).unwrap(), "empty/\none\nsub/\nzero\n");
        let mut listing = Vec::new();
        ls(&s, "/tree/one", true, &mut listing).unwrap();
        assert_eq!(String::from_utf8(listing).unwrap(), "-              1 one\n");

        assert!(rm(&s, "/tree", false, false).unwrap_err().to_string().contains("use -r"));
        assert!(rm(&s, "/", true, false).is_err());
        assert!(rm(&s, "/missing", false, false).is_err());
        rm(&s, "/missing", false, true).unwrap();
        rm(&s, "/tree", true, false).unwrap();
        assert_eq!(s.stat("/tree").unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(fake.open_handles(), 0);
        assert!(fake.violations().is_empty());
    }
}
