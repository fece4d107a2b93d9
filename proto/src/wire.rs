//! Frames between `pov-dpud` and `pov-proxy` (`docs/protocol.md`, "DPU–proxy frames").
//!
//! A transport carries a byte stream of frames: `len: u32` (bytes that follow, at most
//! [`MAX_FRAME`]) then the frame body. A body is a [`ProxyRequest`] (DPU → proxy) or a
//! [`ProxyResponse`] (proxy → DPU), each a fixed header followed by variable parts.
//! The proxy request header wraps the host's SDK hint with the tenant, the normalized
//! path, load information and the epoch of the DPU's route table (paper §4.3.2;
//! [`crate::route`]), so that a proxy can tell a request routed by a stale table.

use crate::codec::*;
use crate::io::flags::TRACED;
use crate::io::{Op, SdkHint, MAX_PATH};
use crate::trace::{ProxyTrace, PROXY_TRACE_LEN};
use crate::{DecodeError, Status, MAX_IO_BYTES, PROTOCOL_VERSION};

/// Magic of a proxy request: ASCII `PoVP`.
pub const PROXY_REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"PoVP");
/// Magic of a proxy response: ASCII `PoVp`.
pub const PROXY_RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"PoVp");
/// Fixed part of a proxy request, bytes.
pub const PROXY_REQUEST_HEADER: usize = 128;
/// Fixed part of a proxy response, bytes.
pub const PROXY_RESPONSE_HEADER: usize = 40;
/// Largest frame body, bytes: a request header, a tenant, a path and 1 MiB of data.
pub const MAX_FRAME: usize = PROXY_REQUEST_HEADER + 64 + MAX_PATH + crate::admin::MAX_PREFIX + MAX_IO_BYTES as usize;
/// Size of the length prefix, bytes.
pub const LEN_PREFIX: usize = 4;

/// Reads the length prefix at the start of `b`: `Ok(None)` if fewer than 4 bytes are
/// there, `Err` if the announced body is larger than [`MAX_FRAME`].
pub fn frame_len(b: &[u8]) -> Result<Option<usize>, DecodeError> {
    if b.len() < LEN_PREFIX {
        return Ok(None);
    }
    let n = get_u32(b, 0) as usize;
    if n > MAX_FRAME {
        return Err(DecodeError::Invalid { field: "frame length", why: "over the frame limit" });
    }
    Ok(Some(n))
}

/// Fixed fields of a proxy request (the "proxy request header").
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVP` |
/// | 4 | 2 | protocol version |
/// | 6 | 2 | operation ([`Op`]) |
/// | 8 | 8 | tag (DPU request context, echoed) |
/// | 16 | 8 | offset (bytes; List: entry index; Truncate: size) |
/// | 24 | 4 | length (Read: bytes wanted) |
/// | 28 | 4 | flags (IO request flags) |
/// | 32 | 2 | tenant length |
/// | 34 | 2 | path length |
/// | 36 | 4 | payload length |
/// | 40 | 64 | SDK hint |
/// | 104 | 1 | trace switch (1 = trace) |
/// | 105 | 1 | QoS class: the effective one (the queue's, demoted by the tenant's policy on the DPU); the proxy schedules by it |
/// | 106 | 2 | reserved |
/// | 108 | 4 | load: requests the DPU has in flight on this connection |
/// | 112 | 8 | session ID (for accounting and traces) |
/// | 120 | 1 | grant flags: bit 0 read-only (the proxy re-checks the session's grant) |
/// | 121 | 1 | reserved |
/// | 122 | 2 | grant prefix length |
/// | 124 | 4 | route epoch: of the DPU's route table when it routed the request (0: none) |
/// | 128 | … | tenant, path, grant prefix, payload |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    pub op: Op,
    pub tag: u64,
    pub offset: u64,
    pub length: u32,
    pub flags: u32,
    pub hint: SdkHint,
    pub trace: bool,
    pub qos: u8,
    pub load: u32,
    /// Epoch of the route table the DPU routed the request with (0: none).
    pub epoch: u32,
    pub session_id: u64,
    pub tenant: String,
    pub path: String,
    /// The session's grant (read-only, path prefix); default: everything.
    pub grant: crate::io::Grant,
}

/// A decoded proxy request borrowing its payload from the frame.
#[derive(Debug)]
pub struct ProxyRequestRef<'a> {
    pub req: ProxyRequest,
    pub payload: &'a [u8],
}

/// The fields of a [`ProxyRequest`] with borrowed tenant name and path: what the DPU's
/// fast path encodes without copying either string. Field meanings as in
/// [`ProxyRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ProxyRequestView<'a> {
    pub op: Op,
    pub tag: u64,
    pub offset: u64,
    pub length: u32,
    pub flags: u32,
    pub hint: SdkHint,
    pub trace: bool,
    pub qos: u8,
    pub load: u32,
    pub epoch: u32,
    pub session_id: u64,
    pub tenant: &'a str,
    pub path: &'a str,
    /// Grant: read-only.
    pub read_only: bool,
    /// Grant: path prefix (empty: none).
    pub prefix: &'a str,
}

