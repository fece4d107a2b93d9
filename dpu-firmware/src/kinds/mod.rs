//! Device kinds: the kinds of block device `pov-dpud` exposes on vhost-user-blk sockets
//! (SPDK's module shape: `bdev_null.c` + `bdev_null_rpc.c`).
//!
//! Each kind is one file with its parameters, its create/delete/info functions, the
//! JSON-RPC handlers that decode parameters and call them, and its list of methods
//! ([`DeviceKind::methods`]). The daemon keeps one registry of devices of every kind
//! ([`crate::daemon`]): names and sockets are unique across kinds, each device can
//! write itself out as the call that recreates it (`BlockDevice::write_config_json` plus
//! the front end's socket, virtqueues and reactor), and `pov_device_get_devices` lists
//! them all. Adding a kind is a new file here and one line in [`KINDS`].
//!
//! * [`pov`]: PoV devices (`pov_device_create`, `pov_device_delete`).
//! * [`volume`]: plain volumes and null volumes (`pov_volume_create`,
//!   `pov_volume_delete`).

pub mod pov;
pub mod volume;

use crate::daemon::Daemon;
use crate::rpc::{params, Handler, RpcError};
use bdev_pov::{GatheringControl, TenantTable};
use serde_json::Value;

/// A kind of device. See the module docs.
pub trait DeviceKind: Sync {
    /// The `kind` field of `pov_device_get_devices` (`"pov"`, `"volume"`).
    fn kind(&self) -> &'static str;
    /// What the kind is called in errors (`"device"`, `"volume"`).
    fn noun(&self) -> &'static str;
    /// The kind's JSON-RPC methods.
    fn methods(&self) -> &'static [(&'static str, Handler)];
}

/// Every kind, in the order `pov_device_get_devices` and `save_config` list them.
pub static KINDS: &[&dyn DeviceKind] = &[&pov::Pov, &volume::Volume];

/// What a device is built with, on its reactor.
pub struct DeviceContext {
    /// The daemon's tenants.
    pub tenants: TenantTable,
    /// The daemon's gathering setting, which the device's proxy connections follow.
    pub gathering: GatheringControl,
    /// The device's route table (`crate::routes`).
    pub routes: bdev_pov::forward::RouteControl,
    /// Tenants' QoS policies (`crate::qos`), read by the device's scheduler.
    pub qos: bdev_pov::qos::QosTable,
}

/// Methods of the registry itself (they span every kind).
pub const METHODS: &[(&str, Handler)] = &[("pov_device_get_devices", pov_device_get_devices)];

fn pov_device_get_devices(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: crate::daemon::MaybeNameOpts = params(p)?;
    Ok(d.all_devices_json(o.name.as_deref())?)
}

/// The kind named `kind`.
pub fn kind(kind: &str) -> Option<&'static dyn DeviceKind> {
    KINDS.iter().copied().find(|k| k.kind() == kind)
}
