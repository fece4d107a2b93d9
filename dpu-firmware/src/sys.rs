//! The raw OS calls of this crate: the one module with `unsafe` code.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The effective user ID of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// File descriptors that a library took over with `into_raw_fd` and never closes;
/// they are closed when this set is dropped.
///
/// The one user: `vhost-user-backend` 0.24 registers the consumer side of each
/// worker's exit event in the worker's epoll set with `consumer.into_raw_fd()`
/// (`VringEpollHandler::new`) and drops the epoll set without closing it, so every
/// vhost-user client connection left one eventfd open in `pov-dpud` (measured: 400
/// `pov-host stat` runs, 15 → 417 descriptors). The backend records the descriptor
/// when it hands the event out ([`AbandonedFds::record`]); the set lives in the
/// connection's state, which the library's epoll handlers keep alive through their
/// backend clones, so it drops only after the last of them (and its epoll set) is gone.
#[derive(Debug, Default)]
pub(crate) struct AbandonedFds(Mutex<Vec<RawFd>>);

impl AbandonedFds {
    /// Records `fd` to be closed when the set drops. Only for a descriptor whose owner
    /// gives it up with `into_raw_fd` and never closes or uses it once the set drops.
    pub(crate) fn record(&self, fd: RawFd) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(fd);
    }
}

impl Drop for AbandonedFds {
    fn drop(&mut self) {
        for fd in self.0.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            // SAFETY: `record`'s contract: `fd` was given up with `into_raw_fd` by its
            // only owner, which never closes it and no longer uses it now (the epoll
            // handlers that registered it are gone: they held this set alive), so this
            // number still names that descriptor and nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}
