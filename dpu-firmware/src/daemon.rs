//! The daemon's library API: tenants, PoV devices and plain volumes (SPDK's "module"
//! side; the JSON-RPC layer in [`crate::rpc`] only decodes parameters and calls these
//! functions).
//!
//! Each device or volume is created on a reactor chosen round-robin (or given), exposed
//! on its own vhost-user-blk socket by a [`VhostBlkServer`], and can write itself out as
//! the `pov_device_create` / `pov_volume_create` call that recreates it
//! ([`Daemon::save_config`]). Devices and volumes share one name space and never share
//! a socket.

use crate::blockdev::BlockDevice;
use crate::gathering::GatheringControl;
use crate::vhost_blk::{VhostBlkError, VhostBlkOptions, VhostBlkServer, DEFAULT_NUM_QUEUES, DEFAULT_QUEUE_SIZE};
use bdev_pov::tenant::TenantError;
use bdev_pov::volume::{open_volume, NullVolume, VolumeConfig, VolumeDevice, VolumeError, DEFAULT_VOLUME_TIMEOUT_MS};
use bdev_pov::{Gathering, PovDevice, PovDeviceConfig, TenantTable};
use pov_runtime::ReactorHandle;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds the device behind a `pov_device_create` call. Runs on the device's reactor.
/// The error is a human-readable reason (reported as invalid parameters).
pub type DeviceFactory = Arc<dyn Fn(&PovDeviceConfig, &TenantTable) -> Result<Box<dyn BlockDevice>, String> + Send + Sync>;

/// The production factory: a [`PovDevice`].
pub fn pov_device_factory() -> DeviceFactory {
    Arc::new(|cfg, tenants| {
        PovDevice::new(cfg.clone(), tenants.clone()).map(|d| Box::new(d) as Box<dyn BlockDevice>).map_err(|e| e.to_string())
    })
}

/// Parameters of `pov_set_gathering`: every field is optional and keeps its current
/// value when absent (defaults: enabled, 64 frames, no window; see
/// [`bdev_pov::Gathering`] for the ranges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatheringOpts {
    /// Gathering on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Most proxy requests in one send, 1..=4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Longest wait of a queued request for company while others are in flight, µs,
    /// 0..=10000 (0: send at every poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_us: Option<u32>,
}

/// Parameters of `pov_tenant_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCreateOpts {
    /// Tenant name: 1-63 characters of `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// Shared secret the tenant's applications authenticate with (1-255 bytes).
    pub secret: String,
}

/// Parameters of the calls that only name an object (`pov_tenant_delete`,
/// `pov_device_delete`, `pov_volume_delete`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameOpts {
    /// The object's name.
    pub name: String,
}

/// Parameters of `pov_device_create`. Optional fields take [`PovDeviceConfig`]'s
/// defaults (and [`DEFAULT_NUM_QUEUES`] virtqueues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCreateOpts {
    /// Device name: 1-31 characters of `A-Z a-z 0-9 _ . -`; the virtio-blk serial is
    /// `pov-<name>`.
    pub name: String,
    /// Path of the vhost-user-blk socket to create.
    pub socket: PathBuf,
    /// Proxy endpoints, `tcp:HOST:PORT`.
    pub proxies: Vec<String>,
    /// PoV queues one session may create (1..=64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u32>,
    /// Sessions open at once (1..=4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Heartbeat interval hosts are told to use, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u32>,
    /// A session without heartbeat for this long is reclaimed, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u32>,
    /// A forwarded request without a proxy answer for this long fails, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u32>,
    /// virtio-blk queues offered to each client (1..=64, default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtqueues: Option<u16>,
    /// Index of the reactor that runs the device (default: round-robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactor: Option<u32>,
}

impl DeviceCreateOpts {
    /// Minimal options: defaults for everything but name, socket and proxies.
    pub fn new(name: &str, socket: impl Into<PathBuf>, proxies: Vec<String>) -> DeviceCreateOpts {
        DeviceCreateOpts {
            name: name.to_string(),
            socket: socket.into(),
            proxies,
            num_queues: None,
            max_sessions: None,
            heartbeat_interval_ms: None,
            session_timeout_ms: None,
            request_timeout_ms: None,
            virtqueues: None,
            reactor: None,
        }
    }

