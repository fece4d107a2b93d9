//! The exported C functions and types (`include/pov.h` is generated from this file).
//! Every `unsafe` block of the crate is here: each reads a pointer the C caller passed,
//! under the contract its function's documentation states.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::io;
use std::time::Duration;

use pov_host::{Device, Kind, OpenOptions, Protection, Session, SessionOptions};

use crate::{count, fail, fail_io, fail_setup, guard, last_error_ptr, status, PovDevice, PovFile, PovSession};

/// Open flag: the handle may write, append, truncate and sync (every handle reads).
pub const POV_O_WRITE: u32 = 1;
/// Open flag: create the file (and its parent directories) if it does not exist.
/// Needs `POV_O_WRITE`.
pub const POV_O_CREATE: u32 = 2;
/// Open flag: with `POV_O_CREATE`, fail with `-EEXIST` if the file exists.
pub const POV_O_EXCL: u32 = 4;
/// Open flag: truncate the file to 0 bytes. Needs `POV_O_WRITE`.
pub const POV_O_TRUNC: u32 = 8;

/// Session flag: a read-only session (every request that would change something is
/// refused with `-EACCES`/`-EROFS` by the device).
pub const POV_SESSION_READ_ONLY: u32 = 1;
/// Session flag: responses are authenticated but not encrypted (readable by any
/// process that can open the device: only for processes that trust each other).
pub const POV_SESSION_INTEGRITY_ONLY: u32 = 2;
/// Session flag: no failover (the session is dead at the first loss of the device).
pub const POV_SESSION_NO_FAILOVER: u32 = 4;

/// Rename flag: fail with `-EEXIST` instead of replacing the destination.
pub const POV_RENAME_NOREPLACE: u32 = 1;
/// Rename flag: the rename is durable on the backend before the call returns.
pub const POV_RENAME_SYNC: u32 = 2;

/// `pov_stat.kind` of a regular file.
pub const POV_KIND_FILE: u32 = 1;
/// `pov_stat.kind` of a directory.
pub const POV_KIND_DIR: u32 = 2;

/// Options of `pov_session_open`; NULL means every default. Zero fields are defaults.
#[repr(C)]
pub struct pov_session_options {
    /// IO queues (requests in flight at once), 1-64; 0: 4.
    pub queues: u32,
    /// `POV_SESSION_*` flags.
    pub flags: u32,
    /// Limit the session to this path and what lies below it; NULL or "": the whole
    /// namespace.
    pub prefix: *const c_char,
    /// How long a failover may take, in milliseconds; 0: 30000.
    pub failover_timeout_ms: u64,
}

/// Attributes of a file or directory.
#[repr(C)]
pub struct pov_stat {
    /// Size in bytes (directories: the backend's figure).
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: u64,
    /// Permission bits (`0777` at most).
    pub mode: u32,
    /// `POV_KIND_FILE` or `POV_KIND_DIR`.
    pub kind: u32,
}

/// Capacity of the storage behind a path (`statvfs`).
#[repr(C)]
pub struct pov_statfs {
    /// Bytes per block.
    pub block_size: u32,
    /// Longest name, in bytes.
    pub name_max: u32,
    /// Blocks in total.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Blocks available to the tenant.
    pub blocks_available: u64,
    /// File slots in total (0: no limit known).
    pub files: u64,
    /// Free file slots.
    pub files_free: u64,
}

/// One directory entry, passed to a `pov_list` callback (valid during the call only).
#[repr(C)]
pub struct pov_dirent {
    /// NUL-terminated UTF-8 name (no `/`).
    pub name: *const c_char,
    /// Size in bytes.
    pub size: u64,
    /// `POV_KIND_FILE` or `POV_KIND_DIR`.
    pub kind: u32,
}

/// Called by `pov_list` for each entry; returning non-zero stops the listing, and
/// `pov_list` returns that value.
pub type pov_list_cb = Option<unsafe extern "C" fn(ctx: *mut c_void, entry: *const pov_dirent) -> c_int>;

