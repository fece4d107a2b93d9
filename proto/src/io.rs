//! IO request and response headers (`docs/protocol.md`, "IO requests").
//!
//! A request is one WRITE of `HEADER_SIZE + payload_len` bytes (rounded up to a sector)
//! at the start of a queue's request slot: a 512-byte [`RequestHeader`] followed by the
//! payload (write data, or a path). The response is read back from the queue's response
//! slot: a 512-byte [`ResponseHeader`] followed by `payload_len` bytes (read data, a
//! stat record or directory entries).

use crate::codec::*;
use crate::layout::HEADER_SIZE;
use crate::{DecodeError, Status, PROTOCOL_VERSION};

/// Magic of an IO request header: ASCII `PoVQ`.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"PoVQ");
/// Magic of an IO response header: ASCII `PoVR`.
pub const RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"PoVR");

/// Longest path in a request payload, in bytes.
pub const MAX_PATH: usize = 4096;

/// File operations carried in IO requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Op {
    /// Open or create the file at the path in the payload; result = file handle.
    /// Flags: [`flags::CREATE`], [`flags::EXCL`], [`flags::TRUNCATE`], [`flags::WRITE`].
    Open = 1,
    /// Close `file_handle`.
    Close = 2,
    /// Read `length` bytes at `offset`; result = bytes read (short at end of file).
    Read = 3,
    /// Write the payload at `offset`; result = bytes written.
    Write = 4,
    /// Append the payload at the end of file; result = offset the data landed at.
    Append = 5,
    /// Set the file size to `offset` bytes; result = new size.
    Truncate = 6,
    /// Stat `file_handle`, or the path in the payload when `file_handle` is 0; the
    /// response payload is one [`crate::entry::Stat`].
    Stat = 7,
    /// List the directory at the path in the payload, starting at entry index
    /// `offset`; the response payload is a sequence of [`crate::entry::DirEntry`], and
    /// [`flags::MORE`] is set in the response when entries remain.
    List = 8,
    /// Remove the file or empty directory at the path in the payload.
    Remove = 9,
    /// Make `file_handle`'s data durable on the backend.
    Fsync = 10,
    /// Create the directory at the path in the payload. Flags: [`flags::PARENTS`]
    /// (create missing parents; an existing directory is then no error, like
    /// `mkdir -p`), [`flags::SET_MODE`] (permission bits in `length`, else the
    /// backend's default). Without `PARENTS`, an existing entry gives `Exists` and a
    /// missing parent `NotFound`.
    Mkdir = 11,
    /// Rename: the payload is the source path, one NUL byte, the destination path.
    /// An existing destination is replaced atomically (a file by a file, a directory
    /// by an empty directory: else `IsDir`, `NotDir`, `NotEmpty`), unless
    /// [`flags::EXCL`] is set (then `Exists`). The destination's parent must exist.
    /// With [`flags::SYNC`] the rename is durable on the backend before the answer.
    /// Handles are bound to paths: one opened on the source path does not follow the
    /// file (`docs/protocol.md`, "Names and attributes").
    Rename = 12,
    /// Set attributes of the file or directory at the path in the payload:
    /// [`flags::SET_MODE`] (permission bits in `length`, `0o777` at most),
    /// [`flags::SET_MTIME`] (modification time in `offset`, ns since the Unix epoch).
    SetAttr = 13,
    /// Capacity of the storage holding the path in the payload; the response payload
    /// is one [`crate::entry::StatFs`].
    StatFs = 14,
    /// Plain volume (DPU → proxy only): open the volume named in the tenant field,
    /// creating it when [`flags::CREATE`] is set; `offset` = size in bytes, `length` =
    /// block size in bytes. Result = the volume size in bytes. An existing volume of
    /// another size gives [`Status::Invalid`] (never a silent resize).
    VolumeOpen = 16,
    /// Plain volume: read `length` bytes (≤ 1 MiB) at byte `offset`; the response
    /// payload is the data, result = bytes read. Past the end: [`Status::Invalid`].
    VolumeRead = 17,
    /// Plain volume: write the payload (≤ 1 MiB) at byte `offset`; result = bytes
    /// written. [`flags::SYNC`] = FUA: durable on the backend before the response.
    VolumeWrite = 18,
    /// Plain volume: every write acknowledged before this request is durable on the
    /// backend before the response.
    VolumeFlush = 19,
    /// Liveness probe (DPU → proxy only): no tenant, path or payload; the proxy answers
    /// `Ok` from its network loop, ahead of the backend, so an answer shows the proxy
    /// process and the link are alive even while backend operations are slow
    /// (`docs/protocol.md`, "Proxy liveness and rerouting").
    Ping = 20,
}

