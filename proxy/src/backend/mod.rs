//! The storage seam: where the proxy keeps tenants' files.
//!
//! A [`Backend`] serves file operations inside per-tenant namespaces. Every method
//! takes the tenant name and a path inside that tenant's namespace (`/`-separated, the
//! namespace root is `""`), re-checks both (see [`resolve`]) and answers with a
//! [`Status`] on failure. A tenant can never name another tenant's files: a path with
//! a `..` component is refused with [`Status::Permission`] whatever the backend.
//!
//! Implementations, chosen by a spec string ([`BackendSpec`]):
//! * [`local`] (`local:DIR`): files under `DIR/<tenant>/<path>`, resolved without ever
//!   following a symbolic link.
//! * [`null`] (`null`): stores nothing (reads return zeros); for benchmarks.
//! * `ceph` (`ceph` or `ceph:KEY=VALUE,...`): files in CephFS through libcephfs; only
//!   with the cargo feature `ceph` (on by default). Without it, a `ceph` spec is
//!   refused with an error saying so.
//!
//! Every storing backend passes the same test body, `conformance` (built for this
//! crate's tests and with the cargo feature `testing`).
//!
//! # Plain volumes
//! Besides tenants' files, a backend stores **volumes**: flat byte arrays of a fixed
//! size that back the plain virtio-blk disks of `pov-dpud` (`pov_volume_create`).
//! Volumes live in a namespace of their own, separate from tenants' files (a volume
//! and a tenant may share a name); a volume name follows the tenant-name rules
//! ([`pov_proto::path::valid_tenant_name`], else [`Status::Permission`]). The local
//! backend keeps volume `V` in the file `DIR/@volumes/V` (`@` is never a valid
//! tenant name, so no tenant can reach it); the null backend stores nothing.
//!
//! # Threads and channels
//! A backend value is used by one thread at a time (`&mut self`, `Send`). Each reactor
//! connection gets its own [`Backend::channel`], a handle onto the same store (like an
//! SPDK IO channel); channels may run concurrently on different threads.
//!
//! # Blocking backends: worker pools
//! The methods here complete synchronously. That suits local files, whose calls
//! return in microseconds, but not a networked store whose calls block for a round
//! trip (or, during an outage, until a timeout). Such a backend returns a non-zero
//! [`Backend::workers`]: the server then never calls it on a reactor, but submits
//! requests to a bounded pool of that many threads, each with its own channel
//! ([`crate::offload`]), reaps their completions through an eventfd the connection
//! poller watches (so the reactor still sleeps when idle), and answers a request
//! that outlives [`Backend::op_timeout`] with [`Status::Timeout`]. Requests of one
//! connection may then complete out of order (responses carry the request's tag).
//! The conformance suite runs against the synchronous methods of every backend.

#[cfg(feature = "ceph")]
pub mod ceph;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod local;
pub mod null;

use pov_proto::entry::{DirEntry, Stat, StatFs};
use pov_proto::Status;

/// One page of a directory listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Entries, sorted by name (byte order), starting at the requested index.
    pub entries: Vec<DirEntry>,
    /// `true` if entries remain after the last one returned.
    pub more: bool,
}

impl Listing {
    /// Appends `entry` if the encoded records still fit in `max_bytes`; `used` counts
    /// the encoded bytes already in the page and is updated. When the entry does not
    /// fit, sets [`Listing::more`] and returns `false` (the page is full).
    pub fn push_within(&mut self, entry: DirEntry, used: &mut usize, max_bytes: usize) -> bool {
        let len = entry.encoded_len();
        if *used + len > max_bytes {
            self.more = true;
            return false;
        }
        *used += len;
        self.entries.push(entry);
        true
    }
}

/// File operations inside per-tenant namespaces.
///
/// Arguments shared by every method: `tenant` must pass
/// [`pov_proto::path::valid_tenant_name`] (else [`Status::Permission`]); `path` is
/// re-normalized with [`pov_proto::path::normalize`] (a `..` component gives
/// [`Status::Permission`], a NUL byte [`Status::Invalid`], an over-long name
/// [`Status::NameTooLong`]). Offsets and sizes are bytes. Errors from the storage are
/// mapped with [`Status::from_io_error`]; the usual ones are listed per method.
pub trait Backend: Send {
    /// Short name of the implementation (`"local"`, `"null"`).
    fn kind(&self) -> &'static str;

