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