impl Op {
    /// The operation's name in snake case (`"volume_write"`), as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Close => "close",
            Op::Read => "read",
            Op::Write => "write",
            Op::Append => "append",
            Op::Truncate => "truncate",
            Op::Stat => "stat",
            Op::List => "list",
            Op::Remove => "remove",
            Op::Fsync => "fsync",
            Op::Mkdir => "mkdir",
            Op::Rename => "rename",
            Op::SetAttr => "set_attr",
            Op::StatFs => "stat_fs",
            Op::VolumeOpen => "volume_open",
            Op::VolumeRead => "volume_read",
            Op::VolumeWrite => "volume_write",
            Op::VolumeFlush => "volume_flush",
            Op::Ping => "ping",
        }
    }

    /// Decodes an operation code.
    pub fn from_u16(v: u16) -> Result<Op, DecodeError> {
        Ok(match v {
            1 => Op::Open,
            2 => Op::Close,
            3 => Op::Read,
            4 => Op::Write,
            5 => Op::Append,
            6 => Op::Truncate,
            7 => Op::Stat,
            8 => Op::List,
            9 => Op::Remove,
            10 => Op::Fsync,
            11 => Op::Mkdir,
            12 => Op::Rename,
            13 => Op::SetAttr,
            14 => Op::StatFs,
            16 => Op::VolumeOpen,
            17 => Op::VolumeRead,
            18 => Op::VolumeWrite,
            19 => Op::VolumeFlush,
            20 => Op::Ping,
            _ => return Err(DecodeError::UnknownOp(v)),
        })
    }

    /// `true` if the payload carries file data (and so may be up to 1 MiB).
    pub fn carries_data(self) -> bool {
        matches!(self, Op::Write | Op::Append | Op::VolumeWrite)
    }

    /// `true` for the plain-volume operations (codes 16–19). They travel only from
    /// `pov-dpud` to `pov-proxy`; a host IO request carrying one does not decode
    /// ([`RequestHeader::decode`] answers [`DecodeError::UnknownOp`]).
    pub fn is_volume(self) -> bool {
        matches!(self, Op::VolumeOpen | Op::VolumeRead | Op::VolumeWrite | Op::VolumeFlush)
    }

    /// `true` for operations only `pov-dpud` sends to `pov-proxy` (the plain-volume ones
    /// and [`Op::Ping`]); a host IO request carrying one does not decode.
    pub fn is_dpu_only(self) -> bool {
        self.is_volume() || self == Op::Ping
    }

    /// `true` if running the request twice has the effect of running it once, as far
    /// as the requester can tell, so the DPU may resend it to another proxy when the
    /// one it went to failed before answering (`docs/protocol.md`, "Proxy liveness
    /// and rerouting"). Positional reads and writes, stat, list, fsync, truncate to a
    /// size and open without [`flags::EXCL`] are; append (the data would land twice),
    /// exclusive create (the second try would answer `Exists`) and remove (`NotFound`)
    /// are not. Close never reaches a proxy. Set-attributes and statfs are;
    /// mkdir is only with [`flags::PARENTS`] (else the second try answers `Exists`),
    /// rename never (the second try would answer `NotFound`).
    pub fn is_idempotent(self, flags: u32) -> bool {
        match self {
            Op::Open => flags & flags::EXCL == 0,
            Op::Mkdir => flags & flags::PARENTS != 0,
            Op::Read | Op::Write | Op::Truncate | Op::Stat | Op::List | Op::Fsync | Op::Close => true,
            Op::SetAttr | Op::StatFs => true,
            Op::VolumeOpen | Op::VolumeRead | Op::VolumeWrite | Op::VolumeFlush | Op::Ping => true,
            Op::Append | Op::Remove | Op::Rename => false,
        }
    }

    /// `true` if the payload carries a path (two, NUL-separated, for [`Op::Rename`]).
    pub fn carries_path(self) -> bool {
        matches!(self, Op::Open | Op::List | Op::Remove | Op::Mkdir | Op::Rename | Op::SetAttr | Op::StatFs)
    }

    /// Longest payload of an operation that [`Op::carries_path`], in bytes:
    /// [`MAX_PATH`], or two paths and their separator for [`Op::Rename`].
    pub fn max_path_payload(self) -> usize {
        if self == Op::Rename {
            2 * MAX_PATH + 1
        } else {
            MAX_PATH
        }
    }

    /// `true` if the request (with its `flags`) may change the tenant's files: what a
    /// read-only grant refuses. Open counts when it asks for writing, creation or
    /// truncation.
    pub fn mutates(self, flags: u32) -> bool {
        match self {
            Op::Open => flags & (flags::WRITE | flags::CREATE | flags::TRUNCATE) != 0,
            Op::Write | Op::Append | Op::Truncate | Op::Remove => true,
            Op::Mkdir | Op::Rename | Op::SetAttr => true,
            Op::VolumeWrite | Op::VolumeOpen | Op::VolumeFlush => true,
            Op::Close | Op::Read | Op::Stat | Op::List | Op::Fsync | Op::StatFs | Op::VolumeRead | Op::Ping => false,
        }
    }
}

