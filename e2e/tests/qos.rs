//! Tenant QoS policies with real daemons (issue 12, parts 1 and 2): a limit throttles a
//! tenant's IO — delayed, never failed — while another tenant on the same device is not
//! held back; policies are refused when out of range, and `save_config` replays them.

use pov_e2e::{rpc, Stack, SECRET};
use pov_host::{Device, OpenOptions, Session};
use serde_json::json;
use std::time::{Duration, Instant};

/// `n` 4 KiB reads of one file of `tenant`; returns how long they took.
fn reads(spec: &str, tenant: &str, n: u32) -> Duration {
    let dev = Device::open(spec).unwrap();
    let s = Session::open(&dev, tenant, SECRET.as_bytes(), 1).unwrap();
    let f = OpenOptions::new().write(true).create(true).open(&s, "/qos").unwrap();
    f.write_at(&[7u8; 4096], 0).unwrap();
    let mut buf = vec![0u8; 4096];
    let t0 = Instant::now();
    for _ in 0..n {
        assert_eq!(f.read_at(&mut buf, 0).expect("a throttled read is delayed, not failed"), 4096);
    }
    let took = t0.elapsed();
    s.close().unwrap();
    took
}

#[test]
fn a_limited_tenant_is_delayed_not_failed_and_others_are_not_held_back() {
    let mut stack = Stack::start(json!({}));
    let spec = stack.device_spec();
    // 40 IO/s: the bucket holds one second's worth, so 120 reads need >= 2 s.
    rpc(&stack.rpc_sock, "pov_tenant_set_qos", json!({"name": "acme", "class": "bc", "rw_ios_per_sec": 40})).unwrap();
    let got = rpc(&stack.rpc_sock, "pov_tenant_get_qos", json!({"name": "acme"})).unwrap();
    assert_eq!(got["rw_ios_per_sec"], 40, "{got}");
    let (limited, free) = std::thread::scope(|sc| {
        let a = sc.spawn(|| reads(&spec, "acme", 120));
        let b = sc.spawn(|| reads(&spec, "other", 120));
        (a.join().unwrap(), b.join().unwrap())
    });
    let d = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "pov0"})).unwrap()[0]["stats"].clone();
    println!("120 reads each: limited tenant (40 IO/s) {limited:?}, unlimited tenant {free:?}; device qos {}", d["qos"]);
    assert!(limited >= Duration::from_millis(1900), "the limit holds: {limited:?}");
    assert!(free < limited / 2, "the other tenant is not held back: {free:?} vs {limited:?}");
    assert!(d["qos"]["throttled"].as_u64().unwrap_or(0) > 0, "{d}");

    // Out-of-range policies are refused, naming the field; unknown tenants too.
    for (bad, word) in [
        (json!({"name": "acme", "class": "bc", "weight": 0}), "weight"),
        (json!({"name": "acme", "class": "gold"}), "class"),
        (json!({"name": "acme", "class": "bc", "latency_target_us": 100}), "latency_target_us"),
        (json!({"name": "nobody", "class": "lc"}), "nobody"),
    ] {
        let e = rpc(&stack.rpc_sock, "pov_tenant_set_qos", bad.clone()).expect_err("refused");
        assert!(e.to_string().contains(word), "{bad} -> {e}");
    }

    // save_config carries the policy; a restarted pov-dpud enforces it again.
    rpc(&stack.rpc_sock, "pov_tenant_set_qos", json!({"name": "other", "class": "lc", "latency_target_us": 500})).unwrap();
    let saved = rpc(&stack.rpc_sock, "save_config", json!({})).unwrap();
    let cfg = stack.dir.path().join("saved.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    stack.restart_dpud(Some(&cfg));
    let all = rpc(&stack.rpc_sock, "pov_tenant_get_qos", json!({})).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    assert!(reads(&spec, "acme", 60) >= Duration::from_millis(450), "the replayed limit holds");
    rpc(&stack.rpc_sock, "pov_tenant_clear_qos", json!({"name": "acme"})).unwrap();
    assert_eq!(rpc(&stack.rpc_sock, "pov_tenant_get_qos", json!({"name": "acme"})).unwrap()["default"], true);
}