/// The library's version ("0.1.0"), a static string.
#[no_mangle]
pub extern "C" fn pov_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the calling thread's last failed call ("" if none); valid until
/// that thread's next failed call.
#[no_mangle]
pub extern "C" fn pov_get_error_msg() -> *const c_char {
    last_error_ptr()
}

/// A `&str` from a C string argument, or `Err(-EINVAL)` (NULL or not UTF-8).
///
/// Safety: `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, c_int> {
    if p.is_null() {
        return Err(fail(libc::EINVAL, &format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller passes a NUL-terminated string (contract above).
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| fail(libc::EINVAL, &format!("{what} is not UTF-8")))
}

/// A shared reference from a handle argument, or `Err(-EINVAL)` if NULL.
///
/// Safety: `p` is NULL or a live handle returned by this library.
unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, c_int> {
    // SAFETY: a non-NULL handle is a live Box<T> the library handed out (contract above).
    unsafe { p.as_ref() }.ok_or_else(|| fail(libc::EINVAL, &format!("{what} is NULL")))
}

/// Writes `v` to `out` (checked non-NULL by the caller).
///
/// Safety: `out` is valid for a write of `T`.
unsafe fn put<T>(out: *mut T, v: T) {
    // SAFETY: the caller passes a writable, aligned pointer (contract above).
    unsafe { out.write(v) }
}

fn null_out(what: &str) -> c_int {
    fail(libc::EINVAL, &format!("{what} is NULL"))
}

/// Opens the PoV device at `spec` (`/dev/vdX` or `vhost-user:/path/to.sock`) and
/// stores the handle in `*out`. Free it with `pov_device_close` (sessions keep what
/// they need of it).
///
/// Errors: `-EINVAL` (bad spec, NULL), `-ENOENT`/`-EACCES` (cannot open), `-EIO` and
/// others (not a PoV device: the message says why).
///
/// # Safety
/// `spec` is a NUL-terminated string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn pov_device_open(spec: *const c_char, out: *mut *mut PovDevice) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: the caller's contract (above).
        let spec = match unsafe { str_arg(spec, "spec") } {
            Ok(s) => s,
            Err(e) => return e,
        };
        if out.is_null() {
            return null_out("out");
        }
        match Device::open(spec) {
            // SAFETY: `out` is non-NULL and writable (the caller's contract).
            Ok(d) => unsafe {
                put(out, Box::into_raw(Box::new(PovDevice(d))));
                0
            },
            Err(e) => fail_setup(e),
        }
    })
}

/// Frees a device handle (NULL is ignored).
///
/// # Safety
/// `dev` is NULL or a handle from `pov_device_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn pov_device_close(dev: *mut PovDevice) {
    if !dev.is_null() {
        // SAFETY: a handle from pov_device_open (Box::into_raw), freed once.
        guard((), || drop(unsafe { Box::from_raw(dev) }));
    }
}

