//! Finding the PoV devices of this host.
//!
//! A PoV device exposed by the kernel's virtio-blk driver is a `/dev/vdX` whose
//! virtio-blk serial starts with `pov-` ([`pov_proto::layout::is_pov_serial`]; the DPU
//! sets it to `pov-<device name>`). The kernel shows the serial in
//! `/sys/block/vdX/serial` and the capacity, in 512-byte sectors, in
//! `/sys/block/vdX/size`. [`discover`] scans there; [`probe`] opens a device and
//! validates its configuration space.
//!
//! ```no_run
//! for d in pov_host::discover::discover() {
//!     match d.probe() {
//!         Ok(dev) => println!("{} {} {} bytes: PoV device {:?}", d.path.display(), d.serial, d.capacity, dev.name()),
//!         Err(e) => println!("{} {}: not usable: {}", d.path.display(), d.serial, pov_host::error::Chain(&e)),
//!     }
//! }
//! ```
//!
//! vhost-user sockets have no serial a host could scan: name them with a
//! [`DeviceSpec::VhostUser`] and [`probe`] them.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::{Device, DeviceOptions, DeviceSpec};

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";

/// A virtio-blk disk found in sysfs whose serial marks it as a PoV device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDevice {
    /// `/dev/<name>`.
    pub path: PathBuf,
    /// The serial, trailing NULs and whitespace removed.
    pub serial: String,
    /// Capacity in bytes (sysfs `size` × 512).
    pub capacity: u64,
}

impl FoundDevice {
    /// The spec that opens this device (`/dev/vdX`, kernel transport).
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec::Kernel(self.path.clone())
    }

    /// Opens the device and validates its configuration space (see [`probe`]).
    ///
    /// Errors: as [`probe`].
    pub fn probe(&self) -> Result<Device> {
        probe(&self.spec())
    }
}

/// The PoV devices of this host: [`scan_sysfs`] of [`SYS_BLOCK`], sorted by path.
/// Empty when there are none or sysfs cannot be read. Nothing is opened: a device
/// listed here may still fail [`probe`].
pub fn discover() -> Vec<FoundDevice> {
    scan_sysfs(Path::new(SYS_BLOCK))
}

/// Scans `<sys_block>/vd*/serial` for PoV serials (see
/// [`pov_proto::layout::is_pov_serial`]), sorted by path.
///
/// Never fails: an unreadable `sys_block` gives an empty list, and a disk whose
/// `serial` or `size` cannot be read or parsed is left out.
pub fn scan_sysfs(sys_block: &Path) -> Vec<FoundDevice> {
    let Ok(rd) = fs::read_dir(sys_block) else { return Vec::new() };
    let mut out: Vec<FoundDevice> = rd
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with("vd") {
                return None;
            }
            let raw = fs::read(e.path().join("serial")).ok()?;
            if !pov_proto::layout::is_pov_serial(&raw) {
                return None;
            }
            let serial = String::from_utf8_lossy(&raw).trim_end_matches(['\0', '\n', ' ']).to_string();
            let sectors: u64 = fs::read_to_string(e.path().join("size")).ok()?.trim().parse().ok()?;
            Some(FoundDevice { path: Path::new("/dev").join(&name), serial, capacity: sectors * 512 })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Opens the device named by `spec` with a single libblkio queue (a probe needs no
/// more) and validates its configuration space.
///
/// Errors: as [`Device::open_with`]: [`crate::ErrorKind::Access`] (cannot open or
/// connect), [`crate::ErrorKind::NotPovDevice`] (the configuration space does not
/// validate).
pub fn probe(spec: &DeviceSpec) -> Result<Device> {
    Device::open_with(spec, &DeviceOptions { blkio_queues: 1, ..DeviceOptions::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_scan_finds_pov_serials() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, serial: &[u8], size: &str| {
            let d = dir.path().join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("serial"), serial).unwrap();
            fs::write(d.join("size"), size).unwrap();
        };
        mk("vdb", b"pov-dev0\0\0\0\0", "264192\n");
        mk("vda", b"QM00001", "1000\n");
        mk("sda", b"pov-notvirtio", "8\n");
        mk("vdc", b"pov-x", "16\n");
        let found = scan_sysfs(dir.path());
        assert_eq!(
            found,
            vec![
                FoundDevice { path: "/dev/vdb".into(), serial: "pov-dev0".into(), capacity: 264192 * 512 },
                FoundDevice { path: "/dev/vdc".into(), serial: "pov-x".into(), capacity: 8192 },
            ]
        );
        assert_eq!(found[0].spec(), DeviceSpec::Kernel("/dev/vdb".into()));
        assert!(scan_sysfs(&dir.path().join("none")).is_empty());
    }

    #[test]
    fn probing_a_missing_device_is_an_access_error() {
        let e = probe(&DeviceSpec::Kernel("/nonexistent/vdz".into())).unwrap_err();
        assert_eq!(e.kind(), &crate::ErrorKind::Access);
        let found = FoundDevice { path: "/nonexistent/vdz".into(), serial: "pov-z".into(), capacity: 0 };
        assert_eq!(found.probe().unwrap_err().kind(), &crate::ErrorKind::Access);
    }
}
