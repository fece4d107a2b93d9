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