impl ProxyRequestView<'_> {
    /// Encodes the frame (length prefix included) with `payload` appended, into `out`
    /// (cleared first). Fails if a variable part is over its limit.
    pub fn encode_frame(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        if self.tenant.len() > crate::admin::MAX_TENANT_NAME {
            return Err(DecodeError::Invalid { field: "tenant", why: "too long" });
        }
        if self.path.len() > MAX_PATH {
            return Err(DecodeError::Invalid { field: "path", why: "too long" });
        }
        if self.prefix.len() > crate::admin::MAX_PREFIX {
            return Err(DecodeError::Invalid { field: "prefix", why: "too long" });
        }
        if payload.len() > MAX_IO_BYTES as usize {
            return Err(DecodeError::Invalid { field: "payload", why: "over 1 MiB" });
        }
        let body = PROXY_REQUEST_HEADER + self.tenant.len() + self.path.len() + self.prefix.len() + payload.len();
        out.clear();
        out.reserve(LEN_PREFIX + body);
        out.extend_from_slice(&(body as u32).to_le_bytes());
        let mut h = [0u8; PROXY_REQUEST_HEADER];
        put_u32(&mut h, 0, PROXY_REQUEST_MAGIC);
        put_u16(&mut h, 4, PROTOCOL_VERSION);
        put_u16(&mut h, 6, self.op as u16);
        put_u64(&mut h, 8, self.tag);
        put_u64(&mut h, 16, self.offset);
        put_u32(&mut h, 24, self.length);
        put_u32(&mut h, 28, self.flags);
        put_u16(&mut h, 32, self.tenant.len() as u16);
        put_u16(&mut h, 34, self.path.len() as u16);
        put_u32(&mut h, 36, payload.len() as u32);
        self.hint.encode_into(&mut h, 40);
        h[104] = self.trace as u8;
        h[105] = self.qos;
        put_u32(&mut h, 108, self.load);
        put_u64(&mut h, 112, self.session_id);
        h[120] = self.read_only as u8;
        put_u16(&mut h, 122, self.prefix.len() as u16);
        put_u32(&mut h, 124, self.epoch);
        out.extend_from_slice(&h);
        out.extend_from_slice(self.tenant.as_bytes());
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(payload);
        Ok(())
    }
}

impl ProxyRequest {
    /// A request for `op` on `tenant`'s `path` with every other field zero or default
    /// (tag 0, offset 0, length 0, no flags, default SDK hint, QoS class 0, no trace,
    /// load 0, session 0); set the rest with struct update syntax.
    pub fn new(op: Op, tenant: &str, path: &str) -> ProxyRequest {
        ProxyRequest {
            op,
            tag: 0,
            offset: 0,
            length: 0,
            flags: 0,
            hint: SdkHint::default(),
            trace: false,
            qos: 0,
            load: 0,
            epoch: 0,
            session_id: 0,
            tenant: tenant.into(),
            path: path.into(),
            grant: crate::io::Grant::default(),
        }
    }

