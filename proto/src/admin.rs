//! Admin requests (`docs/protocol.md`, "Admin requests"; paper §4.3.1 control plane and
//! §4.6 keep-alive), protocol version 2.
//!
//! An admin request is one WRITE of [`ADMIN_REQUEST_SIZE`] bytes at
//! [`ADMIN_REQ_OFFSET`](crate::layout::ADMIN_REQ_OFFSET); the device executes it before
//! completing the WRITE and puts its answer, sealed with the request's one-time
//! exchange key, in the **mailbox** the request named
//! ([`mailbox_offset`](crate::layout::mailbox_offset)); the host then READs that mailbox
//! and opens the answer ([`AdminResponse::open`]). Request WRITEs reach only the device,
//! so the exchange key, the client nonce and the MACs stay private; a mailbox is public,
//! but its answer opens only with the key of the exchange that asked. A mailbox that got
//! an answer less than [`MAILBOX_HOLD_MS`] ago is not reused: a request naming it fails
//! its WRITE (`VIRTIO_BLK_S_IOERR`), and the host names another. No lock is needed and
//! no process can read or disturb another's exchange (see `docs/security.md`).
//!
//! Opening a session takes two exchanges: [`AdminOp::Hello`] (tenant and client nonce;
//! the answer carries the device nonce and an exchange ID) and [`AdminOp::OpenSession`]
//! (the proof, [`crate::crypto::open_proof`], and the grant asked for). Every later
//! request of the session carries its session ID, a sequence number above the
//! session's last one, and an HMAC with the session's admin key
//! ([`crate::crypto::SessionKeys::mac_admin`]).

use crate::codec::*;
use crate::crypto::{self, MAC_LEN, NONCE_LEN, TAG_LEN};
use crate::{DecodeError, Status, PROTOCOL_VERSION};

/// Magic of an admin request: ASCII `PoVA`.
pub const ADMIN_REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"PoVA");
/// Magic of an admin answer: ASCII `PoVS`.
pub const ADMIN_RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"PoVS");
/// Encoded size of an admin request, in bytes (two sectors).
pub const ADMIN_REQUEST_SIZE: usize = 1024;
/// Encoded size of an admin answer (one mailbox), in bytes (one sector).
pub const ADMIN_RESPONSE_SIZE: usize = 512;
/// Longest tenant name, in bytes.
pub const MAX_TENANT_NAME: usize = 63;
/// Longest tenant secret, in bytes.
pub const MAX_SECRET: usize = 255;
/// Longest path prefix a session may be limited to, in bytes.
pub const MAX_PREFIX: usize = 512;
/// How long a mailbox that got an answer stays reserved for its reader, ms.
pub const MAILBOX_HOLD_MS: u64 = 250;
/// Byte offset of the MAC field in an admin request.
pub const ADMIN_MAC_OFFSET: usize = 112;
/// Bytes of an answer that are authenticated but not encrypted (magic, version,
/// mailbox index).
pub const ADMIN_AAD_LEN: usize = 16;

/// The mailbox index an answer in a session mailbox carries (authenticated), instead of
/// one of the 256 shared mailboxes' (`layout::SESSION_MAILBOX_OFFSET`).
pub const SESSION_MAILBOX: u16 = u16::MAX;

/// Grant flag of OpenSession: the session may only read (no create, write, append,
/// truncate, remove).
pub const GRANT_READ_ONLY: u8 = 1;
/// Protection flag of OpenSession: responses authenticated but not encrypted
/// ([`crypto::Protection::IntegrityOnly`]).
pub const GRANT_INTEGRITY_ONLY: u8 = 2;

