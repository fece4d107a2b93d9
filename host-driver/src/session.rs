//! Sessions: the lifecycle of a tenant's session with a PoV device.
//!
//! [`Session::open_with`] authenticates (admin OpenSession), creates the IO queues
//! (admin CreateQueue, undoing everything if a step fails), hands them to the request
//! `engine` and starts the heartbeat thread. [`Session::close`] stops
//! heartbeats, waits for requests in flight, deletes the queues and closes the session.
//! The namespace operations (`stat`, `list`, `remove`, ...) are single requests run by
//! the engine; [`File`]s hold the engine, not the session.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use pov_proto::admin::{
    AdminOp, AdminRequest, AdminResponse, QosClass, GRANT_INTEGRITY_ONLY, GRANT_READ_ONLY, MAX_BATCH_QUEUES, MAX_PREFIX,
    MAX_SECRET,
};
use pov_proto::crypto::{self, Protection, SessionKeys};
use pov_proto::entry::{DirEntry, Kind, Stat, StatFs, STATFS_SIZE, STAT_SIZE};
use pov_proto::io::{flags, Op};
use pov_proto::layout::{HEADER_SIZE, SLOT_SIZE};
use pov_proto::Status;

use crate::device::{admin_request, Device};
use crate::engine::{decode_stat, join, run_parallel, wire_path, Call, Channel, Engine, Fresh};
use crate::error::{protocol_error, Chain, Error, ErrorKind, Result};
use crate::file::{File, OpenOptions};

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
    /// Open a read-only session: the device (and the proxy) refuse every request that
    /// would create, write, truncate or remove. Default `false`.
    pub read_only: bool,
    /// Limit the session to this path and what lies below it (a tenant-namespace path
    /// such as `/logs/today`; empty: the whole namespace). Default empty.
    pub prefix: String,
    /// How responses are protected: [`Protection::Confidential`] (payloads encrypted,
    /// the default) or [`Protection::IntegrityOnly`] (authenticated only, readable by
    /// any process that can open the device: for containers that trust each other).
    pub protection: Protection,
    /// Failover: when the device loses the session (`pov-dpud` restarted, or it
    /// reclaimed the session), open it again — reconnecting to the device, opening a
    /// new session with the same secret, queues and open files — for at most this
    /// long, and resend the idempotent requests that were in flight. `None`: no
    /// failover (the session is dead at the first loss). Keeping it on means the
    /// session holds the tenant secret in memory until it closes (then wiped).
    /// Default 30 s.
    pub failover_timeout: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            queues: 4,
            qos: QosClass::Latency,
            read_only: false,
            prefix: String::new(),
            protection: Protection::Confidential,
            failover_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The authenticated admin channel of an open session: every request carries the
/// session ID, a sequence number above the last and an HMAC with the session's admin
/// key (shared by the session and its heartbeat thread).
struct SessionAdmin {
    device: Device,
    session_id: u64,
    area: u32,
    keys: Arc<SessionKeys>,
    /// The next sequence number; the lock also keeps the session's exchanges (which
    /// share its session mailbox) one at a time.
    seq: Mutex<u64>,
}

impl SessionAdmin {
    /// Runs one in-session admin request of `op` (`fill` sets its other fields);
    /// returns the answer whatever its status.
    fn raw(&self, op: AdminOp, fill: impl FnOnce(&mut AdminRequest)) -> Result<AdminResponse> {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut req = admin_request(op);
        req.session_id = self.session_id;
        req.seq = *seq;
        *seq += 1;
        fill(&mut req);
        self.device.admin_raw(req, Some((&self.keys, self.area)))
    }

