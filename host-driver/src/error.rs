//! Errors.
//!
//! Setup and control operations (opening a device, opening or closing a session) return
//! [`Error`]: a [`ErrorKind`] plus context and an optional source. File operations
//! return `std::io::Result`; when the device answered with a PoV status, the
//! `io::Error` carries a [`StatusError`] (its kind follows [`Status::errno`]) and
//! [`status_of`] recovers the status.
//!
//! No error of this crate repeats its [`source`](std::error::Error::source) in its own
//! message: `Display` says what failed, the source says why. Print the whole chain with
//! [`Chain`] (or anyhow's `{:#}`), which then shows each cause once.

use std::fmt;
use std::io;

use pov_proto::io::Op;
use pov_proto::Status;

/// What went wrong, for setup and control operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device spec string is malformed.
    #[error("bad device spec")]
    BadSpec,
    /// The device could not be opened, read or written.
    #[error("device access failed")]
    Access,
    /// The device's configuration space does not describe a PoV device this driver
    /// understands.
    #[error("not a PoV device")]
    NotPovDevice,
    /// The device answered an admin request with this status.
    #[error("admin request refused: {0} (PoV status {0:?})")]
    Admin(Status),
    /// The admin answer in our mailbox is to another request (it opened with our key
    /// but echoes another sequence number or operation: a device bug).
    #[error("admin answer mismatch")]
    AdminMismatch,
    /// A response from the device could not be decoded.
    #[error("malformed response from the device")]
    Protocol,
    /// An argument is out of range (tenant name, secret, queue count...).
    #[error("invalid argument")]
    InvalidArgument,
    /// The session is closed or was reclaimed by the device.
    #[error("session closed")]
    Closed,
}