/// What a session may do in its tenant's namespace (paper §4.3.1: the application is
/// authorized for the file when its queue is set up). The DPU enforces it and the
/// proxy re-checks it from the proxy request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// Refuse every request that [`Op::mutates`].
    pub read_only: bool,
    /// Normalized path prefix (no leading `/`; empty: the whole namespace) every path
    /// must equal or lie below.
    pub prefix: String,
}

impl Grant {
    /// `true` if the normalized namespace `path` is within the prefix.
    pub fn allows_path(&self, path: &str) -> bool {
        self.prefix.is_empty()
            || path == self.prefix
            || (path.len() > self.prefix.len() && path.starts_with(&self.prefix) && path.as_bytes()[self.prefix.len()] == b'/')
    }

    /// `true` if `op` with `flags` on the normalized `path` is allowed.
    pub fn allows(&self, op: Op, flags: u32, path: &str) -> bool {
        !(self.read_only && op.mutates(flags)) && self.allows_path(path)
    }
}

/// Request and response flag bits.
pub mod flags {
    /// Open: create the file if it does not exist (parent directories are created too).
    /// VolumeOpen: create the volume if it does not exist.
    pub const CREATE: u32 = 1 << 0;
    /// Open with CREATE: fail with `Exists` if the file exists.
    pub const EXCL: u32 = 1 << 1;
    /// Open: truncate the file to 0 bytes.
    pub const TRUNCATE: u32 = 1 << 2;
    /// Open: the handle may be used for writes.
    pub const WRITE: u32 = 1 << 3;
    /// Write/Append: make the data durable before answering (like `O_DSYNC`).
    /// VolumeWrite: FUA (forced unit access), same meaning. Rename: the rename is
    /// durable before answering.
    pub const SYNC: u32 = 1 << 4;
    /// Mkdir, SetAttr: set the permission bits to `length & 0o777`.
    pub const SET_MODE: u32 = 1 << 5;
    /// SetAttr: set the modification time to `offset` (ns since the Unix epoch).
    pub const SET_MTIME: u32 = 1 << 6;
    /// Mkdir: create missing parent directories; an existing directory is no error.
    pub const PARENTS: u32 = 1 << 7;
    /// Response to List: more entries remain after the ones returned.
    pub const MORE: u32 = 1 << 8;
    /// Request: trace this request (each stage reports its times, [`crate::trace`]).
    pub const TRACE: u32 = 1 << 9;
    /// Response (IO and proxy): a trace block is present ([`crate::trace::Trace`] in
    /// the IO response header, [`crate::trace::ProxyTrace`] after the proxy
    /// response header).
    pub const TRACED: u32 = 1 << 10;
}

