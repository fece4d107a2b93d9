//! Sessions: authentication, IO queues, heartbeats and the request/response exchange.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pov_proto::admin::{AdminOp, QosClass, MAX_SECRET};
use pov_proto::entry::{DirEntry, Kind, Stat, STAT_SIZE};
use pov_proto::io::{flags, round_to_sector, Op, RequestHeader, ResponseHeader, SdkHint, MAX_PATH};
use pov_proto::layout::{HEADER_SIZE, SLOT_SIZE};
use pov_proto::{Status, MAX_IO_BYTES};

use crate::device::{admin_request, Device};
use crate::error::{protocol_error, status_error, Error, ErrorKind, Result};
use crate::file::{File, OpenOptions};
use crate::mem::{round_up, IoBuf, IO_ALIGN};
use crate::transport::{BlockOp, Lane};

/// Bytes of directory entries asked for per List request.
pub const LIST_READ_BYTES: usize = 64 * 1024;

/// Heartbeat interval used when the device announces none, in milliseconds.
const DEFAULT_HEARTBEAT_MS: u64 = 1000;

/// Options of [`Session::open_with`].
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// IO queues to create (at least 1; capped by the session's `max_queues`). Each
    /// queue carries one request at a time, so this is the session's IO concurrency.
    /// Default 4.
    pub queues: u32,
    /// QoS class of the queues. Default [`QosClass::Latency`].
    pub qos: QosClass,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { queues: 4, qos: QosClass::Latency }
    }
}

/// What the device granted at OpenSession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session ID.
    pub session_id: u64,
    /// IO area that holds the session's queues.
    pub area: u32,
    /// Most queues the session may create.
    pub max_queues: u32,
    /// How often the driver heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which the device reclaims the session.
    pub session_timeout: Duration,
}

/// One PoV queue with its request and response buffers.
struct Channel {
    /// Index within the session (0-based); selects the transport lane.
    index: usize,
    /// Global queue ID.
    queue_id: u32,
    req: IoBuf,
    resp: IoBuf,
}

struct Pool {
    free: Vec<Channel>,
    closed: bool,
}

/// Liveness shared with the heartbeat thread.
#[derive(Default)]
struct Health {
    closed: AtomicBool,
    dead: Mutex<Option<String>>,
    heartbeats: AtomicU64,
}

impl Health {
    fn mark_dead(&self, why: String) {
        log::error!("PoV session lost: {why}");
        let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        d.get_or_insert(why);
    }

    fn check(&self) -> io::Result<()> {
        if let Some(why) = self.dead.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, format!("PoV session is dead: {why}")));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "PoV session is closed"));
        }
        Ok(())
    }
}

struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

pub(crate) struct SessionInner {
    device: Device,
    tenant: String,
    pid: u32,
    info: SessionInfo,
    queue_ids: Vec<u32>,
    pool: Mutex<Pool>,
    returned: Condvar,
    next_request: AtomicU64,
    health: Arc<Health>,
    heartbeat: Mutex<Option<Heartbeat>>,
}

/// A session with a PoV device: an authenticated tenant with its own IO queues, kept
/// alive by a background heartbeat thread.
///
/// `Session` is `Send + Sync`: share it between threads with `Arc<Session>`. Each
/// request takes a free queue for its round trip and blocks while all queues are busy,
/// so up to `queues` requests run at once. [`File`]s keep the session's state alive but
/// stop working once the session is closed.
///
/// Dropping a session closes it like [`Session::close`], logging errors.
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("device", &self.inner.device.describe())
            .field("tenant", &self.inner.tenant)
            .field("info", &self.inner.info)
            .field("queues", &self.inner.queue_ids)
            .finish()
    }
}

impl Session {
    /// Opens a session for `tenant` with `secret` and creates `queues` IO queues (see
    /// [`SessionOptions::queues`]), then starts heartbeats.
    ///
    /// Errors: [`ErrorKind::InvalidArgument`] (bad tenant name, secret over 255 bytes,
    /// zero queues), [`ErrorKind::Admin`] with the device's status (e.g.
    /// [`Status::AuthFailed`], [`Status::NoResources`]), or transport errors.
    pub fn open(device: &Device, tenant: &str, secret: &[u8], queues: u32) -> Result<Session> {
        Session::open_with(device, tenant, secret, &SessionOptions { queues, ..SessionOptions::default() })
    }

