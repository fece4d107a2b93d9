//! Proxy failover with real processes (issue 11, part 3): one PoV device in front of
//! three `pov-proxy` processes that share one local backend directory (as proxies of
//! one Ceph cluster share the cluster). Three hosts, one session each (so each has a
//! different home proxy), do verified IO: positional 4 KiB writes, recording what was
//! acknowledged, and reads checking it. Faults, one after the other:
//!
//! 1. `kill -9` one proxy: its connection breaks, its requests move to the others;
//! 2. stop another one with SIGSTOP: a black hole (the kernel still holds the TCP
//!    connection, nothing answers), declared down after an unanswered ping; a read
//!    caught on it is resent, a write caught on it waits for it (resent elsewhere, its
//!    stale copy could land over newer data when the proxy runs again: this test lost
//!    an acknowledged block that way before the rule);
//! 3. bring both back (restart the killed one on its address, SIGCONT the other): both
//!    rejoin.
//!
//! Each: zero application errors, zero acknowledged bytes lost (every block read back
//! at the end), and the longest IO completed in each phase printed.

use pov_e2e::{pattern, rpc, spawn_proxy, Daemon, Stack, SECRET};
use pov_host::{Device, OpenOptions, Session};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 64;
const WORKERS: u64 = 3;

/// What each worker saw: acknowledged content per block, errors, and the longest IO
/// (µs) since the last reset.
#[derive(Default)]
struct Seen {
    acked: Mutex<HashMap<(u64, u64), u64>>,
    errors: Mutex<Vec<String>>,
    ios: AtomicU64,
    max_us: AtomicU64,
    /// Session failovers the workers' sessions went through.
    failovers: AtomicU64,
}

fn worker(spec: String, i: u64, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let dev = Device::open(&spec).expect("open the device");
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).expect("session");
    let path = format!("/failover-{i}");
    let f = OpenOptions::new().write(true).create(true).open(&s, &path).expect("create");
    let t0 = Instant::now();
    let mut buf = vec![0u8; BLOCK];
    for k in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        let block = (k * 7 + i) % BLOCKS;
        let seed = (i << 32) | k;
        let t = Instant::now();
        match f.write_at(&pattern(BLOCK, seed), block * BLOCK as u64) {
            Ok(n) if n == BLOCK => {
                seen.acked.lock().unwrap().insert((i, block), seed);
            }
            r => seen.errors.lock().unwrap().push(format!("worker {i} write {k}: {r:?}")),
        }
        // Read back an earlier block and check it against what was acknowledged.
        let back = (k * 13 + 5) % BLOCKS;
        let want = seen.acked.lock().unwrap().get(&(i, back)).copied();
        match f.read_at(&mut buf, back * BLOCK as u64) {
            Ok(n) if n == BLOCK || want.is_none() => {
                if let Some(seed) = want {
                    if buf != pattern(BLOCK, seed) {
                        seen.errors.lock().unwrap().push(format!("worker {i}: block {back} is not what was acknowledged"));
                    }
                }
            }
            r => seen.errors.lock().unwrap().push(format!("worker {i} read {k}: {r:?}")),
        }
        seen.max_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        seen.ios.fetch_add(2, Ordering::Relaxed);
    }
    seen.failovers.fetch_add(s.failovers(), Ordering::Relaxed);
    drop(f);
    s.close().ok();
}