    /// The request with borrowed strings.
    pub fn view(&self) -> ProxyRequestView<'_> {
        ProxyRequestView {
            op: self.op,
            tag: self.tag,
            offset: self.offset,
            length: self.length,
            flags: self.flags,
            hint: self.hint,
            trace: self.trace,
            qos: self.qos,
            load: self.load,
            epoch: self.epoch,
            session_id: self.session_id,
            tenant: &self.tenant,
            path: &self.path,
            read_only: self.grant.read_only,
            prefix: &self.grant.prefix,
        }
    }

    /// Encodes the frame (length prefix included) with `payload` appended, into `out`
    /// (cleared first). Fails if a variable part is over its limit.
    pub fn encode_frame(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        self.view().encode_frame(payload, out)
    }

    /// What a scheduler needs of a frame body without decoding it: `(QoS class,
    /// tenant, bytes moved)` (bytes = the larger of the read length and the payload
    /// length). `None` when the body is too short for them or the tenant is not UTF-8;
    /// nothing else is checked ([`ProxyRequest::decode`] does, when it runs).
    pub fn peek_ticket(b: &[u8]) -> Option<(u8, &str, u64)> {
        if b.len() < PROXY_REQUEST_HEADER {
            return None;
        }
        let tl = get_u16(b, 32) as usize;
        let tenant = std::str::from_utf8(b.get(PROXY_REQUEST_HEADER..PROXY_REQUEST_HEADER + tl)?).ok()?;
        Some((b[105], tenant, u64::from(get_u32(b, 24).max(get_u32(b, 36)))))
    }

    /// Decodes a frame body (without the length prefix).
    pub fn decode(b: &[u8]) -> Result<ProxyRequestRef<'_>, DecodeError> {
        need(b, PROXY_REQUEST_HEADER)?;
        check_magic(b, PROXY_REQUEST_MAGIC)?;
        let op = Op::from_u16(get_u16(b, 6))?;
        let tl = get_u16(b, 32) as usize;
        let pl = get_u16(b, 34) as usize;
        let dl = get_u32(b, 36) as usize;
        let gl = get_u16(b, 122) as usize;
        if gl > crate::admin::MAX_PREFIX {
            return Err(DecodeError::Invalid { field: "prefix", why: "over limit" });
        }
        if tl > crate::admin::MAX_TENANT_NAME || pl > MAX_PATH || dl > MAX_IO_BYTES as usize {
            return Err(DecodeError::Invalid { field: "lengths", why: "over limit" });
        }
        if b.len() != PROXY_REQUEST_HEADER + tl + pl + gl + dl {
            return Err(DecodeError::Invalid { field: "frame length", why: "does not match header" });
        }
        let s = PROXY_REQUEST_HEADER;
        let tenant = std::str::from_utf8(&b[s..s + tl])
            .map_err(|_| DecodeError::Invalid { field: "tenant", why: "not UTF-8" })?
            .to_string();
        let path = std::str::from_utf8(&b[s + tl..s + tl + pl])
            .map_err(|_| DecodeError::Invalid { field: "path", why: "not UTF-8" })?
            .to_string();
        let prefix = std::str::from_utf8(&b[s + tl + pl..s + tl + pl + gl])
            .map_err(|_| DecodeError::Invalid { field: "prefix", why: "not UTF-8" })?
            .to_string();
        Ok(ProxyRequestRef {
            req: ProxyRequest {
                op,
                tag: get_u64(b, 8),
                offset: get_u64(b, 16),
                length: get_u32(b, 24),
                flags: get_u32(b, 28),
                hint: SdkHint::decode_from(b, 40)?,
                trace: b[104] != 0,
                qos: b[105],
                load: get_u32(b, 108),
                epoch: get_u32(b, 124),
                session_id: get_u64(b, 112),
                grant: crate::io::Grant { read_only: b[120] & 1 != 0, prefix },
                tenant,
                path,
            },
            payload: &b[s + tl + pl + gl..],
        })
    }
}

/// Fixed fields of a proxy response.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVp` |
/// | 4 | 2 | protocol version |
/// | 6 | 2 | operation echoed |
/// | 8 | 8 | tag echoed |
/// | 16 | 4 | status ([`Status`]) |
/// | 20 | 4 | payload length |
/// | 24 | 8 | result (as in the IO response) |
/// | 32 | 4 | flags (IO response flags; [`crate::io::flags::TRACED`]: a trace block follows the header) |
/// | 36 | 4 | reserved |
/// | 40 | 24 | with `TRACED` only: the proxy's times ([`crate::trace::ProxyTrace`]) |
/// | 40 or 64 | … | payload |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResponse {
    pub op: u16,
    pub tag: u64,
    pub status: Status,
    pub result: u64,
    pub flags: u32,
}

impl ProxyResponse {
    /// Encodes the frame (length prefix included) with `payload`, into `out` (cleared
    /// first).
    pub fn encode_frame(&self, payload: &[u8], out: &mut Vec<u8>) {
        self.encode_frame_traced(None, payload, out)
    }

