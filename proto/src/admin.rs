//! Admin requests (`docs/protocol.md`, "Admin requests"; paper §4.3.1 control plane and
//! §4.6 keep-alive).
//!
//! An admin request is one WRITE of [`ADMIN_RECORD_SIZE`](crate::layout::ADMIN_RECORD_SIZE)
//! bytes or less (a whole number of sectors) at
//! [`ADMIN_REQ_OFFSET`](crate::layout::ADMIN_REQ_OFFSET); the device executes it before
//! completing the WRITE, and the host then READs the response record at
//! [`ADMIN_RESP_OFFSET`](crate::layout::ADMIN_RESP_OFFSET). The admin space is shared by
//! every process on the host, so a host serializes the write+read pair with an exclusive
//! `flock(2)` on the device (paper §5); the echoed request ID lets it detect a
//! response that is not its own.

use crate::codec::*;
use crate::{DecodeError, Status, PROTOCOL_VERSION};

/// Magic of an admin request: ASCII `PoVA`.
pub const ADMIN_REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"PoVA");
/// Magic of an admin response: ASCII `PoVS`.
pub const ADMIN_RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"PoVS");
/// Encoded size of an admin request, in bytes (one sector).
pub const ADMIN_REQUEST_SIZE: usize = 512;
/// Encoded size of an admin response, in bytes (one sector).
pub const ADMIN_RESPONSE_SIZE: usize = 512;
/// Longest tenant name, in bytes.
pub const MAX_TENANT_NAME: usize = 63;
/// Longest tenant secret, in bytes.
pub const MAX_SECRET: usize = 255;

/// Admin operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum AdminOp {
    /// Authenticate tenant + secret and open a session for `pid`; the response gives
    /// the session ID, its IO area and the keep-alive timing.
    OpenSession = 1,
    /// Close the session: in-flight requests finish, then its queues are freed.
    CloseSession = 2,
    /// Create an IO queue in the session's area, owned by `pid`, mapped to a proxy
    /// connection; the response gives the queue ID.
    CreateQueue = 3,
    /// Delete `queue_id`.
    DeleteQueue = 4,
    /// Keep the session alive (paper §4.6).
    Heartbeat = 5,
}

impl AdminOp {
    /// Decodes an admin operation code.
    pub fn from_u16(v: u16) -> Result<AdminOp, DecodeError> {
        Ok(match v {
            1 => AdminOp::OpenSession,
            2 => AdminOp::CloseSession,
            3 => AdminOp::CreateQueue,
            4 => AdminOp::DeleteQueue,
            5 => AdminOp::Heartbeat,
            _ => return Err(DecodeError::UnknownOp(v)),
        })
    }
}

/// QoS class of an IO queue (paper §4.5). Recorded with the queue and carried in every
/// proxy frame; no stage schedules by it yet (planned: the DPU's `Scheduler` seam and
/// the proxy's per-tenant controller), so today both classes are served in arrival
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum QosClass {
    /// Latency-critical.
    #[default]
    Latency = 0,
    /// Bandwidth-critical.
    Bandwidth = 1,
}

/// An admin request (512 bytes on the wire).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVA` |
/// | 4 | 2 | protocol version |
/// | 6 | 2 | operation ([`AdminOp`]) |
/// | 8 | 4 | process ID |
/// | 12 | 4 | queue ID (DeleteQueue) |
/// | 16 | 8 | session ID (0 for OpenSession) |
/// | 24 | 8 | request ID (echoed) |
/// | 32 | 1 | QoS class (CreateQueue) |
/// | 33 | 7 | reserved |
/// | 40 | 1+63 | tenant name (OpenSession) |
/// | 104 | 1+255 | secret (OpenSession) |
/// | 360 | 152 | reserved |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    pub op: AdminOp,
    pub pid: u32,
    pub queue_id: u32,
    pub session_id: u64,
    pub request_id: u64,
    pub qos: QosClass,
    pub tenant: String,
    pub secret: Vec<u8>,
}

impl AdminRequest {
    /// Encodes into 512 bytes. Fails if the tenant name or secret is too long.
    pub fn encode(&self) -> Result<[u8; ADMIN_REQUEST_SIZE], DecodeError> {
        let mut b = [0u8; ADMIN_REQUEST_SIZE];
        put_u32(&mut b, 0, ADMIN_REQUEST_MAGIC);
        put_u16(&mut b, 4, PROTOCOL_VERSION);
        put_u16(&mut b, 6, self.op as u16);
        put_u32(&mut b, 8, self.pid);
        put_u32(&mut b, 12, self.queue_id);
        put_u64(&mut b, 16, self.session_id);
        put_u64(&mut b, 24, self.request_id);
        b[32] = self.qos as u8;
        put_short_str(&mut b, 40, MAX_TENANT_NAME, self.tenant.as_bytes(), "tenant")?;
        put_short_str(&mut b, 104, MAX_SECRET, &self.secret, "secret")?;
        Ok(b)
    }

