//! The keyring: named keys read from key files, in the spirit of SPDK's keyring
//! (`keyring_file_add_key`, `keyring_file_remove_key`, `keyring_get_keys`). Tenants
//! reference a key by name (`pov_tenant_create {"name", "key"}`), so a secret never
//! travels in JSON-RPC parameters, on a command line, or in a saved configuration:
//! only the key file's path does.
//!
//! * `keyring_file_add_key {"name", "path"}` reads the file once, at once: `path` must be
//!   absolute and name a regular file owned by `pov-dpud`'s user and neither readable
//!   nor writable by group or others (mode `0600` or `0400`, as SPDK's `keyring_file`
//!   module demands); the key is the file's bytes less one trailing newline (`\n` or
//!   `\r\n`, the same rule as `pov-host --secret-file`), 1..=255 bytes.
//! * `keyring_file_remove_key {"name"}` forgets a key; refused (-16, EBUSY) while a
//!   tenant uses it.
//! * `keyring_get_keys` lists `[{"name", "path", "tenants"}]`: never a key's bytes.
//!
//! The bytes live in [`Zeroizing`] buffers: wiped when the key is removed or the daemon
//! exits. `save_config` writes a `keyring_file_add_key` call per key (before the
//! tenants that use them), so a replay (`pov-dpud --config`) reads the files again.
//!
//! Errors carry SPDK's codes: -1 (EPERM) for a relative path, a group/world-accessible
//! file or one owned by another user; the OS errno of a failed open (-2 ENOENT, -13
//! EACCES, ...); -22 (EINVAL) for something other than a regular file or a bad size;
//! -17 (EEXIST), -19 (ENODEV), -16 (EBUSY); -32602 for a bad name or parameters.

use crate::daemon::{valid_name, Daemon, DaemonError, NameOpts};
use crate::rpc::{params, Handler, NoOpts, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use zeroize::Zeroizing;

/// Longest key, bytes (a tenant secret: `pov_proto::admin::MAX_SECRET`).
pub const MAX_KEY_BYTES: usize = pov_proto::admin::MAX_SECRET;

/// Longest key file accepted: a key of [`MAX_KEY_BYTES`] plus `\r\n`.
const MAX_KEY_FILE_BYTES: usize = MAX_KEY_BYTES + 2;

/// SPDK's error codes of the keyring methods (negative errnos).
pub mod codes {
    /// Operation not permitted: relative path, bad mode or owner.
    pub const EPERM: i32 = -1;
    /// Invalid argument: not a regular file, bad size.
    pub const EINVAL: i32 = -22;
    /// The key is in use by a tenant.
    pub const EBUSY: i32 = -16;
}

/// Parameters of `keyring_file_add_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileOpts {
    /// Key name: 1-63 characters of `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// Absolute path of the key file.
    pub path: PathBuf,
}

/// One key as `keyring_get_keys` shows it (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Key name.
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// Tenants that use it, sorted.
    pub tenants: Vec<String>,
}

/// Why a keyring operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The name is not 1-63 characters of `A-Z a-z 0-9 _ . -`.
    #[error("invalid key name {0:?}: use 1-63 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    /// The path is relative.
    #[error("key file path {0:?} is not absolute")]
    RelativePath(PathBuf),
    /// The file could not be opened or examined.
    #[error("cannot open key file {path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path names a directory, a FIFO, a device...
    #[error("key file {0:?} is not a regular file")]
    NotRegular(PathBuf),
    /// The group or others may access the file.
    #[error("key file {path:?} has mode {mode:04o}: a key file must not be accessible to group or others (chmod 600 it)")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another user owns the file.
    #[error("key file {path:?} is owned by uid {owner}, not by pov-dpud's user (uid {me})")]
    Owner {
        /// The file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The daemon's effective user.
        me: u32,
    },
    /// The key is empty or too long.
    #[error("key file {path:?} holds {len} bytes: a key is 1-255 bytes (one trailing newline not counted)")]
    Size {
        /// The file.
        path: PathBuf,
        /// Bytes of key found (at most the first 258 bytes are read).
        len: u64,
    },
    /// A key of that name exists.
    #[error("key {0:?} already exists")]
    Exists(String),
    /// No key of that name.
    #[error("no such key: {0:?}")]
    NotFound(String),
    /// Tenants use the key.
    #[error("key {name:?} is in use by tenant(s) {}: delete them first", tenants.join(", "))]
    InUse {
        /// The key.
        name: String,
        /// The tenants that use it.
        tenants: Vec<String>,
    },
}