/// Opens a session of `tenant` on `dev`, authenticated with the tenant's secret
/// (`secret_len` bytes; it never crosses the device and is wiped when the session
/// closes), and stores the handle in `*out`. `opts` may be NULL.
///
/// Errors: `-EPERM` (wrong secret or unknown tenant), `-EINVAL` (bad argument), `-EIO` and
/// others from the device.
///
/// # Safety
/// `dev` is a device handle; `tenant` a NUL-terminated string; `secret` valid for
/// `secret_len` bytes; `opts` NULL or valid (its `prefix` NULL or NUL-terminated);
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pov_session_open(
    dev: *const PovDevice,
    tenant: *const c_char,
    secret: *const u8,
    secret_len: usize,
    opts: *const pov_session_options,
    out: *mut *mut PovSession,
) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: the caller's contract (above) for each pointer.
        let (dev, tenant) = match unsafe { (handle(dev, "device"), str_arg(tenant, "tenant")) } {
            (Ok(d), Ok(t)) => (d, t),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        if secret.is_null() || out.is_null() {
            return null_out(if secret.is_null() { "secret" } else { "out" });
        }
        // SAFETY: `secret` is valid for `secret_len` bytes (the caller's contract).
        let secret = unsafe { std::slice::from_raw_parts(secret, secret_len) };
        let mut o = SessionOptions::default();
        // SAFETY: `opts` is NULL or valid (the caller's contract).
        if let Some(opts) = unsafe { opts.as_ref() } {
            if opts.queues != 0 {
                o.queues = opts.queues;
            }
            o.read_only = opts.flags & POV_SESSION_READ_ONLY != 0;
            if opts.flags & POV_SESSION_INTEGRITY_ONLY != 0 {
                o.protection = Protection::IntegrityOnly;
            }
            if opts.failover_timeout_ms != 0 {
                o.failover_timeout = Some(Duration::from_millis(opts.failover_timeout_ms));
            }
            if opts.flags & POV_SESSION_NO_FAILOVER != 0 {
                o.failover_timeout = None;
            }
            if !opts.prefix.is_null() {
                // SAFETY: a non-NULL prefix is NUL-terminated (the caller's contract).
                match unsafe { str_arg(opts.prefix, "prefix") } {
                    Ok(p) => o.prefix = p.to_string(),
                    Err(e) => return e,
                }
            }
        }
        match Session::open_with(&dev.0, tenant, secret, &o) {
            // SAFETY: `out` is non-NULL and writable.
            Ok(s) => unsafe {
                put(out, Box::into_raw(Box::new(PovSession(s))));
                0
            },
            Err(e) => fail_setup(e),
        }
    })
}

/// Closes a session (its open files stop working) and frees the handle, also when
/// closing fails (NULL is ignored and returns 0).
///
/// # Safety
/// `s` is NULL or a handle from `pov_session_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn pov_session_close(s: *mut PovSession) -> c_int {
    if s.is_null() {
        return 0;
    }
    // SAFETY: a handle from pov_session_open (Box::into_raw), freed once.
    let s = unsafe { Box::from_raw(s) };
    guard(-libc::EIO, move || match s.0.close() {
        Ok(()) => 0,
        Err(e) => fail_setup(e),
    })
}

/// Opens `path` with `POV_O_*` `flags` and stores the file handle in `*out`.
///
/// Errors: `-ENOENT`, `-EEXIST` (`POV_O_EXCL`), `-EISDIR`, `-EACCES` (read-only
/// session, outside its prefix), `-EINVAL` (create/truncate without `POV_O_WRITE`,
/// unknown flags).
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pov_open(s: *const PovSession, path: *const c_char, flags: u32, out: *mut *mut PovFile) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: the caller's contract (above).
        let (s, path) = match unsafe { (handle(s, "session"), str_arg(path, "path")) } {
            (Ok(s), Ok(p)) => (s, p),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        if out.is_null() {
            return null_out("out");
        }
        if flags & !(POV_O_WRITE | POV_O_CREATE | POV_O_EXCL | POV_O_TRUNC) != 0 {
            return fail(libc::EINVAL, &format!("open {path}: unknown flags {flags:#x}"));
        }
        let mut o = OpenOptions::new();
        o.write(flags & POV_O_WRITE != 0).truncate(flags & POV_O_TRUNC != 0);
        if flags & POV_O_CREATE != 0 {
            if flags & POV_O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        match s.0.open_file(path, &o) {
            // SAFETY: `out` is non-NULL and writable.
            Ok(f) => unsafe {
                put(out, Box::into_raw(Box::new(PovFile(f))));
                0
            },
            Err(e) => fail_io(&e),
        }
    })
}