    /// The device configuration these options describe.
    pub fn device_config(&self) -> PovDeviceConfig {
        let mut c = PovDeviceConfig::new(&self.name, self.proxies.clone());
        if let Some(v) = self.num_queues {
            c.num_queues = v;
        }
        if let Some(v) = self.max_sessions {
            c.max_sessions = v;
        }
        if let Some(v) = self.heartbeat_interval_ms {
            c.heartbeat_interval_ms = v;
        }
        if let Some(v) = self.session_timeout_ms {
            c.session_timeout_ms = v;
        }
        if let Some(v) = self.request_timeout_ms {
            c.request_timeout_ms = v;
        }
        c
    }
}

/// Parameters of `pov_volume_create` (a plain volume: an ordinary virtio-blk disk
/// whose data the proxy stores, or with `null` the device-path null volume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateOpts {
    /// Volume device name: 1-63 characters of `A-Z a-z 0-9 _ . -` (not starting with
    /// `.`); the virtio-blk serial is `vol-<name>` truncated to 20 bytes.
    pub name: String,
    /// Path of the vhost-user-blk socket to create.
    pub socket: PathBuf,
    /// Size in bytes, a non-zero multiple of `block_size`.
    pub size: u64,
    /// Block size in bytes, 512 or 4096 (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Backing volume name on the proxy (default: `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Proxy endpoints, `tcp:HOST:PORT` (required unless `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<Vec<String>>,
    /// Device-path null volume: data never leaves the DPU (reads return zeros, writes
    /// are dropped), like SPDK's null bdev. Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<bool>,
    /// virtio-blk queues offered to each client (1..=64, default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtqueues: Option<u16>,
    /// Index of the reactor that runs the volume (default: round-robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactor: Option<u32>,
    /// A proxy request without an answer for this long fails with IOERR, ms (default
    /// 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u32>,
}

impl VolumeCreateOpts {
    /// Minimal options for a volume backed by `proxies` (defaults for the rest).
    pub fn new(name: &str, socket: impl Into<PathBuf>, size: u64, proxies: Vec<String>) -> VolumeCreateOpts {
        VolumeCreateOpts {
            name: name.to_string(),
            socket: socket.into(),
            size,
            block_size: None,
            volume: None,
            proxies: Some(proxies),
            null: None,
            virtqueues: None,
            reactor: None,
            request_timeout_ms: None,
        }
    }

    /// `true` for a device-path null volume.
    pub fn is_null(&self) -> bool {
        self.null.unwrap_or(false)
    }

    /// The volume configuration these options describe (defaults resolved).
    pub fn volume_config(&self) -> VolumeConfig {
        VolumeConfig {
            name: self.name.clone(),
            volume: self.volume.clone().unwrap_or_else(|| self.name.clone()),
            size: self.size,
            block_size: self.block_size.unwrap_or(512),
            proxies: self.proxies.clone().unwrap_or_default(),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(DEFAULT_VOLUME_TIMEOUT_MS),
        }
    }
}

/// What `pov_device_get_devices` shows of a plain volume (`"kind": "volume"`).
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    /// Always `"volume"`.
    pub kind: &'static str,
    /// Volume device name.
    pub name: String,
    /// vhost-user-blk socket path.
    pub socket: PathBuf,
    /// `true` for a device-path null volume.
    pub null: bool,
    /// Volume configuration (defaults resolved): backing `volume`, `size` and
    /// `block_size` in bytes, `proxies`, `request_timeout_ms`.
    pub config: VolumeConfig,
    /// Index of the reactor running the volume.
    pub reactor: u32,
    /// Virtqueues offered.
    pub virtqueues: u16,
    /// Clients connected now.
    pub clients: usize,
    /// Volume counters (`null` if the reactor stopped).
    pub stats: Value,
    /// Counters of the vhost-user adapter (`null` if the reactor stopped).
    pub vhost_stats: Value,
}

