//! Prometheus exposition: metric families built at scrape time and the HTTP endpoint
//! that serves them (`--metrics-listen ADDR` on `pov-dpud` and `pov-proxy`).
//!
//! A daemon hands [`MetricsServer::start`] a function that reads its live counters
//! and returns [`Family`]s; every `GET /metrics` calls it and answers in the
//! OpenMetrics text format (OpenMetrics 1.0, which Prometheus ≥ 2.5 scrapes),
//! encoded by the official `prometheus-client` crate. Counters get the `_total` suffix
//! from the encoder; names carry their unit (`_seconds`, `_bytes`) as Prometheus's
//! naming conventions ask.
//!
//! The endpoint has no authentication (Prometheus's convention): it shows tenant
//! names and traffic, never data or secrets; bind it to a management address.

use crate::counters::{HistogramSnapshot, TenantSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The labels of one sample: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A monotonic count (encoded with the `_total` suffix).
    Counter(u64),
    /// A monotonic count of seconds (encoded with the `_total` suffix).
    Seconds(f64),
    /// A value that goes up and down.
    Gauge(i64),
    /// A histogram.
    Histogram(HistogramSnapshot),
}

/// A metric family: one name, its help, and samples of one kind.
#[derive(Debug, Clone)]
pub struct Family {
    /// Name without the `_total` suffix of counters (`pov_dpu_requests`).
    pub name: Cow<'static, str>,
    /// One line of help.
    pub help: &'static str,
    /// Samples; all of the family's kind.
    pub samples: Vec<(Labels, Value)>,
}

impl Family {
    /// An empty family.
    pub fn new(name: impl Into<Cow<'static, str>>, help: &'static str) -> Family {
        Family { name: name.into(), help, samples: Vec::new() }
    }

    /// Adds a sample.
    pub fn push(&mut self, labels: Labels, v: Value) -> &mut Family {
        self.samples.push((labels, v));
        self
    }
}

/// The families of per-tenant counters shared by both daemons, under `prefix`
/// (`pov_dpu`, `pov_proxy`): `{prefix}_requests_total{..., op}`,
/// `{prefix}_errors_total{..., status}`, `{prefix}_read_bytes_total`,
/// `{prefix}_written_bytes_total`, `{prefix}_in_flight`, `{prefix}_sessions` (when
/// `sessions`), `{prefix}_request_duration_seconds` (histogram). `labels` are added to
/// each snapshot's own name label, `name_label` (`tenant`, or `volume`).
pub fn tenant_families(
    prefix: &str,
    name_label: &'static str,
    tenants: &[(Labels, &TenantSnapshot)],
    sessions: bool,
    out: &mut Vec<Family>,
) {
    let name = |s: &str| format!("{prefix}_{s}");
    let mut requests = Family::new(name("requests"), "Requests answered, by operation.");
    let mut errors = Family::new(name("errors"), "Requests answered with an error, by status.");
    let mut read = Family::new(name("read_bytes"), "Data returned by reads, bytes.");
    let mut written = Family::new(name("written_bytes"), "Data accepted by writes and appends, bytes.");
    let mut in_flight = Family::new(name("in_flight"), "Requests received and not answered yet (queue depth).");
    let mut open = Family::new(name("sessions"), "Sessions open now.");
    let mut latency = Family::new(name("request_duration_seconds"), "Time from a request's arrival to its answer, seconds.");
    for (extra, t) in tenants {
        let base = || {
            let mut l = extra.clone();
            l.push((name_label, t.tenant.clone()));
            l
        };
        for (op, n) in &t.by_op {
            let mut l = base();
            l.push(("op", op.clone()));
            requests.push(l, Value::Counter(*n));
        }
        for (status, n) in &t.errors_by_status {
            let mut l = base();
            l.push(("status", status.clone()));
            errors.push(l, Value::Counter(*n));
        }
        read.push(base(), Value::Counter(t.read_bytes));
        written.push(base(), Value::Counter(t.write_bytes));
        in_flight.push(base(), Value::Gauge(t.in_flight as i64));
        if sessions {
            open.push(base(), Value::Gauge(t.sessions as i64));
        }
        latency.push(base(), Value::Histogram(t.latency.clone()));
    }
    out.extend([requests, errors, read, written, in_flight]);
    if sessions {
        out.push(open);
    }
    out.push(latency);
}

