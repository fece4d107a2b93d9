//! A safe wrapper over the part of libcephfs (Ceph's file-system client library,
//! `<cephfs/libcephfs.h>`, Debian package `libcephfs-dev`) that the Ceph backend uses,
//! over the bindgen-generated declarations of the `ceph-sys` crate (`vendor/ceph-sys`).
//! Every call returns `0`/a count or a negative errno; the wrapper turns the latter
//! into [`Errno`].
//!
//! A [`CephMount`] is one client session (one `ceph_mount_info`). libcephfs is
//! thread-safe per mount, so one mount is shared by every channel and worker of a
//! backend (`Send + Sync`).

use ceph_sys::{
    ceph_close, ceph_closedir, ceph_conf_read_file, ceph_conf_set, ceph_create, ceph_dir_result, ceph_finish_reclaim,
    ceph_fstatx, ceph_fsync, ceph_ftruncate, ceph_init, ceph_mkdir, ceph_mount, ceph_mount_info, ceph_open, ceph_opendir,
    ceph_read, ceph_readdir_r, ceph_release, ceph_rename, ceph_rmdir, ceph_set_uuid, ceph_setattrx, ceph_start_reclaim,
    ceph_statfs, ceph_statx, ceph_sync_fs, ceph_unlink, ceph_unmount, ceph_write, dirent, statvfs, CEPH_RECLAIM_RESET,
    CEPH_SETATTR_MODE, CEPH_SETATTR_MTIME, CEPH_STATX_INO, CEPH_STATX_MODE, CEPH_STATX_MTIME, CEPH_STATX_SIZE,
};
use std::ffi::{c_int, CStr, CString};
use std::ptr;
use std::sync::Arc;

/// A negative return of libcephfs, as a positive errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// A libcephfs/librados return value: negative errno or a count.
pub(super) fn check(r: c_int) -> Result<c_int, Errno> {
    if r < 0 {
        Err(Errno(-r))
    } else {
        Ok(r)
    }
}

/// A C string argument; an interior NUL is `EINVAL`.
pub(super) fn cstr(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno(libc::EINVAL))
}

/// Attributes of a file or directory (`ceph_statx` with mode, size and mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CephStat {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Inode number (what the file's data objects are named after).
    pub ino: u64,
}

impl CephStat {
    fn from_raw(s: &ceph_statx) -> CephStat {
        let ns =
            (s.stx_mtime.tv_sec.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(s.stx_mtime.tv_nsec.max(0) as u64);
        CephStat { mode: u32::from(s.stx_mode), size: s.stx_size, mtime_ns: ns, ino: s.stx_ino }
    }

    /// `true` for a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// `true` for a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// One mounted CephFS client session. Unmounted and released on drop.
pub struct CephMount {
    raw: *mut ceph_mount_info,
    mounted: bool,
}

// SAFETY: libcephfs serializes access to a mount's client state internally (its
// `client_lock`); the handle may be used from several threads at once.
unsafe impl Send for CephMount {}
// SAFETY: as above: every entry point takes the mount's internal lock.
unsafe impl Sync for CephMount {}

impl std::fmt::Debug for CephMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephMount").finish_non_exhaustive()
    }
}

impl CephMount {
    /// Creates a client named `client.<id>`, reads `conf` (a `ceph.conf` path), applies
    /// `options` (`ceph_conf_set` name/value pairs, e.g. `keyring`) and mounts the file
    /// system root `/`.
    ///
    /// Errors: the errno of the first failing step, with the step's name.
    pub fn mount(id: &str, conf: &str, options: &[(&str, &str)]) -> Result<Arc<CephMount>, (&'static str, Errno)> {
        CephMount::mount_as(id, conf, options, None)
    }