    /// `false` for backends that drop data (the null backend).
    fn stores_data(&self) -> bool {
        true
    }

    /// A new handle onto the same store, for another thread or reactor.
    fn channel(&self) -> Box<dyn Backend>;

    /// Operations to keep in flight on worker threads; `0` (the default) means the
    /// methods are fast enough to run on a reactor. See the module docs.
    fn workers(&self) -> usize {
        0
    }

    /// Deadline of one operation run by a worker pool, after which the host gets
    /// [`Status::Timeout`]; `None` (the default) waits for the backend.
    fn op_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Checks that the file can be opened, creating it when `flags` holds
    /// [`pov_proto::io::flags::CREATE`] (missing parent directories are created too).
    /// Other flags: `EXCL` (with `CREATE`: [`Status::Exists`] if the file exists),
    /// `TRUNCATE` (set the size to 0), `WRITE` (the file must be writable).
    ///
    /// Errors: [`Status::NotFound`] (missing, no `CREATE`), [`Status::IsDir`] (a
    /// directory, including the namespace root), [`Status::NotDir`] (a parent is a
    /// file).
    ///
    /// Returns the file's **location key** for routing (`pov_proto::route`): its
    /// inode number — for CephFS the number its data objects are named after — or 0
    /// if the backend has none.
    fn open(&mut self, tenant: &str, path: &str, flags: u32) -> Result<u64, Status>;