/// SDK hint (paper §4.3.2): information the host SDK passes to the proxy side for
/// routing (`docs/protocol.md`, "Proxy liveness and rerouting"). 64 bytes on the wire:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | proxy location key (carried, not read yet: the planned route table's key; 0 = hash the path) |
/// | 8 | 4 | re-routing instruction (0 = the queue's home proxy, 1 = start from the proxy after it) |
/// | 12 | 4 | number of entries in the retry-forbidden list (≤ 12) |
/// | 16 | 48 | retry-forbidden list: indexes into the device's proxies a resend must not go to |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SdkHint {
    /// Location key a route table will map to a proxy (0: "hash the path"); carried,
    /// not read yet.
    pub location_key: u64,
    /// Re-routing instruction.
    pub reroute: u32,
    /// Number of valid entries in `retry_forbidden`.
    pub retry_forbidden_len: u32,
    /// Proxy indexes the request must not be retried on.
    pub retry_forbidden: [u32; 12],
}

/// Size of an encoded [`SdkHint`], in bytes.
pub const HINT_SIZE: usize = 64;

impl SdkHint {
    /// Encodes into 64 bytes at `b[off..]`.
    pub fn encode_into(&self, b: &mut [u8], off: usize) {
        put_u64(b, off, self.location_key);
        put_u32(b, off + 8, self.reroute);
        put_u32(b, off + 12, self.retry_forbidden_len.min(12));
        for (i, v) in self.retry_forbidden.iter().enumerate() {
            put_u32(b, off + 16 + 4 * i, *v);
        }
    }

    /// Decodes 64 bytes at `b[off..]`.
    pub fn decode_from(b: &[u8], off: usize) -> Result<SdkHint, DecodeError> {
        let len = get_u32(b, off + 12);
        if len > 12 {
            return Err(DecodeError::Invalid { field: "hint.retry_forbidden_len", why: "more than 12" });
        }
        let mut retry_forbidden = [0u32; 12];
        for (i, v) in retry_forbidden.iter_mut().enumerate() {
            *v = get_u32(b, off + 16 + 4 * i);
        }
        Ok(SdkHint { location_key: get_u64(b, off), reroute: get_u32(b, off + 8), retry_forbidden_len: len, retry_forbidden })
    }

    /// `true` if proxy `idx` is on the retry-forbidden list.
    pub fn forbids(&self, idx: u32) -> bool {
        self.retry_forbidden[..self.retry_forbidden_len as usize].contains(&idx)
    }
}

/// Byte offset of the tag in a request header.
pub const REQUEST_TAG_OFFSET: usize = 128;
/// Byte offset of the tag in a response header.
pub const RESPONSE_TAG_OFFSET: usize = 48;