    /// As [`CephMount::mount`], with a client session UUID: an MDS session left by an
    /// earlier client with the same UUID (a crashed predecessor) is reset first
    /// (`ceph_start_reclaim` with `CEPH_RECLAIM_RESET` from a temporary handle), so
    /// its capabilities are released at once instead of after `session_timeout`.
    /// Two live clients must never share a UUID: the second evicts the first.
    pub fn mount_as(
        id: &str,
        conf: &str,
        options: &[(&str, &str)],
        uuid: Option<&str>,
    ) -> Result<Arc<CephMount>, (&'static str, Errno)> {
        if let Some(u) = uuid {
            let reset = CephMount::create(id, conf, options)?;
            let u = cstr(u).map_err(|e| ("session uuid", e))?;
            // SAFETY: configured, unmounted handle.
            check(unsafe { ceph_init(reset.raw) }).map_err(|e| ("ceph_init", e))?;
            // SAFETY: initialized handle, NUL-terminated UUID that outlives the call.
            match check(unsafe { ceph_start_reclaim(reset.raw, u.as_ptr(), CEPH_RECLAIM_RESET) }) {
                // ENOENT: no session to reset.
                Ok(_) | Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(("ceph_start_reclaim", e)),
            }
            // SAFETY: as above; ends the reclaim started on this handle.
            unsafe { ceph_finish_reclaim(reset.raw) };
        }
        let mut m = CephMount::create(id, conf, options)?;
        if let Some(u) = uuid {
            let u = cstr(u).map_err(|e| ("session uuid", e))?;
            // SAFETY: configured, unmounted handle; ceph_set_uuid needs the client
            // initialized.
            check(unsafe { ceph_init(m.raw) }).map_err(|e| ("ceph_init", e))?;
            // SAFETY: initialized, unmounted handle; NUL-terminated UUID (copied).
            unsafe { ceph_set_uuid(m.raw, u.as_ptr()) };
        }
        // SAFETY: handle configured and not mounted; the root is a static C string.
        check(unsafe { ceph_mount(m.raw, c"/".as_ptr()) }).map_err(|e| ("ceph_mount", e))?;
        m.mounted = true;
        Ok(Arc::new(m))
    }

    /// A created and configured, not yet mounted handle.
    fn create(id: &str, conf: &str, options: &[(&str, &str)]) -> Result<CephMount, (&'static str, Errno)> {
        let id = cstr(id).map_err(|e| ("client name", e))?;
        let mut raw = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `id` is a NUL-terminated string that
        // outlives the call.
        check(unsafe { ceph_create(&mut raw, id.as_ptr()) }).map_err(|e| ("ceph_create", e))?;
        // From here on, dropping `m` releases the handle.
        let m = CephMount { raw, mounted: false };
        let conf = cstr(conf).map_err(|e| ("config path", e))?;
        // SAFETY: `m.raw` is a created, unmounted handle; `conf` is NUL-terminated.
        check(unsafe { ceph_conf_read_file(m.raw, conf.as_ptr()) }).map_err(|e| ("ceph_conf_read_file", e))?;
        for (k, v) in options {
            let (k, v) = (cstr(k).map_err(|e| ("option", e))?, cstr(v).map_err(|e| ("option", e))?);
            // SAFETY: handle not yet mounted; both strings NUL-terminated.
            check(unsafe { ceph_conf_set(m.raw, k.as_ptr(), v.as_ptr()) }).map_err(|e| ("ceph_conf_set", e))?;
        }
        Ok(m)
    }

    /// Opens `path` with POSIX `flags` (`O_*`), creating with `mode`. The file keeps
    /// the mount alive.
    pub fn open(self: &Arc<CephMount>, path: &str, flags: i32, mode: u32) -> Result<CephFile, Errno> {
        let p = cstr(path)?;
        // SAFETY: mounted handle, NUL-terminated path.
        let fd = check(unsafe { ceph_open(self.raw, p.as_ptr(), flags, mode) })?;
        Ok(CephFile { mount: self.clone(), fd })
    }