    /// Reads up to `buf.len()` bytes at `offset` into `buf`; returns the number read
    /// (short at end of file, 0 past it).
    ///
    /// Errors: [`Status::NotFound`], [`Status::IsDir`], [`Status::Invalid`] (offset
    /// beyond `i64::MAX`).
    fn read(&mut self, tenant: &str, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Status>;

    /// Writes `data` at `offset` in an existing file (a gap reads as zeros); returns
    /// the bytes written (`data.len()`). With `sync`, the data is durable (fdatasync)
    /// before the call returns.
    ///
    /// Errors: [`Status::NotFound`], [`Status::IsDir`], [`Status::NoSpace`],
    /// [`Status::TooLarge`] (past the largest file size).
    fn write(&mut self, tenant: &str, path: &str, offset: u64, data: &[u8], sync: bool) -> Result<usize, Status>;

    /// Appends `data` at the end of an existing file, atomically with respect to other
    /// appends to the same file through any channel of this backend; returns the
    /// offset (bytes) the data landed at.
    ///
    /// Errors: as [`Backend::write`].
    fn append(&mut self, tenant: &str, path: &str, data: &[u8], sync: bool) -> Result<u64, Status>;

    /// Sets the size of an existing file to `size` bytes (growing fills with zeros);
    /// returns the new size.
    ///
    /// Errors: [`Status::NotFound`], [`Status::IsDir`], [`Status::Invalid`].
    fn truncate(&mut self, tenant: &str, path: &str, size: u64) -> Result<u64, Status>;

    /// Attributes of a file or directory (the root `""` is always a directory).
    ///
    /// Errors: [`Status::NotFound`].
    fn stat(&mut self, tenant: &str, path: &str) -> Result<Stat, Status>;

    /// Lists the directory `path` from entry index `start` (0-based, in name order),
    /// returning as many entries as fit in `max_bytes` of encoded
    /// [`DirEntry`] records. The root of a tenant that has no files yet is empty.
    ///
    /// Errors: [`Status::NotFound`], [`Status::NotDir`].
    fn list(&mut self, tenant: &str, path: &str, start: u64, max_bytes: usize) -> Result<Listing, Status>;

    /// Removes a file or an empty directory.
    ///
    /// Errors: [`Status::NotFound`], [`Status::NotEmpty`], [`Status::Permission`]
    /// (the namespace root).
    fn remove(&mut self, tenant: &str, path: &str) -> Result<(), Status>;

    /// Makes the file's data and its directory entry durable.
    ///
    /// Errors: [`Status::NotFound`].
    fn fsync(&mut self, tenant: &str, path: &str) -> Result<(), Status>;

    /// Creates the directory `path` with permission bits `mode` (masked with
    /// [`pov_proto::entry::MODE_MASK`]; `None`: the backend's default). With
    /// `parents`, missing parents are created too and an existing directory is no
    /// error (`mkdir -p`).
    ///
    /// Errors: [`Status::Exists`] (an entry at `path`: without `parents` any, with it
    /// a file; the root, which always exists, without `parents`),
    /// [`Status::NotFound`] (a missing parent, without `parents`), [`Status::NotDir`]
    /// (a parent is a file).
    fn mkdir(&mut self, tenant: &str, path: &str, mode: Option<u32>, parents: bool) -> Result<(), Status>;

    /// Renames `from` to `to` in one step: at no time is `to` missing if it existed
    /// before, and never does a reader see a partly renamed tree. An existing `to` is
    /// replaced when `replace` is set (a file by a file, a directory by an empty
    /// directory), else the call fails with [`Status::Exists`]. With `sync`, the
    /// rename is durable on the backend's storage before the call returns (both
    /// parent directories synced). Both paths are re-normalized like every other.
    ///
    /// Errors: [`Status::NotFound`] (`from`, or `to`'s parent, missing),
    /// [`Status::IsDir`] (a file onto a directory), [`Status::NotDir`] (a directory
    /// onto a file, or a parent is a file), [`Status::NotEmpty`],
    /// [`Status::Invalid`] (a directory into its own subtree), [`Status::Permission`]
    /// (the root, or anything that is not a file or directory).
    fn rename(&mut self, tenant: &str, from: &str, to: &str, replace: bool, sync: bool) -> Result<(), Status>;

    /// Sets the permission bits (masked with [`pov_proto::entry::MODE_MASK`]) and/or
    /// the modification time (ns since the Unix epoch) of the file or directory at
    /// `path`; `None` leaves an attribute as it is.
    ///
    /// Errors: [`Status::NotFound`], [`Status::Permission`] (the namespace root,
    /// whose attributes belong to the proxy).
    fn set_attr(&mut self, tenant: &str, path: &str, mode: Option<u32>, mtime_ns: Option<u64>) -> Result<(), Status>;

    /// Capacity of the storage that holds `path` (the namespace root may not exist
    /// yet: the storage's figures are still given).
    ///
    /// Errors: [`Status::Io`].
    fn statfs(&mut self, tenant: &str, path: &str) -> Result<StatFs, Status>;

    /// Opens the volume `volume`, creating it (zero-filled) with `size` bytes when it
    /// does not exist and `create` is set; returns its size in bytes. `block_size`
    /// (bytes) is the volume's block size: a power of two from 512 to 65536 that
    /// divides `size`.
    ///
    /// Errors: [`Status::NotFound`] (missing, `create` not set), [`Status::Invalid`]
    /// (an existing volume of another size — never a silent resize —, `size` 0 or not
    /// a multiple of `block_size`, a bad `block_size`), [`Status::Permission`] (bad
    /// name), [`Status::NoSpace`].
    fn volume_open(&mut self, volume: &str, size: u64, block_size: u32, create: bool) -> Result<u64, Status>;

    /// Reads `buf.len()` bytes at byte `offset` of an existing volume; returns
    /// `buf.len()` (a volume has no short reads; never-written ranges read as zeros).
    ///
    /// Errors: [`Status::NotFound`], [`Status::Invalid`] (the range goes past the
    /// end of the volume), [`Status::Permission`] (bad name), [`Status::Io`].
    fn volume_read(&mut self, volume: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Status>;

    /// Writes `data` at byte `offset` of an existing volume; returns `data.len()`.
    /// With `fua` (forced unit access) the data is durable on the backend's storage
    /// before the call returns.
    ///
    /// Errors: as [`Backend::volume_read`], plus [`Status::NoSpace`].
    fn volume_write(&mut self, volume: &str, offset: u64, data: &[u8], fua: bool) -> Result<usize, Status>;

    /// Makes every write to `volume` that returned before this call — through any
    /// channel of this backend — durable on the backend's storage.
    ///
    /// Errors: [`Status::NotFound`], [`Status::Permission`] (bad name), [`Status::Io`].
    fn volume_flush(&mut self, volume: &str) -> Result<(), Status>;
}

/// Checks the arguments of [`Backend::volume_open`] that do not depend on storage:
/// the name (else [`Status::Permission`]), `block_size` (a power of two, 512..=65536)
/// and `size` (non-zero multiple of `block_size`, at most `i64::MAX`), else
/// [`Status::Invalid`].
pub fn check_volume_geometry(volume: &str, size: u64, block_size: u32) -> Result<(), Status> {
    check_volume_name(volume)?;
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(Status::Invalid);
    }
    if size == 0 || size.checked_rem(block_size as u64) != Some(0) || size > i64::MAX as u64 {
        return Err(Status::Invalid);
    }
    Ok(())
}

/// Checks a volume name (tenant-name rules): [`Status::Permission`] if it is not valid.
pub fn check_volume_name(volume: &str) -> Result<(), Status> {
    if pov_proto::path::valid_tenant_name(volume) {
        Ok(())
    } else {
        Err(Status::Permission)
    }
}

/// Checks that `len` bytes at `offset` lie inside a volume of `size` bytes, else
/// [`Status::Invalid`].
pub fn check_volume_range(offset: u64, len: usize, size: u64) -> Result<(), Status> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Status::Invalid),
    }
}

