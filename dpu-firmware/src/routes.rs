//! Route tables and proxy membership of devices (paper §4.3.2; `docs/protocol.md`,
//! "Route tables and redirects"): `pov_route_set_table`, `pov_route_get_table`,
//! `pov_route_clear_table` and `pov_proxy_get_proxies`.
//!
//! Each PoV device and plain volume has a [`bdev_pov::forward::RouteControl`] shared
//! between its reactor and these methods. A device starts without a table (its queues
//! keep a home proxy, round-robin); the first redirect from a cluster member installs
//! the cluster's table, and from then on every request goes to the owner of its route
//! slot. An operator may set a table by hand (any epoch: it replaces the one in force;
//! a member's redirect still installs a newer one). `save_config` writes the table in
//! force as a `pov_route_set_table` call after the device's own call, so a restarted
//! `pov-dpud` routes in one hop from its first request.

use crate::daemon::{Daemon, DaemonError, NameOpts};
use crate::rpc::{params, Handler, RpcError};
use bdev_pov::forward::RouteControl;
use pov_proto::route::{Placement, RouteTable};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The route methods.
pub const METHODS: &[(&str, Handler)] = &[
    ("pov_route_set_table", pov_route_set_table),
    ("pov_route_get_table", pov_route_get_table),
    ("pov_route_clear_table", pov_route_clear_table),
    ("pov_proxy_get_proxies", pov_proxy_get_proxies),
];

/// `placement` of a route table in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PlacementJson {
    /// Hash of the file's location or path (see `pov_proto::route`).
    Hash,
    /// CephFS data-pool placement groups.
    Ceph {
        /// Object size of the file layout, bytes.
        object_size: u32,
    },
}

/// Parameters of `pov_route_set_table` (and the result of `pov_route_get_table`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTableOpts {
    /// The device or volume.
    pub name: String,
    /// Epoch (≥ 1).
    pub epoch: u32,
    /// How requests map to slots.
    pub placement: PlacementJson,
    /// Member endpoints, in member-index order.
    pub members: Vec<String>,
    /// Owner of each slot (member index; 255: none). Default: `slots` slots owned in
    /// turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<u8>>,
    /// Number of slots when `owners` is absent (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
}

impl RouteTableOpts {
    fn table(&self) -> Result<RouteTable, DaemonError> {
        for m in &self.members {
            pov_runtime::Endpoint::parse(m).map_err(|e| DaemonError::Invalid(format!("members: {e}")))?;
        }
        let placement = match self.placement {
            PlacementJson::Hash => Placement::Hash,
            PlacementJson::Ceph { object_size } => Placement::Ceph { object_size },
        };
        let t = match &self.owners {
            Some(o) => RouteTable { epoch: self.epoch, placement, members: self.members.clone(), owners: o.clone() },
            None => RouteTable {
                placement,
                ..RouteTable::hashed(self.epoch, self.members.clone(), self.slots.unwrap_or(64)).map_err(invalid)?
            },
        };
        t.validate().map_err(invalid)?;
        Ok(t)
    }

    fn of(name: &str, t: &RouteTable) -> RouteTableOpts {
        RouteTableOpts {
            name: name.to_string(),
            epoch: t.epoch,
            placement: match t.placement {
                Placement::Hash => PlacementJson::Hash,
                Placement::Ceph { object_size } => PlacementJson::Ceph { object_size },
            },
            members: t.members.clone(),
            owners: Some(t.owners.clone()),
            slots: None,
        }
    }
}

fn invalid(e: pov_proto::route::RouteTableError) -> DaemonError {
    DaemonError::Invalid(e.to_string())
}

impl Daemon {
    /// The route table of device or volume `name`.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such device.
    pub fn routes(&self, name: &str) -> Result<RouteControl, DaemonError> {
        self.devices()
            .get(name)
            .map(|e| e.routes.clone())
            .ok_or_else(|| DaemonError::NotFound { kind: "device or volume", name: name.to_string() })
    }

    /// The `pov_route_set_table` calls that restore every device's table in force.
    pub(crate) fn save_routes(&self) -> Vec<Value> {
        self.devices()
            .values()
            .filter_map(|e| {
                e.routes.get().map(|t| json!({ "method": "pov_route_set_table", "params": RouteTableOpts::of(&e.name, &t) }))
            })
            .collect()
    }
}

fn pov_route_set_table(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: RouteTableOpts = params(p)?;
    let t = o.table()?;
    let routes = d.routes(&o.name)?;
    log::info!("{}: route table set: epoch {}, {} members, {} slots", o.name, t.epoch, t.members.len(), t.slots());
    routes.set(Some(t));
    Ok(json!(true))
}

fn pov_route_get_table(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: NameOpts = params(p)?;
    Ok(match d.routes(&o.name)?.get() {
        Some(t) => json!(RouteTableOpts::of(&o.name, &t)),
        None => json!({ "name": o.name, "epoch": 0 }),
    })
}

fn pov_route_clear_table(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: NameOpts = params(p)?;
    d.routes(&o.name)?.set(None);
    log::info!("{}: route table cleared (queues keep a home proxy)", o.name);
    Ok(json!(true))
}

/// `pov_proxy_get_proxies`: the device's proxy connections (its configured ones and
/// members the route table added), each with its state and counters, and the route
/// epoch.
fn pov_proxy_get_proxies(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: NameOpts = params(p)?;
    let routes = d.routes(&o.name)?;
    let all = d.all_devices_json(Some(&o.name))?;
    let stats = all.get(0).and_then(|e| e.get("stats")).cloned().unwrap_or(Value::Null);
    let table = routes.get();
    let mut proxies = stats.get("proxies").cloned().unwrap_or_else(|| json!([]));
    if let (Some(list), Some(t)) = (proxies.as_array_mut(), &table) {
        for p in list.iter_mut() {
            let ep = p.get("endpoint").and_then(Value::as_str).unwrap_or_default().to_string();
            let member = t.members.iter().position(|m| pov_runtime::Endpoint::parse(m).is_ok_and(|e| e.to_string() == ep));
            p["member"] = json!(member);
            p["slots_owned"] = json!(member.map_or(0, |m| t.owners.iter().filter(|&&o| o as usize == m).count()));
        }
    }
    Ok(json!({ "name": o.name, "route_epoch": table.map_or(0, |t| t.epoch), "proxies": proxies }))
}
