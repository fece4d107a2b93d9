//! JSON-RPC control server over a real unix socket, and configuration replay. Devices
//! are `MemDisk`s (the daemon's device factory is a test double), so nothing here
//! depends on a proxy.

use pov_dpu_firmware::config::{load_config, ConfigError};
use pov_dpu_firmware::daemon::Daemon;
use pov_dpu_firmware::fuzz::memdisk_factory;
use pov_dpu_firmware::rpc::client::{ClientError, RpcClient};
use pov_dpu_firmware::rpc::{codes, RpcServer};
use pov_runtime::{ReactorConfig, Runtime};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Env {
    dir: tempfile::TempDir,
    rt: Option<Runtime>,
    daemon: Arc<Daemon>,
    server: Option<RpcServer>,
    sock: PathBuf,
}

impl Env {
    fn new() -> Env {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::start(&[None, None], ReactorConfig::default()).unwrap();
        let daemon = Arc::new(Daemon::new(rt.reactors().to_vec(), memdisk_factory()));
        let sock = dir.path().join("rpc.sock");
        let server = RpcServer::start(&sock, daemon.clone()).unwrap();
        Env { dir, rt: Some(rt), daemon, server: Some(server), sock }
    }

    fn client(&self) -> RpcClient {
        RpcClient::connect(&self.sock, Some(Duration::from_secs(10))).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `secret` to the key file `name` (mode 0600) in the test's directory.
    fn key_file(&self, name: &str, secret: &str) -> PathBuf {
        key_file(self.dir.path(), name, secret.as_bytes(), 0o600)
    }

    /// A key file holding `secret`, added to the keyring as key `name`.
    fn add_key(&self, c: &mut RpcClient, name: &str, secret: &str) -> PathBuf {
        let path = self.key_file(&format!("{name}.key"), secret);
        assert_eq!(c.call("keyring_file_add_key", Some(json!({"name": name, "path": path}))).unwrap(), json!(true));
        path
    }
}

fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        self.daemon.shutdown();
        if let Some(rt) = self.rt.take() {
            rt.shutdown();
        }
    }
}

fn code(r: Result<Value, ClientError>) -> i32 {
    match r {
        Err(ClientError::Rpc(e)) => e.code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Sends raw bytes, reads `n` newline-terminated responses.
fn raw(sock: &Path, bytes: &[u8], n: usize) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut r = BufReader::new(s);
    (0..n)
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
        })
        .collect()
}

