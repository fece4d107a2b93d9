//! What the tests of the `pov-proxy` binary share: starting it, waiting for it to exit,
//! one request over a fresh connection.
#![allow(dead_code)]

use pov_proto::io::{Op, SdkHint};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any step of these tests may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the binary with `args` (no RUST_LOG, stderr discarded); returns it and the
/// address from its "listening on" line.
pub fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pov-proxy"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pov-proxy");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(TIMEOUT).expect("pov-proxy printed its address");
    let addr = line.strip_prefix("pov-proxy listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (child, addr.to_string())
}

/// Sends `kill -SIG` to `child`.
pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
}

/// Waits (at most [`TIMEOUT`]) for `child` to exit; kills it and fails after that.
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pov-proxy did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One request of `tenant` (session 1, tag 9) on a new connection to `addr`, and its
/// answer.
pub fn request(addr: &str, tenant: &str, op: Op, path: &str, flags: u32, payload: &[u8]) -> ProxyResponse {
    let mut t = pov_runtime::transport::connect(addr).unwrap();
    let r = ProxyRequest {
        op,
        tag: 9,
        offset: 0,
        length: 0,
        flags,
        hint: SdkHint::default(),
        trace: false,
        qos: 0,
        load: 0,
        epoch: 0,
        session_id: 1,
        tenant: tenant.into(),
        path: path.into(),
        grant: Default::default(),
    };
    let mut f = Vec::new();
    r.encode_frame(payload, &mut f).unwrap();
    t.send_frame(&f).unwrap();
    let mut got = None;
    let deadline = Instant::now() + TIMEOUT;
    while got.is_none() {
        assert!(Instant::now() < deadline, "no answer");
        if !t.poll(&mut |b| got = Some(ProxyResponse::decode(b).unwrap().0)).unwrap() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got.unwrap()
}
