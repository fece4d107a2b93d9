//! Tenants' QoS policies (paper §4.5; `docs/qos.md`), shared by every device of a
//! daemon: the operator's `pov_tenant_set_qos` writes them, each device's scheduler
//! ([`pov_runtime::qos::QosScheduler`], between its PoV queues and its proxies) reads
//! them when a request becomes ready.
//!
//! A tenant without a policy is **bandwidth-critical with weight 100 and no limits**:
//! a host's request for a latency-critical queue is honoured only for tenants whose
//! policy says `"class": "lc"` (any process may ask for LC; only the operator grants
//! it), and tenants without a policy share what is left by equal weight.

use pov_runtime::qos::{Policy, PolicyLookup, Rate, BC, LC};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Default [`QosOptions::bc_in_flight_kib`]: at most 16 MiB of BC work per device at
/// the proxies (sixteen 1 MiB writes: enough to keep a Ceph backend's workers busy).
pub const DEFAULT_BC_IN_FLIGHT_KIB: u64 = 16 << 10;
/// Default [`QosOptions::bc_in_flight_min_kib`]: 256 KiB (with 1 MiB requests: one at
/// a time, since one BC request may always go).
pub const DEFAULT_BC_IN_FLIGHT_MIN_KIB: u64 = 256;
/// How often the BC window's controller steps.
pub const WINDOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The daemon's QoS options (`pov_qos_set_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosOptions {
    /// `false`: devices created from now on schedule in arrival order (no classes,
    /// policies or window: for A/B measurements; devices already running keep theirs).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most bytes of BC requests (read lengths plus write payloads) one device has at its
    /// proxies at once, KiB; further BC requests wait in its scheduler while LC ones
    /// still go (one BC request always may, however large). 0: no bound. Between this
    /// and `bc_in_flight_min_kib` a PID controller sets the window from the LC
    /// latency of tenants with a `latency_target_us` ([`WindowControl`]). Applies to
    /// running devices at once.
    #[serde(default = "default_bc_kib")]
    pub bc_in_flight_kib: u64,
    /// The least window the controller may set, KiB (at most `bc_in_flight_kib`).
    #[serde(default = "default_bc_min_kib")]
    pub bc_in_flight_min_kib: u64,
}

fn yes() -> bool {
    true
}

fn default_bc_kib() -> u64 {
    DEFAULT_BC_IN_FLIGHT_KIB
}

fn default_bc_min_kib() -> u64 {
    DEFAULT_BC_IN_FLIGHT_MIN_KIB
}

impl Default for QosOptions {
    fn default() -> QosOptions {
        QosOptions {
            enabled: true,
            bc_in_flight_kib: DEFAULT_BC_IN_FLIGHT_KIB,
            bc_in_flight_min_kib: DEFAULT_BC_IN_FLIGHT_MIN_KIB,
        }
    }
}

/// The controller's view, for the device's stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowState {
    /// The strictest LC target of the last interval's requests, µs, at `percentile`
    /// (0: none had a target).
    pub target_us: u32,
    pub percentile: f64,
    /// Their latency at that percentile in the last interval, µs.
    pub measured_us: u64,
    /// LC requests with a target in the last interval.
    pub samples: u64,
    /// The BC window in force, bytes (0: unbounded).
    pub window_bytes: u64,
    /// Control steps so far.
    pub steps: u64,
    /// Mean window over the steps so far, KiB (how much the controller closed it).
    pub mean_window_kib: u64,
    #[serde(skip)]
    window_kib_sum: u64,
}

/// The PID controller of a device's BC window (paper §4.5; the same controller as the
/// proxy's, `pov_runtime::pid`): every [`WINDOW_INTERVAL`] it compares the LC
/// latency (scheduler to answer, µs) of the interval's requests whose tenants have a
/// `latency_target_us`, at their percentile, with the strictest such target; error
/// `e = clamp((target − measured) / target, −1, 1)`, `e = 1` in an interval without
/// such requests (work-conserving: the window opens to the maximum). Output: the window
/// in KiB between the options' minimum and maximum; gains `Kp = 0.5 R`, `Ki = 2 R/s`,
/// `Kd = 0` for the range `R` (docs/qos.md, "Gains").
#[derive(Debug)]
pub struct WindowControl {
    pid: pov_runtime::pid::Pid,
    range: (u64, u64),
    last: std::time::Instant,
    interval: hdrhistogram::Histogram<u64>,
    target: Option<(u32, f64)>,
    state: WindowState,
}

