//! Safe wrappers, on `rustix`, over the Linux calls the runtime needs: `eventfd`,
//! `epoll`, `poll`, `sched_setaffinity` and the thread CPU clock. The crate's only
//! `unsafe` code (borrowing a raw descriptor a caller registers) lives here.

use rustix::event::{epoll, eventfd, EventfdFlags, PollFd, PollFlags, Timespec};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a watched descriptor must become for the reactor to wake up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interest {
    /// Readable (data or a pending connection arrived, or the peer closed).
    Read,
    /// Writable (e.g. a non-blocking `connect(2)` finished, or a full socket drained).
    Write,
    /// Readable or writable (a connection that waits for requests and for room to
    /// send its answers).
    ReadWrite,
}

impl Interest {
    fn epoll_flags(self) -> epoll::EventFlags {
        match self {
            Interest::Read => epoll::EventFlags::IN,
            Interest::Write => epoll::EventFlags::OUT,
            Interest::ReadWrite => epoll::EventFlags::IN | epoll::EventFlags::OUT,
        }
    }

    fn poll_flags(self) -> PollFlags {
        match self {
            Interest::Read => PollFlags::IN,
            Interest::Write => PollFlags::OUT,
            Interest::ReadWrite => PollFlags::IN | PollFlags::OUT,
        }
    }
}

/// A non-blocking eventfd used to wake a sleeping reactor.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd with count 0.
    ///
    /// # Errors
    /// The `eventfd(2)` error (e.g. out of descriptors).
    pub fn new() -> io::Result<EventFd> {
        Ok(EventFd(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?))
    }

    /// Adds 1 to the counter, waking any epoll waiter. Never blocks: `EAGAIN` (counter
    /// at its maximum) still leaves the descriptor readable, which is all a waker needs.
    pub fn notify(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Resets the counter to 0. Returns the count that was there.
    pub fn drain(&self) -> u64 {
        let mut v = [0u8; 8];
        match rustix::io::read(&self.0, &mut v) {
            Ok(8) => u64::from_ne_bytes(v),
            _ => 0,
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Borrows a descriptor a caller registered by number.
fn borrow(fd: RawFd) -> io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: every caller passes the borrow to one system call (`epoll_ctl`, `poll`)
    // made right away by this module and drops it after: the kernel checks the number
    // (EBADF for a closed one) and keeps no reference to our borrow; callers unwatch
    // a descriptor before closing it.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// An epoll instance watching descriptors (level-triggered).
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// Creates a close-on-exec epoll instance.
    ///
    /// # Errors
    /// The `epoll_create1(2)` error.
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll(epoll::create(epoll::CreateFlags::CLOEXEC)?))
    }

    /// Watches `fd` for `interest`; `token` comes back from [`Epoll::wait`]. Watching a
    /// descriptor again replaces its interest (it is never an error).
    ///
    /// # Errors
    /// The `epoll_ctl(2)` error (e.g. `EBADF`).
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let f = borrow(fd)?;
        let data = epoll::EventData::new_u64(token);
        match epoll::add(&self.0, f, data, interest.epoll_flags()) {
            Err(e) if e == rustix::io::Errno::EXIST => Ok(epoll::modify(&self.0, f, data, interest.epoll_flags())?),
            r => Ok(r?),
        }
    }

    /// Stops watching `fd`. Removing an unknown descriptor is not an error.
    pub fn remove(&self, fd: RawFd) {
        if let Ok(f) = borrow(fd) {
            let _ = epoll::delete(&self.0, f);
        }
    }

    /// Waits up to `timeout` for any watched descriptor to become ready. Returns the
    /// number of ready descriptors (0 on timeout or EINTR).
    pub fn wait(&self, timeout: Duration) -> usize {
        let mut events = Vec::with_capacity(16);
        // A sub-millisecond timeout rounds up so that a short sleep is not a busy spin.
        let timeout = if timeout < Duration::from_millis(1) && !timeout.is_zero() { Duration::from_millis(1) } else { timeout };
        let ts = timespec(timeout);
        let n: io::Result<usize> =
            epoll::wait(&self.0, rustix::buffer::spare_capacity(&mut events), Some(&ts)).map_err(Into::into);
        n.unwrap_or(0)
    }
}

