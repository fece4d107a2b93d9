//! The proxy's QoS stage (paper §4.5, full-path QoS; `docs/qos.md`): requests wait in
//! per-connection, per-tenant, per-class queues in front of the backend's worker pool,
//! latency-critical (LC) first, and a **PID controller** sets how many
//! bandwidth-critical (BC) requests may be outstanding at the backend so that LC
//! latency stays on target while BC work uses the rest.
//!
//! **Where it acts.** On backends run by a worker pool (Ceph; the local backend with
//! `--workers N`): a request is *outstanding at the backend* from the moment it is
//! handed to the pool until a worker finishes it. The class is the one in the proxy
//! request header (offset 105), which the DPU sets to the tenant's effective class (its
//! policy applied); the proxy trusts an enrolled DPU for it as it does for the tenant.
//! Each connection queues what it reads in a [`pov_runtime::qos::QosScheduler`] (LC
//! before BC, BC tenants by equal weight); it hands LC requests to the pool at once and
//! BC requests only while fewer than the [window](QosGate::window) are outstanding
//! proxy-wide; workers take LC jobs before BC jobs. On a backend served on the
//! reactors (the local backend without workers) requests run one at a time in arrival
//! order and this stage does nothing.
//!
//! **The controlled latency** is an LC request's time from being handed to the pool to
//! the end of its backend call (queueing for a worker plus the backend's own time): the
//! part of the path this stage can change. Time in the DPU, the network and the
//! connection's queues is not in it (the DPU bounds its BC bytes in flight; an LC
//! request never waits in a connection's queue behind BC work).
//!
//! **The controller** ([`pov_runtime::pid::Pid`]) runs every [`QosConfig::interval`] (100 ms) on the
//! measured percentile (default p99) of the interval's LC latencies `y` against the
//! target `r`: error `e = clamp((r − y) / r, −1, 1)` (normalised, so one gain set suits
//! any target; clamped, so a single outlier interval cannot slam the window), and an
//! interval without LC requests counts as `e = 1` (no LC work: BC may use everything,
//! work-conserving). Output `u` = the BC window in requests, in `[window_min,
//! window_max]`. It is the *velocity* (incremental) form
//! `u_k = clamp(u_{k−1} + Kp·(e_k − e_{k−1}) + Ki·T·e_k + (Kd/T)·(e_k − 2e_{k−1} + e_{k−2}))`,
//! whose state is the output itself, so a saturated controller has nothing wound up:
//! it leaves a bound as soon as the error changes sign (anti-windup by construction).
//! Gains are per unit of the window's range `R = window_max − window_min`: `Ki = 2R/s`
//! (from one bound to the other in 0.5 s at full error: five intervals, slower than the
//! backend's response to a window change, which is one request's service time), `Kp =
//! 0.5R` (damps the step when the error changes), `Kd = 0` (a percentile over 100 ms is
//! noisy; a derivative would amplify the noise). See `docs/qos.md`.

use crate::stats::json_histogram;
use hdrhistogram::Histogram;
use pov_runtime::pid::Pid;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default LC latency target at the proxy, µs.
pub const DEFAULT_LC_TARGET_US: u32 = 2000;
/// Default control interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// The proxy's QoS settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QosConfig {
    /// LC latency target at the proxy (see the module docs), µs.
    pub lc_target_us: u32,
    /// Percentile of the LC latency the controller holds to the target, in (0, 100).
    pub percentile: f64,
    /// Control interval.
    pub interval: Duration,
    /// Least BC window (requests; at least 1, so BC work always progresses).
    pub window_min: usize,
    /// Largest BC window (requests; 0: the worker pool's size).
    pub window_max: usize,
}

impl Default for QosConfig {
    fn default() -> QosConfig {
        QosConfig {
            lc_target_us: DEFAULT_LC_TARGET_US,
            percentile: 99.0,
            interval: DEFAULT_INTERVAL,
            window_min: 1,
            window_max: 0,
        }
    }
}

/// What the controller knows, for the stats.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ControllerState {
    /// Target, µs, at `percentile`.
    pub target_us: u32,
    pub percentile: f64,
    /// The last interval's LC latency at the percentile, µs (0: no LC request).
    pub measured_us: u64,
    /// LC requests in the last interval.
    pub samples: u64,
    /// The controller's output (the window before rounding).
    pub output: f64,
    /// The BC window in force, requests.
    pub window: usize,
    /// Steps so far.
    pub steps: u64,
}