fn proxies_state(stack: &Stack) -> Vec<(String, String)> {
    let devs = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({})).unwrap();
    let dev = devs.as_array().unwrap().iter().find(|d| d["name"] == "pov3").expect("pov3").clone();
    let list = dev["stats"]["proxies"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|p| (p["endpoint"].as_str().unwrap_or("").to_string(), p["state"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn device_stats(stack: &Stack) -> Value {
    let devs = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({})).unwrap();
    devs.as_array().unwrap().iter().find(|d| d["name"] == "pov3").expect("pov3")["stats"].clone()
}

/// Runs the workload for `secs` after `fault`, returns (longest IO during it, IOs).
fn phase(seen: &Seen, secs: u64, fault: impl FnOnce()) -> (Duration, u64) {
    std::thread::sleep(Duration::from_millis(500));
    seen.max_us.store(0, Ordering::Relaxed);
    let ios = seen.ios.load(Ordering::Relaxed);
    fault();
    std::thread::sleep(Duration::from_secs(secs));
    (Duration::from_micros(seen.max_us.load(Ordering::Relaxed)), seen.ios.load(Ordering::Relaxed) - ios)
}

#[test]
fn proxies_killed_and_black_holed_lose_nothing_and_rejoin() {
    let stack = Stack::start(json!({}));
    let args = stack.pki.proxy_args(&stack.enrolled);
    let mut extra: Vec<(Daemon, String)> = (0..2).map(|_| spawn_proxy(&stack.backend_spec, "tls:127.0.0.1:0", &args)).collect();
    let endpoints = vec![stack.proxy_endpoint(), format!("tls:{}", extra[0].1), format!("tls:{}", extra[1].1)];
    let spec = create_pov3(&stack, &endpoints);

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_workers(&spec, WORKERS, &seen, &stop);
    let (steady, steady_ios) = phase(&seen, 2, || {});
    let all_up = proxies_state(&stack);
    assert!(all_up.iter().all(|p| p.1 == "up"), "every proxy in use before the faults: {all_up:?}");

    // 1. kill -9 proxy #1.
    let (killed, killed_ios) = phase(&seen, 3, || extra[0].0.kill());
    let st = proxies_state(&stack);
    assert_eq!(st[1].1, "down", "the killed proxy is down: {st:?}");

    // 2. SIGSTOP proxy #2: a black hole.
    let stopped_pid = extra[1].0.pid() as i32;
    let (holed, holed_ios) = phase(&seen, 4, || {
        // SAFETY: kill(2) on a child process this test started; no memory involved.
        assert_eq!(unsafe { libc::kill(stopped_pid, libc::SIGSTOP) }, 0);
    });
    let st = proxies_state(&stack);
    assert_eq!((st[1].1.as_str(), st[2].1.as_str()), ("down", "down"), "both failed proxies down: {st:?}");

    // 3. Both come back: restart #1 on its address, SIGCONT #2.
    let t_back = Instant::now();
    let (back, back_ios) = phase(&seen, 1, || {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(stopped_pid, libc::SIGCONT) }, 0);
        extra[0] = spawn_proxy(&stack.backend_spec, &endpoints_addr(&extra[0].1), &args);
    });
    let rejoin = wait_until_none_down(&stack, t_back, |st| st.iter().any(|p| p.1 == "down"));
    std::thread::sleep(Duration::from_millis(500));
    stop_workers(&stop, workers);

    let errors = seen.errors.lock().unwrap().clone();
    let stats = device_stats(&stack);
    // Requests the stopped proxy still held when it was continued, that it did not run
    // because the DPU had reset their connection (the fence against stale writes).
    let fenced = extra[1].0.take_lines().iter().filter(|l| l.contains("not running a data-changing request")).count();
    println!("failover figures (3 proxies, local backend shared, 3 hosts doing 4 KiB write+read at QD1):");
    println!("  steady:       {steady_ios:>6} IOs in 2 s, longest IO {steady:?}");
    println!("  kill -9 #1:   {killed_ios:>6} IOs in 3 s, longest IO {killed:?} (time to recover)");
    println!("  SIGSTOP #2:   {holed_ios:>6} IOs in 4 s, longest IO {holed:?} (reads caught on it: resent)");
    println!(
        "  both back:    {back_ios:>6} IOs in 1 s, longest IO {back:?} (a write caught on #2 completes now); all up after {rejoin:?}"
    );
    println!(
        "  device: resent {} rerouted {} proxy_downs {} pings {}",
        stats["resent"], stats["rerouted"], stats["proxy_downs"], stats["pings"]
    );
    println!("  stale data-changing requests the continued proxy did not run: {fenced}");
    assert!(errors.is_empty(), "application errors: {errors:?}");
    assert!(killed_ios > 0 && holed_ios > 0, "IO went on during the faults");
    assert!(stats["proxy_downs"].as_u64().unwrap() >= 2, "{stats}");
    assert!(holed < Duration::from_secs(4), "a black hole is left within the bound: {holed:?}");

    // Nothing acknowledged is lost: every block reads back as last acknowledged.
    let n = verify_acked(&spec, &seen);
    println!("  verified {n} acknowledged blocks after the faults");
}

