//! `pov-dpud`'s JSON-RPC 2.0 control socket (SPDK's conventions): its method table.
//! The server, framing, limits and client are [`pov_jsonrpc`]'s (shared with
//! `pov-proxy`), summarized here.
//!
//! * Framing: JSON values back to back on the stream (no newline needed); each
//!   response is one JSON object followed by `\n`. A batch (array) is answered with an
//!   array; a notification (no `id`) gets no answer. After a syntax error the server
//!   answers -32700 and closes the connection (the stream cannot be resynchronized).
//! * Serving ([`RpcServer`]): one poll-based thread for all connections
//!   and a few workers for the calls, within [`RpcLimits`]: connections (beyond the
//!   limit: -16 `EBUSY` and closed), request and answer size, calls per batch, and
//!   an idle timeout for clients that send nothing or half a request.
//! * Errors: `{"code", "message"}` with -32700 parse error, -32600 invalid request,
//!   -32601 method not found, -32602 invalid params, -32603 internal error, and SPDK's
//!   negative errnos -19 (ENODEV, no such object) and -17 (EEXIST, already exists).
//! * Methods are `<subsystem>_<object>_<verb>`; each decodes its parameters into an
//!   options struct (unknown fields rejected) and calls the [`Daemon`] API. The method
//!   table is assembled from the modules that own the methods ([`methods`]): the
//!   framework methods here, [`crate::stats`], [`crate::tenant`], [`crate::gathering`], the device
//!   registry and each device kind ([`crate::kinds`]).
//!
//! | method | params | result |
//! |---|---|---|
//! | `rpc_get_methods` | `current?`, `include_aliases?` (ignored) | method names |
//! | `rpc_get_method_help` | `name?` | `{"name", "help"}` (one line: parameters → result), or all of them (`pov-rpc help [METHOD]`) |
//! | `framework_get_reactors`, `thread_get_stats`, `thread_get_pollers`, `bdev_get_bdevs`, `bdev_get_iostat`, `spdk_get_version`, `log_set_level`, `log_get_level`, `pov_get_reactors` | see [`crate::stats`] | |
//! | `pov_tenant_create` | `name`, `secret` | `true` |
//! | `pov_tenant_delete` | `name` | `true` |
//! | `pov_tenant_get_tenants` | — | `[{"name"}]` |
//! | `pov_device_create` | see [`DeviceCreateOpts`] | the device name |
//! | `pov_device_delete` | `name` | `true` |
//! | `pov_device_get_devices` | `name?` | `[DeviceInfo]` (`"kind": "pov"`) then `[VolumeInfo]` (`"kind": "volume"`) |
//! | `pov_volume_create` | see [`VolumeCreateOpts`] | the volume name (as `pov_device_create` and SPDK's `bdev_*_create`) |
//! | `pov_volume_delete` | `name` | `true` |
//! | `pov_set_gathering` | `enabled?`, `batch_size?`, `window_us?` (see [`GatheringOpts`]) | the setting now in force |
//! | `pov_get_gathering` | — | `{"enabled", "batch_size", "window_us"}` |
//! | `save_config` | — | see [`Daemon::save_config`] |
//! | `framework_get_subsystems` | — | `[{"subsystem", "depends_on"}]` |
//! | `framework_get_config` | `name` (a subsystem) | that subsystem's calls |
//!
//! The last two are what SPDK's own client (`spdk.rpc.config.save_config`, `spdk-rpc
//! save_config`) calls: it assembles the saved configuration itself from them, so the
//! result equals this server's `save_config`.

pub use pov_jsonrpc::{
    client, codes, handle_value, params, scan, NoOpts, RpcError, RpcLimits, RpcServer, Service, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BATCH, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_WORKERS, MAX_REQUEST_BYTES,
    MIN_RESPONSE_BYTES,
};

use crate::daemon::{Daemon, DaemonError};
use pov_jsonrpc::GetMethodsOpts;
use serde::Deserialize;
use serde_json::{json, Value};

mod help;

/// Default control socket path.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/pov-dpu.sock";