/// Error of a setup or control operation: a kind, what was being done, and the
/// underlying error if any. `Display` shows the context and the kind
/// (`open device /dev/vdb: device access failed`); the underlying error is the
/// [`source`](std::error::Error::source), not repeated in the message (see [`Chain`]).
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Result of a setup or control operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` while doing `context` (e.g. "open session on /dev/vdb").
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Error {
        Error { kind, context: context.into(), source: None }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
        self.source = Some(source.into());
        self
    }

    /// `true` if the error says the device itself is gone or silent (an IO timed out,
    /// the connection was lost or abandoned), as opposed to a refusal (a busy mailbox,
    /// a status): what makes a session fail over (`crate::session`).
    pub fn device_gone(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(e) = cur {
            if e.downcast_ref::<io::Error>().is_some_and(io_device_gone) {
                return true;
            }
            cur = e.source();
        }
        false
    }

    /// Replaces the context (what was being done), keeping kind and source.
    pub fn recontext(mut self, context: impl Into<String>) -> Error {
        self.context = context.into();
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// What was being done.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The PoV status the device answered with, if the failure is one.
    pub fn status(&self) -> Option<Status> {
        match self.kind {
            ErrorKind::Admin(s) => Some(s),
            _ => self.source.as_deref().and_then(|s| s.downcast_ref::<io::Error>()).and_then(status_of),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e.kind {
            ErrorKind::BadSpec | ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
            ErrorKind::NotPovDevice | ErrorKind::Protocol => io::ErrorKind::InvalidData,
            ErrorKind::Admin(s) => errno_kind(s.errno()),
            ErrorKind::Closed => io::ErrorKind::NotConnected,
            ErrorKind::Access => match e.source.as_deref().and_then(|s| s.downcast_ref::<io::Error>()) {
                Some(io) => io.kind(),
                None => io::ErrorKind::Other,
            },
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// `true` for the IO errors that mean the device is gone or silent: a timed-out, lost,
/// reset or abandoned connection; not an IO error completion (a device refusing one IO).
pub(crate) fn io_device_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Displays an error and then each of its sources, `: `-separated, e.g.
/// `open device /dev/vdq: device access failed: No such file or directory (os error 2)`.
/// For logs and one-line reports of any `std::error::Error` (`pov_proto::ErrorChain`).
pub use pov_proto::ErrorChain as Chain;

/// The `io::ErrorKind` the OS associates with `errno`.
pub fn errno_kind(errno: i32) -> io::ErrorKind {
    io::Error::from_raw_os_error(errno).kind()
}

/// A PoV status returned by the device for a file operation; carried inside the
/// `io::Error`s of file operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusError {
    /// The status the device answered.
    pub status: Status,
    /// The operation that failed.
    pub op: Op,
    /// The path or file the operation was about.
    pub target: String,
}

impl StatusError {
    /// The POSIX errno closest to the status.
    pub fn errno(&self) -> i32 {
        self.status.errno()
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} (PoV status {:?}, errno {})",
            op_name(self.op),
            self.target,
            self.status,
            self.status,
            self.status.errno()
        )
    }
}

impl std::error::Error for StatusError {}

/// Lower-case name of an operation, for messages ([`Op::name`] with spaces:
/// `"volume open"`).
pub fn op_name(op: Op) -> std::borrow::Cow<'static, str> {
    let n = op.name();
    if n.contains('_') {
        n.replace('_', " ").into()
    } else {
        n.into()
    }
}

/// An `io::Error` for a non-Ok `status`: its kind is that of [`Status::errno`] and its
/// message names the operation, the target and the status.
pub fn status_error(status: Status, op: Op, target: impl Into<String>) -> io::Error {
    io::Error::new(errno_kind(status.errno()), StatusError { status, op, target: target.into() })
}

/// The PoV status inside an `io::Error` returned by a file operation, if the device
/// answered with one.
pub fn status_of(e: &io::Error) -> Option<Status> {
    let inner = e.get_ref()?;
    if let Some(s) = inner.downcast_ref::<StatusError>() {
        return Some(s.status);
    }
    inner.downcast_ref::<Error>().and_then(Error::status)
}

/// The POSIX errno for a failed file operation: the device's PoV status if it answered
/// one ([`Status::errno`]), else the OS error, else the closest errno of the
/// `io::ErrorKind` the library returned (`EIO` for the rest: transport failures, a lost
/// session). What the FUSE mount and the C ABI report.
pub fn errno_of(e: &io::Error) -> i32 {
    if let Some(n) = status_of(e).map(|s| s.errno()).filter(|&n| n != 0) {
        return n;
    }
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    // The device's statuses and OS errors were mapped above; these kinds are what the
    // library itself returns (kinds newer than the MSRV, 1.80, are not named).
    use io::ErrorKind as K;
    match e.kind() {
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::AlreadyExists => libc::EEXIST,
        K::InvalidInput => libc::EINVAL,
        K::Unsupported => libc::ENOTSUP,
        _ => libc::EIO,
    }
}

/// The error of a non-idempotent request (`Op::is_idempotent`: append, remove,
/// rename, exclusive create) that was in flight when the session failed over: it may
/// or may not have run. Carried inside an [`io::Error`] of the transport failure's
/// kind; [`outcome_unknown`] finds it.
#[derive(Debug)]
pub struct OutcomeUnknown(pub String);

impl fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutcomeUnknown {}

/// `true` if `e` is an [`OutcomeUnknown`]: the request may have run; an application
/// that can tell (or can redo it elsewhere, e.g. under a new temporary name) should.
pub fn outcome_unknown(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.downcast_ref::<OutcomeUnknown>().is_some())
}

/// An `InvalidData` error for a response that breaks the protocol.
pub(crate) fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PoV protocol error: {}", msg.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_follow_the_pov_status_then_the_os_error_then_the_io_kind() {
        assert_eq!(errno_of(&status_error(Status::NotFound, Op::Stat, "/x")), libc::ENOENT);
        assert_eq!(errno_of(&status_error(Status::Exists, Op::Open, "/x")), libc::EEXIST);
        assert_eq!(errno_of(&io::Error::from_raw_os_error(libc::ENOSPC)), libc::ENOSPC);
        assert_eq!(errno_of(&io::Error::new(io::ErrorKind::AlreadyExists, "x")), libc::EEXIST);
        assert_eq!(errno_of(&io::Error::new(io::ErrorKind::NotConnected, "session lost")), libc::EIO);
    }

    #[test]
    fn status_errors_map_to_errno_kinds_and_keep_the_status() {
        let e = status_error(Status::NotFound, Op::Open, "/a/b");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(status_of(&e), Some(Status::NotFound));
        let msg = e.to_string();
        assert!(msg.contains("open /a/b"), "{msg}");
        assert!(msg.contains("NotFound"), "{msg}");
        assert!(msg.contains("no such file or directory"), "{msg}");
        assert!(msg.contains("errno 2"), "{msg}");

        assert_eq!(status_error(Status::Exists, Op::Open, "x").kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(status_error(Status::Permission, Op::Read, "x").kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(status_error(Status::Timeout, Op::Read, "x").kind(), io::ErrorKind::TimedOut);
        let e = status_error(Status::BadSession, Op::Read, "x");
        assert_eq!(e.get_ref().unwrap().downcast_ref::<StatusError>().unwrap().errno(), 116);
        assert_eq!(status_of(&io::Error::other("plain")), None);
    }

    #[test]
    fn setup_errors_display_context_kind_and_source() {
        let e = Error::new(ErrorKind::Access, "open device /dev/vdq").with_source(io::Error::from_raw_os_error(libc::ENOENT));
        // The message is context and kind; the cause is the source, shown once in the chain.
        assert_eq!(e.to_string(), "open device /dev/vdq: device access failed");
        let s = Chain(&e).to_string();
        assert!(s.starts_with("open device /dev/vdq: device access failed: "), "{s}");
        assert!(s.contains("No such file"), "{s}");
        assert_eq!(s.matches("No such file").count(), 1, "{s}");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        // Wrapped in an io::Error (file operations), the chain is the same.
        assert_eq!(Chain(&io).to_string(), s);

        let e = Error::new(ErrorKind::Admin(Status::AuthFailed), "open session");
        assert_eq!(e.status(), Some(Status::AuthFailed));
        assert!(e.to_string().contains("authentication failed"));
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(status_of(&io), Some(Status::AuthFailed));
    }
}
