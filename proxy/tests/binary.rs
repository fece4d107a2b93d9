//! The `pov-proxy` binary: prints its address, serves, exits cleanly on SIGTERM/SIGINT.

use pov_proto::io::{flags, Op};
use pov_proto::Status;
use std::process::{Command, Stdio};

mod common;
use common::{signal, spawn, wait_exit};

fn call(addr: &str, op: Op, path: &str, fl: u32, payload: &[u8]) -> pov_proto::wire::ProxyResponse {
    common::request(addr, "bin", op, path, fl, payload)
}

#[test]
fn serves_then_exits_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("created/by/proxy");
    let backend = format!("local:{}", data.display());
    for sig in ["TERM", "INT"] {
        let (mut child, addr) = spawn(&["--listen", "tcp:127.0.0.1:0", "--backend", &backend, "--reactors", "2"]);
        assert!(data.is_dir(), "backend directory created");
        assert_eq!(call(&addr, Op::Open, "f", flags::CREATE | flags::WRITE, &[]).status, Status::Ok);
        assert_eq!(call(&addr, Op::Append, "f", 0, sig.as_bytes()).status, Status::Ok);
        signal(&child, sig);
        let st = wait_exit(&mut child);
        assert!(st.success(), "exit status after SIG{sig}: {st}");
    }
    assert_eq!(std::fs::read(data.join("bin/f")).unwrap(), b"TERMINT");
}

#[test]
fn setup_errors_exit_nonzero() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pov-proxy"))
        .args(["--listen", "127.0.0.1:0", "--backend", &format!("local:{}/x", file.path().display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pov-proxy: cannot set up backend directory"));
    let out = Command::new(env!("CARGO_BIN_EXE_pov-proxy")).args(["--backend", "bogus"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected local:DIR, null or ceph"));
    // An unreachable Ceph configuration is a setup error with the failing step named.
    let out = Command::new(env!("CARGO_BIN_EXE_pov-proxy"))
        .args(["--listen", "127.0.0.1:0", "--backend", "ceph:conf=/nonexistent/ceph.conf"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    #[cfg(feature = "ceph")]
    {
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains("cannot set up the Ceph backend: ceph_conf_read_file"), "{err}");
    }
    // Built without Ceph: the spec is refused, saying why.
    #[cfg(not(feature = "ceph"))]
    {
        assert!(!out.status.success());
        assert!(err.contains(pov_proxy::backend::NO_CEPH), "{err}");
    }
}

/// Setup errors print their cause once (`anyhow`'s `{:#}` chain), never twice.
#[test]
fn setup_errors_print_their_cause_once() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let backend = format!("local:{}/x", file.path().display());
    for (args, cause) in [
        (["--listen", "127.0.0.1:0", "--backend", backend.as_str()], "Not a directory (os error 20)"),
        (["--listen", taken.as_str(), "--backend", "null"], "Address already in use (os error 98)"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pov-proxy")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
    }
}

/// `--cpus` naming CPUs this machine does not have is refused before anything starts
/// (it used to start unpinned reactors for them); an unknown log level is a usage error.
#[test]
fn missing_cpus_and_bad_log_levels_are_refused() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pov-proxy"))
            .args(["--listen", "127.0.0.1:0", "--backend", "null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pov-proxy")
    };
    let out = run(&["--cpus", "0-1023"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not exist") && err.contains("available"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "it did not start");
    let out = run(&["--log-level", "verbose"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
