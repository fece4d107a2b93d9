//! A FUSE mount of a PoV session (cargo feature `fuse`): unmodified programs (`tar`,
//! `sqlite3`, `git`, editors) use PoV files through the kernel's VFS.
//!
//! Polytropon (`../shared/seeds/001_*`, "library and FUSE paths") offers applications
//! both the library and a FUSE file system; this is the second path. The kernel side
//! is the FUSE protocol (`fuse(4)`), spoken by the [`fuser`] crate in its pure-Rust
//! mode (no libfuse; as root the mount is a `mount(2)` of `/dev/fuse`, otherwise
//! `fusermount` does it). Every FUSE request becomes one or a few session requests:
//!
//! | FUSE | PoV requests |
//! |---|---|
//! | `lookup`, `getattr` | Stat |
//! | `opendir` (+ `readdir`) | List (as many pages as needed), served from a snapshot |
//! | `open`, `create` | Open (`create`: with CREATE+EXCL, then SetAttr of the mode when it made the file) |
//! | `read`, `write` | Read, Write (Append for files opened `O_APPEND`), up to 1 MiB each |
//! | `setattr` | SetAttr (mode, mtime), Truncate (size) |
//! | `mkdir`, `unlink`, `rmdir`, `rename` | Mkdir, Remove, Rename (NOREPLACE as EXCL) |
//! | `fsync`, `statfs` | Sync, StatFs |
//! | `release` | Close |
//!
//! Shapes and limits:
//! * Inode numbers are this mount's own: 1 is the mount root (the PoV directory
//!   [`MountOptions::root`]); others are handed out at `lookup` and dropped at `forget`.
//!   They are not stable across mounts.
//! * Every file is owned by the user who mounted (`getuid`/`getgid`); `chown` to anyone
//!   else is `EPERM`. Permission bits are PoV's (`0o777` at most): setting set-id or
//!   sticky bits is `EPERM`. The kernel checks the bits (`default_permissions`). Only the
//!   mounting user reaches the mount unless [`MountOptions::allow_other`].
//! * No symbolic or hard links, device nodes, extended attributes or byte-range locks
//!   in PoV: those calls fail with `ENOSYS`/`EPERM`; POSIX locks then stay local to this
//!   host (the kernel keeps them), which is enough for one writer host such as SQLite's.
//! * Attributes and names are cached by the kernel for [`MountOptions::cache_timeout`]
//!   (default 1 s): changes made through other sessions show up after at most that.
//!   Reads and writes are not cached beyond the kernel's page cache of an open file.
//! * An open file keeps its PoV handle through renames and unlinks of its name (as on a
//!   local file system); a failover of the session reopens it by the name it had when
//!   opened (`File` is bound to its path).
//! * Requests are served one at a time by the thread that called [`serve`]: the mount
//!   is correct for many processes but does not run their requests in parallel.
//!
//! Errors become errnos by the PoV status ([`Status::errno`](pov_proto::Status::errno));
//! a lost session is `EIO`.

use crate::engine::join;
use crate::error::errno_of;
use crate::{File, Kind, OpenOptions, Session, Stat};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use pov_proto::MAX_IO_BYTES;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Inode number of the mount root.
const ROOT_INO: u64 = 1;
/// `st_blksize` of every file, bytes: what `cp`, stdio and friends size their buffers by
/// (a PoV request carries up to 1 MiB; 128 KiB is the kernel's default FUSE IO size).
const BLOCK_SIZE: u32 = 128 * 1024;
/// `renameat2` flags (`linux/fs.h`).
const RENAME_NOREPLACE: u32 = 1;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The PoV directory shown at the mount point (`/`: the tenant's root; `pov:` is
    /// accepted in front).
    pub root: String,
    /// Let other users reach the mount (FUSE `allow_other`; needs `user_allow_other` in
    /// `/etc/fuse.conf` unless root). The kernel still checks permission bits.
    pub allow_other: bool,
    /// Mount read-only (the kernel refuses writes with `EROFS`); implied by a read-only
    /// session.
    pub read_only: bool,
    /// How long the kernel may cache attributes and directory entries.
    pub cache_timeout: Duration,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions { root: "/".into(), allow_other: false, read_only: false, cache_timeout: Duration::from_secs(1) }
    }
}