/// What `pov_device_get_devices` shows of a device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// Always `"pov"` (a PoV device).
    pub kind: &'static str,
    /// Device name.
    pub name: String,
    /// vhost-user-blk socket path.
    pub socket: PathBuf,
    /// Proxy endpoints.
    pub proxies: Vec<String>,
    /// Index of the reactor running the device.
    pub reactor: u32,
    /// Virtqueues offered.
    pub virtqueues: u16,
    /// Full device configuration (defaults resolved).
    pub config: PovDeviceConfig,
    /// Clients connected now.
    pub clients: usize,
    /// Device counters (`null` if the reactor stopped).
    pub stats: Value,
    /// Counters of the vhost-user adapter (`null` if the reactor stopped).
    pub vhost_stats: Value,
}

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// An object with that name (or socket) exists.
    #[error("{kind} {name:?} already exists")]
    Exists {
        /// "tenant", "device" or "socket".
        kind: &'static str,
        /// The conflicting name.
        name: String,
    },
    /// No object with that name.
    #[error("no such {kind}: {name:?}")]
    NotFound {
        /// "tenant" or "device".
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A parameter is invalid.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// The socket or reactor failed.
    #[error("{0}")]
    Internal(String),
}

impl From<TenantError> for DaemonError {
    fn from(e: TenantError) -> DaemonError {
        match e {
            TenantError::Exists(name) => DaemonError::Exists { kind: "tenant", name },
            TenantError::NotFound(name) => DaemonError::NotFound { kind: "tenant", name },
            other => DaemonError::Invalid(other.to_string()),
        }
    }
}

struct DeviceEntry {
    opts: DeviceCreateOpts,
    config: PovDeviceConfig,
    virtqueues: u16,
    server: VhostBlkServer,
}

struct VolumeEntry {
    opts: VolumeCreateOpts,
    config: VolumeConfig,
    virtqueues: u16,
    server: VhostBlkServer,
}

/// Longest wait for a proxy's answer to VolumeOpen during `pov_volume_create`.
const VOLUME_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon state: tenants, devices, reactors. Share it behind an [`Arc`]; every
/// method may be called from any thread except a reactor thread (device operations
/// wait for the device's reactor).
pub struct Daemon {
    reactors: Vec<ReactorHandle>,
    tenants: TenantTable,
    factory: DeviceFactory,
    devices: Mutex<BTreeMap<String, DeviceEntry>>,
    /// Plain volumes. Lock order: `devices` before `volumes`.
    volumes: Mutex<BTreeMap<String, VolumeEntry>>,
    next_reactor: AtomicUsize,
    /// Gathering setting shared by every device.
    gathering: GatheringControl,
}

