//! Attacks on the storage network (pov-dpud <-> pov-proxy), against the real binaries
//! started by the harness on mutual TLS with an enrolled DPU:
//!
//! * a client that speaks the proxy's frame format but is not enrolled — plain TCP, TLS
//!   without a certificate, TLS with a certificate of another CA — gets no answer and
//!   nothing reaches the backend (no file created, a real tenant's file never read);
//! * an enrolled DPU (a second, real pov-dpud with its own certificate and
//!   attacker-chosen tenant secrets) acting for a tenant or volume it is not enrolled
//!   for is refused (`Permission` at the host), nothing reaches the backend, while the
//!   tenant it is enrolled for works;
//! * clients that connect and never finish their handshake do not stall the proxy's
//!   other connections (verified IO meanwhile) and are dropped after the timeout.
//!
//! With the proxy as it was (plain TCP, trusting the tenant name in each frame) every
//! one of these attacks read or wrote the real tenant's files.

use pov_e2e::{pattern, rpc, spawn_dpud, spawn_proxy, write_enrollment, Pki, Stack, DPU, SECRET};
use pov_host::{Device, Session};
use pov_proto::io::{flags, Op};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET_TEXT: &[u8] = b"acme's quarterly numbers: do not leak";

/// Every file under `dir` with its content, sorted (a snapshot of the backend).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((p.clone(), Vec::new()));
                walk(&p, out);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v.sort();
    v
}

/// The frames an attacker sends: read the real tenant's file, list its namespace,
/// create and write a file, open a volume.
fn attack_frames() -> Vec<u8> {
    let mut all = Vec::new();
    let mut f = Vec::new();
    let mut tag = 0;
    let mut push = |mut r: ProxyRequest, payload: &[u8], all: &mut Vec<u8>| {
        tag += 1;
        r.tag = tag;
        r.session_id = 1;
        r.encode_frame(payload, &mut f).unwrap();
        all.extend_from_slice(&f);
    };
    let mut read = ProxyRequest::new(Op::Read, "acme", "secret.txt");
    read.length = 4096;
    push(read, &[], &mut all);
    push(ProxyRequest::new(Op::List, "acme", ""), &[], &mut all);
    let mut open = ProxyRequest::new(Op::Open, "acme", "planted.txt");
    open.flags = flags::CREATE | flags::WRITE;
    push(open, &[], &mut all);
    push(ProxyRequest::new(Op::Write, "acme", "planted.txt"), b"planted by an attacker", &mut all);
    let mut vol = ProxyRequest::new(Op::VolumeOpen, "stolen-vol", "");
    (vol.offset, vol.length, vol.flags) = (1 << 20, 512, flags::CREATE);
    push(vol, &[], &mut all);
    all
}

