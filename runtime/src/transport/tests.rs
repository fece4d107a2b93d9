use super::*;
use std::time::{Duration, Instant};

fn tcp_pair() -> (Box<dyn Transport>, Box<dyn Transport>) {
    let mut l = listen("127.0.0.1:0").unwrap();
    let c = connect(&format!("tcp:{}", l.local_addr())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = l.accept().unwrap() {
            return (c, s);
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn mem_pair() -> (Box<dyn Transport>, Box<dyn Transport>) {
    let (a, b) = mem::pair();
    (Box::new(a), Box::new(b))
}

fn conformance_suite(mut make: impl FnMut() -> (Box<dyn Transport>, Box<dyn Transport>)) {
    let (mut c, mut s) = make();
    conformance::run(c.as_mut(), s.as_mut());
    let (mut c, mut s) = make();
    conformance::run_gathered(c.as_mut(), s.as_mut());
    let (mut c, s) = make();
    conformance::run_close(c.as_mut(), s);
    let (mut c, mut s) = make();
    conformance::run_bad_frame(c.as_mut(), s.as_mut());
}

#[test]
fn tcp_conformance() {
    conformance_suite(tcp_pair);
    conformance::run_connector("tcp:127.0.0.1:0", &|a| format!("tcp:{a}"));
    conformance::run_connector("[::1]:0", &|a| a.to_string());
}

#[test]
fn mem_conformance() {
    conformance_suite(mem_pair);
    conformance::run_connector("mem:conformance", &|a| format!("mem:{a}"));
}

#[test]
fn connect_refused_is_an_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    assert!(matches!(connect(&addr.to_string()), Err(TransportError::Connect { .. })));
    assert!(matches!(connect("tcp:nonsense"), Err(TransportError::Connect { .. })));
    assert!(matches!(connect("mem:nobody-listens"), Err(TransportError::Connect { .. })));
}

/// A connect to a black hole (a listener that never accepts, its backlog full) stays
/// under way without blocking whoever polls it, reports the descriptor to sleep on
/// (writability), and a blocking connect gives up at its timeout.
#[test]
fn connecting_to_a_black_hole_never_blocks() {
    let hole = conformance::TcpBlackHole::new();
    let ep = Endpoint::parse(&hole.endpoint()).unwrap();
    let t = Instant::now();
    let mut attempt = ep.connect().unwrap();
    let mut polls = 0;
    while t.elapsed() < Duration::from_millis(300) {
        assert!(attempt.poll().unwrap().is_none(), "connected to a black hole");
        polls += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(polls > 50, "{polls} polls in 300 ms: a poll blocked");
    assert!(matches!(attempt.wait_for(), Some((_, crate::sys::Interest::Write))));
    let t = Instant::now();
    match connect_blocking(&ep, Duration::from_millis(200)) {
        Err(TransportError::Connect { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::TimedOut),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("connected to a black hole"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "the timeout was not honoured");
}

/// Host names resolve off the caller's thread: the attempt first waits on the
/// resolver's eventfd, then connects.
#[test]
fn host_names_resolve_without_blocking() {
    let mut l = listen("127.0.0.1:0").unwrap();
    let port = l.local_addr().rsplit_once(':').unwrap().1.to_string();
    let ep = Endpoint::parse(&format!("tcp:localhost:{port}")).unwrap();
    let mut attempt = ep.connect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_wait = attempt.wait_for().is_some();
    let (mut c, mut s) = (None, None);
    while c.is_none() || s.is_none() {
        assert!(Instant::now() < deadline, "no connection through localhost");
        if c.is_none() {
            saw_wait |= attempt.wait_for().is_some();
            match attempt.poll() {
                Ok(t) => c = t,
                // localhost may resolve to ::1 first with nobody listening there: the
                // next address is tried, so an error here means none worked.
                Err(e) => panic!("{e}"),
            }
        }
        if s.is_none() {
            s = l.accept().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(saw_wait, "a name lookup must be waited for, not done inline");
}

/// `receive_at_most` stops reading at its budget (the rest stays in the socket for
/// the next call) and `partial_frame_bytes` tells a frame cut by it; nothing is lost.
#[test]
fn tcp_receive_at_most_reads_no_more_than_asked() {
    let (mut a, mut b) = tcp_pair();
    let body = vec![7u8; 10_000];
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    for _ in 0..20 {
        a.queue_frame(&frame).unwrap();
    }
    while a.pending_send_bytes() > 0 {
        a.flush().unwrap();
    }
    let t = std::time::Instant::now();
    let mut got = 0usize;
    let mut max_per_call = 0usize;
    let mut saw_partial = false;
    while got < 20 {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "only {got} frames arrived");
        let mut n = 0;
        b.receive_at_most(4096, &mut |f| {
            assert_eq!(f, &body[..]);
            n += 1;
        })
        .unwrap();
        got += n;
        max_per_call = max_per_call.max(n);
        saw_partial |= b.partial_frame_bytes() > 0;
        assert!(b.partial_frame_bytes() < frame.len());
    }
    assert_eq!(got, 20);
    assert!(max_per_call <= 1, "4096 bytes complete at most one 10 kB frame per call, got {max_per_call}");
    assert!(saw_partial, "a frame cut by the budget is held as partial bytes");
    assert_eq!(b.partial_frame_bytes(), 0);
    assert!(!b.receive_at_most(0, &mut |_| panic!("nothing read with a zero budget")).unwrap());
}

/// TLS identities made by `scripts/dev-ca` (the `openssl` command), loaded once: CA
/// "main" signs the proxy and DPUs `dpu-a`, `dpu-b`; CA "other" signs `intruder`.
struct TlsFixture {
    server: tls::ServerTls,
    dpu_a: tls::ClientTls,
    intruder: tls::ClientTls,
    /// `dpu-a`'s key and certificate, but trusting the other CA for servers.
    wrong_trust: tls::ClientTls,
}

fn tls_fixture() -> &'static TlsFixture {
    static F: std::sync::OnceLock<TlsFixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pov-runtime-tls-{}", std::process::id()));
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-ca");
        let (main, other) = (dir.join("main"), dir.join("other"));
        for (d, names) in [(&main, &["dpu-a", "dpu-b"][..]), (&other, &["intruder"][..])] {
            let st =
                std::process::Command::new("bash").arg(&script).arg(d).args(names).stdout(std::process::Stdio::null()).status();
            assert!(st.is_ok_and(|s| s.success()), "scripts/dev-ca failed (is openssl installed? ci/install-deps.sh)");
        }
        let files = |ca: &std::path::Path, name: &str, trust: &std::path::Path| tls::TlsFiles {
            cert: ca.join(format!("{name}.pem")),
            key: ca.join(format!("{name}.key")),
            ca: trust.join("ca.pem"),
        };
        let f = TlsFixture {
            server: tls::ServerTls::from_files(&files(&main, "proxy", &main)).unwrap(),
            dpu_a: tls::ClientTls::from_files(&files(&main, "dpu-a", &main)).unwrap(),
            intruder: tls::ClientTls::from_files(&files(&other, "intruder", &main)).unwrap(),
            wrong_trust: tls::ClientTls::from_files(&files(&main, "dpu-a", &other)).unwrap(),
        };
        // The identities are in memory now: no key stays on disk.
        let _ = std::fs::remove_dir_all(&dir);
        tls::configure_server(f.server.clone());
        tls::configure_client(f.dpu_a.clone());
        f
    })
}

/// Polls `attempt` and `l` in turn (as two reactors would) until both ends exist;
/// `None` for the server end if the attempt fails or nothing is accepted within 5 s.
type Ends = (Result<Option<Box<dyn Transport>>, TransportError>, Option<Box<dyn Transport>>);

fn tls_handshake(l: &mut dyn Listener, attempt: &mut dyn Connecting) -> Ends {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut client, mut server) = (Ok(None), None);
    while Instant::now() < deadline && (matches!(client, Ok(None)) || server.is_none()) {
        if matches!(client, Ok(None)) {
            client = attempt.poll();
        }
        if server.is_none() {
            server = l.accept().unwrap();
        }
        if client.is_err() && server.is_none() {
            // Let the listener see the alert, then stop.
            std::thread::sleep(Duration::from_millis(20));
            server = l.accept().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (client, server)
}

fn tls_pair() -> (Box<dyn Transport>, Box<dyn Transport>) {
    let f = tls_fixture();
    let mut l = tls::TlsListener::bind("127.0.0.1:0", f.server.clone()).unwrap();
    let ep = Endpoint::parse(&format!("tls:{}", l.local_addr())).unwrap();
    let mut attempt = ep.connect().unwrap();
    match tls_handshake(&mut l, attempt.as_mut()) {
        (Ok(Some(c)), Some(s)) => (c, s),
        (c, s) => panic!("no TLS pair: client {:?}, server {}", c.err(), s.is_some()),
    }
}

#[test]
fn tls_conformance() {
    tls_fixture();
    conformance_suite(tls_pair);
    conformance::run_connector("tls:127.0.0.1:0", &|a| format!("tls:{a}"));
    conformance::run_connector("tls:[::1]:0", &|a| format!("tls:{a}"));
    // The proxy certificate names localhost too.
    conformance::run_connector("tls:127.0.0.1:0", &|a| format!("tls:localhost:{}", a.rsplit_once(':').unwrap().1));
}

/// Each end sees the other's verified certificate: the server learns which DPU it is.
#[test]
fn tls_peers_learn_each_others_identity() {
    let (c, s) = tls_pair();
    let dpu = s.peer_identity().expect("the server knows its peer");
    assert!(dpu.has_dns_name("dpu-a") && dpu.has_dns_name("DPU-A"));
    for other in ["dpu-b", "dpu", "dpu-a.x", "localhost", "127.0.0.1", "", "*"] {
        assert!(!dpu.has_dns_name(other), "{other}");
    }
    let proxy = c.peer_identity().expect("the client knows its peer");
    assert!(proxy.has_dns_name("localhost") && !proxy.has_dns_name("dpu-a"));
    let (t, _) = mem_pair();
    assert!(t.peer_identity().is_none(), "an unauthenticated transport has no identity");
}

/// A peer without a certificate of the listener's CA, a client that does not trust the
/// server's CA, and a peer that does not speak TLS at all never get a transport from
/// the listener; the counters say why.
#[test]
fn tls_refuses_peers_it_cannot_authenticate() {
    let f = tls_fixture();
    let mut l = tls::TlsListener::bind("127.0.0.1:0", f.server.clone()).unwrap();
    let ep = Endpoint::parse(&format!("tls:{}", l.local_addr())).unwrap();
    // 1. A certificate from another CA.
    let mut a = f.intruder.connect(&ep).unwrap();
    let (client, server) = tls_handshake(&mut l, &mut a);
    assert!(server.is_none(), "the listener accepted a foreign certificate");
    if let Ok(Some(mut c)) = client {
        // TLS 1.3: the client may finish before the server refuses; then it learns at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        let _ = c.send_frame(&[4, 0, 0, 0, 1, 2, 3, 4]);
        loop {
            assert!(Instant::now() < deadline, "the refused client never saw the refusal");
            match c.poll(&mut |_| panic!("a frame from the server")) {
                Err(_) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            let _ = l.accept().unwrap();
        }
    }
    // 2. A client that does not trust the server's certificate gives up itself.
    let mut a = f.wrong_trust.connect(&ep).unwrap();
    let (client, server) = tls_handshake(&mut l, &mut a);
    assert!(matches!(client, Err(TransportError::Connect { .. })), "a client accepted an unknown server");
    assert!(server.is_none());
    // 3. Not TLS: a raw PoV frame.
    let mut raw = std::net::TcpStream::connect(l.local_addr()).unwrap();
    let mut frame = Vec::new();
    pov_proto::wire::ProxyRequest::new(pov_proto::io::Op::Stat, "t", "f").encode_frame(&[], &mut frame).unwrap();
    std::io::Write::write_all(&mut raw, &frame).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while l.stats().failed < 3 {
        assert!(Instant::now() < deadline, "{:?}", l.stats());
        assert!(l.accept().unwrap().is_none(), "a raw TCP peer got a transport");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(l.stats().authenticated, 0);
    assert_eq!(l.handshaking(), 0);
}

/// A peer that connects and never sends its ClientHello does not delay another
/// client's handshake, is dropped after the handshake timeout, and the listener's
/// deadline says when.
#[test]
fn tls_stalled_handshakes_do_not_block_others() {
    let f = tls_fixture();
    let mut server = f.server.clone();
    server.handshake_timeout = Duration::from_millis(300);
    let mut l = tls::TlsListener::bind("127.0.0.1:0", server).unwrap();
    let mut stalled = std::net::TcpStream::connect(l.local_addr()).unwrap();
    let t = Instant::now();
    while l.handshaking() == 0 {
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(l.accept().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(l.deadline().is_some_and(|d| d <= Instant::now() + Duration::from_millis(300)));
    let ep = Endpoint::parse(&format!("tls:{}", l.local_addr())).unwrap();
    let mut a = f.dpu_a.connect(&ep).unwrap();
    let (client, server) = tls_handshake(&mut l, &mut a);
    assert!(matches!(client, Ok(Some(_))) && server.is_some(), "a stalled handshake blocked another");
    assert!(t.elapsed() < Duration::from_millis(300), "the good handshake had to wait for the stalled one");
    let (mut c, mut s) = (client.unwrap().unwrap(), server.unwrap());
    conformance::run(c.as_mut(), s.as_mut());
    // The stalled peer is dropped at its deadline.
    stalled.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the stalled handshake was never dropped");
        let _ = l.accept().unwrap();
        let mut b = [0u8; 16];
        match std::io::Read::read(&mut stalled, &mut b) {
            Ok(0) => break,
            Ok(_) => panic!("the listener sent bytes to a peer that said nothing"),
            Err(_) => {}
        }
    }
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!((l.stats().timed_out, l.stats().authenticated, l.handshaking()), (1, 1, 0));
    assert_eq!(l.deadline(), None);
}

/// `tls:` endpoints are refused at parse time in a process without a client
/// identity... unless one is configured, which the fixture does; the syntax is TCP's.
#[test]
fn tls_endpoints_parse() {
    tls_fixture();
    assert_eq!(Endpoint::parse("tls:127.0.0.1:4420").unwrap().scheme(), "tls");
    assert_eq!(Endpoint::parse("tls:proxy-1.example:1").unwrap().address(), "proxy-1.example:1");
    for bad in ["tls:", "tls:host", "tls:host:0", "tls:::1:9"] {
        assert!(matches!(Endpoint::parse(bad), Err(EndpointError::BadAddress { .. })), "{bad} accepted");
    }
}