    /// As [`ProxyResponse::encode_frame`], with the proxy's times of a traced request
    /// after the header (and [`crate::io::flags::TRACED`] set in its flags).
    pub fn encode_frame_traced(&self, trace: Option<&ProxyTrace>, payload: &[u8], out: &mut Vec<u8>) {
        let traced = if trace.is_some() { PROXY_TRACE_LEN } else { 0 };
        let body = PROXY_RESPONSE_HEADER + traced + payload.len();
        out.clear();
        out.reserve(LEN_PREFIX + body);
        out.extend_from_slice(&(body as u32).to_le_bytes());
        let mut h = [0u8; PROXY_RESPONSE_HEADER];
        put_u32(&mut h, 0, PROXY_RESPONSE_MAGIC);
        put_u16(&mut h, 4, PROTOCOL_VERSION);
        put_u16(&mut h, 6, self.op);
        put_u64(&mut h, 8, self.tag);
        put_u32(&mut h, 16, self.status.as_u32());
        put_u32(&mut h, 20, payload.len() as u32);
        put_u64(&mut h, 24, self.result);
        let flags = (self.flags & !TRACED) | if trace.is_some() { TRACED } else { 0 };
        put_u32(&mut h, 32, flags);
        out.extend_from_slice(&h);
        if let Some(t) = trace {
            let mut b = [0u8; PROXY_TRACE_LEN];
            t.encode_into(&mut b);
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(payload);
    }

    /// Decodes a frame body (without the length prefix), returning the response and
    /// its payload.
    pub fn decode(b: &[u8]) -> Result<(ProxyResponse, &[u8]), DecodeError> {
        Self::decode_traced(b).map(|(r, _, p)| (r, p))
    }

    /// Decodes a frame body with its trace block, if any: the response (its flags
    /// without [`crate::io::flags::TRACED`], which describes the frame), the proxy's
    /// times and the payload.
    pub fn decode_traced(b: &[u8]) -> Result<(ProxyResponse, Option<ProxyTrace>, &[u8]), DecodeError> {
        need(b, PROXY_RESPONSE_HEADER)?;
        check_magic(b, PROXY_RESPONSE_MAGIC)?;
        let flags = get_u32(b, 32);
        let traced = if flags & TRACED != 0 { PROXY_TRACE_LEN } else { 0 };
        let dl = get_u32(b, 20) as usize;
        if dl > MAX_IO_BYTES as usize || b.len() != PROXY_RESPONSE_HEADER + traced + dl {
            return Err(DecodeError::Invalid { field: "payload length", why: "does not match frame" });
        }
        let trace = (traced > 0).then(|| ProxyTrace::decode(&b[PROXY_RESPONSE_HEADER..])).flatten();
        Ok((
            ProxyResponse {
                op: get_u16(b, 6),
                tag: get_u64(b, 8),
                status: Status::from_u32(get_u32(b, 16)),
                result: get_u64(b, 24),
                flags: flags & !TRACED,
            },
            trace,
            &b[PROXY_RESPONSE_HEADER + traced..],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_ticket_reads_class_tenant_and_bytes() {
        let mut r = ProxyRequest::new(Op::Write, "acme", "/f");
        r.qos = 1;
        let mut f = Vec::new();
        r.encode_frame(&[0u8; 3000], &mut f).unwrap();
        assert_eq!(ProxyRequest::peek_ticket(&f[LEN_PREFIX..]), Some((1, "acme", 3000)));
        assert_eq!(ProxyRequest::peek_ticket(&f[LEN_PREFIX..LEN_PREFIX + 130]), None, "cut inside the tenant");
        assert_eq!(ProxyRequest::peek_ticket(&[0u8; 10]), None);
    }

    #[test]
    fn request_frame_round_trip() {
        let r = ProxyRequest {
            op: Op::Write,
            tag: 1,
            offset: 2,
            length: 3,
            flags: 4,
            hint: SdkHint::default(),
            trace: true,
            qos: 1,
            load: 9,
            epoch: 11,
            session_id: 10,
            tenant: "t".into(),
            path: "a/b".into(),
            grant: crate::io::Grant { read_only: true, prefix: "a".into() },
        };
        let mut out = Vec::new();
        r.encode_frame(b"hello", &mut out).unwrap();
        let n = frame_len(&out).unwrap().unwrap();
        assert_eq!(n + 4, out.len());
        let d = ProxyRequest::decode(&out[4..]).unwrap();
        assert_eq!(d.req, r);
        assert_eq!(d.payload, b"hello");
        assert!(ProxyRequest::decode(&out[4..out.len() - 1]).is_err());
    }

    #[test]
    fn response_frame_round_trip() {
        let r = ProxyResponse { op: 3, tag: 8, status: Status::NotFound, result: 0, flags: 0 };
        let mut out = Vec::new();
        r.encode_frame(b"xy", &mut out);
        let (d, p) = ProxyResponse::decode(&out[4..]).unwrap();
        assert_eq!(d, r);
        assert_eq!(p, b"xy");
        let t = ProxyTrace { proxy_ns: 30, queue_ns: 10, backend_ns: 15 };
        r.encode_frame_traced(Some(&t), b"xy", &mut out);
        assert_eq!(frame_len(&out).unwrap(), Some(PROXY_RESPONSE_HEADER + PROXY_TRACE_LEN + 2));
        let (d, got, p) = ProxyResponse::decode_traced(&out[4..]).unwrap();
        assert_eq!((d, got, p), (r.clone(), Some(t), &b"xy"[..]));
        // The untraced decoder skips the block; a frame whose flag lies does not decode.
        assert_eq!(ProxyResponse::decode(&out[4..]).unwrap().1, b"xy");
        let mut lie = out.clone();
        lie[4 + 33] &= !((TRACED >> 8) as u8);
        assert!(ProxyResponse::decode(&lie[4..]).is_err());
    }

    #[test]
    fn oversized_frame_rejected() {
        let b = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(frame_len(&b).is_err());
        assert_eq!(frame_len(&b[..2]).unwrap(), None);
    }
}
