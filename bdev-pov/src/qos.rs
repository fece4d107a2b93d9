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

/// Default [`QosOptions::bc_in_flight_kib`]: 4 MiB of BC work per device at the
/// proxies (four 1 MiB writes: enough to keep a proxy's backend busy, little enough
/// that an LC request waits behind at most that much in the connection).
pub const DEFAULT_BC_IN_FLIGHT_KIB: u64 = 4096;

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
    /// still go (one BC request always may, however large). 0: no bound. Applies to
    /// running devices at once.
    #[serde(default = "default_bc_kib")]
    pub bc_in_flight_kib: u64,
}

fn yes() -> bool {
    true
}

fn default_bc_kib() -> u64 {
    DEFAULT_BC_IN_FLIGHT_KIB
}

impl Default for QosOptions {
    fn default() -> QosOptions {
        QosOptions { enabled: true, bc_in_flight_kib: DEFAULT_BC_IN_FLIGHT_KIB }
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
        let big = [self.reservation_ios_per_sec, self.reservation_mbytes_per_sec, self.rw_ios_per_sec, self.rw_mbytes_per_sec];
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
    /// [`QosOptions::bc_in_flight_kib`] in bytes (read by devices at every poll).
    bc_window: Arc<AtomicU64>,
}

impl Default for QosTable {
    fn default() -> QosTable {
        let o = QosOptions::default();
        QosTable {
            inner: Arc::default(),
            enabled: Arc::new(AtomicBool::new(o.enabled)),
            bc_window: Arc::new(AtomicU64::new(o.bc_in_flight_kib << 10)),
        }
    }
}

impl QosTable {
    /// Sets the options. Errors: a window above 1 TiB.
    pub fn set_options(&self, o: QosOptions) -> Result<(), String> {
        if o.bc_in_flight_kib > 1 << 30 {
            return Err(format!("bc_in_flight_kib {}: must be at most 1073741824", o.bc_in_flight_kib));
        }
        self.enabled.store(o.enabled, Ordering::Relaxed);
        self.bc_window.store(o.bc_in_flight_kib << 10, Ordering::Relaxed);
        Ok(())
    }

    /// The options in force.
    pub fn options(&self) -> QosOptions {
        QosOptions {
            enabled: self.enabled.load(Ordering::Relaxed),
            bc_in_flight_kib: self.bc_window.load(Ordering::Relaxed) >> 10,
        }
    }

    /// The BC window in bytes, shared with every device (0: none).
    pub fn bc_window(&self) -> Arc<AtomicU64> {
        self.bc_window.clone()
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
