//! Plain volumes (`pov_volume_create`, `pov_volume_delete`): an ordinary virtio-blk disk
//! whose data the proxy stores ([`bdev_pov::volume::VolumeDevice`]), or with `null` the
//! device-path null volume ([`bdev_pov::volume::NullVolume`]).

use super::DeviceKind;
use crate::daemon::{Daemon, DaemonError, Frontend};
use crate::rpc::{params, Handler, RpcError};
use bdev_pov::volume::{open_volume, NullVolume, VolumeConfig, VolumeDevice, VolumeError, DEFAULT_VOLUME_TIMEOUT_MS};
use bdev_pov::BlockDevice;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The plain-volume kind.
pub struct Volume;

impl DeviceKind for Volume {
    fn kind(&self) -> &'static str {
        "volume"
    }
    fn noun(&self) -> &'static str {
        "volume"
    }
    fn methods(&self) -> &'static [(&'static str, Handler)] {
        &[("pov_volume_create", pov_volume_create), ("pov_volume_delete", pov_volume_delete)]
    }
}

/// Longest wait for a proxy's answer to VolumeOpen during `pov_volume_create`.
const VOLUME_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Silence before a proxy with requests in flight is pinged, ms (default 250).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_ping_after_ms: Option<u32>,
    /// An unanswered ping declares the proxy down after this long, ms (default 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_down_after_ms: Option<u32>,
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
            proxy_ping_after_ms: None,
            proxy_down_after_ms: None,
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
            proxy_ping_after_ms: self.proxy_ping_after_ms.unwrap_or_else(bdev_pov::forward::health::default_ping_after_ms),
            proxy_down_after_ms: self.proxy_down_after_ms.unwrap_or_else(bdev_pov::forward::health::default_down_after_ms),
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

/// What the registry keeps of a volume for [`Daemon::volume_info`].
struct Details {
    config: VolumeConfig,
    null: bool,
}

impl Daemon {
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
        for p in &config.proxies {
            pov_runtime::Endpoint::parse(p).map_err(|e| DaemonError::Invalid(format!("proxies: {e}")))?;
        }
        self.check_free(&opts.name, &opts.socket)?;
        let mut opening = false;
        if !null {
            // Off the registry lock: this waits for a proxy.
            let timeout = VOLUME_OPEN_TIMEOUT.min(Duration::from_millis(config.request_timeout_ms as u64));
            match open_volume(&config, timeout) {
                Ok(_) => {}
                // Replaying a saved configuration while the proxies are down: open it
                // in the background rather than fail the whole start-up.
                Err(e @ VolumeError::Unreachable { .. }) if self.replaying() => {
                    log::warn!("volume {}: {e}; opening it in the background, IO waits", opts.name);
                    opening = true;
                }
                Err(e) => return Err(volume_error(e)),
            }
        }
        let fe =
            Frontend { name: opts.name.clone(), socket: opts.socket.clone(), virtqueues: opts.virtqueues, reactor: opts.reactor };
        // (`null` alone would be JSON null inside `json!`.)
        let is_null = null;
        let info = json!({ "null": is_null, "config": config });
        let cfg = config.clone();
        let make = Box::new(move |ctx: &super::DeviceContext| -> Result<Box<dyn BlockDevice>, String> {
            if null {
                NullVolume::new(cfg).map(|d| Box::new(d) as Box<dyn BlockDevice>).map_err(|e| e.to_string())
            } else {
                let dev = if opening { VolumeDevice::new_opening(cfg) } else { VolumeDevice::new(cfg) };
                dev.map(|d| {
                    Box::new(d.with_gathering(ctx.gathering.clone()).with_routes(ctx.routes.clone())) as Box<dyn BlockDevice>
                })
                .map_err(|e| e.to_string())
            }
        });
        let what = if null { "null".to_string() } else { format!("backing volume {}", config.volume) };
        let (size, bs) = (config.size, config.block_size);
        self.add_device(&Volume, &fe, info, Arc::new(Details { config, null }), make)?;
        log::info!("volume {}: {size} bytes, block size {bs}, {what}", opts.name);
        Ok(())
    }

    /// Stops a volume: its socket is removed, clients are disconnected, in-flight IO
    /// fails. The backing volume on the proxy is kept.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such volume.
    pub fn volume_delete(&self, name: &str) -> Result<(), DaemonError> {
        self.remove_device(&Volume, name)
    }

    /// Every volume, or only `name` (an empty list if there is no such volume).
    pub fn volume_info(&self, name: Option<&str>) -> Vec<VolumeInfo> {
        self.entries(&Volume, name, |e, stats| {
            let d: &Details = e.details();
            VolumeInfo {
                kind: "volume",
                name: e.name.clone(),
                socket: e.socket.clone(),
                null: d.null,
                config: d.config.clone(),
                reactor: e.reactor(),
                virtqueues: e.virtqueues,
                clients: e.clients(),
                stats: stats.get("device").cloned().unwrap_or(Value::Null),
                vhost_stats: stats.get("vhost").cloned().unwrap_or(Value::Null),
            }
        })
    }
}

/// The daemon error for a volume that cannot be opened or built.
fn volume_error(e: VolumeError) -> DaemonError {
    match e {
        VolumeError::Invalid { .. } | VolumeError::SizeMismatch { .. } => DaemonError::Invalid(e.to_string()),
        other => DaemonError::Internal(other.to_string()),
    }
}

fn pov_volume_create(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: VolumeCreateOpts = params(p)?;
    d.volume_create(&o)?;
    // SPDK's convention for methods that create a bdev (bdev_malloc_create, …): the
    // new bdev's name.
    Ok(json!(o.name))
}

fn pov_volume_delete(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: crate::daemon::NameOpts = params(p)?;
    d.volume_delete(&o.name)?;
    Ok(json!(true))
}
