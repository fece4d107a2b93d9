//! The real binaries: `pov-dpud` replays a config with a real `PovDevice`, serves RPC
//! to `pov-rpc` (parameters inline, from a file or from standard input), exposes the
//! PoV device to a libblkio client, and exits cleanly on SIGTERM, removing its sockets;
//! what `save_config` wrote replays in a second `pov-dpud`, and never holds a secret.

use blkio::{Blkio, Completion, ReqFlags};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn spawn_dpud(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_pov-dpud")).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn pov_rpc(sock: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pov-rpc")).arg("-s").arg(sock).args(args).output().unwrap()
}

/// `pov-rpc -s SOCK METHOD -` with `stdin` as its standard input.
fn pov_rpc_stdin(sock: &Path, method: &str, stdin: &[u8]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pov-rpc"))
        .arg("-s")
        .arg(sock)
        .args([method, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    c.wait_with_output().unwrap()
}

/// A key file (mode 0600) holding `secret`.
fn key_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, secret).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Reads the PoV configuration space (sector 0) through libblkio.
fn read_config_space(sock: &Path) -> (u64, Vec<u8>) {
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", sock.to_str().unwrap()).unwrap();
    b.connect().unwrap();
    b.set_i32("num-queues", 1).unwrap();
    let mut q = b.start().unwrap().queues.remove(0);
    let region = b.alloc_mem_region(1 << 20).unwrap();
    b.map_mem_region(&region).unwrap();
    q.read(0, region.addr as *mut u8, 4096, 0, ReqFlags::empty());
    let mut c = [MaybeUninit::<Completion>::uninit()];
    let mut t = Duration::from_secs(10);
    assert_eq!(q.do_io(&mut c, 1, Some(&mut t), None).unwrap(), 1);
    // SAFETY: do_io filled the first element.
    assert_eq!(unsafe { c[0].assume_init_ref() }.ret, 0);
    // SAFETY: the region is 1 MiB mapped by libblkio and the read has completed.
    let data = unsafe { std::slice::from_raw_parts(region.addr as *const u8, 4096) }.to_vec();
    (b.get_u64("capacity").unwrap(), data)
}

#[test]
fn dpud_config_rpc_vhost_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let rpc_sock = dir.path().join("rpc.sock");
    let dev_sock = dir.path().join("pov0.sock");
    let cfg = dir.path().join("cfg.json");
    let key = key_file(dir.path(), "acme.key", "pw-dpud-bin-7");
    let calls = json!([
        {"method": "keyring_file_add_key", "params": {"name": "acme-key", "path": key}},
        {"method": "pov_tenant_create", "params": {"name": "acme", "key": "acme-key"}},
        {"method": "pov_device_create", "params": {"name": "pov0", "socket": dev_sock, "proxies": ["tcp:127.0.0.1:1"], "max_sessions": 4, "max_sessions_per_tenant": 2}}
    ]);
    std::fs::write(&cfg, calls.to_string()).unwrap();
    let (mut child, lines) = spawn_dpud(&[
        "--rpc-socket",
        rpc_sock.to_str().unwrap(),
        "--reactors",
        "2",
        "--config",
        cfg.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);
    let ready = lines.recv_timeout(Duration::from_secs(30)).expect("no ready line");
    assert_eq!(ready, format!("pov-dpud ready: rpc socket {}", rpc_sock.display()));

    let out = pov_rpc(&rpc_sock, &["pov_device_get_devices"]);
    assert!(out.status.success(), "{out:?}");
    let devs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(devs[0]["name"], "pov0");
    assert_eq!(devs[0]["config"]["max_sessions"], 4);
    assert_eq!(devs[0]["config"]["max_sessions_per_tenant"], 2);
    let out = pov_rpc(&rpc_sock, &["pov_tenant_get_tenants"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!([{"name": "acme", "key": "acme-key"}]));
    // Parameters from standard input and from a file: a second tenant from a key file.
    let key2 = key_file(dir.path(), "beta.key", "pw-dpud-bin-8");
    let out = pov_rpc_stdin(&rpc_sock, "keyring_file_add_key", json!({"name": "beta-key", "path": key2}).to_string().as_bytes());
    assert!(out.status.success(), "{out:?}");
    let params = dir.path().join("beta.json");
    std::fs::write(&params, json!({"name": "beta", "key": "beta-key"}).to_string()).unwrap();
    let out = pov_rpc(&rpc_sock, &["pov_tenant_create", &format!("@{}", params.display())]);
    assert!(out.status.success(), "{out:?}");
    let out = pov_rpc(&rpc_sock, &["keyring_get_keys"]);
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    assert_eq!(pov_rpc_stdin(&rpc_sock, "pov_device_delete", b"{not json").status.code(), Some(2));
    assert_eq!(pov_rpc(&rpc_sock, &["pov_device_delete", "@/nonexistent/params.json"]).status.code(), Some(2));
    // save_config names key files, never holds a secret.
    let out = pov_rpc(&rpc_sock, &["save_config"]);
    assert!(out.status.success(), "{out:?}");
    let saved = String::from_utf8(out.stdout).unwrap();
    for secret in ["pw-dpud-bin-7", "pw-dpud-bin-8"] {
        assert!(!saved.contains(secret), "{saved}");
    }
    let saved_file = dir.path().join("saved.json");
    std::fs::write(&saved_file, &saved).unwrap();

    // Per-method help from the daemon: one method, all of them, an unknown one.
    let out = pov_rpc(&rpc_sock, &["help", "pov_volume_create"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("pov_volume_create\n    name, socket, size"), "{out:?}");
    let out = pov_rpc(&rpc_sock, &["help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nkeyring_file_add_key\n") && text.contains("\nlog_set_level\n"), "{text}");
    let out = pov_rpc(&rpc_sock, &["help", "no_such_method"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no method named"), "{out:?}");
    let out = pov_rpc(&rpc_sock, &["no_such_method"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Method not found"), "{out:?}");
    let out = pov_rpc(&rpc_sock, &["pov_device_delete", "{not json"]);
    assert_eq!(out.status.code(), Some(2));
    let out = pov_rpc(&dir.path().join("nothing.sock"), &["rpc_get_methods"]);
    assert_eq!(out.status.code(), Some(1));
    // A reader that closes the pipe before the answer (`pov-rpc ... | grep -q x`) gets
    // a clean exit, not a panic.
    let mut c = Command::new(env!("CARGO_BIN_EXE_pov-rpc"))
        .arg("-s")
        .arg(&rpc_sock)
        .arg("rpc_get_methods")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // The real PoV device behind the adapter: its configuration space starts with
    // the magic "PoVD".
    let (capacity, sector0) = read_config_space(&dev_sock);
    assert_eq!(&sector0[..4], b"PoVD");
    assert!(capacity > 1 << 20, "capacity {capacity}");

    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!rpc_sock.exists(), "rpc socket left behind");
    assert!(!dev_sock.exists(), "device socket left behind");

    // A second pov-dpud replays what save_config wrote: keys, tenants, the device.
    let (mut child, lines) = spawn_dpud(&["--rpc-socket", rpc_sock.to_str().unwrap(), "--config", saved_file.to_str().unwrap()]);
    lines.recv_timeout(Duration::from_secs(30)).expect("no ready line after replay");
    let out = pov_rpc(&rpc_sock, &["pov_tenant_get_tenants"]);
    let tenants: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tenants, json!([{"name": "acme", "key": "acme-key"}, {"name": "beta", "key": "beta-key"}]));
    let (_, sector0) = read_config_space(&dev_sock);
    assert_eq!(&sector0[..4], b"PoVD");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
}

#[test]
fn dpud_fails_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.json");
    let sock = dir.path().join("p.sock");
    let key = key_file(dir.path(), "acme.key", "pw");
    let calls = json!({"subsystems": [{"subsystem": "pov", "config": [
        {"method": "keyring_file_add_key", "params": {"name": "acme-key", "path": key}},
        {"method": "pov_tenant_create", "params": {"name": "acme", "key": "acme-key"}},
        {"method": "pov_device_create", "params": {"name": "p", "socket": sock, "proxies": []}}
    ]}]});
    std::fs::write(&cfg, calls.to_string()).unwrap();
    let rpc_sock = dir.path().join("rpc.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_pov-dpud"))
        .args(["--rpc-socket", rpc_sock.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config call #2 (pov_device_create) failed"), "{err}");
    assert!(!rpc_sock.exists());
    // A key file others may read fails the replay, naming the call and the reason.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pov-dpud"))
        .args(["--rpc-socket", rpc_sock.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config call #0 (keyring_file_add_key) failed") && err.contains("chmod 600"), "{err}");
    assert!(!rpc_sock.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_pov-dpud")).args(["--cpus", "0,0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Options a new user gets wrong are refused with a clear message and exit status 2,
/// never half-applied: an unknown log level (it used to switch logging off), CPUs the
/// machine does not have (it used to start unpinned reactors for them).
#[test]
fn bad_log_levels_and_missing_cpus_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rpc.sock");
    for (args, word) in [
        (vec!["--log-level", "verbose"], "verbose"),
        (vec!["--cpus", "0-1023"], "does not exist"),
        (vec!["--cpus", "0,0"], "twice"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pov-dpud"))
            .arg("--rpc-socket")
            .arg(&sock)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(word), "{args:?}: {err}");
        assert!(!sock.exists(), "{args:?}: it did not start");
    }
}

/// `pov-rpc` with no daemon behind its socket says so and how to start one.
#[test]
fn pov_rpc_says_when_no_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    for sock in [dir.path().join("none.sock"), {
        // A socket file nobody listens on (a daemon that died): ECONNREFUSED.
        let p = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        p
    }] {
        let out = pov_rpc(&sock, &["spdk_get_version"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains("no daemon is listening") && err.contains("--rpc-socket"), "{err}");
    }
}
