//! `pov-bench` against the real stack: PoV file IO through the whole path and block IO
//! to the PoV device, JSON records that match what was asked, data that really reaches
//! the backend, and clear failures.

use pov_e2e::{bin, Stack};
use serde_json::{json, Value};
use std::process::{Command, Output};

fn bench(stack: &Stack, args: &[&str], json_out: Option<&std::path::Path>) -> Output {
    let mut c = Command::new(bin("pov-bench"));
    c.arg("--socket").arg(&stack.vhost_sock).args(args).arg("--secret-file").arg(stack.key_file("acme"));
    c.arg("--pid").arg(format!("pov-dpud={}", stack.dpud.child.id()));
    c.arg("--pid").arg(format!("pov-proxy={}", stack.proxy.child.id()));
    if let Some(p) = json_out {
        c.arg("--json").arg(p);
    }
    c.output().expect("run pov-bench")
}

fn ok_json(stack: &Stack, args: &[&str]) -> Value {
    let path = stack.dir.path().join("bench.json");
    let out = bench(stack, args, Some(&path));
    assert!(out.status.success(), "pov-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("IOPS"), "{table}");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn check_record(v: &Value, ios: u64) {
    assert_eq!(v["ios"], ios, "{v}");
    assert!(v["iops"].as_f64().unwrap() > 0.0);
    let l = &v["lat_us"];
    let (p50, p99, p999, max) =
        (l["p50"].as_f64().unwrap(), l["p99"].as_f64().unwrap(), l["p999"].as_f64().unwrap(), l["max"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{l}");
    for name in ["pov-dpud", "pov-proxy", "pov-bench"] {
        assert!(v["cpu"][name]["seconds"].as_f64().is_some(), "no CPU figure for {name}: {v}");
    }
}

#[test]
fn pov_file_writes_reach_the_backend_and_reads_come_back() {
    let stack = Stack::start(json!({"num_queues": 8}));
    let base = ["--mode", "pov-file", "--tenant", "acme", "--file", "/b/data", "--size", "1m", "--warmup", "0"];
    let w = ok_json(&stack, &[&base[..], &["--pattern", "randwrite", "--qd", "8", "--ios", "400"]].concat());
    check_record(&w, 400);
    assert_eq!(w["mode"], "pov-file");
    // The proxy's local backend holds the file, extended to --size, with the
    // benchmark's write pattern where it wrote.
    let data = std::fs::read(stack.backend_dir("acme").join("b/data")).unwrap();
    assert_eq!(data.len(), 1 << 20);
    let written = data.iter().filter(|&&b| b == 0x5a).count();
    assert!(written >= 4096 * 50, "only {written} bytes carry the write pattern");
    assert!(data.iter().all(|&b| b == 0 || b == 0x5a));
    let r = ok_json(&stack, &[&base[..], &["--pattern", "randrw", "--qd", "4", "--ios", "300", "--jobs", "2"]].concat());
    check_record(&r, 600);
    let s = ok_json(&stack, &[&base[..], &["--pattern", "read", "--bs", "1m", "--ios", "5"]].concat());
    check_record(&s, 5);
    assert_eq!(s["block_size"], 1 << 20);
}

#[test]
fn block_mode_reads_the_device() {
    // The first 64 KiB of a PoV device (configuration space and guard) are readable.
    let stack = Stack::start(json!({}));
    let v = ok_json(&stack, &["--pattern", "randread", "--qd", "16", "--ios", "2000", "--size", "64k", "--warmup", "0"]);
    check_record(&v, 2000);
    assert_eq!(v["mode"], "block");
}

#[test]
fn failures_are_clear() {
    let stack = Stack::start(json!({"num_queues": 4}));
    let err = |args: &[&str]| {
        let out = bench(&stack, args, None);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = err(&["--mode", "pov-file", "--tenant", "nobody", "--ios", "10"]);
    assert!(e.to_lowercase().contains("auth"), "{e}");
    let e = err(&["--mode", "pov-file", "--tenant", "acme", "--qd", "8", "--ios", "10"]);
    assert!(e.contains("num_queues"), "{e}");
    // Writes to a PoV device's configuration/guard space fail: the run stops with the error.
    let e = err(&["--pattern", "randwrite", "--size", "64k", "--ios", "10", "--warmup", "0"]);
    assert!(e.contains("error"), "{e}");
    let mut c = Command::new(bin("pov-bench"));
    let out = c.args(["--socket", "/nonexistent/x.sock", "--ios", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.sock"));
}
