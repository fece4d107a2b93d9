//! Counters: per tenant (requests by operation, errors by status, bytes, queue depth,
//! latency histogram: [`pov_metrics::TenantCounters`]) and per server (frames,
//! connections); the QoS stage's own are in [`crate::qos::QosGate::stats_json`].
//!
//! Counters are relaxed atomics shared by every reactor. Each connection caches the
//! `Arc` of the tenants it serves, so the registry's lock is taken only the first
//! time a connection sees a tenant. The registry tracks at most
//! [`MAX_TRACKED_TENANTS`] names; requests of further tenants are counted under
//! [`OVERFLOW_TENANT`], so a peer cannot grow it without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pov_metrics::CounterRegistry;
pub use pov_metrics::{TenantCounters, TenantSnapshot as TenantStats};

/// Most distinct tenants counted separately.
pub const MAX_TRACKED_TENANTS: usize = pov_metrics::counters::DEFAULT_MAX_NAMES;
/// Name under which tenants beyond [`MAX_TRACKED_TENANTS`] are counted.
pub const OVERFLOW_TENANT: &str = pov_metrics::OVERFLOW_NAME;

/// Server-wide counters plus the tenant registry.
#[derive(Debug, Default)]
pub struct ProxyStats {
    tenants: CounterRegistry,
    /// Plain volumes' traffic (volume operations name the volume, not a tenant), by
    /// volume name, counted as tenants are.
    volumes: CounterRegistry,
    /// Frames received that decoded as requests.
    pub frames: AtomicU64,
    /// Frames that did not decode (answered with an error when they carried a tag).
    pub bad_frames: AtomicU64,
    /// Bad frames too short to carry a tag, dropped without an answer.
    pub dropped_frames: AtomicU64,
    /// Requests refused because the connection's peer may not act for their tenant
    /// or volume (answered `Permission`, never executed; `crate::access`).
    pub denied: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections currently open.
    pub connections_open: AtomicU64,
    /// Times a connection stopped reading at its bound (back-pressure).
    pub reads_paused: AtomicU64,
    /// Connections closed for a frame or idle timeout.
    pub connections_timed_out: AtomicU64,
    /// Liveness probes answered ([`pov_proto::io::Op::Ping`]; not counted in `frames`).
    pub pings: AtomicU64,
    /// Requests that change data, not run because the DPU had closed their connection
    /// by then (it gives up on a silent proxy and may resend them to another).
    pub abandoned: AtomicU64,
}

/// A copy of the server-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerStats {
    /// Frames that decoded as requests.
    pub frames: u64,
    /// Frames that did not decode.
    pub bad_frames: u64,
    /// Bad frames dropped without an answer.
    pub dropped_frames: u64,
    /// Requests refused for their tenant or volume (`Permission`), never executed.
    pub denied: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections currently open.
    pub connections_open: u64,
    /// Times a connection stopped reading at its bound (back-pressure).
    pub reads_paused: u64,
    /// Connections closed for a frame or idle timeout.
    pub connections_timed_out: u64,
    /// Liveness probes answered.
    pub pings: u64,
    /// Requests that change data not run: their connection was closed by the DPU.
    pub abandoned: u64,
}

impl ProxyStats {
    /// The counters of `tenant` (a valid tenant name), registering it if new.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantCounters> {
        self.tenants.get(tenant)
    }

    /// The counters of volume `name`, registering it if new.
    pub fn volume(&self, name: &str) -> Arc<TenantCounters> {
        self.volumes.get(name)
    }

    /// Copies of every tenant's counters, sorted by tenant name (the overflow bucket
    /// last, if used).
    pub fn tenants(&self) -> Vec<TenantStats> {
        self.tenants.snapshot()
    }

    /// The same for plain volumes (`tenant` holds the volume's name).
    pub fn volumes(&self) -> Vec<TenantStats> {
        self.volumes.snapshot()
    }

    /// A copy of the server-wide counters.
    pub fn server(&self) -> ServerStats {
        ServerStats {
            frames: self.frames.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
            dropped_frames: self.dropped_frames.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            reads_paused: self.reads_paused.load(Ordering::Relaxed),
            connections_timed_out: self.connections_timed_out.load(Ordering::Relaxed),
            pings: self.pings.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// A latency histogram (µs samples) in brief: `{count, p50_us, p99_us, p999_us,
/// max_us}`.
pub fn json_histogram(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::json!({ "count": 0 });
    }
    serde_json::json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// One connection's cache of tenant counters (avoids the registry lock per request).
#[derive(Debug)]
pub struct TenantCache {
    stats: Arc<ProxyStats>,
    map: HashMap<String, Arc<TenantCounters>>,
    volumes: HashMap<String, Arc<TenantCounters>>,
}

impl TenantCache {
    /// An empty cache over `stats`.
    pub fn new(stats: Arc<ProxyStats>) -> TenantCache {
        TenantCache { stats, map: HashMap::new(), volumes: HashMap::new() }
    }

    /// The counters of `tenant`.
    pub fn get(&mut self, tenant: &str) -> &TenantCounters {
        if !self.map.contains_key(tenant) {
            let c = self.stats.tenant(tenant);
            if self.map.len() >= MAX_TRACKED_TENANTS {
                self.map.clear();
            }
            self.map.insert(tenant.to_string(), c);
        }
        &self.map[tenant]
    }

    /// The counters of volume `name`.
    pub fn volume(&mut self, name: &str) -> &TenantCounters {
        if !self.volumes.contains_key(name) {
            let c = self.stats.volume(name);
            if self.volumes.len() >= MAX_TRACKED_TENANTS {
                self.volumes.clear();
            }
            self.volumes.insert(name.to_string(), c);
        }
        &self.volumes[name]
    }

    /// The counters `req` is counted under: its volume's for volume operations (they
    /// name the volume in the tenant field), else its tenant's.
    pub fn of(&mut self, req: &pov_proto::wire::ProxyRequest) -> &TenantCounters {
        if req.op.is_volume() {
            self.volume(&req.tenant)
        } else {
            self.get(&req.tenant)
        }
    }

    /// The server-wide counters.
    pub fn server(&self) -> &ProxyStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pov_proto::io::Op;
    use pov_proto::Status;

    #[test]
    fn the_cache_hands_out_the_registry_counters() {
        let s = Arc::new(ProxyStats::default());
        let mut c = TenantCache::new(s.clone());
        let d = std::time::Duration::from_micros(5);
        c.get("b").record(Op::Stat, Status::Ok, 0, 0, d);
        c.get("a").record(Op::Read, Status::Ok, 10, 0, d);
        c.get("b").record(Op::Open, Status::Io, 0, 0, d);
        c.volume("v").record(Op::VolumeWrite, Status::Ok, 0, 7, d);
        let v = s.tenants();
        assert_eq!(
            v.iter().map(|t| (t.tenant.as_str(), t.requests, t.errors, t.read_bytes)).collect::<Vec<_>>(),
            [("a", 1, 0, 10), ("b", 2, 1, 0)]
        );
        assert_eq!(s.volumes()[0].write_bytes, 7);
    }
}
