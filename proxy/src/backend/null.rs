//! The null backend (`null`): **stores nothing**. For benchmarks of the path in front
//! of the storage (DPU, transport, proxy) without any storage cost.
//!
//! Semantics, for any tenant and path that pass [`super::resolve`]:
//! * Open succeeds (the namespace root gives [`Status::IsDir`]); nothing is created.
//! * Read returns `buf.len()` zero bytes (there is no end of file).
//! * Write drops the data and reports it all written; Append reports offset 0.
//! * Truncate reports the requested size; Stat says "file, mode 0644, size 0, mtime
//!   0" (the root is a directory, mode 0755); List is always empty; Remove, Fsync,
//!   Mkdir, Rename and SetAttr succeed (the root is answered as everywhere); StatFs
//!   reports [`NULL_STATFS`] (1 PiB, all free).
//!
//! * Volumes: open succeeds for any valid name and geometry (returning the asked
//!   size: nothing is kept, so there is no size to mismatch); reads return zeros at
//!   any offset, writes are dropped, flush succeeds.
//!
//! Invalid tenants, paths and volume names are refused like in every other backend.

use super::{check_volume_geometry, check_volume_name, resolve, Backend, Listing};
use pov_proto::entry::{Kind, Stat, StatFs};
use pov_proto::Status;

/// What the null backend's StatFs reports: 2^38 blocks of 4 KiB (1 PiB), all free,
/// no file limit.
pub const NULL_STATFS: StatFs = StatFs {
    block_size: 4096,
    name_max: 255,
    blocks: 1 << 38,
    blocks_free: 1 << 38,
    blocks_available: 1 << 38,
    files: 0,
    files_free: 0,
};

/// A backend that drops writes and reads zeros. See the module documentation.
#[derive(Debug, Default, Clone)]
pub struct NullBackend {}

impl NullBackend {
    /// Creates a null backend.
    pub fn new() -> NullBackend {
        NullBackend {}
    }
}

impl Backend for NullBackend {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn stores_data(&self) -> bool {
        false
    }

    fn channel(&self) -> Box<dyn Backend> {
        Box::new(NullBackend {})
    }

    fn open(&mut self, tenant: &str, path: &str, _flags: u32) -> Result<u64, Status> {
        if resolve(tenant, path)?.is_empty() {
            return Err(Status::IsDir);
        }
        Ok(0)
    }

    fn read(&mut self, tenant: &str, path: &str, _offset: u64, buf: &mut [u8]) -> Result<usize, Status> {
        resolve(tenant, path)?;
        buf.fill(0);
        Ok(buf.len())
    }

    fn write(&mut self, tenant: &str, path: &str, _offset: u64, data: &[u8], _sync: bool) -> Result<usize, Status> {
        resolve(tenant, path)?;
        Ok(data.len())
    }

    fn append(&mut self, tenant: &str, path: &str, _data: &[u8], _sync: bool) -> Result<u64, Status> {
        resolve(tenant, path)?;
        Ok(0)
    }

    fn truncate(&mut self, tenant: &str, path: &str, size: u64) -> Result<u64, Status> {
        resolve(tenant, path)?;
        Ok(size)
    }

    fn stat(&mut self, tenant: &str, path: &str) -> Result<Stat, Status> {
        let (kind, mode) = if resolve(tenant, path)?.is_empty() { (Kind::Dir, 0o755) } else { (Kind::File, 0o644) };
        Ok(Stat { kind, mode, size: 0, mtime_ns: 0 })
    }

    fn list(&mut self, tenant: &str, path: &str, _start: u64, _max_bytes: usize) -> Result<Listing, Status> {
        resolve(tenant, path)?;
        Ok(Listing::default())
    }

    fn remove(&mut self, tenant: &str, path: &str) -> Result<(), Status> {
        if resolve(tenant, path)?.is_empty() {
            return Err(Status::Permission);
        }
        Ok(())
    }

    fn fsync(&mut self, tenant: &str, path: &str) -> Result<(), Status> {
        resolve(tenant, path)?;
        Ok(())
    }

    fn mkdir(&mut self, tenant: &str, path: &str, _mode: Option<u32>, parents: bool) -> Result<(), Status> {
        super::mkdir_root(&resolve(tenant, path)?, parents).unwrap_or(Ok(()))
    }

    fn rename(&mut self, tenant: &str, from: &str, to: &str, _replace: bool, _sync: bool) -> Result<(), Status> {
        super::resolve_rename(tenant, from, to).map(|_| ())
    }

    fn set_attr(&mut self, tenant: &str, path: &str, _mode: Option<u32>, _mtime_ns: Option<u64>) -> Result<(), Status> {
        self.remove(tenant, path)
    }

    fn statfs(&mut self, tenant: &str, path: &str) -> Result<StatFs, Status> {
        resolve(tenant, path)?;
        Ok(NULL_STATFS)
    }

    fn volume_open(&mut self, volume: &str, size: u64, block_size: u32, _create: bool) -> Result<u64, Status> {
        check_volume_geometry(volume, size, block_size)?;
        Ok(size)
    }

    fn volume_read(&mut self, volume: &str, _offset: u64, buf: &mut [u8]) -> Result<usize, Status> {
        check_volume_name(volume)?;
        buf.fill(0);
        Ok(buf.len())
    }