/// Counters of one class at the proxy's QoS stage.
#[derive(Debug, Default)]
struct ClassCounters {
    /// Requests handed to the worker pool.
    served: AtomicU64,
    /// Latency to the backend (module docs), µs, since start.
    latency: Mutex<Option<Histogram<u64>>>,
}

/// The proxy-wide QoS state: the BC window and the requests outstanding against it,
/// the controller, per-class counters. Shared by every connection and worker.
#[derive(Debug)]
pub struct QosGate {
    cfg: QosConfig,
    window: AtomicUsize,
    bc_outstanding: AtomicUsize,
    /// BC requests that waited because the window was full (each wait of a
    /// connection's queue counted once per reap).
    bc_held: AtomicU64,
    classes: [ClassCounters; 2],
    control: Mutex<Control>,
}

#[derive(Debug)]
struct Control {
    pid: Pid,
    last: Instant,
    interval_lc: Histogram<u64>,
    state: ControllerState,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

impl QosGate {
    /// A gate for a pool of `workers` threads.
    pub fn new(cfg: QosConfig, workers: usize) -> QosGate {
        let max = if cfg.window_max == 0 { workers.max(1) } else { cfg.window_max };
        let min = cfg.window_min.clamp(1, max);
        let range = (max - min) as f64;
        let pid = Pid::new(0.5 * range, 2.0 * range, 0.0, min as f64, max as f64, max as f64);
        let state = ControllerState {
            target_us: cfg.lc_target_us,
            percentile: cfg.percentile,
            output: max as f64,
            window: max,
            ..ControllerState::default()
        };
        QosGate {
            cfg: QosConfig { window_min: min, window_max: max, ..cfg },
            window: AtomicUsize::new(max),
            bc_outstanding: AtomicUsize::new(0),
            bc_held: AtomicU64::new(0),
            classes: Default::default(),
            control: Mutex::new(Control { pid, last: Instant::now(), interval_lc: histogram(), state }),
        }
    }

    /// The settings (window bounds resolved).
    pub fn config(&self) -> QosConfig {
        self.cfg
    }

    /// The BC window in force, requests.
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }

    /// Whether a BC request may be handed to the pool now. Connections on several
    /// reactors may each pass this at once, so the window can be exceeded by one
    /// request per reactor for a moment.
    pub fn bc_room(&self) -> bool {
        self.bc_outstanding.load(Ordering::Relaxed) < self.window()
    }

    /// Counts a BC request that could not go for the window.
    pub fn held(&self) {
        self.bc_held.fetch_add(1, Ordering::Relaxed);
    }