    /// Decodes and validates an admin request.
    pub fn decode(b: &[u8]) -> Result<AdminRequest, DecodeError> {
        need(b, ADMIN_REQUEST_SIZE)?;
        check_magic(b, ADMIN_REQUEST_MAGIC)?;
        let op = AdminOp::from_u16(get_u16(b, 6))?;
        let qos = match b[32] {
            0 => QosClass::Latency,
            1 => QosClass::Bandwidth,
            _ => return Err(DecodeError::Invalid { field: "qos", why: "unknown QoS class" }),
        };
        let tenant = String::from_utf8(get_short_str(b, 40, MAX_TENANT_NAME, "tenant")?)
            .map_err(|_| DecodeError::Invalid { field: "tenant", why: "not UTF-8" })?;
        Ok(AdminRequest {
            op,
            pid: get_u32(b, 8),
            queue_id: get_u32(b, 12),
            session_id: get_u64(b, 16),
            request_id: get_u64(b, 24),
            qos,
            tenant,
            secret: get_short_str(b, 104, MAX_SECRET, "secret")?,
        })
    }
}

/// An admin response (512 bytes on the wire).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVS` |
/// | 4 | 2 | protocol version |
/// | 6 | 2 | operation echoed |
/// | 8 | 4 | status ([`Status`]) |
/// | 12 | 4 | queue ID (CreateQueue) |
/// | 16 | 8 | session ID |
/// | 24 | 8 | request ID echoed |
/// | 32 | 4 | IO area of the session |
/// | 36 | 4 | most queues this session may create |
/// | 40 | 4 | heartbeat interval, ms |
/// | 44 | 4 | session timeout, ms (no heartbeat for this long: session reclaimed) |
/// | 48 | 464 | reserved |
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdminResponse {
    pub op: u16,
    pub status: u32,
    pub queue_id: u32,
    pub session_id: u64,
    pub request_id: u64,
    pub area: u32,
    pub max_queues: u32,
    pub heartbeat_interval_ms: u32,
    pub session_timeout_ms: u32,
}

impl AdminResponse {
    /// The response's status.
    pub fn status(&self) -> Status {
        Status::from_u32(self.status)
    }

    /// Encodes into 512 bytes.
    pub fn encode(&self) -> [u8; ADMIN_RESPONSE_SIZE] {
        let mut b = [0u8; ADMIN_RESPONSE_SIZE];
        put_u32(&mut b, 0, ADMIN_RESPONSE_MAGIC);
        put_u16(&mut b, 4, PROTOCOL_VERSION);
        put_u16(&mut b, 6, self.op);
        put_u32(&mut b, 8, self.status);
        put_u32(&mut b, 12, self.queue_id);
        put_u64(&mut b, 16, self.session_id);
        put_u64(&mut b, 24, self.request_id);
        put_u32(&mut b, 32, self.area);
        put_u32(&mut b, 36, self.max_queues);
        put_u32(&mut b, 40, self.heartbeat_interval_ms);
        put_u32(&mut b, 44, self.session_timeout_ms);
        b
    }

    /// Decodes an admin response.
    pub fn decode(b: &[u8]) -> Result<AdminResponse, DecodeError> {
        need(b, ADMIN_RESPONSE_SIZE)?;
        check_magic(b, ADMIN_RESPONSE_MAGIC)?;
        Ok(AdminResponse {
            op: get_u16(b, 6),
            status: get_u32(b, 8),
            queue_id: get_u32(b, 12),
            session_id: get_u64(b, 16),
            request_id: get_u64(b, 24),
            area: get_u32(b, 32),
            max_queues: get_u32(b, 36),
            heartbeat_interval_ms: get_u32(b, 40),
            session_timeout_ms: get_u32(b, 44),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = AdminRequest {
            op: AdminOp::OpenSession,
            pid: 1,
            queue_id: 0,
            session_id: 0,
            request_id: 77,
            qos: QosClass::Bandwidth,
            tenant: "acme".into(),
            secret: b"s3cret".to_vec(),
        };
        assert_eq!(AdminRequest::decode(&r.encode().unwrap()).unwrap(), r);
        let long = AdminRequest { tenant: "x".repeat(64), ..r.clone() };
        assert!(long.encode().is_err());
        let resp = AdminResponse {
            op: 1,
            status: 0,
            session_id: 5,
            request_id: 77,
            area: 3,
            max_queues: 16,
            heartbeat_interval_ms: 1000,
            session_timeout_ms: 10000,
            queue_id: 0,
        };
        assert_eq!(AdminResponse::decode(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn rejects_garbage() {
        assert!(AdminRequest::decode(&[0u8; 512]).is_err());
        assert!(AdminRequest::decode(&[0u8; 10]).is_err());
        let mut b = AdminRequest {
            op: AdminOp::Heartbeat,
            pid: 1,
            queue_id: 0,
            session_id: 1,
            request_id: 1,
            qos: QosClass::Latency,
            tenant: String::new(),
            secret: vec![],
        }
        .encode()
        .unwrap();
        b[40] = 200; // tenant length beyond field
        assert!(AdminRequest::decode(&b).is_err());
    }
}
