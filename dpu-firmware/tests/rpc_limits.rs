//! Resource limits of the real `pov-dpud`'s control socket under attack
//! (docs/security.md, "Resource limits"): thousands of idle clients cannot take its
//! threads (before the poll-based server: one thread per client, 3010 threads for
//! 3000 clients) and an established client keeps being answered; half requests and
//! silent clients time out; oversized batches, requests and answers get clear errors.

use pov_dpu_firmware::rpc::client::{ClientError, RpcClient};
use pov_dpu_firmware::rpc::codes;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon, killed when the test ends (pass or fail).
struct Dpud {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Dpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dpud {
    fn spawn(args: &[&str]) -> Dpud {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("rpc.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pov-dpud"))
            .arg("--rpc-socket")
            .arg(&sock)
            .args(["--reactors", "1", "--log-level", "error"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = rx.recv_timeout(TIMEOUT).expect("no ready line from pov-dpud");
        assert!(ready.starts_with("pov-dpud ready"), "{ready}");
        Dpud { child, sock, _dir: dir }
    }

    fn threads(&self) -> usize {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
    }

    /// Adds the key `k` (a 0600 file in the daemon's directory) that the tests'
    /// tenants reference.
    fn add_key(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self._dir.path().join("k.key");
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
        f.write_all(b"rpc-limits-secret").unwrap();
        let p = json!({"name": "k", "path": path});
        assert_eq!(self.client().call("keyring_file_add_key", Some(p)).unwrap(), json!(true));
    }

    fn client(&self) -> RpcClient {
        RpcClient::connect(&self.sock, Some(TIMEOUT)).unwrap()
    }
}

/// The soft limit on open files of this process, raised (up to the hard limit, with
/// util-linux's `prlimit` on our own pid, which needs no unsafe code here) when it is
/// below `want`. Children inherit it.
fn raise_nofile(want: u64) -> u64 {
    let soft = || -> u64 {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        f[3].parse().unwrap_or(u64::MAX)
    };
    if soft() < want {
        let pid = std::process::id().to_string();
        let _ = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={want}:")]).status();
    }
    soft()
}

fn code(r: Result<Value, ClientError>) -> (i32, String) {
    match r {
        Err(ClientError::Rpc(e)) => (e.code, e.message),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Attack (b): 3000 clients connect and send nothing. A thread per client made that
/// 3010 threads; the poll-based server keeps its thread count (< 50: reactors, vhost,
/// the RPC poll thread and its 4 workers, signals) whatever the number of clients.
/// Beyond 64 connections new ones get error -16 ("too many connections") at once; a
/// client connected before keeps being answered throughout, and once the idle ones
/// leave new clients are served again.
#[test]
fn idle_clients_cannot_take_threads() {
    const CLIENTS: u64 = 3000;
    const THREAD_LIMIT: usize = 50;
    // Our 3000 sockets plus the test harness's own; the daemon holds at most 64 + 64
    // lingering refusals.
    let limit = raise_nofile(CLIENTS + 256);
    let clients = CLIENTS.min(limit.saturating_sub(256));
    if clients < CLIENTS {
        eprintln!("open-file limit {limit} (hard limit too low to raise): scaling to {clients} clients");
    }
    let d = Dpud::spawn(&[]);
    d.add_key();
    let mut established = d.client();
    assert!(established.call("rpc_get_methods", None).unwrap().as_array().unwrap().len() > 5);
    let threads_before = d.threads();

    let mut idle = Vec::new();
    let mut max_threads = threads_before;
    let t0 = Instant::now();
    for i in 0..clients {
        match UnixStream::connect(&d.sock) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("client {i}: connect: {e}"),
        }
        if i % 250 == 0 {
            max_threads = max_threads.max(d.threads());
            assert!(max_threads < THREAD_LIMIT, "pov-dpud has {max_threads} threads with {i} idle clients");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    max_threads = max_threads.max(d.threads());
    assert!(max_threads < THREAD_LIMIT, "pov-dpud has {max_threads} threads with {clients} idle clients");

    // The established client is answered while the idle ones are connected.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let name = format!("t{i}");
        assert_eq!(established.call("pov_tenant_create", Some(json!({"name": name, "key": "k"}))).unwrap(), json!(true));
        let tenants = established.call("pov_tenant_get_tenants", None).unwrap();
        assert_eq!(tenants.as_array().unwrap().len(), i + 1);
        latencies.push(t.elapsed());
    }
    let max_latency = latencies.iter().max().copied().unwrap();
    assert!(max_latency < Duration::from_secs(2), "established client: max latency {max_latency:?}");
    // A new client at the limit gets a clear error, not a hang.
    let t = Instant::now();
    let (c, msg) = code(d.client().call("rpc_get_methods", None));
    assert_eq!(c, codes::EBUSY, "{msg}");
    assert!(msg.contains("too many connections"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // The idle clients leave: new clients are served again.
    drop(idle);
    let t = Instant::now();
    loop {
        match d.client().call("pov_tenant_get_tenants", None) {
            Ok(v) => {
                assert_eq!(v.as_array().unwrap().len(), 20);
                break;
            }
            Err(ClientError::Rpc(e)) if e.code == codes::EBUSY && t.elapsed() < TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("after the idle clients left: {e}"),
        }
    }
    let threads_after = d.threads();
    eprintln!(
        "pov-dpud threads: {threads_before} before, max {max_threads} with {clients} idle clients (opened in {:?}), \
         {threads_after} after; established client max latency {max_latency:?}",
        t0.elapsed()
    );
}

/// Reads one `\n`-terminated JSON value from `s`.
fn read_value(s: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
}

/// Waits until the daemon closes `s`; returns how long that took.
fn time_to_close(s: &mut impl Read, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut b = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s
}

/// Attack (c) on the control socket: half a request and silence are closed after
/// `--rpc-idle-timeout` (the half request with a -32600 error saying so); a batch
/// over `--rpc-max-batch` gets one -32600 error and runs none of its calls, and the
/// connection goes on; a request over 16 MiB gets a -32600 error and the connection
/// is closed; an answer over `--rpc-max-response-bytes` becomes a -32603 error.
#[test]
fn half_requests_time_out_and_oversized_input_gets_clear_errors() {
    let d = Dpud::spawn(&["--rpc-idle-timeout", "1", "--rpc-max-batch", "8", "--rpc-max-response-bytes", "2048"]);
    d.add_key();
    let mut half = connect(&d.sock);
    half.write_all(br#"{"jsonrpc":"2.0","id":1,"meth"#).unwrap();
    let silent = connect(&d.sock);
    let t = Instant::now();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(half);
    let v = read_value(&mut r);
    assert_eq!(v["error"]["code"], codes::INVALID_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("incomplete"), "{v}");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(5), "half request answered after {took:?}");
    assert!(time_to_close(&mut r, Duration::from_secs(5)).is_some(), "half request: not closed");
    let mut silent = BufReader::new(silent);
    assert!(time_to_close(&mut silent, Duration::from_secs(5)).is_some(), "silent client: not closed");

    // Batches: 9 calls are refused whole, 8 run; the connection goes on.
    let batch = |n: usize, prefix: &str| -> Vec<u8> {
        let calls: Vec<Value> = (0..n)
            .map(|i| {
                let name = format!("{prefix}-tenant-with-a-long-name-{i:03}");
                json!({"jsonrpc": "2.0", "id": i, "method": "pov_tenant_create", "params": {"name": name, "key": "k"}})
            })
            .collect();
        serde_json::to_vec(&calls).unwrap()
    };
    let s = connect(&d.sock);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(&batch(9, "x")).unwrap();
    let v = read_value(&mut r);
    assert_eq!(v["error"]["code"], codes::INVALID_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("batch of 9 calls exceeds the limit of 8"), "{v}");
    for k in 0..12 {
        w.write_all(&batch(8, &format!("b{k}"))).unwrap();
        let v = read_value(&mut r);
        assert_eq!(v.as_array().map(Vec::len), Some(8), "{v}");
        assert!(v.as_array().unwrap().iter().all(|a| a["result"] == json!(true)), "{v}");
    }
    // 96 tenants with long names: listing them takes more than 2048 bytes.
    w.write_all(br#"{"jsonrpc":"2.0","id":"list","method":"pov_tenant_get_tenants"}"#).unwrap();
    let v = read_value(&mut r);
    assert_eq!((v["id"].clone(), v["error"]["code"].clone()), (json!("list"), json!(codes::INTERNAL_ERROR)), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("exceeds the limit"), "{v}");
    assert!(!v.to_string().contains("x-tenant"), "the refused batch ran no call");
    assert!(d.client().call("rpc_get_methods", None).unwrap().as_array().unwrap().len() > 5);

    // A request over 16 MiB: an error, then the connection is closed.
    let s = connect(&d.sock);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut big = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"p":""#.to_vec();
        big.resize(big.len() + (17 << 20), b'a');
        // The daemon stops reading at the limit: this write fails (broken pipe) or
        // blocks until the connection is closed.
        let _ = w.write_all(&big);
    });
    let mut r = BufReader::new(s);
    let v = read_value(&mut r);
    assert_eq!(v["error"]["code"], codes::INVALID_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("larger than 16777216 bytes"), "{v}");
    assert!(time_to_close(&mut r, Duration::from_secs(5)).is_some(), "huge request: not closed");
    writer.join().unwrap();
    let (c, msg) = code(d.client().call("pov_tenant_get_tenants", None));
    assert_eq!(c, codes::INTERNAL_ERROR, "listing still over the answer limit: {msg}");
    assert!(d.threads() < 50);
}