/// Reads up to `len` bytes at `offset` into `buf`; returns the bytes read (less than
/// `len` only at the end of the file) or a negative errno. Large reads run as
/// parallel 1 MiB requests.
///
/// # Safety
/// `f` is a file handle; `buf` is writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pov_file_pread(f: *const PovFile, buf: *mut c_void, len: usize, offset: u64) -> i64 {
    guard(-libc::EIO as i64, || {
        // SAFETY: the caller's contract (above).
        let f = match unsafe { handle(f, "file") } {
            Ok(f) => f,
            Err(e) => return e as i64,
        };
        if buf.is_null() && len > 0 {
            return null_out("buf") as i64;
        }
        if len == 0 {
            return 0;
        }
        // SAFETY: `buf` is writable for `len` bytes (the caller's contract).
        let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        count(f.0.read_at(buf, offset))
    })
}

/// Writes `len` bytes of `buf` at `offset`; returns `len` or a negative errno.
///
/// # Safety
/// `f` is a file handle; `buf` is readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pov_file_pwrite(f: *const PovFile, buf: *const c_void, len: usize, offset: u64) -> i64 {
    guard(-libc::EIO as i64, || {
        // SAFETY: the caller's contract (above).
        let f = match unsafe { handle(f, "file") } {
            Ok(f) => f,
            Err(e) => return e as i64,
        };
        if buf.is_null() && len > 0 {
            return null_out("buf") as i64;
        }
        if len == 0 {
            return 0;
        }
        // SAFETY: `buf` is readable for `len` bytes (the caller's contract).
        let buf = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        count(f.0.write_at(buf, offset))
    })
}

/// Appends `len` bytes (at most 1 MiB, one atomic request) at the end of the file;
/// stores the offset they landed at in `*offset` (if not NULL).
///
/// # Safety
/// `f` is a file handle; `buf` readable for `len` bytes; `offset` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pov_file_append(f: *const PovFile, buf: *const c_void, len: usize, offset: *mut u64) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: the caller's contract (above).
        let f = match unsafe { handle(f, "file") } {
            Ok(f) => f,
            Err(e) => return e,
        };
        if buf.is_null() && len > 0 {
            return null_out("buf");
        }
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: `buf` is readable for `len` bytes (the caller's contract).
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
        };
        match f.0.append(data) {
            Ok(at) => {
                if !offset.is_null() {
                    // SAFETY: non-NULL and writable (the caller's contract).
                    unsafe { put(offset, at) };
                }
                0
            }
            Err(e) => fail_io(&e),
        }
    })
}

fn to_c_stat(st: &pov_host::Stat) -> pov_stat {
    pov_stat { size: st.size, mtime_ns: st.mtime_ns, mode: st.mode, kind: kind(st.kind) }
}

fn kind(k: Kind) -> u32 {
    match k {
        Kind::File => POV_KIND_FILE,
        Kind::Dir => POV_KIND_DIR,
    }
}

/// Attributes of an open file, into `*out`.
///
/// # Safety
/// `f` is a file handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pov_file_stat(f: *const PovFile, out: *mut pov_stat) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: the caller's contract (above).
        let f = match unsafe { handle(f, "file") } {
            Ok(f) => f,
            Err(e) => return e,
        };
        if out.is_null() {
            return null_out("out");
        }
        match f.0.stat() {
            // SAFETY: non-NULL and writable.
            Ok(st) => unsafe {
                put(out, to_c_stat(&st));
                0
            },
            Err(e) => fail_io(&e),
        }
    })
}

/// Sets the file's size to `size` bytes (cuts or extends with zeros).
///
/// # Safety
/// `f` is a file handle.
#[no_mangle]
pub unsafe extern "C" fn pov_file_truncate(f: *const PovFile, size: u64) -> c_int {
    // SAFETY: the caller's contract (above).
    guard(-libc::EIO, || match unsafe { handle(f, "file") } {
        Ok(f) => status(f.0.set_len(size)),
        Err(e) => e,
    })
}

/// Makes the file's data durable on the backend (`fsync`).
///
/// # Safety
/// `f` is a file handle.
#[no_mangle]
pub unsafe extern "C" fn pov_file_sync(f: *const PovFile) -> c_int {
    // SAFETY: the caller's contract (above).
    guard(-libc::EIO, || match unsafe { handle(f, "file") } {
        Ok(f) => status(f.0.sync()),
        Err(e) => e,
    })
}

