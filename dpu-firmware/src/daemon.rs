//! The daemon's state and orchestration: reactors, the keyring, the tenant table, the
//! gathering setting, and one registry of devices of every kind ([`crate::kinds`]).
//!
//! A device is created on a reactor chosen round-robin (or given), exposed on its own
//! vhost-user-blk socket by a [`VhostBlkServer`], and can write itself out as the call
//! that recreates it ([`Daemon::save_config`]): the device's own
//! `BlockDevice::write_config_json` plus the front end's `socket`, `virtqueues` and
//! `reactor`. Names and sockets are unique across kinds. The JSON-RPC layer
//! ([`crate::rpc`]) and each kind's handlers only decode parameters and call this API.

pub use crate::gathering::GatheringOpts;
pub use crate::keyring::{KeyFileOpts, KeyInfo, Keyring};
pub use crate::kinds::pov::{pov_device_factory, DeviceCreateOpts, DeviceFactory, DeviceInfo};
pub use crate::kinds::volume::{VolumeCreateOpts, VolumeInfo};
use crate::kinds::{DeviceContext, DeviceKind, KINDS};
pub use crate::tenant::TenantCreateOpts;
use crate::vhost_blk::{VhostBlkError, VhostBlkOptions, VhostBlkServer, DEFAULT_NUM_QUEUES, DEFAULT_QUEUE_SIZE};
use bdev_pov::tenant::TenantError;
use bdev_pov::{BlockDevice, GatheringControl, TenantTable};
use pov_runtime::ReactorHandle;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Parameters of the calls that only name an object (`pov_tenant_delete`,
/// `pov_device_delete`, `pov_volume_delete`, `keyring_file_remove_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameOpts {
    /// The object's name.
    pub name: String,
}

/// Parameters of a listing method: one object by `name`, or every one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaybeNameOpts {
    /// The object's name (`None`: all).
    #[serde(default)]
    pub name: Option<String>,
}

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// An object with that name (or socket) exists.
    #[error("{kind} {name:?} already exists")]
    Exists {
        /// "tenant", "device", "volume", "socket" or "key".
        kind: &'static str,
        /// The conflicting name.
        name: String,
    },
    /// No object with that name.
    #[error("no such {kind}: {name:?}")]
    NotFound {
        /// "tenant", "device", "volume" or "key".
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

/// `true` if `name` is 1..=`max` bytes of `A-Z a-z 0-9 _ . -`.
pub fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The front-end parameters every kind shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// Device name (unique across kinds).
    pub name: String,
    /// vhost-user-blk socket path (unique).
    pub socket: PathBuf,
    /// Virtqueues offered to each client (default [`DEFAULT_NUM_QUEUES`]).
    pub virtqueues: Option<u16>,
    /// Reactor index (default: round-robin).
    pub reactor: Option<u32>,
}

/// Builds a device on its reactor.
pub type MakeDevice = Box<dyn FnOnce(&DeviceContext) -> Result<Box<dyn BlockDevice>, String> + Send>;

/// One device in the registry.
pub struct DeviceEntry {
    /// Its kind.
    pub kind: &'static dyn DeviceKind,
    /// Its name.
    pub name: String,
    /// Its vhost-user-blk socket.
    pub socket: PathBuf,
    /// Virtqueues offered.
    pub virtqueues: u16,
    /// The reactor asked for (`None`: picked round-robin).
    pub requested_reactor: Option<u32>,
    /// Kind-specific fields shown by `pov_device_get_devices`.
    info: Map<String, Value>,
    /// Kind-specific state for the kind's own API.
    details: Arc<dyn Any + Send + Sync>,
    /// The call that recreates the device.
    config_call: Value,
    /// Its route table (`crate::routes`).
    pub(crate) routes: bdev_pov::forward::RouteControl,
    server: VhostBlkServer,
}

impl DeviceEntry {
    /// The kind-specific state the kind registered (its own type).
    ///
    /// # Panics
    /// If `T` is not the type the kind registered (a bug in the kind).
    pub fn details<T: 'static>(&self) -> &T {
        self.details.downcast_ref::<T>().expect("details of the kind's own type")
    }

    /// Index of the reactor running the device.
    pub fn reactor(&self) -> u32 {
        self.server.reactor().id()
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.server.clients()
    }

    /// What `pov_device_get_devices` shows: kind, name, socket, reactor, virtqueues,
    /// clients, the kind's fields, `stats` and `vhost_stats` (`null` if the reactor
    /// stopped).
    fn json(&self, stats: &Value) -> Value {
        let mut o = self.info.clone();
        o.insert("kind".into(), json!(self.kind.kind()));
        o.insert("name".into(), json!(self.name));
        o.insert("socket".into(), json!(self.socket));
        o.insert("reactor".into(), json!(self.reactor()));
        o.insert("virtqueues".into(), json!(self.virtqueues));
        o.insert("clients".into(), json!(self.clients()));
        o.insert("stats".into(), stats.get("device").cloned().unwrap_or(Value::Null));
        o.insert("vhost_stats".into(), stats.get("vhost").cloned().unwrap_or(Value::Null));
        Value::Object(o)
    }
}

