//! Thin, safe wrappers over the Linux calls the proxy needs and `std` does not offer:
//! the `*at` family (resolve names relative to an open directory, never following a
//! symbolic link), and, with the cargo feature `ceph`, `cephfs` (the libcephfs client
//! library) and `rados` (librados and librbd) over the `ceph-sys` bindings.
//! **All `unsafe` code of this crate lives here.**

#[cfg(feature = "ceph")]
pub mod cephfs;
#[cfg(feature = "ceph")]
pub mod rados;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

/// Kind of a directory entry as seen without following symbolic links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    File,
    Dir,
    Symlink,
    /// FIFO, socket, device: never served.
    Other,
}

impl EntryType {
    fn from_mode(mode: libc::mode_t) -> EntryType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => EntryType::File,
            libc::S_IFDIR => EntryType::Dir,
            libc::S_IFLNK => EntryType::Symlink,
            _ => EntryType::Other,
        }
    }

    /// `None` for `DT_UNKNOWN` (the caller must `stat`).
    fn from_dtype(t: u8) -> Option<EntryType> {
        match t {
            libc::DT_REG => Some(EntryType::File),
            libc::DT_DIR => Some(EntryType::Dir),
            libc::DT_LNK => Some(EntryType::Symlink),
            libc::DT_UNKNOWN => None,
            _ => Some(EntryType::Other),
        }
    }
}

/// What `fstatat` says about one name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryStat {
    pub kind: EntryType,
    /// Bytes.
    pub size: u64,
    /// Nanoseconds since the Unix epoch (0 if before it).
    pub mtime_ns: u64,
    /// Permission bits (`st_mode & 0o777`).
    pub mode: u32,
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `name` relative to `dir` with `flags | O_NOFOLLOW | O_CLOEXEC` (and `mode` if
/// `O_CREAT` is set). A symbolic link as `name` fails with `ELOOP`.
pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    loop {
        // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is an open
        // descriptor borrowed for the call; `mode` is passed as the variadic argument
        // openat expects (promoted to c_uint).
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Opens the directory `name` under `dir` (read-only, `O_DIRECTORY | O_NOFOLLOW`).
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Opens a directory by absolute or relative path (used once, for a backend's root).
pub(crate) fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and outlives the call; no other pointers.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the directory `name` under `dir` with `mode` (before umask).
pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &str, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call; `dir` is open.
    let r = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn stat_from(st: &libc::stat) -> EntryStat {
    let ns = (st.st_mtime as i128) * 1_000_000_000 + st.st_mtime_nsec as i128;
    EntryStat {
        kind: EntryType::from_mode(st.st_mode),
        size: st.st_size.max(0) as u64,
        mtime_ns: ns.clamp(0, u64::MAX as i128) as u64,
        mode: st.st_mode & 0o777,
    }
}

/// Fails with the last OS error when a libc call returned a negative value.
fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE if !replace)`: one atomic
/// step; neither name is followed if it is a symbolic link (rename never follows the
/// last component).
pub(crate) fn rename_at(from_dir: BorrowedFd<'_>, from: &str, to_dir: BorrowedFd<'_>, to: &str, replace: bool) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
    // SAFETY: `f` and `t` are NUL-terminated and outlive the call; both directory
    // descriptors are open for the call.
    check(unsafe { libc::renameat2(from_dir.as_raw_fd(), f.as_ptr(), to_dir.as_raw_fd(), t.as_ptr(), flags) })
}

/// `fchmodat(dir, name, mode)`. Linux cannot refuse to follow a link here: callers
/// check with [`stat_at`] that `name` is a file or directory first.
pub(crate) fn chmod_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call; `dir` is open.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })
}

/// Sets the modification time of `name` under `dir` (`utimensat` with
/// `AT_SYMLINK_NOFOLLOW`; the access time is left alone).
pub(crate) fn set_mtime_at(dir: BorrowedFd<'_>, name: &str, mtime_ns: u64) -> io::Result<()> {
    let c = cstr(name)?;
    let omit = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT };
    let mtime = libc::timespec {
        tv_sec: (mtime_ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
        tv_nsec: (mtime_ns % 1_000_000_000) as libc::c_long,
    };
    let times = [omit, mtime];
    // SAFETY: `c` is NUL-terminated, `times` is an array of two timespecs, both
    // outlive the call; `dir` is open.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// `fstatvfs(fd)`: (block size, name max, blocks, free, available, files, free files).
pub(crate) fn statvfs_fd(fd: BorrowedFd<'_>) -> io::Result<pov_proto::entry::StatFs> {
    // SAFETY: `struct statvfs` is plain data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer and `fd` is open.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(statfs_from(st.f_frsize, st.f_bsize, st.f_namemax, [st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree]))
}

/// A [`pov_proto::entry::StatFs`] from `statvfs` fields: the fragment size (the unit
/// of the block counts; `bsize` when 0), the longest name, and `[blocks, bfree,
/// bavail, files, ffree]`.
pub(crate) fn statfs_from(frsize: u64, bsize: u64, name_max: u64, counts: [u64; 5]) -> pov_proto::entry::StatFs {
    let block = if frsize > 0 { frsize } else { bsize };
    let [blocks, blocks_free, blocks_available, files, files_free] = counts;
    pov_proto::entry::StatFs {
        block_size: u32::try_from(block).unwrap_or(4096).max(1),
        name_max: u32::try_from(name_max).unwrap_or(255),
        blocks,
        blocks_free,
        blocks_available,
        files,
        files_free,
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<EntryStat> {
    let c = cstr(name)?;
    // SAFETY: `struct stat` is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` is a valid out-pointer, `dir` is open.
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat_from(&st))
}

/// `fstat(fd)`.
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<EntryStat> {
    // SAFETY: `struct stat` is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer and `fd` is open.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat_from(&st))
}

/// Removes `name` under `dir`: a directory if `dir_entry`, else a non-directory.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &str, dir_entry: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if dir_entry { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is NUL-terminated and outlives the call; `dir` is open.
    let r = unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads every entry of the open directory `dir` (consumed), without `.` and `..`.
/// Returns raw names and the type from `d_type` (`None` when the file system does not
/// fill it in).
pub(crate) fn read_dir(dir: OwnedFd) -> io::Result<Vec<(Vec<u8>, Option<EntryType>)>> {
    let raw = dir.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor whose ownership passes to the
    // DIR stream (closedir below closes it).
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it lets us tell end-of-stream
        // (NULL, errno 0) from an error (NULL, errno set).
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is a valid DIR stream used by this thread only.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: readdir returned a valid dirent that stays valid until the next
        // readdir/closedir on `d`; d_name is NUL-terminated. We copy before moving on.
        let (name, dtype) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes().to_vec(), (*ent).d_type) };
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name, EntryType::from_dtype(dtype)));
    };
    // SAFETY: `d` is a valid DIR stream, closed exactly once.
    unsafe { libc::closedir(d) };
    result.map(|_| out)
}

