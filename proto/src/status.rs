//! Status codes carried in every IO, admin and proxy response (`docs/protocol.md`,
//! "Status codes"). `0` is success; every other value names one failure a host can act
//! on. Unknown values decode as [`Status::Io`] so that a newer peer never makes an older
//! one panic.

/// Result of one PoV operation, as carried on the wire (`u32`, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Malformed request (bad field, truncated header, misaligned or mis-sized IO).
    Invalid = 1,
    /// The record's magic number is wrong.
    BadMagic = 2,
    /// The record's protocol version is not supported.
    BadVersion = 3,
    /// The operation code is unknown.
    UnknownOp = 4,
    /// The queue ID is out of range, not open, or does not match the slot written.
    BadQueue = 5,
    /// The request's process ID does not own the queue (paper §4.6).
    PidMismatch = 6,
    /// The session ID is unknown or the session was reclaimed.
    BadSession = 7,
    /// Tenant unknown or secret wrong.
    AuthFailed = 8,
    /// The path leaves the tenant's namespace, or the handle was not opened for this
    /// access.
    Permission = 9,
    /// No such file or directory.
    NotFound = 10,
    /// The file exists (exclusive create).
    Exists = 11,
    /// The IO is larger than [`crate::MAX_IO_BYTES`] or the slot.
    TooLarge = 12,
    /// The file handle is not open in this session.
    BadHandle = 13,
    /// The backend has no space left.
    NoSpace = 14,
    /// The backend failed the operation.
    Io = 15,
    /// The proxy or the backend did not answer in time.
    Timeout = 16,
    /// The queue already has a request in flight.
    Busy = 17,
    /// No proxy connection is available.
    Unavailable = 18,
    /// A path component is not a directory.
    NotDir = 19,
    /// The path names a directory where a file was expected.
    IsDir = 20,
    /// The directory is not empty.
    NotEmpty = 21,
    /// A path or name is too long.
    NameTooLong = 22,
    /// No free session area, queue or handle.
    NoResources = 23,
    /// A response slot was read but no request was ever sent on that queue.
    NoRequest = 24,
    /// Too many failed authentications for this tenant lately: wait and retry.
    RateLimited = 25,
    /// The tenant's limit of sessions or queues on this device is reached.
    Quota = 26,
    /// Proxy → DPU only: the request was not run because this proxy does not own its
    /// route slot and the DPU's route table is older than the proxy's; the payload is
    /// the proxy's route table ([`crate::route::RouteTable`]). The DPU installs it and
    /// resends. A host never sees it.
    Redirect = 27,
}

impl Status {
    /// Decodes a wire value; unknown values become [`Status::Io`].
    pub fn from_u32(v: u32) -> Status {
        use Status::*;
        match v {
            0 => Ok,
            1 => Invalid,
            2 => BadMagic,
            3 => BadVersion,
            4 => UnknownOp,
            5 => BadQueue,
            6 => PidMismatch,
            7 => BadSession,
            8 => AuthFailed,
            9 => Permission,
            10 => NotFound,
            11 => Exists,
            12 => TooLarge,
            13 => BadHandle,
            14 => NoSpace,
            15 => Io,
            16 => Timeout,
            17 => Busy,
            18 => Unavailable,
            19 => NotDir,
            20 => IsDir,
            21 => NotEmpty,
            22 => NameTooLong,
            23 => NoResources,
            24 => NoRequest,
            25 => RateLimited,
            26 => Quota,
            27 => Redirect,
            _ => Io,
        }
    }

