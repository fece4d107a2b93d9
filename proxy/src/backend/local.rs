//! The local backend (`local:DIR`): tenant `T`'s file `a/b` is the regular file
//! `DIR/T/a/b`.
//!
//! **Confinement.** `DIR` is opened once; every later name is resolved one component
//! at a time relative to an open directory descriptor (`openat`, `mkdirat`,
//! `fstatat`, `unlinkat`) with `O_NOFOLLOW`, so no symbolic link is ever followed:
//! a link placed inside the tree (by an administrator; tenants cannot create links)
//! is answered with [`Status::Permission`] and never leads out of `DIR/T`. Paths are
//! re-normalized first ([`super::resolve`]), so `..` never reaches the file system.
//! FIFOs, sockets and devices inside the tree are refused the same way, and files
//! are opened with `O_NONBLOCK` so that a FIFO can never block a reactor.
//!
//! **Appends** take an in-process lock (striped by tenant and path) around an
//! `O_APPEND` write, so concurrent appends through any channel of one backend never
//! interleave, and the offset each one landed at is exact.
//!
//! **Volumes.** Volume `V` is the regular file `DIR/@volumes/V` (`@` can never be a
//! tenant name, so no tenant path reaches it), created at its full size (sparse) by
//! [`Backend::volume_open`] and never resized. Each channel keeps the volumes it used
//! open (at most [`MAX_OPEN_VOLUMES`]), so an IO costs one `pread`/`pwrite`. Flush is
//! `fdatasync` on the file, which covers writes made through every channel's
//! descriptor (they share the page cache). The block size is checked but not stored.
//!
//! Directories are created `0700`, files `0600` (before umask): only the proxy's user
//! reads tenant data. A tenant may set its entries' permission bits (`0o777` at
//! most, never set-id bits), but never those of its namespace root `DIR/T`, which
//! stays `0700`: whatever a tenant sets below it, no other user of the proxy's
//! machine can reach the tree. Modes are real: a file a tenant made `0000` cannot be
//! opened by a proxy that does not run as root, as on any POSIX file system. Directory entries that are not regular files or directories, or
//! whose names are not UTF-8, are left out of listings.

use super::{
    check_volume_geometry, check_volume_name, check_volume_range, mkdir_root, resolve, resolve_rename, Backend, Listing,
};
use crate::sys::{self, EntryType};
use pov_proto::entry::{DirEntry, Kind, Stat, StatFs, MODE_MASK};
use pov_proto::io::flags;
use pov_proto::Status;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Number of append lock stripes.
const APPEND_STRIPES: usize = 64;
const DIR_MODE: libc::mode_t = 0o700;
const FILE_MODE: libc::mode_t = 0o600;
/// Directory under `DIR` that holds the volumes.
pub const VOLUMES_DIR: &str = "@volumes";
/// Most volume files one channel keeps open; past it the channel closes them all
/// and reopens on demand.
pub const MAX_OPEN_VOLUMES: usize = 256;

struct Inner {
    dir: PathBuf,
    root: OwnedFd,
    append_locks: Vec<Mutex<()>>,
    /// Serializes volume creation, so two channels creating one volume agree.
    volume_create: Mutex<()>,
}

/// An open volume file and its size in bytes.
struct OpenVolume {
    file: File,
    size: u64,
}

/// Files under a local directory. Cheap to clone through [`Backend::channel`]: all
/// channels share the root descriptor and the append locks; each keeps its own open
/// volume files.
pub struct LocalBackend {
    inner: Arc<Inner>,
    volumes: HashMap<String, OpenVolume>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend").field("dir", &self.inner.dir).finish()
    }
}

/// Maps an error from a call on `name` under `dir`: a symbolic link (or anything not
/// a file or directory) becomes [`Status::Permission`], a file where a directory was
/// needed [`Status::NotDir`].
fn classify(dir: BorrowedFd<'_>, name: &str, e: io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Status::Permission,
        Some(libc::ENOTDIR) => match sys::stat_at(dir, name) {
            Ok(s) if s.kind == EntryType::File => Status::NotDir,
            Ok(s) if s.kind == EntryType::Dir => Status::from_io_error(&e),
            Ok(_) => Status::Permission,
            Err(e2) => Status::from_io_error(&e2),
        },
        _ => Status::from_io_error(&e),
    }
}

