//! Device specs: the strings that name a PoV device.
//!
//! * `/dev/vdb`, or any other path: a kernel block device (opened `O_DIRECT`).
//! * `vhost-user:/run/pov/dev0.sock`: a vhost-user-blk socket, driven through libblkio.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Prefix of a vhost-user device spec.
pub const VHOST_USER_PREFIX: &str = "vhost-user:";

/// How to reach a PoV device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A kernel block device node such as `/dev/vdb`.
    Kernel(PathBuf),
    /// A vhost-user-blk UNIX socket.
    VhostUser(PathBuf),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    /// Parses `vhost-user:PATH` or a plain path.
    ///
    /// Errors: [`ErrorKind::BadSpec`] for an empty spec or an empty socket path, or an
    /// unknown `scheme:` prefix (a string with a `:` before any `/`).
    fn from_str(s: &str) -> Result<DeviceSpec, Error> {
        let bad = |why: &str| Error::new(ErrorKind::BadSpec, format!("device spec {s:?}: {why}"));
        if s.is_empty() {
            return Err(bad("empty (expected /dev/vdX or vhost-user:SOCKET)"));
        }
        if let Some(p) = s.strip_prefix(VHOST_USER_PREFIX) {
            if p.is_empty() {
                return Err(bad("missing socket path after vhost-user:"));
            }
            return Ok(DeviceSpec::VhostUser(PathBuf::from(p)));
        }
        if let Some(colon) = s.find(':') {
            if !s[..colon].contains('/') {
                return Err(bad("unknown scheme (expected /dev/vdX or vhost-user:SOCKET)"));
            }
        }
        Ok(DeviceSpec::Kernel(PathBuf::from(s)))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Kernel(p) => write!(f, "{}", p.display()),
            DeviceSpec::VhostUser(p) => write!(f, "{VHOST_USER_PREFIX}{}", p.display()),
        }
    }
}

/// Transport options for [`crate::Device::open_with`].
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Data queues to ask libblkio for (vhost-user only; one more is added for admin
    /// traffic, and the device's `max-queues` caps the total). Sessions with more PoV
    /// queues than this share libblkio queues and serialize on them. Default 4.
    pub blkio_queues: usize,
    /// Longest wait for one device round trip on the vhost-user path; `None` (default)
    /// waits as long as the device takes, like a kernel block device.
    pub io_timeout: Option<Duration>,
    /// Submit a request's WRITE and its response READ together — one device round
    /// trip per request: one `io_uring_enter(2)` on `/dev/vdX`, one libblkio batch on
    /// vhost-user — reading the response from the queue's response window, when the
    /// device advertises `features::RESPONSE_WINDOWS` (`docs/protocol.md`, "Response
    /// windows"). `false`: the READ goes out only after the WRITE completed (two round
    /// trips on `/dev/vdX`; kept for comparison and for devices without windows,
    /// which get this anyway). Default `true`.
    pub joint_round_trip: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions { blkio_queues: 4, io_timeout: None, joint_round_trip: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("/dev/vdb".parse::<DeviceSpec>().unwrap(), DeviceSpec::Kernel("/dev/vdb".into()));
        assert_eq!("img/dev".parse::<DeviceSpec>().unwrap(), DeviceSpec::Kernel("img/dev".into()));
        assert_eq!("./a:b".parse::<DeviceSpec>().unwrap(), DeviceSpec::Kernel("./a:b".into()));
        assert_eq!("vhost-user:/run/pov.sock".parse::<DeviceSpec>().unwrap(), DeviceSpec::VhostUser("/run/pov.sock".into()));
        assert_eq!("vhost-user:rel.sock".parse::<DeviceSpec>().unwrap(), DeviceSpec::VhostUser("rel.sock".into()));
        for bad in ["", "vhost-user:", "vfio:/x", "nbd:host"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::BadSpec, "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["/dev/vdb", "vhost-user:/tmp/x.sock"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }
}