/// The class travels host → DPU → proxy and each stage acts on it (issue 12, parts 2-4):
/// with a BC window of 1 MiB the device never has more than one window plus one request
/// of BC bytes at the proxy while 6 BC writers push 1 MiB writes, holds the rest (delayed,
/// not failed: every write reads back), and the proxy's QoS stage (2 workers) counts the
/// LC tenant's reads as LC and the writes as BC, with its controller stepping; the
/// options survive `save_config`.
#[test]
fn the_bc_window_bounds_bc_bytes_at_the_proxy_and_the_class_reaches_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let stats_file = dir.path().join("proxy-stats.json");
    let stats_arg = stats_file.to_str().unwrap().to_string();
    let mut stack = Stack::start_with(None, json!({}), &["--workers", "2", "--stats-file", &stats_arg]);
    let spec = stack.device_spec();
    let sock = stack.rpc_sock.clone();
    let opts = json!({"bc_in_flight_kib": 1024, "bc_in_flight_min_kib": 1024});
    rpc(&sock, "pov_qos_set_options", opts).unwrap();
    let e = rpc(&sock, "pov_qos_set_options", json!({"bc_in_flight_min_kib": 4096})).expect_err("min above max");
    assert!(e.to_string().contains("above"), "{e}");
    rpc(&sock, "pov_tenant_set_qos", json!({"name": "other", "class": "lc", "latency_target_us": 5000})).unwrap();
    const WRITERS: usize = 6;
    const WRITES: usize = 12;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let lc_reads = std::thread::scope(|sc| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (spec, done) = (spec.clone(), &done);
                sc.spawn(move || {
                    let dev = Device::open(&spec).unwrap();
                    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
                    let f = OpenOptions::new().write(true).create(true).open(&s, &format!("/bc{w}")).unwrap();
                    for i in 0..WRITES {
                        let data = vec![(w * WRITES + i) as u8; 1 << 20];
                        f.write_at(&data, (i as u64) << 20).expect("a held BC write is delayed, not failed");
                    }
                    let mut back = vec![0u8; 1 << 20];
                    for i in 0..WRITES {
                        assert_eq!(f.read_at(&mut back, (i as u64) << 20).unwrap(), 1 << 20);
                        assert!(back.iter().all(|&b| b == (w * WRITES + i) as u8), "writer {w} write {i} reads back");
                    }
                    s.close().unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
            })
            .collect();
        let lc = sc.spawn(|| {
            let dev = Device::open(&spec).unwrap();
            let s = Session::open(&dev, "other", SECRET.as_bytes(), 1).unwrap();
            let f = OpenOptions::new().write(true).create(true).open(&s, "/lc").unwrap();
            f.write_at(&[9u8; 4096], 0).unwrap();
            let mut buf = vec![0u8; 4096];
            let mut n = 0u64;
            while done.load(std::sync::atomic::Ordering::Relaxed) < WRITERS && n < 20_000 {
                assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
                n += 1;
            }
            s.close().unwrap();
            n
        });
        let n = lc.join().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        n
    });
    let d = rpc(&sock, "pov_device_get_devices", json!({"name": "pov0"})).unwrap()[0]["stats"].clone();
    println!(
        "device: peak BC bytes at the proxy {}, window holds {}, latency {}, window {}",
        d["bc_in_flight_peak_bytes"], d["qos"]["bc_window_holds"], d["latency"], d["bc_window"]
    );
    let peak = d["bc_in_flight_peak_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak <= 2 << 20, "within one window plus one request: {peak}");
    assert!(d["qos"]["bc_window_holds"].as_u64().unwrap() > 0, "the window held BC work back: {d}");
    assert_eq!(d["bc_in_flight_bytes"], 0, "nothing left counted in flight: {d}");
    assert!(d["latency"]["lc"]["count"].as_u64().unwrap() >= lc_reads, "{d}");
    // The proxy's QoS stage saw the classes the DPU gave (its stats file is rewritten
    // every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let q = loop {
        let q = std::fs::read(&stats_file).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let count = |q: &serde_json::Value, class: &str| q["qos"][class]["served"].as_u64().unwrap_or(0);
        // Every write and read-back is BC; every read of the LC tenant is LC.
        if let Some(q) = q.as_ref().filter(|q| count(q, "bc") >= (2 * WRITERS * WRITES) as u64 && count(q, "lc") >= lc_reads) {
            break q["qos"].clone();
        }
        assert!(Instant::now() < deadline, "the proxy's stats file never counted the BC and LC requests: {q:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("proxy QoS stage: {q}");
    assert!(q["lc"]["served"].as_u64().unwrap() >= lc_reads, "the LC tenant's reads are LC at the proxy: {q} vs {lc_reads}");
    assert!(q["controller"]["steps"].as_u64().unwrap() > 0, "{q}");
    assert_eq!(q["bc_outstanding"], 0, "{q}");
    // The options are saved and replayed.
    let saved = rpc(&sock, "save_config", json!({})).unwrap();
    let cfg = stack.dir.path().join("saved-qos.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    stack.restart_dpud(Some(&cfg));
    let o = rpc(&stack.rpc_sock, "pov_qos_get_options", json!({})).unwrap();
    assert_eq!(o, json!({"enabled": true, "bc_in_flight_kib": 1024, "bc_in_flight_min_kib": 1024}));
}