/// Reads back every block the workers had acknowledged; returns how many.
fn verify_acked(spec: &str, seen: &Seen) -> usize {
    let dev = Device::open(spec).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
    let acked = seen.acked.lock().unwrap().clone();
    let mut buf = vec![0u8; BLOCK];
    for ((i, block), seed) in &acked {
        let f = OpenOptions::new().open(&s, &format!("/failover-{i}")).unwrap();
        assert_eq!(f.read_at(&mut buf, block * BLOCK as u64).unwrap(), BLOCK);
        assert!(buf == pattern(BLOCK, *seed), "worker {i} block {block}: acknowledged data lost");
    }
    s.close().ok();
    acked.len()
}

/// Writes pov-dpud's `save_config` to a file for a restart; returns its path.
fn save_config(stack: &Stack) -> std::path::PathBuf {
    let saved = rpc(&stack.rpc_sock, "save_config", json!({})).unwrap();
    let cfg = stack.dir.path().join("saved.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    cfg
}

/// Creates PoV device `pov3` on `endpoints`; returns its device spec.
fn create_pov3(stack: &Stack, endpoints: &[String]) -> String {
    let sock = stack.dir.path().join("pov3.sock");
    rpc(&stack.rpc_sock, "pov_device_create", json!({"name": "pov3", "socket": sock, "proxies": endpoints}))
        .expect("create device pov3");
    format!("vhost-user:{}", sock.display())
}

/// Stops the workers and waits for them.
fn stop_workers(stop: &AtomicBool, workers: Vec<std::thread::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
}

/// Waits (at most 10 s from `since`) until `down` no longer holds for the proxies'
/// states; returns how long it took from `since`.
fn wait_until_none_down(stack: &Stack, since: Instant, down: impl Fn(&[(String, String)]) -> bool) -> Duration {
    let mut st = proxies_state(stack);
    while down(&st) {
        assert!(since.elapsed() < Duration::from_secs(10), "a proxy never rejoined: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
        st = proxies_state(stack);
    }
    since.elapsed()
}

/// Starts `n` verified-IO workers on `spec`.
fn start_workers(spec: &str, n: u64, seen: &Arc<Seen>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (spec, seen, stop) = (spec.to_string(), seen.clone(), stop.clone());
            std::thread::spawn(move || worker(spec, i, seen, stop))
        })
        .collect()
}

/// `HOST:PORT` → the `tls:` listen address.
fn endpoints_addr(addr: &str) -> String {
    format!("tls:{addr}")
}