/// The daemon state: tenants, devices, reactors. Share it behind an [`Arc`]; every
/// method may be called from any thread except a reactor thread (device operations
/// wait for the device's reactor).
pub struct Daemon {
    reactors: Vec<ReactorHandle>,
    keyring: Keyring,
    tenants: TenantTable,
    factory: DeviceFactory,
    /// Every device of every kind, by name.
    devices: Mutex<BTreeMap<String, DeviceEntry>>,
    next_reactor: AtomicUsize,
    /// Gathering setting shared by every device.
    gathering: GatheringControl,
    /// Tenants' QoS policies, shared by every device's scheduler.
    qos: bdev_pov::qos::QosTable,
    /// A saved configuration is being replayed ([`crate::config::load_config`]): a
    /// volume whose proxies do not answer yet is opened in the background instead of
    /// failing the replay.
    replaying: std::sync::atomic::AtomicBool,
}

impl Daemon {
    /// A daemon that places devices on `reactors` and builds PoV devices with `factory`
    /// (normally [`pov_device_factory`]).
    pub fn new(reactors: Vec<ReactorHandle>, factory: DeviceFactory) -> Daemon {
        Daemon {
            reactors,
            keyring: Keyring::default(),
            tenants: TenantTable::default(),
            factory,
            devices: Mutex::new(BTreeMap::new()),
            next_reactor: AtomicUsize::new(0),
            gathering: GatheringControl::default(),
            qos: bdev_pov::qos::QosTable::default(),
            replaying: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks a configuration replay as running (or over); see [`Daemon::replaying`].
    pub(crate) fn set_replaying(&self, on: bool) {
        self.replaying.store(on, std::sync::atomic::Ordering::Release);
    }

    /// `true` while a saved configuration is being replayed.
    pub(crate) fn replaying(&self) -> bool {
        self.replaying.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A daemon with the production factory.
    pub fn with_reactors(reactors: Vec<ReactorHandle>) -> Daemon {
        Daemon::new(reactors, pov_device_factory())
    }

    /// The factory PoV devices are built with.
    pub fn pov_factory(&self) -> DeviceFactory {
        self.factory.clone()
    }

    /// The gathering setting every device follows.
    pub fn gathering_control(&self) -> &GatheringControl {
        &self.gathering
    }

    /// Tenants' QoS policies (`crate::qos`).
    pub fn qos(&self) -> &bdev_pov::qos::QosTable {
        &self.qos
    }

    /// The tenant table shared by every device.
    pub fn tenants(&self) -> &TenantTable {
        &self.tenants
    }

    /// The keys tenants are created with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub(crate) fn devices(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceEntry>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_free_in(devices: &BTreeMap<String, DeviceEntry>, name: &str, socket: &Path) -> Result<(), DaemonError> {
        if let Some(e) = devices.get(name) {
            return Err(DaemonError::Exists { kind: e.kind.noun(), name: name.to_string() });
        }
        if devices.values().any(|d| d.socket == socket) {
            return Err(DaemonError::Exists { kind: "socket", name: socket.display().to_string() });
        }
        Ok(())
    }

    /// Fails if a device of any kind already uses `name` or `socket`.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] naming what is taken.
    pub fn check_free(&self, name: &str, socket: &Path) -> Result<(), DaemonError> {
        Self::check_free_in(&self.devices(), name, socket)
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

    /// Adds a device of `kind`: checks that its name and socket are free, builds it with
    /// `make` on a reactor and serves it on its socket. `info` (an object) holds the
    /// kind's fields for `pov_device_get_devices`; `details` the kind's own state.
    ///
    /// # Errors
    /// [`DaemonError::Exists`], [`DaemonError::Invalid`] (bad front-end parameters, or
    /// `make` refused), [`DaemonError::Internal`] (socket, reactor).
    pub fn add_device(
        &self,
        kind: &'static dyn DeviceKind,
        fe: &Frontend,
        info: Value,
        details: Arc<dyn Any + Send + Sync>,
        make: MakeDevice,
    ) -> Result<(), DaemonError> {
        let mut devices = self.devices();
        Self::check_free_in(&devices, &fe.name, &fe.socket)?;
        let reactor = self.pick_reactor(fe.reactor)?;
        let virtqueues = fe.virtqueues.unwrap_or(DEFAULT_NUM_QUEUES);
        let routes = bdev_pov::forward::RouteControl::default();
        let ctx = DeviceContext {
            tenants: self.tenants.clone(),
            gathering: self.gathering.clone(),
            routes: routes.clone(),
            qos: self.qos.clone(),
        };
        let call: Arc<Mutex<Value>> = Arc::default();
        let call2 = call.clone();
        let build = move || -> Result<Box<dyn BlockDevice>, String> {
            let dev = make(&ctx)?;
            *call2.lock().unwrap_or_else(|e| e.into_inner()) = dev.write_config_json();
            Ok(dev)
        };
        let server = start_server(&fe.name, &fe.socket, virtqueues, reactor, &self.gathering, build)?;
        let mut config_call = std::mem::take(&mut *call.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(p) = config_call.get_mut("params").and_then(Value::as_object_mut) {
            p.insert("socket".into(), json!(fe.socket));
            p.insert("virtqueues".into(), json!(virtqueues));
            if let Some(r) = fe.reactor {
                p.insert("reactor".into(), json!(r));
            }
        }
        log::info!("{} {} created on reactor {} (socket {})", kind.noun(), fe.name, reactor.id(), fe.socket.display());
        let info = match info {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let entry = DeviceEntry {
            kind,
            name: fe.name.clone(),
            socket: fe.socket.clone(),
            virtqueues,
            requested_reactor: fe.reactor,
            info,
            details,
            config_call,
            routes,
            server,
        };
        devices.insert(fe.name.clone(), entry);
        Ok(())
    }

    /// Stops a device of `kind`: its socket is removed, clients are disconnected,
    /// in-flight IO fails.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no device of that kind with that name.
    pub fn remove_device(&self, kind: &'static dyn DeviceKind, name: &str) -> Result<(), DaemonError> {
        let not_found = || DaemonError::NotFound { kind: kind.noun(), name: name.to_string() };
        let entry = {
            let mut devices = self.devices();
            match devices.get(name) {
                Some(e) if e.kind.kind() == kind.kind() => devices.remove(name).ok_or_else(not_found)?,
                _ => return Err(not_found()),
            }
        };
        entry.server.stop();
        log::info!("{} {name} deleted", kind.noun());
        Ok(())
    }

    /// `f` of every device of `kind` (or only `name`), in name order, with the device's
    /// live counters (`{"device": .., "vhost": ..}`, `null` if its reactor stopped).
    pub fn entries<T>(&self, kind: &dyn DeviceKind, name: Option<&str>, mut f: impl FnMut(&DeviceEntry, &Value) -> T) -> Vec<T> {
        self.devices()
            .values()
            .filter(|e| e.kind.kind() == kind.kind() && name.map_or(true, |n| n == e.name))
            .map(|e| f(e, &e.server.stats().unwrap_or(Value::Null)))
            .collect()
    }

    /// `pov_device_get_devices`: every device, kind by kind (in [`KINDS`] order), or
    /// only the one named `name`.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if `name` is given and names no device.
    pub fn all_devices_json(&self, name: Option<&str>) -> Result<Value, DaemonError> {
        let mut out = Vec::new();
        for k in KINDS {
            out.extend(self.entries(*k, name, |e, stats| e.json(stats)));
        }
        if let (Some(n), true) = (name, out.is_empty()) {
            return Err(DaemonError::NotFound { kind: "device or volume", name: n.to_string() });
        }
        Ok(Value::Array(out))
    }

    /// The reactors devices are placed on, in index order.
    pub fn reactors(&self) -> &[ReactorHandle] {
        &self.reactors
    }

    /// Every device of every kind with its live counters (as
    /// [`Daemon::entries`] gives them), in [`KINDS`] order then name order.
    pub fn all_entries<T>(&self, mut f: impl FnMut(&DeviceEntry, &Value) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for k in KINDS {
            out.extend(self.entries(*k, None, &mut f));
        }
        out
    }

    /// The replayable configuration, SPDK format:
    /// `{"subsystems": [{"subsystem": "pov", "config": [{"method", "params"}, ...]}]}`
    /// with every keyring key (`keyring_file_add_key`: its name and path, never its
    /// bytes), every tenant (`pov_tenant_create` naming its key), every device kind by
    /// kind (defaults resolved) and last the gathering setting.
    pub fn save_config(&self) -> Value {
        let mut calls = crate::keyring::save_config(&self.keyring);
        calls.extend(crate::tenant::save_config(&self.tenants, &self.keyring));
        calls.extend(crate::qos::save_config(self));
        {
            let devices = self.devices();
            for k in KINDS {
                calls.extend(devices.values().filter(|e| e.kind.kind() == k.kind()).map(|e| e.config_call.clone()));
            }
        }
        calls.extend(self.save_routes());
        calls.push(crate::gathering::save_config(&self.gathering));
        json!({ "subsystems": [{ "subsystem": "pov", "config": calls }] })
    }

    /// Deletes every device (sockets removed, clients disconnected).
    pub fn shutdown(&self) {
        let all = std::mem::take(&mut *self.devices());
        for (name, d) in all {
            d.server.stop();
            log::info!("{} {name} stopped", d.kind.noun());
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
        other => DaemonError::Internal(pov_runtime::ErrorChain(&other).to_string()),
    })
}

/// The RPC parameter name of a [`VhostBlkOptions`] field.
fn vhost_field(field: &str) -> &str {
    match field {
        "num_queues" => "virtqueues",
        f => f,
    }
}
