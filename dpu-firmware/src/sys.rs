//! Signal handling for clean shutdown: the only `unsafe` code of the crate.
//!
//! SIGINT and SIGTERM are blocked in the main thread before any other thread starts
//! (threads inherit the mask), then the main thread waits for them with `sigwait`, so
//! no signal handler ever runs.

use std::io;

fn termination_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; the all-zero value is a valid argument for
    // sigemptyset, which initialises it; sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigemptyset(&mut set) != 0
            || libc::sigaddset(&mut set, libc::SIGINT) != 0
            || libc::sigaddset(&mut set, libc::SIGTERM) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts
/// afterwards. Call it first thing in `main`.
///
/// # Errors
/// The error of `pthread_sigmask`.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set()?;
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed;
    // pthread_sigmask only changes the calling thread's mask.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM is pending and returns its number. The signals must
/// be blocked ([`block_termination_signals`]).
///
/// # Errors
/// The error of `sigwait`.
pub fn wait_termination_signal() -> io::Result<i32> {
    let set = termination_set()?;
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place for the result.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(sig)
}
