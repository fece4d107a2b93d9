//! Live request counters of one tenant (or volume): requests by operation, errors by
//! status, bytes moved, queue depth, sessions and a latency histogram, as relaxed
//! atomics that the path updates without a lock and a reader copies at any time
//! ([`TenantCounters::snapshot`]). [`CounterRegistry`] maps names to counters with a
//! bound, so a peer naming ever new tenants cannot grow it without limit.
//!
//! The histogram has fixed bucket bounds ([`LATENCY_BUCKETS_S`], seconds, from 50 µs
//! to 10 s): Prometheus histograms are cumulative counts at fixed upper bounds
//! (Prometheus docs, "Histograms and summaries"), and fixed buckets keep one tenant's
//! counters at a few hundred bytes, so thousands of tenants cost little.

use pov_proto::io::Op;
use pov_proto::Status;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, seconds (a last `+Inf` bucket
/// follows).
pub const LATENCY_BUCKETS_S: [f64; 16] =
    [50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 10.0];

/// Operation and status codes counted separately (codes ≥ this are counted as
/// [`Status::Io`] / not counted by operation; every code the protocol defines is
/// below it).
const CODES: usize = 32;

/// A latency histogram with the bounds of [`LATENCY_BUCKETS_S`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A copy with cumulative buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_S.len());
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            acc += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((*b, acc));
        }
        let count = acc + self.buckets[LATENCY_BUCKETS_S.len()].load(Ordering::Relaxed);
        HistogramSnapshot { count, sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, buckets }
    }
}

/// A histogram's copy in Prometheus's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct HistogramSnapshot {
    /// Samples.
    pub count: u64,
    /// Sum of the samples, seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, samples ≤ it)`, cumulative, without `+Inf` (whose
    /// count is `count`).
    pub buckets: Vec<(f64, u64)>,
}

/// Live counters of one tenant (or volume).
#[derive(Debug, Default)]
pub struct TenantCounters {
    by_op: [AtomicU64; CODES],
    by_status: [AtomicU64; CODES],
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    /// Requests received and not yet answered (queue depth).
    in_flight: AtomicI64,
    /// Sessions open now (kept by the DPU; the proxy sees no sessions).
    sessions: AtomicI64,
    latency: Histogram,
}

impl TenantCounters {
    /// Counts one answered request: its operation, status, file or volume data
    /// returned (`read_bytes`) and accepted (`write_bytes`), and its latency.
    pub fn record(&self, op: Op, status: Status, read_bytes: u64, write_bytes: u64, latency: Duration) {
        let o = op as usize;
        if o < CODES {
            self.by_op[o].fetch_add(1, Ordering::Relaxed);
        }
        let s = (status.as_u32() as usize).min(CODES - 1);
        self.by_status[s].fetch_add(1, Ordering::Relaxed);
        if read_bytes > 0 {
            self.read_bytes.fetch_add(read_bytes, Ordering::Relaxed);
        }
        if write_bytes > 0 {
            self.write_bytes.fetch_add(write_bytes, Ordering::Relaxed);
        }
        self.latency.record(latency);
    }

