//! Request tracing (the paper's trace switch in the proxy request header, §4.3.2): a
//! host sets [`flags::TRACE`] on a request; the proxy stamps its times into a
//! [`ProxyTrace`] after its response header, the DPU adds its own and hands the
//! host a [`Trace`] in the reserved bytes of the IO response header
//! (`docs/protocol.md`, "Request tracing"). Both carry durations, not clock readings:
//! the three machines' clocks are not synchronized, so each stage reports what it
//! measured on its own monotonic clock and the host derives the network legs by
//! subtraction.
//!
//! [`flags::TRACE`]: crate::io::flags::TRACE

use crate::codec::*;

/// Size of a [`ProxyTrace`] on the wire, bytes.
pub const PROXY_TRACE_LEN: usize = 24;
/// Offset of a [`Trace`] in an IO response header, bytes (inside the 448 reserved
/// bytes, so it is authenticated with the header).
pub const TRACE_OFFSET: usize = 64;
/// Size of a [`Trace`] on the wire, bytes.
pub const TRACE_LEN: usize = 64;

/// The proxy's times for one traced request, nanoseconds. Follows the 40-byte proxy
/// response header when its flags carry [`crate::io::flags::TRACED`]:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | `proxy_ns`: frame received → response encoded |
/// | 8 | 8 | `queue_ns`: frame received → backend call started (QoS and worker wait) |
/// | 16 | 8 | `backend_ns`: the backend call |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyTrace {
    /// Frame received → response encoded, ns.
    pub proxy_ns: u64,
    /// Frame received → backend call started, ns.
    pub queue_ns: u64,
    /// The backend call, ns.
    pub backend_ns: u64,
}

impl ProxyTrace {
    /// Encodes into the first [`PROXY_TRACE_LEN`] bytes of `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        put_u64(b, 0, self.proxy_ns);
        put_u64(b, 8, self.queue_ns);
        put_u64(b, 16, self.backend_ns);
    }

    /// Decodes the first [`PROXY_TRACE_LEN`] bytes of `b` (`None` if shorter).
    pub fn decode(b: &[u8]) -> Option<ProxyTrace> {
        (b.len() >= PROXY_TRACE_LEN).then(|| ProxyTrace {
            proxy_ns: get_u64(b, 0),
            queue_ns: get_u64(b, 8),
            backend_ns: get_u64(b, 16),
        })
    }
}

/// The DPU's (and, within it, the proxy's) times for one traced request,
/// nanoseconds, at [`TRACE_OFFSET`] of the IO response header when its flags carry
/// [`crate::io::flags::TRACED`]:
///
/// | offset | size | field |
/// |---|---|---|
/// | 64 | 8 | `dpu_ns`: request complete in its slot → response sealed |
/// | 72 | 8 | `dpu_queue_ns`: request complete → its last try sent to a proxy (scheduling, gathering, held while no proxy was usable, earlier tries) |
/// | 80 | 8 | `proxy_rtt_ns`: last try sent → its answer received (network both ways plus the proxy) |
/// | 88 | 8 | `proxy_ns` ([`ProxyTrace`]; 0 when the proxy sent none) |
/// | 96 | 8 | `proxy_queue_ns` |
/// | 104 | 8 | `backend_ns` |
/// | 112 | 4 | tries: proxies the request was sent to (a trace is present only for requests sent to a proxy) |
/// | 116 | 4 | flags: bit 0 the proxy's times are present |
/// | 120 | 8 | reserved (0) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trace {
    /// Request complete in its slot → response sealed, ns.
    pub dpu_ns: u64,
    /// Request complete → last try sent to a proxy, ns.
    pub dpu_queue_ns: u64,
    /// Last try sent → its answer received, ns.
    pub proxy_rtt_ns: u64,
    /// The proxy's own times, if it sent them.
    pub proxy: Option<ProxyTrace>,
    /// Proxies the request was sent to (at least 1).
    pub tries: u32,
}

impl Trace {
    /// Writes the trace into an encoded IO response header `h` (at [`TRACE_OFFSET`]).
    pub fn encode_into(&self, h: &mut [u8]) {
        let b = &mut h[TRACE_OFFSET..TRACE_OFFSET + TRACE_LEN];
        b.fill(0);
        put_u64(b, 0, self.dpu_ns);
        put_u64(b, 8, self.dpu_queue_ns);
        put_u64(b, 16, self.proxy_rtt_ns);
        if let Some(p) = &self.proxy {
            p.encode_into(&mut b[24..]);
        }
        put_u32(b, 48, self.tries);
        put_u32(b, 52, u32::from(self.proxy.is_some()));
    }

    /// Reads the trace from an IO response header `h` (`None` if `h` is too short).
    pub fn decode(h: &[u8]) -> Option<Trace> {
        let b = h.get(TRACE_OFFSET..TRACE_OFFSET + TRACE_LEN)?;
        Some(Trace {
            dpu_ns: get_u64(b, 0),
            dpu_queue_ns: get_u64(b, 8),
            proxy_rtt_ns: get_u64(b, 16),
            proxy: (get_u32(b, 52) & 1 != 0).then(|| ProxyTrace::decode(&b[24..])).flatten(),
            tries: get_u32(b, 48),
        })
    }
}

/// Nanoseconds of `d`, saturating.
pub fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_round_trip() {
        let p = ProxyTrace { proxy_ns: 3, queue_ns: 1, backend_ns: 2 };
        let mut b = [0u8; PROXY_TRACE_LEN];
        p.encode_into(&mut b);
        assert_eq!(ProxyTrace::decode(&b), Some(p));
        assert_eq!(ProxyTrace::decode(&b[..23]), None);
        let mut h = [0xffu8; 512];
        for proxy in [Some(p), None] {
            let t = Trace { dpu_ns: 10, dpu_queue_ns: 4, proxy_rtt_ns: 5, proxy, tries: 2 };
            t.encode_into(&mut h);
            assert_eq!(Trace::decode(&h), Some(t));
        }
        assert_eq!(h[TRACE_OFFSET + 56..TRACE_OFFSET + 64], [0u8; 8], "reserved bytes zeroed");
        assert_eq!(Trace::decode(&h[..100]), None);
    }
}
