//! The one test body every [`Transport`] and [`Connector`] implementation must pass
//! (the `testing` feature).

use super::*;
use pov_proto::io::Op;
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use std::time::{Duration, Instant};

/// Runs the conformance body over a connected pair `(client, server)`.
pub fn run(client: &mut dyn Transport, server: &mut dyn Transport) {
    // 1. Many frames of many sizes, both directions, in order, byte-exact.
    let sizes = [0usize, 1, 511, 4096, 65_537, pov_proto::MAX_IO_BYTES as usize];
    let mut frame = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
        let r = ProxyRequest { tag: i as u64, session_id: 1, ..ProxyRequest::new(Op::Write, "t", &format!("f{i}")) };
        r.encode_frame(&payload, &mut frame).unwrap();
        client.send_frame(&frame).unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < sizes.len() {
        assert!(Instant::now() < deadline, "timed out");
        client.poll(&mut |_| panic!("client got an unexpected frame")).unwrap();
        server.poll(&mut |f| got.push(f.to_vec())).unwrap();
    }
    for (i, f) in got.iter().enumerate() {
        let d = ProxyRequest::decode(f).unwrap();
        assert_eq!(d.req.tag, i as u64);
        assert_eq!(d.payload.len(), sizes[i]);
        assert!(d.payload.iter().enumerate().all(|(j, b)| *b == (i * 31 + j) as u8));
    }
    for i in 0..100u64 {
        ProxyResponse { op: 3, tag: i, status: Status::Ok, result: i, flags: 0 }.encode_frame(&i.to_le_bytes(), &mut frame);
        server.send_frame(&frame).unwrap();
    }
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.len() < 100 {
        assert!(Instant::now() < deadline, "timed out");
        server.poll(&mut |_| {}).unwrap();
        client.poll(&mut |f| back.push(f.to_vec())).unwrap();
    }
    for (i, f) in back.iter().enumerate() {
        let (r, p) = ProxyResponse::decode(f).unwrap();
        assert_eq!(r.tag, i as u64);
        assert_eq!(p, (i as u64).to_le_bytes());
    }
    // 2. Nothing more arrives.
    let mut extra = Vec::new();
    client.poll(&mut |f| extra.push(f.to_vec())).unwrap();
    assert!(extra.is_empty());
}

/// Gathering: queued frames do not leave before a flush; one flush sends all of
/// them (varied sizes, byte-exact, in order) in few sends; the receiver drains many
/// frames per receive; counters add up.
pub fn run_gathered(client: &mut dyn Transport, server: &mut dyn Transport) {
    let before = client.counters();
    let mut frame = Vec::new();
    let n = 200u64;
    let mut want = Vec::new();
    for i in 0..n {
        let len = [0usize, 1, 100, 4096, 9000][i as usize % 5];
        let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        ProxyResponse { op: 2, tag: i, status: Status::Ok, result: i, flags: 0 }.encode_frame(&payload, &mut frame);
        client.queue_frame(&frame).unwrap();
        want.push(payload);
    }
    assert!(client.pending_send_bytes() > 0, "queued bytes must be pending until the flush");
    std::thread::sleep(Duration::from_millis(20));
    let mut got = Vec::new();
    server.poll(&mut |f| got.push(f.to_vec())).unwrap();
    assert!(got.is_empty(), "a queued frame left before the flush");
    client.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (got.len() as u64) < n {
        assert!(Instant::now() < deadline, "timed out");
        client.poll(&mut |_| panic!("unexpected frame")).unwrap();
        server.poll(&mut |f| got.push(f.to_vec())).unwrap();
    }
    for (i, f) in got.iter().enumerate() {
        let (r, p) = ProxyResponse::decode(f).unwrap();
        assert_eq!(r.tag, i as u64);
        assert_eq!(p, &want[i][..]);
    }
    assert_eq!(client.pending_send_bytes(), 0);
    let c = client.counters();
    assert_eq!(c.frames_sent - before.frames_sent, n);
    let sends = c.sends - before.sends;
    assert!(sends >= 1 && sends < n / 4, "{sends} sends for {n} gathered frames");
    let s = server.counters();
    assert!(s.frames_received >= n);
    assert!(s.receives < n / 4, "{} receives for {n} frames", s.receives);
    // send_frame still sends at once.
    client.send_frame(&frame).unwrap();
    assert_eq!(client.pending_send_bytes(), 0);
    let mut one = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while one == 0 {
        assert!(Instant::now() < deadline, "timed out");
        server.poll(&mut |_| one += 1).unwrap();
    }
}