impl WindowControl {
    /// A controller starting fully open.
    pub fn new(now: std::time::Instant) -> WindowControl {
        WindowControl {
            pid: pov_runtime::pid::Pid::new(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            range: (0, 0),
            last: now,
            interval: hdrhistogram::Histogram::new_with_bounds(1, 100_000_000, 2).expect("valid bounds"),
            target: None,
            state: WindowState::default(),
        }
    }

    /// Records an LC request's latency `us` whose tenant's target is `target` (µs,
    /// percentile).
    pub fn record(&mut self, us: u64, target: (u32, f64)) {
        self.interval.saturating_record(us.max(1));
        // The strictest: the lowest target, then the highest percentile.
        let stricter = |(t, p): (u32, f64)| target.0 < t || (target.0 == t && target.1 > p);
        if self.target.map_or(true, stricter) {
            self.target = Some(target);
        }
    }

    /// The window in force, bytes (0: unbounded), for options `o`; steps the controller
    /// first when an interval has passed.
    pub fn window(&mut self, o: &QosOptions, now: std::time::Instant) -> u64 {
        if o.bc_in_flight_kib == 0 {
            self.state.window_bytes = 0;
            return 0;
        }
        let (min, max) = (o.bc_in_flight_min_kib.min(o.bc_in_flight_kib), o.bc_in_flight_kib);
        if self.range != (min, max) {
            // New bounds (or the first call): start open, gains for the range.
            let r = (max - min) as f64;
            self.pid = pov_runtime::pid::Pid::new(0.5 * r, 2.0 * r, 0.0, min as f64, max as f64, max as f64);
            self.range = (min, max);
        }
        let dt = now.saturating_duration_since(self.last);
        let stepped = dt >= WINDOW_INTERVAL;
        if stepped {
            self.last = now;
            let samples = self.interval.len();
            let (error, measured) = match self.target {
                Some((t, p)) if samples > 0 => {
                    let m = self.interval.value_at_quantile(p / 100.0);
                    let t = f64::from(t.max(1));
                    (((t - m as f64) / t).clamp(-1.0, 1.0), m)
                }
                _ => (1.0, 0),
            };
            self.pid.update(error, dt.as_secs_f64());
            let (t, p) = self.target.take().unwrap_or((0, 0.0));
            self.interval.reset();
            let st = &mut self.state;
            (st.target_us, st.percentile, st.measured_us, st.samples) = (t, p, measured, samples);
            st.steps += 1;
        }
        let kib = (self.pid.output().round() as u64).clamp(min, max);
        let st = &mut self.state;
        if stepped {
            st.window_kib_sum += kib;
            st.mean_window_kib = st.window_kib_sum / st.steps;
        }
        st.window_bytes = kib << 10;
        st.window_bytes
    }

    /// The controller's state.
    pub fn state(&self) -> WindowState {
        self.state.clone()
    }
}

/// A tenant's QoS policy as the operator states it (the parameters of
/// `pov_tenant_set_qos` without the name). Names of the limits follow SPDK's
/// `bdev_set_qos_limit` (`rw_ios_per_sec`, `rw_mbytes_per_sec`), the BC share Ceph's
/// mClock (reservation, weight, limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQos {
    /// `"lc"` (latency-critical: its LC queues go first) or `"bc"` (bandwidth-critical:
    /// every request shares by weight, whatever class its queue asked for).
    pub class: QosClassName,
    /// LC: the latency target, µs, at `latency_percentile` (recorded and shown; the
    /// proxy's PID controller that will act on it is not built yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_target_us: Option<u32>,
    /// Percentile of `latency_target_us` (default 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_percentile: Option<f64>,
    /// BC share weight, 1-10000 (default 100).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Reserved (guaranteed) IO operations per second, BC (0: none).
    #[serde(default)]
    pub reservation_ios_per_sec: u64,
    /// Reserved MiB per second, BC (0: none).
    #[serde(default)]
    pub reservation_mbytes_per_sec: u64,
    /// Cap on IO operations per second, reads and writes together (0: none).
    #[serde(default)]
    pub rw_ios_per_sec: u64,
    /// Cap on MiB per second, reads and writes together (0: none).
    #[serde(default)]
    pub rw_mbytes_per_sec: u64,
    /// Cap on MiB per second of reads alone (0: none).
    #[serde(default)]
    pub r_mbytes_per_sec: u64,
    /// Cap on MiB per second of writes alone (0: none).
    #[serde(default)]
    pub w_mbytes_per_sec: u64,
}

fn default_weight() -> u32 {
    100
}

/// `"lc"` or `"bc"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClassName {
    /// Latency-critical.
    Lc,
    /// Bandwidth-critical.
    Bc,
}

