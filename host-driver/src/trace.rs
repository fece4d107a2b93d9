//! Request tracing on the host: with a [`Tracer`] installed
//! ([`crate::Session::set_tracer`]), every request of the session carries the trace
//! switch ([`pov_proto::io::flags::TRACE`]); the DPU and the proxy stamp their times
//! (`pov_proto::trace`) and the host reports, per request, where the time went:
//! host → DPU → proxy → backend and back ([`RequestTrace`]). `pov-host --trace`
//! prints one line per request on standard error.
//!
//! Every figure is a duration measured on one machine's monotonic clock; the legs
//! between machines are differences (host round trip − DPU time, the DPU's proxy
//! round trip − proxy time), so no clock needs to be synchronized.

use pov_proto::io::Op;
use pov_proto::trace::Trace;
use pov_proto::Status;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What is called with each traced request's times (from the thread that ran it).
pub type Tracer = Arc<dyn Fn(&RequestTrace) + Send + Sync>;

/// Where one request's time went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTrace {
    /// The operation.
    pub op: Op,
    /// The path (or the file's path) it was for.
    pub target: String,
    /// Its status.
    pub status: Status,
    /// File data moved, bytes: written (Write, Append) or read (Read); 0 otherwise.
    pub bytes: u64,
    /// On the host: request encoded and sealed → response opened (block round trips
    /// included).
    pub host: Duration,
    /// The DPU's and the proxy's times; `None` if the request was answered on the
    /// DPU (an error, Close) or the DPU does not trace.
    pub dpu: Option<Trace>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl RequestTrace {
    /// The time between the host and the DPU (both block IOs' transfers, the virtio
    /// path, the DPU's polling delay): host time − DPU time, ns.
    pub fn host_dpu_ns(&self) -> Option<u64> {
        self.dpu.map(|d| u64::try_from(self.host.as_nanos()).unwrap_or(u64::MAX).saturating_sub(d.dpu_ns))
    }

    /// The network between the DPU and the proxy, both ways: proxy round trip − proxy
    /// time, ns.
    pub fn network_ns(&self) -> Option<u64> {
        let d = self.dpu?;
        d.proxy.map(|p| d.proxy_rtt_ns.saturating_sub(p.proxy_ns))
    }
}

impl fmt::Display for RequestTrace {
    /// `trace: read /f 4096 B success: 812.0 µs = host↔DPU 95.1 µs + DPU 716.9 µs (queue
    /// 12.0 µs, to proxy and back 690.2 µs = network 420.0 µs + proxy 270.2 µs (queue
    /// 5.1 µs, backend 260.3 µs), respond 14.7 µs)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = us(u64::try_from(self.host.as_nanos()).unwrap_or(u64::MAX));
        write!(f, "trace: {} {}", crate::error::op_name(self.op), self.target)?;
        if self.bytes > 0 {
            write!(f, " {} B", self.bytes)?;
        }
        write!(f, " {}: {host:.1} µs", self.status)?;
        let Some(d) = self.dpu else { return write!(f, " (no DPU times: answered on the DPU)") };
        let respond = d.dpu_ns.saturating_sub(d.dpu_queue_ns + d.proxy_rtt_ns);
        write!(
            f,
            " = host↔DPU {:.1} µs + DPU {:.1} µs (queue {:.1} µs, to proxy and back {:.1} µs",
            us(self.host_dpu_ns().unwrap_or(0)),
            us(d.dpu_ns),
            us(d.dpu_queue_ns),
            us(d.proxy_rtt_ns)
        )?;
        if let Some(p) = d.proxy {
            write!(
                f,
                " = network {:.1} µs + proxy {:.1} µs (queue {:.1} µs, backend {:.1} µs)",
                us(self.network_ns().unwrap_or(0)),
                us(p.proxy_ns),
                us(p.queue_ns),
                us(p.backend_ns)
            )?;
        }
        if d.tries > 1 {
            write!(f, ", {} tries", d.tries)?;
        }
        write!(f, ", respond {:.1} µs)", us(respond))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pov_proto::trace::ProxyTrace;

    #[test]
    fn legs_are_differences_and_the_line_names_them() {
        let t = RequestTrace {
            op: Op::Read,
            target: "/f".into(),
            status: Status::Ok,
            bytes: 4096,
            host: Duration::from_micros(800),
            dpu: Some(Trace {
                dpu_ns: 700_000,
                dpu_queue_ns: 10_000,
                proxy_rtt_ns: 680_000,
                proxy: Some(ProxyTrace { proxy_ns: 300_000, queue_ns: 5_000, backend_ns: 290_000 }),
                tries: 1,
            }),
        };
        assert_eq!((t.host_dpu_ns(), t.network_ns()), (Some(100_000), Some(380_000)));
        let line = t.to_string();
        for part in ["800.0 µs", "host↔DPU 100.0 µs", "DPU 700.0 µs", "network 380.0 µs", "backend 290.0 µs", "respond 10.0 µs"]
        {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        let local = RequestTrace { dpu: None, ..t };
        assert!(local.to_string().contains("answered on the DPU"), "{local}");
    }
}
