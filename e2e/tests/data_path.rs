//! The whole data path, for real: host driver (libblkio over vhost-user) -> pov-dpud
//! (bdev-pov) -> TLS -> pov-proxy -> local files.

use pov_e2e::{pattern, Stack, SECRET};
use pov_host::{Device, OpenOptions, Session};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// File sizes every round trip covers: empty, tiny, just under a page, exactly one
/// IO, one IO plus a byte, several IOs.
const SIZES: [usize; 7] = [0, 1, 4095, 4096, MIB, MIB + 1, 5 * MIB + 123];

fn session(stack: &Stack, tenant: &str, queues: u32) -> (Device, Session) {
    let dev = Device::open(&stack.device_spec()).expect("open PoV device");
    let s = Session::open(&dev, tenant, SECRET.as_bytes(), queues).expect("open session");
    (dev, s)
}

#[test]
fn library_round_trip_and_backend_holds_the_bytes() {
    let stack = Stack::start(json!({}));
    let (_dev, s) = session(&stack, "acme", 4);
    for (i, &n) in SIZES.iter().enumerate() {
        let data = pattern(n, i as u64);
        let path = format!("/lib/d{}/f{n}", i % 3);
        s.write(&path, &data).expect("write");
        assert_eq!(s.read(&path).expect("read"), data, "{path}");
        assert_eq!(s.stat(&path).unwrap().size, n as u64);
        // The proxy's backend really stores it, under the tenant's namespace.
        let on_disk = std::fs::read(stack.backend_dir("acme").join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(on_disk, data);
    }
    // Offsets, appends, truncation through a File.
    let f = OpenOptions::new().write(true).create(true).open(&s, "/lib/edit").unwrap();
    f.write_at(b"hello world", 0).unwrap();
    f.write_at(b"W", 6).unwrap();
    assert_eq!(f.append(b"!").unwrap(), 11);
    let mut b = vec![0u8; 64];
    let n = f.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[..n], b"hello World!");
    f.set_len(5).unwrap();
    assert_eq!(f.stat().unwrap().size, 5);
    f.sync().unwrap();
    let names: Vec<String> = s.list("/lib").unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"d0".to_string()) && names.contains(&"edit".to_string()), "{names:?}");
    s.remove("/lib/edit").unwrap();
    let e = s.stat("/lib/edit").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(pov_host::status_of(&e), Some(pov_proto::Status::NotFound));
    s.close().unwrap();
}

fn make_tree(root: &Path, seed: u64) -> usize {
    let mut files = 0;
    for (i, &n) in SIZES.iter().enumerate() {
        let dir = root.join(format!("d{}/sub{}", i % 2, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("file{i}.bin")), pattern(n, seed + i as u64)).unwrap();
        files += 1;
    }
    for i in 0..40 {
        std::fs::write(root.join(format!("small{i}.txt")), format!("small file {i} {seed}\n")).unwrap();
        files += 1;
    }
    files
}

fn assert_same_tree(a: &Path, b: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(a).unwrap() {
        let e = e.unwrap();
        let other = b.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            assert!(other.is_dir(), "{} missing", other.display());
            n += assert_same_tree(&e.path(), &other);
        } else {
            let x = std::fs::read(e.path()).unwrap();
            let y = std::fs::read(&other).unwrap_or_else(|_| panic!("{} missing", other.display()));
            assert!(x == y, "{} differs ({} vs {} bytes)", other.display(), x.len(), y.len());
            n += 1;
        }
    }
    n
}

