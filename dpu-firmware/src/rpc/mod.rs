//! JSON-RPC 2.0 control server on a unix socket, with SPDK's conventions.
//!
//! * Framing: JSON values back to back on the stream (no newline needed); each
//!   response is one JSON object followed by `\n`. A batch (array) is answered with an
//!   array; a notification (no `id`) gets no answer. After a syntax error the server
//!   answers -32700 and closes the connection (the stream cannot be resynchronized).
//! * Serving ([`RpcServer`], `server.rs`): one poll-based thread for all connections
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
//! | `framework_get_reactors`, `thread_get_stats`, `thread_get_pollers`, `bdev_get_bdevs`, `bdev_get_iostat`, `spdk_get_version`, `log_set_level`, `log_get_level`, `pov_get_reactors` | see [`crate::stats`] | |
//! | `pov_tenant_create` | `name`, `secret` | `true` |
//! | `pov_tenant_delete` | `name` | `true` |
//! | `pov_tenant_get_tenants` | — | `[{"name"}]` |
//! | `pov_device_create` | see [`DeviceCreateOpts`] | the device name |
//! | `pov_device_delete` | `name` | `true` |
//! | `pov_device_get_devices` | `name?` | `[DeviceInfo]` (`"kind": "pov"`) then `[VolumeInfo]` (`"kind": "volume"`) |
//! | `pov_volume_create` | see [`VolumeCreateOpts`] | `true` |
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

pub mod client;
pub mod scan;
mod server;

pub use server::{
    RpcLimits, RpcServer, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_WORKERS, MIN_RESPONSE_BYTES,
};

use crate::daemon::{Daemon, DaemonError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Default control socket path.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/pov-dpu.sock";

/// Largest request (one JSON value) accepted, bytes (the default of
/// [`RpcLimits::max_request_bytes`]); a longer one is answered with -32600 and its
/// connection closed.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// JSON-RPC error codes used by the server.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Bad parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The call failed inside the daemon.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// No such object (SPDK: `-ENODEV`).
    pub const ENODEV: i32 = -19;
    /// Object exists (SPDK: `-EEXIST`).
    pub const EEXIST: i32 = -17;
    /// The server is at its connection limit; try again later (`-EBUSY`).
    pub const EBUSY: i32 = -16;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// Error code (see [`codes`]).
    pub code: i32,
    /// Human-readable message.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    pub(crate) fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(codes::INVALID_PARAMS, message)
    }
}

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
pub type Handler = fn(&Daemon, Option<Value>) -> Result<Value, RpcError>;

/// The framework methods (SPDK's).
const FRAMEWORK: &[(&str, Handler)] = &[
    ("rpc_get_methods", rpc_get_methods),
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
    for k in crate::kinds::KINDS {
        all.extend_from_slice(k.methods());
    }
    all
}

/// Names of every method.
pub fn method_names() -> Vec<&'static str> {
    methods().into_iter().map(|(n, _)| n).collect()
}

/// Decodes `params` (absent or `null` = `{}`; must otherwise be an object).
pub(crate) fn params<T: DeserializeOwned>(p: Option<Value>) -> Result<T, RpcError> {
    let v = match p {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::invalid_params("params must be an object")),
    };
    serde_json::from_value(v).map_err(|e| RpcError::invalid_params(format!("invalid parameters: {e}")))
}

/// Parameters of calls that take none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoOpts {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethodsOpts {
    #[serde(default)]
    #[allow(dead_code)]
    current: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    include_aliases: Option<bool>,
}

fn rpc_get_methods(_d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: GetMethodsOpts = params(p)?;
    Ok(json!(method_names()))
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
    let Some((_, handler)) = methods().into_iter().find(|(n, _)| *n == method) else {
        return Err(RpcError::new(codes::METHOD_NOT_FOUND, format!("Method not found: {method}")));
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(daemon, params))) {
        Ok(r) => r,
        Err(_) => {
            log::error!("RPC {method} panicked");
            Err(RpcError::new(codes::INTERNAL_ERROR, format!("{method}: internal error")))
        }
    }
}

fn error_response(id: Value, e: RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

/// Answers one decoded JSON value (a request or a batch). `None`: nothing to send
/// (notifications only).
pub fn handle_value(daemon: &Daemon, v: Value) -> Option<Value> {
    match v {
        Value::Array(batch) if batch.is_empty() => {
            Some(error_response(Value::Null, RpcError::new(codes::INVALID_REQUEST, "Invalid request: empty batch")))
        }
        Value::Array(batch) => {
            let out: Vec<Value> = batch.into_iter().filter_map(|r| handle_request(daemon, r)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => handle_request(daemon, v),
    }
}

fn handle_request(daemon: &Daemon, v: Value) -> Option<Value> {
    let invalid =
        |id: Value, why: &str| Some(error_response(id, RpcError::new(codes::INVALID_REQUEST, format!("Invalid request: {why}"))));
    let Value::Object(mut req) = v else { return invalid(Value::Null, "not an object") };
    let id = req.remove("id");
    if let Some(i) = &id {
        if !(i.is_string() || i.is_number() || i.is_null()) {
            return invalid(Value::Null, "id must be a string, a number or null");
        }
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(reply_id, "jsonrpc must be \"2.0\"");
    }
    let Some(Value::String(method)) = req.remove("method") else { return invalid(reply_id, "method must be a string") };
    let result = call(daemon, &method, req.remove("params"));
    id.as_ref()?;
    Some(match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": reply_id, "result": r }),
        Err(e) => {
            log::debug!("RPC {method}: {e}");
            error_response(reply_id, e)
        }
    })
}