/// Reads what the peer sends until it closes or `limit` passes; the bytes.
fn drain(s: &mut dyn Read, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// A TLS client of our own (not pov-runtime's), trusting the proxy's CA, presenting
/// `identity` (certificate, key) if given. Returns the stream once the handshake is
/// done from the client's side, or the handshake error.
fn tls_client(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
            b.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap().to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.conn.is_handshaking() {
        assert!(Instant::now() < deadline, "handshake never ended");
        match s.conn.complete_io(&mut s.sock) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(s)
}

/// No Ok answer to any attack frame, and never the secret's bytes.
fn assert_nothing_served(what: &str, got: &[u8]) {
    assert!(!got.windows(SECRET_TEXT.len()).any(|w| w == SECRET_TEXT), "{what}: the secret leaked");
    let mut at = 0;
    while at + 4 <= got.len() {
        let n = u32::from_le_bytes(got[at..at + 4].try_into().unwrap()) as usize;
        if at + 4 + n > got.len() {
            break;
        }
        if let Ok((r, _)) = ProxyResponse::decode(&got[at + 4..at + 4 + n]) {
            assert_ne!(r.status, Status::Ok, "{what}: the proxy answered an attack frame with Ok");
        }
        at += 4 + n;
    }
}

/// The proxy as it was, and as plain TCP still is (development): the attack frames
/// of the tests below, from a raw TCP peer, read the real tenant's file and plant one.
/// This is what the TLS listener and the enrollment stop.
#[test]
fn plain_tcp_trusts_any_peer_which_is_the_attack_tls_stops() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backend");
    std::fs::create_dir_all(root.join("acme")).unwrap();
    std::fs::write(root.join("acme/secret.txt"), SECRET_TEXT).unwrap();
    let (mut proxy, addr) = spawn_proxy(&format!("local:{}", root.display()), "127.0.0.1:0", &[]);
    // The warning (stderr) may come before or after the address (stdout).
    if !proxy.log.iter().any(|l| l.contains("TRUSTS ANY PEER")) {
        proxy.wait_for("TRUSTS ANY PEER");
    }
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    raw.write_all(&attack_frames()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !(got.windows(SECRET_TEXT.len()).any(|w| w == SECRET_TEXT) && root.join("acme/planted.txt").exists()) {
        assert!(Instant::now() < deadline, "the plain-TCP proxy did not serve the attack frames");
        let mut b = [0u8; 4096];
        if let Ok(n) = raw.read(&mut b) {
            got.extend_from_slice(&b[..n]);
        }
    }
}

#[test]
fn peers_that_are_not_enrolled_never_reach_the_backend() {
    let stack = Stack::start(json!({}));
    let root = stack.backend_root();
    std::fs::create_dir_all(stack.backend_dir("acme")).unwrap();
    std::fs::write(stack.backend_dir("acme").join("secret.txt"), SECRET_TEXT).unwrap();
    let before = snapshot(&root);
    let frames = attack_frames();

    // 1. Plain TCP speaking the frame format: the handshake fails at the first bytes.
    let mut raw = TcpStream::connect(&stack.proxy_addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    raw.write_all(&frames).unwrap();
    let (got, closed) = drain(&mut raw, Duration::from_secs(10));
    assert!(closed, "the proxy kept a raw TCP peer's connection open");
    assert_nothing_served("plain TCP", &got);

    // 2. TLS without a client certificate.
    let outcome = tls_client(&stack.proxy_addr, &stack.pki.ca(), None);
    if let Ok(mut s) = outcome {
        let _ = s.write_all(&frames);
        let (got, closed) = drain(&mut s, Duration::from_secs(10));
        assert!(closed, "a TLS peer without a certificate kept its connection");
        assert_nothing_served("TLS without a certificate", &got);
    }

    // 3. TLS with a certificate from another CA (that trusts the real proxy).
    let foreign = Pki::make(&stack.dir.path().join("foreign-ca"), &[DPU]);
    let outcome = tls_client(&stack.proxy_addr, &stack.pki.ca(), Some((&foreign.cert(DPU), &foreign.key(DPU))));
    if let Ok(mut s) = outcome {
        let _ = s.write_all(&frames);
        let (got, closed) = drain(&mut s, Duration::from_secs(10));
        assert!(closed, "a TLS peer with a foreign certificate kept its connection");
        assert_nothing_served("TLS with another CA's certificate", &got);
    }

    // Control: the same frames from a TLS client with the enrolled DPU's certificate
    // are served (so the attack frames themselves are good ones).
    let mut good = tls_client(&stack.proxy_addr, &stack.pki.ca(), Some((&stack.pki.cert(DPU), &stack.pki.key(DPU)))).unwrap();
    let mut read = ProxyRequest::new(Op::Read, "acme", "secret.txt");
    (read.tag, read.session_id, read.length) = (1, 1, 4096);
    let mut f = Vec::new();
    read.encode_frame(&[], &mut f).unwrap();
    good.write_all(&f).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !got.windows(SECRET_TEXT.len()).any(|w| w == SECRET_TEXT) {
        assert!(Instant::now() < deadline, "the enrolled DPU's read was not answered");
        let mut b = [0u8; 4096];
        match good.read(&mut b) {
            Ok(0) => panic!("the proxy closed an enrolled DPU's connection"),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
    }
    drop(good);

    assert_eq!(snapshot(&root), before, "an unauthenticated peer changed the backend");
    assert!(!stack.backend_dir("acme").join("planted.txt").exists());
    assert!(!root.join("@volumes").join("stolen-vol").exists());
}

#[test]
fn an_enrolled_dpu_acts_only_for_its_tenants_and_volumes() {
    let mut stack = Stack::start(json!({}));
    let root = stack.backend_root();
    // The real tenant's data, written through the real DPU.
    let dev = Device::open(&stack.device_spec()).unwrap();
    let real = Session::open(&dev, "acme", SECRET.as_bytes(), 1).unwrap();
    real.write("/secret.txt", SECRET_TEXT).unwrap();
    // Enrol a second DPU, `dpu-b`, for tenant `bravo` and volume `bvol` only.
    let pki = Pki::make(&stack.pki.dir, &["dpu-b"]);
    write_enrollment(&stack.enrolled, &[(DPU, &["acme", "other"], &["*"]), ("dpu-b", &["bravo"], &["bvol"])]);
    stack.restart_proxy();
    let before = snapshot(&root);

    // The second, real pov-dpud with dpu-b's certificate and its own tenants, with
    // secrets of its operator's choosing, including the real tenant's name.
    let rpc_b = stack.dir.path().join("rpc-b.sock");
    let _dpud_b = spawn_dpud(&rpc_b, None, &pki.dpud_args("dpu-b", &pki.ca()));
    let key = stack.dir.path().join("attacker.key");
    pov_e2e::write_key_file(&key, b"attacker-chosen");
    rpc(&rpc_b, "keyring_file_add_key", json!({"name": "k", "path": key})).unwrap();
    for t in ["acme", "bravo", "carol"] {
        rpc(&rpc_b, "pov_tenant_create", json!({"name": t, "key": "k"})).unwrap();
    }
    let sock_b = stack.dir.path().join("pov-b.sock");
    rpc(&rpc_b, "pov_device_create", json!({"name": "povb", "socket": sock_b, "proxies": [stack.proxy_endpoint()]})).unwrap();
    let dev_b = Device::open(&format!("vhost-user:{}", sock_b.display())).unwrap();

    // Its allowed tenant works, end to end.
    let bravo = Session::open(&dev_b, "bravo", b"attacker-chosen", 1).unwrap();
    let data = pattern(100_000, 7);
    bravo.write("/mine.bin", &data).unwrap();
    assert_eq!(bravo.read("/mine.bin").unwrap(), data);
    assert_eq!(std::fs::read(stack.backend_dir("bravo").join("mine.bin")).unwrap(), data);

    // The real tenant's namespace, through dpu-b: refused, whatever the DPU says.
    let acme = Session::open(&dev_b, "acme", b"attacker-chosen", 1).expect("the DPU's own tenant table lets it open a session");
    let refused = |e: std::io::Error| assert_eq!(pov_host::status_of(&e), Some(Status::Permission), "{e}");
    refused(acme.read("/secret.txt").unwrap_err());
    refused(acme.list("/").unwrap_err());
    refused(acme.stat("/secret.txt").unwrap_err());
    refused(acme.write("/planted.txt", b"planted").unwrap_err());
    refused(acme.remove("/secret.txt").unwrap_err());
    // A tenant the proxy has never seen: nothing is created for it.
    let carol = Session::open(&dev_b, "carol", b"attacker-chosen", 1).unwrap();
    refused(carol.write("/x", b"x").unwrap_err());
    // A plain volume it is not enrolled for: the create call fails (its open is refused).
    let e = rpc(
        &rpc_b,
        "pov_volume_create",
        json!({"name": "stolen", "socket": stack.dir.path().join("vb.sock"), "size": 1 << 20, "volume": "vol-of-acme", "proxies": [stack.proxy_endpoint()]}),
    );
    assert!(e.is_err(), "a volume outside dpu-b's grant was opened: {e:?}");
    // Its own volume works.
    let ok = rpc(
        &rpc_b,
        "pov_volume_create",
        json!({"name": "bvol", "socket": stack.dir.path().join("bvol.sock"), "size": 1 << 20, "proxies": [stack.proxy_endpoint()]}),
    );
    assert_eq!(ok, Ok(json!("bvol")));

    // Nothing of the refused requests reached the backend: only bravo's file and bvol
    // are new.
    let after = snapshot(&root);
    let new: Vec<&PathBuf> = after.iter().filter(|x| !before.contains(x)).map(|(p, _)| p).collect();
    let expect = [root.join("@volumes"), root.join("@volumes/bvol"), root.join("bravo"), root.join("bravo/mine.bin")];
    assert!(new.iter().all(|p| expect.contains(p)), "refused requests changed the backend: {new:?}");
    assert!(before.iter().all(|x| after.contains(x)), "a refused request removed or changed a file");
    assert_eq!(std::fs::read(stack.backend_dir("acme").join("secret.txt")).unwrap(), SECRET_TEXT);
    assert!(!root.join("carol").exists() && !root.join("@volumes/vol-of-acme").exists());
    // The real DPU still serves the real tenant (once it has reconnected to the
    // restarted proxy: bounded retries).
    let deadline = Instant::now() + Duration::from_secs(15);
    let back = loop {
        match real.read("/secret.txt") {
            Ok(b) => break b,
            Err(e) if pov_host::status_of(&e) == Some(Status::Unavailable) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("the real DPU no longer serves its tenant: {e}"),
        }
    };
    assert_eq!(back, SECRET_TEXT);
    // The proxy logged and counted the refusals.
    stack.proxy.wait_for("refused Open for tenant \"acme\" (tag");
    stack.proxy.stop();
    let line = stack.proxy.wait_for("refused for their tenant or volume");
    let n: u64 = line.split(" bad, ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(n >= 7, "{line}");
}

#[test]
fn stalled_handshakes_do_not_stall_other_connections() {
    let stack = Stack::start(json!({}));
    let dev = Device::open(&stack.device_spec()).unwrap();
    let s = Session::open(&dev, "acme", SECRET.as_bytes(), 2).unwrap();
    // Twenty peers that connect and say nothing, and one that stops half-way through
    // its ClientHello.
    let mut stalled: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&stack.proxy_addr).unwrap()).collect();
    let mut half = TcpStream::connect(&stack.proxy_addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).unwrap();
    stalled.push(half);
    let t0 = Instant::now();
    // Meanwhile: a new device (new connections to the proxy) and verified IO on both,
    // for 2 s, each IO bounded by a latency far below the handshake timeout.
    let sock = stack.dir.path().join("pov1.sock");
    rpc(&stack.rpc_sock, "pov_device_create", json!({"name": "pov1", "socket": sock, "proxies": [stack.proxy_endpoint()]}))
        .unwrap();
    let dev1 = Device::open(&format!("vhost-user:{}", sock.display())).unwrap();
    let s1 = Session::open(&dev1, "other", SECRET.as_bytes(), 1).unwrap();
    let mut worst = Duration::ZERO;
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(2) && i < 10_000 {
        for (sess, name) in [(&s, "a"), (&s1, "b")] {
            let data = pattern(4096 + (i as usize % 7) * 1000, i);
            let t = Instant::now();
            sess.write(&format!("/stall/{name}{}", i % 8), &data).unwrap();
            assert_eq!(sess.read(&format!("/stall/{name}{}", i % 8)).unwrap(), data);
            worst = worst.max(t.elapsed());
        }
        i += 1;
    }
    assert!(i >= 10, "only {i} verified round trips in 2 s while handshakes stalled");
    assert!(worst < Duration::from_secs(1), "an IO waited {worst:?} behind stalled handshakes");
    // The stalled peers are dropped at the handshake timeout (5 s).
    for (k, c) in stalled.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let left = Duration::from_secs(15).saturating_sub(t0.elapsed());
        let (_, closed) = drain(c, left);
        assert!(closed, "stalled peer {k} was never dropped");
    }
    assert!(t0.elapsed() >= Duration::from_secs(4), "dropped before the timeout: {:?}", t0.elapsed());
    // And the proxy still serves.
    s.write("/stall/after", b"after").unwrap();
    assert_eq!(s.read("/stall/after").unwrap(), b"after");
}
