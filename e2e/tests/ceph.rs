//! The whole data path onto Ceph: host driver (libblkio over vhost-user) -> pov-dpud
//! -> TLS -> pov-proxy --backend ceph -> CephFS on a dev cluster started by
//! `scripts/ceph-dev` (stopped when the test ends). Outside CI the test is skipped
//! (loudly) when Ceph is not installed; under CI=true it fails.

use pov_e2e::{pattern, Stack};
use pov_proxy::backend::ceph::dev::DevCluster;
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn write_tree(root: &Path) -> usize {
    let sizes = [0usize, 1, 511, 4096, 65_537, (1 << 20) + 3, 3 << 20];
    for (i, n) in sizes.iter().enumerate() {
        let d = root.join(format!("level{}/deeper{}", i % 3, i % 2));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("blob{i}")), pattern(*n, 7 + i as u64)).unwrap();
    }
    for i in 0..25 {
        std::fs::write(root.join(format!("note{i}.txt")), format!("note {i}\n")).unwrap();
    }
    sizes.len() + 25
}

fn ok(mut c: Command) -> String {
    let out = c.output().expect("run pov-host");
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn host_directory_tree_round_trip_through_ceph() {
    let Some(cluster) = DevCluster::shared() else { return };
    let spec = format!("ceph:conf={},root=/e2e", cluster.conf().display());
    let stack = Stack::start_on(Some(&spec), json!({}));
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    let files = write_tree(&src);
    let mut c = stack.host_cmd();
    c.args(["cp", "-r"]).arg(&src).arg("pov:/tree");
    ok(c);
    let mut c = stack.host_cmd();
    c.args(["cp", "-r", "pov:/tree"]).arg(&out);
    ok(c);
    let diff = Command::new("diff").arg("-r").arg(&src).arg(&out).output().expect("run diff");
    assert!(diff.status.success(), "trees differ:\n{}", String::from_utf8_lossy(&diff.stdout));
    let copied = walk(&out);
    assert_eq!(copied, files, "every file came back");
    // The files really are in CephFS: a second proxy on the same cluster sees them.
    let mut b = pov_proxy::backend::ceph::CephBackend::open(&cluster.config("/e2e")).expect("mount");
    use pov_proxy::backend::Backend;
    let s = b.stat("acme", "tree/level0/deeper0/blob6").expect("stat in CephFS");
    assert_eq!(s.size, 3 << 20);
    let mut c = stack.host_cmd();
    c.args(["rm", "-r", "pov:/tree"]);
    ok(c);
    assert_eq!(b.stat("acme", "tree").map(|_| ()), Err(pov_proto::Status::NotFound));
    drop(b);
    drop(stack);
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { 1 })
        .sum()
}

/// `ceph osd map POOL OBJECT` as JSON.
fn osd_map(conf: &Path, pool: &str, object: &str) -> serde_json::Value {
    let out = Command::new("ceph")
        .args(["-c"])
        .arg(conf)
        .args(["osd", "map", pool, object, "--format", "json"])
        .output()
        .expect("run ceph osd map");
    assert!(out.status.success(), "ceph osd map failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ceph osd map prints JSON")
}