    /// Like [`Session::open`] with all options.
    pub fn open_with(device: &Device, tenant: &str, secret: &[u8], opts: &SessionOptions) -> Result<Session> {
        let ctx = format!("open session for tenant {tenant:?} on {}", device.describe());
        let invalid = |why: &str| Error::new(ErrorKind::InvalidArgument, format!("{ctx}: {why}"));
        if !pov_proto::path::valid_tenant_name(tenant) {
            return Err(invalid("tenant names are 1-63 bytes of [A-Za-z0-9_.-], not starting with '.'"));
        }
        if secret.len() > MAX_SECRET {
            return Err(invalid("secret longer than 255 bytes"));
        }
        if opts.queues == 0 {
            return Err(invalid("at least one queue is needed"));
        }
        let pid = std::process::id();
        let mut req = admin_request(AdminOp::OpenSession);
        req.tenant = tenant.to_string();
        req.secret = secret.to_vec();
        let resp = device.admin(req).map_err(|e| e.recontext(&ctx))?;
        let hb_ms = if resp.heartbeat_interval_ms == 0 {
            match resp.session_timeout_ms {
                0 => DEFAULT_HEARTBEAT_MS,
                t => (u64::from(t) / 3).max(1),
            }
        } else {
            u64::from(resp.heartbeat_interval_ms)
        };
        let info = SessionInfo {
            session_id: resp.session_id,
            area: resp.area,
            max_queues: resp.max_queues,
            heartbeat_interval: Duration::from_millis(hb_ms),
            session_timeout: Duration::from_millis(u64::from(resp.session_timeout_ms)),
        };
        let want = if resp.max_queues > 0 { opts.queues.min(resp.max_queues) } else { opts.queues };
        if want < opts.queues {
            log::warn!("{ctx}: asked for {} queues, the device allows {}", opts.queues, resp.max_queues);
        }
        log::debug!("{ctx}: session {:#x} in area {}, heartbeat every {hb_ms} ms", info.session_id, info.area);

        // From here on, undo what was created if anything fails.
        let mut created: Vec<u32> = Vec::new();
        let mut channels = Vec::new();
        let setup = (|| -> Result<()> {
            let t = device.transport();
            let g = device.geometry();
            for index in 0..want as usize {
                let mut req = admin_request(AdminOp::CreateQueue);
                req.session_id = info.session_id;
                req.qos = opts.qos;
                let resp = device.admin(req).map_err(|e| e.recontext(format!("{ctx}: create queue {index}")))?;
                let queue_id = resp.queue_id;
                created.push(queue_id);
                if queue_id >= g.total_queues() || created[..index].contains(&queue_id) {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("{ctx}: device granted queue {queue_id} (device has {} queues)", g.total_queues()),
                    ));
                }
                let alloc =
                    |what: &str, e| Error::new(ErrorKind::Access, format!("{ctx}: allocate {what} buffer")).with_source(e);
                let req = t.alloc_buf(SLOT_SIZE as usize).map_err(|e| alloc("request", e))?;
                let resp = t.alloc_buf(SLOT_SIZE as usize).map_err(|e| alloc("response", e))?;
                channels.push(Channel { index, queue_id, req, resp });
            }
            Ok(())
        })();
        if let Err(e) = setup {
            for &queue_id in &created {
                let mut req = admin_request(AdminOp::DeleteQueue);
                req.session_id = info.session_id;
                req.queue_id = queue_id;
                let _ = device.admin(req);
            }
            let mut req = admin_request(AdminOp::CloseSession);
            req.session_id = info.session_id;
            let _ = device.admin(req);
            return Err(e);
        }

        let health = Arc::new(Health::default());
        let queue_ids = channels.iter().map(|c| c.queue_id).collect();
        // Queue 0 is popped first; keep low indexes busy first for predictability.
        channels.reverse();
        let inner = Arc::new(SessionInner {
            device: device.clone(),
            tenant: tenant.to_string(),
            pid,
            info,
            queue_ids,
            pool: Mutex::new(Pool { free: channels, closed: false }),
            returned: Condvar::new(),
            next_request: AtomicU64::new(1),
            health,
            heartbeat: Mutex::new(None),
        });
        let hb = start_heartbeat(&inner)
            .map_err(|e| Error::new(ErrorKind::Access, format!("{ctx}: spawn heartbeat thread")).with_source(e));
        match hb {
            Ok(hb) => *inner.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some(hb),
            Err(e) => {
                let s = Session { inner };
                let _ = s.shutdown();
                return Err(e);
            }
        }
        Ok(Session { inner })
    }

    /// What the device granted.
    pub fn info(&self) -> &SessionInfo {
        &self.inner.info
    }

    /// Global IDs of the session's queues.
    pub fn queue_ids(&self) -> &[u32] {
        &self.inner.queue_ids
    }

    /// The device this session runs on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The tenant name.
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    /// Heartbeats the device has acknowledged so far.
    pub fn heartbeats(&self) -> u64 {
        self.inner.health.heartbeats.load(Ordering::Relaxed)
    }

    /// `Ok` while the session is open and the device has not reclaimed it.
    ///
    /// Errors: `NotConnected`, saying whether the session was closed or lost.
    pub fn check(&self) -> io::Result<()> {
        self.inner.health.check()
    }

    /// Opens a file with `opts` (a tenant-namespace path such as `/dir/file`). (Named
    /// `open_file` because `Session::open` opens the session itself.)
    ///
    /// Errors: as [`OpenOptions::open`].
    pub fn open_file(&self, path: &str, opts: &OpenOptions) -> io::Result<File> {
        opts.open(self, path)
    }

    /// Creates or truncates a file for writing (parent directories are created too).
    ///
    /// Errors: as [`OpenOptions::open`].
    pub fn create(&self, path: &str) -> io::Result<File> {
        OpenOptions::new().write(true).create(true).truncate(true).open(self, path)
    }

    /// Attributes of the file or directory at `path`.
    ///
    /// Errors: `NotFound` and the other statuses of the device, as `io::Error`s.
    pub fn stat(&self, path: &str) -> io::Result<Stat> {
        self.inner.stat_path(path)
    }

    /// Entries of the directory at `path` (`/` is the tenant's root), in the device's
    /// order. Issues as many List requests as needed.
    ///
    /// Errors: `NotFound`, `NotADirectory` and the other statuses of the device.
    pub fn list(&self, path: &str) -> io::Result<Vec<DirEntry>> {
        self.inner.list(path)
    }

    /// Removes the file or empty directory at `path`.
    ///
    /// Errors: `NotFound`, `DirectoryNotEmpty` and the other statuses of the device.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        let wire = wire_path(path, Op::Remove)?;
        self.inner.call(&Call::path(Op::Remove, &wire, 0), |_, _| Ok(()))
    }

    /// Removes `path` and, if it is a directory, everything under it (depth first;
    /// the files of a directory are removed in parallel on the session's queues).
    ///
    /// Errors: the first failure; entries removed before it stay removed.
    pub fn remove_all(&self, path: &str) -> io::Result<()> {
        if self.stat(path)?.kind == Kind::Dir {
            self.remove_tree(path)?;
        }
        self.remove(path)
    }

    /// Removes everything inside directory `dir`.
    fn remove_tree(&self, dir: &str) -> io::Result<()> {
        let (dirs, files): (Vec<DirEntry>, Vec<DirEntry>) = self.list(dir)?.into_iter().partition(|e| e.kind == Kind::Dir);
        let paths: Vec<String> = files.iter().map(|e| join(dir, &e.name)).collect();
        for r in run_parallel(paths, self.inner.queue_count(), |p| self.remove(&p)) {
            r.unwrap_or_else(|| Err(io::Error::other("remove skipped")))?;
        }
        for d in dirs {
            let p = join(dir, &d.name);
            self.remove_tree(&p)?;
            self.remove(&p)?;
        }
        Ok(())
    }

    /// Makes sure a directory exists at `path`, creating it and its parents if needed.
    ///
    /// PoV has no mkdir operation (creating a file creates its parents), so a missing
    /// directory is made by creating and removing a placeholder file inside it; the
    /// directory stays. Only needed for directories that will stay empty.
    ///
    /// Errors: `AlreadyExists` if `path` is a file; the statuses of Open and Remove.
    pub fn create_dir_all(&self, path: &str) -> io::Result<()> {
        match self.stat(path) {
            Ok(st) if st.kind == Kind::Dir => return Ok(()),
            Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{path}: exists and is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let n = self.inner.next_request.load(Ordering::Relaxed);
        let placeholder = join(path, &format!(".pov-mkdir-{}-{n}", self.inner.pid));
        OpenOptions::new().write(true).create_new(true).open(self, &placeholder)?.close()?;
        self.remove(&placeholder)
    }

    /// Reads a whole file, like `std::fs::read`.
    ///
    /// Errors: as [`Session::open_file`] and [`File::read_at`].
    pub fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let f = OpenOptions::new().open(self, path)?;
        let size = f.stat()?.size;
        let mut out = vec![0u8; usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?];
        let n = f.read_at(&mut out, 0)?;
        out.truncate(n);
        f.close()?;
        Ok(out)
    }

    /// Creates or truncates `path` and writes `data` to it, like `std::fs::write`.
    ///
    /// Errors: as [`Session::create`] and [`File::write_at`].
    pub fn write(&self, path: &str, data: &[u8]) -> io::Result<()> {
        let f = self.create(path)?;
        f.write_at(data, 0)?;
        f.close()
    }

    /// Stops heartbeats, waits for requests in flight, deletes the queues and closes
    /// the session on the device. Files of this session fail with `NotConnected`
    /// afterwards.
    ///
    /// Errors: the first admin failure; [`ErrorKind::Closed`] if the device had already
    /// reclaimed the session.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.health.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(hb) = inner.heartbeat.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = hb.stop.send(());
            let _ = hb.thread.join();
        }
        {
            let mut p = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            p.closed = true;
            while p.free.len() < inner.queue_ids.len() {
                p = inner.returned.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        }
        let ctx = format!("close session {:#x} on {}", inner.info.session_id, inner.device.describe());
        if let Some(why) = inner.health.dead.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(Error::new(ErrorKind::Closed, format!("{ctx}: session already lost: {why}")));
        }
        let mut first: Option<Error> = None;
        for &q in &inner.queue_ids {
            let mut req = admin_request(AdminOp::DeleteQueue);
            req.session_id = inner.info.session_id;
            req.queue_id = q;
            if let Err(e) = inner.device.admin(req) {
                log::warn!("{ctx}: delete queue {q}: {e}");
                first.get_or_insert(e.recontext(format!("{ctx}: delete queue {q}")));
            }
        }
        let mut req = admin_request(AdminOp::CloseSession);
        req.session_id = inner.info.session_id;
        if let Err(e) = inner.device.admin(req) {
            first.get_or_insert(e.recontext(&ctx));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<SessionInner> {
        &self.inner
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("{e}");
        }
    }
}