/// After the server end is dropped, the client sees an error, not a hang.
pub fn run_close(client: &mut dyn Transport, server: Box<dyn Transport>) {
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "close not detected");
        match client.poll(&mut |_| {}) {
            Err(_) => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A peer announcing an oversized frame gets a `BadFrame` error, not a huge
/// allocation.
pub fn run_bad_frame(client: &mut dyn Transport, server: &mut dyn Transport) {
    client.send_frame(&u32::MAX.to_le_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "bad frame not detected");
        client.poll(&mut |_| {}).unwrap();
        match server.poll(&mut |_| panic!("no frame expected")) {
            Err(TransportError::BadFrame { .. }) => break,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => {}
        }
    }
}

/// Connector conformance: listens on `listen_endpoint` through the registry, connects
/// to what it bound without blocking (the attempt is polled, as a reactor would), runs
/// [`run`] over the pair, then checks that an endpoint nobody listens on fails with
/// [`TransportError::Connect`] instead of hanging. `endpoint_of` turns the listener's
/// [`Listener::local_addr`] into a connectable endpoint string.
pub fn run_connector(listen_endpoint: &str, endpoint_of: &dyn Fn(&str) -> String) {
    let mut l = listen(listen_endpoint).expect("listen");
    let ep = Endpoint::parse(&endpoint_of(&l.local_addr())).expect("endpoint");
    let mut attempt = ep.connect().expect("connect starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut client, mut server) = (None, None);
    while client.is_none() || server.is_none() {
        assert!(Instant::now() < deadline, "connect did not finish");
        if client.is_none() {
            client = attempt.poll().expect("attempt");
        }
        if server.is_none() {
            server = l.accept().expect("accept");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut c, mut s) = (client.unwrap(), server.unwrap());
    run(c.as_mut(), s.as_mut());
    let addr = l.local_addr();
    drop((c, s, l));
    let gone = Endpoint::parse(&endpoint_of(&addr)).expect("endpoint");
    match connect_blocking(&gone, Duration::from_secs(5)) {
        Err(TransportError::Connect { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a closed listener"),
    }
}

/// A loopback TCP listener that never accepts, with its backlog filled: a connect to
/// it neither completes nor fails until it times out (a "black hole" for fault tests).
pub struct TcpBlackHole {
    _listener: std::net::TcpListener,
    /// Connections the backlog holds, and the attempt left hanging.
    _queued: Vec<Box<dyn Transport>>,
    _hanging: Box<dyn Connecting>,
    addr: std::net::SocketAddr,
}

impl TcpBlackHole {
    /// Binds 127.0.0.1 on a free port with backlog 0 and fills the backlog (bounded: at
    /// most 64 filler connections, 200 ms each).
    ///
    /// # Panics
    /// If the socket cannot be made, or if the backlog never fills.
    pub fn new() -> TcpBlackHole {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // Calling listen(2) again changes the backlog of the listening socket.
        rustix::net::listen(&l, 0).expect("listen");
        let addr = l.local_addr().expect("local address");
        let ep = Endpoint::parse(&format!("tcp:{addr}")).expect("endpoint");
        let mut queued = Vec::new();
        for _ in 0..64 {
            let mut c = ep.connect().expect("connect");
            let t = Instant::now();
            let mut done = false;
            while t.elapsed() < Duration::from_millis(200) {
                match c.poll() {
                    Ok(Some(t)) => {
                        done = true;
                        queued.push(t);
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                    Err(e) => panic!("filler connect failed: {e}"),
                }
            }
            if !done {
                return TcpBlackHole { _listener: l, _queued: queued, _hanging: c, addr };
            }
        }
        panic!("the backlog of {addr} never filled");
    }

    /// The `tcp:` endpoint string of the black hole.
    pub fn endpoint(&self) -> String {
        format!("tcp:{}", self.addr)
    }
}

impl Default for TcpBlackHole {
    fn default() -> TcpBlackHole {
        TcpBlackHole::new()
    }
}