/// Admin operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum AdminOp {
    /// Second step of a session open: the proof of the secret for the exchange a Hello
    /// started, and the grant asked for; the answer gives the session ID, its IO area
    /// and the keep-alive timing.
    OpenSession = 1,
    /// Close the session: in-flight requests finish, then its queues are freed.
    CloseSession = 2,
    /// Create an IO queue in the session's area, owned by `pid`, mapped to a proxy
    /// connection; the answer gives the queue ID.
    CreateQueue = 3,
    /// Delete `queue_id`.
    DeleteQueue = 4,
    /// Keep the session alive (paper §4.6).
    Heartbeat = 5,
    /// First step of a session open: the tenant and the client nonce; the answer gives
    /// the device nonce and the exchange ID.
    Hello = 6,
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
            6 => AdminOp::Hello,
            _ => return Err(DecodeError::UnknownOp(v)),
        })
    }

    /// `true` for the operations of an open session (authenticated with the session's
    /// admin key and sequence number).
    pub fn in_session(self) -> bool {
        !matches!(self, AdminOp::Hello | AdminOp::OpenSession)
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

/// An admin request (1024 bytes on the wire).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVA` |
/// | 4 | 2 | protocol version |
/// | 6 | 2 | operation ([`AdminOp`]) |
/// | 8 | 4 | process ID |
/// | 12 | 4 | queue ID (DeleteQueue) |
/// | 16 | 8 | session ID (in-session operations) |
/// | 24 | 8 | sequence number: in-session operations, above the session's last; Hello, OpenSession: any (echoed) |
/// | 32 | 1 | QoS class (CreateQueue) |
/// | 33 | 1 | grant flags (OpenSession): [`GRANT_READ_ONLY`], [`GRANT_INTEGRITY_ONLY`] |
/// | 34 | 2 | mailbox index for the answer |
/// | 36 | 2 | queues to create (CreateQueue; 0 = 1, at most [`MAX_BATCH_QUEUES`]): all or none |
/// | 38 | 2 | reserved (0) |
/// | 40 | 32 | exchange key: seals the answer (fresh random bytes for every request) |
/// | 72 | 32 | client nonce `Nc` (Hello) |
/// | 104 | 8 | exchange ID (OpenSession: from the Hello's answer) |
/// | 112 | 32 | MAC: OpenSession the proof; in-session operations HMAC-SHA256 of the record (this field zeroed) with the session's admin key |
/// | 144 | 1+63 | tenant name (Hello) |
/// | 208 | 2+512 | path prefix the session is limited to (OpenSession; empty: the whole namespace) |
/// | 722 | 302 | reserved (0) |
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct AdminRequest {
    pub op: AdminOp,
    pub pid: u32,
    pub queue_id: u32,
    pub session_id: u64,
    pub seq: u64,
    pub qos: QosClass,
    pub grant_flags: u8,
    pub mailbox: u16,
    /// CreateQueue: how many queues to create at once (0 = 1; see [`MAX_BATCH_QUEUES`]).
    pub count: u16,
    pub exchange_key: [u8; NONCE_LEN],
    pub nonce: [u8; NONCE_LEN],
    pub exchange_id: u64,
    pub mac: [u8; MAC_LEN],
    pub tenant: String,
    pub prefix: String,
}

/// The fields a device reads before judging an admin request, so that it can still
/// seal an error answer to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminReturn {
    /// Operation code as written (maybe unknown).
    pub op: u16,
    /// Sequence number as written.
    pub seq: u64,
    /// Mailbox for the answer.
    pub mailbox: u16,
    /// Exchange key for the answer.
    pub exchange_key: [u8; NONCE_LEN],
}

impl AdminRequest {
    /// A request of `op` from process `pid` with every other field empty.
    pub fn new(op: AdminOp, pid: u32) -> AdminRequest {
        AdminRequest {
            op,
            pid,
            queue_id: 0,
            session_id: 0,
            seq: 0,
            qos: QosClass::Latency,
            grant_flags: 0,
            mailbox: 0,
            count: 0,
            exchange_key: [0; NONCE_LEN],
            nonce: [0; NONCE_LEN],
            exchange_id: 0,
            mac: [0; MAC_LEN],
            tenant: String::new(),
            prefix: String::new(),
        }
    }