    fn volume_write(&mut self, volume: &str, _offset: u64, data: &[u8], _fua: bool) -> Result<usize, Status> {
        check_volume_name(volume)?;
        Ok(data.len())
    }

    fn volume_flush(&mut self, volume: &str) -> Result<(), Status> {
        check_volume_name(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pov_proto::io::flags;

    // The shared suite: name, permission and geometry checks run, data checks are
    // skipped (stores_data() is false).
    mod conformance {
        crate::backend_conformance_tests!(((), Box::new(super::NullBackend::new()) as Box<dyn crate::backend::Backend>));
    }

    /// The null backend stores nothing: written data never comes back.
    #[test]
    fn stores_nothing() {
        let mut b: Box<dyn Backend> = Box::new(NullBackend::new());
        assert!(!b.stores_data());
        assert_eq!(b.kind(), "null");
        assert_eq!(b.open("t", "f", 0), Ok(0), "open succeeds without CREATE");
        assert_eq!(b.open("t", "f", flags::CREATE | flags::EXCL), Ok(0), "nothing exists, EXCL never fails");
        assert_eq!(b.write("t", "f", 0, b"hello", true), Ok(5));
        let mut buf = [0xffu8; 16];
        assert_eq!(b.read("t", "f", 0, &mut buf), Ok(16), "reads are full length");
        assert_eq!(buf, [0u8; 16], "reads are zeros, not the written data");
        assert_eq!(b.read("t", "f", 1 << 50, &mut buf), Ok(16), "no end of file");
        assert_eq!(b.append("t", "f", b"x", false), Ok(0));
        assert_eq!(b.append("t", "f", b"y", false), Ok(0));
        assert_eq!(b.truncate("t", "f", 77), Ok(77));
        assert_eq!(b.stat("t", "f"), Ok(Stat { kind: Kind::File, mode: 0o644, size: 0, mtime_ns: 0 }));
        assert_eq!(b.mkdir("t", "d", None, false), Ok(()));
        assert_eq!(b.mkdir("t", "d", None, false), Ok(()), "nothing exists, so nothing is in the way");
        assert_eq!(b.rename("t", "f", "g", false, false), Ok(()));
        assert_eq!(b.set_attr("t", "f", Some(0o600), Some(1)), Ok(()));
        assert_eq!(b.stat("t", "f").unwrap().mode, 0o644, "attributes are not kept");
        assert_eq!(b.statfs("t", ""), Ok(NULL_STATFS));
        assert_eq!(b.stat("t", "").unwrap().kind, Kind::Dir);
        assert_eq!(b.list("t", "", 0, 1 << 20), Ok(Listing::default()));
        assert_eq!(b.remove("t", "f"), Ok(()));
        assert_eq!(b.fsync("t", "f"), Ok(()));
        let mut ch = b.channel();
        assert_eq!(ch.read("t", "f", 0, &mut buf[..3]), Ok(3));
    }

    /// Volumes: zeros back, writes dropped, geometry and names still checked.
    #[test]
    fn volumes_store_nothing() {
        let mut b = NullBackend::new();
        assert_eq!(b.volume_open("v", 1 << 20, 512, true), Ok(1 << 20));
        assert_eq!(b.volume_open("v", 4096, 4096, false), Ok(4096), "nothing kept, nothing to mismatch");
        assert_eq!(b.volume_write("v", 0, b"data", true), Ok(4));
        let mut buf = [0xffu8; 8];
        assert_eq!(b.volume_read("v", 0, &mut buf), Ok(8));
        assert_eq!(buf, [0u8; 8]);
        assert_eq!(b.volume_flush("v"), Ok(()));
        assert_eq!(b.volume_open("v", 1000, 512, true), Err(Status::Invalid));
        assert_eq!(b.volume_open("v", 4096, 1000, true), Err(Status::Invalid));
        assert_eq!(b.volume_open("../v", 4096, 512, true), Err(Status::Permission));
        assert_eq!(b.volume_read("@v", 0, &mut buf), Err(Status::Permission));
        assert_eq!(b.volume_flush(""), Err(Status::Permission));
    }

    /// Names are still checked: the null backend is no way around confinement.
    #[test]
    fn still_checks_names() {
        let mut b = NullBackend::new();
        let mut buf = [0u8; 4];
        assert_eq!(b.read("t", "../u/f", 0, &mut buf), Err(Status::Permission));
        assert_eq!(b.write("../u", "f", 0, b"x", false), Err(Status::Permission));
        assert_eq!(b.open("t", "a\0", 0), Err(Status::Invalid));
        assert_eq!(b.open("t", "", 0), Err(Status::IsDir));
        assert_eq!(b.remove("t", "/"), Err(Status::Permission));
        assert_eq!(b.mkdir("t", "/", None, true), Ok(()), "mkdir -p of the root: it exists");
        assert_eq!(b.mkdir("t", "/", None, false), Err(Status::Exists));
        assert_eq!(b.set_attr("t", "", Some(0o777), None), Err(Status::Permission));
        assert_eq!(b.rename("t", "a", "../u/a", true, false), Err(Status::Permission));
        assert_eq!(b.rename("t", "a", "a/b", true, false), Err(Status::Invalid), "into its own subtree");
        assert_eq!(b.statfs("../u", ""), Err(Status::Permission));
    }
}