/// Unmounts a mount that [`serve`] is serving; `serve` then returns. `Send`: give it to
/// a signal handler thread.
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    /// Unmounts (`umount2` as root, else `fusermount -u`).
    ///
    /// Errors: the mount is busy (a process has its working directory or a file open
    /// there: `EBUSY`) or already gone.
    pub fn unmount(&mut self) -> io::Result<()> {
        self.0.unmount()
    }
}

/// Mounts `session`'s directory `opts.root` at `mountpoint` and serves it in this
/// thread until it is unmounted (by [`Unmounter::unmount`], `fusermount -u`, `umount`).
/// `ready` runs once the mount is in place, with the means to unmount it.
///
/// Errors: `opts.root` is not a directory of the session (`InvalidInput`,
/// `NotFound`, ...), the mount fails (no `/dev/fuse`, no permission, `mountpoint` not a
/// directory), or reading `/dev/fuse` fails.
pub fn serve(session: &Session, mountpoint: &Path, opts: &MountOptions, ready: impl FnOnce(Unmounter)) -> io::Result<()> {
    let root = opts.root.strip_prefix("pov:").unwrap_or(&opts.root);
    // Absolute, as every path the session is given (`normalize` drops the leading `/`).
    let root = pov_proto::path::normalize(root.as_bytes())
        .map(|r| format!("/{r}"))
        .map_err(|st| io::Error::new(io::ErrorKind::InvalidInput, format!("mount root {root:?}: {st}")))?;
    let st = session.stat(&root)?;
    if st.kind != Kind::Dir {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("mount root pov:{root} is not a directory")));
    }
    let read_only = opts.read_only || session.info().read_only;
    let mut mount_opts = vec![
        MountOption::FSName(format!("pov:{root}")),
        MountOption::Subtype("pov".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
    ];
    mount_opts.push(if read_only { MountOption::RO } else { MountOption::RW });
    if opts.allow_other {
        mount_opts.push(MountOption::AllowOther);
    }
    let fs = PovFs::new(session, root, opts.cache_timeout);
    let mut fuse = fuser::Session::new(fs, mountpoint, &mount_opts)?;
    ready(Unmounter(fuse.unmount_callable()));
    fuse.run()
}

/// One inode of the mount: its current PoV path (`None` once unlinked or replaced:
/// only its open handles still reach the file) and the kernel's lookup count.
struct Node {
    path: Option<String>,
    lookups: u64,
}

/// The inode table: inode ↔ path.
struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Nodes {
    fn new(root: String) -> Nodes {
        let mut n = Nodes { by_ino: HashMap::new(), by_path: HashMap::new(), next: ROOT_INO + 1 };
        n.by_path.insert(root.clone(), ROOT_INO);
        n.by_ino.insert(ROOT_INO, Node { path: Some(root), lookups: 1 });
        n
    }

    /// The path of `ino`: `ENOENT` if it is unknown or no longer has a name.
    fn path(&self, ino: u64) -> Result<&str, i32> {
        self.by_ino.get(&ino).and_then(|n| n.path.as_deref()).ok_or(libc::ENOENT)
    }

    /// The inode of `path`, one more kernel lookup of it counted.
    fn remember(&mut self, path: String) -> u64 {
        if let Some(&ino) = self.by_path.get(&path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(path.clone(), ino);
        self.by_ino.insert(ino, Node { path: Some(path), lookups: 1 });
        ino
    }

    /// The kernel dropped `n` lookups of `ino`.
    fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(node) = self.by_ino.get_mut(&ino) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            if let Some(p) = self.by_ino.remove(&ino).and_then(|n| n.path) {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    /// The name `path` is gone (unlinked, or replaced by a rename).
    fn detach(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.path = None;
            }
        }
    }

    /// `from` (and everything below it) is now called `to`.
    fn renamed(&mut self, from: &str, to: &str) {
        self.detach(to);
        let below = format!("{from}/");
        let moved: Vec<(String, u64)> =
            self.by_path.iter().filter(|(p, _)| *p == from || p.starts_with(&below)).map(|(p, &i)| (p.clone(), i)).collect();
        for (p, ino) in moved {
            self.by_path.remove(&p);
            let np = format!("{to}{}", &p[from.len()..]);
            self.by_path.insert(np.clone(), ino);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.path = Some(np);
            }
        }
    }
}

