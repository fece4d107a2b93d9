//! PoV wire formats, shared by every part of PoV.
//!
//! This crate is the single implementation of the formats specified in
//! `docs/protocol.md` and of the session cryptography they carry ([`crypto`], on
//! `ring`); it does no IO.
//!
//! * [`layout`]: the PoV device address space (configuration space, admin request
//!   space, per-session IO areas with request/response slots and guard space), the
//!   read-only configuration record and the virtio-blk serial that marks a PoV device
//!   (paper §5 "PoV device").
//! * [`io`]: the 512-byte IO request and response headers carried in the request and
//!   response slots, operations, flags and the SDK hint (paper §4.3.2).
//! * [`admin`]: admin requests (session open/close, queue create/delete, heartbeat)
//!   carried in the admin request space and their answers in mailboxes (paper §4.3.1,
//!   §4.6).
//! * [`crypto`]: session open (challenge-response), key derivation, sealed IO requests
//!   and responses, sealed admin answers (`docs/security.md`).
//! * [`status`]: the error codes every response carries.
//! * [`wire`]: the length-prefixed frames between `pov-dpud` and `pov-proxy` (the
//!   "proxy request header" of paper §4.3.2).
//! * [`route`]: route tables (epoch, placement, members, slot owners) and the
//!   placement hashes shared by the DPU and the proxies (Ceph's rjenkins and stable mod).
//! * [`entry`]: the stat and directory-listing records returned in payloads.
//! * `fuzz` (feature `fuzzing`): the bodies of the fuzz targets of these decoders and
//!   the replay of their seed corpora (`docs/fuzzing.md`).
//!
//! All integers are little-endian. Byte offsets and lengths are in **bytes** unless a
//! name says `sectors` (a sector is [`layout::SECTOR_SIZE`] = 512 bytes).

pub mod admin;
pub mod crypto;
pub mod entry;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod io;
pub mod layout;
pub mod path;
pub mod route;
pub mod status;
pub mod testing;
pub mod trace;
pub mod wire;

mod codec;

pub use status::Status;

/// Protocol version carried in every header; a peer that sees another version answers
/// [`Status::BadVersion`].
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest amount of file data one IO carries, in bytes (paper §5: "an IO request
/// cannot exceed 1 MB").
pub const MAX_IO_BYTES: u32 = 1 << 20;

/// Error decoding a record that crossed a trust boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer is shorter than the fixed part of the record.
    #[error("truncated record: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// The magic number does not match the record type.
    #[error("bad magic {found:#010x}, expected {expected:#010x}")]
    BadMagic { found: u32, expected: u32 },
    /// The version field is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u16),
    /// The operation code is not known.
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    /// The IO carries or asks for more than [`MAX_IO_BYTES`].
    #[error("IO of {0} bytes is over the 1 MiB limit")]
    TooLarge(u32),
    /// A field holds a value outside its legal range.
    #[error("invalid field {field}: {why}")]
    Invalid { field: &'static str, why: &'static str },
}

impl DecodeError {
    /// The status code a server answers with for this decode error.
    pub fn status(&self) -> Status {
        match self {
            DecodeError::Truncated { .. } | DecodeError::Invalid { .. } => Status::Invalid,
            DecodeError::BadMagic { .. } => Status::BadMagic,
            DecodeError::BadVersion(_) => Status::BadVersion,
            DecodeError::UnknownOp(_) => Status::UnknownOp,
            DecodeError::TooLarge(_) => Status::TooLarge,
        }
    }
}

/// Displays an error followed by its chain of sources, `: `-separated (e.g.
/// `open device /dev/vdq: device access failed: No such file or directory (os error
/// 2)`), for logs and one-line reports of any `std::error::Error`. The error types of
/// this project never repeat their source in their own message, so `{e}` alone would
/// drop the cause.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