impl KeyringError {
    /// The JSON-RPC error code (SPDK's, see the module docs).
    pub fn code(&self) -> i32 {
        match self {
            KeyringError::BadName(_) => crate::rpc::codes::INVALID_PARAMS,
            KeyringError::RelativePath(_) | KeyringError::Permissions { .. } | KeyringError::Owner { .. } => codes::EPERM,
            KeyringError::Open { source, .. } => source.raw_os_error().map_or(crate::rpc::codes::INTERNAL_ERROR, |e| -e),
            KeyringError::NotRegular(_) | KeyringError::Size { .. } => codes::EINVAL,
            KeyringError::Exists(_) => crate::rpc::codes::EEXIST,
            KeyringError::NotFound(_) => crate::rpc::codes::ENODEV,
            KeyringError::InUse { .. } => codes::EBUSY,
        }
    }
}

impl From<KeyringError> for RpcError {
    fn from(e: KeyringError) -> RpcError {
        RpcError::new(e.code(), pov_proto::ErrorChain(&e).to_string())
    }
}

impl From<KeyringError> for DaemonError {
    fn from(e: KeyringError) -> DaemonError {
        match e {
            KeyringError::Exists(name) => DaemonError::Exists { kind: "key", name },
            KeyringError::NotFound(name) => DaemonError::NotFound { kind: "key", name },
            other => DaemonError::Invalid(pov_proto::ErrorChain(&other).to_string()),
        }
    }
}

/// One key: where it came from, its bytes, who uses it.
struct Key {
    path: PathBuf,
    bytes: Zeroizing<Vec<u8>>,
    tenants: BTreeSet<String>,
}

/// The daemon's keys, by name. Safe to share between threads.
#[derive(Default)]
pub struct Keyring {
    keys: Mutex<BTreeMap<String, Key>>,
}

/// Shows the key names and paths only, never a key's bytes.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}

impl Keyring {
    fn keys(&self) -> MutexGuard<'_, BTreeMap<String, Key>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the key file `path` (see the module docs for the checks) and adds it as
    /// key `name`.
    ///
    /// # Errors
    /// [`KeyringError::BadName`], [`KeyringError::Exists`], or why the file was refused.
    pub fn add_file(&self, name: &str, path: &Path) -> Result<(), KeyringError> {
        if !valid_name(name, 63) {
            return Err(KeyringError::BadName(name.to_string()));
        }
        if self.keys().contains_key(name) {
            return Err(KeyringError::Exists(name.to_string()));
        }
        let bytes = read_key_file(path)?;
        let mut keys = self.keys();
        if keys.contains_key(name) {
            return Err(KeyringError::Exists(name.to_string()));
        }
        keys.insert(name.to_string(), Key { path: path.to_path_buf(), bytes, tenants: BTreeSet::new() });
        Ok(())
    }

    /// Removes key `name` (its bytes are wiped).
    ///
    /// # Errors
    /// [`KeyringError::NotFound`]; [`KeyringError::InUse`] while a tenant uses it.
    pub fn remove(&self, name: &str) -> Result<(), KeyringError> {
        let mut keys = self.keys();
        let key = keys.get(name).ok_or_else(|| KeyringError::NotFound(name.to_string()))?;
        if !key.tenants.is_empty() {
            return Err(KeyringError::InUse { name: name.to_string(), tenants: key.tenants.iter().cloned().collect() });
        }
        keys.remove(name);
        Ok(())
    }