/// Closes a file and frees the handle, also when closing fails (NULL: returns 0).
///
/// # Safety
/// `f` is NULL or a handle from `pov_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn pov_file_close(f: *mut PovFile) -> c_int {
    if f.is_null() {
        return 0;
    }
    // SAFETY: a handle from pov_open (Box::into_raw), freed once.
    let f = unsafe { Box::from_raw(f) };
    guard(-libc::EIO, move || status(f.0.close()))
}

/// Runs `op` on a session and a path argument, for the namespace calls.
///
/// Safety: `s` is NULL or a session handle; `path` NULL or NUL-terminated.
unsafe fn on_path(s: *const PovSession, path: *const c_char, op: impl FnOnce(&Session, &str) -> c_int) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: the caller's contract (above).
        match unsafe { (handle(s, "session"), str_arg(path, "path")) } {
            (Ok(s), Ok(p)) => op(&s.0, p),
            (Err(e), _) | (_, Err(e)) => e,
        }
    })
}

/// Attributes of the file or directory at `path`, into `*out`.
///
/// Errors: `-ENOENT`, `-EACCES`.
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pov_stat(s: *const PovSession, path: *const c_char, out: *mut pov_stat) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe {
        on_path(s, path, |s, p| {
            if out.is_null() {
                return null_out("out");
            }
            match s.stat(p) {
                // `out` was checked non-NULL; the caller's contract makes it writable.
                Ok(st) => {
                    put(out, to_c_stat(&st));
                    0
                }
                Err(e) => fail_io(&e),
            }
        })
    }
}

/// Capacity of the storage behind `path`, into `*out`.
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn pov_statfs(s: *const PovSession, path: *const c_char, out: *mut pov_statfs) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe {
        on_path(s, path, |s, p| {
            if out.is_null() {
                return null_out("out");
            }
            match s.statfs(p) {
                // `out` was checked non-NULL; the caller's contract makes it writable.
                Ok(f) => {
                    let c = pov_statfs {
                        block_size: f.block_size,
                        name_max: f.name_max,
                        blocks: f.blocks,
                        blocks_free: f.blocks_free,
                        blocks_available: f.blocks_available,
                        files: f.files,
                        files_free: f.files_free,
                    };
                    put(out, c);
                    0
                }
                Err(e) => fail_io(&e),
            }
        })
    }
}

/// Calls `cb(ctx, entry)` for each entry of the directory at `path`, in the device's
/// order. Returns 0, a negative errno, or the first non-zero value `cb` returned.
///
/// Errors: `-ENOENT`, `-ENOTDIR`, `-EACCES`.
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated; `cb` a valid function.
#[no_mangle]
pub unsafe extern "C" fn pov_list(s: *const PovSession, path: *const c_char, cb: pov_list_cb, ctx: *mut c_void) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe {
        on_path(s, path, |s, p| {
            let Some(cb) = cb else { return null_out("cb") };
            let entries = match s.list(p) {
                Ok(e) => e,
                Err(e) => return fail_io(&e),
            };
            for e in entries {
                // Names never hold NUL (the protocol refuses them); skip one that would.
                let Ok(name) = std::ffi::CString::new(e.name) else { continue };
                let d = pov_dirent { name: name.as_ptr(), size: e.size, kind: kind(e.kind) };
                // SAFETY: `cb` is a valid function (the caller's contract); `d` and
                // `name` outlive the call.
                let r = cb(ctx, &d);
                if r != 0 {
                    return r;
                }
            }
            0
        })
    }
}

/// Creates the directory `path` with permission bits `mode` (0: the backend's
/// default); with `parents` non-zero, creates missing parents too and succeeds if
/// the directory exists (`mkdir -p`; `mode` is then ignored).
///
/// Errors: `-EEXIST`, `-ENOENT` (a missing parent), `-ENOTDIR`, `-EACCES`.
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pov_mkdir(s: *const PovSession, path: *const c_char, mode: u32, parents: c_int) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe {
        on_path(s, path, |s, p| {
            status(if parents != 0 { s.create_dir_all(p) } else { s.create_dir(p, (mode != 0).then_some(mode)) })
        })
    }
}