/// An open file: its PoV handle, and whether writes append (`O_APPEND`).
struct Handle {
    file: File,
    append: bool,
}

/// One directory entry of an `opendir` snapshot.
struct Dirent {
    ino: u64,
    kind: FileType,
    name: String,
}

/// The file system: a session, the inode table, open files and directory snapshots.
struct PovFs<'a> {
    session: &'a Session,
    root: String,
    ttl: Duration,
    uid: u32,
    gid: u32,
    nodes: Nodes,
    files: HashMap<u64, Handle>,
    dirs: HashMap<u64, Vec<Dirent>>,
    next_fh: u64,
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

/// A stand-in `d_ino` for a directory entry the kernel has not looked up yet (FNV-1a
/// of its path, never 0 or the root's): `readdir` callers see it, `stat` then reports
/// the number `lookup` hands out.
fn provisional_ino(path: &str) -> u64 {
    let h = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    h | (1 << 63)
}

impl<'a> PovFs<'a> {
    fn new(session: &'a Session, root: String, ttl: Duration) -> PovFs<'a> {
        let (uid, gid) = crate::mem::process_ids();
        PovFs {
            session,
            nodes: Nodes::new(root.clone()),
            root,
            ttl,
            uid,
            gid,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
        }
    }

    fn attr(&self, ino: u64, st: &Stat) -> FileAttr {
        let t = UNIX_EPOCH + Duration::from_nanos(st.mtime_ns);
        FileAttr {
            ino,
            size: st.size,
            blocks: st.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(st.kind),
            perm: (st.mode & 0o777) as u16,
            nlink: if st.kind == Kind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The PoV path of `name` in directory `parent`.
    fn child(&self, parent: u64, name: &OsStr) -> Result<String, i32> {
        let dir = self.nodes.path(parent)?;
        let name = name.to_str().ok_or(libc::EINVAL)?;
        if name.is_empty() || name.contains('/') {
            return Err(libc::EINVAL);
        }
        Ok(join(dir, name))
    }

    fn fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    /// Stats `path`, remembers it and answers an entry.
    fn entry(&mut self, path: String) -> Result<(u64, FileAttr), i32> {
        let st = self.session.stat(&path).map_err(|e| errno_of(&e))?;
        let ino = self.nodes.remember(path);
        Ok((ino, self.attr(ino, &st)))
    }

    /// Attributes of `ino` (by its open handle `fh` if given, else by its path).
    fn stat(&self, ino: u64, fh: Option<u64>) -> Result<Stat, i32> {
        if let Some(h) = fh.and_then(|fh| self.files.get(&fh)) {
            return h.file.stat().map_err(|e| errno_of(&e));
        }
        let path = self.nodes.path(ino)?;
        self.session.stat(path).map_err(|e| errno_of(&e))
    }

    #[allow(clippy::too_many_arguments)]
    fn set_attr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Result<FileAttr, i32> {
        if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
            return Err(libc::EPERM);
        }
        if mode.is_some_and(|m| m & 0o7000 != 0) {
            return Err(libc::EPERM);
        }
        if let Some(size) = size {
            match fh.and_then(|fh| self.files.get(&fh)) {
                Some(h) => h.file.set_len(size).map_err(|e| errno_of(&e))?,
                None => {
                    let path = self.nodes.path(ino)?;
                    let f = self.session.open_file(path, OpenOptions::new().write(true)).map_err(|e| errno_of(&e))?;
                    f.set_len(size).map_err(|e| errno_of(&e))?;
                    f.close().map_err(|e| errno_of(&e))?;
                }
            }
        }
        let mtime_ns = mtime.map(|t| {
            let t = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        if mode.is_some() || mtime_ns.is_some() {
            let path = self.nodes.path(ino)?;
            self.session.set_attr(path, mode.map(|m| m & 0o777), mtime_ns).map_err(|e| errno_of(&e))?;
        }
        let st = self.stat(ino, fh)?;
        Ok(self.attr(ino, &st))
    }

    fn open_dir(&mut self, ino: u64) -> Result<u64, i32> {
        let path = self.nodes.path(ino)?.to_string();
        let entries = self.session.list(&path).map_err(|e| errno_of(&e))?;
        let parent = match path.rfind('/') {
            _ if ino == ROOT_INO => ROOT_INO,
            Some(0) => self.nodes.by_path.get("/").copied().unwrap_or(ROOT_INO),
            Some(i) => self.nodes.by_path.get(&path[..i]).copied().unwrap_or(ROOT_INO),
            None => ROOT_INO,
        };
        let mut list = vec![
            Dirent { ino, kind: FileType::Directory, name: ".".into() },
            Dirent { ino: parent, kind: FileType::Directory, name: "..".into() },
        ];
        for e in entries {
            let p = join(&path, &e.name);
            let ino = self.nodes.by_path.get(&p).copied().unwrap_or_else(|| provisional_ino(&p));
            list.push(Dirent { ino, kind: file_type(e.kind), name: e.name });
        }
        let fh = self.fh();
        self.dirs.insert(fh, list);
        Ok(fh)
    }

    fn open(&mut self, ino: u64, flags: i32) -> Result<u64, i32> {
        let path = self.nodes.path(ino)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let mut o = OpenOptions::new();
        o.write(write).truncate(write && flags & libc::O_TRUNC != 0);
        let file = self.session.open_file(path, &o).map_err(|e| errno_of(&e))?;
        let fh = self.fh();
        self.files.insert(fh, Handle { file, append: flags & libc::O_APPEND != 0 });
        Ok(fh)
    }

    fn create(&mut self, parent: u64, name: &OsStr, mode: u32, flags: i32) -> Result<(FileAttr, u64), i32> {
        let path = self.child(parent, name)?;
        // Made here (EXCL) or already there: only a file this call made gets `mode`.
        let (file, made) = match self.session.open_file(&path, OpenOptions::new().write(true).create_new(true)) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                let mut o = OpenOptions::new();
                o.write(true).truncate(flags & libc::O_TRUNC != 0);
                (self.session.open_file(&path, &o).map_err(|e| errno_of(&e))?, false)
            }
            Err(e) => return Err(errno_of(&e)),
        };
        if made {
            self.session.set_attr(&path, Some(mode & 0o777), None).map_err(|e| errno_of(&e))?;
        }
        let (_, attr) = self.entry(path)?;
        let fh = self.fh();
        self.files.insert(fh, Handle { file, append: flags & libc::O_APPEND != 0 });
        Ok((attr, fh))
    }

    fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Result<(), i32> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let r = match flags {
            0 => self.session.rename(&from, &to),
            RENAME_NOREPLACE => self.session.rename_noreplace(&from, &to),
            // RENAME_EXCHANGE, RENAME_WHITEOUT: not in PoV.
            _ => return Err(libc::EINVAL),
        };
        r.map_err(|e| errno_of(&e))?;
        self.nodes.renamed(&from, &to);
        Ok(())
    }
}

impl Filesystem for PovFs<'_> {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Up to one PoV request per FUSE read or write; the kernel may offer less.
        let _ = config.set_max_write(MAX_IO_BYTES);
        let _ = config.set_max_readahead(MAX_IO_BYTES);
        log::info!("FUSE mount of pov:{} ready", self.root);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.entry(p)) {
            Ok((_, attr)) => reply.entry(&self.ttl, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.nodes.forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        match self.stat(ino, fh) {
            Ok(st) => reply.attr(&self.ttl, &self.attr(ino, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.set_attr(ino, mode, uid, gid, size, mtime, fh) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.child(parent, name).and_then(|p| {
            self.session.create_dir(&p, Some(mode & !umask & 0o777)).map_err(|e| errno_of(&e))?;
            self.entry(p)
        });
        match r {
            Ok((_, attr)) => reply.entry(&self.ttl, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match PovFs::rename(self, parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match PovFs::open(self, ino, flags) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(h) = self.files.get(&fh) else { return reply.error(libc::EBADF) };
        let Ok(offset) = u64::try_from(offset) else { return reply.error(libc::EINVAL) };
        let mut buf = vec![0u8; size as usize];
        match h.file.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.files.get(&fh) else { return reply.error(libc::EBADF) };
        let Ok(offset) = u64::try_from(offset) else { return reply.error(libc::EINVAL) };
        let r = if h.append { h.file.append(data).map(|_| data.len()) } else { h.file.write_at(data, offset) };
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        // Writes are not buffered here: each reached the proxy before it was answered.
        if self.files.contains_key(&fh) {
            reply.ok()
        } else {
            reply.error(libc::EBADF)
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.files.remove(&fh).map(|h| h.file.close()) {
            Some(Err(e)) => {
                log::warn!("FUSE release: {e}");
                reply.error(errno_of(&e))
            }
            _ => reply.ok(),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        match self.files.get(&fh).map(|h| h.file.sync()) {
            Some(Ok(())) => reply.ok(),
            Some(Err(e)) => reply.error(errno_of(&e)),
            None => reply.error(libc::EBADF),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.open_dir(ino) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(list) = self.dirs.get(&fh) else { return reply.error(libc::EBADF) };
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, e) in list.iter().enumerate().skip(skip) {
            if reply.add(e.ino, (i + 1) as i64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.dirs.remove(&fh);
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        // Namespace changes are durable on the backend when they are answered.
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match self.session.statfs(&self.root) {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn create(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        match PovFs::create(self, parent, name, mode & !umask, flags) {
            Ok((attr, fh)) => reply.created(&self.ttl, &attr, 0, fh, 0),
            Err(e) => reply.error(e),
        }
    }
}

impl PovFs<'_> {
    fn remove(&mut self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            self.session.remove(&p).map_err(|e| errno_of(&e))?;
            self.nodes.detach(&p);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Detaches the mount at `mp` lazily (`fusermount3 -u -z`, else `fusermount -u -z`):
/// for a mount still busy when its server must stop (a second signal to `pov-host
/// mount`, a test that failed with the mount up).
///
/// Errors: neither tool found, or the tool's failure.
pub fn lazy_unmount(mp: &Path) -> io::Result<()> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "neither fusermount3 nor fusermount found");
    for tool in ["fusermount3", "fusermount"] {
        match std::process::Command::new(tool).arg("-u").arg("-z").arg(mp).status() {
            Ok(st) if st.success() => return Ok(()),
            Ok(st) => last = io::Error::other(format!("{tool} -u -z exited with {st}")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_move_every_inode_below_and_detach_the_replaced() {
        let mut n = Nodes::new("/".into());
        let a = n.remember("/a".into());
        let ab = n.remember("/a/b".into());
        let abc = n.remember("/a/b/c".into());
        let ax = n.remember("/ax".into());
        let z = n.remember("/z".into());
        n.renamed("/a", "/z");
        assert_eq!(n.path(a), Ok("/z"));
        assert_eq!(n.path(ab), Ok("/z/b"));
        assert_eq!(n.path(abc), Ok("/z/b/c"));
        assert_eq!(n.path(ax), Ok("/ax"), "a sibling sharing the name's prefix stays");
        assert_eq!(n.path(z), Err(libc::ENOENT), "the replaced name is gone");
        assert_eq!(n.remember("/z/b".into()), ab);
    }

    #[test]
    fn forget_drops_an_inode_after_its_last_lookup_but_never_the_root() {
        let mut n = Nodes::new("/r".into());
        let f = n.remember("/r/f".into());
        assert_eq!(n.remember("/r/f".into()), f);
        n.forget(f, 1);
        assert_eq!(n.path(f), Ok("/r/f"));
        n.forget(f, 1);
        assert_eq!(n.path(f), Err(libc::ENOENT));
        assert_ne!(n.remember("/r/f".into()), f, "a new inode after forget");
        n.forget(ROOT_INO, 100);
        assert_eq!(n.path(ROOT_INO), Ok("/r"));
    }

    #[test]
    fn provisional_inodes_have_the_top_bit() {
        assert!(provisional_ino("/a") & (1 << 63) != 0);
    }
}