    /// Like [`SessionAdmin::raw`], but a non-Ok status is an [`ErrorKind::Admin`] error.
    fn call(&self, op: AdminOp, fill: impl FnOnce(&mut AdminRequest)) -> Result<AdminResponse> {
        let resp = self.raw(op, fill)?;
        match resp.status() {
            Status::Ok => Ok(resp),
            st => Err(Error::new(ErrorKind::Admin(st), format!("admin {op:?} on {}", self.device.describe()))),
        }
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
    /// Whether the session was opened read-only ([`SessionOptions::read_only`]): the
    /// DPU and the proxy refuse anything that would change the namespace.
    pub read_only: bool,
}

struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// A session with a PoV device: an authenticated tenant with its own IO queues, kept
/// alive by a background heartbeat thread.
///
/// `Session` is `Send + Sync`: share it between threads with `Arc<Session>`. Each
/// request takes a free queue for its round trip and blocks while all queues are busy,
/// so up to `queues` requests run at once. [`File`]s keep the session's request engine
/// alive but stop working once the session is closed.
///
/// Dropping a session closes it like [`Session::close`], logging errors.
pub struct Session {
    device: Device,
    tenant: String,
    info: SessionInfo,
    protection: Protection,
    /// The admin channel of the current incarnation (a failover replaces it).
    admin: AdminSlot,
    engine: Arc<Engine>,
    heartbeat: Mutex<Option<Heartbeat>>,
}

/// The session's current admin channel, shared with its heartbeat thread and its
/// failover.
type AdminSlot = Arc<RwLock<Arc<SessionAdmin>>>;

fn current(slot: &AdminSlot) -> Arc<SessionAdmin> {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("device", &self.device.describe())
            .field("tenant", &self.tenant)
            .field("info", &self.info)
            .field("queues", &self.engine.queue_ids())
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
        let prefix = match opts.prefix.as_str() {
            "" => String::new(),
            p => pov_proto::path::normalize(p.as_bytes()).map_err(|st| invalid(&format!("prefix {p:?}: {st}")))?,
        };
        if prefix.len() > MAX_PREFIX {
            return Err(invalid("prefix longer than 512 bytes"));
        }
        let pid = std::process::id();
        let (admin, resp) = authenticate(device, tenant, secret, opts, &prefix).map_err(|e| e.recontext(&ctx))?;
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
            read_only: opts.read_only,
        };
        let want = if resp.max_queues > 0 { opts.queues.min(resp.max_queues) } else { opts.queues };
        if want < opts.queues {
            log::warn!("{ctx}: asked for {} queues, the device allows {}", opts.queues, resp.max_queues);
        }
        log::debug!("{ctx}: session {:#x} in area {}, heartbeat every {hb_ms} ms", info.session_id, info.area);
        let channels = create_channels(device, &admin, want, opts.qos, &ctx)?;
        let keys = admin.keys.clone();
        let engine = Arc::new(Engine::new(device.clone(), pid, info.session_id, keys, opts.protection, channels));
        let admin: AdminSlot = Arc::new(RwLock::new(Arc::new(admin)));
        if let Some(timeout) = opts.failover_timeout {
            let again = Reopen {
                device: device.clone(),
                tenant: tenant.to_string(),
                secret: zeroize::Zeroizing::new(secret.to_vec()),
                opts: opts.clone(),
                prefix,
                want,
                admin: admin.clone(),
            };
            engine.enable_failover(Box::new(move |failed| again.reestablish(failed)), timeout);
        }
        let session = Session {
            device: device.clone(),
            tenant: tenant.to_string(),
            info,
            protection: opts.protection,
            admin,
            engine,
            heartbeat: Mutex::new(None),
        };
        let hb = start_heartbeat(&session)
            .map_err(|e| Error::new(ErrorKind::Access, format!("{ctx}: spawn heartbeat thread")).with_source(e));
        match hb {
            Ok(hb) => *session.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some(hb),
            Err(e) => {
                let _ = session.shutdown();
                return Err(e);
            }
        }
        Ok(session)
    }

    /// The session's keys, for a driver that issues this session's IO requests itself
    /// (e.g. asynchronously on its own connection, as `pov-bench` does): tag each
    /// request with [`SessionKeys::seal_request`] and open each response with
    /// [`SessionKeys::open_response`] and [`Session::protection`]. Request IDs must come
    /// from [`Session::reserve_request_ids`].
    pub fn keys(&self) -> Arc<SessionKeys> {
        self.engine.keys()
    }

    /// How this session's responses are protected.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Reserves `n` request IDs for requests this process issues itself on the
    /// session's queues (the device refuses an ID not above the queue's last); returns
    /// the first. The session's own requests use IDs after the range.
    pub fn reserve_request_ids(&self, n: u64) -> u64 {
        self.engine.reserve_request_ids(n)
    }

    /// What the device granted.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Global IDs of the session's queues (now: a failover gives new ones).
    pub fn queue_ids(&self) -> Vec<u32> {
        self.engine.queue_ids()
    }

    /// The device's ID of the session now (a failover opens a new one; [`Session::info`]
    /// describes the session as first opened).
    pub fn current_session_id(&self) -> u64 {
        self.engine.session_id()
    }

    /// Times the session was re-established after the device lost it (see
    /// [`SessionOptions::failover_timeout`]).
    pub fn failovers(&self) -> u64 {
        self.engine.failovers()
    }

    /// The device this session runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tenant name.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Heartbeats the device has acknowledged so far.
    pub fn heartbeats(&self) -> u64 {
        self.engine.health().heartbeats()
    }

    /// Traces every request of this session (and of its [`File`]s) from now on,
    /// reporting each one's times to `tracer` ([`crate::trace`]); `None` stops.
    /// Tracing costs a little on the DPU and the proxy (a few clock readings and 24
    /// bytes per answer) and whatever `tracer` does, on the thread of the request.
    pub fn set_tracer(&self, tracer: Option<crate::trace::Tracer>) {
        self.engine.set_tracer(tracer);
    }

    /// `Ok` while the session is open and the device has not reclaimed it.
    ///
    /// Errors: `NotConnected`, saying whether the session was closed or lost.
    pub fn check(&self) -> io::Result<()> {
        self.engine.check()
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
        let wire = wire_path(path, Op::Stat)?;
        self.engine.call(&Call::path(Op::Stat, &wire, STAT_SIZE), |_, p| decode_stat(p))
    }

    /// Entries of the directory at `path` (`/` is the tenant's root), in the device's
    /// order. Issues as many List requests as needed.
    ///
    /// Errors: `NotFound`, `NotADirectory` and the other statuses of the device.
    pub fn list(&self, path: &str) -> io::Result<Vec<DirEntry>> {
        let wire = wire_path(path, Op::List)?;
        let mut out = Vec::new();
        loop {
            let c = Call { offset: out.len() as u64, ..Call::path(Op::List, &wire, LIST_READ_BYTES - HEADER_SIZE) };
            let (entries, more) = self.engine.call(&c, |h, p| {
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

    /// Removes the file or empty directory at `path`.
    ///
    /// Errors: `NotFound`, `DirectoryNotEmpty` and the other statuses of the device.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        let wire = wire_path(path, Op::Remove)?;
        self.engine.call(&Call::path(Op::Remove, &wire, 0), |_, _| Ok(()))
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
        for r in run_parallel(paths, self.engine.queue_count(), |p| self.remove(&p)) {
            r.unwrap_or_else(|| Err(io::Error::other("remove skipped")))?;
        }
        for d in dirs {
            let p = join(dir, &d.name);
            self.remove_tree(&p)?;
            self.remove(&p)?;
        }
        Ok(())
    }

    /// Creates the directory `path` (its parent must exist), like
    /// `std::fs::create_dir`; its permission bits are the backend's default (local:
    /// `0700`) unless `mode` is given (`0o777` at most).
    ///
    /// Errors: `AlreadyExists` (anything at `path`, the root included), `NotFound` (a
    /// missing parent), `NotADirectory` (a parent is a file), `PermissionDenied` (a
    /// read-only session, or outside its path prefix).
    pub fn create_dir(&self, path: &str, mode: Option<u32>) -> io::Result<()> {
        self.mkdir(path, mode, false)
    }

    /// Makes sure a directory exists at `path`, creating it and its missing parents
    /// (`mkdir -p`; one request).
    ///
    /// Errors: `AlreadyExists` if `path` (or a parent) is a file; as
    /// [`Session::create_dir`].
    pub fn create_dir_all(&self, path: &str) -> io::Result<()> {
        self.mkdir(path, None, true)
    }

    fn mkdir(&self, path: &str, mode: Option<u32>, parents: bool) -> io::Result<()> {
        let wire = wire_path(path, Op::Mkdir)?;
        let mut flags = if parents { flags::PARENTS } else { 0 };
        if mode.is_some() {
            flags |= flags::SET_MODE;
        }
        let c = Call { flags, length: mode.unwrap_or(0), ..Call::path(Op::Mkdir, &wire, 0) };
        self.engine.call(&c, |_, _| Ok(()))
    }

    /// Renames `from` to `to` in one step, replacing a file (or empty directory) at
    /// `to`, like `std::fs::rename`: readers see the old `to` or the new one, never
    /// neither. `to`'s parent must exist. Open [`File`]s name paths: one opened on
    /// `from` does not follow the rename (`docs/protocol.md`, "Names and attributes").
    ///
    /// Errors: `NotFound` (`from`, or `to`'s parent), `IsADirectory` (a file onto a
    /// directory), `NotADirectory`, `DirectoryNotEmpty`, `InvalidInput` (a directory
    /// into its own subtree), `PermissionDenied` (the root, a read-only session, a
    /// name outside the session's path prefix).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.rename_with(from, to, true, false)
    }

    /// As [`Session::rename`], and durable on the backend's storage before it
    /// returns (the directories holding both names are synced): after a crash the
    /// file is found under `to`, not `from`.
    pub fn rename_sync(&self, from: &str, to: &str) -> io::Result<()> {
        self.rename_with(from, to, true, true)
    }

    /// As [`Session::rename`], but fails with `AlreadyExists` instead of replacing
    /// anything at `to` (`RENAME_NOREPLACE`; on the Ceph backend checked just before
    /// the rename, not atomically with it).
    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        self.rename_with(from, to, false, false)
    }

    fn rename_with(&self, from: &str, to: &str, replace: bool, sync: bool) -> io::Result<()> {
        let (f, t) = (wire_path(from, Op::Rename)?, wire_path(to, Op::Rename)?);
        let payload = pov_proto::path::join_rename(&f, &t);
        let target = format!("{from} -> {to}");
        let flags = if replace { 0 } else { flags::EXCL } | if sync { flags::SYNC } else { 0 };
        let c = Call { flags, payload: &payload, target: &target, ..Call::path(Op::Rename, &f, 0) };
        self.engine.call(&c, |_, _| Ok(()))
    }

    /// Sets the permission bits (`mode & 0o777`; set-id and sticky bits are never
    /// kept) and/or the modification time (ns since the Unix epoch) of the file or
    /// directory at `path`; `None` leaves that attribute alone.
    ///
    /// Errors: `NotFound`, `PermissionDenied` (the root, a read-only session, outside
    /// the path prefix).
    pub fn set_attr(&self, path: &str, mode: Option<u32>, mtime_ns: Option<u64>) -> io::Result<()> {
        let wire = wire_path(path, Op::SetAttr)?;
        let flags = if mode.is_some() { flags::SET_MODE } else { 0 } | if mtime_ns.is_some() { flags::SET_MTIME } else { 0 };
        let c = Call { flags, length: mode.unwrap_or(0), offset: mtime_ns.unwrap_or(0), ..Call::path(Op::SetAttr, &wire, 0) };
        self.engine.call(&c, |_, _| Ok(()))
    }

    /// Capacity of the storage behind `path` (`statvfs`).
    ///
    /// Errors: the statuses of the device; a record that does not decode is
    /// `InvalidData`.
    pub fn statfs(&self, path: &str) -> io::Result<StatFs> {
        let wire = wire_path(path, Op::StatFs)?;
        self.engine.call(&Call::path(Op::StatFs, &wire, STATFS_SIZE), |_, p| {
            StatFs::decode(p).map_err(|e| protocol_error(format!("statfs record: {e}")))
        })
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

    /// Stops heartbeats, waits for requests in flight and closes the session on the device
    /// (one admin exchange: its queues go with it). Files of this session fail with `NotConnected`
    /// afterwards.
    ///
    /// Errors: the CloseSession failure; [`ErrorKind::Closed`] if the device had already
    /// reclaimed the session.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        if self.engine.health().close() {
            return Ok(());
        }
        if let Some(hb) = self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = hb.stop.send(());
            let _ = hb.thread.join();
        }
        self.engine.drain();
        let ctx = format!("close session {:#x} on {}", self.engine.session_id(), self.device.describe());
        if let Some(why) = self.engine.health().dead() {
            return Err(Error::new(ErrorKind::Closed, format!("{ctx}: session already lost: {why}")));
        }
        // One exchange: CloseSession frees the session's queues with it (the device
        // frees them once their requests are answered; none is in flight here).
        current(&self.admin).call(AdminOp::CloseSession, |_| {}).map(drop).map_err(|e| e.recontext(&ctx))
    }
}