    /// Encodes into [`ADMIN_REQUEST_SIZE`] bytes (the MAC field as set).
    ///
    /// # Errors
    /// The tenant name or the prefix is too long.
    pub fn encode(&self) -> Result<[u8; ADMIN_REQUEST_SIZE], DecodeError> {
        let op = self.op;
        let mut b = [0u8; ADMIN_REQUEST_SIZE];
        put_u32(&mut b, 0, ADMIN_REQUEST_MAGIC);
        put_u16(&mut b, 4, PROTOCOL_VERSION);
        put_u16(&mut b, 6, op as u16);
        put_u32(&mut b, 8, self.pid);
        put_u32(&mut b, 12, self.queue_id);
        put_u64(&mut b, 16, self.session_id);
        put_u64(&mut b, 24, self.seq);
        b[32] = self.qos as u8;
        b[33] = self.grant_flags;
        put_u16(&mut b, 34, self.mailbox);
        put_u16(&mut b, 36, self.count);
        b[40..72].copy_from_slice(&self.exchange_key);
        b[72..104].copy_from_slice(&self.nonce);
        put_u64(&mut b, 104, self.exchange_id);
        b[112..144].copy_from_slice(&self.mac);
        put_short_str(&mut b, 144, MAX_TENANT_NAME, self.tenant.as_bytes(), "tenant")?;
        if self.prefix.len() > MAX_PREFIX {
            return Err(DecodeError::Invalid { field: "prefix", why: "over 512 bytes" });
        }
        put_u16(&mut b, 208, self.prefix.len() as u16);
        b[210..210 + self.prefix.len()].copy_from_slice(self.prefix.as_bytes());
        Ok(b)
    }

    /// Where to answer a request, read without validating the rest; `None` unless the
    /// magic is right.
    pub fn peek_return(b: &[u8]) -> Option<AdminReturn> {
        if b.len() < ADMIN_REQUEST_SIZE || get_u32(b, 0) != ADMIN_REQUEST_MAGIC {
            return None;
        }
        let mut exchange_key = [0u8; NONCE_LEN];
        exchange_key.copy_from_slice(&b[40..72]);
        Some(AdminReturn { op: get_u16(b, 6), seq: get_u64(b, 24), mailbox: get_u16(b, 34), exchange_key })
    }

    /// Decodes and validates an admin request (the MAC is the caller's to check).
    ///
    /// # Errors
    /// Truncated, bad magic or version, unknown operation or QoS class, over-long or
    /// non-UTF-8 tenant or prefix.
    pub fn decode(b: &[u8]) -> Result<AdminRequest, DecodeError> {
        need(b, ADMIN_REQUEST_SIZE)?;
        check_magic(b, ADMIN_REQUEST_MAGIC)?;
        let op = AdminOp::from_u16(get_u16(b, 6))?;
        let qos = match b[32] {
            0 => QosClass::Latency,
            1 => QosClass::Bandwidth,
            _ => return Err(DecodeError::Invalid { field: "qos", why: "unknown QoS class" }),
        };
        let utf8 = |v: Vec<u8>, field| String::from_utf8(v).map_err(|_| DecodeError::Invalid { field, why: "not UTF-8" });
        let tenant = utf8(get_short_str(b, 144, MAX_TENANT_NAME, "tenant")?, "tenant")?;
        let plen = get_u16(b, 208) as usize;
        if plen > MAX_PREFIX {
            return Err(DecodeError::Invalid { field: "prefix", why: "over 512 bytes" });
        }
        let prefix = utf8(b[210..210 + plen].to_vec(), "prefix")?;
        let arr = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b[r]);
            a
        };
        Ok(AdminRequest {
            op,
            pid: get_u32(b, 8),
            queue_id: get_u32(b, 12),
            session_id: get_u64(b, 16),
            seq: get_u64(b, 24),
            qos,
            grant_flags: b[33],
            mailbox: get_u16(b, 34),
            count: get_u16(b, 36),
            exchange_key: arr(40..72),
            nonce: arr(72..104),
            exchange_id: get_u64(b, 104),
            mac: arr(112..144),
            tenant,
            prefix,
        })
    }
}

