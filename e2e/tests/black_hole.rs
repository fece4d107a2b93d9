//! A reactor never stalls on connect: two PoV devices on pov-dpud's one reactor, one
//! of them pointed at a loopback "black hole" (a TCP listener that never accepts, its
//! backlog full, so a connect neither completes nor fails for 2 s). While a host keeps
//! asking the black-holed device for files (each ask starts a connection attempt),
//! another host does verified IO on the other device; its latency must not show the
//! attempts. With a connect that blocks the reactor, every attempt stalled every
//! device of the reactor for the full 2 s connect timeout.

use pov_e2e::{pattern, rpc, Stack, SECRET};
use pov_host::{Device, OpenOptions, Session};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_black_holed_proxy_never_stalls_another_device_on_the_reactor() {
    let stack = Stack::start(json!({ "reactor": 0 }));
    let hole = pov_runtime::transport::conformance::TcpBlackHole::new();
    let hole_sock = stack.dir.path().join("hole.sock");
    // Asks are held for a proxy for at most 1 s (the request timeout), then fail.
    let params =
        json!({"name": "hole", "socket": hole_sock, "proxies": [hole.endpoint()], "reactor": 0, "request_timeout_ms": 1000});
    rpc(&stack.rpc_sock, "pov_device_create", params).expect("create the black-holed device");
    let devs = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({})).unwrap();
    let reactors: Vec<u64> = devs.as_array().unwrap().iter().map(|d| d["reactor"].as_u64().unwrap()).collect();
    assert_eq!(reactors, vec![0, 0], "both devices on one reactor: {devs}");

    // The prober: every ask at the black-holed device starts a connection attempt (at
    // most one per 500 ms reconnect interval) that hangs until its 2 s timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        let spec = format!("vhost-user:{}", hole_sock.display());
        std::thread::spawn(move || {
            let dev = Device::open(&spec).expect("open the black-holed device");
            let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).expect("session");
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(30) {
                let r = s.stat("/anything");
                assert!(r.is_err(), "a black hole answered");
                attempts.fetch_add(1, Ordering::Relaxed);
            }
            s.close().ok();
        })
    };

    // The worker: verified 4 KiB write + read round trips on the healthy device.
    let dev = Device::open(&stack.device_spec()).expect("open pov0");
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 1).expect("session");
    let f = OpenOptions::new().write(true).create(true).open(&s, "/probe").unwrap();
    let mut lat_us = Vec::new();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 4096];
    for i in 0..200_000u64 {
        if t0.elapsed() > Duration::from_secs(7) {
            break;
        }
        let data = pattern(4096, i);
        let t = Instant::now();
        f.write_at(&data, 0).expect("write on the healthy device");
        let n = f.read_at(&mut buf, 0).expect("read on the healthy device");
        lat_us.push(t.elapsed().as_micros() as u64);
        assert_eq!((n, &buf[..]), (4096, &data[..]), "round trip {i}");
    }
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    f.close().unwrap();
    s.close().unwrap();

    lat_us.sort_unstable();
    let q = |p: f64| lat_us[((lat_us.len() as f64 - 1.0) * p) as usize];
    let (p50, p99, max) = (q(0.5), q(0.99), *lat_us.last().unwrap());
    let tried = attempts.load(Ordering::Relaxed);
    println!(
        "black hole: {} verified round trips on the healthy device in {:.1} s while {tried} asks hit the black hole; \
         latency p50 {p50} µs, p99 {p99} µs, max {max} µs",
        lat_us.len(),
        elapsed.as_secs_f64()
    );
    let hole_dev = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "hole"})).unwrap();
    assert_eq!(hole_dev[0]["stats"]["proxies_connected"], 0, "{hole_dev}");
    assert!(tried >= 2, "the black hole was asked {tried} times: no connection attempt overlapped the IO");
    assert!(lat_us.len() > 100, "only {} round trips in 7 s", lat_us.len());
    // A stalled reactor shows as ~2 s (the connect timeout); scheduling noise on a
    // shared 2-core machine stays far below these bounds.
    assert!(p99 < 20_000, "p99 {p99} µs: the healthy device waited behind a connect");
    assert!(max < 500_000, "max {max} µs: the reactor stalled on a connect");
}
