//! The Ceph backend (`ceph:...`): tenants' files are files of a CephFS file system,
//! reached through libcephfs (one client session per backend, shared by all
//! channels). Tenant `T`'s file `a/b` is `ROOT/T/a/b` in the file system (`ROOT`
//! defaults to `/pov`). Why CephFS rather than files striped over RADOS objects:
//! `docs/ceph.md`.
//!
//! **Spec string** ([`CephConfig::parse`]): `ceph` or `ceph:KEY=VALUE,...` with keys
//! `conf` (ceph.conf path; default `$CEPH_CONF`, else `/etc/ceph/ceph.conf`),
//! `client` (client name without `client.`, default `admin`), `keyring` (path,
//! default from the config file), `root` (directory inside the file system, default
//! `/pov`), `workers` (operations in flight per proxy, default 16), `timeout_ms`
//! (deadline of one operation before the host gets [`Status::Timeout`], default
//! 10000), `session_uuid` (stable, unique per proxy: a restarted proxy resets the
//! CephFS session its crashed predecessor left, see `docs/ceph.md`), `rbd_pool` (pool of the volumes' RBD images, default `pov-rbd`),
//! `rbd_prefix` (prepended to a volume's name to form its image name, default empty).
//!
//! **Plain volumes** are RBD images (librbd, format 2, default 4 MiB objects) named
//! `<rbd_prefix><volume>` in `rbd_pool`; the RADOS connection is made on the first
//! volume call. librbd's client cache is off (`rbd_cache = false`): a write is in the
//! OSDs when acknowledged, FUA and flush add an `rbd_flush`.
//!
//! **Blocking and deadlines.** libcephfs calls block the calling thread. The server
//! therefore never calls this backend on a reactor: [`Backend::workers`] asks for a
//! worker pool (see [`crate::offload`]), which keeps up to `workers` operations in
//! flight and answers [`Status::Timeout`] when one outlives `timeout_ms`. The
//! session's own Ceph timeouts (`client_mount_timeout`, `rados_osd_op_timeout`,
//! `rados_mon_op_timeout`) are set to the same deadline so that a blocked worker is
//! freed once Ceph gives up.
//!
//! **Errors**: libcephfs returns negative errnos; they map through
//! [`Status::from_errno`] (`ENOENT` → not found, `EACCES`/`EPERM` → permission,
//! `ENOSPC`/`EDQUOT` → no space, `ETIMEDOUT` → timeout, others → IO error), and a
//! symbolic link (`ELOOP` with `O_NOFOLLOW`, or seen by `stat`) → permission.
//!
//! **Durability**: the client-side object cache is off (`client_oc = false`), so
//! every write has reached the OSDs when it is acknowledged; `SYNC`/fsync also wait
//! for the MDS to journal metadata.
//!
//! **Appends** are atomic among all channels of one backend (an in-process lock
//! striped by tenant and path around "size, then write at size"); two proxies
//! appending to one file are not serialized (see `docs/ceph.md`).

