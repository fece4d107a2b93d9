//! SPDK's bdev statistics methods: what `spdk-rpc` and scripts written for SPDK ask a
//! target about its bdevs, answered from PoV's devices.
//!
//! | method | params | result |
//! |---|---|---|
//! | `bdev_get_bdevs` | `name?`, `timeout?` (ignored) | `[{"name", "aliases", "product_name", "block_size", "num_blocks", "claimed", "zoned", "supported_io_types", "driver_specific": {"pov": ..}}]` |
//! | `bdev_get_iostat` | `name?`, `per_channel?` (`true` refused) | `{"tick_rate", "ticks", "bdevs": [{"name", "bytes_read", "num_read_ops", .., "read_latency_ticks", ..}]}` |
//!
//! Shapes follow SPDK's `doc/jsonrpc.md`; ticks are nanoseconds (`tick_rate` 10⁹).
//! Every bdev is a device or volume of the registry; its IO statistics are counted by
//! the vhost-blk adapter (block IOs as the host sent them, from the descriptor chain's
//! arrival to its completion). The reactor and thread methods (`framework_get_reactors`,
//! `thread_get_stats`, `thread_get_pollers`, `pov_get_reactors`), `spdk_get_version`
//! and the log level methods are every daemon's ([`pov_jsonrpc::reactors`],
//! [`pov_jsonrpc::common`]).

use crate::daemon::{Daemon, DaemonError};
use crate::rpc::{params, Handler, RpcError};
use crate::vhost_blk::IOSTAT_TICK_RATE;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Instant;

/// The methods of this module.
pub const METHODS: &[(&str, Handler)] = &[("bdev_get_bdevs", bdev_get_bdevs), ("bdev_get_iostat", bdev_get_iostat)];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BdevOpts {
    #[serde(default)]
    name: Option<String>,
    /// SPDK waits up to this long for a bdev to appear; PoV's exist or not.
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IostatOpts {
    #[serde(default)]
    name: Option<String>,
    /// SPDK's per-io-channel breakdown; PoV counts per device only.
    #[serde(default)]
    per_channel: Option<bool>,
}

/// `(name, live counters)` of every bdev, or only `name`.
fn bdevs(d: &Daemon, name: Option<&str>) -> Result<Vec<(Value, Value)>, RpcError> {
    let all = d.all_entries(|e, stats| {
        let info = json!({
            "kind": e.kind.kind(),
            "socket": e.socket,
            "reactor": e.reactor(),
            "virtqueues": e.virtqueues,
            "clients": e.clients(),
        });
        (e.name.clone(), info, stats.get("bdev").cloned().unwrap_or(Value::Null))
    });
    let v: Vec<(Value, Value)> = all
        .into_iter()
        .filter(|(n, _, _)| name.map_or(true, |x| x == n))
        .map(|(n, info, b)| (json!({"name": n, "pov": info}), b))
        .collect();
    match name {
        Some(n) if v.is_empty() => Err(DaemonError::NotFound { kind: "bdev", name: n.to_string() }.into()),
        _ => Ok(v),
    }
}

fn bdev_get_bdevs(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: BdevOpts = params(p)?;
    let out: Vec<Value> = bdevs(d, o.name.as_deref())?
        .into_iter()
        .map(|(id, b)| {
            let product = if id["pov"]["kind"] == "pov" { "PoV device" } else { "PoV volume" };
            json!({
                "name": id["name"],
                "aliases": [],
                "product_name": product,
                "block_size": b.get("block_size").cloned().unwrap_or(Value::Null),
                "num_blocks": b.get("num_blocks").cloned().unwrap_or(Value::Null),
                "claimed": false,
                "zoned": false,
                "supported_io_types": b.get("supported_io_types").cloned().unwrap_or(Value::Null),
                "driver_specific": { "pov": id["pov"] },
            })
        })
        .collect();
    Ok(Value::Array(out))
}

/// Ticks now (ns since the first call: SPDK's `ticks` are a free-running counter).
fn ticks_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn bdev_get_iostat(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: IostatOpts = params(p)?;
    if o.per_channel == Some(true) {
        return Err(RpcError::invalid_params("per_channel: PoV keeps bdev statistics per device, not per io channel"));
    }
    let out: Vec<Value> = bdevs(d, o.name.as_deref())?
        .into_iter()
        .map(|(id, b)| {
            let mut s = b.get("iostat").cloned().unwrap_or_else(|| json!({}));
            if let Some(m) = s.as_object_mut() {
                m.insert("name".into(), id["name"].clone());
            }
            s
        })
        .collect();
    Ok(json!({ "tick_rate": IOSTAT_TICK_RATE, "ticks": ticks_now(), "bdevs": out }))
}
