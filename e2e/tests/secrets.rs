//! Attacks on tenant secrets. A demo-like setup runs through `scripts/lib.sh` (the
//! functions `scripts/demo` and the other scripts use): real `pov-proxy` and `pov-dpud`,
//! the tenant created from a key file through the keyring, a real `pov-host` copying a
//! tree in. Meanwhile:
//! * (a) no process's command line ever holds the secret: every PoV binary the script
//!   starts runs through a shim that records its argv (so even a `pov-rpc` living a
//!   millisecond is seen), every process's `/proc/PID/cmdline` is scanned while the
//!   script runs, and the daemons' environments are checked too;
//! * (b) `save_config` over RPC, and the file a second `pov-dpud --config` replays,
//!   never hold the secret, and the replayed daemon still authenticates the tenant: a
//!   real `pov-host` session lists the tree copied in before;
//! * (d) `keyring_get_keys` and `pov_tenant_get_tenants` never show it.
//!
//! ((c), a key file of mode 0644 refused with a clear error, is in
//! `dpu-firmware/tests/rpc.rs` and `dpud_bin.rs`.)

use pov_e2e::{bin, pattern, write_key_file};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo-like run. `$T` is the test's directory; `pov_bin_dir` resolves to the shims.
const SCRIPT: &str = r#"set -euo pipefail
. "$POV_REPO/scripts/lib.sh"
trap 'pov_stop_stack "$T/state"' EXIT
trap 'exit 130' INT TERM
export POV_TENANT=demo
# What lib.sh took before the keyring (a shell variable, not exported, read by a
# builtin); the keyring-based lib.sh reads $POV_SECRET_FILE instead.
POV_SECRET=$(<"$POV_SECRET_FILE")
pov_start_stack "$T/state" "local:$T/backend"
bin=$(pov_bin_dir)
"$bin/pov-host" cp -r "$T/src" pov:/tree
"$bin/pov-host" ls pov:/tree >"$T/ls1.txt"
"$bin/pov-rpc" -s "$POV_RPC_SOCK" save_config >"$T/saved.json"
"$bin/pov-rpc" -s "$POV_RPC_SOCK" keyring_get_keys >"$T/keys.json"
"$bin/pov-rpc" -s "$POV_RPC_SOCK" pov_tenant_get_tenants >"$T/tenants.json"
touch "$T/running"
for ((i = 0; i < 600; i++)); do [ -e "$T/go" ] && break; sleep 0.05; done
# A new pov-dpud from the saved configuration alone.
pid=$(cat "$T/state/dpud.pid")
kill -TERM "$pid"
for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
"$bin/pov-dpud" --rpc-socket "$POV_RPC_SOCK" "${POV_DPUD_TLS_ARGS[@]}" --config "$T/saved.json" >"$T/state/dpud2.log" 2>&1 &
echo $! >"$T/state/dpud.pid"
pov_wait_line "$T/state/dpud2.log" ready "$(cat "$T/state/dpud.pid")" >/dev/null
"$bin/pov-host" ls pov:/tree >"$T/ls2.txt"
"$bin/pov-rpc" -s "$POV_RPC_SOCK" save_config >"$T/saved2.json"
"#;

/// The PoV binaries the scripts start, each replaced by a shim that logs its argv.
const SHIMMED: [&str; 4] = ["pov-proxy", "pov-dpud", "pov-rpc", "pov-host"];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Parent of every process (`/proc/PID/stat`).
fn parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(pp) = ppid {
            out.insert(pid, pp);
        }
    }
    out
}

/// `root` and every process below it.
fn descendants(root: u32) -> BTreeSet<u32> {
    let parents = parents();
    let mut out = BTreeSet::from([root]);
    // Each round adds at least one process or ends: at most one round per process.
    for _ in 0..=parents.len() {
        let before = out.len();
        out.extend(parents.iter().filter(|(_, pp)| out.contains(pp)).map(|(p, _)| *p).collect::<Vec<_>>());
        if out.len() == before {
            break;
        }
    }
    out
}

/// Every process whose command line holds `secret` now: `(pid, command line)`.
fn cmdlines_with(secret: &[u8]) -> Vec<(u32, String)> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if contains(&cmd, secret) {
                hits.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
    }
    hits
}