/// Removes the file or empty directory at `path`.
///
/// Errors: `-ENOENT`, `-ENOTEMPTY`, `-EACCES`.
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pov_remove(s: *const PovSession, path: *const c_char) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe { on_path(s, path, |s, p| status(s.remove(p))) }
}

/// Renames `from` to `to` in one step (replacing a file at `to` unless
/// `POV_RENAME_NOREPLACE`; durable before returning with `POV_RENAME_SYNC`).
///
/// Errors: `-ENOENT`, `-EEXIST`, `-EISDIR`, `-ENOTDIR`, `-ENOTEMPTY`, `-EINVAL`, `-EACCES`.
///
/// # Safety
/// `s` is a session handle; `from` and `to` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pov_rename(s: *const PovSession, from: *const c_char, to: *const c_char, flags: u32) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe {
        on_path(s, from, |s, from| {
            let to = match str_arg(to, "to") {
                Ok(t) => t,
                Err(e) => return e,
            };
            let r = match flags {
                0 => s.rename(from, to),
                POV_RENAME_NOREPLACE => s.rename_noreplace(from, to),
                POV_RENAME_SYNC => s.rename_sync(from, to),
                _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("rename {from}: unsupported flags {flags:#x}"))),
            };
            status(r)
        })
    }
}

/// Sets the permission bits (`mode`, `0777` at most) and/or the modification time
/// (`mtime_ns`) of `path`; a negative value leaves that attribute alone.
///
/// Errors: `-ENOENT`, `-EACCES`.
///
/// # Safety
/// `s` is a session handle; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pov_set_attr(s: *const PovSession, path: *const c_char, mode: i64, mtime_ns: i64) -> c_int {
    // SAFETY: the caller's contract (above).
    unsafe {
        on_path(s, path, |s, p| {
            if mode > 0o777 {
                return fail(libc::EINVAL, &format!("set attributes of {p}: mode {mode:o} is not a permission mode"));
            }
            status(s.set_attr(p, u32::try_from(mode).ok(), u64::try_from(mtime_ns).ok()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_non_utf8_arguments_are_einval_not_crashes() {
        let mut dev = std::ptr::null_mut();
        // SAFETY: NULL is what is under test; the out pointer is a local.
        assert_eq!(unsafe { pov_device_open(std::ptr::null(), &mut dev) }, -libc::EINVAL);
        let bad = b"/dev/\xff\0";
        // SAFETY: a NUL-terminated byte string.
        assert_eq!(unsafe { pov_device_open(bad.as_ptr().cast(), &mut dev) }, -libc::EINVAL);
        // SAFETY: NULL handles are what is under test.
        unsafe {
            assert_eq!(pov_stat(std::ptr::null(), c"/x".as_ptr(), std::ptr::null_mut()), -libc::EINVAL);
            assert_eq!(pov_file_pread(std::ptr::null(), std::ptr::null_mut(), 0, 0), -libc::EINVAL as i64);
            assert_eq!(pov_file_close(std::ptr::null_mut()), 0);
            assert_eq!(pov_session_close(std::ptr::null_mut()), 0);
            pov_device_close(std::ptr::null_mut());
        }
        // SAFETY: pov_get_error_msg returns this thread's NUL-terminated message.
        let msg = unsafe { CStr::from_ptr(pov_get_error_msg()) };
        assert_eq!(msg.to_str().unwrap(), "file is NULL");
        // SAFETY: a missing device file: open fails cleanly.
        let r = unsafe { pov_device_open(c"/nonexistent/pov-dev".as_ptr(), &mut dev) };
        assert!(r < 0, "{r}");
        assert!(dev.is_null());
    }
}