impl Epoll {
    /// Waits up to `timeout` (zero: does not wait) and appends the tokens of the ready
    /// descriptors to `tokens` (at most 64 per call; level-triggered, so the rest
    /// come back at the next call). EINTR and errors append nothing.
    pub fn ready_tokens(&self, timeout: Duration, tokens: &mut Vec<u64>) {
        let mut events = Vec::with_capacity(64);
        let ts = timespec(timeout);
        if epoll::wait(&self.0, rustix::buffer::spare_capacity(&mut events), Some(&ts)).is_ok() {
            tokens.extend(events.iter().map(|e| e.data.u64()));
        }
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn timespec(d: Duration) -> Timespec {
    // Capped at 2^31 ms: older kernels refuse longer epoll timeouts.
    let d = d.min(Duration::from_millis(i32::MAX as u64));
    Timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ }
}

/// Waits up to `timeout` until `fd` is ready for `interest` (or has an error or hang-up
/// pending). Returns `true` if it is. Blocks the caller: never call it on a reactor.
///
/// # Errors
/// The `poll(2)` error.
pub fn wait_fd(fd: BorrowedFd<'_>, interest: Interest, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(&fd, interest.poll_flags())];
    let ts = timespec(timeout);
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(e) if e == rustix::io::Errno::INTR => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`wait_fd`] for a descriptor known by number (e.g. one a connection attempt
/// reported); `EBADF` for a negative one.
///
/// # Errors
/// As [`wait_fd`].
pub fn wait_raw_fd(fd: RawFd, interest: Interest, timeout: Duration) -> io::Result<bool> {
    wait_fd(borrow(fd)?, interest, timeout)
}

/// Pins the calling thread to CPU `cpu`.
///
/// # Errors
/// `InvalidInput` for a CPU index the kernel's CPU set cannot hold; the
/// `sched_setaffinity(2)` error (e.g. `EINVAL` for an offline CPU).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU index out of range"));
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// The CPUs the calling thread may run on (`sched_getaffinity(2)`), ascending.
///
/// # Errors
/// The system call's.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// CPU time (user + system) consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Makes closing stream socket `fd` abort the connection: `SO_LINGER` on with a zero
/// timeout, so `close` discards unsent data and sends a TCP RST at once instead of a
/// FIN queued behind that data (which a peer with a full receive window would see only
/// after reading everything before it).
///
/// Errors: `setsockopt` fails (not a socket).
pub fn abort_on_close(fd: RawFd) -> io::Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `l` is a valid `linger` for the duration of the call and its size is
    // passed; setsockopt on a non-socket fd only returns an error.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn eventfd_wakes_epoll() {
        let e = EventFd::new().unwrap();
        let p = Epoll::new().unwrap();
        p.add(e.as_raw_fd(), 7, Interest::Read).unwrap();
        p.add(e.as_raw_fd(), 7, Interest::Read).unwrap();
        let t = Instant::now();
        assert_eq!(p.wait(Duration::from_millis(20)), 0);
        assert!(t.elapsed() >= Duration::from_millis(15));
        e.notify();
        assert_eq!(p.wait(Duration::from_secs(5)), 1);
        assert_eq!(e.drain(), 1);
        assert_eq!(e.drain(), 0);
        // An eventfd is always writable: switching the interest wakes at once.
        p.add(e.as_raw_fd(), 7, Interest::Write).unwrap();
        assert_eq!(p.wait(Duration::from_secs(5)), 1);
        p.add(e.as_raw_fd(), 7, Interest::ReadWrite).unwrap();
        assert_eq!(p.wait(Duration::from_secs(5)), 1);
        assert!(wait_fd(e.as_fd(), Interest::ReadWrite, Duration::ZERO).unwrap());
        p.remove(e.as_raw_fd());
        assert_eq!(p.wait(Duration::from_millis(1)), 0);
        assert!(p.add(-1, 1, Interest::Read).is_err());
    }

    #[test]
    fn wait_fd_and_cpu_clock() {
        let e = EventFd::new().unwrap();
        assert!(!wait_fd(e.as_fd(), Interest::Read, Duration::from_millis(5)).unwrap());
        e.notify();
        assert!(wait_fd(e.as_fd(), Interest::Read, Duration::from_secs(5)).unwrap());
        let t0 = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > t0);
        assert!(pin_current_thread(usize::MAX).is_err());
    }
}