use super::{check_volume_geometry, check_volume_name, check_volume_range};
use super::{mkdir_root, resolve, resolve_rename, Backend, Listing};
use crate::sys::cephfs::{CephFile, CephMount, CephStat, Errno};
use crate::sys::rados::{IoCtx, Rados, RbdImage};
use pov_proto::entry::{DirEntry, Kind, Stat, StatFs, MODE_MASK};
use pov_proto::io::flags;
use pov_proto::Status;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const APPEND_STRIPES: usize = 64;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Settings of the Ceph backend (see the module docs for the spec string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephConfig {
    /// Path of `ceph.conf`.
    pub conf: PathBuf,
    /// Client name without the `client.` prefix.
    pub client: String,
    /// Keyring path; `None` uses the config file's `keyring` setting.
    pub keyring: Option<PathBuf>,
    /// Absolute directory inside the file system that holds the tenants' directories.
    pub root: String,
    /// Operations in flight per proxy (worker threads).
    pub workers: usize,
    /// Deadline of one operation.
    pub timeout: Duration,
    /// Stable UUID of this proxy's CephFS session: at startup the session a crashed
    /// predecessor left under the same UUID is reset, releasing its capabilities at
    /// once. Must be unique per running proxy. `None`: no reclaim.
    pub session_uuid: Option<String>,
    /// Pool holding the volumes' RBD images.
    pub rbd_pool: String,
    /// Prefix of the volumes' image names.
    pub rbd_prefix: String,
}

impl Default for CephConfig {
    fn default() -> Self {
        CephConfig {
            conf: std::env::var_os("CEPH_CONF").map(PathBuf::from).unwrap_or_else(|| "/etc/ceph/ceph.conf".into()),
            client: "admin".into(),
            keyring: None,
            root: "/pov".into(),
            workers: 16,
            timeout: Duration::from_secs(10),
            session_uuid: None,
            rbd_pool: "pov-rbd".into(),
            rbd_prefix: String::new(),
        }
    }
}

impl CephConfig {
    /// Parses the part after `ceph:` (`KEY=VALUE,...`; empty for defaults).
    ///
    /// Errors: a message naming the bad item (unknown key, missing `=`, a `root` that
    /// is not absolute or holds `..`, `workers` outside 1..=1024, `timeout_ms` 0).
    pub fn parse(opts: &str) -> Result<CephConfig, String> {
        let mut c = CephConfig::default();
        for item in opts.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| format!("{item:?} is not KEY=VALUE"))?;
            match k {
                "conf" => c.conf = v.into(),
                "client" if !v.is_empty() && !v.contains('.') => c.client = v.into(),
                "keyring" => c.keyring = Some(v.into()),
                "root" if v.starts_with('/') && !v.split('/').any(|p| p == "..") => {
                    c.root = v.trim_end_matches('/').to_string();
                }
                "workers" => c.workers = v.parse().ok().filter(|n| (1..=1024).contains(n)).ok_or("workers must be 1..=1024")?,
                "timeout_ms" => {
                    let ms: u64 = v.parse().ok().filter(|&n| n > 0).ok_or("timeout_ms must be a positive integer")?;
                    c.timeout = Duration::from_millis(ms);
                }
                "rbd_pool" if !v.is_empty() => c.rbd_pool = v.into(),
                "session_uuid" if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()) => {
                    c.session_uuid = Some(v.into());
                }
                "rbd_prefix" if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
                    c.rbd_prefix = v.into();
                }
                _ => {
                    return Err(format!(
                        "bad option {item:?} (keys: conf, client, keyring, root, workers, timeout_ms, session_uuid, rbd_pool, rbd_prefix)"
                    ))
                }
            }
        }
        Ok(c)
    }
}

impl std::fmt::Display for CephConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ceph:conf={},client={},root={}", self.conf.display(), self.client, self.root)?;
        if let Some(k) = &self.keyring {
            write!(f, ",keyring={}", k.display())?;
        }
        write!(f, ",workers={},timeout_ms={},rbd_pool={}", self.workers, self.timeout.as_millis(), self.rbd_pool)?;
        if !self.rbd_prefix.is_empty() {
            write!(f, ",rbd_prefix={}", self.rbd_prefix)?;
        }
        if let Some(u) = &self.session_uuid {
            write!(f, ",session_uuid={u}")?;
        }
        Ok(())
    }
}

struct Inner {
    mount: Arc<CephMount>,
    /// Open files by absolute path, shared by all channels (see [`HANDLE_TTL`]).
    files: Mutex<HashMap<String, (Arc<CephFile>, Instant)>>,
    config: CephConfig,
    append_locks: Vec<Mutex<()>>,
    /// The RBD pool's IO context, connected on first use.
    rbd: Mutex<Option<Arc<IoCtx>>>,
    /// Open images by volume name, shared by all channels (librbd images are
    /// thread-safe).
    images: Mutex<HashMap<String, Arc<RbdImage>>>,
    /// Serializes creating images.
    volume_create: Mutex<()>,
}

/// Most images kept open at once; the cache is emptied beyond it.
const MAX_OPEN_IMAGES: usize = 256;
/// Most files kept open at once; the cache is emptied beyond it.
const MAX_OPEN_FILES: usize = 1024;
/// How long an open file is reused before it is opened again. Opening costs a
/// capability exchange with the MDS (and a journal entry for a write open), which
/// dominated 4 KiB IO; reusing a handle means a file removed or replaced by
/// *another* client is still served from its old inode for up to this long.
pub const HANDLE_TTL: Duration = Duration::from_secs(1);

/// Files in CephFS. Channels share the client session and the append locks.
pub struct CephBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CephBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephBackend").field("config", &self.inner.config).finish()
    }
}

fn st(e: Errno) -> Status {
    match e.0 {
        libc::ELOOP => Status::Permission,
        n => Status::from_errno(n),
    }
}

fn check_offset(v: u64) -> Result<(), Status> {
    if v > i64::MAX as u64 {
        Err(Status::Invalid)
    } else {
        Ok(())
    }
}

