//! Harness for PoV's end-to-end tests: starts the real `pov-proxy` and `pov-dpud`
//! binaries (built by `cargo build --workspace --bins`, which `scripts/test` runs
//! first), configures them through the JSON-RPC socket, and stops them on drop.
//!
//! The tests in `tests/` drive the stack through the host driver (`pov-host`) over
//! vhost-user with libblkio, exactly as a host would. The stack's storage network is
//! mutual TLS, as in production: [`Stack::start`] makes a CA and certificates with
//! `scripts/dev-ca` ([`Pki`]), runs `pov-proxy` on `tls:` with an enrollment that lets
//! DPU [`DPU`] act for the stack's tenants, and gives `pov-dpud` that DPU's
//! certificate; devices use `tls:` endpoints ([`Stack::proxy_endpoint`]). [`guest`] holds the checks that
//! `scripts/guest-test` runs inside a QEMU guest through the guest kernel's virtio-blk
//! driver (binary `pov-guest-check`).

pub mod guest;

use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Secret of the tenants the harness creates (from key files, through the keyring).
pub const SECRET: &str = "e2e-secret";

/// Writes `secret` to a new key file `path` of mode 0600 (created so: it is never
/// readable by others, not even for a moment).
pub fn write_key_file(path: &Path, secret: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create key file {}: {e}", path.display()));
    f.write_all(secret).unwrap();
}

/// The identity (certificate subjectAltName DNS name) of the stack's DPU.
pub const DPU: &str = "dpu-e2e";

/// Certificates made by `scripts/dev-ca` in one directory: a CA, the proxy's server
/// certificate (localhost, 127.0.0.1, ::1) and one client certificate per DPU name.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory (`ca.pem`, `proxy.pem`, `proxy.key`, `NAME.pem`, `NAME.key`).
    pub dir: PathBuf,
}

impl Pki {
    /// Runs `scripts/dev-ca DIR DPUS...` (a CA is made if `dir` has none, else reused).
    ///
    /// # Panics
    /// If the script fails (e.g. no `openssl` command: `ci/install-deps.sh`).
    pub fn make(dir: &Path, dpus: &[&str]) -> Pki {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-ca");
        let out = Command::new("bash").arg(&script).arg(dir).args(dpus).output().expect("running scripts/dev-ca");
        assert!(out.status.success(), "scripts/dev-ca failed: {}", String::from_utf8_lossy(&out.stderr));
        Pki { dir: dir.to_path_buf() }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `NAME.pem` (`proxy` for the proxy's).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `NAME.key`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// `pov-proxy` options for a TLS listener with this CA and the enrollment file
    /// `enrolled`.
    pub fn proxy_args(&self, enrolled: &Path) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        for (flag, path) in [("--tls-cert", self.cert("proxy")), ("--tls-key", self.key("proxy")), ("--tls-ca", self.ca())] {
            v.push(flag.into());
            v.push(path.into());
        }
        v.push("--enrolled".into());
        v.push(enrolled.into());
        v
    }

    /// `pov-dpud` options giving it DPU `name`'s identity, trusting `proxy_ca` for
    /// proxies (usually [`Pki::ca`]).
    pub fn dpud_args(&self, name: &str, proxy_ca: &Path) -> Vec<OsString> {
        vec![
            "--tls-cert".into(),
            self.cert(name).into(),
            "--tls-key".into(),
            self.key(name).into(),
            "--tls-ca".into(),
            proxy_ca.into(),
        ]
    }
}

/// Writes an enrollment file (`pov-proxy --enrolled`) at `path`: each `(dpu, tenants,
/// volumes)` entry as documented in `pov_proxy::access`.
pub fn write_enrollment(path: &Path, dpus: &[(&str, &[&str], &[&str])]) {
    let mut m = serde_json::Map::new();
    for (dpu, tenants, volumes) in dpus {
        m.insert(dpu.to_string(), json!({"tenants": tenants, "volumes": volumes}));
    }
    std::fs::write(path, serde_json::to_vec_pretty(&json!({ "dpus": m })).unwrap()).expect("writing the enrollment");
}

/// Directory holding the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") { deps.parent().expect("profile dir") } else { deps };
    dir.to_path_buf()
}

