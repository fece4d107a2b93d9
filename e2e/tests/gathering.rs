//! Gathering IO through the real binaries (pov-dpud, pov-proxy with the local backend,
//! pov-host and pov-bench as clients): under every gathering policy, many requests in
//! flight and files of varied sizes arrive intact, the RPC changes the policy of a live
//! device, and the counters show frames gathered into sends only when it is on.

use pov_e2e::{bin, pattern, rpc, Stack};
use serde_json::{json, Value};
use std::process::Command;

/// `(frames_sent, sends, completions, notifications)` of device pov0.
fn counters(stack: &Stack) -> [f64; 4] {
    let d = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "pov0"})).unwrap();
    let g = &d[0]["stats"]["gathering"];
    let v = &d[0]["vhost_stats"];
    let n = |x: &Value| x.as_f64().unwrap_or_else(|| panic!("missing counter in {d}"));
    [n(&g["frames_sent"]), n(&g["sends"]), n(&v["completions"]), n(&v["notifications"])]
}

fn bench(stack: &Stack, args: &[&str]) {
    let out = Command::new(bin("pov-bench"))
        .arg("--socket")
        .arg(&stack.vhost_sock)
        .args(["--mode", "pov-file", "--tenant", "acme", "--size", "1m", "--warmup", "0", "--no-header"])
        .args(args)
        .arg("--secret-file")
        .arg(stack.key_file("acme"))
        .output()
        .unwrap();
    assert!(out.status.success(), "pov-bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_policy_keeps_every_byte_and_counters_show_the_gathering() {
    let stack = Stack::start(json!({"num_queues": 64}));
    let policies = [
        json!({"enabled": false}),
        json!({"enabled": true, "batch_size": 1, "window_us": 0}),
        json!({"enabled": true, "batch_size": 3, "window_us": 300}),
        json!({"enabled": true, "batch_size": 64, "window_us": 0}),
    ];
    let src = stack.dir.path().join("src");
    for (i, p) in policies.iter().enumerate() {
        let set = rpc(&stack.rpc_sock, "pov_set_gathering", p.clone()).unwrap();
        assert_eq!(set["enabled"], p["enabled"]);
        let before = counters(&stack);
        // Many requests in flight on several queues.
        let file = format!("/g/bench{i}");
        bench(&stack, &["--file", &file, "--pattern", "randwrite", "--qd", "32", "--jobs", "2", "--ios", "600"]);
        for job in 0..2 {
            let data = std::fs::read(stack.backend_dir("acme").join(format!("g/bench{i}.{job}"))).unwrap();
            assert_eq!(data.len(), 1 << 20);
            assert!(data.iter().all(|&b| b == 0 || b == 0x5a), "policy {p}: foreign bytes in the file");
            assert!(data.iter().filter(|&&b| b == 0x5a).count() >= 4096 * 100, "policy {p}: writes missing");
        }
        bench(&stack, &["--file", &format!("{file}.0"), "--pattern", "randread", "--qd", "32", "--ios", "600"]);
        // Files of varied sizes, byte-exact both ways (1 MiB pieces plus odd tails).
        for (j, len) in [0usize, 1, 4095, 70_000, (3 << 20) + 17].into_iter().enumerate() {
            let body = pattern(len, (i * 10 + j) as u64);
            std::fs::write(&src, &body).unwrap();
            let name = format!("pov:/g/f{i}-{j}");
            let st = stack.host_cmd().arg("cp").arg(&src).arg(&name).status().unwrap();
            assert!(st.success(), "cp {name}");
            assert!(
                std::fs::read(stack.backend_dir("acme").join(format!("g/f{i}-{j}"))).unwrap() == body,
                "policy {p}: {name} on the backend"
            );
            let out = stack.host_cmd().arg("cat").arg(&name).output().unwrap();
            assert!(out.status.success());
            assert!(out.stdout == body, "policy {p}: {name} read back");
        }
        let after = counters(&stack);
        let (frames, sends) = (after[0] - before[0], after[1] - before[1]);
        assert!(frames >= 1200.0, "policy {p}: only {frames} frames");
        if p["enabled"] == false || p["batch_size"] == 1 {
            // Each frame is offered on its own; only a full socket (1 MiB frames) makes a
            // few of them share a write.
            assert!(frames / sends < 1.2, "policy {p}: {frames} frames in {sends} sends without gathering");
        } else {
            assert!(frames / sends > 1.5, "policy {p}: {frames} frames in {sends} sends: nothing gathered");
        }
    }
    assert_eq!(
        rpc(&stack.rpc_sock, "pov_get_gathering", json!({})).unwrap(),
        json!({"enabled": true, "batch_size": 64, "window_us": 0})
    );
    // Bad settings are refused and change nothing.
    let e = rpc(&stack.rpc_sock, "pov_set_gathering", json!({"batch_size": 0})).unwrap_err();
    assert_eq!(e["code"], -32602, "{e}");
    assert_eq!(rpc(&stack.rpc_sock, "pov_get_gathering", json!({})).unwrap()["batch_size"], 64);
}