impl CephBackend {
    /// Connects to the cluster and mounts CephFS; creates `config.root` if missing.
    ///
    /// Errors: [`crate::Error::CephSetup`] naming the failing step (bad config path,
    /// no keyring, cluster unreachable within the timeout, no file system).
    pub fn open(config: &CephConfig) -> Result<CephBackend, crate::Error> {
        let err = |step: &str, e: Errno| crate::Error::CephSetup { what: format!("{step} ({config})"), errno: e.0 };
        let secs = config.timeout.as_millis().div_ceil(1000).max(1).to_string();
        let keyring = config.keyring.as_ref().map(|k| k.to_string_lossy().into_owned());
        let mut opts: Vec<(&str, &str)> = vec![
            // No client-side object cache: a write is in the OSDs when the host gets
            // its answer, so a proxy crash loses nothing that was acknowledged.
            ("client_oc", "false"),
            ("client_mount_timeout", &secs),
            ("rados_mon_op_timeout", &secs),
            ("rados_osd_op_timeout", &secs),
        ];
        if let Some(k) = &keyring {
            opts.push(("keyring", k));
        }
        let conf = config.conf.to_string_lossy();
        let mount = CephMount::mount_as(&config.client, &conf, &opts, config.session_uuid.as_deref())
            .map_err(|(step, e)| err(step, e))?;
        let mut path = String::new();
        for part in config.root.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            // stat first: mkdir of an existing directory needs a write lock on its
            // parent, which waits while a dead client (a killed predecessor of this
            // proxy) still holds capabilities on it.
            match mount.stat(&path) {
                Ok(s) if s.is_dir() => continue,
                Ok(_) => return Err(err("the root path holds a non-directory", Errno(libc::ENOTDIR))),
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(err("checking the root directory", e)),
            }
            match mount.mkdir(&path, 0o755) {
                Ok(()) | Err(Errno(libc::EEXIST)) => {}
                Err(e) => return Err(err("creating the root directory", e)),
            }
        }
        let append_locks = (0..APPEND_STRIPES).map(|_| Mutex::new(())).collect();
        Ok(CephBackend {
            inner: Arc::new(Inner {
                mount,
                files: Mutex::new(HashMap::new()),
                config: config.clone(),
                append_locks,
                rbd: Mutex::new(None),
                images: Mutex::new(HashMap::new()),
                volume_create: Mutex::new(()),
            }),
        })
    }

    /// The settings this backend was opened with.
    pub fn config(&self) -> &CephConfig {
        &self.inner.config
    }

    fn m(&self) -> &Arc<CephMount> {
        &self.inner.mount
    }

    /// Absolute path of the tenant's directory, or of `p` inside it.
    fn abs(&self, tenant: &str, p: &str) -> String {
        if p.is_empty() {
            format!("{}/{tenant}", self.inner.config.root)
        } else {
            format!("{}/{tenant}/{p}", self.inner.config.root)
        }
    }

    /// Creates the tenant directory and the parents of `p` (one level at a time).
    fn make_parents(&self, tenant: &str, p: &str) -> Result<(), Status> {
        let mut path = self.abs(tenant, "");
        let parents: Vec<&str> = p.split('/').collect();
        for (i, part) in std::iter::once("").chain(parents[..parents.len() - 1].iter().copied()).enumerate() {
            if i > 0 {
                path.push('/');
                path.push_str(part);
            }
            match self.m().mkdir(&path, DIR_MODE) {
                Ok(()) => {}
                Err(Errno(libc::EEXIST)) => {
                    let s = self.m().stat(&path).map_err(st)?;
                    if !s.is_dir() {
                        return Err(if s.is_file() { Status::NotDir } else { Status::Permission });
                    }
                }
                Err(e) => return Err(st(e)),
            }
        }
        Ok(())
    }

    /// Opens a regular file of the tenant; a directory gives [`Status::IsDir`],
    /// anything else [`Status::Permission`].
    ///
    /// Plain opens (no `O_CREAT`, `O_TRUNC`) reuse a cached read-write handle for up
    /// to [`HANDLE_TTL`].
    fn open_file(&self, tenant: &str, path: &str, oflags: i32) -> Result<Arc<CephFile>, Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return Err(Status::IsDir);
        }
        let abs = self.abs(tenant, &p);
        let plain = oflags & (libc::O_CREAT | libc::O_TRUNC) == 0;
        if plain {
            let files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((f, at)) = files.get(&abs) {
                if at.elapsed() < HANDLE_TTL {
                    return Ok(f.clone());
                }
            }
        }
        // Cached handles are opened read-write so that one serves every operation.
        let oflags = if plain { libc::O_RDWR } else { (oflags & !libc::O_ACCMODE) | libc::O_RDWR };
        let f = match self.m().open(&abs, oflags | libc::O_NOFOLLOW, FILE_MODE) {
            Ok(f) => f,
            Err(Errno(libc::EISDIR)) => return Err(Status::IsDir),
            Err(Errno(libc::ENOENT)) if oflags & libc::O_CREAT == 0 => {
                // A missing tenant directory or parent is "not found" too; a parent
                // that is a file is "not a directory".
                return Err(Status::NotFound);
            }
            Err(e) => return Err(self.path_err(tenant, &p, e)),
        };
        let s = f.stat().map_err(st)?;
        kind_of(&s)?;
        if s.is_dir() {
            return Err(Status::IsDir);
        }
        let f = Arc::new(f);
        let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.len() >= MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(abs, (f.clone(), Instant::now()));
        Ok(f)
    }

    /// Forgets the cached handle of `abs` (after removing it).
    fn forget(&self, abs: &str) {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).remove(abs);
    }

    /// Forgets the cached handles of `abs` and of everything below it (after a
    /// rename, a handle cached under an old name must not serve the new occupant).
    fn forget_tree(&self, abs: &str) {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| !pov_proto::path::is_within(k, abs));
    }

    /// Maps an error of a call on tenant path `p`. libcephfs answers a walk through a
    /// regular file with `EACCES` (the file has no search permission) where POSIX
    /// gives `ENOTDIR`: when a parent of `p` is a file, the status is
    /// [`Status::NotDir`].
    fn path_err(&self, tenant: &str, p: &str, e: Errno) -> Status {
        if e.0 == libc::EACCES {
            let mut prefix = self.abs(tenant, "");
            let parts: Vec<&str> = p.split('/').collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                prefix.push('/');
                prefix.push_str(part);
                match self.m().stat(&prefix) {
                    Ok(s) if s.is_dir() => continue,
                    Ok(s) if s.is_file() => return Status::NotDir,
                    _ => break,
                }
            }
        }
        st(e)
    }

    /// A monitor-command runner for the route controller (`crate::cluster`): its own
    /// RADOS connection as this backend's client, with the backend's deadline.
    ///
    /// Errors: the connection cannot be made (the failing step and errno).
    pub fn monitor(c: &CephConfig) -> Result<super::MonCommand, String> {
        let secs = c.timeout.as_millis().div_ceil(1000).max(1).to_string();
        let keyring = c.keyring.as_ref().map(|k| k.to_string_lossy().into_owned());
        let mut opts: Vec<(&str, &str)> = vec![("rados_mon_op_timeout", &secs)];
        if let Some(k) = &keyring {
            opts.push(("keyring", k));
        }
        let cluster =
            Rados::connect(&c.client, &c.conf.to_string_lossy(), &opts).map_err(|(step, e)| format!("{step} ({c}): {e}"))?;
        Ok(Box::new(move |cmd: &str| cluster.mon_command(cmd).map_err(|e| format!("monitor command {cmd}: {e}"))))
    }

    /// The RBD pool's IO context (connecting on first use).
    fn rbd_pool(&self) -> Result<Arc<IoCtx>, Status> {
        let mut g = self.inner.rbd.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(io) = g.as_ref() {
            return Ok(io.clone());
        }
        let c = &self.inner.config;
        let secs = c.timeout.as_millis().div_ceil(1000).max(1).to_string();
        let keyring = c.keyring.as_ref().map(|k| k.to_string_lossy().into_owned());
        let mut opts: Vec<(&str, &str)> =
            vec![("rbd_cache", "false"), ("rados_mon_op_timeout", &secs), ("rados_osd_op_timeout", &secs)];
        if let Some(k) = &keyring {
            opts.push(("keyring", k));
        }
        let cluster = Rados::connect(&c.client, &c.conf.to_string_lossy(), &opts).map_err(|(step, e)| {
            log::error!("Ceph backend: {step} for RBD volumes ({c}): {e}");
            st(e)
        })?;
        let io = Arc::new(cluster.ioctx(&c.rbd_pool).map_err(|e| {
            log::error!("Ceph backend: RBD pool {:?}: {e}", c.rbd_pool);
            if e.0 == libc::ENOENT {
                Status::Unavailable
            } else {
                st(e)
            }
        })?);
        *g = Some(io.clone());
        Ok(io)
    }

    /// The open image of `volume` (opening it if this backend has not yet).
    fn image(&self, volume: &str) -> Result<Arc<RbdImage>, Status> {
        check_volume_name(volume)?;
        if let Some(i) = self.inner.images.lock().unwrap_or_else(|e| e.into_inner()).get(volume) {
            return Ok(i.clone());
        }
        let io = self.rbd_pool()?;
        let img = Arc::new(io.rbd_open(&format!("{}{volume}", self.inner.config.rbd_prefix)).map_err(st)?);
        let mut images = self.inner.images.lock().unwrap_or_else(|e| e.into_inner());
        if images.len() >= MAX_OPEN_IMAGES {
            images.clear();
        }
        Ok(images.entry(volume.to_string()).or_insert(img).clone())
    }

    fn append_lock(&self, tenant: &str, path: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        (tenant, path).hash(&mut h);
        &self.inner.append_locks[(h.finish() % APPEND_STRIPES as u64) as usize]
    }
}