/// Path of workspace binary `name`; panics with a hint if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` (scripts/test does)", p.display());
    p
}

/// A running daemon whose output is captured line by line.
pub struct Daemon {
    pub child: Child,
    pub name: &'static str,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command) -> Daemon {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", std::env::var("POV_TEST_LOG").unwrap_or_else(|_| "info".into()));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Daemon { child, name, lines: rx, log: Vec::new() }
    }

    /// Output lines printed so far and not yet read (never blocks); they are kept in
    /// [`Daemon::log`] too.
    pub fn take_lines(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l.clone());
            v.push(l);
        }
        v
    }

    /// Waits (up to 30 s) for an output line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        panic!("{} exited ({st}) before printing {needle:?}; output:\n{}", self.name, self.log.join("\n"));
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{} never printed {needle:?}; output:\n{}",
                        self.name,
                        self.log.join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{} closed its output before printing {needle:?}; output:\n{}", self.name, self.log.join("\n"))
                }
            }
        }
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the daemon has used, in clock ticks (1/100 s).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }

    /// Kills the daemon with SIGKILL (no clean-up of any kind) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the daemon to stop (SIGTERM) and waits up to 10 s, then kills it.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // A failed test shows what the daemon said (POV_TEST_LOG=debug for more).
            self.log.extend(self.lines.try_iter());
            eprintln!("---- {} output ({} lines) ----", self.name, self.log.len());
            for l in self.log.iter().rev().take(200).rev() {
                eprintln!("{}: {l}", self.name);
            }
        }
    }
}

/// A JSON-RPC 2.0 client for `pov-dpud`'s control socket.
pub fn rpc(sock: &Path, method: &str, params: Value) -> Result<Value, Value> {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    s.write_all(req.to_string().as_bytes()).unwrap();
    let mut de = serde_json::Deserializer::from_reader(&mut s).into_iter::<Value>();
    let resp = de.next().expect("no RPC response").expect("bad RPC response");
    match resp.get("error") {
        Some(e) => Err(e.clone()),
        None => Ok(resp["result"].clone()),
    }
}

/// A running PoV stack: proxy with a local backend on mutual TLS, DPU daemon (identity
/// [`DPU`], enrolled for tenants `acme` and `other` and every volume), tenants `acme`
/// and `other` (secret [`SECRET`], each from its key file [`Stack::key_file`] through
/// the keyring: key `<tenant>-key`) and device `pov0`.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub proxy: Daemon,
    pub dpud: Daemon,
    /// The proxy's `HOST:PORT` (a `tls:` listener: see [`Stack::proxy_endpoint`]).
    pub proxy_addr: String,
    /// The stack's certificates.
    pub pki: Pki,
    /// The proxy's `--enrolled` file.
    pub enrolled: PathBuf,
    pub rpc_sock: PathBuf,
    pub vhost_sock: PathBuf,
    /// The proxy's `--backend` spec.
    pub backend_spec: String,
}

impl Stack {
    /// Starts the stack. `device_params` are merged into `pov_device_create`'s
    /// parameters (e.g. `{"session_timeout_ms": 2000}`).
    pub fn start(device_params: Value) -> Stack {
        Stack::start_on(None, device_params)
    }

    /// Starts the stack with the proxy on backend spec `backend` (e.g. `ceph:conf=...`);
    /// `None` is a local backend under the stack's directory ([`Stack::backend_dir`]).
    pub fn start_on(backend: Option<&str>, device_params: Value) -> Stack {
        Stack::start_with(backend, device_params, &[])
    }