    /// Adds `n` (may be negative) to the requests in flight.
    pub fn add_in_flight(&self, n: i64) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` (may be negative) to the open sessions.
    pub fn add_sessions(&self, n: i64) {
        self.sessions.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests answered so far (any status).
    pub fn requests(&self) -> u64 {
        self.by_status.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// A copy, under `name`.
    pub fn snapshot(&self, name: &str) -> TenantSnapshot {
        let mut by_op = BTreeMap::new();
        for (code, c) in self.by_op.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if let (true, Ok(op)) = (v > 0, Op::from_u16(code as u16)) {
                by_op.insert(op.name().to_string(), v);
            }
        }
        let mut by_status = BTreeMap::new();
        let (mut requests, mut errors) = (0, 0);
        for (code, c) in self.by_status.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            requests += v;
            if v > 0 && code != 0 {
                errors += v;
                *by_status.entry(Status::from_u32(code as u32).name().to_string()).or_insert(0) += v;
            }
        }
        TenantSnapshot {
            tenant: name.to_string(),
            requests,
            errors,
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            sessions: self.sessions.load(Ordering::Relaxed).max(0) as u64,
            by_op,
            errors_by_status: by_status,
            latency: self.latency.snapshot(),
        }
    }
}

/// A copy of one tenant's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct TenantSnapshot {
    /// Tenant (or volume) name, or [`OVERFLOW_NAME`].
    pub tenant: String,
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests answered with a status other than `ok`.
    pub errors: u64,
    /// Data returned by reads, bytes.
    pub read_bytes: u64,
    /// Data accepted by writes and appends, bytes.
    pub write_bytes: u64,
    /// Requests received and not yet answered.
    pub in_flight: u64,
    /// Sessions open now (DPU only; 0 at the proxy).
    pub sessions: u64,
    /// Requests answered, by operation name ([`Op::name`]); operations never seen are
    /// absent.
    pub by_op: BTreeMap<String, u64>,
    /// Errors by status name ([`Status::name`]).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Time to answer, from receipt to response.
    pub latency: HistogramSnapshot,
}

/// Most names a [`CounterRegistry`] counts separately (by default).
pub const DEFAULT_MAX_NAMES: usize = 4096;
/// Name under which the names beyond a registry's bound are counted.
pub const OVERFLOW_NAME: &str = "*other*";

/// Names → counters, at most a bound of names (then [`OVERFLOW_NAME`]).
#[derive(Debug)]
pub struct CounterRegistry {
    map: Mutex<HashMap<String, Arc<TenantCounters>>>,
    overflow: Arc<TenantCounters>,
    max: usize,
}

impl Default for CounterRegistry {
    fn default() -> Self {
        CounterRegistry::with_capacity(DEFAULT_MAX_NAMES)
    }
}

impl CounterRegistry {
    /// A registry counting at most `max` names separately.
    pub fn with_capacity(max: usize) -> CounterRegistry {
        CounterRegistry { map: Mutex::default(), overflow: Arc::default(), max }
    }

    /// The counters of `name`, registering it if new (the overflow bucket's once the
    /// bound is reached).
    pub fn get(&self, name: &str) -> Arc<TenantCounters> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(name) {
            return c.clone();
        }
        if m.len() >= self.max {
            return self.overflow.clone();
        }
        let c = Arc::new(TenantCounters::default());
        m.insert(name.to_string(), c.clone());
        c
    }

    /// The most names counted separately.
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// Copies of every name's counters, sorted by name (the overflow bucket last, if
    /// it counted anything).
    pub fn snapshot(&self) -> Vec<TenantSnapshot> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<TenantSnapshot> = m.iter().map(|(k, c)| c.snapshot(k)).collect();
        drop(m);
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let o = self.overflow.snapshot(OVERFLOW_NAME);
        if o.requests > 0 || o.in_flight > 0 || o.sessions > 0 {
            v.push(o);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded_above_by_inf() {
        let h = Histogram::default();
        for us in [10, 50, 60, 900, 20_000_000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (50e-6, 2), "10 µs and exactly 50 µs fall in the first bucket");
        assert_eq!(s.buckets[1], (100e-6, 3));
        assert_eq!(s.buckets[4], (1e-3, 4));
        assert_eq!(s.buckets.last().unwrap().1, 4, "20 s is only in +Inf");
        assert!((s.sum_seconds - 20.00102).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn counts_by_operation_and_status_and_caps_the_registry() {
        let r = CounterRegistry::with_capacity(2);
        let a = r.get("a");
        a.record(Op::Read, Status::Ok, 4096, 0, Duration::from_micros(80));
        a.record(Op::Write, Status::Ok, 0, 100, Duration::from_micros(80));
        a.record(Op::Stat, Status::NotFound, 0, 0, Duration::from_micros(80));
        a.add_in_flight(3);
        a.add_in_flight(-1);
        r.get("b").add_sessions(1);
        r.get("c").record(Op::Read, Status::Ok, 1, 0, Duration::ZERO);
        r.get("d").record(Op::Read, Status::Io, 0, 0, Duration::ZERO);
        let v = r.snapshot();
        assert_eq!(v.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(), ["a", "b", OVERFLOW_NAME]);
        let a = &v[0];
        assert_eq!((a.requests, a.errors, a.read_bytes, a.write_bytes, a.in_flight), (3, 1, 4096, 100, 2));
        assert_eq!(a.by_op, BTreeMap::from([("read".into(), 1), ("stat".into(), 1), ("write".into(), 1)]));
        assert_eq!(a.errors_by_status, BTreeMap::from([("not_found".into(), 1)]));
        assert_eq!(a.latency.count, 3);
        assert_eq!(v[1].sessions, 1);
        assert_eq!((v[2].requests, v[2].errors, v[2].read_bytes), (2, 1, 1), "c and d share the overflow bucket");
    }
}