    /// Every key, by name (no bytes).
    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys()
            .iter()
            .map(|(name, k)| KeyInfo { name: name.clone(), path: k.path.clone(), tenants: k.tenants.iter().cloned().collect() })
            .collect()
    }

    /// Calls `f` with the bytes of key `name` and, if it succeeds, records `tenant` as a
    /// user of the key (so the key cannot be removed under it). The keyring stays
    /// locked during `f`.
    ///
    /// # Errors
    /// [`KeyringError::NotFound`] (converted), or `f`'s error.
    pub fn use_key<E: From<KeyringError>>(
        &self,
        name: &str,
        tenant: &str,
        f: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut keys = self.keys();
        let key = keys.get_mut(name).ok_or_else(|| KeyringError::NotFound(name.to_string()))?;
        f(&key.bytes)?;
        key.tenants.insert(tenant.to_string());
        Ok(())
    }

    /// Calls `f` (which deletes `tenant`) and, if it succeeds, forgets that `tenant`
    /// uses a key. The keyring stays locked during `f`, so a tenant of the same name
    /// created meanwhile keeps its mark on its key.
    ///
    /// # Errors
    /// `f`'s error (nothing is forgotten then).
    pub fn release<E>(&self, tenant: &str, f: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut keys = self.keys();
        f()?;
        for k in keys.values_mut() {
            k.tenants.remove(tenant);
        }
        Ok(())
    }

    /// The key `tenant` was created with.
    pub fn key_of(&self, tenant: &str) -> Option<String> {
        self.keys().iter().find(|(_, k)| k.tenants.contains(tenant)).map(|(n, _)| n.clone())
    }
}

/// Reads a key file with SPDK's checks (absolute path, regular file, owner, mode) and
/// PoV's size rule; the bytes never pass through an unwiped buffer.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    if !path.is_absolute() {
        return Err(KeyringError::RelativePath(path.to_path_buf()));
    }
    let open_err = |source| KeyringError::Open { path: path.to_path_buf(), source };
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(open_err)?;
    // fstat of the file opened, so the checks and the read see the same file.
    let meta = file.metadata().map_err(open_err)?;
    if !meta.file_type().is_file() {
        return Err(KeyringError::NotRegular(path.to_path_buf()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyringError::Permissions { path: path.to_path_buf(), mode });
    }
    let me = crate::sys::effective_uid();
    if meta.uid() != me {
        return Err(KeyringError::Owner { path: path.to_path_buf(), owner: meta.uid(), me });
    }
    let size_err = |len: u64| KeyringError::Size { path: path.to_path_buf(), len };
    if meta.len() == 0 || meta.len() > MAX_KEY_FILE_BYTES as u64 {
        return Err(size_err(meta.len()));
    }
    // One byte more than the largest file, to see a file that grew since fstat.
    let mut buf = Zeroizing::new([0u8; MAX_KEY_FILE_BYTES + 1]);
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(got) => n += got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(open_err(e)),
        }
    }
    let mut key = &buf[..n];
    if let Some(k) = key.strip_suffix(b"\n") {
        key = k.strip_suffix(b"\r").unwrap_or(k);
    }
    if key.is_empty() || key.len() > MAX_KEY_BYTES || n > MAX_KEY_FILE_BYTES {
        return Err(size_err(key.len() as u64));
    }
    Ok(Zeroizing::new(key.to_vec()))
}

/// The keyring methods.
pub const METHODS: &[(&str, Handler)] = &[
    ("keyring_file_add_key", keyring_file_add_key),
    ("keyring_file_remove_key", keyring_file_remove_key),
    ("keyring_get_keys", keyring_get_keys),
];

/// The `keyring_file_add_key` calls that recreate `keyring` (paths, never bytes).
pub(crate) fn save_config(keyring: &Keyring) -> Vec<Value> {
    keyring
        .list()
        .into_iter()
        .map(|k| json!({ "method": "keyring_file_add_key", "params": KeyFileOpts { name: k.name, path: k.path } }))
        .collect()
}