    /// [`Stack::start_on`] with `proxy_args` added to the proxy's command line (e.g.
    /// `--workers 2`).
    pub fn start_with(backend: Option<&str>, device_params: Value, proxy_args: &[&str]) -> Stack {
        let dir = tempfile::Builder::new().prefix("pov-e2e").tempdir().unwrap();
        let spec = match backend {
            Some(b) => b.to_string(),
            None => format!("local:{}", dir.path().join("backend").display()),
        };
        let pki = Pki::make(&dir.path().join("tls"), &[DPU]);
        let enrolled = dir.path().join("enrolled.json");
        write_enrollment(&enrolled, &[(DPU, &["acme", "other"], &["*"])]);
        let mut args = pki.proxy_args(&enrolled);
        args.extend(proxy_args.iter().map(OsString::from));
        let (proxy, proxy_addr) = spawn_proxy(&spec, "tls:127.0.0.1:0", &args);
        let rpc_sock = dir.path().join("rpc.sock");
        let dpud = spawn_dpud(&rpc_sock, None, &pki.dpud_args(DPU, &pki.ca()));
        for t in ["acme", "other"] {
            let path = key_path(dir.path(), t);
            write_key_file(&path, SECRET.as_bytes());
            let key = format!("{t}-key");
            rpc(&rpc_sock, "keyring_file_add_key", json!({"name": key, "path": path})).expect("key add");
            rpc(&rpc_sock, "pov_tenant_create", json!({"name": t, "key": key})).expect("tenant create");
        }
        let vhost_sock = dir.path().join("pov0.sock");
        let mut params = json!({"name": "pov0", "socket": vhost_sock, "proxies": [format!("tls:{proxy_addr}")]});
        if let (Some(p), Some(extra)) = (params.as_object_mut(), device_params.as_object()) {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        rpc(&rpc_sock, "pov_device_create", params).expect("device create");
        Stack { dir, proxy, dpud, proxy_addr, pki, enrolled, rpc_sock, vhost_sock, backend_spec: spec }
    }

    /// The endpoint devices use for the proxy: `tls:HOST:PORT`.
    pub fn proxy_endpoint(&self) -> String {
        format!("tls:{}", self.proxy_addr)
    }

    /// Kills pov-proxy with SIGKILL and starts it again on the same address, backend,
    /// certificates and enrollment.
    pub fn restart_proxy(&mut self) {
        self.proxy.kill();
        let (proxy, _) = spawn_proxy(&self.backend_spec, &self.proxy_endpoint(), &self.pki.proxy_args(&self.enrolled));
        self.proxy = proxy;
    }

    /// Kills pov-dpud with SIGKILL and starts it again (same identity), replaying
    /// `config` (a file written from `save_config`) if given.
    pub fn restart_dpud(&mut self, config: Option<&Path>) {
        self.dpud.kill();
        self.dpud = spawn_dpud(&self.rpc_sock, config, &self.pki.dpud_args(DPU, &self.pki.ca()));
    }

    /// The proxy's local backend directory (`local:DIR`).
    pub fn backend_root(&self) -> PathBuf {
        self.dir.path().join("backend")
    }

    /// The device spec a host uses: `vhost-user:<socket>`.
    pub fn device_spec(&self) -> String {
        format!("vhost-user:{}", self.vhost_sock.display())
    }

    /// The key file (mode 0600) holding tenant `t`'s secret ([`SECRET`]).
    pub fn key_file(&self, t: &str) -> PathBuf {
        key_path(self.dir.path(), t)
    }

    /// Where the proxy's local backend keeps tenant `t`'s files.
    pub fn backend_dir(&self, tenant: &str) -> PathBuf {
        self.dir.path().join("backend").join(tenant)
    }

    /// A `pov-host` command preset with device, tenant `acme` and its key file
    /// (`POV_SECRET_FILE`; the secret is neither an argument nor in the environment).
    pub fn host_cmd(&self) -> Command {
        let mut c = Command::new(bin("pov-host"));
        c.env("POV_DEVICE", self.device_spec())
            .env("POV_TENANT", "acme")
            .env("POV_SECRET_FILE", self.key_file("acme"))
            .env_remove("POV_SECRET");
        c
    }
}

/// The key file of tenant `t` in the stack directory `dir`.
fn key_path(dir: &Path, t: &str) -> PathBuf {
    dir.join(format!("{t}.key"))
}

/// Starts pov-proxy on `listen` (e.g. `tls:127.0.0.1:0`) with backend spec `backend`
/// and `extra` options (e.g. [`Pki::proxy_args`]); returns it and the `HOST:PORT` it
/// listens on. Binding is retried for 5 s (a restarted proxy may find its old port
/// still held briefly).
pub fn spawn_proxy(backend: &str, listen: &str, extra: &[OsString]) -> (Daemon, String) {
    spawn_proxy_in(None, backend, listen, extra)
}

/// [`spawn_proxy`] inside network namespace `netns` (`ip netns exec`, which execs the
/// proxy: the daemon's PID is the proxy's) when given.
pub fn spawn_proxy_in(netns: Option<&Netns>, backend: &str, listen: &str, extra: &[OsString]) -> (Daemon, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(bin("pov-proxy"));
                c
            }
            None => Command::new(bin("pov-proxy")),
        };
        cmd.args(["--listen", listen, "--backend", backend]).args(extra);
        let mut proxy = Daemon::spawn("pov-proxy", cmd);
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| proxy.wait_for("listening on")));
        match started {
            Ok(line) => {
                let addr = line.rsplit(' ').next().unwrap().trim().to_string();
                return (proxy, addr);
            }
            Err(e) if Instant::now() >= deadline => std::panic::resume_unwind(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Starts pov-dpud on `rpc_sock` (replaying `config` if given) with `extra` options
/// (e.g. [`Pki::dpud_args`]) and waits until ready.
pub fn spawn_dpud(rpc_sock: &Path, config: Option<&Path>, extra: &[OsString]) -> Daemon {
    let mut cmd = Command::new(bin("pov-dpud"));
    cmd.arg("--rpc-socket").arg(rpc_sock).args(extra);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut dpud = Daemon::spawn("pov-dpud", cmd);
    dpud.wait_for("ready");
    dpud
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    pov_proto::testing::pattern(seed, len)
}

/// A network namespace joined to this one by a veth pair, made by a test and removed
/// when dropped: a second "host" on a link the test can cut. Inside is
/// [`Netns::inside`], this side [`Netns::outside`] (a /30 of 10.200.0.0/16 picked from
/// the process ID, so concurrent tests do not collide). Needs root and `ip`
/// (iproute2); traffic stays between this host and the namespace.
pub struct Netns {
    /// The namespace's name (`pov-<pid>-<n>`).
    pub name: String,
    /// The veth end inside the namespace.
    inner_if: String,
    /// The address inside.
    pub inside: String,
    /// The address on this side.
    pub outside: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Makes namespace number `n` of this process and its link.
    ///
    /// Errors: the failing `ip` command and its message (not root, no iproute2).
    pub fn new(n: u32) -> Result<Netns, String> {
        let pid = std::process::id();
        let name = format!("pov-{pid}-{n}");
        let slot = (pid.wrapping_mul(4).wrapping_add(n) % 16000) * 4;
        let (hi, lo) = (slot / 256, slot % 256);
        let (outside, inside) = (format!("10.200.{hi}.{}", lo + 1), format!("10.200.{hi}.{}", lo + 2));
        let (outer_if, inner_if) = (format!("pvo{}x{n}", pid % 100000), format!("pvi{}x{n}", pid % 100000));
        let ns = Netns { name: name.clone(), inner_if: inner_if.clone(), inside: inside.clone(), outside: outside.clone() };
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &outer_if, "type", "veth", "peer", "name", &inner_if])?;
        ip(&["link", "set", &inner_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &outer_if])?;
        ip(&["link", "set", &outer_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{inside}/30"), "dev", &inner_if])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &inner_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts the link (the inner end goes down: this side keeps its route and loses
    /// carrier, so packets vanish — a black hole, not a refusal) or heals it.
    pub fn set_link(&self, up: bool) -> Result<(), String> {
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &self.inner_if, if up { "up" } else { "down" }])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