fn run_ok(mut c: std::process::Command) -> String {
    let out = c.output().expect("run pov-host");
    assert!(
        out.status.success(),
        "pov-host failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cli_tree_round_trip_two_processes_at_once() {
    let stack = Stack::start(json!({}));
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let fa = make_tree(&a, 100);
    let fb = make_tree(&b, 200);
    // Two processes copy in at the same time, each with its own session.
    let mut ca = stack.host_cmd();
    ca.args(["cp", "-r"]).arg(&a).arg("pov:/trees/a");
    let mut cb = stack.host_cmd();
    cb.args(["cp", "-r"]).arg(&b).arg("pov:/trees/b");
    let (ha, hb) = (ca.spawn().unwrap(), cb.spawn().unwrap());
    for (h, name) in [(ha, "a"), (hb, "b")] {
        let out = h.wait_with_output().unwrap();
        assert!(out.status.success(), "cp {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // And back out, again two processes at once.
    let (oa, ob) = (work.path().join("out-a"), work.path().join("out-b"));
    let mut ca = stack.host_cmd();
    ca.args(["cp", "-r", "pov:/trees/a"]).arg(&oa);
    let mut cb = stack.host_cmd();
    cb.args(["cp", "-r", "pov:/trees/b"]).arg(&ob);
    let (ha, hb) = (ca.spawn().unwrap(), cb.spawn().unwrap());
    assert!(ha.wait_with_output().unwrap().status.success());
    assert!(hb.wait_with_output().unwrap().status.success());
    assert_eq!(assert_same_tree(&a, &oa), fa);
    assert_eq!(assert_same_tree(&b, &ob), fb);
    // The other CLI commands.
    let mut c = stack.host_cmd();
    c.args(["cat", "pov:/trees/a/small3.txt"]);
    assert_eq!(run_ok(c), "small file 3 100\n");
    // `pov-host cat … | head`: the reader leaving early is not an error (exit 0, nothing
    // on stderr); only standard output's broken pipe counts as that.
    let big = work.path().join("big");
    std::fs::write(&big, vec![7u8; 4 << 20]).unwrap();
    let mut c = stack.host_cmd();
    c.args(["cp"]).arg(&big).arg("pov:/big");
    run_ok(c);
    let mut c = stack.host_cmd();
    let mut h =
        c.args(["cat", "pov:/big"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(h.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(first, [7u8; 16]);
    drop(h.stdout.take());
    let out = h.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "cat | head: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = stack.host_cmd();
    c.args(["ls", "pov:/trees"]);
    let ls = run_ok(c);
    assert!(ls.contains('a') && ls.contains('b'), "{ls}");
    let mut c = stack.host_cmd();
    c.args(["stat", "pov:/trees/a/d0/sub0/file0.bin"]);
    assert!(run_ok(c).contains('0'));
    let fails = |mut c: std::process::Command| {
        let out = c.output().unwrap();
        assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Machine-readable output.
    let mut c = stack.host_cmd();
    c.args(["ls", "--json", "pov:/trees"]);
    let v: serde_json::Value = serde_json::from_str(&run_ok(c)).expect("ls --json is JSON");
    assert_eq!(v, json!([{"name": "a", "kind": "dir", "size": 0}, {"name": "b", "kind": "dir", "size": 0}]));
    let mut c = stack.host_cmd();
    c.args(["stat", "--json", "pov:/trees/a/small3.txt"]);
    let v: serde_json::Value = serde_json::from_str(&run_ok(c)).expect("stat --json is JSON");
    assert_eq!((v[0]["kind"].as_str(), v[0]["size"].as_u64()), (Some("file"), Some("small file 3 100\n".len() as u64)), "{v}");
    let mut c = stack.host_cmd();
    c.args(["df", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&run_ok(c)).expect("df --json is JSON");
    assert!(v["total_bytes"].as_u64().unwrap() > 0 && v["block_size"].as_u64().unwrap() > 0, "{v}");
    // `cp -` reads standard input.
    let mut c = stack.host_cmd();
    c.args(["cp", "-", "pov:/piped.txt"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"from a pipe\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(stack.backend_dir("acme").join("piped.txt")).unwrap(), b"from a pipe\n");
    // Names and attributes through the binary, checked on the backend's disk.
    let mut c = stack.host_cmd();
    c.args(["mkdir", "-p", "-m", "750", "pov:/made/deep"]);
    run_ok(c);
    let mut c = stack.host_cmd();
    c.args(["mv", "pov:/trees/a/small3.txt", "pov:/made/deep"]);
    run_ok(c);
    let moved = stack.backend_dir("acme").join("made/deep/small3.txt");
    assert_eq!(std::fs::read(&moved).unwrap(), b"small file 3 100\n");
    assert!(!stack.backend_dir("acme").join("trees/a/small3.txt").exists());
    let mut c = stack.host_cmd();
    c.args(["chmod", "640", "pov:/made/deep/small3.txt"]);
    run_ok(c);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&moved).unwrap().permissions().mode() & 0o777, 0o640);
    // A session limited to /made cannot move a file out of it, nor pull one in.
    let mut c = stack.host_cmd();
    c.args(["--prefix", "pov:/made", "mv", "pov:/made/deep/small3.txt", "pov:/stolen"]);
    assert!(fails(c).contains("ermission"));
    let mut c = stack.host_cmd();
    c.args(["--prefix", "pov:/made", "mv", "pov:/trees/a/small1.txt", "pov:/made/x"]);
    assert!(fails(c).contains("ermission"));
    assert!(moved.exists() && !stack.backend_dir("acme").join("stolen").exists());
    let mut c = stack.host_cmd();
    c.args(["mv", "pov:/made/deep/small3.txt", "pov:/trees/a/small3.txt"]);
    run_ok(c);
    let mut c = stack.host_cmd();
    c.args(["rm", "-r", "pov:/trees/b"]);
    run_ok(c);
    assert!(!stack.backend_dir("acme").join("trees/b").exists());
    // Sessions with grants: read-only, limited to a directory, integrity-only.
    let mut c = stack.host_cmd();
    c.args(["--read-only", "cat", "pov:/trees/a/small3.txt"]);
    assert_eq!(run_ok(c), "small file 3 100\n");
    let mut c = stack.host_cmd();
    c.args(["--read-only", "rm", "pov:/trees/a/small3.txt"]);
    let err = fails(c);
    assert!(err.contains("ermission"), "{err}");
    assert!(stack.backend_dir("acme").join("trees/a/small3.txt").exists());
    let mut c = stack.host_cmd();
    c.args(["--prefix", "pov:/trees/a", "cat", "pov:/trees/a/small3.txt"]);
    assert_eq!(run_ok(c), "small file 3 100\n");
    let mut c = stack.host_cmd();
    c.args(["--prefix", "pov:/trees/a", "ls", "pov:/trees"]);
    let err = fails(c);
    assert!(err.contains("ermission"), "{err}");
    let mut c = stack.host_cmd();
    c.args(["--integrity-only", "cat", "pov:/trees/a/small3.txt"]);
    assert_eq!(run_ok(c), "small file 3 100\n");
    // The secret is required and never taken from the command line.
    let mut c = stack.host_cmd();
    c.env_remove("POV_SECRET").env_remove("POV_SECRET_FILE").args(["ls", "pov:/"]);
    assert!(!c.output().unwrap().status.success());
}

#[test]
fn four_threads_share_a_session() {
    let stack = Stack::start(json!({}));
    let (_dev, s) = session(&stack, "acme", 4);
    std::thread::scope(|sc| {
        for t in 0..6u64 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..8u64 {
                    let n = [0, 1, 4095, 70_000, MIB + 1][(i % 5) as usize];
                    let data = pattern(n, t * 100 + i);
                    let path = format!("/threads/t{t}/f{i}");
                    s.write(&path, &data).unwrap();
                    assert_eq!(s.read(&path).unwrap(), data, "{path}");
                }
            });
        }
    });
    for t in 0..6u64 {
        assert_eq!(s.list(&format!("/threads/t{t}")).unwrap().len(), 8);
    }
}

#[test]
fn daemons_idle_below_two_percent_cpu() {
    let stack = Stack::start(json!({}));
    {
        let (_dev, s) = session(&stack, "acme", 2);
        s.write("/warm", &pattern(MIB, 1)).unwrap();
        s.close().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let window = Duration::from_secs(3);
    let (p0, d0, t0) = (stack.proxy.cpu_ticks(), stack.dpud.cpu_ticks(), Instant::now());
    std::thread::sleep(window);
    let (p1, d1) = (stack.proxy.cpu_ticks(), stack.dpud.cpu_ticks());
    let ticks = t0.elapsed().as_secs_f64() * 100.0;
    let (pp, dp) = ((p1 - p0) as f64 * 100.0 / ticks, (d1 - d0) as f64 * 100.0 / ticks);
    println!("idle CPU over {window:?}: pov-proxy {pp:.2}%, pov-dpud {dp:.2}%");
    // A busy-polling daemon would show ~100% here.
    assert!(pp < 2.0 && dp < 2.0, "idle daemons use too much CPU: proxy {pp:.2}%, dpud {dp:.2}%");
}

/// Many processes' worth of session opens, queue creations and closes at once on one
/// device (each thread has its own vhost-user connection, as a process would): admin
/// exchanges that pick the same mailbox never see each other's answers or fail.
#[test]
fn concurrent_session_opens_never_collide() {
    let stack = Stack::start(json!({}));
    const THREADS: usize = 6;
    const ROUNDS: usize = 15;
    let failures = std::sync::Mutex::new(Vec::new());
    let spec = stack.device_spec();
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (spec, failures) = (&spec, &failures);
            sc.spawn(move || {
                let dev = Device::open(spec).expect("open PoV device");
                for r in 0..ROUNDS {
                    match Session::open(&dev, "acme", SECRET.as_bytes(), 4) {
                        Ok(s) => {
                            let path = format!("/race/{t}-{r}");
                            s.write(&path, path.as_bytes()).expect("write");
                            assert_eq!(s.read(&path).expect("read"), path.as_bytes());
                            s.close().expect("close");
                        }
                        Err(e) => failures.lock().unwrap().push(format!("thread {t} round {r}: {e}")),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} opens failed: {failures:#?}", failures.len(), THREADS * ROUNDS);
}

/// `pov-host mount` as an operator runs it: it prints when the mount is up, unmodified
/// programs see the tenant's files, and SIGTERM unmounts it and exits 0.
#[test]
fn pov_host_mount_serves_until_a_signal() {
    use std::io::BufRead;
    let stack = Stack::start(json!({}));
    let work = tempfile::tempdir().unwrap();
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut c = stack.host_cmd();
    c.args(["mkdir", "-p", "pov:/shown"]);
    run_ok(c);
    let mut c = stack.host_cmd();
    let mut h = c
        .args(["mount", "--root", "pov:/shown"])
        .arg(&mp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(h.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("mounted at"), "pov-host mount said: {line:?}");
    std::fs::write(mp.join("hello.txt"), b"through the kernel\n").unwrap();
    let out = std::process::Command::new("cat").arg(mp.join("hello.txt")).output().unwrap();
    assert_eq!(out.stdout, b"through the kernel\n");
    let mut c = stack.host_cmd();
    c.args(["cat", "pov:/shown/hello.txt"]);
    assert_eq!(run_ok(c), "through the kernel\n", "the file is in PoV");
    // kill(1): SIGTERM to the mount process, as systemd or an operator sends it.
    assert!(std::process::Command::new("kill").arg(h.id().to_string()).status().unwrap().success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(h.wait_with_output()).ok());
    let out = rx.recv_timeout(Duration::from_secs(30)).expect("pov-host mount did not exit on SIGTERM").unwrap();
    assert!(out.status.success(), "mount exit: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mp.to_str().unwrap()), "unmounted after SIGTERM");
}