/// Splits a normalized, non-root path into parent components and the last one.
fn split(p: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = p.split('/').collect();
    let last = parts.pop().unwrap_or("");
    (parts, last)
}

fn check_offset(v: u64) -> Result<(), Status> {
    if v > i64::MAX as u64 {
        return Err(Status::Invalid);
    }
    Ok(())
}

impl LocalBackend {
    /// Opens (creating it and its parents if missing) the directory `dir`.
    ///
    /// Errors: [`crate::Error::BackendSetup`] if it cannot be created or opened.
    pub fn open(dir: &Path) -> Result<LocalBackend, crate::Error> {
        let err = |source| crate::Error::BackendSetup { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        let root = sys::open_dir_path(dir).map_err(err)?;
        let append_locks = (0..APPEND_STRIPES).map(|_| Mutex::new(())).collect();
        let inner = Inner { dir: dir.to_path_buf(), root, append_locks, volume_create: Mutex::new(()) };
        Ok(LocalBackend { inner: Arc::new(inner), volumes: HashMap::new() })
    }

    /// The directory holding the tenants' trees.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The tenant's root directory; `None` if it does not exist and `create` is false.
    fn tenant_dir(&self, tenant: &str, create: bool) -> Result<Option<OwnedFd>, Status> {
        self.top_dir(tenant, create).map(|(d, _)| d)
    }

    /// The directory `name` right under `DIR`, created when missing and `create` is
    /// set; `None` if it does not exist. The flag tells whether this call created it.
    fn top_dir(&self, name: &str, create: bool) -> Result<(Option<OwnedFd>, bool), Status> {
        let root = self.inner.root.as_fd();
        match sys::open_dir_at(root, name) {
            Ok(fd) => return Ok((Some(fd), false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, false)),
            Err(e) => return Err(classify(root, name, e)),
        }
        let created = match sys::mkdir_at(root, name, DIR_MODE) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Status::from_io_error(&e)),
        };
        let fd = sys::open_dir_at(root, name).map_err(|e| classify(root, name, e))?;
        Ok((Some(fd), created))
    }

    /// Walks `parents` under the tenant's root, creating missing directories when
    /// `create` is set; returns the innermost directory.
    fn parent_dir(&self, tenant: &str, parents: &[&str], create: bool) -> Result<OwnedFd, Status> {
        let mut cur = self.tenant_dir(tenant, create)?.ok_or(Status::NotFound)?;
        for c in parents {
            let next = match sys::open_dir_at(cur.as_fd(), c) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match sys::mkdir_at(cur.as_fd(), c, DIR_MODE) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(classify(cur.as_fd(), c, e)),
                    }
                    sys::open_dir_at(cur.as_fd(), c).map_err(|e| classify(cur.as_fd(), c, e))?
                }
                Err(e) => return Err(classify(cur.as_fd(), c, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Opens the regular file at `path` with `oflags` (`O_NOFOLLOW`, `O_NONBLOCK` and
    /// `O_CLOEXEC` added). Directories give [`Status::IsDir`]; anything else that is
    /// not a regular file gives [`Status::Permission`].
    fn open_file(&self, tenant: &str, path: &str, oflags: libc::c_int) -> Result<File, Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return Err(Status::IsDir);
        }
        let (parents, name) = split(&p);
        let create = oflags & libc::O_CREAT != 0;
        let parent = self.parent_dir(tenant, &parents, create)?;
        let fd = sys::open_at(parent.as_fd(), name, oflags | libc::O_NONBLOCK, FILE_MODE)
            .map_err(|e| classify(parent.as_fd(), name, e))?;
        match sys::stat_fd(fd.as_fd()).map_err(|e| Status::from_io_error(&e))?.kind {
            EntryType::File => Ok(File::from(fd)),
            EntryType::Dir => Err(Status::IsDir),
            _ => Err(Status::Permission),
        }
    }

    /// The volumes directory, created when `create` is set; `None` if it does not
    /// exist.
    fn volumes_dir(&self, create: bool) -> Result<Option<OwnedFd>, Status> {
        let (fd, created) = self.top_dir(VOLUMES_DIR, create)?;
        if created {
            // The new directory entry must survive a crash too.
            let root = self.inner.root.try_clone().map_err(|e| Status::from_io_error(&e))?;
            File::from(root).sync_all().map_err(|e| Status::from_io_error(&e))?;
        }
        Ok(fd)
    }

    /// Opens an existing volume file read-write; gives its descriptor and size.
    fn open_volume_file(dir: BorrowedFd<'_>, volume: &str) -> Result<OpenVolume, Status> {
        let fd = sys::open_at(dir, volume, libc::O_RDWR | libc::O_NONBLOCK, 0).map_err(|e| classify(dir, volume, e))?;
        let st = sys::stat_fd(fd.as_fd()).map_err(|e| Status::from_io_error(&e))?;
        if st.kind != EntryType::File {
            return Err(Status::Permission);
        }
        Ok(OpenVolume { file: File::from(fd), size: st.size })
    }

    /// The channel's open file for an existing volume.
    fn volume(&mut self, volume: &str) -> Result<&OpenVolume, Status> {
        check_volume_name(volume)?;
        if !self.volumes.contains_key(volume) {
            let dir = self.volumes_dir(false)?.ok_or(Status::NotFound)?;
            let v = Self::open_volume_file(dir.as_fd(), volume)?;
            if v.size == 0 {
                // Created but never sized (a crash inside volume_open): not a volume yet.
                return Err(Status::NotFound);
            }
            if self.volumes.len() >= MAX_OPEN_VOLUMES {
                self.volumes.clear();
            }
            self.volumes.insert(volume.to_string(), v);
        }
        Ok(&self.volumes[volume])
    }

    fn append_lock(&self, tenant: &str, path: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        (tenant, path).hash(&mut h);
        &self.inner.append_locks[(h.finish() % APPEND_STRIPES as u64) as usize]
    }
}

impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn channel(&self) -> Box<dyn Backend> {
        Box::new(LocalBackend { inner: self.inner.clone(), volumes: HashMap::new() })
    }

    fn open(&mut self, tenant: &str, path: &str, f: u32) -> Result<u64, Status> {
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
        let file = self.open_file(tenant, path, o)?;
        Ok(std::os::unix::fs::MetadataExt::ino(&file.metadata().map_err(|e| Status::from_io_error(&e))?))
    }

    fn read(&mut self, tenant: &str, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Status> {
        check_offset(offset)?;
        let file = self.open_file(tenant, path, libc::O_RDONLY)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Status::from_io_error(&e)),
            }
        }
        Ok(done)
    }

    fn write(&mut self, tenant: &str, path: &str, offset: u64, data: &[u8], sync: bool) -> Result<usize, Status> {
        check_offset(offset)?;
        let file = self.open_file(tenant, path, libc::O_WRONLY)?;
        file.write_all_at(data, offset).map_err(|e| Status::from_io_error(&e))?;
        if sync {
            file.sync_data().map_err(|e| Status::from_io_error(&e))?;
        }
        Ok(data.len())
    }

    fn append(&mut self, tenant: &str, path: &str, data: &[u8], sync: bool) -> Result<u64, Status> {
        let mut file = self.open_file(tenant, path, libc::O_WRONLY | libc::O_APPEND)?;
        let p = resolve(tenant, path)?;
        let landed = {
            let _g = self.append_lock(tenant, &p).lock().unwrap_or_else(|e| e.into_inner());
            if data.is_empty() {
                file.metadata().map_err(|e| Status::from_io_error(&e))?.len()
            } else {
                file.write_all(data).map_err(|e| Status::from_io_error(&e))?;
                // With O_APPEND the descriptor's position ends right after our data.
                let end = file.stream_position().map_err(|e| Status::from_io_error(&e))?;
                end - data.len() as u64
            }
        };
        if sync {
            file.sync_data().map_err(|e| Status::from_io_error(&e))?;
        }
        Ok(landed)
    }

    fn truncate(&mut self, tenant: &str, path: &str, size: u64) -> Result<u64, Status> {
        check_offset(size)?;
        let file = self.open_file(tenant, path, libc::O_WRONLY)?;
        file.set_len(size).map_err(|e| Status::from_io_error(&e))?;
        Ok(size)
    }

    fn stat(&mut self, tenant: &str, path: &str) -> Result<Stat, Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return match self.tenant_dir(tenant, false)? {
                Some(fd) => {
                    let s = sys::stat_fd(fd.as_fd()).map_err(|e| Status::from_io_error(&e))?;
                    Ok(Stat { kind: Kind::Dir, mode: s.mode, size: 0, mtime_ns: s.mtime_ns })
                }
                None => Ok(Stat { kind: Kind::Dir, mode: DIR_MODE, size: 0, mtime_ns: 0 }),
            };
        }
        let (parents, name) = split(&p);
        let parent = self.parent_dir(tenant, &parents, false)?;
        let s = sys::stat_at(parent.as_fd(), name).map_err(|e| classify(parent.as_fd(), name, e))?;
        match s.kind {
            EntryType::File => Ok(Stat { kind: Kind::File, mode: s.mode, size: s.size, mtime_ns: s.mtime_ns }),
            EntryType::Dir => Ok(Stat { kind: Kind::Dir, mode: s.mode, size: 0, mtime_ns: s.mtime_ns }),
            EntryType::Symlink | EntryType::Other => Err(Status::Permission),
        }
    }

    fn list(&mut self, tenant: &str, path: &str, start: u64, max_bytes: usize) -> Result<Listing, Status> {
        let p = resolve(tenant, path)?;
        let dir = if p.is_empty() {
            match self.tenant_dir(tenant, false)? {
                Some(fd) => fd,
                None => return Ok(Listing::default()),
            }
        } else {
            let (parents, name) = split(&p);
            let parent = self.parent_dir(tenant, &parents, false)?;
            sys::open_dir_at(parent.as_fd(), name).map_err(|e| classify(parent.as_fd(), name, e))?
        };
        let reader = dir.try_clone().map_err(|e| Status::from_io_error(&e))?;
        let raw = sys::read_dir(reader).map_err(|e| Status::from_io_error(&e))?;
        let mut names: Vec<String> = Vec::with_capacity(raw.len());
        for (name, t) in raw {
            let Ok(name) = String::from_utf8(name) else { continue };
            let kind = match t {
                Some(k) => k,
                None => match sys::stat_at(dir.as_fd(), &name) {
                    Ok(s) => s.kind,
                    Err(_) => continue,
                },
            };
            if matches!(kind, EntryType::File | EntryType::Dir) {
                names.push(name);
            }
        }
        names.sort_unstable();
        let mut out = Listing::default();
        let mut used = 0usize;
        let skip = usize::try_from(start).unwrap_or(usize::MAX);
        for name in names.into_iter().skip(skip) {
            let s = match sys::stat_at(dir.as_fd(), &name) {
                Ok(s) => s,
                // Removed since readdir: leave it out.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Status::from_io_error(&e)),
            };
            let entry = match s.kind {
                EntryType::File => DirEntry { kind: Kind::File, size: s.size, name },
                EntryType::Dir => DirEntry { kind: Kind::Dir, size: 0, name },
                _ => continue,
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
        let (parents, name) = split(&p);
        let parent = self.parent_dir(tenant, &parents, false)?;
        let s = sys::stat_at(parent.as_fd(), name).map_err(|e| classify(parent.as_fd(), name, e))?;
        let is_dir = match s.kind {
            EntryType::File => false,
            EntryType::Dir => true,
            EntryType::Symlink | EntryType::Other => return Err(Status::Permission),
        };
        sys::unlink_at(parent.as_fd(), name, is_dir).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => Status::NotEmpty,
            _ => Status::from_io_error(&e),
        })
    }

    fn fsync(&mut self, tenant: &str, path: &str) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        let sync = |fd: OwnedFd| File::from(fd).sync_all().map_err(|e| Status::from_io_error(&e));
        if p.is_empty() {
            return match self.tenant_dir(tenant, false)? {
                Some(fd) => sync(fd),
                None => Ok(()),
            };
        }
        let (parents, name) = split(&p);
        let parent = self.parent_dir(tenant, &parents, false)?;
        let fd = sys::open_at(parent.as_fd(), name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(|e| classify(parent.as_fd(), name, e))?;
        match sys::stat_fd(fd.as_fd()).map_err(|e| Status::from_io_error(&e))?.kind {
            EntryType::File | EntryType::Dir => {}
            _ => return Err(Status::Permission),
        }
        sync(fd)?;
        // Also the directory entry, so that a newly created file survives a crash.
        sync(parent)
    }

    fn mkdir(&mut self, tenant: &str, path: &str, mode: Option<u32>, parents: bool) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        // The namespace root exists as soon as anyone asks.
        self.tenant_dir(tenant, true)?;
        if let Some(r) = mkdir_root(&p, parents) {
            return r;
        }
        let (dirs, name) = split(&p);
        let parent = self.parent_dir(tenant, &dirs, parents)?;
        match sys::mkdir_at(parent.as_fd(), name, DIR_MODE) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = sys::stat_at(parent.as_fd(), name).map_err(|e| classify(parent.as_fd(), name, e))?;
                return if parents && existing.kind == EntryType::Dir { Ok(()) } else { Err(Status::Exists) };
            }
            Err(e) => return Err(classify(parent.as_fd(), name, e)),
        }
        if let Some(m) = mode {
            sys::chmod_at(parent.as_fd(), name, m & MODE_MASK).map_err(|e| Status::from_io_error(&e))?;
        }
        Ok(())
    }

    fn rename(&mut self, tenant: &str, from: &str, to: &str, replace: bool, sync: bool) -> Result<(), Status> {
        let (from, to) = resolve_rename(tenant, from, to)?;
        let ((from_dirs, from_name), (to_dirs, to_name)) = (split(&from), split(&to));
        let from_parent = self.parent_dir(tenant, &from_dirs, false)?;
        let kind = sys::stat_at(from_parent.as_fd(), from_name).map_err(|e| classify(from_parent.as_fd(), from_name, e))?.kind;
        if !matches!(kind, EntryType::File | EntryType::Dir) {
            return Err(Status::Permission);
        }
        let to_parent = self.parent_dir(tenant, &to_dirs, false)?;
        match sys::stat_at(to_parent.as_fd(), to_name) {
            Ok(s) if !matches!(s.kind, EntryType::File | EntryType::Dir) => return Err(Status::Permission),
            _ => {}
        }
        sys::rename_at(from_parent.as_fd(), from_name, to_parent.as_fd(), to_name, replace).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EEXIST) if !replace => Status::Exists,
                Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => Status::NotEmpty,
                _ => Status::from_io_error(&e),
            }
        })?;
        if sync {
            // Both directory entries: the new name exists and the old one is gone.
            let sync_dir = |fd: &OwnedFd| {
                let d = fd.try_clone().map_err(|e| Status::from_io_error(&e))?;
                File::from(d).sync_all().map_err(|e| Status::from_io_error(&e))
            };
            sync_dir(&to_parent)?;
            if from_dirs != to_dirs {
                sync_dir(&from_parent)?;
            }
        }
        Ok(())
    }

    fn set_attr(&mut self, tenant: &str, path: &str, mode: Option<u32>, mtime_ns: Option<u64>) -> Result<(), Status> {
        let p = resolve(tenant, path)?;
        if p.is_empty() {
            return Err(Status::Permission);
        }
        let (dirs, name) = split(&p);
        let parent = self.parent_dir(tenant, &dirs, false)?;
        let s = sys::stat_at(parent.as_fd(), name).map_err(|e| classify(parent.as_fd(), name, e))?;
        if !matches!(s.kind, EntryType::File | EntryType::Dir) {
            return Err(Status::Permission);
        }
        if let Some(m) = mode {
            sys::chmod_at(parent.as_fd(), name, m & MODE_MASK).map_err(|e| Status::from_io_error(&e))?;
        }
        if let Some(t) = mtime_ns {
            sys::set_mtime_at(parent.as_fd(), name, t).map_err(|e| Status::from_io_error(&e))?;
        }
        Ok(())
    }

    fn statfs(&mut self, tenant: &str, path: &str) -> Result<StatFs, Status> {
        resolve(tenant, path)?;
        // One file system holds every tenant's tree: its figures are the answer.
        sys::statvfs_fd(self.inner.root.as_fd()).map_err(|e| Status::from_io_error(&e))
    }

    fn volume_open(&mut self, volume: &str, size: u64, block_size: u32, create: bool) -> Result<u64, Status> {
        check_volume_geometry(volume, size, block_size)?;
        let inner = self.inner.clone();
        let _g = inner.volume_create.lock().unwrap_or_else(|e| e.into_inner());
        let dir = match self.volumes_dir(create)? {
            Some(d) => d,
            None => return Err(Status::NotFound),
        };
        let mut v = match Self::open_volume_file(dir.as_fd(), volume) {
            Ok(v) => v,
            Err(Status::NotFound) if create => {
                let fd = sys::open_at(dir.as_fd(), volume, libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK, FILE_MODE)
                    .map_err(|e| classify(dir.as_fd(), volume, e))?;
                OpenVolume { file: File::from(fd), size: 0 }
            }
            Err(s) => return Err(s),
        };
        if v.size == 0 {
            // New, or created by a volume_open that did not finish: size it now.
            if !create {
                return Err(Status::NotFound);
            }
            v.file.set_len(size).map_err(|e| Status::from_io_error(&e))?;
            v.file.sync_all().map_err(|e| Status::from_io_error(&e))?;
            File::from(dir).sync_all().map_err(|e| Status::from_io_error(&e))?;
            v.size = size;
        }
        if v.size != size {
            return Err(Status::Invalid);
        }
        self.volumes.remove(volume);
        if self.volumes.len() >= MAX_OPEN_VOLUMES {
            self.volumes.clear();
        }
        self.volumes.insert(volume.to_string(), v);
        Ok(size)
    }

    fn volume_read(&mut self, volume: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Status> {
        let v = self.volume(volume)?;
        check_volume_range(offset, buf.len(), v.size)?;
        v.file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
            // Only if the file was cut behind the backend's back.
            io::ErrorKind::UnexpectedEof => Status::Io,
            _ => Status::from_io_error(&e),
        })?;
        Ok(buf.len())
    }

    fn volume_write(&mut self, volume: &str, offset: u64, data: &[u8], fua: bool) -> Result<usize, Status> {
        let v = self.volume(volume)?;
        check_volume_range(offset, data.len(), v.size)?;
        v.file.write_all_at(data, offset).map_err(|e| Status::from_io_error(&e))?;
        if fua {
            v.file.sync_data().map_err(|e| Status::from_io_error(&e))?;
        }
        Ok(data.len())
    }

    fn volume_flush(&mut self, volume: &str) -> Result<(), Status> {
        let v = self.volume(volume)?;
        v.file.sync_data().map_err(|e| Status::from_io_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, Box<dyn Backend>) {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(&d.path().join("data")).unwrap();
        (d, Box::new(b))
    }

    crate::backend_conformance_tests!({
        let (d, b) = backend();
        (d, b)
    });

    /// Symbolic links planted inside a tenant's tree (by someone with shell access)
    /// never lead out of it, neither as the last component nor in the middle.
    #[test]
    fn symlinks_never_lead_out() {
        let (d, mut b) = backend();
        let data = d.path().join("data");
        b.open("victim", "secret", flags::CREATE | flags::WRITE).unwrap();
        b.write("victim", "secret", 0, b"victim data", false).unwrap();
        std::fs::write(d.path().join("outside"), b"outside data").unwrap();
        b.open("evil", "x", flags::CREATE | flags::WRITE).unwrap();
        let evil = data.join("evil");
        std::os::unix::fs::symlink(data.join("victim/secret"), evil.join("to_secret")).unwrap();
        std::os::unix::fs::symlink(data.join("victim"), evil.join("to_victim")).unwrap();
        std::os::unix::fs::symlink(d.path(), evil.join("to_top")).unwrap();
        std::os::unix::fs::symlink("../victim", evil.join("rel")).unwrap();
        let mut buf = [0u8; 64];
        for p in ["to_secret", "to_victim/secret", "to_top/outside", "rel/secret"] {
            assert_eq!(b.read("evil", p, 0, &mut buf), Err(Status::Permission), "read {p}");
            assert_eq!(b.open("evil", p, 0), Err(Status::Permission), "open {p}");
            assert_eq!(b.open("evil", p, flags::CREATE | flags::TRUNCATE | flags::WRITE), Err(Status::Permission));
            assert_eq!(b.write("evil", p, 0, b"pwned", false), Err(Status::Permission), "write {p}");
            assert_eq!(b.append("evil", p, b"pwned", false), Err(Status::Permission), "append {p}");
            assert_eq!(b.truncate("evil", p, 0), Err(Status::Permission), "truncate {p}");
            assert_eq!(b.fsync("evil", p), Err(Status::Permission), "fsync {p}");
            assert!(b.stat("evil", p).is_err(), "stat {p}");
            assert!(b.list("evil", p, 0, 1 << 20).is_err(), "list {p}");
            assert!(b.remove("evil", p).is_err(), "remove {p}");
        }
        assert_eq!(b.open("evil", "to_victim/new", flags::CREATE), Err(Status::Permission));
        assert_eq!(b.list("evil", "to_victim", 0, 1 << 20), Err(Status::Permission));
        // Links are left out of listings.
        let names: Vec<String> = b.list("evil", "", 0, 1 << 20).unwrap().entries.into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["x"]);
        // Nothing outside moved.
        assert_eq!(std::fs::read(data.join("victim/secret")).unwrap(), b"victim data");
        assert_eq!(std::fs::read(d.path().join("outside")).unwrap(), b"outside data");
        assert!(!data.join("victim/new").exists());
        // A tenant directory that is itself a link is refused too.
        std::os::unix::fs::symlink(data.join("victim"), data.join("alias")).unwrap();
        assert_eq!(b.read("alias", "secret", 0, &mut buf), Err(Status::Permission));
        assert_eq!(b.list("alias", "", 0, 1 << 20), Err(Status::Permission));
    }

    /// A FIFO inside the tree is refused without blocking.
    #[test]
    fn fifo_is_refused_without_blocking() {
        let (d, mut b) = backend();
        b.open("t", "x", flags::CREATE).unwrap();
        let fifo = d.path().join("data/t/fifo");
        let st = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(st.success());
        let mut buf = [0u8; 4];
        assert_eq!(b.read("t", "fifo", 0, &mut buf), Err(Status::Permission));
        assert_eq!(b.stat("t", "fifo"), Err(Status::Permission));
        let names: Vec<String> = b.list("t", "", 0, 1 << 20).unwrap().entries.into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["x"]);
    }

    /// A volume is the file DIR/@volumes/<name>, which no tenant path reaches.
    #[test]
    fn volumes_land_under_at_volumes() {
        let (d, mut b) = backend();
        assert_eq!(b.volume_open("v1", 1 << 20, 4096, true), Ok(1 << 20));
        b.volume_write("v1", 4096, b"on disk", false).unwrap();
        b.volume_flush("v1").unwrap();
        let f = std::fs::read(d.path().join("data/@volumes/v1")).unwrap();
        assert_eq!(f.len(), 1 << 20);
        assert_eq!(&f[4096..4103], b"on disk");
        assert_eq!(b.stat("@volumes", "v1"), Err(Status::Permission), "not a tenant");
        // A file cut to 0 bytes behind our back (a crash inside volume_open) is
        // sized again by the next volume_open with create.
        std::fs::write(d.path().join("data/@volumes/v2"), b"").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.volume_read("v2", 0, &mut buf), Err(Status::NotFound));
        assert_eq!(b.volume_open("v2", 8192, 512, false), Err(Status::NotFound));
        assert_eq!(b.volume_open("v2", 8192, 512, true), Ok(8192));
        // A symbolic link in place of a volume is refused.
        std::os::unix::fs::symlink(d.path().join("data/@volumes/v1"), d.path().join("data/@volumes/v3")).unwrap();
        assert_eq!(b.volume_open("v3", 1 << 20, 4096, true), Err(Status::Permission));
        assert_eq!(b.volume_read("v3", 0, &mut buf), Err(Status::Permission));
    }

    #[test]
    fn files_land_under_dir_tenant_path() {
        let (d, mut b) = backend();
        b.open("acme", "a/b/c.txt", flags::CREATE | flags::WRITE).unwrap();
        b.write("acme", "/a//b/./c.txt", 0, b"hi", false).unwrap();
        assert_eq!(std::fs::read(d.path().join("data/acme/a/b/c.txt")).unwrap(), b"hi");
    }
}