    /// The status's name in snake case (`"not_found"`), as metrics label it.
    pub fn name(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "ok",
            Invalid => "invalid",
            BadMagic => "bad_magic",
            BadVersion => "bad_version",
            UnknownOp => "unknown_op",
            BadQueue => "bad_queue",
            PidMismatch => "pid_mismatch",
            BadSession => "bad_session",
            AuthFailed => "auth_failed",
            Permission => "permission",
            NotFound => "not_found",
            Exists => "exists",
            TooLarge => "too_large",
            BadHandle => "bad_handle",
            NoSpace => "no_space",
            Io => "io",
            Timeout => "timeout",
            Busy => "busy",
            Unavailable => "unavailable",
            NotDir => "not_dir",
            IsDir => "is_dir",
            NotEmpty => "not_empty",
            NameTooLong => "name_too_long",
            NoResources => "no_resources",
            NoRequest => "no_request",
            RateLimited => "rate_limited",
            Quota => "quota",
            Redirect => "redirect",
        }
    }

    /// The wire value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// `true` for [`Status::Ok`].
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }

    /// The closest POSIX errno, for hosts that surface PoV errors as `std::io::Error`.
    pub fn errno(self) -> i32 {
        use Status::*;
        match self {
            Ok => 0,
            Invalid | BadMagic | BadVersion => 22, // EINVAL
            UnknownOp => 95,                       // EOPNOTSUPP
            BadQueue | BadHandle => 9,             // EBADF
            PidMismatch | Permission => 13,        // EACCES
            BadSession => 116,                     // ESTALE
            AuthFailed => 1,                       // EPERM
            NotFound => 2,                         // ENOENT
            Exists => 17,                          // EEXIST
            TooLarge => 27,                        // EFBIG
            NoSpace => 28,                         // ENOSPC
            Io => 5,                               // EIO
            Timeout => 110,                        // ETIMEDOUT
            Busy => 16,                            // EBUSY
            Unavailable => 107,                    // ENOTCONN
            NotDir => 20,                          // ENOTDIR
            IsDir => 21,                           // EISDIR
            NotEmpty => 39,                        // ENOTEMPTY
            NameTooLong => 36,                     // ENAMETOOLONG
            NoResources => 24,                     // EMFILE
            NoRequest => 61,                       // ENODATA
            RateLimited => 11,                     // EAGAIN
            Quota => 122,                          // EDQUOT
            Redirect => 11,                        // EAGAIN
        }
    }

    /// Maps an errno from a backend to the closest status.
    pub fn from_errno(errno: i32) -> Status {
        match errno {
            0 => Status::Ok,
            2 => Status::NotFound,
            17 => Status::Exists,
            13 | 1 => Status::Permission,
            20 => Status::NotDir,
            21 => Status::IsDir,
            39 => Status::NotEmpty,
            28 | 122 => Status::NoSpace, // ENOSPC, EDQUOT
            36 => Status::NameTooLong,
            22 => Status::Invalid,
            27 => Status::TooLarge,
            110 => Status::Timeout,
            _ => Status::Io,
        }
    }

    /// Maps a `std::io::Error` from a backend to the closest status.
    pub fn from_io_error(e: &std::io::Error) -> Status {
        match e.raw_os_error() {
            Some(n) => Status::from_errno(n),
            None => match e.kind() {
                std::io::ErrorKind::NotFound => Status::NotFound,
                std::io::ErrorKind::AlreadyExists => Status::Exists,
                std::io::ErrorKind::PermissionDenied => Status::Permission,
                std::io::ErrorKind::InvalidInput => Status::Invalid,
                std::io::ErrorKind::TimedOut => Status::Timeout,
                _ => Status::Io,
            },
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Ok => "success",
            Status::Invalid => "invalid request",
            Status::BadMagic => "bad magic",
            Status::BadVersion => "unsupported protocol version",
            Status::UnknownOp => "unknown operation",
            Status::BadQueue => "bad queue",
            Status::PidMismatch => "process ID does not own the queue",
            Status::BadSession => "unknown or reclaimed session",
            Status::AuthFailed => "authentication failed",
            Status::Permission => "permission denied",
            Status::NotFound => "no such file or directory",
            Status::Exists => "file exists",
            Status::TooLarge => "IO too large",
            Status::BadHandle => "bad file handle",
            Status::NoSpace => "no space left on backend",
            Status::Io => "backend IO error",
            Status::Timeout => "timed out",
            Status::Busy => "queue busy",
            Status::Unavailable => "proxy unavailable",
            Status::NotDir => "not a directory",
            Status::IsDir => "is a directory",
            Status::NotEmpty => "directory not empty",
            Status::NameTooLong => "name too long",
            Status::NoResources => "no free sessions, queues or handles",
            Status::NoRequest => "no request on this queue",
            Status::RateLimited => "too many failed authentications, retry later",
            Status::Quota => "the tenant's session or queue limit on this device is reached",
            Status::Redirect => "redirected to the proxy that owns the request's route slot",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for v in 0..=27u32 {
            assert_eq!(Status::from_u32(v).as_u32(), v);
        }
        assert_eq!(Status::from_u32(9999), Status::Io);
    }

    #[test]
    fn errno_mapping_is_consistent() {
        for s in [Status::NotFound, Status::Exists, Status::NoSpace, Status::NotEmpty, Status::IsDir] {
            assert_eq!(Status::from_errno(s.errno()), s);
        }
    }
}