impl TenantQos {
    /// Checks the ranges: weight 1-10000, percentile in (0, 100), a latency target only
    /// for LC and at most 10 s, limits and reservations ≤ 10^9, and a reservation not
    /// above the limit.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.weight) {
            return Err(format!("weight {}: must be 1-10000", self.weight));
        }
        if let Some(p) = self.latency_percentile {
            if !(p > 0.0 && p < 100.0) {
                return Err(format!("latency_percentile {p}: must be above 0 and below 100"));
            }
        }
        match (self.class, self.latency_target_us) {
            (QosClassName::Bc, Some(_)) => return Err("latency_target_us is for class \"lc\" only".into()),
            (_, Some(t)) if t == 0 || t > 10_000_000 => return Err(format!("latency_target_us {t}: must be 1-10000000")),
            _ => {}
        }
        let big = [
            self.reservation_ios_per_sec,
            self.reservation_mbytes_per_sec,
            self.rw_ios_per_sec,
            self.rw_mbytes_per_sec,
            self.r_mbytes_per_sec,
            self.w_mbytes_per_sec,
        ];
        if big.iter().any(|&v| v > 1_000_000_000) {
            return Err("rates must be at most 1000000000".into());
        }
        let over = |res: u64, lim: u64| res > 0 && lim > 0 && res > lim;
        if over(self.reservation_ios_per_sec, self.rw_ios_per_sec)
            || over(self.reservation_mbytes_per_sec, self.rw_mbytes_per_sec)
        {
            return Err("a reservation above the limit can never be met".into());
        }
        Ok(())
    }

    /// The scheduler's view of it.
    pub fn policy(&self) -> Policy {
        Policy {
            max_class: if self.class == QosClassName::Lc { LC } else { BC },
            weight: self.weight,
            reservation: Rate {
                ops_per_sec: self.reservation_ios_per_sec,
                bytes_per_sec: self.reservation_mbytes_per_sec.saturating_mul(1 << 20),
            },
            limit: Rate { ops_per_sec: self.rw_ios_per_sec, bytes_per_sec: self.rw_mbytes_per_sec.saturating_mul(1 << 20) },
            read_limit: Rate { ops_per_sec: 0, bytes_per_sec: self.r_mbytes_per_sec.saturating_mul(1 << 20) },
            write_limit: Rate { ops_per_sec: 0, bytes_per_sec: self.w_mbytes_per_sec.saturating_mul(1 << 20) },
        }
    }
}

/// The policy of a tenant that has none (see the module docs).
pub fn default_policy() -> Policy {
    Policy { max_class: BC, ..Policy::default() }
}

/// Tenant name → QoS policy, and the daemon's [`QosOptions`]. Cloning shares both.
#[derive(Debug, Clone)]
pub struct QosTable {
    inner: Arc<RwLock<BTreeMap<String, (TenantQos, Policy)>>>,
    enabled: Arc<AtomicBool>,
    /// [`QosOptions::bc_in_flight_kib`] and `bc_in_flight_min_kib` (read by devices at
    /// every poll).
    bc_window: Arc<AtomicU64>,
    bc_window_min: Arc<AtomicU64>,
}

impl Default for QosTable {
    fn default() -> QosTable {
        let o = QosOptions::default();
        QosTable {
            inner: Arc::default(),
            enabled: Arc::new(AtomicBool::new(o.enabled)),
            bc_window: Arc::new(AtomicU64::new(o.bc_in_flight_kib)),
            bc_window_min: Arc::new(AtomicU64::new(o.bc_in_flight_min_kib)),
        }
    }
}

impl QosTable {
    /// Sets the options. Errors: a window above 1 TiB, a minimum above the maximum.
    pub fn set_options(&self, o: QosOptions) -> Result<(), String> {
        if o.bc_in_flight_kib > 1 << 30 {
            return Err(format!("bc_in_flight_kib {}: must be at most 1073741824", o.bc_in_flight_kib));
        }
        if o.bc_in_flight_min_kib > o.bc_in_flight_kib && o.bc_in_flight_kib > 0 {
            return Err(format!(
                "bc_in_flight_min_kib {} is above bc_in_flight_kib {}",
                o.bc_in_flight_min_kib, o.bc_in_flight_kib
            ));
        }
        self.enabled.store(o.enabled, Ordering::Relaxed);
        self.bc_window.store(o.bc_in_flight_kib, Ordering::Relaxed);
        self.bc_window_min.store(o.bc_in_flight_min_kib, Ordering::Relaxed);
        Ok(())
    }

    /// The options in force.
    pub fn options(&self) -> QosOptions {
        QosOptions {
            enabled: self.enabled.load(Ordering::Relaxed),
            bc_in_flight_kib: self.bc_window.load(Ordering::Relaxed),
            bc_in_flight_min_kib: self.bc_window_min.load(Ordering::Relaxed),
        }
    }