/// `true` if `name` is 1..=`max` bytes of `A-Z a-z 0-9 _ . -`.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Daemon {
    /// A daemon that places devices on `reactors` and builds them with `factory`
    /// (normally [`pov_device_factory`]).
    pub fn new(reactors: Vec<ReactorHandle>, factory: DeviceFactory) -> Daemon {
        Daemon {
            reactors,
            tenants: TenantTable::default(),
            factory,
            devices: Mutex::new(BTreeMap::new()),
            volumes: Mutex::new(BTreeMap::new()),
            next_reactor: AtomicUsize::new(0),
            gathering: GatheringControl::default(),
        }
    }

    /// The gathering setting every device follows.
    pub fn gathering(&self) -> Gathering {
        self.gathering.get()
    }

    /// Changes the gathering setting of every device, current and future; fields left
    /// `None` keep their value. Returns the setting now in force.
    ///
    /// # Errors
    /// [`DaemonError::Invalid`] for an out-of-range value (nothing changes).
    pub fn set_gathering(&self, opts: &GatheringOpts) -> Result<Gathering, DaemonError> {
        let old = self.gathering.get();
        let g = Gathering {
            enabled: opts.enabled.unwrap_or(old.enabled),
            batch_size: opts.batch_size.unwrap_or(old.batch_size),
            window_us: opts.window_us.unwrap_or(old.window_us),
        };
        self.gathering.set(g).map_err(DaemonError::Invalid)?;
        log::info!("gathering: {g:?}");
        Ok(g)
    }

    /// The tenant table shared by every device.
    pub fn tenants(&self) -> &TenantTable {
        &self.tenants
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceEntry>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn volumes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VolumeEntry>> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails if a device or volume already uses `name` or `socket`.
    fn check_free(
        devices: &BTreeMap<String, DeviceEntry>,
        volumes: &BTreeMap<String, VolumeEntry>,
        name: &str,
        socket: &std::path::Path,
    ) -> Result<(), DaemonError> {
        if devices.contains_key(name) {
            return Err(DaemonError::Exists { kind: "device", name: name.to_string() });
        }
        if volumes.contains_key(name) {
            return Err(DaemonError::Exists { kind: "volume", name: name.to_string() });
        }
        if devices.values().any(|d| d.opts.socket == socket) || volumes.values().any(|v| v.opts.socket == socket) {
            return Err(DaemonError::Exists { kind: "socket", name: socket.display().to_string() });
        }
        Ok(())
    }

    /// The reactor `index`, or the next one round-robin.
    fn pick_reactor(&self, index: Option<u32>) -> Result<&ReactorHandle, DaemonError> {
        if self.reactors.is_empty() {
            return Err(DaemonError::Internal("no reactor is running".into()));
        }
        match index {
            Some(r) => self
                .reactors
                .get(r as usize)
                .ok_or_else(|| DaemonError::Invalid(format!("reactor {r} does not exist (0..{})", self.reactors.len()))),
            None => Ok(&self.reactors[self.next_reactor.fetch_add(1, Ordering::Relaxed) % self.reactors.len()]),
        }
    }

    /// Adds a tenant.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] if it exists, [`DaemonError::Invalid`] for a bad name or
    /// secret.
    pub fn tenant_create(&self, opts: &TenantCreateOpts) -> Result<(), DaemonError> {
        self.tenants.create(&opts.name, opts.secret.as_bytes())?;
        log::info!("tenant {} created", opts.name);
        Ok(())
    }

    /// Removes a tenant; its open sessions are refused at their next heartbeat.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such tenant.
    pub fn tenant_delete(&self, name: &str) -> Result<(), DaemonError> {
        self.tenants.delete(name)?;
        log::info!("tenant {name} deleted");
        Ok(())
    }

    /// Tenant names, sorted (secrets are never shown).
    pub fn tenant_names(&self) -> Vec<String> {
        self.tenants.list().into_iter().map(|(n, _)| n).collect()
    }

    /// Creates a device on a reactor and starts serving its vhost-user-blk socket.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] if the name or the socket is taken,
    /// [`DaemonError::Invalid`] for bad parameters (including those the device
    /// rejects), [`DaemonError::Internal`] if the socket cannot be created or the
    /// reactor stopped.
    pub fn device_create(&self, opts: &DeviceCreateOpts) -> Result<(), DaemonError> {
        if !valid_name(&opts.name, pov_proto::layout::MAX_DEVICE_NAME) {
            return Err(DaemonError::Invalid(format!(
                "device name {:?}: use 1-{} characters of A-Z a-z 0-9 _ . -",
                opts.name,
                pov_proto::layout::MAX_DEVICE_NAME
            )));
        }
        let mut devices = self.devices();
        Self::check_free(&devices, &self.volumes(), &opts.name, &opts.socket)?;
        let reactor = self.pick_reactor(opts.reactor)?;
        let config = opts.device_config();
        let virtqueues = opts.virtqueues.unwrap_or(DEFAULT_NUM_QUEUES);
        let (factory, tenants, cfg) = (self.factory.clone(), self.tenants.clone(), config.clone());
        let server =
            start_server(&opts.name, &opts.socket, virtqueues, reactor, &self.gathering, move || factory(&cfg, &tenants))?;
        log::info!("device {} created on reactor {} (socket {})", opts.name, reactor.id(), opts.socket.display());
        devices.insert(opts.name.clone(), DeviceEntry { opts: opts.clone(), config, virtqueues, server });
        Ok(())
    }

    /// Stops a device: its socket is removed, clients are disconnected, in-flight IO
    /// fails.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such device.
    pub fn device_delete(&self, name: &str) -> Result<(), DaemonError> {
        let entry =
            self.devices().remove(name).ok_or_else(|| DaemonError::NotFound { kind: "device", name: name.to_string() })?;
        entry.server.stop();
        log::info!("device {name} deleted");
        Ok(())
    }

    /// Every device, or only `name`.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if `name` is given and no such device exists.
    pub fn device_info(&self, name: Option<&str>) -> Result<Vec<DeviceInfo>, DaemonError> {
        let devices = self.devices();
        if let Some(n) = name {
            if !devices.contains_key(n) {
                return Err(DaemonError::NotFound { kind: "device", name: n.to_string() });
            }
        }
        Ok(devices
            .values()
            .filter(|d| match name {
                Some(n) => n == d.opts.name,
                None => true,
            })
            .map(|d| {
                let stats = d.server.stats().unwrap_or(Value::Null);
                DeviceInfo {
                    kind: "pov",
                    name: d.opts.name.clone(),
                    socket: d.opts.socket.clone(),
                    proxies: d.opts.proxies.clone(),
                    reactor: d.server.reactor().id(),
                    virtqueues: d.virtqueues,
                    config: d.config.clone(),
                    clients: d.server.clients(),
                    stats: stats.get("device").cloned().unwrap_or(Value::Null),
                    vhost_stats: stats.get("vhost").cloned().unwrap_or(Value::Null),
                }
            })
            .collect())
    }

    /// Creates a plain volume: opens the backing volume on a proxy (creating it,
    /// zero-filled, if missing; skipped for a null volume), then exposes it on its
    /// vhost-user-blk socket.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] if the name or socket is taken by a device or volume;
    /// [`DaemonError::Invalid`] for bad parameters and when the backing volume exists
    /// with another size (volumes are never resized); [`DaemonError::Internal`] if no
    /// proxy answered the open, the socket cannot be created or the reactor stopped.
    pub fn volume_create(&self, opts: &VolumeCreateOpts) -> Result<(), DaemonError> {
        let null = opts.is_null();
        if null && opts.proxies.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(DaemonError::Invalid("proxies: a null volume has none (data never leaves the DPU)".into()));
        }
        let config = opts.volume_config();
        config.validate(null).map_err(volume_error)?;
        Self::check_free(&self.devices(), &self.volumes(), &opts.name, &opts.socket)?;
        if !null {
            // Off the device lock: this waits for a proxy.
            let timeout = VOLUME_OPEN_TIMEOUT.min(Duration::from_millis(config.request_timeout_ms as u64));
            open_volume(&config, timeout).map_err(volume_error)?;
        }
        let devices = self.devices();
        let mut volumes = self.volumes();
        Self::check_free(&devices, &volumes, &opts.name, &opts.socket)?;
        let reactor = self.pick_reactor(opts.reactor)?;
        let virtqueues = opts.virtqueues.unwrap_or(DEFAULT_NUM_QUEUES);
        let cfg = config.clone();
        let make = move || -> Result<Box<dyn BlockDevice>, String> {
            if null {
                NullVolume::new(cfg).map(|d| Box::new(d) as Box<dyn BlockDevice>).map_err(|e| e.to_string())
            } else {
                VolumeDevice::new(cfg).map(|d| Box::new(d) as Box<dyn BlockDevice>).map_err(|e| e.to_string())
            }
        };
        let server = start_server(&opts.name, &opts.socket, virtqueues, reactor, &self.gathering, make)?;
        log::info!(
            "volume {} ({} bytes, block size {}, {}) created on reactor {} (socket {})",
            opts.name,
            config.size,
            config.block_size,
            if null { "null".to_string() } else { format!("backing volume {}", config.volume) },
            reactor.id(),
            opts.socket.display()
        );
        volumes.insert(opts.name.clone(), VolumeEntry { opts: opts.clone(), config, virtqueues, server });
        Ok(())
    }

    /// Stops a volume: its socket is removed, clients are disconnected, in-flight IO
    /// fails. The backing volume on the proxy is kept.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such volume.
    pub fn volume_delete(&self, name: &str) -> Result<(), DaemonError> {
        let entry =
            self.volumes().remove(name).ok_or_else(|| DaemonError::NotFound { kind: "volume", name: name.to_string() })?;
        entry.server.stop();
        log::info!("volume {name} deleted");
        Ok(())
    }

    /// Every volume, or only `name` (an empty list if there is no such volume).
    pub fn volume_info(&self, name: Option<&str>) -> Vec<VolumeInfo> {
        self.volumes()
            .values()
            .filter(|v| name.is_none() || name == Some(v.opts.name.as_str()))
            .map(|v| {
                let stats = v.server.stats().unwrap_or(Value::Null);
                VolumeInfo {
                    kind: "volume",
                    name: v.opts.name.clone(),
                    socket: v.opts.socket.clone(),
                    null: v.opts.is_null(),
                    config: v.config.clone(),
                    reactor: v.server.reactor().id(),
                    virtqueues: v.virtqueues,
                    clients: v.server.clients(),
                    stats: stats.get("device").cloned().unwrap_or(Value::Null),
                    vhost_stats: stats.get("vhost").cloned().unwrap_or(Value::Null),
                }
            })
            .collect()
    }

    /// `pov_device_get_devices`: every PoV device (`"kind": "pov"`) then every volume
    /// (`"kind": "volume"`), or only the one named `name`.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if `name` is given and names neither.
    pub fn all_devices_json(&self, name: Option<&str>) -> Result<Value, DaemonError> {
        let devices = match self.device_info(name) {
            Ok(d) => d,
            Err(DaemonError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let volumes = self.volume_info(name);
        if let (Some(n), true, true) = (name, devices.is_empty(), volumes.is_empty()) {
            return Err(DaemonError::NotFound { kind: "device or volume", name: n.to_string() });
        }
        let mut out = Vec::with_capacity(devices.len() + volumes.len());
        for d in devices {
            out.push(serde_json::to_value(d).map_err(|e| DaemonError::Internal(e.to_string()))?);
        }
        for v in volumes {
            out.push(serde_json::to_value(v).map_err(|e| DaemonError::Internal(e.to_string()))?);
        }
        Ok(Value::Array(out))
    }

    /// Reactors and their pollers, in the shape of SPDK's `framework_get_reactors`:
    /// `{"tick_rate": 1, "reactors": [{"lcore", "reactor", "pinned", "busy", "idle",
    /// "sleeps", "messages", "cpu_time_us", "pollers": [{"name"}]}]}`. `busy` and
    /// `idle` count reactor loop iterations (one tick = one iteration); `lcore` is the
    /// CPU of a pinned reactor, else its index.
    pub fn reactors_info(&self) -> Value {
        let reactors: Vec<Value> = self
            .reactors
            .iter()
            .map(|r| {
                let s = r.stats();
                let pollers: Vec<Value> =
                    s.pollers.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|n| json!({ "name": n })).collect();
                json!({
                    "lcore": r.core().unwrap_or(r.id() as usize),
                    "reactor": r.id(),
                    "pinned": r.core().is_some(),
                    "busy": s.busy_iterations.load(Ordering::Relaxed),
                    "idle": s.idle_iterations.load(Ordering::Relaxed),
                    "sleeps": s.sleeps.load(Ordering::Relaxed),
                    "messages": s.messages.load(Ordering::Relaxed),
                    "cpu_time_us": s.cpu_time_us.load(Ordering::Relaxed),
                    "pollers": pollers,
                })
            })
            .collect();
        json!({ "tick_rate": 1, "reactors": reactors })
    }

    /// The replayable configuration, SPDK format:
    /// `{"subsystems": [{"subsystem": "pov", "config": [{"method", "params"}, ...]}]}`
    /// with every tenant (secrets included), every device, every volume (defaults
    /// resolved) and last the gathering setting.
    pub fn save_config(&self) -> Value {
        let mut calls = Vec::new();
        for (name, secret) in self.tenants.list() {
            let params = TenantCreateOpts { name, secret: String::from_utf8_lossy(&secret).into_owned() };
            calls.push(json!({ "method": "pov_tenant_create", "params": params }));
        }
        for d in self.devices().values() {
            let c = &d.config;
            let params = DeviceCreateOpts {
                name: d.opts.name.clone(),
                socket: d.opts.socket.clone(),
                proxies: d.opts.proxies.clone(),
                num_queues: Some(c.num_queues),
                max_sessions: Some(c.max_sessions),
                heartbeat_interval_ms: Some(c.heartbeat_interval_ms),
                session_timeout_ms: Some(c.session_timeout_ms),
                request_timeout_ms: Some(c.request_timeout_ms),
                virtqueues: Some(d.virtqueues),
                reactor: d.opts.reactor,
            };
            calls.push(json!({ "method": "pov_device_create", "params": params }));
        }
        for v in self.volumes().values() {
            let c = &v.config;
            let null = v.opts.is_null();
            let params = VolumeCreateOpts {
                name: v.opts.name.clone(),
                socket: v.opts.socket.clone(),
                size: c.size,
                block_size: Some(c.block_size),
                volume: (!null).then(|| c.volume.clone()),
                proxies: (!null).then(|| c.proxies.clone()),
                null: Some(null),
                virtqueues: Some(v.virtqueues),
                reactor: v.opts.reactor,
                request_timeout_ms: Some(c.request_timeout_ms),
            };
            calls.push(json!({ "method": "pov_volume_create", "params": params }));
        }
        let g = self.gathering.get();
        let params = GatheringOpts { enabled: Some(g.enabled), batch_size: Some(g.batch_size), window_us: Some(g.window_us) };
        calls.push(json!({ "method": "pov_set_gathering", "params": params }));
        json!({ "subsystems": [{ "subsystem": "pov", "config": calls }] })
    }

    /// Deletes every device and volume (sockets removed, clients disconnected).
    pub fn shutdown(&self) {
        let all = std::mem::take(&mut *self.devices());
        for (name, d) in all {
            d.server.stop();
            log::info!("device {name} stopped");
        }
        let all = std::mem::take(&mut *self.volumes());
        for (name, v) in all {
            v.server.stop();
            log::info!("volume {name} stopped");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Exposes the device `make` builds (on `reactor`) on a vhost-user-blk socket.
fn start_server<F>(
    name: &str,
    socket: &Path,
    virtqueues: u16,
    reactor: &ReactorHandle,
    gathering: &GatheringControl,
    make: F,
) -> Result<VhostBlkServer, DaemonError>
where
    F: FnOnce() -> Result<Box<dyn BlockDevice>, String> + Send + 'static,
{
    let vopts = VhostBlkOptions {
        name: name.to_string(),
        socket: socket.to_path_buf(),
        num_queues: virtqueues,
        max_queue_size: DEFAULT_QUEUE_SIZE,
        gathering: gathering.clone(),
    };
    VhostBlkServer::start(vopts, reactor, make).map_err(|e| match e {
        VhostBlkError::SocketInUse(p) => DaemonError::Exists { kind: "socket", name: p.display().to_string() },
        VhostBlkError::Invalid { field, why } => DaemonError::Invalid(format!("{}: {why}", vhost_field(field))),
        VhostBlkError::Device(why) => DaemonError::Invalid(why),
        other => DaemonError::Internal(other.to_string()),
    })
}

/// The daemon error for a volume that cannot be opened or built.
fn volume_error(e: VolumeError) -> DaemonError {
    match e {
        VolumeError::Invalid { .. } | VolumeError::SizeMismatch { .. } => DaemonError::Invalid(e.to_string()),
        other => DaemonError::Internal(other.to_string()),
    }
}

/// The RPC parameter name of a [`VhostBlkOptions`] field.
fn vhost_field(field: &str) -> &str {
    match field {
        "num_queues" => "virtqueues",
        f => f,
    }
}
