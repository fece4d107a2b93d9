//! Request tracing through the real stack (host library over libblkio → pov-dpud →
//! TLS → pov-proxy with a worker pool → local files): every request of a traced
//! session reports each stage's times, the stages nest (backend within proxy within
//! the DPU's proxy round trip within the DPU within the host), an error is traced
//! too, untraced requests carry nothing, and `pov-host --trace` prints one line per
//! request without touching standard output.

use pov_e2e::{pattern, Stack, SECRET};
use pov_host::{Device, RequestTrace, Session};
use pov_proto::io::Op;
use pov_proto::Status;
use serde_json::json;
use std::sync::{Arc, Mutex};

fn check_nesting(t: &RequestTrace) {
    let d = t.dpu.unwrap_or_else(|| panic!("no DPU times in {t:?}"));
    let p = d.proxy.unwrap_or_else(|| panic!("no proxy times in {t:?}"));
    let host = u64::try_from(t.host.as_nanos()).unwrap();
    assert_eq!(d.tries, 1, "{t}");
    assert!(d.dpu_ns > 0 && d.dpu_ns <= host, "DPU time within the host's: {t}");
    assert!(d.dpu_queue_ns + d.proxy_rtt_ns <= d.dpu_ns, "DPU legs within the DPU's time: {t}");
    assert!(p.proxy_ns > 0 && p.proxy_ns <= d.proxy_rtt_ns, "proxy time within the DPU's round trip to it: {t}");
    assert!(p.backend_ns > 0 && p.queue_ns + p.backend_ns <= p.proxy_ns, "backend within proxy: {t}");
}

#[test]
fn every_stage_reports_and_the_stages_nest() {
    let stack = Stack::start_with(None, json!({}), &["--workers", "1"]);
    let dev = Device::open(&stack.device_spec()).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 2).unwrap();
    let traces: Arc<Mutex<Vec<RequestTrace>>> = Arc::default();
    let sink = traces.clone();
    s.set_tracer(Some(Arc::new(move |t: &RequestTrace| sink.lock().unwrap().push(t.clone()))));

    let data = pattern((2 << 20) + 100, 7);
    s.write("/t/big", &data).unwrap();
    assert_eq!(s.read("/t/big").unwrap(), data);
    assert_eq!(s.stat("/t/missing").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    let got = std::mem::take(&mut *traces.lock().unwrap());

    let writes: Vec<&RequestTrace> = got.iter().filter(|t| t.op == Op::Write).collect();
    let reads: Vec<&RequestTrace> = got.iter().filter(|t| t.op == Op::Read).collect();
    assert_eq!(writes.len(), 3, "2 MiB + 100 bytes is three writes: {got:#?}");
    assert!(reads.len() >= 3, "{got:#?}");
    assert_eq!(writes.iter().map(|t| t.bytes).sum::<u64>(), data.len() as u64);
    for t in got.iter().filter(|t| t.status == Status::Ok && t.op != Op::Close) {
        check_nesting(t);
    }
    let missing = got.iter().find(|t| t.target == "/t/missing").expect("the failed stat is traced");
    assert_eq!((missing.op, missing.status), (Op::Stat, Status::NotFound));
    check_nesting(missing);
    let line = writes[0].to_string();
    for part in ["trace: write /t/big", "host↔DPU", "network", "backend"] {
        assert!(line.contains(part), "{part} missing from {line}");
    }

    // Tracing off: requests go on, nothing is reported.
    s.set_tracer(None);
    assert_eq!(s.read("/t/big").unwrap().len(), data.len());
    assert!(traces.lock().unwrap().is_empty());
    s.close().unwrap();

    // The CLI: one trace line per request on stderr, stdout as without --trace.
    let src = stack.dir.path().join("src.bin");
    std::fs::write(&src, pattern(5000, 1)).unwrap();
    let out = stack.host_cmd().args(["--trace", "cp"]).arg(&src).arg("pov:/t/cli.bin").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("trace: ")).collect();
    // cp writes under a temporary name, syncs, and renames into place.
    let write = |l: &&&str| l.starts_with("trace: write /t/.cli.bin.pov-part-") && l.contains(" 5000 B success:");
    assert!(lines.iter().any(|l| write(&l) && l.contains("backend")), "{err}");
    assert!(lines.iter().any(|l| l.starts_with("trace: fsync /t/.cli.bin.pov-part-")), "{err}");
    assert!(
        lines.iter().any(|l| l.starts_with("trace: rename /t/.cli.bin.pov-part-") && l.contains(" -> /t/cli.bin success:")),
        "{err}"
    );
    let out = stack.host_cmd().args(["--trace", "cat", "pov:/t/cli.bin"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, pattern(5000, 1), "trace lines stay off stdout");
    assert!(String::from_utf8_lossy(&out.stderr).contains("trace: read /t/cli.bin"));
}