impl OpenOptions {
    /// Opens `path` (a tenant-namespace path like `/dir/file`) in `session`.
    ///
    /// Errors: `InvalidInput` (bad option mix), `PermissionDenied` for a path with `..`
    /// or one the tenant may not open, `NotFound`, `AlreadyExists` (create_new),
    /// `IsADirectory`, and the other statuses of the device; `NotConnected` once the
    /// session is closed or lost.
    pub fn open(&self, session: &Session, path: &str) -> io::Result<File> {
        self.open_on(&session.engine, path)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("{}", Chain(&e));
        }
    }
}

/// Starts the thread that heartbeats `session` every `heartbeat_interval` until told
/// to stop. When the device has lost the session (`BadSession`, or the admin exchange
/// fails: a `pov-dpud` that died) it starts the failover (or, without failover, marks
/// the session dead).
fn start_heartbeat(session: &Session) -> io::Result<Heartbeat> {
    let (stop, rx) = mpsc::channel::<()>();
    let slot = Arc::clone(&session.admin);
    let engine = Arc::clone(&session.engine);
    let interval = session.info.heartbeat_interval;
    let thread = std::thread::Builder::new().name("pov-heartbeat".into()).spawn(move || loop {
        match rx.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let admin = current(&slot);
        let (generation, session_id) = (engine.generation(), admin.session_id);
        let lost = match admin.raw(AdminOp::Heartbeat, |_| {}) {
            Ok(r) if r.status().is_ok() => {
                engine.health().heartbeat_acked();
                None
            }
            Ok(r) if r.status() == Status::BadSession => {
                Some((format!("the device reclaimed session {session_id:#x} (heartbeat answered {:?})", r.status()), None))
            }
            Ok(r) => {
                log::warn!("heartbeat for session {session_id:#x}: device answered {} ({:?})", r.status(), r.status());
                None
            }
            // Only a device that is gone or silent, not a refusal (every shared mailbox
            // busy: another process can cause that, and must not make us fail over).
            Err(e) if e.device_gone() => {
                Some((format!("heartbeat for session {session_id:#x}: {}", Chain(&e)), Some(admin.device.transport())))
            }
            Err(e) => {
                log::warn!("heartbeat for session {session_id:#x}: {}", Chain(&e));
                None
            }
        };
        if let Some((why, failed)) = lost {
            let e = io::Error::new(io::ErrorKind::NotConnected, why);
            if engine.recover(generation, failed.as_ref(), &e).is_err() {
                engine.health().mark_dead(e.to_string());
                return;
            }
        }
    })?;
    Ok(Heartbeat { stop, thread })
}