    /// `stat` of `path`, not following a final symbolic link.
    pub fn stat(&self, path: &str) -> Result<CephStat, Errno> {
        let p = cstr(path)?;
        let mut s = ceph_statx::default();
        let want = CEPH_STATX_MODE | CEPH_STATX_SIZE | CEPH_STATX_MTIME | CEPH_STATX_INO;
        // SAFETY: mounted handle, NUL-terminated path, `s` is a valid out-struct.
        check(unsafe { ceph_statx(self.raw, p.as_ptr(), &mut s, want, libc::AT_SYMLINK_NOFOLLOW as u32) })?;
        Ok(CephStat::from_raw(&s))
    }

    /// Creates one directory.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<(), Errno> {
        let p = cstr(path)?;
        // SAFETY: mounted handle, NUL-terminated path.
        check(unsafe { ceph_mkdir(self.raw, p.as_ptr(), mode) }).map(|_| ())
    }

    /// Renames `from` to `to` (replacing an existing `to`, as POSIX `rename`).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Errno> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: mounted handle, two NUL-terminated paths that outlive the call.
        check(unsafe { ceph_rename(self.raw, f.as_ptr(), t.as_ptr()) }).map(|_| ())
    }

    /// Sets the permission bits (`mode`, type bits ignored) and/or the modification
    /// time (ns since the Unix epoch) of `path`, not following a final symbolic link.
    pub fn set_attr(&self, path: &str, mode: Option<u32>, mtime_ns: Option<u64>) -> Result<(), Errno> {
        let p = cstr(path)?;
        let mut s = ceph_statx::default();
        let mut mask = 0;
        if let Some(m) = mode {
            s.stx_mode = (m & 0o7777) as u16;
            mask |= CEPH_SETATTR_MODE;
        }
        if let Some(t) = mtime_ns {
            s.stx_mtime.tv_sec = (t / 1_000_000_000).min(i64::MAX as u64) as _;
            s.stx_mtime.tv_nsec = (t % 1_000_000_000) as _;
            mask |= CEPH_SETATTR_MTIME;
        }
        if mask == 0 {
            return Ok(());
        }
        // SAFETY: mounted handle, NUL-terminated path, `s` is a valid statx whose
        // fields named by `mask` are set.
        check(unsafe { ceph_setattrx(self.raw, p.as_ptr(), &mut s, mask as c_int, libc::AT_SYMLINK_NOFOLLOW) }).map(|_| ())
    }

    /// `statvfs` of the file system holding `path`.
    pub fn statfs(&self, path: &str) -> Result<pov_proto::entry::StatFs, Errno> {
        let p = cstr(path)?;
        let mut v = statvfs::default();
        // SAFETY: mounted handle, NUL-terminated path, `v` is a valid out-struct.
        check(unsafe { ceph_statfs(self.raw, p.as_ptr(), &mut v) })?;
        Ok(super::statfs_from(v.f_frsize, v.f_bsize, v.f_namemax, [v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree]))
    }

    /// Waits until every metadata and data change of this client is durable in the
    /// cluster (`ceph_sync_fs`).
    pub fn sync_fs(&self) -> Result<(), Errno> {
        // SAFETY: mounted handle.
        check(unsafe { ceph_sync_fs(self.raw) }).map(|_| ())
    }

    /// Removes a file (`unlink`) or an empty directory (`rmdir`).
    pub fn remove(&self, path: &str, dir: bool) -> Result<(), Errno> {
        let p = cstr(path)?;
        // SAFETY: mounted handle, NUL-terminated path.
        check(unsafe {
            if dir {
                ceph_rmdir(self.raw, p.as_ptr())
            } else {
                ceph_unlink(self.raw, p.as_ptr())
            }
        })
        .map(|_| ())
    }

    /// Names and `d_type`s of the entries of directory `path` (without `.` and `..`;
    /// names that are not UTF-8 are skipped).
    pub fn read_dir(&self, path: &str) -> Result<Vec<(String, u8)>, Errno> {
        let p = cstr(path)?;
        let mut dir: *mut ceph_dir_result = ptr::null_mut();
        // SAFETY: mounted handle, NUL-terminated path, valid out-pointer.
        check(unsafe { ceph_opendir(self.raw, p.as_ptr(), &mut dir) })?;
        let mut out = Vec::new();
        let result = loop {
            let mut de = dirent::default();
            // SAFETY: `dir` is open; `de` is a valid struct libcephfs fills in.
            match unsafe { ceph_readdir_r(self.raw, dir, &mut de) } {
                0 => break Ok(()),
                r if r < 0 => break Err(Errno(-r)),
                _ => {
                    // SAFETY: libcephfs NUL-terminates `d_name`, which lives in `de`.
                    let name = unsafe { CStr::from_ptr(de.d_name.as_ptr()) };
                    if let Ok(n) = name.to_str() {
                        if n != "." && n != ".." {
                            out.push((n.to_string(), de.d_type));
                        }
                    }
                }
            }
        };
        // SAFETY: `dir` came from ceph_opendir and is closed exactly once.
        unsafe { ceph_closedir(self.raw, dir) };
        result.map(|()| out)
    }
}

