//! `pov-proxy --rpc-socket`: the control socket answers with the live counters of the
//! traffic the test sends, changes the log level at run time, survives a hostile
//! client, refuses a second proxy on its path and is removed at exit.

use pov_jsonrpc::client::{call as rpc, ClientError, RpcClient};
use pov_jsonrpc::codes;
use pov_proto::io::{flags, Op};
use pov_proto::Status;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

mod common;
use common::{spawn, wait_exit, TIMEOUT};

fn stop(mut child: Child) -> std::process::ExitStatus {
    common::signal(&child, "TERM");
    wait_exit(&mut child)
}

fn request(addr: &str, tenant: &str, op: Op, path: &str, fl: u32, payload: &[u8]) -> Status {
    common::request(addr, tenant, op, path, fl, payload).status
}

fn call(sock: &Path, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
    rpc(sock, method, params, Some(TIMEOUT))
}

fn code(r: Result<Value, ClientError>) -> i32 {
    match r {
        Err(ClientError::Rpc(e)) => e.code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[test]
fn counters_log_level_and_hostile_clients() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let backend = format!("local:{}", dir.path().join("data").display());
    let (child, addr) =
        spawn(&["--listen", "tcp:127.0.0.1:0", "--backend", &backend, "--reactors", "2", "--rpc-socket", sock.to_str().unwrap()]);

    // Traffic of two tenants: alpha 3 requests (one a NotFound), beta 1.
    assert_eq!(request(&addr, "alpha", Op::Open, "f", flags::CREATE | flags::WRITE, &[]), Status::Ok);
    assert_eq!(request(&addr, "alpha", Op::Append, "f", 0, &[7u8; 1000]), Status::Ok);
    assert_eq!(request(&addr, "alpha", Op::Open, "missing", 0, &[]), Status::NotFound);
    assert_eq!(request(&addr, "beta", Op::Open, "g", flags::CREATE | flags::WRITE, &[]), Status::Ok);

    let methods = call(&sock, "rpc_get_methods", None).unwrap();
    for m in ["proxy_get_stats", "proxy_get_tenants", "log_set_level", "framework_get_reactors", "spdk_get_version"] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{m} missing from {methods}");
    }

    let help = call(&sock, "rpc_get_method_help", Some(json!({"name": "proxy_get_tenants"}))).unwrap();
    assert!(help["help"].as_str().unwrap().starts_with("name?"), "{help}");
    assert_eq!(code(call(&sock, "rpc_get_method_help", Some(json!({"name": "bdev_get_iostat"})))), codes::ENODEV);

    let stats = call(&sock, "proxy_get_stats", None).unwrap();
    assert_eq!(stats["listen"], json!(addr));
    assert_eq!(stats["backend"], "local");
    assert_eq!(stats["server"]["frames"], 4, "{stats}");
    assert_eq!(stats["server"]["connections_accepted"], 4, "{stats}");

    let alpha = call(&sock, "proxy_get_tenants", Some(json!({"name": "alpha"}))).unwrap();
    let a = &alpha[0];
    assert_eq!(alpha.as_array().unwrap().len(), 1);
    assert_eq!((a["tenant"].clone(), a["requests"].clone(), a["errors"].clone()), (json!("alpha"), json!(3), json!(1)), "{a}");
    assert_eq!(a["write_bytes"], 1000, "{a}");
    assert_eq!((a["by_op"]["open"].clone(), a["by_op"]["append"].clone()), (json!(2), json!(1)), "{a}");
    assert_eq!(a["errors_by_status"]["not_found"], 1, "{a}");
    assert_eq!(a["latency"]["count"], 3, "{a}");
    let all = call(&sock, "proxy_get_tenants", None).unwrap();
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|t| t["tenant"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(code(call(&sock, "proxy_get_tenants", Some(json!({"name": "gamma"})))), codes::ENODEV);
    assert_eq!(code(call(&sock, "proxy_get_tenants", Some(json!({"nmae": "alpha"})))), codes::INVALID_PARAMS);
    assert_eq!(call(&sock, "proxy_get_volumes", None).unwrap(), json!([]));

    let reactors = call(&sock, "framework_get_reactors", None).unwrap();
    assert_eq!(reactors["reactors"].as_array().unwrap().len(), 2, "{reactors}");
    assert_eq!(reactors["tick_rate"], 1_000_000_000u64);

    assert_eq!(call(&sock, "log_get_level", None).unwrap(), "INFO");
    assert_eq!(call(&sock, "log_set_level", Some(json!({"level": "DEBUG"}))).unwrap(), json!(true));
    assert_eq!(call(&sock, "log_get_level", None).unwrap(), "DEBUG");
    assert_eq!(code(call(&sock, "log_set_level", Some(json!({"level": "verbose"})))), codes::INVALID_PARAMS);
    assert_eq!(code(call(&sock, "bdev_get_iostat", None)), codes::METHOD_NOT_FOUND);

    // A hostile client: garbage is answered with a parse error and the connection
    // closed; half a request held open does not stop others from being served.
    let mut bad = UnixStream::connect(&sock).unwrap();
    bad.set_read_timeout(Some(TIMEOUT)).unwrap();
    bad.write_all(b"}{ not json").unwrap();
    let mut answer = String::new();
    bad.read_to_string(&mut answer).unwrap();
    let v: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(v["error"]["code"], codes::PARSE_ERROR, "{answer}");
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(br#"{"jsonrpc": "2.0", "id": 1, "method": "proxy_get_st"#).unwrap();
    let mut c = RpcClient::connect(&sock, Some(TIMEOUT)).unwrap();
    assert_eq!(c.call("proxy_get_stats", None).unwrap()["server"]["frames"], 4);
    drop(half);

    // A second proxy on the same control socket refuses to start; the first serves on.
    let out = Command::new(env!("CARGO_BIN_EXE_pov-proxy"))
        .args(["--listen", "tcp:127.0.0.1:0", "--backend", "null", "--rpc-socket", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--rpc-socket") && err.contains("in use"), "{err}");
    assert_eq!(call(&sock, "log_get_level", None).unwrap(), "DEBUG");

    assert!(stop(child).success());
    assert!(!sock.exists(), "the socket file is removed at exit");
}