/// The PoV kind of a stat result; links and special files are refused.
fn kind_of(s: &CephStat) -> Result<Kind, Status> {
    if s.is_file() {
        Ok(Kind::File)
    } else if s.is_dir() {
        Ok(Kind::Dir)
    } else {
        Err(Status::Permission)
    }
}

impl Backend for CephBackend {
    fn kind(&self) -> &'static str {
        "ceph"
    }

    fn channel(&self) -> Box<dyn Backend> {
        Box::new(CephBackend { inner: self.inner.clone() })
    }

    fn workers(&self) -> usize {
        self.inner.config.workers
    }

    fn op_timeout(&self) -> Option<Duration> {
        Some(self.inner.config.timeout)
    }

    fn open(&mut self, tenant: &str, path: &str, f: u32) -> Result<u64, Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return Err(Status::IsDir);
        }
        let create = f & flags::CREATE != 0;
        let mut o = if create || f & (flags::WRITE | flags::TRUNCATE) != 0 { libc::O_RDWR } else { libc::O_RDONLY };
        if create {
            o |= libc::O_CREAT;
            if f & flags::EXCL != 0 {
                o |= libc::O_EXCL;
            }
        }
        if f & flags::TRUNCATE != 0 {
            o |= libc::O_TRUNC;
        }
        match self.open_file(tenant, &p, o) {
            // Parents are created only when missing: each mkdir is an MDS round trip.
            Err(Status::NotFound) if create => {
                self.make_parents(tenant, &p)?;
                self.open_file(tenant, &p, o)
            }
            r => r,
        }
        .and_then(|file| file.stat().map(|s| s.ino).map_err(st))
    }

    fn read(&mut self, tenant: &str, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Status> {
        check_offset(offset)?;
        let file = self.open_file(tenant, path, libc::O_RDONLY)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64).map_err(st)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    fn write(&mut self, tenant: &str, path: &str, offset: u64, data: &[u8], sync: bool) -> Result<usize, Status> {
        check_offset(offset)?;
        let file = self.open_file(tenant, path, libc::O_WRONLY)?;
        let mut done = 0;
        while done < data.len() {
            match file.write_at(&data[done..], Some(offset + done as u64)).map_err(st)? {
                0 => return Err(Status::Io),
                n => done += n,
            }
        }
        if sync {
            file.sync(true).map_err(st)?;
        }
        Ok(done)
    }

    fn append(&mut self, tenant: &str, path: &str, data: &[u8], sync: bool) -> Result<u64, Status> {
        let p = resolve(tenant, path)?;
        let file = self.open_file(tenant, &p, libc::O_WRONLY)?;
        let landed = {
            let _g = self.append_lock(tenant, &p).lock().unwrap_or_else(|e| e.into_inner());
            let at = file.stat().map_err(st)?.size;
            let mut done = 0;
            while done < data.len() {
                match file.write_at(&data[done..], Some(at + done as u64)).map_err(st)? {
                    0 => return Err(Status::Io),
                    n => done += n,
                }
            }
            at
        };
        if sync {
            file.sync(true).map_err(st)?;
        }
        Ok(landed)
    }

    fn truncate(&mut self, tenant: &str, path: &str, size: u64) -> Result<u64, Status> {
        check_offset(size)?;
        let file = self.open_file(tenant, path, libc::O_WRONLY)?;
        file.truncate(size).map_err(st)?;
        Ok(size)
    }

    fn stat(&mut self, tenant: &str, path: &str) -> Result<Stat, Status> {
        let p = resolve(tenant, path)?;
        match self.m().stat(&self.abs(tenant, &p)) {
            Ok(s) => match kind_of(&s)? {
                Kind::File => Ok(Stat { kind: Kind::File, mode: s.mode & MODE_MASK, size: s.size, mtime_ns: s.mtime_ns }),
                Kind::Dir => Ok(Stat { kind: Kind::Dir, mode: s.mode & MODE_MASK, size: 0, mtime_ns: s.mtime_ns }),
            },
            // The root of a tenant without files is an empty directory.
            Err(Errno(libc::ENOENT)) if p.is_empty() => Ok(Stat { kind: Kind::Dir, mode: DIR_MODE, size: 0, mtime_ns: 0 }),
            Err(e) => Err(self.path_err(tenant, &p, e)),
        }
    }

    fn list(&mut self, tenant: &str, path: &str, start: u64, max_bytes: usize) -> Result<Listing, Status> {
        let p = resolve(tenant, path)?;
        let dir = self.abs(tenant, &p);
        let s = match self.m().stat(&dir) {
            Ok(s) => s,
            Err(Errno(libc::ENOENT)) if p.is_empty() => return Ok(Listing::default()),
            Err(e) => return Err(self.path_err(tenant, &p, e)),
        };
        if kind_of(&s)? != Kind::Dir {
            return Err(Status::NotDir);
        }
        let mut names: Vec<(String, u8)> = self.m().read_dir(&dir).map_err(st)?;
        names.retain(|(_, t)| matches!(*t, libc::DT_REG | libc::DT_DIR | libc::DT_UNKNOWN));
        names.sort_unstable();
        let mut out = Listing::default();
        let mut used = 0usize;
        let skip = usize::try_from(start).unwrap_or(usize::MAX);
        for (name, _) in names.into_iter().skip(skip) {
            let s = match self.m().stat(&format!("{dir}/{name}")) {
                Ok(s) => s,
                // Removed since readdir: leave it out.
                Err(Errno(libc::ENOENT)) => continue,
                Err(e) => return Err(st(e)),
            };
            let entry = match kind_of(&s) {
                Ok(Kind::File) => DirEntry { kind: Kind::File, size: s.size, name },
                Ok(Kind::Dir) => DirEntry { kind: Kind::Dir, size: 0, name },
                Err(_) => continue,
            };
            if !out.push_within(entry, &mut used, max_bytes) {
                break;
            }
        }
        Ok(out)
    }

    fn remove(&mut self, tenant: &str, path: &str) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return Err(Status::Permission);
        }
        let abs = self.abs(tenant, &p);
        let s = self.m().stat(&abs).map_err(|e| self.path_err(tenant, &p, e))?;
        let dir = kind_of(&s)? == Kind::Dir;
        self.forget(&abs);
        self.m().remove(&abs, dir).map_err(|e| match e.0 {
            libc::ENOTEMPTY | libc::EEXIST => Status::NotEmpty,
            _ => st(e),
        })
    }

    fn mkdir(&mut self, tenant: &str, path: &str, mode: Option<u32>, parents: bool) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        // The tenant directory always; with `parents`, every parent of `p` too
        // (make_parents creates the parents of the path it is given).
        self.make_parents(tenant, if parents { &p } else { "-" })?;
        if let Some(r) = mkdir_root(&p, parents) {
            return r;
        }
        let abs = self.abs(tenant, &p);
        match self.m().mkdir(&abs, DIR_MODE) {
            Ok(()) => {}
            Err(Errno(libc::EEXIST)) => {
                let s = self.m().stat(&abs).map_err(st)?;
                return if parents && s.is_dir() { Ok(()) } else { Err(Status::Exists) };
            }
            Err(e) => return Err(self.path_err(tenant, &p, e)),
        }
        match mode {
            Some(m) => self.m().set_attr(&abs, Some(m & MODE_MASK), None).map_err(st),
            None => Ok(()),
        }
    }

    fn rename(&mut self, tenant: &str, from: &str, to: &str, replace: bool, sync: bool) -> Result<(), Status> {
        let (from, to) = resolve_rename(tenant, from, to)?;
        let (from_abs, to_abs) = (self.abs(tenant, &from), self.abs(tenant, &to));
        let kind = kind_of(&self.m().stat(&from_abs).map_err(|e| self.path_err(tenant, &from, e))?)?;
        if from == to {
            // POSIX: nothing to do. (libcephfs would unlink the name.)
            return Ok(());
        }
        match self.m().stat(&to_abs) {
            // libcephfs has no RENAME_NOREPLACE: checked, then renamed (two renames
            // racing onto one new name may both succeed; the later one wins).
            Ok(_) if !replace => return Err(Status::Exists),
            // What POSIX answers (libcephfs says ENOTEMPTY for a file onto a
            // non-empty directory).
            Ok(s) => match (kind, kind_of(&s)?) {
                (Kind::File, Kind::Dir) => return Err(Status::IsDir),
                (Kind::Dir, Kind::File) => return Err(Status::NotDir),
                _ => {}
            },
            Err(_) => {}
        }
        let r = self.m().rename(&from_abs, &to_abs).map_err(|e| match e.0 {
            libc::ENOTEMPTY | libc::EEXIST => Status::NotEmpty,
            _ => self.path_err(tenant, &to, e),
        });
        self.forget_tree(&from_abs);
        self.forget_tree(&to_abs);
        r?;
        if sync {
            // The MDS journals the rename; syncing the client waits until it has.
            self.m().sync_fs().map_err(st)?;
        }
        Ok(())
    }

    fn set_attr(&mut self, tenant: &str, path: &str, mode: Option<u32>, mtime_ns: Option<u64>) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return Err(Status::Permission);
        }
        let abs = self.abs(tenant, &p);
        kind_of(&self.m().stat(&abs).map_err(|e| self.path_err(tenant, &p, e))?)?;
        self.m().set_attr(&abs, mode.map(|m| m & MODE_MASK), mtime_ns).map_err(st)
    }

    fn statfs(&mut self, tenant: &str, path: &str) -> Result<StatFs, Status> {
        resolve(tenant, path)?;
        // The backend's root exists from open on; the tenant's directory may not yet.
        let root = if self.inner.config.root.is_empty() { "/" } else { self.inner.config.root.as_str() };
        self.m().statfs(root).map_err(st)
    }

    fn volume_open(&mut self, volume: &str, size: u64, block_size: u32, create: bool) -> Result<u64, Status> {
        check_volume_geometry(volume, size, block_size)?;
        let img = match self.image(volume) {
            Ok(i) => i,
            Err(Status::NotFound) if create => {
                let _g = self.inner.volume_create.lock().unwrap_or_else(|e| e.into_inner());
                let name = format!("{}{volume}", self.inner.config.rbd_prefix);
                match self.rbd_pool()?.rbd_create(&name, size) {
                    Ok(()) | Err(Errno(libc::EEXIST)) => {}
                    Err(e) => return Err(st(e)),
                }
                self.image(volume)?
            }
            Err(s) => return Err(s),
        };
        if img.size().map_err(st)? != size {
            return Err(Status::Invalid);
        }
        Ok(size)
    }

    fn volume_read(&mut self, volume: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Status> {
        let img = self.image(volume)?;
        check_volume_range(offset, buf.len(), img.size().map_err(st)?)?;
        let mut done = 0;
        while done < buf.len() {
            match img.read(offset + done as u64, &mut buf[done..]).map_err(st)? {
                0 => return Err(Status::Io),
                n => done += n,
            }
        }
        Ok(done)
    }

    fn volume_write(&mut self, volume: &str, offset: u64, data: &[u8], fua: bool) -> Result<usize, Status> {
        let img = self.image(volume)?;
        check_volume_range(offset, data.len(), img.size().map_err(st)?)?;
        let mut done = 0;
        while done < data.len() {
            match img.write(offset + done as u64, &data[done..]).map_err(st)? {
                0 => return Err(Status::Io),
                n => done += n,
            }
        }
        if fua {
            img.flush().map_err(st)?;
        }
        Ok(done)
    }

    fn volume_flush(&mut self, volume: &str) -> Result<(), Status> {
        self.image(volume)?.flush().map_err(st)
    }

    fn fsync(&mut self, tenant: &str, path: &str) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        let abs = self.abs(tenant, &p);
        let s = match self.m().stat(&abs) {
            Ok(s) => s,
            Err(Errno(libc::ENOENT)) if p.is_empty() => return Ok(()),
            Err(e) => return Err(self.path_err(tenant, &p, e)),
        };
        match kind_of(&s)? {
            // Metadata too: waits until the MDS has journaled the file's creation.
            Kind::File => self.open_file(tenant, &p, libc::O_RDONLY)?.sync(false).map_err(st),
            // Directory operations are journaled by the MDS before they are
            // acknowledged to this client's later syncs; nothing to flush here.
            Kind::Dir => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend on the shared dev cluster, in a root directory of its own; `None`
    /// when Ceph is not installed outside CI (see [`dev::DevCluster::shared`]).
    fn backend() -> Option<(Arc<dev::DevCluster>, Box<dyn Backend>)> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let c = dev::DevCluster::shared()?;
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = CephConfig { rbd_prefix: format!("c{n}-"), ..c.config(&format!("/conformance-{n}")) };
        let b = CephBackend::open(&config).expect("mount CephFS on the dev cluster");
        Some((c, Box::new(b)))
    }

    mod conformance {
        crate::backend_conformance_tests!({
            match super::backend() {
                Some(x) => x,
                None => return,
            }
        });
    }

    #[test]
    fn spec_options_parse() {
        let c = CephConfig::parse(
            "conf=/x/ceph.conf,client=pov,keyring=/k,root=/a/b/,workers=4,timeout_ms=500,rbd_pool=p,rbd_prefix=x-,session_uuid=p1",
        )
        .unwrap();
        assert_eq!(c.session_uuid.as_deref(), Some("p1"));
        assert_eq!(CephConfig::parse(&c.to_string()["ceph:".len()..]).unwrap(), c, "Display round-trips");
        assert_eq!((c.rbd_pool.as_str(), c.rbd_prefix.as_str()), ("p", "x-"));
        assert_eq!(c.conf, PathBuf::from("/x/ceph.conf"));
        assert_eq!((c.client.as_str(), c.root.as_str(), c.workers), ("pov", "/a/b", 4));
        assert_eq!(c.keyring, Some(PathBuf::from("/k")));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(CephConfig::parse("").unwrap().root, "/pov");
        for bad in [
            "x",
            "root=rel",
            "root=/a/../b",
            "workers=0",
            "workers=x",
            "timeout_ms=0",
            "client=client.admin",
            "pool=a",
            "rbd_prefix=a/b",
        ] {
            assert!(CephConfig::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod dev {
    //! A single-node dev cluster for tests and benchmarks (cargo feature `testing`),
    //! started with
    //! `scripts/ceph-dev up` and stopped (every daemon) when the last
    //! [`DevCluster`] handle of the process is dropped.
    //!
    //! Each process gets its own state directory (under the system temp dir) and its
    //! own monitor ports, so several test binaries may run at once.

    use super::CephConfig;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::{Arc, Mutex, Weak};

    /// A running dev cluster; `scripts/ceph-dev down` runs when it is dropped.
    #[derive(Debug)]
    pub struct DevCluster {
        dir: PathBuf,
        conf: PathBuf,
        port: u16,
        /// OSDs (`POV_CEPH_OSDS`) and PGs of `pov-data` (`POV_CEPH_DATA_PGS`).
        osds: u32,
        data_pgs: u32,
    }

    static SHARED: Mutex<Weak<DevCluster>> = Mutex::new(Weak::new());

    /// The repository's `scripts/ceph-dev`.
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ceph-dev")
    }

    /// `true` when Debian's Ceph daemons are installed.
    pub fn installed() -> bool {
        ["ceph-mon", "ceph-osd", "ceph-mds"]
            .iter()
            .all(|b| std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file())).unwrap_or(false))
    }

    fn free_port_pair() -> u16 {
        let base = 20000 + (std::process::id() % 2000) as u16 * 4;
        for p in (base..40000).step_by(2) {
            let ok = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            if ok(p) && ok(p + 1) {
                return p;
            }
        }
        6789
    }

    impl DevCluster {
        /// The process-wide cluster, started on first use. Returns `None` (after
        /// printing why) when Ceph is not installed and `CI` is not set; panics when it
        /// is not installed under CI or fails to start, so tests that need Ceph can
        /// never pass silently in CI.
        pub fn shared() -> Option<Arc<DevCluster>> {
            let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = g.upgrade() {
                return Some(c);
            }
            if !installed() {
                let msg = "Ceph is not installed (ceph-mon, ceph-osd, ceph-mds): run ci/install-deps.sh";
                if std::env::var_os("CI").is_some() {
                    panic!("{msg}");
                }
                eprintln!("SKIPPED: {msg}");
                return None;
            }
            let c = Arc::new(DevCluster::start().unwrap_or_else(|e| panic!("starting the Ceph dev cluster: {e}")));
            *g = Arc::downgrade(&c);
            Some(c)
        }

        /// Starts a fresh cluster in its own directory.
        ///
        /// Errors: the script's output when `scripts/ceph-dev up` fails.
        pub fn start() -> Result<DevCluster, String> {
            DevCluster::start_with(1, 8)
        }

        /// Starts a fresh cluster of `osds` OSDs (1-8) whose data pool `pov-data` has
        /// `data_pgs` PGs, in its own directory (not shared).
        ///
        /// Errors: the script's output when `scripts/ceph-dev up` fails.
        pub fn start_with(osds: u32, data_pgs: u32) -> Result<DevCluster, String> {
            let dir = std::env::temp_dir().join(format!("pov-ceph-{}-{}", std::process::id(), rand_suffix()));
            let port = free_port_pair();
            let c = DevCluster { conf: dir.join("ceph.conf"), dir, port, osds, data_pgs };
            let out = c.run("up").map_err(|e| format!("running {}: {e}", script().display()))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/ceph-dev up failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(c)
        }

        fn run(&self, verb: &str) -> std::io::Result<std::process::Output> {
            Command::new("bash")
                .arg(script())
                .arg(verb)
                .env("POV_CEPH_DIR", &self.dir)
                .env("POV_CEPH_MON_PORT", self.port.to_string())
                .env("POV_CEPH_OSDS", self.osds.to_string())
                .env("POV_CEPH_DATA_PGS", self.data_pgs.to_string())
                .output()
        }

        /// Path of the cluster's `ceph.conf` (it names the admin keyring).
        pub fn conf(&self) -> &Path {
            &self.conf
        }

        /// The state directory.
        pub fn dir(&self) -> &Path {
            &self.dir
        }

        /// Backend settings for this cluster under root directory `root`.
        pub fn config(&self, root: &str) -> CephConfig {
            CephConfig { conf: self.conf.clone(), root: root.to_string(), ..CephConfig::default() }
        }
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
        h.finish() & 0xffff_ffff
    }

    impl Drop for DevCluster {
        fn drop(&mut self) {
            match self.run("down") {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("scripts/ceph-dev down: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("scripts/ceph-dev down: {e}"),
            }
        }
    }
}