/// The families of one scrape, as a `prometheus-client` collector.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let Some((_, first)) = f.samples.first() else { continue };
            let kind = match first {
                Value::Counter(_) | Value::Seconds(_) => MetricType::Counter,
                Value::Gauge(_) => MetricType::Gauge,
                Value::Histogram(_) => MetricType::Histogram,
            };
            let mut m = encoder.encode_descriptor(&f.name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                if labels.is_empty() {
                    encode_value(&mut m, v)?;
                } else {
                    encode_value(&mut m.encode_family(labels)?, v)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(m: &mut MetricEncoder, v: &Value) -> Result<(), std::fmt::Error> {
    match v {
        Value::Counter(c) => m.encode_counter::<NoLabelSet, _, u64>(c, None),
        Value::Seconds(c) => m.encode_counter::<NoLabelSet, _, f64>(c, None),
        Value::Gauge(g) => m.encode_gauge(g),
        Value::Histogram(h) => {
            // The encoder takes per-bucket counts and accumulates them itself, the last
            // bucket's bound being f64::MAX (written `+Inf`).
            let mut prev = 0;
            let mut b: Vec<(f64, u64)> = h
                .buckets
                .iter()
                .map(|&(le, acc)| {
                    let n = acc.saturating_sub(prev);
                    prev = acc;
                    (le, n)
                })
                .collect();
            b.push((f64::MAX, h.count.saturating_sub(prev)));
            m.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &b, None)
        }
    }
}

/// `families` in the OpenMetrics text format (ends with `# EOF`).
pub fn encode(families: Vec<Family>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Snapshot(families)));
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut s, &reg);
    s
}

/// Reads the daemon's counters into families (called once per scrape, on the
/// endpoint's thread).
pub type Collect = Arc<dyn Fn() -> Vec<Family> + Send + Sync>;

/// Content type of the answer (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP endpoint: `GET /metrics` answers the families; anything else 404 (405
/// for other methods). One thread, blocked in `accept`/`read` when nobody scrapes.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("addr", &self.addr).finish()
    }
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any free port) and serves `collect`'s families.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission).
    pub fn start(addr: SocketAddr, collect: Collect) -> io::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr).map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e.to_string()))?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new().name("pov-metrics".into()).spawn(move || serve(&s, &collect))?;
        Ok(MetricsServer { server, addr, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, collect: &Collect) {
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("");
        let resp = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let body = encode(collect());
                let ct = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE).ok();
                let mut r = tiny_http::Response::from_string(body);
                if let Some(h) = ct {
                    r.add_header(h);
                }
                r
            }
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("not found: the metrics are at /metrics\n").with_status_code(404)
            }
            _ => tiny_http::Response::from_string("only GET is served\n").with_status_code(405),
        };
        if let Err(e) = req.respond(resp) {
            log::debug!("metrics: answer not sent: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::CounterRegistry;
    use pov_proto::io::Op;
    use pov_proto::Status;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn tenant_counters_are_exposed_in_openmetrics_text() {
        let r = CounterRegistry::default();
        let t = r.get("acme");
        t.record(Op::Read, Status::Ok, 4096, 0, Duration::from_micros(70));
        t.record(Op::Read, Status::Ok, 4096, 0, Duration::from_micros(300));
        t.record(Op::Open, Status::NotFound, 0, 0, Duration::from_micros(30));
        t.add_sessions(2);
        let snaps = r.snapshot();
        let mut fams = Vec::new();
        tenant_families("pov_test", "tenant", &[(vec![("device", "pov0".into())], &snaps[0])], true, &mut fams);
        let text = encode(fams);
        for line in [
            "# TYPE pov_test_requests counter",
            "pov_test_requests_total{device=\"pov0\",tenant=\"acme\",op=\"read\"} 2",
            "pov_test_requests_total{device=\"pov0\",tenant=\"acme\",op=\"open\"} 1",
            "pov_test_errors_total{device=\"pov0\",tenant=\"acme\",status=\"not_found\"} 1",
            "pov_test_read_bytes_total{device=\"pov0\",tenant=\"acme\"} 8192",
            "pov_test_sessions{device=\"pov0\",tenant=\"acme\"} 2",
            "# TYPE pov_test_request_duration_seconds histogram",
            "pov_test_request_duration_seconds_bucket{le=\"0.0001\",device=\"pov0\",tenant=\"acme\"} 2",
            "pov_test_request_duration_seconds_count{device=\"pov0\",tenant=\"acme\"} 3",
            "pov_test_request_duration_seconds_bucket{le=\"0.00025\",device=\"pov0\",tenant=\"acme\"} 2",
            "pov_test_request_duration_seconds_bucket{le=\"0.0005\",device=\"pov0\",tenant=\"acme\"} 3",
            "pov_test_request_duration_seconds_bucket{le=\"+Inf\",device=\"pov0\",tenant=\"acme\"} 3",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_endpoint_serves_metrics_and_refuses_other_paths() {
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = calls.clone();
        let collect: Collect = Arc::new(move || {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let mut f = Family::new("pov_test_scrapes", "Scrapes.");
            f.push(vec![], Value::Counter(n));
            vec![f]
        });
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), collect).unwrap();
        let a = get(m.addr(), "/metrics");
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(a.contains("application/openmetrics-text"), "{a}");
        assert!(a.contains("pov_test_scrapes_total 1"), "{a}");
        assert!(get(m.addr(), "/metrics").contains("pov_test_scrapes_total 2"));
        assert!(get(m.addr(), "/other").starts_with("HTTP/1.1 404"));
        drop(m);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