/// Hello + OpenSession for `tenant`: the admin channel of the new session and the
/// device's answer.
fn authenticate(
    device: &Device,
    tenant: &str,
    secret: &[u8],
    opts: &SessionOptions,
    prefix: &str,
) -> Result<(SessionAdmin, AdminResponse)> {
    let pid = std::process::id();
    // Challenge-response (pov_proto::crypto): the secret itself never crosses.
    let nc: [u8; crypto::NONCE_LEN] = crypto::random();
    let mut hello = admin_request(AdminOp::Hello);
    hello.tenant = tenant.to_string();
    hello.nonce = nc;
    let challenge = device.admin(hello, None)?;
    let mut flags = 0;
    if opts.read_only {
        flags |= GRANT_READ_ONLY;
    }
    if opts.protection == Protection::IntegrityOnly {
        flags |= GRANT_INTEGRITY_ONLY;
    }
    let nd = challenge.device_nonce;
    let mut open = admin_request(AdminOp::OpenSession);
    open.exchange_id = challenge.exchange_id;
    open.grant_flags = flags;
    open.prefix = prefix.to_string();
    open.mac = crypto::open_proof(secret, tenant, &nc, &nd, pid, flags, prefix);
    let resp = device.admin(open, None)?;
    let keys = Arc::new(SessionKeys::derive(secret, &nc, &nd, tenant, resp.session_id));
    let admin = SessionAdmin { device: device.clone(), session_id: resp.session_id, area: resp.area, keys, seq: Mutex::new(1) };
    Ok((admin, resp))
}