impl Drop for CephMount {
    fn drop(&mut self) {
        // SAFETY: `raw` came from ceph_create and is released exactly once, after an
        // unmount if (and only if) it was mounted.
        unsafe {
            if self.mounted {
                ceph_unmount(self.raw);
            }
            ceph_release(self.raw);
        }
    }
}

/// An open file of a [`CephMount`]; closed on drop. Positional calls only, so one
/// file may be used by several threads at once.
pub struct CephFile {
    mount: Arc<CephMount>,
    fd: c_int,
}

impl std::fmt::Debug for CephFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephFile").field("fd", &self.fd).finish()
    }
}

impl CephFile {
    /// Reads up to `buf.len()` bytes at `offset`; returns the count (short at end of
    /// file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        let off = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes for the call.
        let n = check(unsafe { ceph_read(self.mount.raw, self.fd, buf.as_mut_ptr().cast(), buf.len() as i64, off) })?;
        Ok(n as usize)
    }

    /// Writes `data` at `offset`, or at the current position (the end of file for a
    /// file opened `O_APPEND`) when `offset` is `None`; returns the count.
    pub fn write_at(&self, data: &[u8], offset: Option<u64>) -> Result<usize, Errno> {
        let off = match offset {
            Some(o) => i64::try_from(o).map_err(|_| Errno(libc::EINVAL))?,
            None => -1,
        };
        // SAFETY: `data` is valid for `data.len()` bytes of reads for the call.
        let n = check(unsafe { ceph_write(self.mount.raw, self.fd, data.as_ptr().cast(), data.len() as i64, off) })?;
        Ok(n as usize)
    }

    /// Sets the size (bytes).
    pub fn truncate(&self, size: u64) -> Result<(), Errno> {
        let size = i64::try_from(size).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: open descriptor of this mount.
        check(unsafe { ceph_ftruncate(self.mount.raw, self.fd, size) }).map(|_| ())
    }

    /// Makes data (and with `!data_only` metadata) durable.
    pub fn sync(&self, data_only: bool) -> Result<(), Errno> {
        // SAFETY: open descriptor of this mount.
        check(unsafe { ceph_fsync(self.mount.raw, self.fd, c_int::from(data_only)) }).map(|_| ())
    }

    /// Attributes of the open file.
    pub fn stat(&self) -> Result<CephStat, Errno> {
        let mut s = ceph_statx::default();
        let want = CEPH_STATX_MODE | CEPH_STATX_SIZE | CEPH_STATX_MTIME | CEPH_STATX_INO;
        // SAFETY: open descriptor; `s` is a valid out-struct.
        check(unsafe { ceph_fstatx(self.mount.raw, self.fd, &mut s, want, 0) })?;
        Ok(CephStat::from_raw(&s))
    }
}

impl Drop for CephFile {
    fn drop(&mut self) {
        // SAFETY: `fd` is open on this mount and closed exactly once.
        unsafe { ceph_close(self.mount.raw, self.fd) };
    }
}