    /// The LC latency target of `tenant`'s policy: `(µs, percentile)`, if it has one.
    pub fn lc_target(&self, tenant: &str) -> Option<(u32, f64)> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let (q, _) = m.get(tenant)?;
        q.latency_target_us.filter(|_| q.class == QosClassName::Lc).map(|t| (t, q.latency_percentile.unwrap_or(99.0)))
    }

    /// Sets (or replaces) `tenant`'s policy; later requests follow it.
    ///
    /// Errors: [`TenantQos::validate`]'s message.
    pub fn set(&self, tenant: &str, qos: TenantQos) -> Result<(), String> {
        qos.validate()?;
        let p = qos.policy();
        self.inner.write().unwrap_or_else(|e| e.into_inner()).insert(tenant.to_string(), (qos, p));
        Ok(())
    }

    /// Removes `tenant`'s policy (it gets the default); `false` if it had none.
    pub fn clear(&self, tenant: &str) -> bool {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).remove(tenant).is_some()
    }

    /// `tenant`'s policy as set (`None`: the default).
    pub fn get(&self, tenant: &str) -> Option<TenantQos> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).get(tenant).map(|(q, _)| q.clone())
    }

    /// Every policy set, by tenant.
    pub fn list(&self) -> Vec<(String, TenantQos)> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, (q, _))| (k.clone(), q.clone())).collect()
    }

    /// The lookup a device's scheduler calls (one read lock and a map lookup per
    /// request).
    pub fn lookup(&self) -> PolicyLookup {
        let inner = self.inner.clone();
        Arc::new(move |tenant: &str| {
            inner.read().unwrap_or_else(|e| e.into_inner()).get(tenant).map_or_else(default_policy, |(_, p)| *p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lc() -> TenantQos {
        serde_json::from_str(r#"{"class": "lc", "latency_target_us": 200}"#).unwrap()
    }

    #[test]
    fn lc_is_granted_never_assumed() {
        let t = QosTable::default();
        let look = t.lookup();
        assert_eq!(look("acme").max_class, BC, "no policy: BC");
        t.set("acme", lc()).unwrap();
        assert_eq!(look("acme").max_class, LC);
        assert_eq!(t.get("acme").unwrap().weight, 100);
        assert!(t.clear("acme") && look("acme").max_class == BC);
    }

    #[test]
    fn the_bc_window_closes_while_lc_is_over_its_target_and_opens_without_lc_work() {
        let o = QosOptions { bc_in_flight_kib: 8192, bc_in_flight_min_kib: 256, ..QosOptions::default() };
        let mut t = std::time::Instant::now();
        let mut c = WindowControl::new(t);
        assert_eq!(c.window(&o, t), 8192 << 10, "starts open");
        let mut seen = Vec::new();
        for _ in 0..10 {
            for _ in 0..20 {
                c.record(3000, (500, 99.0));
                c.record(100, (2000, 99.0));
            }
            t += WINDOW_INTERVAL;
            seen.push(c.window(&o, t) >> 10);
        }
        assert!(seen.windows(2).all(|w| w[1] <= w[0]) && *seen.last().unwrap() == 256, "{seen:?}");
        assert_eq!(c.state().target_us, 500, "the strictest target of the interval drives it");
        for _ in 0..10 {
            t += WINDOW_INTERVAL;
            c.window(&o, t);
        }
        assert_eq!(c.window(&o, t), 8192 << 10, "no LC work: open again");
        let unbounded = QosOptions { bc_in_flight_kib: 0, ..o };
        assert_eq!(c.window(&unbounded, t), 0);
        let t2 = QosTable::default();
        assert!(t2.set_options(QosOptions { bc_in_flight_min_kib: 9000, ..o }).unwrap_err().contains("above"));
        t2.set("web", lc()).unwrap();
        assert_eq!(t2.lc_target("web"), Some((200, 99.0)));
        assert_eq!(t2.lc_target("nobody"), None);
    }

    #[test]
    fn bad_policies_are_refused_with_the_field() {
        let t = QosTable::default();
        let mut q = lc();
        q.weight = 0;
        assert!(t.set("a", q.clone()).unwrap_err().contains("weight"));
        q.weight = 5;
        q.class = QosClassName::Bc;
        assert!(t.set("a", q.clone()).unwrap_err().contains("latency_target_us"));
        q.latency_target_us = None;
        q.reservation_ios_per_sec = 100;
        q.rw_ios_per_sec = 50;
        assert!(t.set("a", q.clone()).unwrap_err().contains("reservation"));
        q.rw_ios_per_sec = 0;
        q.rw_mbytes_per_sec = 8;
        t.set("a", q).unwrap();
        assert_eq!(t.lookup()("a").limit.bytes_per_sec, 8 << 20);
        assert!(serde_json::from_str::<TenantQos>(r#"{"class": "gold"}"#).is_err());
    }
}