/// The 512-byte IO request header at the start of a request slot.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVQ` |
/// | 4 | 2 | protocol version (2) |
/// | 6 | 2 | operation ([`Op`]) |
/// | 8 | 4 | queue ID (must name the slot it is written to) |
/// | 12 | 4 | process ID of the sender |
/// | 16 | 8 | session ID |
/// | 24 | 8 | request ID (echoed in the response) |
/// | 32 | 8 | file handle (0 = none) |
/// | 40 | 8 | file offset, bytes (List: first entry index; Truncate: new size) |
/// | 48 | 4 | length, bytes (Read: bytes wanted, ≤ 1 MiB) |
/// | 52 | 4 | flags ([`flags`]) |
/// | 56 | 4 | payload length, bytes (data or path that follows the header) |
/// | 60 | 4 | reserved (0) |
/// | 64 | 64 | SDK hint ([`SdkHint`]) |
/// | 128 | 16 | AES-256-GCM tag: header (this field zeroed) authenticated, payload encrypted ([`crate::crypto::SessionKeys::seal_request`]) |
/// | 144 | 368 | reserved (0) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub op: Op,
    pub queue_id: u32,
    pub pid: u32,
    pub session_id: u64,
    pub request_id: u64,
    pub file_handle: u64,
    pub offset: u64,
    pub length: u32,
    pub flags: u32,
    pub payload_len: u32,
    pub hint: SdkHint,
}

impl RequestHeader {
    /// Encodes into a 512-byte header at the start of `b` (which must be at least
    /// [`HEADER_SIZE`] bytes).
    pub fn encode_into(&self, b: &mut [u8]) {
        let b = &mut b[..HEADER_SIZE];
        b.fill(0);
        put_u32(b, 0, REQUEST_MAGIC);
        put_u16(b, 4, PROTOCOL_VERSION);
        put_u16(b, 6, self.op as u16);
        put_u32(b, 8, self.queue_id);
        put_u32(b, 12, self.pid);
        put_u64(b, 16, self.session_id);
        put_u64(b, 24, self.request_id);
        put_u64(b, 32, self.file_handle);
        put_u64(b, 40, self.offset);
        put_u32(b, 48, self.length);
        put_u32(b, 52, self.flags);
        put_u32(b, 56, self.payload_len);
        self.hint.encode_into(b, 64);
    }

    /// Decodes a request header. Checks magic, version, operation and that the payload
    /// and read length fit in one IO ([`crate::MAX_IO_BYTES`]); it does not check
    /// queue, session or PID (that is the server's job). DPU-only operations
    /// ([`Op::is_dpu_only`]) are not host operations and give [`DecodeError::UnknownOp`].
    pub fn decode(b: &[u8]) -> Result<RequestHeader, DecodeError> {
        need(b, HEADER_SIZE)?;
        check_magic(b, REQUEST_MAGIC)?;
        let code = get_u16(b, 6);
        let op = Op::from_u16(code)?;
        if op.is_dpu_only() {
            return Err(DecodeError::UnknownOp(code));
        }
        let h = RequestHeader {
            op,
            queue_id: get_u32(b, 8),
            pid: get_u32(b, 12),
            session_id: get_u64(b, 16),
            request_id: get_u64(b, 24),
            file_handle: get_u64(b, 32),
            offset: get_u64(b, 40),
            length: get_u32(b, 48),
            flags: get_u32(b, 52),
            payload_len: get_u32(b, 56),
            hint: SdkHint::decode_from(b, 64)?,
        };
        if h.payload_len > crate::MAX_IO_BYTES || h.length > crate::MAX_IO_BYTES {
            return Err(DecodeError::TooLarge(h.payload_len.max(h.length)));
        }
        if h.op.carries_path() && h.payload_len as usize > h.op.max_path_payload() {
            return Err(DecodeError::Invalid { field: "payload_len", why: "path (or rename's two paths) over 4096 bytes" });
        }
        Ok(h)
    }

    /// Reads the identity fields of a header without validating it, so that the
    /// server can check queue ownership before judging the rest and can still match an
    /// error response to the request. Needs only the first 32 bytes.
    pub fn peek_ids(b: &[u8]) -> Option<PeekedIds> {
        if b.len() < 32 {
            return None;
        }
        Some(PeekedIds {
            op: get_u16(b, 6),
            queue_id: get_u32(b, 8),
            pid: get_u32(b, 12),
            session_id: get_u64(b, 16),
            request_id: get_u64(b, 24),
        })
    }
}