/// A network partition, for real: a fourth proxy runs in a network namespace behind a
/// veth pair; the test cuts the link (packets vanish, nothing is refused), then heals
/// it. Hosts doing verified IO see no error; the proxy is declared down within the
/// bound and rejoins after the link heals. Needs root and iproute2 (`ip netns`):
/// without them it is skipped, except under `CI`, where it fails.
#[test]
fn a_partitioned_proxy_is_left_and_rejoins_when_the_link_heals() {
    let ns = match pov_e2e::Netns::new(1) {
        Ok(ns) => ns,
        Err(e) if std::env::var_os("CI").is_none() => return eprintln!("SKIPPED: no network namespace: {e}"),
        Err(e) => panic!("cannot make a network namespace: {e}"),
    };
    let stack = Stack::start(json!({}));
    // Plain TCP to the namespace (the certificates name only loopback): the proxy
    // needs --insecure-tcp for a non-loopback address.
    let listen = format!("tcp:{}:0", ns.inside);
    let (far, far_addr) = pov_e2e::spawn_proxy_in(Some(&ns), &stack.backend_spec, &listen, &["--insecure-tcp".into()]);
    let endpoints = vec![format!("tcp:{far_addr}"), stack.proxy_endpoint()];
    let spec = create_pov3(&stack, &endpoints);
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_workers(&spec, 2, &seen, &stop);
    let (steady, steady_ios) = phase(&seen, 1, || {});
    assert_eq!(proxies_state(&stack)[0].1, "up", "the far proxy serves before the cut");
    let (cut, cut_ios) = phase(&seen, 4, || ns.set_link(false).expect("cut the link"));
    assert_eq!(proxies_state(&stack)[0].1, "down", "the partitioned proxy is down");
    let t_heal = Instant::now();
    ns.set_link(true).expect("heal the link");
    let rejoin = wait_until_none_down(&stack, t_heal, |st| st[0].1 == "down");
    std::thread::sleep(Duration::from_millis(300));
    stop_workers(&stop, workers);
    drop(far);
    let errors = seen.errors.lock().unwrap().clone();
    println!("partition figures (2 proxies, one across a veth link in a netns, 2 hosts, 4 KiB write+read at QD1):");
    println!("  steady:    {steady_ios:>6} IOs in 1 s, longest IO {steady:?}");
    println!("  link cut:  {cut_ios:>6} IOs in 4 s, longest IO {cut:?} (time to recover)");
    println!("  healed:    rejoined after {rejoin:?}");
    assert!(errors.is_empty(), "application errors: {errors:?}");
    assert!(cut_ios > 0 && cut < Duration::from_secs(3), "IO went on across the cut: {cut_ios} IOs, longest {cut:?}");
}

/// A device with one proxy rides through that proxy's restart (kill -9, start again on
/// its address): requests caught in flight and new ones are held until it answers
/// again, so hosts see a delay, not an error.
#[test]
fn a_single_proxy_restart_costs_a_delay_not_an_error() {
    let mut stack = Stack::start(json!({}));
    let spec = stack.device_spec();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_workers(&spec, 2, &seen, &stop);
    let (steady, steady_ios) = phase(&seen, 1, || {});
    let mut restarts = Vec::new();
    for _ in 0..3 {
        let (longest, ios) = phase(&seen, 2, || stack.restart_proxy());
        restarts.push((longest, ios));
    }
    stop_workers(&stop, workers);
    let errors = seen.errors.lock().unwrap().clone();
    let devs = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "pov0"})).unwrap();
    println!("single-proxy restart figures (2 hosts, 4 KiB write+read at QD1):");
    println!("  steady:  {steady_ios:>6} IOs in 1 s, longest IO {steady:?}");
    for (i, (longest, ios)) in restarts.iter().enumerate() {
        println!("  restart {}: {ios:>6} IOs in 2 s, longest IO {longest:?} (time to recover)", i + 1);
    }
    println!("  device: held {} resent {}", devs[0]["stats"]["held"], devs[0]["stats"]["resent"]);
    assert!(errors.is_empty(), "application errors across proxy restarts: {errors:?}");
    assert!(restarts.iter().all(|(_, ios)| *ios > 0), "IO went on after each restart");
}

