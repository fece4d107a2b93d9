//! `pov-host list` as a script sees it: the exit status says whether a valid PoV device
//! was found (it used to be 0 with none, or with an invalid one).

use std::process::Command;

#[test]
fn list_fails_when_no_valid_device_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_pov-host"))
        .args(["list", "--device"])
        .arg(format!("vhost-user:{}", sock.display()))
        .env_remove("POV_DEVICE")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("INVALID") && stdout.contains("is pov-dpud running"), "the row says why: {stdout}");
    assert!(stderr.contains("not a valid PoV device"), "{stderr}");
}