/// Identity fields of a request header, read without validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekedIds {
    pub op: u16,
    pub queue_id: u32,
    pub pid: u32,
    pub session_id: u64,
    pub request_id: u64,
}

/// The 512-byte IO response header at the start of a response slot.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVR` |
/// | 4 | 2 | protocol version (2) |
/// | 6 | 2 | operation echoed (0 if the request could not be decoded) |
/// | 8 | 4 | status ([`Status`]) |
/// | 12 | 4 | queue ID |
/// | 16 | 8 | request ID echoed |
/// | 24 | 8 | result (see [`Op`]) |
/// | 32 | 4 | payload length, bytes |
/// | 36 | 4 | flags ([`flags::MORE`], [`flags::TRACED`]) |
/// | 40 | 8 | reserved (0) |
/// | 48 | 16 | AES-256-GCM tag ([`crate::crypto::SessionKeys::seal_response`]: header authenticated, payload encrypted or authenticated) |
/// | 64 | 64 | with [`flags::TRACED`]: the request's trace ([`crate::trace::Trace`]), else reserved (0) |
/// | 128 | 384 | reserved (0) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeader {
    pub op: u16,
    pub status: Status,
    pub queue_id: u32,
    pub request_id: u64,
    pub result: u64,
    pub payload_len: u32,
    pub flags: u32,
}

impl ResponseHeader {
    /// Encodes into a 512-byte header at the start of `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        let b = &mut b[..HEADER_SIZE];
        b.fill(0);
        put_u32(b, 0, RESPONSE_MAGIC);
        put_u16(b, 4, PROTOCOL_VERSION);
        put_u16(b, 6, self.op);
        put_u32(b, 8, self.status.as_u32());
        put_u32(b, 12, self.queue_id);
        put_u64(b, 16, self.request_id);
        put_u64(b, 24, self.result);
        put_u32(b, 32, self.payload_len);
        put_u32(b, 36, self.flags);
    }

    /// Decodes a response header.
    pub fn decode(b: &[u8]) -> Result<ResponseHeader, DecodeError> {
        need(b, HEADER_SIZE)?;
        check_magic(b, RESPONSE_MAGIC)?;
        let payload_len = get_u32(b, 32);
        if payload_len > crate::MAX_IO_BYTES {
            return Err(DecodeError::Invalid { field: "payload_len", why: "over 1 MiB" });
        }
        Ok(ResponseHeader {
            op: get_u16(b, 6),
            status: Status::from_u32(get_u32(b, 8)),
            queue_id: get_u32(b, 12),
            request_id: get_u64(b, 16),
            result: get_u64(b, 24),
            payload_len,
            flags: get_u32(b, 36),
        })
    }
}