/// An admin answer (512 bytes in a mailbox, sealed with the request's exchange key).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVS` (authenticated, clear) |
/// | 4 | 2 | protocol version (authenticated, clear) |
/// | 6 | 2 | mailbox index (authenticated, clear) |
/// | 8 | 8 | reserved (authenticated, clear) |
/// | 16 | 2 | operation echoed (encrypted from here on) |
/// | 20 | 4 | status ([`Status`]) |
/// | 24 | 8 | sequence number echoed |
/// | 32 | 8 | session ID (OpenSession) |
/// | 40 | 4 | queue ID (CreateQueue) |
/// | 44 | 4 | IO area of the session |
/// | 48 | 4 | most queues this session may create |
/// | 52 | 4 | heartbeat interval, ms |
/// | 56 | 4 | session timeout, ms (no heartbeat for this long: session reclaimed) |
/// | 60 | 2 | number of queue IDs at 104 (CreateQueue with a count; 0 from devices without batches) |
/// | 64 | 8 | exchange ID (Hello) |
/// | 72 | 32 | device nonce `Nd` (Hello) |
/// | 104 | 4 × n | queue IDs created (CreateQueue with a count), then reserved up to 496 |
/// | 496 | 16 | AES-256-GCM tag |
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct AdminResponse {
    pub op: u16,
    pub status: u32,
    pub seq: u64,
    pub session_id: u64,
    pub queue_id: u32,
    pub area: u32,
    pub max_queues: u32,
    pub heartbeat_interval_ms: u32,
    pub session_timeout_ms: u32,
    pub exchange_id: u64,
    pub device_nonce: [u8; NONCE_LEN],
    /// CreateQueue with a count: every queue created, in order (empty otherwise, and
    /// from devices that create one queue per request). At most [`MAX_BATCH_QUEUES`].
    pub queue_ids: Vec<u32>,
}

/// Most queues one CreateQueue may create ([`AdminRequest::count`]): every queue an IO
/// area can hold (`layout::MAX_QUEUES_PER_AREA`).
pub const MAX_BATCH_QUEUES: usize = crate::layout::MAX_QUEUES_PER_AREA as usize;
const QUEUE_IDS_OFFSET: usize = 104;
const _: () = assert!(QUEUE_IDS_OFFSET + 4 * MAX_BATCH_QUEUES <= ADMIN_RESPONSE_SIZE - TAG_LEN);

impl AdminResponse {
    /// The answer's status.
    pub fn status(&self) -> Status {
        Status::from_u32(self.status)
    }

    /// Encodes for `mailbox` and seals with `exchange_key`.
    pub fn seal(&self, mailbox: u16, exchange_key: &[u8; NONCE_LEN]) -> [u8; ADMIN_RESPONSE_SIZE] {
        let mut b = [0u8; ADMIN_RESPONSE_SIZE];
        put_u32(&mut b, 0, ADMIN_RESPONSE_MAGIC);
        put_u16(&mut b, 4, PROTOCOL_VERSION);
        put_u16(&mut b, 6, mailbox);
        put_u16(&mut b, 16, self.op);
        put_u32(&mut b, 20, self.status);
        put_u64(&mut b, 24, self.seq);
        put_u64(&mut b, 32, self.session_id);
        put_u32(&mut b, 40, self.queue_id);
        put_u32(&mut b, 44, self.area);
        put_u32(&mut b, 48, self.max_queues);
        put_u32(&mut b, 52, self.heartbeat_interval_ms);
        put_u32(&mut b, 56, self.session_timeout_ms);
        put_u64(&mut b, 64, self.exchange_id);
        b[72..104].copy_from_slice(&self.device_nonce);
        let ids = &self.queue_ids[..self.queue_ids.len().min(MAX_BATCH_QUEUES)];
        put_u16(&mut b, 60, ids.len() as u16);
        for (i, id) in ids.iter().enumerate() {
            put_u32(&mut b, QUEUE_IDS_OFFSET + 4 * i, *id);
        }
        crypto::seal_mailbox(exchange_key, &mut b, ADMIN_AAD_LEN);
        b
    }

    /// Opens the answer in mailbox record `b` with `exchange_key`.
    ///
    /// # Errors
    /// Truncated or bad magic; [`DecodeError::Invalid`] (field `tag`) if it was not
    /// sealed with this key (another exchange's answer, or none yet), or is for another
    /// mailbox.
    pub fn open(b: &[u8], mailbox: u16, exchange_key: &[u8; NONCE_LEN]) -> Result<AdminResponse, DecodeError> {
        need(b, ADMIN_RESPONSE_SIZE)?;
        check_magic(b, ADMIN_RESPONSE_MAGIC)?;
        let mut b: [u8; ADMIN_RESPONSE_SIZE] = b[..ADMIN_RESPONSE_SIZE].try_into().expect("length checked");
        let unauthentic = DecodeError::Invalid { field: "tag", why: "not sealed for this exchange" };
        crypto::open_mailbox(exchange_key, &mut b, ADMIN_AAD_LEN).map_err(|_| unauthentic.clone())?;
        if get_u16(&b, 6) != mailbox {
            return Err(unauthentic);
        }
        let mut device_nonce = [0u8; NONCE_LEN];
        device_nonce.copy_from_slice(&b[72..104]);
        let n = get_u16(&b, 60) as usize;
        if n > MAX_BATCH_QUEUES {
            return Err(DecodeError::Invalid { field: "queue_ids", why: "more than 64" });
        }
        let queue_ids = (0..n).map(|i| get_u32(&b, QUEUE_IDS_OFFSET + 4 * i)).collect();
        Ok(AdminResponse {
            op: get_u16(&b, 16),
            status: get_u32(&b, 20),
            seq: get_u64(&b, 24),
            session_id: get_u64(&b, 32),
            queue_id: get_u32(&b, 40),
            area: get_u32(&b, 44),
            max_queues: get_u32(&b, 48),
            heartbeat_interval_ms: get_u32(&b, 52),
            session_timeout_ms: get_u32(&b, 56),
            exchange_id: get_u64(&b, 64),
            device_nonce,
            queue_ids,
        })
    }
}

