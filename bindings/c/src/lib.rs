//! The PoV host library's C ABI: `libpov.so` / `libpov.a` with the header
//! `include/pov.h` (generated from [`ffi`] by cbindgen at build time; `build.rs` fails
//! the build if the committed header is stale).
//!
//! The C API is a thin layer over [`pov_host`]: a `pov_device` is a
//! [`pov_host::Device`], a `pov_session` a [`pov_host::Session`], a `pov_file` a
//! [`pov_host::File`]. Conventions (libblkio's):
//! * functions returning `int` return 0 or a negative errno (`-ENOENT`, `-EACCES`, ...;
//!   [`pov_host::errno_of`]: the device's PoV status first, then the OS error, then
//!   the error's kind, `-EIO` for transport failures);
//! * functions returning `int64_t` return a byte count or a negative errno;
//! * after a failure, `pov_get_error_msg()` returns a message for the calling thread's
//!   last failed call (with its causes, `: `-separated), valid until that thread's next
//!   failed call;
//! * a NULL handle or pointer, or a path that is not UTF-8, is `-EINVAL`, never a crash;
//!   a panic inside the library is caught and returned as `-EIO` (never unwinds into C);
//! * every handle may be used from several threads at once; its close function frees
//!   it (also when closing fails), after which it must not be used.
//!
//! This module holds the safe part: the handle types, the error state and the
//! conversions; every `unsafe` block of the crate is in [`ffi`].

use std::cell::RefCell;
use std::ffi::CString;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod ffi;

/// An open PoV device (`Device::open`'s spec: `/dev/vdX` or `vhost-user:PATH`).
pub struct PovDevice(pub pov_host::Device);

/// An open session of a tenant on a device.
pub struct PovSession(pub pov_host::Session);

/// An open file of a session.
pub struct PovFile(pub pov_host::File);

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `msg` as this thread's last error (interior NULs become spaces).
pub fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// A pointer to this thread's last error message (empty if none); valid until this
/// thread's next failed call.
pub fn last_error_ptr() -> *const libc::c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A failed call: the negative errno to return, its message recorded.
pub fn fail(errno: i32, msg: &str) -> i32 {
    set_error(msg);
    -errno.abs().max(1)
}

/// The negative errno for `e`, with its whole chain recorded as the message.
pub fn fail_io(e: &io::Error) -> i32 {
    fail(pov_host::errno_of(e), &pov_host::error::Chain(e).to_string())
}

/// As [`fail_io`] for a setup error.
pub fn fail_setup(e: pov_host::Error) -> i32 {
    let msg = pov_host::error::Chain(&e).to_string();
    fail(pov_host::errno_of(&io::Error::from(e)), &msg)
}

/// Runs `f`, turning a panic into `-EIO` (a panic must not unwind into C).
pub fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            set_error("internal error in libpov (a bug: please report it)");
            on_panic
        }
    }
}

/// `0` or the negative errno of `r`.
pub fn status(r: io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => fail_io(&e),
    }
}

/// The byte count of `r` or its negative errno.
pub fn count(r: io::Result<usize>) -> i64 {
    match r {
        Ok(n) => n as i64,
        Err(e) => fail_io(&e) as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_record_the_message_and_return_a_negative_errno() {
        let e = io::Error::new(io::ErrorKind::NotFound, "stat /x: no such file");
        assert_eq!(fail_io(&e), -libc::ENOENT);
        let msg = LAST_ERROR.with(|m| m.borrow().clone().into_string().unwrap());
        assert_eq!(msg, "stat /x: no such file");
        assert_eq!(fail(0, "zero is still a failure"), -1);
        assert_eq!(count(Ok(7)), 7);
        assert_eq!(count(Err(io::Error::from_raw_os_error(libc::ENOSPC))), -(libc::ENOSPC as i64));
        assert_eq!(guard(-5, || panic!("boom")), -5);
    }
}