/// Creates `want` queues of class `qos` in `admin`'s session, with their buffers;
/// undoes everything (queues and the session) if a step fails.
///
/// One CreateQueue asks for all of them (`AdminRequest::count`); a device that creates
/// one queue per request (it answers no ID list) gets one request per further queue.
fn create_channels(device: &Device, admin: &SessionAdmin, want: u32, qos: QosClass, ctx: &str) -> Result<Vec<Channel>> {
    let mut created: Vec<u32> = Vec::new();
    let mut channels = Vec::new();
    let setup = (|| -> Result<()> {
        let t = device.transport();
        let g = device.geometry();
        let batch = want.min(MAX_BATCH_QUEUES as u32) as u16;
        while created.len() < want as usize {
            let index = created.len();
            let count = if index == 0 && want > 1 { batch } else { 0 };
            let resp = admin
                .call(AdminOp::CreateQueue, |r| {
                    r.qos = qos;
                    r.count = count;
                })
                .map_err(|e| e.recontext(format!("{ctx}: create queue {index}")))?;
            let got = if resp.queue_ids.is_empty() { vec![resp.queue_id] } else { resp.queue_ids.clone() };
            if got.len() > want as usize - index {
                created.extend(&got);
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{ctx}: device created {} queues, {} asked", got.len(), want as usize - index),
                ));
            }
            for queue_id in got {
                let dup = created.contains(&queue_id);
                created.push(queue_id);
                if queue_id >= g.total_queues() || dup {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("{ctx}: device granted queue {queue_id} (device has {} queues)", g.total_queues()),
                    ));
                }
            }
        }
        for (index, &queue_id) in created.iter().enumerate() {
            let alloc = |what: &str, e| Error::new(ErrorKind::Access, format!("{ctx}: allocate {what} buffer")).with_source(e);
            // Every byte of a request is written before it is sent (padding zeroed) and
            // only bytes the device wrote are read back: no need to clear them.
            let req = t.alloc_scratch_buf(SLOT_SIZE as usize).map_err(|e| alloc("request", e))?;
            let resp = t.alloc_scratch_buf(SLOT_SIZE as usize).map_err(|e| alloc("response", e))?;
            channels.push(Channel::new(index, queue_id, req, resp));
        }
        Ok(())
    })();
    if let Err(e) = setup {
        for &queue_id in &created {
            let _ = admin.raw(AdminOp::DeleteQueue, |r| r.queue_id = queue_id);
        }
        let _ = admin.raw(AdminOp::CloseSession, |_| {});
        return Err(e);
    }
    Ok(channels)
}