    /// A request of `class` is handed to the pool.
    pub fn started(&self, class: u8) {
        let c = usize::from(class.min(1));
        self.classes[c].served.fetch_add(1, Ordering::Relaxed);
        if c == 1 {
            self.bc_outstanding.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request of `class` handed to the pool at `since` is finished (run, or dropped
    /// unrun) at `now`; runs a control step when an interval has passed.
    pub fn finished(&self, class: u8, since: Instant, now: Instant) {
        let c = usize::from(class.min(1));
        let us = u64::try_from(now.saturating_duration_since(since).as_micros()).unwrap_or(u64::MAX).max(1);
        if c == 1 {
            let _ = self.bc_outstanding.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        if let Ok(mut h) = self.classes[c].latency.lock() {
            h.get_or_insert_with(histogram).saturating_record(us);
        }
        let Ok(mut ctl) = self.control.lock() else { return };
        if c == 0 {
            ctl.interval_lc.saturating_record(us);
        }
        self.step(&mut ctl, now);
    }

    /// Runs a control step if an interval has passed since the last (also called by
    /// connections' polls, so the window recovers when no request finishes).
    pub fn tick(&self, now: Instant) {
        if let Ok(mut ctl) = self.control.try_lock() {
            self.step(&mut ctl, now);
        }
    }

    fn step(&self, ctl: &mut Control, now: Instant) {
        let dt = now.saturating_duration_since(ctl.last);
        if dt < self.cfg.interval {
            return;
        }
        ctl.last = now;
        let target = f64::from(self.cfg.lc_target_us.max(1));
        let samples = ctl.interval_lc.len();
        let measured = if samples == 0 { 0 } else { ctl.interval_lc.value_at_quantile(self.cfg.percentile / 100.0) };
        ctl.interval_lc.reset();
        let error = if samples == 0 { 1.0 } else { ((target - measured as f64) / target).clamp(-1.0, 1.0) };
        let out = ctl.pid.update(error, dt.as_secs_f64());
        let window = (out.round() as usize).clamp(self.cfg.window_min, self.cfg.window_max);
        self.window.store(window, Ordering::Relaxed);
        let s = &mut ctl.state;
        s.measured_us = measured;
        s.samples = samples;
        s.output = out;
        s.window = window;
        s.steps += 1;
    }

    /// The controller's state and the per-class counters, as JSON.
    pub fn stats_json(&self) -> serde_json::Value {
        let state = self.control.lock().map(|c| c.state.clone()).unwrap_or_default();
        let class = |c: &ClassCounters| {
            let h = c.latency.lock().ok().and_then(|h| h.clone());
            serde_json::json!({
                "served": c.served.load(Ordering::Relaxed),
                "latency_us": h.as_ref().map(json_histogram),
            })
        };
        serde_json::json!({
            "controller": state,
            "bc_outstanding": self.bc_outstanding.load(Ordering::Relaxed),
            "bc_held": self.bc_held.load(Ordering::Relaxed),
            "lc": class(&self.classes[0]),
            "bc": class(&self.classes[1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(target_us: u32, workers: usize) -> QosGate {
        QosGate::new(QosConfig { lc_target_us: target_us, interval: Duration::from_millis(100), ..QosConfig::default() }, workers)
    }

    /// Feeds one interval of LC latencies `us` and returns the window after the step.
    fn interval(g: &QosGate, t: &mut Instant, us: &[u64]) -> usize {
        for &l in us {
            g.started(0);
            g.finished(0, *t, *t + Duration::from_micros(l));
        }
        *t += Duration::from_millis(100);
        g.tick(*t);
        g.window()
    }

    #[test]
    fn the_window_closes_while_lc_latency_is_over_target_and_reopens_when_it_is_under() {
        let g = gate(1000, 8);
        let mut t = Instant::now();
        assert_eq!(g.window(), 8, "starts open: work-conserving");
        let mut w = Vec::new();
        for _ in 0..10 {
            w.push(interval(&g, &mut t, &[5000; 50]));
        }
        assert!(w.windows(2).all(|p| p[1] <= p[0]), "monotone down while over target: {w:?}");
        assert_eq!(*w.last().unwrap(), 1, "down to the least window, never 0: {w:?}");
        let mut up = Vec::new();
        for _ in 0..10 {
            up.push(interval(&g, &mut t, &[100; 50]));
        }
        assert!(up.windows(2).all(|p| p[1] >= p[0]), "monotone up while under target: {up:?}");
        assert_eq!(*up.last().unwrap(), 8, "back to the largest: {up:?}");
    }

    #[test]
    fn saturation_does_not_wind_up() {
        // 50 intervals far over target pin the output at the bound; one interval under
        // target must move it off the bound at once (a positional PID's integral would
        // hold it there for as long as it had wound up).
        let g = gate(1000, 8);
        let mut t = Instant::now();
        for _ in 0..50 {
            interval(&g, &mut t, &[50_000; 20]);
        }
        assert_eq!(g.window(), 1);
        interval(&g, &mut t, &[10; 20]);
        let w = interval(&g, &mut t, &[10; 20]);
        assert!(w >= 2, "leaves the bound within two intervals: {w}");
    }

    #[test]
    fn no_lc_work_opens_the_window() {
        let g = gate(1000, 6);
        let mut t = Instant::now();
        for _ in 0..10 {
            interval(&g, &mut t, &[9000; 10]);
        }
        assert_eq!(g.window(), 1);
        for _ in 0..10 {
            interval(&g, &mut t, &[]);
        }
        assert_eq!(g.window(), 6, "no LC requests: BC gets everything");
    }

    #[test]
    fn no_step_before_an_interval_has_passed() {
        let g = gate(1000, 4);
        let t = Instant::now();
        g.started(1);
        g.finished(1, t, t + Duration::from_millis(10));
        assert_eq!(g.stats_json()["controller"]["steps"], 0, "no step before an interval has passed");
        assert_eq!(g.stats_json()["bc_outstanding"], 0);
    }

    #[test]
    fn bc_room_follows_the_window() {
        let g = gate(1000, 2);
        assert!(g.bc_room());
        g.started(1);
        g.started(1);
        assert!(!g.bc_room(), "two outstanding, window 2");
        g.started(0);
        assert!(!g.bc_room(), "LC requests do not count against the window");
        let t = Instant::now();
        g.finished(1, t, t);
        assert!(g.bc_room());
    }
}