/// `true` if the peer of stream socket `fd` has closed its sending side (a FIN was
/// received, `POLLRDHUP`), even while data it sent before remains unread; `false`
/// otherwise or if the check fails. Never blocks.
pub(crate) fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: `p` is one valid pollfd for the duration of the call; timeout 0 never
    // blocks; a closed or foreign fd only yields POLLNVAL or an error, no UB.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The fence of a stalled proxy (docs/protocol.md, "Fencing a stalled proxy"): a
    /// DPU that aborts a connection with requests still unread at the proxy is seen as
    /// gone before the proxy reads them.
    #[test]
    fn an_aborted_connection_is_seen_closed_with_its_data_unread() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut dpu = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (proxy, _) = l.accept().unwrap();
        assert!(!peer_closed(proxy.as_raw_fd()), "open connection");
        dpu.write_all(b"a request the proxy has not read").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!peer_closed(proxy.as_raw_fd()), "unread data alone is not a close");
        pov_runtime::sys::abort_on_close(dpu.as_raw_fd()).unwrap();
        drop(dpu);
        let t0 = std::time::Instant::now();
        while !peer_closed(proxy.as_raw_fd()) {
            assert!(t0.elapsed() < std::time::Duration::from_secs(2), "the reset was never seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!peer_closed(-1), "a bad descriptor is not a close");
    }

    #[test]
    fn at_calls_refuse_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let root = open_dir_path(d.path()).unwrap();
        assert!(open_at(root.as_fd(), "f", libc::O_RDONLY, 0).is_ok());
        let e = open_at(root.as_fd(), "l", libc::O_RDONLY, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(stat_at(root.as_fd(), "l").unwrap().kind, EntryType::Symlink);
        assert_eq!(stat_at(root.as_fd(), "sub").unwrap().kind, EntryType::Dir);
        let s = stat_at(root.as_fd(), "f").unwrap();
        assert_eq!((s.kind, s.size), (EntryType::File, 1));
        assert!(s.mtime_ns > 0);
        let mut names: Vec<_> = read_dir(open_dir_at(root.as_fd(), "sub").unwrap()).unwrap();
        assert!(names.is_empty());
        names = read_dir(root.try_clone().unwrap()).unwrap();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(names.iter().map(|(n, _)| n.as_slice()).collect::<Vec<_>>(), [&b"f"[..], b"l", b"sub"]);
        mkdir_at(root.as_fd(), "new", 0o755).unwrap();
        rename_at(root.as_fd(), "new", root.as_fd(), "moved", false).unwrap();
        assert_eq!(
            rename_at(root.as_fd(), "moved", root.as_fd(), "sub", false).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        chmod_at(root.as_fd(), "moved", 0o701).unwrap();
        set_mtime_at(root.as_fd(), "moved", 1_500_000_000_123_456_789).unwrap();
        let m = stat_at(root.as_fd(), "moved").unwrap();
        assert_eq!((m.mode, m.mtime_ns), (0o701, 1_500_000_000_123_456_789));
        assert!(statvfs_fd(root.as_fd()).unwrap().blocks > 0);
        unlink_at(root.as_fd(), "moved", true).unwrap();
        unlink_at(root.as_fd(), "f", false).unwrap();
        assert_eq!(stat_at(root.as_fd(), "f").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(open_at(root.as_fd(), "a\0b", libc::O_RDONLY, 0).is_err());
    }
}