impl From<DaemonError> for RpcError {
    fn from(e: DaemonError) -> RpcError {
        let code = match &e {
            DaemonError::Exists { .. } => codes::EEXIST,
            DaemonError::NotFound { .. } => codes::ENODEV,
            DaemonError::Invalid(_) => codes::INVALID_PARAMS,
            _ => codes::INTERNAL_ERROR,
        };
        RpcError::new(code, e.to_string())
    }
}

/// A JSON-RPC method: decodes its parameters and calls the daemon.
pub type Handler = pov_jsonrpc::Handler<Daemon>;

impl pov_jsonrpc::reactors::Reactors for Daemon {
    fn reactors(&self) -> &[pov_runtime::ReactorHandle] {
        Daemon::reactors(self)
    }
}

impl Service for Daemon {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        call(self, method, params)
    }
}

/// The framework methods (SPDK's).
const FRAMEWORK: &[(&str, Handler)] = &[
    ("rpc_get_methods", rpc_get_methods),
    ("rpc_get_method_help", rpc_get_method_help),
    ("save_config", save_config),
    ("framework_get_subsystems", framework_get_subsystems),
    ("framework_get_config", framework_get_config),
];

/// Every method with its handler, in the order `rpc_get_methods` lists them: the
/// framework's, the tenants', the gathering setting's, the device registry's, then
/// each device kind's.
pub fn methods() -> Vec<(&'static str, Handler)> {
    let mut all: Vec<(&'static str, Handler)> = Vec::new();
    all.extend_from_slice(crate::keyring::METHODS);
    for table in [
        FRAMEWORK,
        crate::tenant::METHODS,
        crate::gathering::METHODS,
        crate::kinds::METHODS,
        crate::routes::METHODS,
        crate::qos::METHODS,
        crate::stats::METHODS,
    ] {
        all.extend_from_slice(table);
    }
    all.extend(pov_jsonrpc::common::methods::<Daemon>());
    all.extend(pov_jsonrpc::reactors::methods::<Daemon>());
    for k in crate::kinds::KINDS {
        all.extend_from_slice(k.methods());
    }
    all
}

/// Names of every method.
pub fn method_names() -> Vec<&'static str> {
    methods().into_iter().map(|(n, _)| n).collect()
}

fn rpc_get_methods(_d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: GetMethodsOpts = params(p)?;
    Ok(json!(method_names()))
}

/// Every method's help line, in no particular order.
pub fn help_table() -> Vec<(&'static str, &'static str)> {
    [help::HELP, pov_jsonrpc::common::HELP, pov_jsonrpc::reactors::HELP].concat()
}

fn rpc_get_method_help(_d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    pov_jsonrpc::common::method_help(&[help::HELP, pov_jsonrpc::common::HELP, pov_jsonrpc::reactors::HELP], p)
}

fn save_config(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    Ok(d.save_config())
}

/// The `subsystems` array of [`Daemon::save_config`].
fn saved_subsystems(d: &Daemon) -> Vec<Value> {
    match d.save_config().get_mut("subsystems").map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

fn framework_get_subsystems(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let list =
        saved_subsystems(d).into_iter().map(|s| json!({ "subsystem": s["subsystem"].clone(), "depends_on": [] })).collect();
    Ok(Value::Array(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfigOpts {
    name: String,
    /// SPDK clients send it; this server never batches calls.
    #[serde(default)]
    #[allow(dead_code)]
    with_batches: Option<bool>,
}

fn framework_get_config(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: GetConfigOpts = params(p)?;
    saved_subsystems(d)
        .into_iter()
        .find(|s| s["subsystem"] == o.name.as_str())
        .map(|mut s| s["config"].take())
        .ok_or_else(|| RpcError::new(codes::ENODEV, format!("no subsystem named {:?}", o.name)))
}

/// Runs one method. A panic inside the method becomes an internal error.
///
/// # Errors
/// The method's [`RpcError`], or -32601 if no such method exists.
pub fn call(daemon: &Daemon, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    pov_jsonrpc::dispatch(daemon, &methods(), method, params)
}