fn keyring_file_add_key(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: KeyFileOpts = params(p)?;
    d.keyring().add_file(&o.name, &o.path)?;
    log::info!("key {} added from {}", o.name, o.path.display());
    Ok(json!(true))
}

fn keyring_file_remove_key(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: NameOpts = params(p)?;
    d.keyring().remove(&o.name)?;
    log::info!("key {} removed", o.name);
    Ok(json!(true))
}

fn keyring_get_keys(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    serde_json::to_value(d.keyring().list()).map_err(|e| RpcError::new(crate::rpc::codes::INTERNAL_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn reads_checks_and_wipes() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::default();
        let good = key_file(dir.path(), "good", b"hunter2\n", 0o600);
        k.add_file("k1", &good).unwrap();
        assert!(matches!(k.add_file("k1", &good), Err(KeyringError::Exists(_))));
        let crlf = key_file(dir.path(), "crlf", b"x\r\n", 0o400);
        k.add_file("k2", &crlf).unwrap();
        let mut seen = Vec::new();
        k.use_key::<KeyringError>("k1", "acme", |b| {
            seen = b.to_vec();
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, b"hunter2");
        k.use_key::<KeyringError>("k2", "t2", |b| {
            assert_eq!(b, b"x");
            Ok(())
        })
        .unwrap();
        assert_eq!(k.key_of("acme").as_deref(), Some("k1"));
        // Listing and Debug show names and paths, never the bytes.
        let shown = format!("{:?} {}", k, serde_json::to_string(&k.list()).unwrap());
        assert!(shown.contains("good") && !shown.contains("hunter2"), "{shown}");
        assert!(matches!(k.remove("k1"), Err(KeyringError::InUse { .. })));
        assert!(k.release("acme", || Err::<(), _>("no such tenant")).is_err());
        assert!(matches!(k.remove("k1"), Err(KeyringError::InUse { .. })), "a failed delete keeps the mark");
        k.release::<KeyringError>("acme", || Ok(())).unwrap();
        k.remove("k1").unwrap();
        assert!(matches!(k.remove("k1"), Err(KeyringError::NotFound(_))));
        assert_eq!(k.list().len(), 1);

        let world = key_file(dir.path(), "world", b"pw", 0o644);
        let e = k.add_file("w", &world).unwrap_err();
        assert_eq!(e.code(), codes::EPERM);
        assert!(e.to_string().contains("0644") && e.to_string().contains("chmod 600"), "{e}");
        let group = key_file(dir.path(), "group", b"pw", 0o640);
        assert!(matches!(k.add_file("g", &group), Err(KeyringError::Permissions { mode: 0o640, .. })));
        assert!(matches!(k.add_file("r", Path::new("rel/key")), Err(KeyringError::RelativePath(_))));
        let e = k.add_file("m", &dir.path().join("missing")).unwrap_err();
        assert_eq!(e.code(), -2, "{e}");
        assert!(RpcError::from(e).message.contains("No such file"));
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(k.add_file("d", &sub), Err(KeyringError::NotRegular(_))));
        for (bytes, why) in [(&b""[..], "empty"), (&b"\n"[..], "newline only"), (&[b'a'; 256][..], "256 bytes")] {
            let f = key_file(dir.path(), "size", bytes, 0o600);
            assert!(matches!(k.add_file("s", &f), Err(KeyringError::Size { .. })), "{why}");
        }
        let max = key_file(dir.path(), "max", &[b'a'; 255], 0o600);
        k.add_file("max", &max).unwrap();
        assert!(matches!(k.add_file("bad/name", &good), Err(KeyringError::BadName(_))));
        assert_eq!(k.list().iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["k2", "max"]);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg("-m").arg("600").arg(&p).status().unwrap().success());
        assert!(matches!(Keyring::default().add_file("f", &p), Err(KeyringError::NotRegular(_))));
    }
}
