//! The JSON-RPC 2.0 control socket of both PoV daemons (`pov-dpud`, `pov-proxy`), with
//! SPDK's conventions, so SPDK's own client (`spdk-rpc`, `spdk.rpc.client`) and our
//! `pov-rpc` talk to either.
//!
//! * Framing ([`scan`]): JSON values back to back on the stream (no newline needed);
//!   each response is one JSON object followed by `\n`. A batch (array) is answered
//!   with an array; a notification (no `id`) gets no answer. After a syntax error the
//!   server answers -32700 and closes the connection (the stream cannot be
//!   resynchronized).
//! * Serving ([`RpcServer`]): one poll-based thread for all connections and a few
//!   workers for the calls, within [`RpcLimits`]: connections (beyond the limit: -16
//!   `EBUSY` and closed), request and answer size, calls per batch, and an idle
//!   timeout for clients that send nothing or half a request.
//! * Errors: `{"code", "message"}` with -32700 parse error, -32600 invalid request,
//!   -32601 method not found, -32602 invalid params, -32603 internal error, and SPDK's
//!   negative errnos -19 (ENODEV, no such object) and -17 (EEXIST, already exists)
//!   ([`codes`]).
//! * Methods are `<subsystem>_<object>_<verb>`; each decodes its parameters into an
//!   options struct with [`params`] (unknown fields rejected). A daemon is a
//!   [`Service`]: usually a table of `(name, `[`Handler`]`)` pairs run by
//!   [`dispatch`]. Methods every daemon has live in [`common`]
//!   (`spdk_get_version`, `log_set_level`, `log_get_level`) and [`reactors`]
//!   (`framework_get_reactors`, `thread_get_stats`, `thread_get_pollers`, …).
//!
//! The seam: the server, framing, limits and client are the same for every daemon;
//! what a daemon adds is its method table.

pub mod cli;
pub mod client;
pub mod common;
pub mod reactors;
pub mod scan;
mod server;
mod socket;

pub use server::{
    RpcLimits, RpcServer, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_WORKERS, MIN_RESPONSE_BYTES,
};
pub use socket::claim_socket_path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Largest request (one JSON value) accepted, bytes (the default of
/// [`RpcLimits::max_request_bytes`]); a longer one is answered with -32600 and its
/// connection closed.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// JSON-RPC error codes (JSON-RPC 2.0 §5.1, and SPDK's negative errnos).
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

    /// A -32602 (invalid params) error.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(codes::INVALID_PARAMS, message)
    }

    /// A -19 (`ENODEV`, no such object) error.
    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(codes::ENODEV, message)
    }
}

/// What a control socket serves: runs one call.
pub trait Service: Send + Sync + 'static {
    /// Runs `method` with `params` (`None`: the request had no `params` member).
    ///
    /// # Errors
    /// The method's error; -32601 ([`codes::METHOD_NOT_FOUND`]) for an unknown method.
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError>;
}

/// A method of a daemon whose context is `C`: decodes its parameters and acts.
pub type Handler<C> = fn(&C, Option<Value>) -> Result<Value, RpcError>;

/// Runs `method` from `table` on `ctx`. A panic inside the method becomes an internal
/// error (the worker thread and the connection survive).
///
/// # Errors
/// The method's [`RpcError`], or -32601 if `table` has no such method.
pub fn dispatch<C>(
    ctx: &C,
    table: &[(&'static str, Handler<C>)],
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let Some((_, handler)) = table.iter().find(|(n, _)| *n == method) else {
        return Err(RpcError::new(codes::METHOD_NOT_FOUND, format!("Method not found: {method}")));
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(ctx, params))) {
        Ok(r) => r,
        Err(_) => {
            log::error!("RPC {method} panicked");
            Err(RpcError::new(codes::INTERNAL_ERROR, format!("{method}: internal error")))
        }
    }
}

/// Decodes `params` (absent or `null` = `{}`; must otherwise be an object).
///
/// # Errors
/// -32602 if `params` is not an object or does not decode into `T`.
pub fn params<T: DeserializeOwned>(p: Option<Value>) -> Result<T, RpcError> {
    let v = match p {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::invalid_params("params must be an object")),
    };
    serde_json::from_value(v).map_err(|e| RpcError::invalid_params(format!("invalid parameters: {e}")))
}