/// Bytes of the sealed part of an answer that carry ciphertext (for tests).
pub const ADMIN_SEALED_LEN: usize = ADMIN_RESPONSE_SIZE - ADMIN_AAD_LEN - TAG_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AdminRequest {
        AdminRequest {
            op: AdminOp::OpenSession,
            pid: 1,
            queue_id: 2,
            session_id: 3,
            seq: 77,
            qos: QosClass::Bandwidth,
            grant_flags: GRANT_READ_ONLY,
            mailbox: 200,
            count: 3,
            exchange_key: [4; 32],
            nonce: [5; 32],
            exchange_id: 6,
            mac: [7; 32],
            tenant: "acme".into(),
            prefix: "logs/today".into(),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.encode().unwrap();
        assert_eq!(AdminRequest::decode(&b).unwrap(), r);
        let ret = AdminRequest::peek_return(&b).unwrap();
        assert_eq!((ret.mailbox, ret.seq, ret.exchange_key), (200, 77, [4; 32]));
        assert!(AdminRequest { tenant: "x".repeat(64), ..r.clone() }.encode().is_err());
        assert!(AdminRequest { prefix: "x".repeat(513), ..r.clone() }.encode().is_err());
        let resp = AdminResponse {
            op: 1,
            status: 0,
            seq: 77,
            session_id: 5,
            queue_id: 9,
            area: 3,
            max_queues: 16,
            heartbeat_interval_ms: 1000,
            session_timeout_ms: 10000,
            exchange_id: 11,
            device_nonce: [12; 32],
            queue_ids: vec![9, 10, 63],
        };
        let sealed = resp.seal(200, &[4; 32]);
        assert!(!sealed.windows(8).any(|w| w == 5u64.to_le_bytes()), "the session ID is not in clear");
        assert_eq!(AdminResponse::open(&sealed, 200, &[4; 32]).unwrap(), resp);
        assert!(AdminResponse::open(&sealed, 200, &[5; 32]).is_err(), "another exchange's key");
        assert!(AdminResponse::open(&sealed, 201, &[4; 32]).is_err(), "another mailbox");
    }

    #[test]
    fn rejects_garbage() {
        assert!(AdminRequest::decode(&[0u8; ADMIN_REQUEST_SIZE]).is_err());
        assert!(AdminRequest::decode(&[0u8; 10]).is_err());
        assert!(AdminRequest::peek_return(&[0u8; ADMIN_REQUEST_SIZE]).is_none());
        let mut b = sample().encode().unwrap();
        b[6] = 99;
        assert!(matches!(AdminRequest::decode(&b), Err(DecodeError::UnknownOp(99))));
        assert!(AdminRequest::peek_return(&b).is_some(), "an unknown op can still be answered");
        let mut b = sample().encode().unwrap();
        b[32] = 5;
        assert!(AdminRequest::decode(&b).is_err());
        let mut b = sample().encode().unwrap();
        put_u16(&mut b, 208, 600);
        assert!(AdminRequest::decode(&b).is_err());
        let mut b = sample().encode().unwrap();
        b[210] = 0xff;
        assert!(AdminRequest::decode(&b).is_err(), "prefix not UTF-8");
        assert!(AdminResponse::open(&[0u8; 512], 0, &[0; 32]).is_err());
    }
}
