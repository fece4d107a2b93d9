//! A small JSON-RPC 2.0 client for a control socket (used by `pov-rpc` and tests).

use crate::RpcError;
use serde_json::{json, Value};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// Largest parameters document `pov-rpc` reads from a file or standard input, bytes.
pub const MAX_PARAMS_BYTES: u64 = 16 << 20;

/// Why `pov-rpc`'s parameters could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// The file (or standard input) could not be read.
    #[error("cannot read parameters from {from}")]
    Read {
        /// The file, or `standard input`.
        from: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file (or standard input) holds more than [`MAX_PARAMS_BYTES`].
    #[error("parameters from {0} exceed {MAX_PARAMS_BYTES} bytes")]
    TooLarge(String),
    /// The text is not JSON.
    #[error("parameters {from}are not valid JSON")]
    Json {
        /// Where they came from (`"from FILE "`, or empty for an argument).
        from: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// `pov-rpc`'s parameters from its argument: `None` (no argument: no parameters),
/// `-` (JSON read from `stdin`), `@FILE` (JSON read from FILE) or the JSON text itself.
/// Reading from a file or standard input keeps parameters off the command line; the
/// text read is wiped from memory once parsed.
///
/// # Errors
/// [`ParamsError`]: unreadable, too large, or not JSON.
pub fn params_from_arg(arg: Option<&str>, stdin: impl Read) -> Result<Option<Value>, ParamsError> {
    let Some(arg) = arg else { return Ok(None) };
    let (text, from) = match arg {
        "-" => (read_limited(stdin, "standard input")?, "from standard input ".to_string()),
        a if a.starts_with('@') => {
            let path = PathBuf::from(&a[1..]);
            let from = path.display().to_string();
            let f = std::fs::File::open(&path).map_err(|source| ParamsError::Read { from: from.clone(), source })?;
            (read_limited(f, &from)?, format!("from {from} "))
        }
        a => return serde_json::from_str(a).map(Some).map_err(|source| ParamsError::Json { from: String::new(), source }),
    };
    serde_json::from_slice(&text).map(Some).map_err(|source| ParamsError::Json { from, source })
}

/// Everything `r` yields, at most [`MAX_PARAMS_BYTES`], in a buffer wiped on drop.
fn read_limited(r: impl Read, from: &str) -> Result<Zeroizing<Vec<u8>>, ParamsError> {
    // Whole capacity up front: a buffer that grows leaves unwiped copies behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(64 << 10));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    let mut r = r.take(MAX_PARAMS_BYTES + 1);
    loop {
        match r.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => {
                if buf.len() + n > buf.capacity() {
                    let mut bigger = Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(buf.len() + n)));
                    bigger.extend_from_slice(&buf);
                    buf = bigger;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ParamsError::Read { from: from.to_string(), source }),
        }
    }
    if buf.len() as u64 > MAX_PARAMS_BYTES {
        return Err(ParamsError::TooLarge(from.to_string()));
    }
    Ok(buf)
}

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
        let mut text = req.to_string();
        let sent = self.writer.write_all(text.as_bytes());
        text.zeroize();
        if let Err(e) = sent {
            // A server that refuses the connection (too many connections) writes its
            // error and may close before our request is written: read that error
            // rather than report the broken pipe.
            if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                if let Some(Ok(resp)) = self.responses.next() {
                    if let Some(err) = resp.get("error") {
                        return Err(rpc_error(err));
                    }
                }
            }
            return Err(e.into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_inline_from_a_file_or_stdin() {
        let none: &[u8] = b"";
        assert_eq!(params_from_arg(None, none).unwrap(), None);
        assert_eq!(params_from_arg(Some(r#"{"a":1}"#), none).unwrap(), Some(json!({"a": 1})));
        let stdin: &[u8] = br#"{"name": "k", "path": "/x"}"#;
        assert_eq!(params_from_arg(Some("-"), stdin).unwrap(), Some(json!({"name": "k", "path": "/x"})));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, "{\"b\": [1, 2]}\n").unwrap();
        assert_eq!(params_from_arg(Some(&format!("@{}", f.display())), none).unwrap(), Some(json!({"b": [1, 2]})));
        let e = params_from_arg(Some("@/nonexistent/p.json"), none).unwrap_err();
        assert!(matches!(e, ParamsError::Read { .. }) && e.to_string().contains("/nonexistent/p.json"), "{e}");
        let bad: &[u8] = b"{not json";
        assert!(matches!(params_from_arg(Some("-"), bad), Err(ParamsError::Json { .. })));
        assert!(matches!(params_from_arg(Some("{x"), none), Err(ParamsError::Json { .. })));
        // A large document grows the buffer (through wiped copies) and still parses.
        let big = format!("{{\"s\": \"{}\"}}", "x".repeat(200_000));
        assert_eq!(params_from_arg(Some("-"), big.as_bytes()).unwrap().unwrap()["s"].as_str().unwrap().len(), 200_000);
    }

    /// A server that refuses a connection writes its error and closes before reading
    /// the request: the caller gets that error, not the broken pipe of its write.
    #[test]
    fn a_refusal_written_before_the_request_is_reported() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-16,\"message\":\"too many connections\"}}\n")
                .unwrap();
        });
        let mut c = RpcClient::connect(&path, Some(Duration::from_secs(5))).unwrap();
        server.join().unwrap();
        // Large enough that the write cannot complete into the socket buffer before the
        // closed peer is noticed.
        let big = json!({ "s": "x".repeat(4 << 20) });
        match c.call("rpc_get_methods", Some(big)) {
            Err(ClientError::Rpc(e)) => assert_eq!((e.code, e.message.as_str()), (-16, "too many connections")),
            other => panic!("expected the server's error, got {other:?}"),
        }
    }
}