#[test]
fn tenants_and_devices_over_the_socket() {
    let env = Env::new();
    let mut c = env.client();
    let methods = c.call("rpc_get_methods", None).unwrap();
    for m in ["pov_device_create", "pov_tenant_get_tenants", "save_config", "framework_get_reactors"] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{methods}");
    }

    let acme_key = env.add_key(&mut c, "acme-key", "s3cret");
    assert_eq!(c.call("pov_tenant_create", Some(json!({"name": "acme", "key": "acme-key"}))).unwrap(), json!(true));
    assert_eq!(code(c.call("pov_tenant_create", Some(json!({"name": "acme", "key": "acme-key"})))), codes::EEXIST);
    assert_eq!(code(c.call("pov_tenant_create", Some(json!({"name": "../x", "key": "acme-key"})))), codes::INVALID_PARAMS);
    let tenants = c.call("pov_tenant_get_tenants", None).unwrap();
    assert_eq!(tenants, json!([{"name": "acme", "key": "acme-key"}]));
    assert!(!tenants.to_string().contains("s3cret"));

    let sock0 = env.path("pov0.sock");
    let r = c.call(
        "pov_device_create",
        Some(json!({"name": "pov0", "socket": sock0, "proxies": ["tcp:127.0.0.1:1"], "virtqueues": 2})),
    );
    assert_eq!(r.unwrap(), json!("pov0"));
    assert!(sock0.exists());
    // Duplicate name, duplicate socket, bad parameters, device-level rejection.
    let dup = json!({"name": "pov0", "socket": env.path("other.sock"), "proxies": ["tcp:127.0.0.1:1"]});
    assert_eq!(code(c.call("pov_device_create", Some(dup))), codes::EEXIST);
    let dup_sock = json!({"name": "pov1", "socket": sock0, "proxies": ["tcp:127.0.0.1:1"]});
    assert_eq!(code(c.call("pov_device_create", Some(dup_sock))), codes::EEXIST);
    let unknown_field = json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": [], "bogus": 1});
    assert_eq!(code(c.call("pov_device_create", Some(unknown_field))), codes::INVALID_PARAMS);
    let no_proxy = json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": []});
    assert_eq!(code(c.call("pov_device_create", Some(no_proxy))), codes::INVALID_PARAMS);
    assert!(!env.path("p1.sock").exists(), "failed create left its socket behind");
    let bad_vq = json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": ["tcp:x:1"], "virtqueues": 0});
    assert_eq!(code(c.call("pov_device_create", Some(bad_vq))), codes::INVALID_PARAMS);
    let bad_name = json!({"name": "a/b", "socket": env.path("p1.sock"), "proxies": ["tcp:x:1"]});
    assert_eq!(code(c.call("pov_device_create", Some(bad_name))), codes::INVALID_PARAMS);
    let bad_reactor = json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": ["tcp:x:1"], "reactor": 9});
    assert_eq!(code(c.call("pov_device_create", Some(bad_reactor))), codes::INVALID_PARAMS);
    // Endpoints are parsed when the device is created: a malformed one or an unknown
    // transport scheme is a parameter error, and nothing is left behind.
    for bad in ["tcp:nohost", "tcp:h:0", "rdma:10.0.0.5:4420", ""] {
        let p = json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": [bad]});
        let r = c.call("pov_device_create", Some(p));
        let what = format!("{r:?}");
        assert_eq!(code(r), codes::INVALID_PARAMS, "{bad:?}: {what}");
        assert!(!env.path("p1.sock").exists(), "{bad:?} left its socket behind");
    }
    // A tls: endpoint in a daemon without a TLS identity (no --tls-cert/--tls-key/
    // --tls-ca) is refused the same way, saying what is missing.
    let p = json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": ["tls:127.0.0.1:4420"]});
    let r = c.call("pov_device_create", Some(p));
    let what = format!("{r:?}");
    assert!(what.contains("--tls-cert"), "{what}");
    assert_eq!(code(r), codes::INVALID_PARAMS, "{what}");
    let missing = json!({"name": "pov1"});
    assert_eq!(code(c.call("pov_device_create", Some(missing))), codes::INVALID_PARAMS);
    assert_eq!(code(c.call("pov_device_create", Some(json!([1, 2])))), codes::INVALID_PARAMS);
    let r = c.call(
        "pov_device_create",
        Some(json!({"name": "pov1", "socket": env.path("p1.sock"), "proxies": ["tcp:h:2"], "num_queues": 4})),
    );
    assert_eq!(r.unwrap(), json!("pov1"));

    let devs = c.call("pov_device_get_devices", None).unwrap();
    let devs = devs.as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[0]["name"], "pov0");
    assert_eq!(devs[0]["virtqueues"], 2);
    assert_eq!(devs[0]["clients"], 0);
    assert_eq!(devs[0]["config"]["num_queues"], 16);
    assert_eq!(devs[1]["config"]["num_queues"], 4);
    // Round-robin placement over the two reactors.
    assert_ne!(devs[0]["reactor"], devs[1]["reactor"]);
    assert!(devs[0]["stats"].is_object(), "{}", devs[0]);
    let one = c.call("pov_device_get_devices", Some(json!({"name": "pov1"}))).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(code(c.call("pov_device_get_devices", Some(json!({"name": "nope"})))), codes::ENODEV);

    // The device pollers show up on their reactors (SPDK's thread_get_pollers), and
    // the SPDK-shaped statistics carry exactly the fields spdk_top decodes.
    let t = Instant::now();
    loop {
        let r = c.call("thread_get_pollers", None).unwrap();
        let names: Vec<String> = r["threads"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| x["active_pollers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()))
            .collect();
        if names.contains(&"vhost_blk_pov0".to_string()) && names.contains(&"vhost_blk_pov1".to_string()) {
            assert_eq!(r["threads"].as_array().unwrap().len(), 2);
            assert_eq!(r["tick_rate"], 1_000_000_000u64);
            let p = &r["threads"][0]["active_pollers"][0];
            let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["busy_count", "name", "run_count", "state"], "{p}");
            assert!(p["run_count"].as_u64().unwrap() > 0, "{p}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "pollers not listed: {r}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let r = c.call("framework_get_reactors", None).unwrap();
    assert_eq!(keys(&r), ["reactors", "tick_rate"]);
    assert_eq!(keys(&r["reactors"][0]), ["busy", "idle", "lcore", "lw_threads"]);
    assert_eq!(keys(&r["reactors"][0]["lw_threads"][0]), ["cpumask", "elapsed", "id", "name"]);
    assert_eq!(r["reactors"][1]["lw_threads"][0]["id"], 2, "SPDK numbers threads from 1");
    let (busy, idle) = (r["reactors"][0]["busy"].as_u64().unwrap(), r["reactors"][0]["idle"].as_u64().unwrap());
    assert!(busy > 0 && idle > busy, "an almost idle reactor: busy {busy} ns, idle {idle} ns");
    let th = c.call("thread_get_stats", None).unwrap();
    assert_eq!(
        keys(&th["threads"][0]),
        ["active_pollers_count", "busy", "cpumask", "id", "idle", "name", "paused_pollers_count", "timed_pollers_count"]
    );
    assert!(th["threads"][0]["cpumask"].as_str().unwrap().starts_with("0x"));
    // Every device is a bdev; its IO statistics start at zero.
    let b = c.call("bdev_get_bdevs", None).unwrap();
    assert_eq!(b.as_array().unwrap().len(), 2, "{b}");
    assert_eq!(b[0]["name"], "pov0");
    assert_eq!(b[0]["product_name"], "PoV device");
    assert_eq!(b[0]["block_size"], 512);
    assert!(b[0]["num_blocks"].as_u64().unwrap() > 0);
    assert_eq!(b[0]["supported_io_types"]["read"], true);
    assert_eq!(code(c.call("bdev_get_bdevs", Some(json!({"name": "nope"})))), codes::ENODEV);
    let io = c.call("bdev_get_iostat", Some(json!({"name": "pov1"}))).unwrap();
    assert_eq!(io["tick_rate"], 1_000_000_000u64);
    assert_eq!(io["bdevs"].as_array().unwrap().len(), 1);
    assert_eq!((io["bdevs"][0]["name"].as_str(), io["bdevs"][0]["num_read_ops"].as_u64()), (Some("pov1"), Some(0)));
    let v = c.call("spdk_get_version", None).unwrap();
    assert_eq!(v["version"], format!("PoV v{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(v["fields"]["minor"], 1);

    // save_config carries key files (paths, never secrets), tenants naming their keys,
    // and full device parameters.
    let saved = c.call("save_config", None).unwrap();
    let calls = saved["subsystems"][0]["config"].as_array().unwrap();
    assert_eq!(saved["subsystems"][0]["subsystem"], "pov");
    assert_eq!(calls[0], json!({"method": "keyring_file_add_key", "params": {"name": "acme-key", "path": acme_key}}));
    assert_eq!(calls[1], json!({"method": "pov_tenant_create", "params": {"name": "acme", "key": "acme-key"}}));
    assert!(!saved.to_string().contains("s3cret"), "{saved}");
    assert_eq!(calls[2]["method"], "pov_device_create");
    assert_eq!(calls[2]["params"]["virtqueues"], 2);
    assert_eq!(calls[2]["params"]["session_timeout_ms"], 10000);
    // SPDK's client builds the same document from framework_get_subsystems and
    // framework_get_config.
    let subs = c.call("framework_get_subsystems", None).unwrap();
    assert_eq!(subs, json!([{"subsystem": "pov", "depends_on": []}]));
    let cfg = c.call("framework_get_config", Some(json!({"name": "pov", "with_batches": false}))).unwrap();
    assert_eq!(&cfg, &saved["subsystems"][0]["config"]);
    assert_eq!(code(c.call("framework_get_config", Some(json!({"name": "nvmf"})))), codes::ENODEV);
    assert_eq!(code(c.call("framework_get_config", None)), codes::INVALID_PARAMS);

    assert_eq!(c.call("pov_device_delete", Some(json!({"name": "pov0"}))).unwrap(), json!(true));
    assert!(!sock0.exists(), "socket not removed");
    assert_eq!(code(c.call("pov_device_delete", Some(json!({"name": "pov0"})))), codes::ENODEV);
    assert_eq!(code(c.call("pov_device_delete", Some(json!({})))), codes::INVALID_PARAMS);
    assert_eq!(c.call("pov_tenant_delete", Some(json!({"name": "acme"}))).unwrap(), json!(true));
    assert_eq!(code(c.call("pov_tenant_delete", Some(json!({"name": "acme"})))), codes::ENODEV);
    // The name is free again.
    let again = json!({"name": "pov0", "socket": sock0, "proxies": ["tcp:127.0.0.1:1"]});
    assert_eq!(c.call("pov_device_create", Some(again)).unwrap(), json!("pov0"));
}

/// Volumes over the socket: null volumes (no proxy needed), listing with kinds,
/// duplicate and bad parameters with SPDK codes, save_config and replay. A volume on an
/// unreachable proxy fails the call in bounded time. (Proxy-backed volumes: e2e.)
#[test]
fn volumes_over_the_socket() {
    let env = Env::new();
    let mut c = env.client();
    let methods = c.call("rpc_get_methods", None).unwrap();
    assert!(methods.as_array().unwrap().contains(&json!("pov_volume_create")));
    let sock = env.path("nv.sock");
    let ok = json!({"name": "nv", "socket": sock, "size": 1 << 20, "block_size": 4096, "null": true});
    assert_eq!(c.call("pov_volume_create", Some(ok.clone())).unwrap(), ok["name"], "SPDK's bdev convention: the name");
    assert!(sock.exists());
    assert_eq!(code(c.call("pov_volume_create", Some(ok.clone()))), codes::EEXIST, "duplicate name");
    let other_sock = json!({"name": "nv2", "socket": sock, "size": 4096, "null": true});
    assert_eq!(code(c.call("pov_volume_create", Some(other_sock))), codes::EEXIST, "socket taken");
    let dev = json!({"name": "nv", "socket": env.path("d.sock"), "proxies": ["tcp:127.0.0.1:1"]});
    assert_eq!(code(c.call("pov_device_create", Some(dev))), codes::EEXIST, "a device may not take a volume's name");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for (bad, why) in [
        (json!({"name": "b", "socket": env.path("b.sock"), "size": 1000, "null": true}), "size not a multiple of 512"),
        (json!({"name": "b", "socket": env.path("b.sock"), "size": 4096, "block_size": 1024, "null": true}), "block size"),
        (json!({"name": "b", "socket": env.path("b.sock"), "size": 0, "null": true}), "size 0"),
        (json!({"name": "../b", "socket": env.path("b.sock"), "size": 4096, "null": true}), "name"),
        (json!({"name": "b", "socket": env.path("b.sock"), "size": 4096}), "no proxies"),
        (
            json!({"name": "b", "socket": env.path("b.sock"), "size": 4096, "null": true, "proxies": ["tcp:127.0.0.1:1"]}),
            "null with proxies",
        ),
        (
            json!({"name": "b", "socket": env.path("b.sock"), "size": 4096, "volume": "a/b", "proxies": ["tcp:127.0.0.1:1"]}),
            "backing name",
        ),
        (json!({"name": "b", "socket": env.path("b.sock"), "size": "big", "null": true}), "size type"),
        (json!({"name": "b", "socket": env.path("b.sock"), "size": 4096, "null": true, "colour": 1}), "unknown field"),
        (json!({"name": "b", "socket": env.path("b.sock"), "size": 4096, "null": true, "virtqueues": 0}), "virtqueues"),
    ] {
        assert_eq!(code(c.call("pov_volume_create", Some(bad))), codes::INVALID_PARAMS, "{why}");
    }
    let t0 = Instant::now();
    let unreachable = json!({"name": "b", "socket": env.path("b.sock"), "size": 4096, "proxies": [format!("tcp:{dead}")]});
    assert_eq!(code(c.call("pov_volume_create", Some(unreachable))), codes::INTERNAL_ERROR, "proxy unreachable");
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(!env.path("b.sock").exists(), "failed calls leave no socket");
    let all = c.call("pov_device_get_devices", None).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    let v = &all[0];
    assert_eq!((v["kind"].as_str(), v["name"].as_str(), v["null"].as_bool()), (Some("volume"), Some("nv"), Some(true)));
    assert_eq!((v["config"]["size"].as_u64(), v["config"]["block_size"].as_u64()), (Some(1 << 20), Some(4096)));
    assert_eq!(c.call("pov_device_get_devices", Some(json!({"name": "nv"}))).unwrap().as_array().unwrap().len(), 1);
    assert_eq!(code(c.call("pov_device_get_devices", Some(json!({"name": "zz"})))), codes::ENODEV);
    let saved = c.call("save_config", None).unwrap();
    let calls = &saved["subsystems"][0]["config"];
    let vc = calls.as_array().unwrap().iter().find(|x| x["method"] == "pov_volume_create").expect("volume saved");
    assert_eq!((vc["params"]["null"].as_bool(), vc["params"]["block_size"].as_u64()), (Some(true), Some(4096)));
    assert_eq!(c.call("pov_volume_delete", Some(json!({"name": "nv"}))).unwrap(), json!(true));
    assert_eq!(code(c.call("pov_volume_delete", Some(json!({"name": "nv"})))), codes::ENODEV);
    assert!(!sock.exists(), "socket removed");
    // Replay recreates it.
    load_config(&env.daemon, &saved).unwrap();
    assert_eq!(env.daemon.volume_info(Some("nv")).len(), 1);
    assert!(sock.exists());
}

#[test]
fn protocol_errors_never_kill_the_server() {
    let env = Env::new();
    let mut c = env.client();
    assert_eq!(code(c.call("no_such_method", None)), codes::METHOD_NOT_FOUND);
    assert_eq!(code(c.call("save_config", Some(json!({"x": 1})))), codes::INVALID_PARAMS);
    assert_eq!(code(c.call("pov_tenant_create", Some(json!({"name": 5, "key": "x"})))), codes::INVALID_PARAMS);
    // The connection is still usable after errors.
    assert!(c.call("pov_tenant_get_tenants", None).is_ok());

    // Invalid requests.
    let r = raw(&env.sock, br#"{"id":1,"method":"rpc_get_methods"}"#, 1);
    assert_eq!(r[0]["error"]["code"], codes::INVALID_REQUEST);
    assert_eq!(r[0]["id"], 1);
    let r = raw(&env.sock, br#"{"jsonrpc":"2.0","id":2,"method":7} 42 {"jsonrpc":"2.0","id":[1],"method":"x"}"#, 3);
    assert!(r.iter().all(|x| x["error"]["code"] == codes::INVALID_REQUEST), "{r:?}");

    // Requests back to back without separators; a notification gets no answer.
    env.add_key(&mut c, "k", "s");
    let bytes = br#"{"jsonrpc":"2.0","method":"pov_tenant_create","params":{"name":"n","key":"k"}}{"jsonrpc":"2.0","id":"a","method":"pov_tenant_get_tenants"}{"jsonrpc":"2.0","id":"b","method":"rpc_get_methods"}"#;
    let r = raw(&env.sock, bytes, 2);
    assert_eq!(r[0]["id"], "a");
    assert_eq!(r[0]["result"], json!([{"name": "n", "key": "k"}]));
    assert_eq!(r[1]["id"], "b");

    // A batch.
    let r = raw(
        &env.sock,
        br#"[{"jsonrpc":"2.0","id":1,"method":"pov_tenant_get_tenants"},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#,
        1,
    );
    assert_eq!(r[0][0]["id"], 1);
    assert_eq!(r[0][1]["error"]["code"], codes::METHOD_NOT_FOUND);
    let r = raw(&env.sock, b"[]", 1);
    assert_eq!(r[0]["error"]["code"], codes::INVALID_REQUEST);

    // Garbage: a parse error, then the server closes that connection.
    let mut s = UnixStream::connect(&env.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x00\xffnot json at all}").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"]["code"], codes::PARSE_ERROR);
    assert_eq!(v["id"], Value::Null);

    // A client that disconnects in the middle of a request.
    let mut s = UnixStream::connect(&env.sock).unwrap();
    s.write_all(br#"{"jsonrpc":"2.0","id":1,"meth"#).unwrap();
    drop(s);

    // Still serving.
    let mut c2 = env.client();
    assert_eq!(c2.call("pov_tenant_get_tenants", None).unwrap(), json!([{"name": "n", "key": "k"}]));
    assert_eq!(c.call("pov_tenant_get_tenants", None).unwrap(), json!([{"name": "n", "key": "k"}]));
}

#[test]
fn rpc_socket_in_use_is_refused_and_removed_on_stop() {
    let env = Env::new();
    let second = RpcServer::start(&env.sock, env.daemon.clone());
    assert_eq!(second.err().unwrap().kind(), std::io::ErrorKind::AddrInUse);
    let other = env.path("rpc2.sock");
    let s = RpcServer::start(&other, env.daemon.clone()).unwrap();
    // A connected, idle client does not block stop().
    let _idle = UnixStream::connect(&other).unwrap();
    s.stop();
    assert!(!other.exists());
}

#[test]
fn config_replay_both_formats() {
    let saved;
    let sock0;
    {
        let env = Env::new();
        let mut c = env.client();
        env.add_key(&mut c, "k1", "pw1");
        c.call("pov_tenant_create", Some(json!({"name": "t1", "key": "k1"}))).unwrap();
        sock0 = env.path("d0.sock");
        let p = json!({"name": "d0", "socket": sock0, "proxies": ["tcp:127.0.0.1:9"], "max_sessions": 8, "reactor": 1});
        c.call("pov_device_create", Some(p)).unwrap();
        saved = c.call("save_config", None).unwrap();
        // Replaying on top of the live state fails on the first duplicate.
        match load_config(&env.daemon, &saved) {
            Err(ConfigError::Call { index: 0, method, error }) => {
                assert_eq!(method, "keyring_file_add_key");
                assert_eq!(error.code, codes::EEXIST);
            }
            other => panic!("expected a failed call, got {other:?}"),
        }
        drop(c);
        env.daemon.shutdown();
        assert!(!sock0.exists());
        // Same process, fresh daemon: replay the SPDK format.
        let rt = Runtime::start(&[None, None], ReactorConfig::default()).unwrap();
        let d2 = Daemon::new(rt.reactors().to_vec(), memdisk_factory());
        assert_eq!(load_config(&d2, &saved).unwrap(), 4);
        assert_eq!(d2.save_config(), saved);
        assert!(d2.tenants().authenticate("t1", b"pw1"), "the replayed tenant has its key's secret");
        assert!(sock0.exists());
        let info = d2.device_info(Some("d0")).unwrap();
        assert_eq!(info[0].reactor, 1);
        assert_eq!(info[0].config.max_sessions, 8);
        d2.shutdown();

        // The plain list format.
        let d3 = Daemon::new(rt.reactors().to_vec(), memdisk_factory());
        let list = json!([
            {"method": "keyring_file_add_key", "params": {"name": "k2", "path": env.key_file("k2.key", "x")}},
            {"method": "pov_tenant_create", "params": {"name": "t2", "key": "k2"}},
            {"method": "rpc_get_methods"},
            {"method": "pov_device_create", "params": {"name": "d1", "socket": env.path("d1.sock"), "proxies": ["tcp:a:1"]}}
        ]);
        assert_eq!(load_config(&d3, &list).unwrap(), 4);
        assert_eq!(d3.tenant_names(), vec!["t2".to_string()]);
        // Malformed documents run nothing.
        for bad in [json!({"x": 1}), json!([{"params": {}}]), json!(5), json!([{"method": "a", "extra": 1}])] {
            assert!(matches!(load_config(&d3, &bad), Err(ConfigError::Shape(_))), "{bad}");
        }
        let failing =
            json!({"subsystems": [{"subsystem": "pov", "config": null}, {"subsystem": "pov", "config": [{"method": "nope"}]}]});
        match load_config(&d3, &failing) {
            Err(ConfigError::Call { index: 0, error, .. }) => assert_eq!(error.code, codes::METHOD_NOT_FOUND),
            other => panic!("{other:?}"),
        }
        d3.shutdown();
        rt.shutdown();
    }
}

#[test]
fn gathering_rpc_validates_merges_and_is_saved() {
    let env = Env::new();
    let mut c = env.client();
    assert!(c.call("rpc_get_methods", None).unwrap().as_array().unwrap().iter().any(|m| m == "pov_set_gathering"));
    let default = json!({"enabled": true, "batch_size": 64, "window_us": 0});
    assert_eq!(c.call("pov_get_gathering", None).unwrap(), default);
    // Partial updates keep the other fields.
    assert_eq!(
        c.call("pov_set_gathering", Some(json!({"enabled": false}))).unwrap(),
        json!({"enabled": false, "batch_size": 64, "window_us": 0})
    );
    assert_eq!(
        c.call("pov_set_gathering", Some(json!({"batch_size": 16, "window_us": 50}))).unwrap(),
        json!({"enabled": false, "batch_size": 16, "window_us": 50})
    );
    // Bad values and shapes: -32602, nothing changes.
    for bad in [
        json!({"batch_size": 0}),
        json!({"batch_size": 4097}),
        json!({"window_us": 10001}),
        json!({"enabled": "yes"}),
        json!({"batch_size": -1}),
        json!({"window": 5}),
        json!([true]),
    ] {
        assert_eq!(code(c.call("pov_set_gathering", Some(bad.clone()))), codes::INVALID_PARAMS, "{bad}");
    }
    assert_eq!(code(c.call("pov_get_gathering", Some(json!({"x": 1})))), codes::INVALID_PARAMS);
    let now = json!({"enabled": false, "batch_size": 16, "window_us": 50});
    assert_eq!(c.call("pov_get_gathering", None).unwrap(), now);
    // save_config carries the setting; a replay restores it.
    let saved = c.call("save_config", None).unwrap();
    assert_eq!(
        saved["subsystems"][0]["config"].as_array().unwrap().last().unwrap(),
        &json!({"method": "pov_set_gathering", "params": now})
    );
    let rt = Runtime::start(&[None], ReactorConfig::default()).unwrap();
    let d2 = Daemon::new(rt.reactors().to_vec(), memdisk_factory());
    load_config(&d2, &saved).unwrap();
    assert_eq!(serde_json::to_value(d2.gathering()).unwrap(), now);
    d2.shutdown();
    rt.shutdown();
}

/// The keyring over the socket: key files are checked as SPDK checks them (a mode-0644
/// file is refused with a clear error), tenants reference keys, a key in use cannot be
/// removed, the old `secret` form is refused, and no listing, error or saved
/// configuration ever shows a secret; a replay authenticates the tenant again.
#[test]
fn keyring_over_the_socket_never_shows_secrets() {
    const SECRET: &str = "kr-Secret-0451";
    let env = Env::new();
    let mut c = env.client();
    let methods = c.call("rpc_get_methods", None).unwrap();
    for m in ["keyring_file_add_key", "keyring_file_remove_key", "keyring_get_keys"] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{methods}");
    }
    assert_eq!(c.call("keyring_get_keys", None).unwrap(), json!([]));
    let path = env.add_key(&mut c, "acme-key", SECRET);
    let keys = c.call("keyring_get_keys", None).unwrap();
    assert_eq!(keys, json!([{"name": "acme-key", "path": path, "tenants": []}]));
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "acme-key", "path": path})))), codes::EEXIST);

    // Files SPDK's keyring refuses, and files of the wrong size: clear errors, nothing added.
    let world = key_file(env.dir.path(), "world.key", SECRET.as_bytes(), 0o644);
    match c.call("keyring_file_add_key", Some(json!({"name": "w", "path": world}))) {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.code, -1, "EPERM: {e:?}");
            for part in [world.to_str().unwrap(), "0644", "group or others", "chmod 600"] {
                assert!(e.message.contains(part), "{part:?} not in {:?}", e.message);
            }
            assert!(!e.message.contains(SECRET));
        }
        other => panic!("a mode-0644 key file was accepted: {other:?}"),
    }
    let group = key_file(env.dir.path(), "group.key", SECRET.as_bytes(), 0o640);
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "g", "path": group})))), -1);
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "r", "path": "rel.key"})))), -1);
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "m", "path": env.path("missing")})))), -2);
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "d", "path": env.dir.path()})))), -22);
    let empty = key_file(env.dir.path(), "empty.key", b"", 0o600);
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "e", "path": empty})))), -22);
    let long = key_file(env.dir.path(), "long.key", &[b'x'; 256], 0o600);
    assert_eq!(code(c.call("keyring_file_add_key", Some(json!({"name": "l", "path": long})))), -22);
    for bad in [json!({"name": "a/b", "path": path}), json!({"name": "x"}), json!({"name": "x", "path": path, "key": "k"})] {
        assert_eq!(code(c.call("keyring_file_add_key", Some(bad.clone()))), codes::INVALID_PARAMS, "{bad}");
    }
    assert_eq!(c.call("keyring_get_keys", None).unwrap().as_array().unwrap().len(), 1);

    // Tenants reference keys; the old inline form is refused without echoing the secret.
    assert_eq!(code(c.call("pov_tenant_create", Some(json!({"name": "acme", "key": "nope"})))), codes::ENODEV);
    match c.call("pov_tenant_create", Some(json!({"name": "acme", "secret": SECRET}))) {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.code, codes::INVALID_PARAMS);
            assert!(e.message.contains("keyring_file_add_key") && !e.message.contains(SECRET), "{}", e.message);
        }
        other => panic!("the secret form was accepted: {other:?}"),
    }
    assert_eq!(c.call("pov_tenant_get_tenants", None).unwrap(), json!([]));
    assert_eq!(c.call("pov_tenant_create", Some(json!({"name": "acme", "key": "acme-key"}))).unwrap(), json!(true));
    let tenants = c.call("pov_tenant_get_tenants", None).unwrap();
    let keys = c.call("keyring_get_keys", None).unwrap();
    assert_eq!(keys[0]["tenants"], json!(["acme"]));
    for shown in [&tenants, &keys] {
        assert!(!shown.to_string().contains(SECRET), "{shown}");
    }
    match c.call("keyring_file_remove_key", Some(json!({"name": "acme-key"}))) {
        Err(ClientError::Rpc(e)) => assert!(e.code == -16 && e.message.contains("acme"), "{e:?}"),
        other => panic!("a key in use was removed: {other:?}"),
    }
    assert_eq!(code(c.call("keyring_file_remove_key", Some(json!({"name": "nope"})))), codes::ENODEV);

    // save_config: the key's path, never its bytes; a replay reads the file again and
    // the replayed tenant authenticates with the secret.
    let saved = c.call("save_config", None).unwrap();
    assert!(!saved.to_string().contains(SECRET), "{saved}");
    let calls = saved["subsystems"][0]["config"].as_array().unwrap();
    assert_eq!(calls[0], json!({"method": "keyring_file_add_key", "params": {"name": "acme-key", "path": path}}));
    assert_eq!(calls[1], json!({"method": "pov_tenant_create", "params": {"name": "acme", "key": "acme-key"}}));
    let rt = Runtime::start(&[None], ReactorConfig::default()).unwrap();
    let d2 = Daemon::new(rt.reactors().to_vec(), memdisk_factory());
    load_config(&d2, &saved).unwrap();
    assert!(d2.tenants().authenticate("acme", SECRET.as_bytes()));
    assert!(!d2.tenants().authenticate("acme", b"kr-Secret-0452"));
    assert_eq!(d2.save_config(), saved);
    d2.shutdown();
    rt.shutdown();

    // Deleting the tenant frees the key.
    assert_eq!(c.call("pov_tenant_delete", Some(json!({"name": "acme"}))).unwrap(), json!(true));
    assert_eq!(c.call("keyring_file_remove_key", Some(json!({"name": "acme-key"}))).unwrap(), json!(true));
    assert_eq!(c.call("keyring_get_keys", None).unwrap(), json!([]));
    assert_eq!(code(c.call("keyring_file_remove_key", Some(json!({"name": "acme-key"})))), codes::ENODEV);
}
