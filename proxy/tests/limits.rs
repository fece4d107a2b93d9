//! Resource limits of the real `pov-proxy` binary under attack (docs/security.md,
//! "Resource limits"): a peer that sends many large reads and never reads the answers
//! cannot grow the proxy's memory, and other connections keep being served; a peer
//! that sends half a frame, or nothing, is disconnected after the frame timeout while
//! an established idle connection is kept.

use pov_proto::io::{Op, SdkHint};
use pov_proto::wire::{ProxyRequest, ProxyResponse, LEN_PREFIX, MAX_FRAME};
use pov_proto::Status;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;
use common::TIMEOUT;
const MIB: usize = 1 << 20;

/// The proxy process, killed when the test ends (pass or fail).
struct Proxy {
    child: Child,
    addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn spawn(args: &[&str]) -> Proxy {
        let all: Vec<&str> =
            ["--listen", "tcp:127.0.0.1:0", "--log-level", "warn"].into_iter().chain(args.iter().copied()).collect();
        let (child, addr) = common::spawn(&all);
        Proxy { child, addr }
    }

    /// `(VmRSS bytes, Threads)` from /proc/PID/status.
    fn status(&self) -> (usize, usize) {
        proc_status(self.child.id())
    }
}

fn proc_status(pid: u32) -> (usize, usize) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let field = |name: &str| -> usize {
        let line = s.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in status"));
        line[name.len()..].trim().trim_end_matches(" kB").trim().parse().unwrap()
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

fn read_request(tag: u64, offset: u64, length: u32) -> Vec<u8> {
    let r = ProxyRequest {
        op: Op::Read,
        tag,
        offset,
        length,
        flags: 0,
        hint: SdkHint::default(),
        trace: false,
        qos: 0,
        load: 0,
        epoch: 0,
        session_id: 7,
        tenant: "t".into(),
        path: "big".into(),
        grant: Default::default(),
    };
    let mut f = Vec::new();
    r.encode_frame(&[], &mut f).unwrap();
    f
}

/// Samples a process's RSS every 10 ms on a thread and records the maximum; kills the
/// process once it reaches `limit` (so a failing run does not take the machine's
/// memory).
struct RssSampler {
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32, limit: usize) -> RssSampler {
        use std::sync::atomic::Ordering;
        let max = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, st) = (max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { break };
                let rss = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<usize>().ok())
                    .unwrap_or(0)
                    * 1024;
                m.fetch_max(rss, Ordering::Relaxed);
                if rss >= limit {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { max, stop }
    }

    fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads one response frame from a blocking stream.
fn read_response(s: &mut TcpStream, body: &mut Vec<u8>) -> std::io::Result<ProxyResponse> {
    let mut len = [0u8; LEN_PREFIX];
    s.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    assert!(n <= MAX_FRAME, "response frame of {n} bytes");
    body.resize(n, 0);
    s.read_exact(body)?;
    let (r, _) = ProxyResponse::decode(body).expect("response decodes");
    Ok(r)
}

fn payload(body: &[u8]) -> &[u8] {
    ProxyResponse::decode(body).unwrap().1
}

/// The file every read targets: 1 MiB of a pattern that differs at every offset.
fn make_data(dir: &std::path::Path) -> Vec<u8> {
    let data: Vec<u8> = (0..MIB as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::create_dir_all(dir.join("t")).unwrap();
    std::fs::write(dir.join("t/big"), &data).unwrap();
    data
}

/// Attack (a): 3000 one-MiB reads on one connection that does not read its answers.
/// Served without a bound, the answers pile up in the proxy (measured before the
/// back-pressure: 2.3 GB). With it, the proxy stops reading that connection once a few
/// MiB of answers wait for the socket, so its RSS stays far below the 3 GB asked for
/// (bound: 128 MiB, see below); a second connection gets verified answers with bounded
/// latency meanwhile, and once the attacker reads, every one of its 3000 answers
/// arrives.
#[test]
fn a_peer_that_never_reads_cannot_grow_the_proxy() {
    /// What the proxy may use: its own baseline (~10 MiB) plus the default bound of one
    /// connection's outstanding answers (8 MiB, plus one answer over it), its request
    /// backlog (≤ 1 MiB), buffers kept for reuse and allocator slack. Far below the 3 GB
    /// the attacker asks for; generous so that allocator behaviour cannot flake it.
    const RSS_LIMIT: usize = 128 * MIB;
    const REQUESTS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let data = make_data(dir.path());
    let proxy = Proxy::spawn(&["--backend", &format!("local:{}", dir.path().display())]);
    let (rss0, _) = proxy.status();

    let mut attacker = TcpStream::connect(&proxy.addr).unwrap();
    attacker.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut frames = Vec::new();
    for tag in 1..=REQUESTS {
        frames.extend_from_slice(&read_request(tag, 0, MIB as u32));
    }
    // The writer blocks once the proxy stops reading (that is the back-pressure); it
    // finishes once the answers drain below.
    let mut w = attacker.try_clone().unwrap();
    let sender = std::thread::spawn(move || w.write_all(&frames));

    let sampler = RssSampler::start(proxy.child.id(), RSS_LIMIT);
    let check_rss = |when: &str| {
        let max = sampler.max();
        assert!(max < RSS_LIMIT, "{when}: pov-proxy RSS reached {} MiB >= {} MiB (killed)", max / MIB, RSS_LIMIT / MIB);
    };
    // Phase 1 (3 s): the attacker reads nothing; another connection is served.
    let mut other = TcpStream::connect(&proxy.addr).unwrap();
    other.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut latencies, mut body) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        check_rss("attacker not reading");
        let (off, len) = ((i * 40_961) % (MIB as u64 - 65_536), 65_536u32);
        let t = Instant::now();
        other.write_all(&read_request(1_000_000 + i, off, len)).unwrap();
        let r = read_response(&mut other, &mut body);
        check_rss("attacker not reading");
        let r = r.expect("the other connection is answered");
        latencies.push(t.elapsed());
        assert_eq!((r.tag, r.status, r.result), (1_000_000 + i, Status::Ok, u64::from(len)));
        assert_eq!(payload(&body), &data[off as usize..off as usize + len as usize], "verified data");
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    assert!(max < Duration::from_secs(1), "other connection: max latency {max:?}");

    // Phase 2: the attacker reads; every answer arrives, none twice, all verified.
    let mut seen = vec![false; REQUESTS as usize + 1];
    for n in 0..REQUESTS {
        if n % 100 == 0 {
            check_rss("attacker reading");
        }
        let r = read_response(&mut attacker, &mut body).unwrap_or_else(|e| panic!("answer {n} of {REQUESTS}: {e}"));
        assert_eq!((r.status, r.result), (Status::Ok, MIB as u64), "tag {}", r.tag);
        assert!((1..=REQUESTS).contains(&r.tag) && !seen[r.tag as usize], "tag {} unexpected or twice", r.tag);
        seen[r.tag as usize] = true;
        assert!(payload(&body) == &data[..], "tag {}: data differs", r.tag);
    }
    sender.join().unwrap().expect("all requests were taken by the proxy");
    check_rss("after");
    let max_rss = sampler.max();
    eprintln!(
        "pov-proxy RSS: {} MiB at start, max {} MiB (limit {} MiB); other connection: {} calls, p50 {p50:?}, max {max:?}",
        rss0 / MIB,
        max_rss / MIB,
        RSS_LIMIT / MIB,
        latencies.len()
    );
}

/// Waits until the peer closes `s` (EOF or reset); returns how long that took.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut b = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

/// Attack (c): a peer that sends half a frame and goes silent, and one that sends
/// nothing at all, are disconnected after `--frame-timeout`; an established connection
/// that is idle between frames is kept (a DPU's connections are); an over-long frame
/// closes its connection at once; the proxy keeps serving.
#[test]
fn half_frames_and_silent_peers_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let data = make_data(dir.path());
    let proxy = Proxy::spawn(&["--backend", &format!("local:{}", dir.path().display()), "--frame-timeout", "1"]);
    let mut half = TcpStream::connect(&proxy.addr).unwrap();
    let f = read_request(1, 0, 16);
    half.write_all(&f[..f.len() / 2]).unwrap();
    let mut silent = TcpStream::connect(&proxy.addr).unwrap();
    let mut idle = TcpStream::connect(&proxy.addr).unwrap();
    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut body = Vec::new();
    idle.write_all(&read_request(2, 0, 16)).unwrap();
    assert_eq!(read_response(&mut idle, &mut body).unwrap().status, Status::Ok);

    let took = time_to_close(&mut half, Duration::from_secs(10)).expect("half frame: connection not closed within 10 s");
    assert!(took >= Duration::from_millis(700), "half frame: closed after {took:?}, before the 1 s timeout");
    let took = time_to_close(&mut silent, Duration::from_secs(10)).expect("silent peer: connection not closed within 10 s");
    eprintln!("silent peer closed {took:?} after the half-frame one");

    // Over-long frame: closed at once, no answer.
    let mut long = TcpStream::connect(&proxy.addr).unwrap();
    long.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes()).unwrap();
    let took = time_to_close(&mut long, Duration::from_secs(5)).expect("over-long frame: connection not closed");
    assert!(took < Duration::from_millis(900), "over-long frame closed after {took:?}");

    // The established connection idled > 2 timeouts and is still served.
    std::thread::sleep(Duration::from_millis(500));
    idle.write_all(&read_request(3, 100, 16)).unwrap();
    let r = read_response(&mut idle, &mut body).expect("idle established connection kept");
    assert_eq!((r.tag, r.status), (3, Status::Ok));
    assert_eq!(payload(&body), &data[100..116]);
}