fn start_heartbeat(inner: &Arc<SessionInner>) -> io::Result<Heartbeat> {
    let (stop, rx) = mpsc::channel::<()>();
    let device = inner.device.clone();
    let health = Arc::clone(&inner.health);
    let session_id = inner.info.session_id;
    let interval = inner.info.heartbeat_interval;
    let thread = std::thread::Builder::new().name("pov-heartbeat".into()).spawn(move || loop {
        match rx.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let mut req = admin_request(AdminOp::Heartbeat);
        req.session_id = session_id;
        match device.admin_raw(req) {
            Ok(r) if r.status().is_ok() => {
                health.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status() == Status::BadSession => {
                health.mark_dead(format!("the device reclaimed session {session_id:#x} (heartbeat answered {:?})", r.status()));
                return;
            }
            Ok(r) => log::warn!("heartbeat for session {session_id:#x}: device answered {} ({:?})", r.status(), r.status()),
            Err(e) => log::warn!("heartbeat for session {session_id:#x}: {e}"),
        }
    })?;
    Ok(Heartbeat { stop, thread })
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

struct Lease<'a> {
    inner: &'a SessionInner,
    ch: Option<Channel>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(ch) = self.ch.take() {
            self.inner.pool.lock().unwrap_or_else(|e| e.into_inner()).free.push(ch);
            self.inner.returned.notify_all();
        }
    }
}

