//! `pov-proxy --metrics-listen ADDR`: the Prometheus endpoint's families, read at each
//! scrape from the server's live counters ([`pov_metrics::expose`] serves them).
//!
//! | family | labels | what |
//! |---|---|---|
//! | `pov_proxy_requests_total` | `backend`, `tenant`, `op` | requests run for the tenant |
//! | `pov_proxy_errors_total` | `backend`, `tenant`, `status` | answered with an error |
//! | `pov_proxy_read_bytes_total`, `pov_proxy_written_bytes_total` | `backend`, `tenant` | file data |
//! | `pov_proxy_in_flight` | `backend`, `tenant` | requests at the backend now |
//! | `pov_proxy_request_duration_seconds` | `backend`, `tenant` | histogram, decoded → answered (backend time, QoS wait excluded) |
//! | `pov_proxy_volume_*` | `backend`, `volume`, … | the same for plain volumes |
//! | `pov_proxy_frames_total`, `pov_proxy_bad_frames_total`, `pov_proxy_denied_total`, `pov_proxy_pings_total`, `pov_proxy_abandoned_total` | — | server-wide |
//! | `pov_proxy_connections_accepted_total`, `pov_proxy_connections_open` | — | connections |
//! | `pov_proxy_reactor_cpu_seconds_total` | `reactor` | reactor thread CPU time |

use crate::server::Server;
use pov_metrics::expose::{tenant_families, Collect};
use pov_metrics::{Family, Labels, TenantSnapshot, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// The collector of `server` (holds it weakly).
pub fn collector(server: &Arc<Server>) -> Collect {
    let s: Weak<Server> = Arc::downgrade(server);
    Arc::new(move || s.upgrade().map(|s| families(&s)).unwrap_or_default())
}

/// Every family, from the server's counters now.
pub fn families(s: &Server) -> Vec<Family> {
    let mut out = Vec::new();
    let backend: Labels = vec![("backend", s.backend_kind().to_string())];
    let tenants = s.tenant_stats();
    let refs: Vec<(Labels, &TenantSnapshot)> = tenants.iter().map(|t| (backend.clone(), t)).collect();
    tenant_families("pov_proxy", "tenant", &refs, false, &mut out);
    let volumes = s.volume_stats();
    let refs: Vec<(Labels, &TenantSnapshot)> = volumes.iter().map(|t| (backend.clone(), t)).collect();
    tenant_families("pov_proxy_volume", "volume", &refs, false, &mut out);
    let t = s.stats();
    for (name, help, v) in [
        ("pov_proxy_frames", "Frames that decoded as requests.", Value::Counter(t.frames)),
        ("pov_proxy_bad_frames", "Frames that did not decode.", Value::Counter(t.bad_frames)),
        ("pov_proxy_denied", "Requests refused for their tenant or volume (not enrolled for it).", Value::Counter(t.denied)),
        ("pov_proxy_pings", "Liveness probes answered.", Value::Counter(t.pings)),
        ("pov_proxy_abandoned", "Requests not run: the DPU had closed their connection.", Value::Counter(t.abandoned)),
        ("pov_proxy_connections_accepted", "Connections accepted.", Value::Counter(t.connections_accepted)),
        (
            "pov_proxy_connections_timed_out",
            "Connections closed for a frame or idle timeout.",
            Value::Counter(t.connections_timed_out),
        ),
        ("pov_proxy_connections_open", "Connections open now.", Value::Gauge(t.connections_open as i64)),
    ] {
        let mut f = Family::new(name, help);
        f.push(Vec::new(), v);
        out.push(f);
    }
    let mut cpu = Family::new("pov_proxy_reactor_cpu_seconds", "CPU time of the reactor thread, seconds.");
    for r in s.reactors() {
        cpu.push(
            vec![("reactor", r.id().to_string())],
            Value::Seconds(r.stats().cpu_time_us.load(Ordering::Relaxed) as f64 / 1e6),
        );
    }
    out.push(cpu);
    out
}