/// Rounds a byte count up to a whole number of sectors, in bytes.
pub fn round_to_sector(n: usize) -> usize {
    n.div_ceil(crate::layout::SECTOR_SIZE as usize) * crate::layout::SECTOR_SIZE as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestHeader {
        RequestHeader {
            op: Op::Write,
            queue_id: 7,
            pid: 4242,
            session_id: 0xdead_beef_0000_0001,
            request_id: 99,
            file_handle: 3,
            offset: 1 << 40,
            length: 4096,
            flags: flags::SYNC,
            payload_len: 4096,
            hint: SdkHint {
                location_key: 5,
                reroute: 1,
                retry_forbidden_len: 2,
                retry_forbidden: [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
        }
    }

    #[test]
    fn only_ops_safe_to_run_twice_are_idempotent() {
        assert!(Op::Write.is_idempotent(0) && Op::Read.is_idempotent(0) && Op::VolumeWrite.is_idempotent(0));
        assert!(Op::Open.is_idempotent(flags::CREATE | flags::WRITE));
        assert!(!Op::Open.is_idempotent(flags::CREATE | flags::EXCL), "a second try would answer Exists");
        assert!(!Op::Append.is_idempotent(0), "the data would land twice");
        assert!(!Op::Remove.is_idempotent(0), "a second try would answer NotFound");
    }

    #[test]
    fn request_round_trip() {
        let mut b = [0xffu8; 512];
        req().encode_into(&mut b);
        assert_eq!(RequestHeader::decode(&b).unwrap(), req());
        let ids = RequestHeader::peek_ids(&b).unwrap();
        assert_eq!((ids.queue_id, ids.request_id, ids.op, ids.pid), (7, 99, Op::Write as u16, 4242));
        assert!(RequestHeader::decode(&b).unwrap().hint.forbids(2));
    }

    #[test]
    fn request_rejects_bad_input() {
        let mut b = [0u8; 512];
        req().encode_into(&mut b);
        assert!(matches!(RequestHeader::decode(&b[..100]), Err(DecodeError::Truncated { .. })));
        let mut m = b;
        m[0] = b'X';
        assert_eq!(RequestHeader::decode(&m).unwrap_err().status(), Status::BadMagic);
        let mut m = b;
        put_u16(&mut m, 6, 77);
        assert_eq!(RequestHeader::decode(&m).unwrap_err().status(), Status::UnknownOp);
        let mut m = b;
        put_u32(&mut m, 56, crate::MAX_IO_BYTES + 1);
        assert_eq!(RequestHeader::decode(&m).unwrap_err().status(), Status::TooLarge);
        let mut m = b;
        put_u16(&mut m, 4, 1); // version 1: before session authentication
        assert_eq!(RequestHeader::decode(&m).unwrap_err().status(), Status::BadVersion);
        for code in 16..=20 {
            let mut m = b;
            put_u16(&mut m, 6, code);
            assert!(Op::from_u16(code).unwrap().is_dpu_only());
            assert_eq!(RequestHeader::decode(&m).unwrap_err(), DecodeError::UnknownOp(code), "DPU-only op from a host");
        }
        let mut m = b;
        put_u32(&mut m, 64 + 12, 13);
        assert!(RequestHeader::decode(&m).is_err());
    }

    #[test]
    fn grants_limit_paths_and_writes() {
        let all = Grant::default();
        assert!(all.allows(Op::Write, 0, "x/y") && all.allows(Op::Open, flags::CREATE, ""));
        let g = Grant { read_only: true, prefix: "logs/a".into() };
        assert!(g.allows(Op::Read, 0, "logs/a/f") && g.allows(Op::List, 0, "logs/a") && g.allows(Op::Open, 0, "logs/a/x"));
        assert!(!g.allows(Op::List, 0, "logs"), "above the prefix");
        assert!(!g.allows(Op::Open, 0, "logs/ab"), "a sibling sharing the prefix's letters");
        assert!(!g.allows(Op::Open, flags::WRITE, "logs/a/x") && !g.allows(Op::Remove, 0, "logs/a/x"));
        assert!(!g.allows(Op::Open, flags::TRUNCATE, "logs/a/x") && !g.allows(Op::Truncate, 0, "logs/a/x"));
        assert!(Grant { read_only: false, ..g }.allows(Op::Write, 0, "logs/a/x"));
    }

    #[test]
    fn response_round_trip() {
        let r = ResponseHeader {
            op: 3,
            status: Status::NotFound,
            queue_id: 1,
            request_id: 2,
            result: 3,
            payload_len: 4,
            flags: flags::MORE,
        };
        let mut b = [0u8; 512];
        r.encode_into(&mut b);
        assert_eq!(ResponseHeader::decode(&b).unwrap(), r);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut b = [0u8; 512];
        for _ in 0..10_000 {
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            let _ = RequestHeader::decode(&b);
            let _ = ResponseHeader::decode(&b);
            // Keep the magic so the decoder reaches the later fields.
            put_u32(&mut b, 0, REQUEST_MAGIC);
            put_u16(&mut b, 4, PROTOCOL_VERSION);
            let _ = RequestHeader::decode(&b);
        }
    }
}