/// PoV server failover (issue 11, part 4): `pov-dpud` is killed with SIGKILL and
/// started again from its saved configuration while hosts do verified IO. Each host's
/// session notices (its heartbeat or its IO fails), reconnects to the new vhost-user
/// socket, opens a new session with its queues and files, and resends what was in
/// flight: zero application errors, every acknowledged block read back.
#[test]
fn a_pov_dpud_restart_costs_a_delay_not_an_error() {
    let mut stack = Stack::start(json!({}));
    let cfg = save_config(&stack);
    let spec = stack.device_spec();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_workers(&spec, 2, &seen, &stop);
    let (steady, steady_ios) = phase(&seen, 1, || {});
    let mut restarts = Vec::new();
    for _ in 0..2 {
        restarts.push(phase(&seen, 6, || stack.restart_dpud(Some(&cfg))));
    }
    stop_workers(&stop, workers);
    let errors = seen.errors.lock().unwrap().clone();
    println!("pov-dpud restart figures (2 hosts, 4 KiB write+read at QD1, vhost-user):");
    println!("  steady:  {steady_ios:>6} IOs in 1 s, longest IO {steady:?}");
    for (i, (longest, ios)) in restarts.iter().enumerate() {
        println!("  restart {}: {ios:>6} IOs in 6 s, longest IO {longest:?} (time to recover)", i + 1);
    }
    println!("  session failovers: {}", seen.failovers.load(Ordering::Relaxed));
    assert!(errors.is_empty(), "application errors across pov-dpud restarts: {errors:?}");
    assert!(restarts.iter().all(|(_, ios)| *ios > 0), "IO went on after each restart");
    assert!(seen.failovers.load(Ordering::Relaxed) >= 2, "the sessions failed over");

    let n = verify_acked(&spec, &seen);
    println!("  verified {n} acknowledged blocks after the restarts");
}

/// The issue's measured failure, as a user meets it: `pov-host cp -r` across a
/// `kill -9` and restart of `pov-dpud` used to hang until killed and leave a truncated
/// file. Now it completes by itself and the tree reads back identical.
#[test]
fn pov_host_cp_survives_a_pov_dpud_restart() {
    let mut stack = Stack::start(json!({}));
    let cfg = save_config(&stack);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut bytes = 0usize;
    for d in 0..10u64 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..150u64 {
            let data = pattern(4096 + ((d * 150 + f) as usize * 977) % 60_000, d * 1000 + f);
            bytes += data.len();
            std::fs::write(dir.join(format!("f{f}")), data).unwrap();
        }
    }
    let mut cp = stack.host_cmd();
    cp.args(["cp", "-r"]).arg(&src).arg("pov:/tree");
    let t0 = Instant::now();
    let child = cp.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    stack.restart_dpud(Some(&cfg));
    let restarted_at = t0.elapsed();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()).ok());
    let out = rx.recv_timeout(Duration::from_secs(90)).expect("pov-host cp hung across the restart").unwrap();
    let took = t0.elapsed();
    assert!(out.status.success(), "cp failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(took > restarted_at, "the copy spanned the restart");
    let summary = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let again = stderr.matches("copying it again").count();
    println!("pov-host cp -r of 1500 files ({bytes} bytes) with pov-dpud restarted at {restarted_at:?}: done in {took:?}");
    println!("  cp said: {}; files started over after an unknown outcome: {again}", summary.trim());
    assert!(summary.contains(&format!("copied 1500 files ({bytes} bytes")), "cp's summary: {summary}");
    let back = work.path().join("back");
    let mut cp = stack.host_cmd();
    cp.args(["cp", "-r", "pov:/tree"]).arg(&back);
    let out = cp.output().unwrap();
    assert!(out.status.success(), "cp back failed: {}", String::from_utf8_lossy(&out.stderr));
    for d in 0..10u64 {
        for f in 0..150u64 {
            let rel = format!("d{d}/f{f}");
            let a = std::fs::read(src.join(&rel)).unwrap();
            let b = std::fs::read(back.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(a == b, "{rel} differs after the restart ({} vs {} bytes)", a.len(), b.len());
        }
    }
}
