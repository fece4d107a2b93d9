//! Replaying a saved configuration at start-up (SPDK's `load_config`).
//!
//! Two shapes are accepted:
//! * SPDK's: `{"subsystems": [{"subsystem": NAME, "config": [CALL, ...] | null}, ...]}`
//!   (what `save_config` writes);
//! * a plain list: `[CALL, ...]`;
//!
//! where `CALL` is `{"method": NAME, "params": {...}}` (`params` optional). Calls run
//! in order through the same dispatcher as the JSON-RPC server; the first failure
//! stops the replay. During a replay a plain volume whose proxies do not answer yet is
//! created anyway and opens its backing volume in the background (its state shows in
//! `pov_device_get_devices`), so a DPU restarting while a proxy is down comes back.

use crate::daemon::Daemon;
use crate::rpc::{self, RpcError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Why a configuration could not be replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("config {path} is not valid JSON")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The JSON does not have one of the accepted shapes.
    #[error("config: {0}")]
    Shape(String),
    /// A call failed.
    #[error("config call #{index} ({method}) failed: {error}")]
    Call {
        /// 0-based position of the call.
        index: usize,
        /// Its method.
        method: String,
        /// The error it returned.
        error: RpcError,
    },
}

/// One call of a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCall {
    /// Method name.
    pub method: String,
    /// Parameters (`None` if absent).
    pub params: Option<Value>,
}

fn parse_call(v: &Value) -> Result<ConfigCall, ConfigError> {
    let obj = v.as_object().ok_or_else(|| ConfigError::Shape(format!("a call must be an object, got {v}")))?;
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| ConfigError::Shape(format!("call without a string \"method\": {v}")))?;
    if let Some(k) = obj.keys().find(|k| *k != "method" && *k != "params") {
        return Err(ConfigError::Shape(format!("unknown member {k:?} in call {method}")));
    }
    Ok(ConfigCall { method: method.to_string(), params: obj.get("params").cloned() })
}

/// The calls of a configuration, in order.
///
/// # Errors
/// [`ConfigError::Shape`] if `v` is neither shape.
pub fn calls(v: &Value) -> Result<Vec<ConfigCall>, ConfigError> {
    match v {
        Value::Array(list) => list.iter().map(parse_call).collect(),
        Value::Object(o) => {
            let subsystems = o
                .get("subsystems")
                .and_then(Value::as_array)
                .ok_or_else(|| ConfigError::Shape("expected {\"subsystems\": [...]} or a list of calls".into()))?;
            let mut out = Vec::new();
            for s in subsystems {
                match s.get("config") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(list)) => {
                        for c in list {
                            out.push(parse_call(c)?);
                        }
                    }
                    Some(other) => return Err(ConfigError::Shape(format!("subsystem config must be a list, got {other}"))),
                }
            }
            Ok(out)
        }
        _ => Err(ConfigError::Shape("expected {\"subsystems\": [...]} or a list of calls".into())),
    }
}

/// Replays a configuration; returns the number of calls made.
///
/// # Errors
/// [`ConfigError::Shape`] for a malformed document (nothing is run), or the first
/// failing call's [`ConfigError::Call`] (earlier calls stay applied).
pub fn load_config(daemon: &Daemon, v: &Value) -> Result<usize, ConfigError> {
    let list = calls(v)?;
    daemon.set_replaying(true);
    let run = list.iter().enumerate().try_for_each(|(index, c)| {
        rpc::call(daemon, &c.method, c.params.clone()).map(|_| ()).map_err(|error| ConfigError::Call {
            index,
            method: c.method.clone(),
            error,
        })
    });
    daemon.set_replaying(false);
    run.map(|()| list.len())
}

/// Reads and replays a configuration file.
///
/// # Errors
/// As [`load_config`], plus [`ConfigError::Read`] and [`ConfigError::Json`].
pub fn load_config_file(daemon: &Daemon, path: &Path) -> Result<usize, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let v: Value = serde_json::from_slice(&text).map_err(|source| ConfigError::Json { path: path.to_path_buf(), source })?;
    load_config(daemon, &v)
}
