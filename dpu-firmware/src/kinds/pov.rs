//! PoV devices (`pov_device_create`, `pov_device_delete`): a [`bdev_pov::PovDevice`]
//! per vhost-user-blk socket.

use super::{DeviceContext, DeviceKind};
use crate::daemon::{valid_name, Daemon, DaemonError, Frontend};
use crate::rpc::{params, Handler, RpcError};
use bdev_pov::{BlockDevice, PovDevice, PovDeviceConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// The PoV device kind.
pub struct Pov;

impl DeviceKind for Pov {
    fn kind(&self) -> &'static str {
        "pov"
    }
    fn noun(&self) -> &'static str {
        "device"
    }
    fn methods(&self) -> &'static [(&'static str, Handler)] {
        &[("pov_device_create", pov_device_create), ("pov_device_delete", pov_device_delete)]
    }
}

/// Builds the device behind a `pov_device_create` call. Runs on the device's reactor.
/// The error is a human-readable reason (reported as invalid parameters).
pub type DeviceFactory = Arc<dyn Fn(&PovDeviceConfig, &DeviceContext) -> Result<Box<dyn BlockDevice>, String> + Send + Sync>;

/// The production factory: a [`PovDevice`] following the daemon's gathering setting.
pub fn pov_device_factory() -> DeviceFactory {
    Arc::new(|cfg, ctx| {
        PovDevice::new(cfg.clone(), ctx.tenants.clone())
            .map(|d| {
                let d = d.with_gathering(ctx.gathering.clone()).with_routes(ctx.routes.clone());
                let d = if ctx.qos.options().enabled { d.with_qos(&ctx.qos) } else { d };
                Box::new(d) as Box<dyn BlockDevice>
            })
            .map_err(|e| e.to_string())
    })
}

/// Parameters of `pov_device_create`. Optional fields take [`PovDeviceConfig`]'s
/// defaults (and [`crate::vhost_blk::DEFAULT_NUM_QUEUES`] virtqueues).
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
    /// Most sessions one tenant may have open at once (default: `max_sessions` - 1,
    /// so that one tenant cannot take every session area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_tenant: Option<u32>,
    /// Most queues one tenant may hold, all its sessions together (default: no limit
    /// but the sessions').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues_per_tenant: Option<u32>,
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
    /// Silence before a proxy with requests in flight is pinged, ms (default 250).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_ping_after_ms: Option<u32>,
    /// An unanswered ping declares the proxy down after this long, ms (default 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_down_after_ms: Option<u32>,
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
            max_sessions_per_tenant: None,
            max_queues_per_tenant: None,
            heartbeat_interval_ms: None,
            session_timeout_ms: None,
            request_timeout_ms: None,
            virtqueues: None,
            reactor: None,
            proxy_ping_after_ms: None,
            proxy_down_after_ms: None,
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
        c.max_sessions_per_tenant = self.max_sessions_per_tenant;
        c.max_queues_per_tenant = self.max_queues_per_tenant;
        if let Some(v) = self.heartbeat_interval_ms {
            c.heartbeat_interval_ms = v;
        }
        if let Some(v) = self.session_timeout_ms {
            c.session_timeout_ms = v;
        }
        if let Some(v) = self.request_timeout_ms {
            c.request_timeout_ms = v;
        }
        if let Some(v) = self.proxy_ping_after_ms {
            c.proxy_ping_after_ms = v;
        }
        if let Some(v) = self.proxy_down_after_ms {
            c.proxy_down_after_ms = v;
        }
        c
    }
}

/// What `pov_device_get_devices` shows of a PoV device (`"kind": "pov"`).
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

impl Daemon {
    /// Creates a PoV device on a reactor and starts serving its vhost-user-blk socket.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] if the name or the socket is taken,
    /// [`DaemonError::Invalid`] for bad parameters (a malformed endpoint included, and
    /// those the device rejects), [`DaemonError::Internal`] if the socket cannot be
    /// created or the reactor stopped.
    pub fn device_create(&self, opts: &DeviceCreateOpts) -> Result<(), DaemonError> {
        if !valid_name(&opts.name, pov_proto::layout::MAX_DEVICE_NAME) {
            return Err(DaemonError::Invalid(format!(
                "device name {:?}: use 1-{} characters of A-Z a-z 0-9 _ . -",
                opts.name,
                pov_proto::layout::MAX_DEVICE_NAME
            )));
        }
        for p in &opts.proxies {
            pov_runtime::Endpoint::parse(p).map_err(|e| DaemonError::Invalid(format!("proxies: {e}")))?;
        }
        let config = opts.device_config();
        let fe =
            Frontend { name: opts.name.clone(), socket: opts.socket.clone(), virtqueues: opts.virtqueues, reactor: opts.reactor };
        let info = json!({ "proxies": opts.proxies, "config": config });
        let factory = self.pov_factory();
        let cfg = config.clone();
        self.add_device(&Pov, &fe, info, Arc::new(config), Box::new(move |ctx| factory(&cfg, ctx)))
    }

    /// Stops a PoV device: its socket is removed, clients are disconnected, in-flight IO
    /// fails.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such device.
    pub fn device_delete(&self, name: &str) -> Result<(), DaemonError> {
        self.remove_device(&Pov, name)
    }

    /// Every PoV device, or only `name`.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if `name` is given and no such device exists.
    pub fn device_info(&self, name: Option<&str>) -> Result<Vec<DeviceInfo>, DaemonError> {
        let list = self.entries(&Pov, name, |e, stats| {
            let config: &PovDeviceConfig = e.details();
            DeviceInfo {
                kind: "pov",
                name: e.name.clone(),
                socket: e.socket.clone(),
                proxies: config.proxies.clone(),
                reactor: e.reactor(),
                virtqueues: e.virtqueues,
                config: config.clone(),
                clients: e.clients(),
                stats: stats.get("device").cloned().unwrap_or(Value::Null),
                vhost_stats: stats.get("vhost").cloned().unwrap_or(Value::Null),
            }
        });
        match name {
            Some(n) if list.is_empty() => Err(DaemonError::NotFound { kind: "device", name: n.to_string() }),
            _ => Ok(list),
        }
    }
}

fn pov_device_create(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: DeviceCreateOpts = params(p)?;
    d.device_create(&o)?;
    Ok(json!(o.name))
}

fn pov_device_delete(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: crate::daemon::NameOpts = params(p)?;
    d.device_delete(&o.name)?;
    Ok(json!(true))
}