/// How [`Backend::mkdir`] answers for the namespace root (normalized path `""`):
/// `Some(Ok)` with `parents` (`mkdir -p /`), `Some(Err(Exists))` without; `None` for
/// any other path (the backend goes on).
pub fn mkdir_root(path: &str, parents: bool) -> Option<Result<(), Status>> {
    match (path.is_empty(), parents) {
        (false, _) => None,
        (true, true) => Some(Ok(())),
        (true, false) => Some(Err(Status::Exists)),
    }
}

/// Checks the paths of [`Backend::rename`] that do not depend on storage: neither may
/// be the root ([`Status::Permission`]) and a directory cannot move into its own
/// subtree ([`Status::Invalid`]; checked on names, so it holds for files too, whose
/// "subtree" cannot exist anyway). Returns the normalized `(from, to)`.
pub fn resolve_rename(tenant: &str, from: &str, to: &str) -> Result<(String, String), Status> {
    let (from, to) = (resolve(tenant, from)?, resolve(tenant, to)?);
    if from.is_empty() || to.is_empty() {
        return Err(Status::Permission);
    }
    if to != from && pov_proto::path::is_within(&to, &from) {
        return Err(Status::Invalid);
    }
    Ok((from, to))
}

/// Checks a tenant name and re-normalizes a path, as every backend must before
/// touching storage. Returns the normalized path (`""` for the namespace root).
///
/// Errors: [`Status::Permission`] for an invalid tenant name or a path leaving the
/// namespace; [`Status::Invalid`] / [`Status::NameTooLong`] for malformed paths.
pub fn resolve(tenant: &str, path: &str) -> Result<String, Status> {
    if !pov_proto::path::valid_tenant_name(tenant) {
        return Err(Status::Permission);
    }
    pov_proto::path::normalize(path.as_bytes())
}

/// Runs a Ceph monitor command (its JSON) and returns its output ([`BackendSpec::monitor`]).
pub type MonCommand = Box<dyn Fn(&str) -> Result<Vec<u8>, String> + Send>;

/// A parsed backend spec string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// `local:DIR`: files under `DIR` (created if missing).
    Local(std::path::PathBuf),
    /// `null`: stores nothing.
    Null,
    /// `ceph` or `ceph:KEY=VALUE,...`: files in CephFS (cargo feature `ceph`).
    #[cfg(feature = "ceph")]
    Ceph(ceph::CephConfig),
}

/// Why a build without the cargo feature `ceph` refuses every `ceph` spec (the `why`
/// of its [`crate::Error::BadBackendSpec`]).
pub const NO_CEPH: &str = "this pov-proxy was built without Ceph support (cargo feature `ceph`)";

