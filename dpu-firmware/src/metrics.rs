//! `pov-dpud --metrics-listen ADDR`: the Prometheus endpoint's families, read at each
//! scrape from the same live counters `pov_device_get_devices`, `bdev_get_iostat` and
//! `thread_get_stats` show ([`pov_metrics::expose`] serves them).
//!
//! | family | labels | what |
//! |---|---|---|
//! | `pov_dpu_requests_total` | `device`, `tenant`, `op` | PoV requests answered |
//! | `pov_dpu_errors_total` | `device`, `tenant`, `status` | answered with an error |
//! | `pov_dpu_read_bytes_total`, `pov_dpu_written_bytes_total` | `device`, `tenant` | file data |
//! | `pov_dpu_in_flight`, `pov_dpu_sessions` | `device`, `tenant` | queue depth, open sessions |
//! | `pov_dpu_request_duration_seconds` | `device`, `tenant` | histogram, request slot WRITE → response |
//! | `pov_dpu_bdev_ops_total` | `bdev`, `type` (`read`, `write`, `flush`) | block IOs completed |
//! | `pov_dpu_bdev_bytes_total` | `bdev`, `type` | block IO bytes |
//! | `pov_dpu_bdev_latency_seconds_total` | `bdev`, `type` | summed block IO latency |
//! | `pov_dpu_bdev_io_errors_total` | `bdev` | block IOs failed |
//! | `pov_dpu_device_auth_failures_total`, `pov_dpu_device_block_io_errors_total` | `device` | attacks and faults seen |
//! | `pov_dpu_device_proxies_connected` | `device` | proxy connections up |
//! | `pov_dpu_reactor_busy_seconds_total`, `pov_dpu_reactor_idle_seconds_total` | `reactor` | wall time working / not |
//! | `pov_dpu_reactor_cpu_seconds_total` | `reactor` | the reactor thread's CPU time |

use crate::daemon::Daemon;
use pov_metrics::expose::{tenant_families, Collect};
use pov_metrics::{Family, Labels, TenantSnapshot, Value};
use serde_json::Value as Json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// The collector of `daemon` (holds it weakly: a scrape after shutdown sees nothing).
pub fn collector(daemon: &Arc<Daemon>) -> Collect {
    let d: Weak<Daemon> = Arc::downgrade(daemon);
    Arc::new(move || d.upgrade().map(|d| families(&d)).unwrap_or_default())
}

fn u(v: &Json, k: &str) -> u64 {
    v.get(k).and_then(Json::as_u64).unwrap_or(0)
}

/// Every family, from the daemon's counters now.
pub fn families(d: &Daemon) -> Vec<Family> {
    let devices = d.all_entries(|e, stats| (e.name.clone(), stats.clone()));
    let mut out = Vec::new();
    let mut tenants: Vec<(Labels, TenantSnapshot)> = Vec::new();
    let mut ops = Family::new("pov_dpu_bdev_ops", "Block IOs completed, by type.");
    let mut bytes = Family::new("pov_dpu_bdev_bytes", "Bytes of block IOs completed, by type.");
    let mut lat = Family::new("pov_dpu_bdev_latency_seconds", "Summed latency of block IOs completed, by type, seconds.");
    let mut ioerr = Family::new("pov_dpu_bdev_io_errors", "Block IOs completed with an error.");
    let mut auth = Family::new("pov_dpu_device_auth_failures", "Failed authentications (proofs, MACs, tags).");
    let mut blkerr = Family::new("pov_dpu_device_block_io_errors", "Block IOs refused by the PoV device.");
    let mut proxies = Family::new("pov_dpu_device_proxies_connected", "Proxy connections up.");
    for (name, stats) in &devices {
        let bdev = || vec![("bdev", name.clone())];
        let io = &stats["bdev"]["iostat"];
        for (ty, n, b, t) in [
            ("read", "num_read_ops", "bytes_read", "read_latency_ticks"),
            ("write", "num_write_ops", "bytes_written", "write_latency_ticks"),
        ] {
            let l = || {
                let mut l = bdev();
                l.push(("type", ty.to_string()));
                l
            };
            ops.push(l(), Value::Counter(u(io, n)));
            bytes.push(l(), Value::Counter(u(io, b)));
            lat.push(l(), Value::Seconds(u(io, t) as f64 / crate::vhost_blk::IOSTAT_TICK_RATE as f64));
        }
        let mut l = bdev();
        l.push(("type", "flush".into()));
        ops.push(l, Value::Counter(u(io, "num_flush_ops")));
        ioerr.push(bdev(), Value::Counter(u(io, "num_io_errors")));
        let dev = &stats["device"];
        if let Some(list) = dev.get("tenants") {
            let device = vec![("device", name.clone())];
            for t in serde_json::from_value::<Vec<TenantSnapshot>>(list.clone()).unwrap_or_default() {
                tenants.push((device.clone(), t));
            }
            auth.push(device.clone(), Value::Counter(u(dev, "auth_failures")));
            blkerr.push(device.clone(), Value::Counter(u(dev, "block_io_errors")));
            proxies.push(device, Value::Gauge(u(dev, "proxies_connected") as i64));
        }
    }
    let refs: Vec<(Labels, &TenantSnapshot)> = tenants.iter().map(|(l, t)| (l.clone(), t)).collect();
    tenant_families("pov_dpu", "tenant", &refs, true, &mut out);
    out.extend([ops, bytes, lat, ioerr, auth, blkerr, proxies]);
    let mut busy = Family::new("pov_dpu_reactor_busy_seconds", "Wall time in reactor iterations that did work, seconds.");
    let mut idle = Family::new("pov_dpu_reactor_idle_seconds", "Wall time otherwise (idle polls, sleeping), seconds.");
    let mut cpu = Family::new("pov_dpu_reactor_cpu_seconds", "CPU time of the reactor thread, seconds.");
    for r in d.reactors() {
        let s = r.stats();
        let l = || vec![("reactor", r.id().to_string())];
        busy.push(l(), Value::Seconds(s.busy_ns.load(Ordering::Relaxed) as f64 / 1e9));
        idle.push(l(), Value::Seconds(s.idle_ns.load(Ordering::Relaxed) as f64 / 1e9));
        cpu.push(l(), Value::Seconds(s.cpu_time_us.load(Ordering::Relaxed) as f64 / 1e6));
    }
    out.extend([busy, idle, cpu]);
    out
}