/// Parameters of calls that take none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOpts {}

/// Parameters of `rpc_get_methods` (SPDK's; both are accepted and ignored: every
/// method can be called at any time, and there are no aliases to hide).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetMethodsOpts {
    /// SPDK: only the methods allowed in the current state.
    #[serde(default)]
    pub current: Option<bool>,
    /// SPDK: also deprecated aliases.
    #[serde(default)]
    pub include_aliases: Option<bool>,
}

/// `{"jsonrpc": "2.0", "id": id, "error": e}`.
pub fn error_response(id: Value, e: RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

/// Answers one decoded JSON value (a request or a batch). `None`: nothing to send
/// (notifications only).
pub fn handle_value(service: &dyn Service, v: Value) -> Option<Value> {
    match v {
        Value::Array(batch) if batch.is_empty() => {
            Some(error_response(Value::Null, RpcError::new(codes::INVALID_REQUEST, "Invalid request: empty batch")))
        }
        Value::Array(batch) => {
            let out: Vec<Value> = batch.into_iter().filter_map(|r| handle_request(service, r)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => handle_request(service, v),
    }
}

fn handle_request(service: &dyn Service, v: Value) -> Option<Value> {
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
    let result = service.call(&method, req.remove("params"));
    id.as_ref()?;
    Some(match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": reply_id, "result": r }),
        Err(e) => {
            log::debug!("RPC {method}: {e}");
            error_response(reply_id, e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    const TABLE: &[(&str, Handler<Echo>)] = &[("echo", |_, p| Ok(p.unwrap_or(Value::Null))), ("boom", |_, _| panic!("boom"))];
    impl Service for Echo {
        fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
            dispatch(self, TABLE, method, params)
        }
    }

    #[test]
    fn requests_batches_notifications_and_errors() {
        let r = handle_value(&Echo, json!({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"a": 1}})).unwrap();
        assert_eq!(r, json!({"jsonrpc": "2.0", "id": 1, "result": {"a": 1}}));
        assert_eq!(handle_value(&Echo, json!({"jsonrpc": "2.0", "method": "echo"})), None);
        let r = handle_value(&Echo, json!({"jsonrpc": "2.0", "id": "x", "method": "nope"})).unwrap();
        assert_eq!(r["error"]["code"], codes::METHOD_NOT_FOUND);
        let r = handle_value(&Echo, json!({"jsonrpc": "2.0", "id": 2, "method": "boom"})).unwrap();
        assert_eq!(r["error"]["code"], codes::INTERNAL_ERROR);
        let r = handle_value(&Echo, json!({"jsonrpc": "1.0", "id": 3, "method": "echo"})).unwrap();
        assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (json!(3), json!(codes::INVALID_REQUEST)));
        let r = handle_value(&Echo, json!({"jsonrpc": "2.0", "id": [1], "method": "echo"})).unwrap();
        assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (Value::Null, json!(codes::INVALID_REQUEST)));
        let r = handle_value(&Echo, json!([])).unwrap();
        assert_eq!(r["error"]["code"], codes::INVALID_REQUEST);
        let r = handle_value(
            &Echo,
            json!([{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": 5}, {"jsonrpc": "2.0", "method": "echo"}, 7]),
        )
        .unwrap();
        assert_eq!(r.as_array().unwrap().len(), 2, "{r}");
        assert_eq!(r[0]["result"], 5);
        assert_eq!(r[1]["error"]["code"], codes::INVALID_REQUEST);
    }

    #[test]
    fn params_must_be_an_object_of_known_fields() {
        assert!(params::<NoOpts>(None).is_ok());
        assert!(params::<NoOpts>(Some(Value::Null)).is_ok());
        assert_eq!(params::<NoOpts>(Some(json!([1]))).unwrap_err().code, codes::INVALID_PARAMS);
        let e = params::<NoOpts>(Some(json!({"x": 1}))).unwrap_err();
        assert!(e.code == codes::INVALID_PARAMS && e.message.contains("unknown field"), "{e}");
        assert!(params::<GetMethodsOpts>(Some(json!({"current": true}))).is_ok());
    }
}