impl BackendSpec {
    /// Parses `local:DIR`, `null`, `ceph` or `ceph:KEY=VALUE,...` (keys in
    /// `ceph::CephConfig::parse`).
    ///
    /// Errors: [`crate::Error::BadBackendSpec`] for anything else (an empty `DIR`
    /// included), and for any `ceph` spec when built without the `ceph` feature.
    pub fn parse(spec: &str) -> Result<BackendSpec, crate::Error> {
        let bad = |why: &str| crate::Error::BadBackendSpec { spec: spec.to_string(), why: why.to_string() };
        match spec.split_once(':') {
            None if spec == "null" => Ok(BackendSpec::Null),
            Some(("local", dir)) if !dir.is_empty() => Ok(BackendSpec::Local(dir.into())),
            Some(("local", _)) => Err(bad("local needs a directory: local:DIR")),
            #[cfg(feature = "ceph")]
            None if spec == "ceph" => Ok(BackendSpec::Ceph(ceph::CephConfig::default())),
            #[cfg(feature = "ceph")]
            Some(("ceph", opts)) => ceph::CephConfig::parse(opts).map(BackendSpec::Ceph).map_err(|w| bad(&w)),
            #[cfg(not(feature = "ceph"))]
            _ if spec == "ceph" || spec.starts_with("ceph:") => Err(bad(NO_CEPH)),
            _ => Err(bad("expected local:DIR, null or ceph[:KEY=VALUE,...]")),
        }
    }

    /// For the Ceph backend, a monitor-command runner (the route controller's view of
    /// the OSD map, `crate::cluster`); `None` for the others.
    ///
    /// Errors: the RADOS connection cannot be made.
    pub fn monitor(&self) -> Option<Result<MonCommand, String>> {
        match self {
            #[cfg(feature = "ceph")]
            BackendSpec::Ceph(c) => Some(ceph::CephBackend::monitor(c)),
            _ => None,
        }
    }

    /// Opens the backend (for `local`, creates the directory if missing).
    ///
    /// Errors: [`crate::Error::BackendSetup`] if the directory cannot be created or
    /// opened; [`crate::Error::CephSetup`] if the Ceph cluster cannot be reached.
    pub fn open(&self) -> Result<Box<dyn Backend>, crate::Error> {
        match self {
            BackendSpec::Local(dir) => Ok(Box::new(local::LocalBackend::open(dir)?)),
            BackendSpec::Null => Ok(Box::new(null::NullBackend::new())),
            #[cfg(feature = "ceph")]
            BackendSpec::Ceph(c) => Ok(Box::new(ceph::CephBackend::open(c)?)),
        }
    }
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendSpec::Local(d) => write!(f, "local:{}", d.display()),
            BackendSpec::Null => f.write_str("null"),
            #[cfg(feature = "ceph")]
            BackendSpec::Ceph(c) => c.fmt(f),
        }
    }
}

impl std::str::FromStr for BackendSpec {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(BackendSpec::parse("null").unwrap(), BackendSpec::Null);
        assert_eq!(BackendSpec::parse("local:/tmp/x").unwrap(), BackendSpec::Local("/tmp/x".into()));
        assert_eq!(BackendSpec::parse("local:rel/dir").unwrap().to_string(), "local:rel/dir");
        #[cfg(feature = "ceph")]
        {
            assert!(matches!(BackendSpec::parse("ceph").unwrap(), BackendSpec::Ceph(_)));
            let c = BackendSpec::parse("ceph:conf=/c,workers=2").unwrap();
            assert_eq!(BackendSpec::parse(&c.to_string()).unwrap(), c, "Display round-trips");
        }
        #[cfg(not(feature = "ceph"))]
        for spec in ["ceph", "ceph:", "ceph:conf=/c,workers=2"] {
            let e = BackendSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(NO_CEPH), "{spec}: {e}");
        }
        for bad in ["", "local", "local:", "nul", "ceph:pool", "ceph:pool=x", "s3:x"] {
            assert!(BackendSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_checks_tenant_and_path() {
        assert_eq!(resolve("t", "/a//b/").unwrap(), "a/b");
        assert_eq!(resolve("t", "").unwrap(), "");
        assert_eq!(resolve("../t", "a"), Err(Status::Permission));
        assert_eq!(resolve("", "a"), Err(Status::Permission));
        assert_eq!(resolve("t", "a/../../u/x"), Err(Status::Permission));
        assert_eq!(resolve("t", "a\0"), Err(Status::Invalid));
    }

    #[test]
    fn open_creates_local_dir() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("new/nested");
        let b = BackendSpec::Local(dir.clone()).open().unwrap();
        assert_eq!(b.kind(), "local");
        assert!(dir.is_dir());
        assert!(!BackendSpec::Null.open().unwrap().stores_data());
    }
}