impl SessionInner {
    pub(crate) fn check(&self) -> io::Result<()> {
        self.health.check()
    }

    /// Number of IO queues (the most requests in flight at once).
    pub(crate) fn queue_count(&self) -> usize {
        self.queue_ids.len()
    }

    fn acquire(&self) -> io::Result<Lease<'_>> {
        self.health.check()?;
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if p.closed {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "PoV session is closed"));
            }
            if let Some(ch) = p.free.pop() {
                return Ok(Lease { inner: self, ch: Some(ch) });
            }
            p = self.returned.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sends one request on a free queue and hands the response header and payload to
    /// `f`. A non-Ok status becomes an error (see [`status_error`]).
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
            session_id: self.info.session_id,
            request_id,
            file_handle: c.handle,
            offset: c.offset,
            length: c.length,
            flags: c.flags,
            payload_len: c.payload.len() as u32,
            hint: SdkHint::default(),
        };
        let wlen = encode_request(&mut ch.req, &hdr, c.payload);
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
        if !resp.status.is_ok() {
            if resp.status == Status::BadSession {
                self.health.mark_dead(format!("the device answered {:?} to a {:?} request", resp.status, c.op));
            }
            return Err(status_error(resp.status, c.op, c.target));
        }
        let total = HEADER_SIZE + resp.payload_len as usize;
        if total > rlen {
            // The response is larger than we guessed: it stays readable until the next
            // request on this queue, so fetch the rest.
            let end = round_up(total, IO_ALIGN).min(SLOT_SIZE as usize);
            let mut op = BlockOp {
                dir: crate::transport::Dir::Read,
                dev_offset: resp_slot + rlen as u64,
                buf: &mut ch.resp,
                buf_offset: rlen,
                len: end - rlen,
            };
            t.submit(Lane::Data(ch.index), std::slice::from_mut(&mut op))?;
            rlen = end;
        }
        debug_assert!(total <= rlen);
        f(&resp, &ch.resp[HEADER_SIZE..total])
    }

    pub(crate) fn stat_path(&self, path: &str) -> io::Result<Stat> {
        let wire = wire_path(path, Op::Stat)?;
        self.call(&Call::path(Op::Stat, &wire, STAT_SIZE), |_, p| decode_stat(p))
    }

    pub(crate) fn stat_handle(&self, handle: u64, target: &str) -> io::Result<Stat> {
        let c = Call { expect: STAT_SIZE, ..Call::handle(Op::Stat, handle, target) };
        self.call(&c, |_, p| decode_stat(p))
    }

    fn list(&self, path: &str) -> io::Result<Vec<DirEntry>> {
        let wire = wire_path(path, Op::List)?;
        let mut out = Vec::new();
        loop {
            let c = Call { offset: out.len() as u64, ..Call::path(Op::List, &wire, LIST_READ_BYTES - HEADER_SIZE) };
            let (entries, more) = self.call(&c, |h, p| {
                let e = DirEntry::decode_all(p).map_err(|e| protocol_error(format!("list {path}: {e}")))?;
                Ok((e, h.flags & flags::MORE != 0))
            })?;
            if more && entries.is_empty() {
                return Err(protocol_error(format!("list {path}: MORE set on an empty page")));
            }
            out.extend(entries);
            if !more {
                return Ok(out);
            }
        }
    }
}

fn decode_stat(p: &[u8]) -> io::Result<Stat> {
    Stat::decode(p).map_err(|e| protocol_error(format!("stat record: {e}")))
}

/// For [`File`]: the session behind a handle.
pub(crate) fn session_inner(s: &Session) -> Arc<SessionInner> {
    Arc::clone(s.inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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