/// What a failover needs to open the session again (the secret is wiped on drop).
struct Reopen {
    device: Device,
    tenant: String,
    secret: zeroize::Zeroizing<Vec<u8>>,
    opts: SessionOptions,
    prefix: String,
    want: u32,
    admin: AdminSlot,
}

impl Reopen {
    /// Reconnects the device if its transport failed, opens a new session with the
    /// same secret and options and creates its queues; installs its admin channel.
    fn reestablish(&self, failed: Option<&Arc<dyn crate::transport::BlockTransport>>) -> Result<Fresh> {
        if let Some(t) = failed {
            self.device.reconnect_from(t, std::time::Instant::now() + Duration::from_secs(2))?;
        }
        let ctx = format!("re-open session for tenant {:?} on {}", self.tenant, self.device.describe());
        let (admin, resp) = match authenticate(&self.device, &self.tenant, &self.secret, &self.opts, &self.prefix) {
            Ok(x) => x,
            Err(e) if e.device_gone() => {
                // The transport this session did not see fail may be dead as well.
                self.device.reconnect_from(&self.device.transport(), std::time::Instant::now() + Duration::from_secs(2))?;
                authenticate(&self.device, &self.tenant, &self.secret, &self.opts, &self.prefix)?
            }
            Err(e) => return Err(e),
        };
        let want = if resp.max_queues > 0 { self.want.min(resp.max_queues) } else { self.want };
        let channels = create_channels(&self.device, &admin, want, self.opts.qos, &ctx)?;
        let fresh = Fresh { session_id: admin.session_id, keys: admin.keys.clone(), channels };
        *self.admin.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(admin);
        Ok(fresh)
    }
}