/// Stops the script (and so the daemons it started) however the test ends.
struct Run {
    child: Child,
    dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("go"), b"");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SIGTERM: the script's trap stops the daemons; then make sure.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        std::thread::sleep(Duration::from_secs(2));
        for f in ["dpud.pid", "proxy.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("state").join(f)) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_setup_never_shows_the_secret_and_a_replay_still_authenticates() {
    let dir = tempfile::Builder::new().prefix("pov-e2e-secrets").tempdir().unwrap();
    let t = dir.path();
    // A secret of this run only, so no other process on the machine holds it.
    let secret =
        format!("kr{}", pattern(12, u64::from(std::process::id())).iter().map(|b| format!("{b:02x}")).collect::<String>());
    let key = t.join("demo.key");
    write_key_file(&key, secret.as_bytes());
    // The tree pov-host copies in.
    for (i, n) in [0usize, 17, 4096, 70_000, 1 << 20].into_iter().enumerate() {
        let d = t.join("src").join(format!("d{}", i % 2));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), pattern(n, i as u64)).unwrap();
    }
    // Shims: `pov_bin_dir` is $CARGO_TARGET_DIR/$POV_PROFILE.
    let shims = t.join("target").join("debug");
    std::fs::create_dir_all(&shims).unwrap();
    let argv_log = t.join("argv.log");
    for name in SHIMMED {
        let shim = shims.join(name);
        let text = format!(
            "#!/bin/sh\nprintf '%s ' \"$0\" \"$@\" >>'{log}'\nprintf '\\n' >>'{log}'\nexec '{real}' \"$@\"\n",
            log = argv_log.display(),
            real = bin(name).display()
        );
        std::fs::write(&shim, text).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = t.join("demo.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let child = Command::new("bash")
        .arg(&script)
        .env("T", t)
        .env("POV_REPO", repo)
        .env("POV_SECRET_FILE", &key)
        .env("CARGO_TARGET_DIR", t.join("target"))
        .env("POV_PROFILE", "debug")
        .env("RUST_LOG", "info")
        .env_remove("POV_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.join("script.err")).unwrap())
        .spawn()
        .unwrap();
    let bash_pid = child.id();
    let mut run = Run { child, dir: t.to_path_buf() };

    // Scan every process's command line until the script ends (bounded by its deadline).
    let done = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let scanner = {
        let (done, seen, secret) = (done.clone(), seen.clone(), secret.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(240);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                seen.lock().unwrap().extend(cmdlines_with(secret.as_bytes()));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // While the stack runs: the daemons' command lines and environments.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !t.join("running").exists() {
        if let Ok(Some(st)) = run.child.try_wait() {
            let out = std::fs::read_to_string(t.join("script.err")).unwrap_or_default();
            let argv = std::fs::read_to_string(&argv_log).unwrap_or_default();
            assert!(!argv.contains(&secret), "the secret was on a command line:\n{argv}");
            panic!("the demo-like script failed ({st}) before the stack ran:\n{out}");
        }
        assert!(Instant::now() < deadline, "the stack did not come up in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ours = descendants(bash_pid);
    let daemons: Vec<u32> = ["dpud.pid", "proxy.pid"]
        .iter()
        .map(|f| std::fs::read_to_string(t.join("state").join(f)).unwrap().trim().parse().unwrap())
        .collect();
    for pid in &daemons {
        assert!(ours.contains(pid), "daemon {pid} not found below the script {bash_pid}: {ours:?}");
    }
    for pid in &ours {
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) {
                assert!(!contains(&bytes, secret.as_bytes()), "process {pid}'s {what} holds the secret");
            }
        }
    }
    std::fs::write(t.join("go"), b"").unwrap();

    // The replay and the rest of the script.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = run.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the demo-like script did not finish in time");
        std::thread::sleep(Duration::from_millis(20));
    };
    done.store(true, Ordering::Relaxed);
    scanner.join().unwrap();
    let stderr = std::fs::read_to_string(t.join("script.err")).unwrap_or_default();

    // (a) No command line ever held the secret.
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(!argv.contains(&secret), "the secret was on a command line:\n{argv}");
    let seen = seen.lock().unwrap();
    assert!(seen.is_empty(), "processes with the secret on their command line: {seen:?}");
    assert!(status.success(), "the demo-like script failed ({status}):\n{stderr}");
    // The shims saw the whole setup (so the check above looked at the right thing).
    for call in ["keyring_file_add_key", "pov_tenant_create", "pov_device_create", "cp -r", "--config"] {
        assert!(argv.contains(call), "{call:?} not in the recorded command lines:\n{argv}");
    }

    // (b) save_config over RPC, and the file the second pov-dpud replayed, name the key
    // file and never hold the secret; (d) nor do the listings.
    for f in ["saved.json", "saved2.json", "keys.json", "tenants.json"] {
        let text = std::fs::read_to_string(t.join(f)).unwrap();
        assert!(!text.contains(&secret), "{f} holds the secret:\n{text}");
    }
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(t.join("saved.json")).unwrap()).unwrap();
    let calls = saved["subsystems"][0]["config"].as_array().unwrap();
    let add = calls.iter().find(|c| c["method"] == "keyring_file_add_key").expect("a keyring_file_add_key call");
    assert_eq!(add["params"]["path"].as_str().map(PathBuf::from), Some(std::fs::canonicalize(&key).unwrap()));
    let tenant = calls.iter().find(|c| c["method"] == "pov_tenant_create").expect("a pov_tenant_create call");
    assert_eq!(tenant["params"], serde_json::json!({"name": "demo", "key": "demo-key"}));
    let tenants: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(t.join("tenants.json")).unwrap()).unwrap();
    assert_eq!(tenants, serde_json::json!([{"name": "demo", "key": "demo-key"}]));
    // The replayed daemon authenticated a real pov-host session: same listing.
    let (ls1, ls2) = (std::fs::read_to_string(t.join("ls1.txt")).unwrap(), std::fs::read_to_string(t.join("ls2.txt")).unwrap());
    assert!(ls1.contains("d0") && ls1.contains("d1"), "{ls1}");
    assert_eq!(ls1, ls2);
}
