//! Thin, safe wrappers over the Linux system calls the runtime needs: `eventfd`,
//! `epoll` and `sched_setaffinity`. All `unsafe` code of this crate lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking eventfd used to wake a sleeping reactor.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd with count 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1 to the counter, waking any epoll waiter. Never blocks.
    pub fn notify(&self) {
        let v: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own fd. EAGAIN (counter at
        // its maximum) still leaves the fd readable, which is all a waker needs.
        unsafe { libc::write(self.0.as_raw_fd(), &v as *const u64 as *const libc::c_void, 8) };
    }

    /// Resets the counter to 0. Returns the count that was there.
    pub fn drain(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN leaves it 0.
        let n = unsafe { libc::read(self.0.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance watching descriptors for readability (level-triggered).
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// Creates a close-on-exec epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; result checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability; `token` comes back from [`Epoll::wait`].
    /// Adding a descriptor twice is not an error.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is a valid epoll_event that outlives the call.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Stops watching `fd`. Removing an unknown descriptor is not an error.
    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid pointer; errors (ENOENT, EBADF) are ignored on purpose.
        unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Waits up to `timeout` for any watched descriptor to become readable. Returns
    /// the number of ready descriptors (0 on timeout or EINTR).
    pub fn wait(&self, timeout: Duration) -> usize {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // A sub-millisecond timeout rounds up so that a short sleep is not a busy spin.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: `evs` is a live array of 16 events and we pass its length.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 16, ms) };
        n.max(0) as usize
    }
}

/// Pins the calling thread to CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU index out of range"));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pointer and size describe `set`; pid 0 means the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user + system) consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn eventfd_wakes_epoll() {
        let e = EventFd::new().unwrap();
        let p = Epoll::new().unwrap();
        p.add(e.as_raw_fd(), 7).unwrap();
        let t = Instant::now();
        assert_eq!(p.wait(Duration::from_millis(20)), 0);
        assert!(t.elapsed() >= Duration::from_millis(15));
        e.notify();
        assert_eq!(p.wait(Duration::from_secs(5)), 1);
        assert_eq!(e.drain(), 1);
        assert_eq!(e.drain(), 0);
    }
}
