//! A small JSON-RPC 2.0 client for the control socket (used by `pov-rpc` and tests).

use super::RpcError;
use serde_json::{json, Value};
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why a call did not return a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket failed (connect, write, read, timeout).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server's answer is not a JSON-RPC response to this call.
    #[error("bad response: {0}")]
    Protocol(String),
    /// The server answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
}

/// One connection to the control socket; calls are sent one at a time.
pub struct RpcClient {
    writer: UnixStream,
    responses: serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<UnixStream>>, Value>,
    next_id: u64,
}

impl RpcClient {
    /// Connects to `path`; every read waits at most `timeout` (`None`: forever).
    ///
    /// # Errors
    /// The connect or socket-option error.
    pub fn connect(path: &Path, timeout: Option<Duration>) -> io::Result<RpcClient> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(timeout)?;
        let r = s.try_clone()?;
        Ok(RpcClient { writer: s, responses: serde_json::Deserializer::from_reader(BufReader::new(r)).into_iter(), next_id: 1 })
    }

    /// Calls `method` with `params` (`None`: no params member) and waits for its answer.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] if the server answered with an error, else an I/O or
    /// protocol error.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "jsonrpc": "2.0", "id": id, "method": method });
        if let Some(p) = params {
            req["params"] = p;
        }
        self.writer.write_all(req.to_string().as_bytes())?;
        let resp = match self.responses.next() {
            None => return Err(ClientError::Protocol("connection closed".into())),
            Some(Err(e)) if e.is_io() => return Err(ClientError::Io(e.into())),
            Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            Some(Ok(v)) => v,
        };
        if resp.get("id") != Some(&json!(id)) {
            if let Some(e) = resp.get("error") {
                return Err(rpc_error(e));
            }
            return Err(ClientError::Protocol(format!("unexpected response {resp}")));
        }
        if let Some(e) = resp.get("error") {
            return Err(rpc_error(e));
        }
        resp.get("result").cloned().ok_or_else(|| ClientError::Protocol(format!("no result in {resp}")))
    }
}

fn rpc_error(e: &Value) -> ClientError {
    match serde_json::from_value::<RpcError>(e.clone()) {
        Ok(e) => ClientError::Rpc(e),
        Err(_) => ClientError::Protocol(format!("malformed error {e}")),
    }
}

/// Connects, calls `method` once and disconnects.
///
/// # Errors
/// As [`RpcClient::connect`] and [`RpcClient::call`].
pub fn call(path: &Path, method: &str, params: Option<Value>, timeout: Option<Duration>) -> Result<Value, ClientError> {
    RpcClient::connect(path, timeout)?.call(method, params)
}
