//! JSON-RPC 2.0 control server on a unix socket, with SPDK's conventions.
//!
//! * Framing: JSON values back to back on the stream (no newline needed); each
//!   response is one JSON object followed by `\n`. A batch (array) is answered with an
//!   array; a notification (no `id`) gets no answer. After a syntax error the server
//!   answers -32700 and closes the connection (the stream cannot be resynchronized).
//! * Errors: `{"code", "message"}` with -32700 parse error, -32600 invalid request,
//!   -32601 method not found, -32602 invalid params, -32603 internal error, and SPDK's
//!   negative errnos -19 (ENODEV, no such object) and -17 (EEXIST, already exists).
//! * Methods are `<subsystem>_<object>_<verb>`; each decodes its parameters into an
//!   options struct (unknown fields rejected) and calls the [`Daemon`] API. The method
//!   table is assembled from the modules that own the methods ([`methods`]): the
//!   framework methods here, [`crate::tenant`], [`crate::gathering`], the device
//!   registry and each device kind ([`crate::kinds`]).
//!
//! | method | params | result |
//! |---|---|---|
//! | `rpc_get_methods` | `current?`, `include_aliases?` (ignored) | method names |
//! | `framework_get_reactors` | — | see [`Daemon::reactors_info`] |
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

use crate::daemon::{Daemon, DaemonError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Default control socket path.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/pov-dpu.sock";

/// Largest request (one JSON value) accepted, bytes; a longer one closes the
/// connection.
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
    ("framework_get_reactors", framework_get_reactors),
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
    for table in [FRAMEWORK, crate::tenant::METHODS, crate::gathering::METHODS, crate::kinds::METHODS] {
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

fn framework_get_reactors(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    Ok(d.reactors_info())
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

/// A reader that fails once more than `left` bytes are read since the last reset.
struct Limited<R> {
    inner: R,
    left: Arc<AtomicUsize>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.load(Ordering::Relaxed);
        if left == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request too large"));
        }
        let n = buf.len().min(left);
        let got = self.inner.read(&mut buf[..n])?;
        self.left.fetch_sub(got, Ordering::Relaxed);
        Ok(got)
    }
}

/// Serves one client connection until it closes, then closes it (the server keeps a
/// clone of the stream for shutdown, so dropping ours would not).
fn serve_connection(daemon: &Daemon, stream: UnixStream) {
    let Ok(keep) = stream.try_clone() else { return };
    serve_requests(daemon, stream);
    let _ = keep.shutdown(std::net::Shutdown::Both);
}

fn serve_requests(daemon: &Daemon, stream: UnixStream) {
    let Ok(read_half) = stream.try_clone() else { return };
    let left = Arc::new(AtomicUsize::new(MAX_REQUEST_BYTES));
    let reader = Limited { inner: BufReader::new(read_half), left: left.clone() };
    let mut writer = stream;
    let mut values = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    loop {
        let reply = match values.next() {
            None => return,
            Some(Ok(v)) => {
                left.store(MAX_REQUEST_BYTES, Ordering::Relaxed);
                match handle_value(daemon, v) {
                    Some(r) => r,
                    None => continue,
                }
            }
            Some(Err(e)) if e.is_io() || e.is_eof() => {
                if e.is_io() {
                    log::debug!("RPC connection closed: {e}");
                }
                return;
            }
            Some(Err(e)) => error_response(Value::Null, RpcError::new(codes::PARSE_ERROR, format!("Parse error: {e}"))),
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        if writer.write_all(&bytes).is_err() {
            return;
        }
        if reply.get("error").and_then(|e| e.get("code")) == Some(&json!(codes::PARSE_ERROR)) {
            return;
        }
    }
}

struct Conn {
    stream: UnixStream,
    thread: JoinHandle<()>,
}

/// The control socket server. [`stop`](Self::stop) (or drop) closes every connection
/// and removes the socket file.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<Conn>>>,
}

impl RpcServer {
    /// Listens on `path` (a stale socket file there is replaced) and serves `daemon`.
    ///
    /// # Errors
    /// [`io::ErrorKind::AddrInUse`] if another server listens on `path` or `path` is
    /// not a socket; any error from `bind`.
    pub fn start(path: &Path, daemon: Arc<Daemon>) -> io::Result<RpcServer> {
        crate::util::claim_socket_path(path)?;
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::Builder::new().name("rpc-accept".into()).spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("RPC accept: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                let Ok(keep) = stream.try_clone() else { continue };
                let d = daemon.clone();
                let t = std::thread::Builder::new().name("rpc-conn".into()).spawn(move || serve_connection(&d, stream));
                let mut list = conns2.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|c| !c.thread.is_finished());
                match t {
                    Ok(thread) => list.push(Conn { stream: keep, thread }),
                    Err(e) => log::error!("RPC: cannot start connection thread: {e}"),
                }
            }
        })?;
        log::info!("RPC server listening on {}", path.display());
        Ok(RpcServer { path: path.to_path_buf(), stop, accept: Some(accept), conns })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (after the call it is serving) and
    /// removes the socket file.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.stop.store(true, Ordering::Release);
        let poke = UnixStream::connect(&self.path);
        let _ = accept.join();
        drop(poke);
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in &conns {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        for c in conns {
            let _ = c.thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop_all();
    }
}