/// PoV computes object placement exactly as Ceph does: for CephFS data-object names
/// (and a few odd lengths), the raw hash and the PG from `pov_proto::route` equal what
/// `ceph osd map` prints — rjenkins over every tail length, and the stable mod of a pool
/// whose `pg_num` is not a power of two (so the fold is exercised).
#[test]
fn object_placement_matches_ceph_osd_map() {
    use pov_proto::route::{ceph_stable_mod, ceph_str_hash_rjenkins, cephfs_data_object, pg_num_mask};
    let Some(cluster) = DevCluster::shared() else { return };
    let conf = cluster.conf();
    let ceph = |args: &[&str]| {
        let out = Command::new("ceph").arg("-c").arg(conf).args(args).output().expect("run ceph");
        assert!(out.status.success(), "ceph {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ceph(&["osd", "pool", "create", "pov-placement", "12"]);
    let mut names: Vec<String> = (0..24u64).map(|i| cephfs_data_object(0x10000000000 + i * 977, i << 22, 4 << 20)).collect();
    names.extend((0..14).map(|n| "x".repeat(n)).filter(|s| !s.is_empty()));
    names.push("rbd_data.1a2b3c4d5e6f.0000000000000007".into());
    for pool in ["pov-data", "pov-placement"] {
        for name in &names {
            let m = osd_map(conf, pool, name);
            let raw = m["raw_pgid"].as_str().expect("raw_pgid");
            let pgid = m["pgid"].as_str().expect("pgid");
            let hash = u32::from_str_radix(raw.split('.').nth(1).unwrap(), 16).unwrap();
            let seed = u32::from_str_radix(pgid.split('.').nth(1).unwrap(), 16).unwrap();
            assert_eq!(ceph_str_hash_rjenkins(name.as_bytes()), hash, "rjenkins of {name:?} ({m})");
            let pg_num = if pool == "pov-placement" { 12 } else { 8 };
            assert_eq!(ceph_stable_mod(hash, pg_num, pg_num_mask(pg_num)), seed, "PG of {name:?} in {pool} ({m})");
        }
    }
    println!("placement of {} object names checked against ceph osd map in 2 pools (8 and 12 PGs)", names.len());
    ceph(&["osd", "pool", "rm", "pov-placement", "pov-placement", "--yes-i-really-really-mean-it"]);
}

/// A file's location key is its CephFS inode: the proxy's Open answers it, and the
/// file's first data object `<inode hex>.00000000` exists in the data pool — the name
/// data-aware routing hashes. And a proxy that is a Ceph-placement cluster member
/// serves a table of the data pool's PGs whose epoch follows the OSD map.
#[test]
fn location_keys_name_the_files_data_objects_and_the_route_table_follows_the_osd_map() {
    use pov_proxy::backend::Backend;
    let Some(cluster) = DevCluster::shared() else { return };
    let mut b = pov_proxy::backend::ceph::CephBackend::open(&cluster.config("/e2e-loc")).expect("mount");
    let ino = b.open("acme", "located", pov_proto::io::flags::CREATE | pov_proto::io::flags::WRITE).expect("create");
    b.write("acme", "located", 0, &pattern(8192, 3), true).expect("write");
    assert!(ino > 1, "an inode number: {ino}");
    let object = pov_proto::route::cephfs_data_object(ino, 0, 4 << 20);
    let st = Command::new("rados").arg("-c").arg(cluster.conf()).args(["-p", "pov-data", "stat", &object]).output().unwrap();
    assert!(st.status.success(), "data object {object} of inode {ino}: {}", String::from_utf8_lossy(&st.stderr));
    b.remove("acme", "located").ok();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.json");
    std::fs::write(
        &file,
        r#"{"epoch": 1, "placement": {"kind": "ceph", "pool": "pov-data"},
            "members": [{"endpoint": "tcp:127.0.0.1:1", "osds": [0]}]}"#,
    )
    .unwrap();
    let c = pov_proxy::cluster::Cluster::load(&file, 0).unwrap();
    let mon = pov_proxy::backend::ceph::CephBackend::monitor(&cluster.config("/")).expect("monitor");
    // (Other tests create pools meanwhile: the OSD map epoch may move.)
    let epoch = || osd_map(cluster.conf(), "pov-data", &object)["epoch"].as_u64().unwrap() as u32;
    let before = epoch();
    c.refresh_ceph(mon.as_ref()).expect("read the OSD map");
    let after = epoch();
    let t = c.table();
    assert_eq!(t.slots(), 8, "one slot per PG of pov-data");
    assert!((1 + before..=1 + after).contains(&t.epoch), "file epoch + OSD map epoch: {} vs {before}..{after}", t.epoch);
    assert!(t.owners.iter().all(|&o| o == 0), "the only OSD's member owns every PG: {:?}", t.owners);
}

/// Data-aware routing on a real 3-OSD cluster (issue 11, part 2): three member proxies
/// with Ceph placement (member N next to `osd.N`), one PoV device on all three, verified
/// writers and readers. The device learns the PG table from the first redirect; then
/// `ceph osd out 1` remaps osd.1's PGs to the other OSDs: the route controllers follow
/// the OSD map (a new epoch, member 1 owns nothing), the device is redirected onto the
/// new table, and the IO goes on with zero errors and nothing acknowledged lost.
#[test]
fn routes_follow_placement_groups_across_an_osd_map_change() {
    use pov_e2e::{rpc, spawn_proxy, SECRET};
    use pov_host::{Device, OpenOptions, Session};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    if !pov_proxy::backend::ceph::dev::installed() {
        assert!(std::env::var_os("CI").is_none(), "Ceph is not installed");
        return eprintln!("SKIPPED: Ceph is not installed");
    }
    let cluster = DevCluster::start_with(3, 16).expect("a 3-OSD dev cluster");
    let conf = cluster.conf().to_path_buf();
    let stack = Stack::start_on(Some(&format!("ceph:conf={},root=/routed", conf.display())), json!({}));
    let ls: Vec<std::net::TcpListener> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(ls);
    let endpoints: Vec<String> = ports.iter().map(|p| format!("tls:127.0.0.1:{p}")).collect();
    let members: Vec<serde_json::Value> =
        endpoints.iter().enumerate().map(|(i, e)| json!({"endpoint": e, "osds": [i]})).collect();
    let file = stack.dir.path().join("cluster.json");
    std::fs::write(&file, json!({"epoch": 1, "placement": {"kind": "ceph", "pool": "pov-data"}, "members": members}).to_string())
        .unwrap();
    let mut proxies: Vec<_> = (0..3)
        .map(|i| {
            let mut args = stack.pki.proxy_args(&stack.enrolled);
            args.extend(["--cluster".into(), file.as_os_str().to_owned(), "--member".into(), i.to_string().into()]);
            let backend = format!("ceph:conf={},root=/routed,session_uuid=pov-e2e-routed-{i}", conf.display());
            spawn_proxy(&backend, &endpoints[i], &args).0
        })
        .collect();
    let sock = stack.dir.path().join("pov3.sock");
    rpc(&stack.rpc_sock, "pov_device_create", json!({"name": "pov3", "socket": sock, "proxies": endpoints})).unwrap();
    let spec = format!("vhost-user:{}", sock.display());
    let device = || rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "pov3"})).unwrap()[0]["stats"].clone();
    let owned = |m: usize| {
        let p = rpc(&stack.rpc_sock, "pov_proxy_get_proxies", json!({"name": "pov3"})).unwrap();
        p["proxies"][m]["slots_owned"].as_u64().unwrap_or(u64::MAX)
    };

    // Verified IO: each worker rewrites blocks of its own files and reads them back.
    let acked: Arc<Mutex<std::collections::HashMap<(u64, u64), u64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let (spec, acked, errors, stop) = (spec.clone(), acked.clone(), errors.clone(), stop.clone());
            std::thread::spawn(move || {
                let dev = Device::open(&spec).unwrap();
                let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
                let files: Vec<_> = (0..4)
                    .map(|f| OpenOptions::new().write(true).create(true).open(&s, &format!("/w{w}/f{f}")).unwrap())
                    .collect();
                let t0 = Instant::now();
                let mut buf = vec![0u8; 4096];
                for k in 0..200_000u64 {
                    if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(120) {
                        break;
                    }
                    let (f, block) = (k % 4, (k / 4) % 8);
                    let seed = (w << 40) | k;
                    match files[f as usize].write_at(&pattern(4096, seed), block * 4096) {
                        Ok(4096) => {
                            acked.lock().unwrap().insert((w * 4 + f, block), seed);
                        }
                        r => errors.lock().unwrap().push(format!("worker {w} write: {r:?}")),
                    }
                    match files[f as usize].read_at(&mut buf, block * 4096) {
                        Ok(4096) if buf == pattern(4096, seed) => {}
                        r => errors.lock().unwrap().push(format!("worker {w} read: {r:?} (content checked)")),
                    }
                }
                s.close().ok();
            })
        })
        .collect();
    let wait = |what: &str, secs: u64, cond: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < Duration::from_secs(secs), "{what} within {secs} s: {}", device());
            std::thread::sleep(Duration::from_millis(100));
        }
        t.elapsed()
    };
    wait("the device learns the PG table", 30, &|| device()["route_epoch"].as_u64().unwrap_or(0) > 1);
    let before = device()["route_epoch"].as_u64().unwrap();
    assert!(owned(1) > 0, "osd.1's member owns PGs before the change");
    let out = Command::new("ceph").arg("-c").arg(&conf).args(["osd", "out", "1"]).output().unwrap();
    assert!(out.status.success(), "ceph osd out 1: {}", String::from_utf8_lossy(&out.stderr));
    let t = wait("the device follows the new PG primaries", 90, &|| {
        device()["route_epoch"].as_u64().unwrap_or(0) > before && owned(1) == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let errs = errors.lock().unwrap().clone();
    let d = device();
    println!(
        "3 OSDs x 3 member proxies: table epoch {before} -> {} {t:?} after `ceph osd out 1`; member 1 owns {} PGs; \
         redirects {}, {} blocks acknowledged, {} errors",
        d["route_epoch"],
        owned(1),
        d["redirects"],
        acked.lock().unwrap().len(),
        errs.len()
    );
    assert!(errs.is_empty(), "application errors: {errs:?}");
    // Nothing acknowledged is lost.
    let dev = Device::open(&spec).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
    let mut buf = vec![0u8; 4096];
    for ((f, block), seed) in acked.lock().unwrap().iter() {
        let h = OpenOptions::new().open(&s, &format!("/w{}/f{}", f / 4, f % 4)).unwrap();
        assert_eq!(h.read_at(&mut buf, block * 4096).unwrap(), 4096);
        assert!(buf == pattern(4096, *seed), "file {f} block {block}: acknowledged data lost");
    }
    s.close().ok();
    for p in proxies.iter_mut() {
        p.stop();
        let line = p.take_lines().into_iter().find(|l| l.contains("cluster member")).unwrap_or_default();
        println!("  {}", line.split("] ").nth(1).unwrap_or(&line));
    }
}
