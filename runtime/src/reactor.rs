//! Reactors and pollers (the SPDK event-framework shape).
//!
//! A [`Runtime`] starts one [`Reactor`] thread per configured core. Work runs in
//! [`Poller`]s registered on a reactor; other threads talk to a reactor only by sending
//! it messages ([`ReactorHandle::send`]), which run on the reactor thread with a
//! [`ReactorContext`]. State owned by a reactor's pollers is therefore never shared
//! and needs no locks (SPDK's per-thread IO channels).
//!
//! **Adaptive polling.** Each loop iteration runs every poller once. While any poller
//! reports [`PollStatus::Busy`] the reactor keeps spinning. Once no poller has been
//! busy for [`ReactorConfig::idle_window`], the reactor asks every poller to
//! [`prepare_sleep`](Poller::prepare_sleep) (re-arm notifications; a poller that finds
//! work vetoes the sleep) and then sleeps in `epoll_wait` on its eventfd, on every
//! descriptor registered with [`ReactorContext::watch_fd`], and until the earliest
//! [`Poller::deadline`] (at most [`ReactorConfig::max_sleep`]).

use crate::sys::{pin_current_thread, thread_cpu_time, Epoll, EventFd, Interest};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one call of [`Poller::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// The poller did work; keep polling.
    Busy,
    /// Nothing to do.
    Idle,
}

/// A unit of work run repeatedly by a reactor.
pub trait Poller: Any {
    /// Name shown by `framework_get_reactors`.
    fn name(&self) -> String;

    /// Does whatever work is ready, without blocking.
    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus;

    /// Called before the reactor sleeps: re-arm notifications (e.g. enable virtqueue
    /// notifications). Returns `true` if work turned up, which cancels the sleep.
    fn prepare_sleep(&mut self, _ctx: &mut ReactorContext) -> bool {
        false
    }

    /// The next instant this poller must run even if nothing wakes the reactor
    /// (timers, timeouts). `None`: no deadline.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Called once when the poller is removed or the reactor stops.
    fn on_unregister(&mut self, _ctx: &mut ReactorContext) {}
}

/// Identifies a poller on its reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PollerId(pub u64);

/// Tuning of a reactor's adaptive polling.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// How long the reactor keeps spinning after the last busy poll.
    pub idle_window: Duration,
    /// Longest single sleep (bounds the delay of a missed notification).
    pub max_sleep: Duration,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig { idle_window: Duration::from_micros(100), max_sleep: Duration::from_millis(100) }
    }
}

type Msg = Box<dyn FnOnce(&mut ReactorContext) + Send>;

/// Counters of one reactor, readable from any thread.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Loop iterations in which some poller was busy.
    pub busy_iterations: AtomicU64,
    /// Loop iterations in which no poller was busy.
    pub idle_iterations: AtomicU64,
    /// Wall time spent in busy iterations, ns (SPDK's `busy` ticks at a tick rate of
    /// 10⁹/s).
    pub busy_ns: AtomicU64,
    /// Wall time spent otherwise: idle iterations and sleeping, ns (SPDK's `idle`).
    pub idle_ns: AtomicU64,
    /// Times the reactor went to sleep.
    pub sleeps: AtomicU64,
    /// Messages executed.
    pub messages: AtomicU64,
    /// CPU time of the reactor thread, µs (updated before each sleep).
    pub cpu_time_us: AtomicU64,
    /// The registered pollers, in the order they run.
    pub pollers: Mutex<Vec<PollerStats>>,
}

/// One registered poller as [`ReactorStats`] shows it.
#[derive(Debug, Clone)]
pub struct PollerStats {
    /// [`Poller::name`].
    pub name: String,
    /// Its counters, updated by the reactor.
    pub counters: Arc<PollerCounters>,
}

/// Counters of one poller (SPDK's `run_count` and `busy_count`).
#[derive(Debug, Default)]
pub struct PollerCounters {
    /// Times it was polled.
    pub runs: AtomicU64,
    /// Times it reported work ([`PollStatus::Busy`]).
    pub busy: AtomicU64,
}

/// A poller with its id and counters, as the reactor holds it.
struct Registered {
    id: PollerId,
    poller: Box<dyn Poller>,
    counters: Arc<PollerCounters>,
}

/// A cloneable, `Send` handle to a reactor.
#[derive(Clone)]
pub struct ReactorHandle {
    id: u32,
    core: Option<usize>,
    tx: Sender<Msg>,
    waker: Arc<EventFd>,
    stats: Arc<ReactorStats>,
}

impl std::fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorHandle").field("id", &self.id).field("core", &self.core).finish()
    }
}

impl ReactorHandle {
    /// The reactor's index (0-based).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The CPU the reactor is pinned to, if any.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Runs `f` on the reactor thread. Returns `false` if the reactor has stopped.
    pub fn send(&self, f: impl FnOnce(&mut ReactorContext) + Send + 'static) -> bool {
        let ok = self.tx.send(Box::new(f)).is_ok();
        self.waker.notify();
        ok
    }

    /// Runs `f` on the reactor thread and waits for its result. Returns `None` if the
    /// reactor stopped before running it. Must not be called from the reactor itself.
    pub fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut ReactorContext) -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.send(move |ctx| {
            let _ = tx.send(f(ctx));
        }) {
            return None;
        }
        rx.recv().ok()
    }

    /// Wakes the reactor if it sleeps (e.g. a virtqueue was kicked).
    pub fn wake(&self) {
        self.waker.notify();
    }

    /// The reactor's counters.
    pub fn stats(&self) -> &ReactorStats {
        &self.stats
    }
}

/// What a poller or message sees of its reactor.
pub struct ReactorContext {
    id: u32,
    epoll: Epoll,
    waker: Arc<EventFd>,
    next_id: u64,
    added: Vec<Registered>,
    removed: Vec<PollerId>,
    pollers: Vec<Registered>,
    handle: Option<ReactorHandle>,
    stop: bool,
}

impl ReactorContext {
    /// The reactor's index.
    pub fn reactor_id(&self) -> u32 {
        self.id
    }

    /// A handle to this reactor (to give to other threads).
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone().expect("handle is set before the loop starts")
    }

    /// Registers a poller; it runs from the next loop iteration on.
    pub fn add_poller(&mut self, p: Box<dyn Poller>) -> PollerId {
        self.next_id += 1;
        let id = PollerId(self.next_id);
        self.added.push(Registered { id, poller: p, counters: Arc::default() });
        id
    }

    /// Unregisters a poller (its [`Poller::on_unregister`] runs).
    pub fn remove_poller(&mut self, id: PollerId) {
        self.removed.push(id);
    }

    /// Borrows a registered poller as its concrete type.
    pub fn poller_mut<T: Poller>(&mut self, id: PollerId) -> Option<&mut T> {
        let p = self.pollers.iter_mut().chain(self.added.iter_mut()).find(|r| r.id == id).map(|r| &mut r.poller)?;
        (p.as_mut() as &mut dyn Any).downcast_mut::<T>()
    }

    /// Wakes the reactor's sleep when `fd` becomes readable.
    pub fn watch_fd(&mut self, fd: RawFd) {
        self.watch_fd_for(fd, Interest::Read)
    }

    /// Wakes the reactor's sleep when `fd` becomes ready for `interest`; watching a
    /// descriptor again replaces its interest.
    pub fn watch_fd_for(&mut self, fd: RawFd, interest: Interest) {
        if let Err(e) = self.epoll.add(fd, fd as u64, interest) {
            log::warn!("reactor {}: cannot watch fd {fd}: {e}", self.id);
        }
    }

    /// Stops watching `fd` (call before closing it).
    pub fn unwatch_fd(&mut self, fd: RawFd) {
        self.epoll.remove(fd);
    }

    /// Asks the reactor loop to stop after this iteration.
    pub fn stop(&mut self) {
        self.stop = true;
    }

    fn apply_changes(&mut self, stats: &ReactorStats) {
        if self.added.is_empty() && self.removed.is_empty() {
            return;
        }
        let added = std::mem::take(&mut self.added);
        self.pollers.extend(added);
        let removed = std::mem::take(&mut self.removed);
        for id in removed {
            if let Some(pos) = self.pollers.iter().position(|r| r.id == id) {
                let mut r = self.pollers.remove(pos);
                r.poller.on_unregister(self);
            }
        }
        *stats.pollers.lock().unwrap_or_else(|e| e.into_inner()) =
            self.pollers.iter().map(|r| PollerStats { name: r.poller.name(), counters: r.counters.clone() }).collect();
    }
}

/// Something that can watch descriptors for the reactor's sleep. Implemented by
/// [`ReactorContext`]; `()` ignores every call (for tests that poll by hand).
pub trait FdRegistry {
    /// Wake the reactor when `fd` is readable.
    fn watch(&mut self, fd: RawFd) {
        self.watch_for(fd, Interest::Read)
    }
    /// Wake the reactor when `fd` is ready for `interest` (replaces an earlier
    /// interest in the same descriptor).
    fn watch_for(&mut self, fd: RawFd, interest: Interest);
    /// Stop watching `fd`.
    fn unwatch(&mut self, fd: RawFd);
}

impl FdRegistry for ReactorContext {
    fn watch_for(&mut self, fd: RawFd, interest: Interest) {
        self.watch_fd_for(fd, interest)
    }
    fn unwatch(&mut self, fd: RawFd) {
        self.unwatch_fd(fd)
    }
}

impl FdRegistry for () {
    fn watch_for(&mut self, _fd: RawFd, _interest: Interest) {}
    fn unwatch(&mut self, _fd: RawFd) {}
}

/// One reactor: a thread running pollers and messages.
pub struct Reactor {
    ctx: ReactorContext,
    rx: Receiver<Msg>,
    cfg: ReactorConfig,
    stats: Arc<ReactorStats>,
    shutdown: Arc<AtomicBool>,
}

impl Reactor {
    fn run(mut self) {
        let waker_fd = self.ctx.waker.as_raw_fd();
        if let Err(e) = self.ctx.epoll.add(waker_fd, u64::MAX, Interest::Read) {
            log::error!("reactor {}: epoll: {e}", self.ctx.id);
            return;
        }
        let mut last_busy = Instant::now();
        // Start of the span not yet counted as busy or idle time.
        let mut mark = last_busy;
        loop {
            let mut busy = false;
            while let Ok(m) = self.rx.try_recv() {
                m(&mut self.ctx);
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                busy = true;
            }
            self.ctx.apply_changes(&self.stats);
            let mut pollers = std::mem::take(&mut self.ctx.pollers);
            for r in pollers.iter_mut() {
                r.counters.runs.fetch_add(1, Ordering::Relaxed);
                if r.poller.poll(&mut self.ctx) == PollStatus::Busy {
                    r.counters.busy.fetch_add(1, Ordering::Relaxed);
                    busy = true;
                }
            }
            pollers.append(&mut self.ctx.pollers);
            self.ctx.pollers = pollers;
            self.ctx.apply_changes(&self.stats);
            if self.ctx.stop || self.shutdown.load(Ordering::Acquire) {
                break;
            }
            let now = Instant::now();
            let span = u64::try_from(now.duration_since(mark).as_nanos()).unwrap_or(u64::MAX);
            mark = now;
            if busy {
                self.stats.busy_iterations.fetch_add(1, Ordering::Relaxed);
                self.stats.busy_ns.fetch_add(span, Ordering::Relaxed);
                last_busy = now;
                continue;
            }
            self.stats.idle_iterations.fetch_add(1, Ordering::Relaxed);
            self.stats.idle_ns.fetch_add(span, Ordering::Relaxed);
            if now.duration_since(last_busy) < self.cfg.idle_window {
                // Yield rather than spin: on a shared CPU a spinning reactor starves
                // the very client whose next request it waits for.
                std::thread::yield_now();
                continue;
            }
            // Idle long enough: arm notifications, then sleep unless work appeared.
            let mut pollers = std::mem::take(&mut self.ctx.pollers);
            let mut vetoed = false;
            let mut deadline = now + self.cfg.max_sleep;
            for r in pollers.iter_mut() {
                vetoed |= r.poller.prepare_sleep(&mut self.ctx);
                if let Some(d) = r.poller.deadline() {
                    deadline = deadline.min(d);
                }
            }
            pollers.append(&mut self.ctx.pollers);
            self.ctx.pollers = pollers;
            if vetoed || !self.rx.is_empty() {
                last_busy = Instant::now();
                continue;
            }
            self.stats.cpu_time_us.store(thread_cpu_time().as_micros() as u64, Ordering::Relaxed);
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            let timeout = deadline.saturating_duration_since(Instant::now());
            let woken = !timeout.is_zero() && self.ctx.epoll.wait(timeout) > 0;
            self.ctx.waker.drain();
            let now = Instant::now();
            self.stats
                .idle_ns
                .fetch_add(u64::try_from(now.duration_since(mark).as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            mark = now;
            if woken {
                // Something arrived: poll for a window, new work tends to come in bursts.
                last_busy = Instant::now();
            }
            // On a plain timeout the pollers run once and, if idle, the reactor sleeps
            // again at once.
        }
        let mut pollers = std::mem::take(&mut self.ctx.pollers);
        for r in pollers.iter_mut() {
            r.poller.on_unregister(&mut self.ctx);
        }
    }
}

/// A set of running reactors.
pub struct Runtime {
    handles: Vec<ReactorHandle>,
    threads: Vec<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
}

impl Runtime {
    /// Starts one reactor per entry of `cores`: `Some(cpu)` pins the reactor to that
    /// CPU, `None` leaves it unpinned. At least one reactor is started.
    pub fn start(cores: &[Option<usize>], cfg: ReactorConfig) -> std::io::Result<Runtime> {
        let cores: Vec<Option<usize>> = if cores.is_empty() { vec![None] } else { cores.to_vec() };
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for (i, core) in cores.iter().enumerate() {
            let (tx, rx) = unbounded();
            let waker = Arc::new(EventFd::new()?);
            let stats = Arc::new(ReactorStats::default());
            let handle = ReactorHandle { id: i as u32, core: *core, tx, waker: waker.clone(), stats: stats.clone() };
            let epoll = Epoll::new()?;
            let (cfg, shutdown2, h2) = (cfg.clone(), shutdown.clone(), handle.clone());
            let core = *core;
            let t = std::thread::Builder::new().name(format!("reactor_{i}")).spawn(move || {
                if let Some(cpu) = core {
                    if let Err(e) = pin_current_thread(cpu) {
                        log::warn!("reactor {i}: cannot pin to CPU {cpu}: {e}");
                    }
                }
                let ctx = ReactorContext {
                    id: i as u32,
                    epoll,
                    waker,
                    next_id: 0,
                    added: Vec::new(),
                    removed: Vec::new(),
                    pollers: Vec::new(),
                    handle: Some(h2),
                    stop: false,
                };
                Reactor { ctx, rx, cfg, stats, shutdown: shutdown2 }.run()
            })?;
            handles.push(handle);
            threads.push(t);
        }
        Ok(Runtime { handles, threads, shutdown })
    }

    /// Handles of all reactors, in order.
    pub fn reactors(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// Stops every reactor (pollers get [`Poller::on_unregister`]) and joins them.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        for h in &self.handles {
            h.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter {
        left: usize,
        hits: Arc<AtomicUsize>,
    }
    impl Poller for Counter {
        fn name(&self) -> String {
            "counter".into()
        }
        fn poll(&mut self, _ctx: &mut ReactorContext) -> PollStatus {
            if self.left == 0 {
                return PollStatus::Idle;
            }
            self.left -= 1;
            self.hits.fetch_add(1, Ordering::Relaxed);
            PollStatus::Busy
        }
    }

    #[test]
    fn runs_pollers_and_messages_then_sleeps() {
        let rt = Runtime::start(&[None], ReactorConfig::default()).unwrap();
        let r = rt.reactors()[0].clone();
        let hits = Arc::new(AtomicUsize::new(0));
        let h2 = hits.clone();
        let id = r.call(move |ctx| ctx.add_poller(Box::new(Counter { left: 1000, hits: h2 }))).unwrap();
        let t = Instant::now();
        while hits.load(Ordering::Relaxed) < 1000 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(hits.load(Ordering::Relaxed), 1000);
        let left = r.call(move |ctx| ctx.poller_mut::<Counter>(id).map(|c| c.left)).unwrap();
        assert_eq!(left, Some(0));
        // Idle now: the reactor must sleep rather than spin.
        std::thread::sleep(Duration::from_millis(300));
        let s0 = r.stats().idle_iterations.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        let s1 = r.stats().idle_iterations.load(Ordering::Relaxed);
        assert!(s1 - s0 < 100, "idle reactor spun {} times in 300 ms", s1 - s0);
        assert!(r.stats().sleeps.load(Ordering::Relaxed) > 0);
        let pollers = r.stats().pollers.lock().unwrap().clone();
        assert_eq!(pollers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["counter"]);
        let (runs, busy) = (pollers[0].counters.runs.load(Ordering::Relaxed), pollers[0].counters.busy.load(Ordering::Relaxed));
        assert_eq!(busy, 1000);
        assert!(runs > busy, "idle polls are runs too: {runs}");
        // Busy and idle time add up to about the reactor's life (600 ms of it idle).
        let (b, i) = (r.stats().busy_ns.load(Ordering::Relaxed), r.stats().idle_ns.load(Ordering::Relaxed));
        assert!(b > 0 && i >= 500_000_000, "busy {b} ns, idle {i} ns");
        assert!(b + i < t.elapsed().as_nanos() as u64 + 50_000_000, "busy {b} + idle {i} ns exceed the wall time");
        rt.shutdown();
        assert!(!r.send(|_| {}));
    }

    struct Timer {
        at: Instant,
        fired: Arc<AtomicBool>,
    }
    impl Poller for Timer {
        fn name(&self) -> String {
            "timer".into()
        }
        fn poll(&mut self, _ctx: &mut ReactorContext) -> PollStatus {
            if Instant::now() >= self.at && !self.fired.swap(true, Ordering::Relaxed) {
                return PollStatus::Busy;
            }
            PollStatus::Idle
        }
        fn deadline(&self) -> Option<Instant> {
            Some(self.at)
        }
    }

    #[test]
    fn deadline_wakes_sleeping_reactor() {
        let cfg = ReactorConfig { idle_window: Duration::from_micros(50), max_sleep: Duration::from_secs(30) };
        let rt = Runtime::start(&[None], cfg).unwrap();
        let fired = Arc::new(AtomicBool::new(false));
        let f2 = fired.clone();
        let at = Instant::now() + Duration::from_millis(50);
        rt.reactors()[0].send(move |ctx| {
            ctx.add_poller(Box::new(Timer { at, fired: f2 }));
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(fired.load(Ordering::Relaxed), "deadline did not wake the reactor");
    }
}
