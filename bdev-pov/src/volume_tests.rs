//! Unit tests of the volume device models against a fake volume proxy over real TCP.

use crate::block::{BlockCompletion, BlockOp, BlockRequest, BlockStatus};
use crate::volume::{open_volume, NullVolume, VolumeConfig, VolumeDevice, VolumeError};
use pov_proto::io::{flags, Op};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// What a fake proxy saw: (proxy index, op, offset), in the order it answered.
type Log = Arc<Mutex<Vec<(usize, Op, u64)>>>;

/// State shared by fake proxies that front one store.
#[derive(Clone, Default)]
struct Store {
    volumes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    log: Log,
}

/// Behaviour of one fake proxy.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Writes at this offset are answered after 300 ms.
    slow_write_at: Option<u64>,
    /// Never answer anything (a black-holed link or a stopped process).
    silent: bool,
    /// Close the connection on the first request instead of answering (a killed
    /// proxy).
    hang_up: bool,
}

/// Starts a fake volume proxy on `listener` (one thread per connection, frames
/// answered in order) serving `store`; `idx` tags its log entries.
fn serve(listener: TcpListener, store: Store, idx: usize, b: Behaviour) -> String {
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    if b.silent {
                        continue;
                    }
                    if b.hang_up {
                        return;
                    }
                    let r = ProxyRequest::decode(&body).unwrap();
                    let q = &r.req;
                    if q.op == Op::VolumeWrite && b.slow_write_at == Some(q.offset) {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    let mut vols = store.volumes.lock().unwrap();
                    let (status, result, payload) = match (q.op, vols.get_mut(&q.tenant)) {
                        (Op::Ping, _) => (Status::Ok, 0, vec![]),
                        (Op::VolumeOpen, None) if q.flags & flags::CREATE != 0 => {
                            vols.insert(q.tenant.clone(), vec![0; q.offset as usize]);
                            (Status::Ok, q.offset, vec![])
                        }
                        (Op::VolumeOpen, Some(v)) if v.len() as u64 == q.offset => (Status::Ok, q.offset, vec![]),
                        (Op::VolumeOpen, Some(_)) => (Status::Invalid, 0, vec![]),
                        (_, None) => (Status::NotFound, 0, vec![]),
                        (Op::VolumeRead, Some(v)) => {
                            let (s, e) = (q.offset as usize, q.offset as usize + q.length as usize);
                            if e > v.len() {
                                (Status::Invalid, 0, vec![])
                            } else {
                                (Status::Ok, q.length as u64, v[s..e].to_vec())
                            }
                        }
                        (Op::VolumeWrite, Some(v)) => {
                            let (s, e) = (q.offset as usize, q.offset as usize + r.payload.len());
                            if e > v.len() {
                                (Status::Invalid, 0, vec![])
                            } else {
                                v[s..e].copy_from_slice(r.payload);
                                (Status::Ok, r.payload.len() as u64, vec![])
                            }
                        }
                        (Op::VolumeFlush, Some(_)) => (Status::Ok, 0, vec![]),
                        _ => (Status::UnknownOp, 0, vec![]),
                    };
                    drop(vols);
                    if q.op != Op::Ping {
                        store.log.lock().unwrap().push((idx, q.op, q.offset));
                    }
                    ProxyResponse { op: q.op as u16, tag: q.tag, status, result, flags: 0 }.encode_frame(&payload, &mut out);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn fake_proxy(store: &Store, idx: usize, b: Behaviour) -> String {
    serve(TcpListener::bind("127.0.0.1:0").unwrap(), store.clone(), idx, b)
}

fn cfg(name: &str, size: u64, proxies: &[String]) -> VolumeConfig {
    VolumeConfig {
        name: name.into(),
        volume: format!("{name}-backing"),
        size,
        block_size: 512,
        proxies: proxies.iter().map(|p| format!("tcp:{p}")).collect(),
        request_timeout_ms: 5_000,
        proxy_ping_after_ms: crate::forward::health::default_ping_after_ms(),
        proxy_down_after_ms: crate::forward::health::default_down_after_ms(),
    }
}

use pov_proto::testing::pattern;

/// Drives a volume device like its reactor poller would.
struct Harness {
    dev: VolumeDevice,
    /// The gathering setting the device follows (as the daemon's would).
    gathering: crate::GatheringControl,
    next_tag: u64,
    done: HashMap<u64, BlockCompletion>,
}

impl Harness {
    fn new(c: VolumeConfig) -> Harness {
        open_volume(&c, Duration::from_secs(5)).unwrap();
        let gathering = crate::GatheringControl::default();
        let dev = VolumeDevice::new(c).unwrap().with_gathering(gathering.clone());
        Harness { dev, gathering, next_tag: 1, done: HashMap::new() }
    }

    /// A harness around a volume built without opening its backing volume.
    fn unopened(c: VolumeConfig) -> Harness {
        Harness { dev: VolumeDevice::new(c).unwrap(), gathering: Default::default(), next_tag: 1, done: HashMap::new() }
    }

    fn set_gathering(&mut self, g: crate::Gathering) {
        self.gathering.set(g).unwrap();
    }

    fn submit(&mut self, op: BlockOp, offset: u64, buf: Vec<u8>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.dev.submit(BlockRequest { op, offset, buf: Box::new(buf), tag });
        tag
    }

    fn pump(&mut self) {
        self.dev.poll(&mut ());
        let mut v = Vec::new();
        self.dev.take_completions(&mut v);
        for c in v {
            self.done.insert(c.tag, c);
        }
    }

    fn try_take(&mut self, tag: u64) -> Option<(BlockStatus, Vec<u8>)> {
        self.pump();
        self.done.remove(&tag).map(|c| {
            let mut data = vec![0u8; c.buf.len()];
            c.buf.read_at(0, &mut data).unwrap();
            (c.status, data)
        })
    }

    fn wait(&mut self, tag: u64) -> (BlockStatus, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.try_take(tag) {
                return r;
            }
            assert!(Instant::now() < deadline, "IO {tag} never completed");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn io(&mut self, op: BlockOp, offset: u64, buf: Vec<u8>) -> (BlockStatus, Vec<u8>) {
        let t = self.submit(op, offset, buf);
        self.wait(t)
    }
}

#[test]
fn volume_round_trip_split_and_checks() {
    let store = Store::default();
    let p = fake_proxy(&store, 0, Behaviour::default());
    let size = 8 * MIB as u64;
    let mut h = Harness::new(cfg("vol0", size, &[p]));
    assert_eq!(h.dev.config().capacity_sectors(), size / 512);
    // Pieces: a 3 MiB + 4 KiB write (4 frames), the last block, small IOs.
    let writes = [
        (4096u64, pattern(1, 3 * MIB + 4096)),
        (size - 512, pattern(2, 512)),
        (0, pattern(3, 1024)),
        (5 * MIB as u64 - 512, pattern(4, MIB + 1024)),
    ];
    for (off, data) in &writes {
        assert_eq!(h.io(BlockOp::Write, *off, data.clone()).0, BlockStatus::Ok, "write at {off}");
    }
    let backing = store.volumes.lock().unwrap()["vol0-backing"].clone();
    for (off, data) in &writes {
        assert!(backing[*off as usize..*off as usize + data.len()] == data[..], "proxy holds the write at {off}");
        let (st, got) = h.io(BlockOp::Read, *off, vec![0xee; data.len()]);
        assert_eq!(st, BlockStatus::Ok);
        assert!(got == *data, "read back at {off}");
    }
    let frames_for_big = store
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, op, off)| *op == Op::VolumeWrite && (4096..4096 + 3 * MIB as u64 + 4096).contains(off))
        .count();
    assert_eq!(frames_for_big, 4, "3 MiB + 4 KiB goes as four frames of at most 1 MiB");
    let (st, id) = h.io(BlockOp::GetId, 0, vec![0; 20]);
    assert_eq!(st, BlockStatus::Ok);
    assert_eq!(&id[..8], b"vol-vol0");
    assert!(!pov_proto::layout::is_pov_serial(&id), "never mistaken for a PoV device");
    // Misaligned, out of range, unknown types: errors, and the device keeps serving.
    assert_eq!(h.io(BlockOp::Write, 100, vec![1; 512]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Read, 0, vec![0; 100]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Read, size, vec![0; 512]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Write, size - 512, vec![0; 1024]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Read, u64::MAX - 511, vec![0; 512]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Other(42), 0, vec![]).0, BlockStatus::Unsupported);
    assert_eq!(store.volumes.lock().unwrap()["vol0-backing"], backing, "refused IOs wrote nothing");
    assert!(h.io(BlockOp::Read, size - 512, vec![0; 512]).1 == writes[1].1);
    let s = h.dev.stats();
    assert_eq!((s.writes, s.errors, s.in_flight), (4, 6, 0));
}

#[test]
fn block_size_4096_requires_4096_alignment() {
    let store = Store::default();
    let p = fake_proxy(&store, 0, Behaviour::default());
    let mut c = cfg("vol4k", MIB as u64, &[p]);
    c.block_size = 4096;
    let mut h = Harness::new(c);
    assert_eq!(h.dev.config().block_size, 4096);
    assert_eq!(h.io(BlockOp::Write, 512, vec![1; 4096]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Write, 4096, vec![1; 512]).0, BlockStatus::IoErr);
    assert_eq!(h.io(BlockOp::Write, 4096, vec![1; 8192]).0, BlockStatus::Ok);
}

/// FLUSH goes to every connection that acknowledged writes, only after the writes
/// submitted before it completed, and nowhere when nothing is dirty.
#[test]
fn flush_covers_every_connection() {
    let store = Store::default();
    let p0 = fake_proxy(&store, 0, Behaviour::default());
    let p1 = fake_proxy(&store, 1, Behaviour::default());
    let mut h = Harness::new(cfg("volf", 8 * MIB as u64, &[p0, p1]));
    let tags: Vec<u64> = (0..6).map(|i| h.submit(BlockOp::Write, i * 65536, pattern(i, 65536))).collect();
    for t in tags {
        assert_eq!(h.wait(t).0, BlockStatus::Ok);
    }
    let before = store.log.lock().unwrap().len();
    assert_eq!(h.io(BlockOp::Flush, 0, vec![]).0, BlockStatus::Ok);
    let log = store.log.lock().unwrap().clone();
    let flushes: Vec<usize> = log[before..].iter().filter(|(_, op, _)| *op == Op::VolumeFlush).map(|(i, _, _)| *i).collect();
    let mut sorted = flushes.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1], "one VolumeFlush per connection that carried writes");
    let n = store.log.lock().unwrap().len();
    assert_eq!(h.io(BlockOp::Flush, 0, vec![]).0, BlockStatus::Ok);
    assert_eq!(store.log.lock().unwrap().len(), n, "nothing dirty: no proxy round trip");
    // One more write lands on one connection: only that one is flushed.
    assert_eq!(h.io(BlockOp::Write, 0, vec![9; 512]).0, BlockStatus::Ok);
    let n = store.log.lock().unwrap().len();
    assert_eq!(h.io(BlockOp::Flush, 0, vec![]).0, BlockStatus::Ok);
    let log = store.log.lock().unwrap().clone();
    assert_eq!(log[n..].iter().filter(|(_, op, _)| *op == Op::VolumeFlush).count(), 1);
    assert_eq!(h.dev.stats().flushes, 3);
}

/// A FLUSH submitted while an earlier WRITE is still at the proxy waits for it, and
/// its VolumeFlush reaches the proxy after the write was executed.
#[test]
fn flush_waits_for_earlier_writes() {
    let store = Store::default();
    let p = fake_proxy(&store, 0, Behaviour { slow_write_at: Some(MIB as u64), ..Default::default() });
    let mut h = Harness::new(cfg("volw", 4 * MIB as u64, &[p]));
    let w = h.submit(BlockOp::Write, MIB as u64, pattern(5, 4096));
    let f = h.submit(BlockOp::Flush, 0, vec![]);
    let t0 = Instant::now();
    let mut flush_done = None;
    let mut write_done = None;
    while flush_done.is_none() {
        if write_done.is_none() {
            write_done = h.try_take(w).map(|r| (r.0, Instant::now()));
        }
        flush_done = h.try_take(f).map(|r| (r.0, Instant::now()));
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_micros(200));
    }
    let (wst, wt) = write_done.expect("the write completed before the flush");
    let (fst, ft) = flush_done.unwrap();
    assert_eq!((wst, fst), (BlockStatus::Ok, BlockStatus::Ok));
    assert!(wt <= ft);
    let log = store.log.lock().unwrap().clone();
    let wpos = log.iter().position(|e| e.1 == Op::VolumeWrite).unwrap();
    let fpos = log.iter().position(|e| e.1 == Op::VolumeFlush).expect("a VolumeFlush was sent");
    assert!(wpos < fpos, "flush executed after the write: {log:?}");
}

/// Shutdown with a slow write and a FLUSH behind it: both complete with IOERR, none
/// is lost, nothing stays in flight.
#[test]
fn shutdown_fails_everything_in_progress() {
    let store = Store::default();
    let p = fake_proxy(&store, 0, Behaviour { slow_write_at: Some(0), ..Default::default() });
    let mut h = Harness::new(cfg("vols", MIB as u64, &[p]));
    let w = h.submit(BlockOp::Write, 0, vec![1; 4096]);
    let f = h.submit(BlockOp::Flush, 0, vec![]);
    let r = h.submit(BlockOp::Read, 4096, vec![0; 4096]);
    h.dev.shutdown(&mut ());
    let mut v = Vec::new();
    h.dev.take_completions(&mut v);
    let mut got: Vec<(u64, BlockStatus)> = v.iter().map(|c| (c.tag, c.status)).collect();
    got.sort_by_key(|x| x.0);
    assert_eq!(got, [(w, BlockStatus::IoErr), (f, BlockStatus::IoErr), (r, BlockStatus::IoErr)]);
    assert_eq!(h.dev.stats().in_flight, 0);
    assert_eq!(h.dev.deadline(), None);
}

#[test]
fn timeout_unreachable_and_recovery() {
    // A proxy that never answers: IOERR after the request timeout.
    let store = Store::default();
    let silent = fake_proxy(&store, 0, Behaviour { silent: true, ..Default::default() });
    let mut c = cfg("volt", MIB as u64, &[silent]);
    c.request_timeout_ms = 200;
    let mut dev = Harness::unopened(c);
    let t0 = Instant::now();
    assert_eq!(dev.io(BlockOp::Read, 0, vec![0; 4096]).0, BlockStatus::IoErr);
    assert_eq!(dev.io(BlockOp::Flush, 0, vec![]).0, BlockStatus::Ok, "nothing acknowledged, nothing to flush");
    assert!(t0.elapsed() < Duration::from_secs(2), "bounded by the request timeout");
    assert_eq!(dev.dev.stats().timeouts, 1);

    // No proxy listening: the IO is held, then IOERR at its deadline (no hang).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let mut c = cfg("volu", MIB as u64, std::slice::from_ref(&addr));
    c.request_timeout_ms = 300;
    assert!(matches!(open_volume(&c, Duration::from_secs(1)), Err(VolumeError::Unreachable { .. })));
    let mut h = Harness::unopened(c.clone());
    let t0 = Instant::now();
    assert_eq!(h.io(BlockOp::Write, 0, vec![1; 512]).0, BlockStatus::IoErr);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "held until its deadline: {waited:?}");
    assert!(h.dev.stats().failover.held >= 1);
    // A write submitted while the proxy is away completes once it is up: a delay, not
    // an error.
    c.request_timeout_ms = 5_000;
    let mut h = Harness::unopened(c.clone());
    let t0 = Instant::now();
    let w = h.submit(BlockOp::Write, 0, vec![7; 512]);
    for _ in 0..20 {
        h.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    let store = Store::default();
    serve(TcpListener::bind(&addr).unwrap(), store.clone(), 0, Behaviour::default());
    open_volume(&c, Duration::from_secs(5)).unwrap();
    assert_eq!(h.wait(w).0, BlockStatus::Ok, "held, then written when the proxy came up");
    println!("a write held while the proxy was away completed after {:?}", t0.elapsed());
    assert_eq!(h.io(BlockOp::Read, 0, vec![0; 512]).1, vec![7; 512]);
}

#[test]
fn open_volume_creates_and_refuses_size_mismatch() {
    let store = Store::default();
    let p = fake_proxy(&store, 0, Behaviour::default());
    let c = cfg("volo", 2 * MIB as u64, std::slice::from_ref(&p));
    assert_eq!(open_volume(&c, Duration::from_secs(5)).unwrap(), 2 * MIB as u64);
    assert_eq!(store.volumes.lock().unwrap()["volo-backing"].len(), 2 * MIB);
    assert_eq!(open_volume(&c, Duration::from_secs(5)).unwrap(), 2 * MIB as u64, "reopen");
    let mut bigger = c.clone();
    bigger.size = 4 * MIB as u64;
    let e = open_volume(&bigger, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, VolumeError::SizeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("never resized"), "{e}");
    // Bad configurations never reach a proxy.
    for f in [
        |c: &mut VolumeConfig| c.size = 1000,
        |c: &mut VolumeConfig| c.block_size = 1024,
        |c: &mut VolumeConfig| c.name = "../x".into(),
        |c: &mut VolumeConfig| c.volume = "a/b".into(),
        |c: &mut VolumeConfig| c.proxies.clear(),
        |c: &mut VolumeConfig| c.request_timeout_ms = 0,
    ] {
        let mut bad = c.clone();
        f(&mut bad);
        assert!(matches!(VolumeDevice::new(bad), Err(VolumeError::Invalid { .. })));
    }
}

#[test]
fn host_volume_ops_rejected_by_pov_device_decoder() {
    use pov_proto::io::{RequestHeader, SdkHint};
    let h = RequestHeader {
        op: Op::VolumeWrite,
        queue_id: 0,
        pid: 1,
        session_id: 1,
        request_id: 1,
        file_handle: 0,
        offset: 0,
        length: 0,
        flags: 0,
        payload_len: 0,
        hint: SdkHint::default(),
    };
    let mut b = [0u8; 512];
    h.encode_into(&mut b);
    assert_eq!(RequestHeader::decode(&b).unwrap_err().status(), Status::UnknownOp);
}

#[test]
fn null_volume_reads_zeros_and_drops_writes() {
    let mut c = cfg("null0", 4 * MIB as u64, &[]);
    c.volume = "null0".into();
    let mut d = NullVolume::new(c).unwrap();
    let run = |d: &mut NullVolume, op, offset, buf: Vec<u8>| {
        d.submit(BlockRequest { op, offset, buf: Box::new(buf), tag: 1 });
        let mut v = Vec::new();
        d.take_completions(&mut v);
        assert_eq!(v.len(), 1, "completes at once");
        let c = v.pop().unwrap();
        let mut data = vec![0u8; c.buf.len()];
        c.buf.read_at(0, &mut data).unwrap();
        (c.status, c.written, data)
    };
    assert_eq!(run(&mut d, BlockOp::Write, 0, vec![0xab; 2 * MIB]).0, BlockStatus::Ok);
    let (st, n, data) = run(&mut d, BlockOp::Read, 0, vec![0xcd; 2 * MIB]);
    assert_eq!((st, n), (BlockStatus::Ok, 2 * MIB as u32));
    assert!(data.iter().all(|&x| x == 0), "reads are zeros, writes were dropped");
    assert_eq!(run(&mut d, BlockOp::Flush, 0, vec![]).0, BlockStatus::Ok);
    assert_eq!(&run(&mut d, BlockOp::GetId, 0, vec![0; 20]).2[..9], b"vol-null0");
    assert_eq!(run(&mut d, BlockOp::Read, 4 * MIB as u64, vec![0; 512]).0, BlockStatus::IoErr);
    assert_eq!(run(&mut d, BlockOp::Read, 7, vec![0; 512]).0, BlockStatus::IoErr);
    assert_eq!(run(&mut d, BlockOp::Other(3), 0, vec![]).0, BlockStatus::Unsupported);
    assert_eq!(d.stats().bytes_written, 2 * MIB as u64);
}

fn gathering(enabled: bool, batch_size: u32, window_us: u32) -> crate::Gathering {
    crate::Gathering { enabled, batch_size, window_us }
}

/// Many IOs of varied sizes in flight at once, under every gathering policy: every
/// one completes with the right data, and gathering really puts many frames in a send.
#[test]
fn gathering_preserves_every_io() {
    let policies = [
        gathering(false, 64, 0),
        gathering(true, 1, 0),
        gathering(true, 7, 0),
        gathering(true, 64, 0),
        gathering(true, 64, 2000),
    ];
    for (pi, g) in policies.iter().enumerate() {
        let store = Store::default();
        let p = fake_proxy(&store, 0, Behaviour::default());
        let size = 128 * MIB as u64;
        let mut h = Harness::new(cfg("gv", size, &[p]));
        h.set_gathering(*g);
        assert_eq!(h.dev.gathering(), *g);
        // 100 writes: sizes from 512 B to 1 MiB + 512 (two frames), no two overlapping.
        let sizes = [512usize, 4096, 8192, 65536, MIB + 512];
        let ios: Vec<(u64, Vec<u8>)> =
            (0..100u64).map(|i| (i * (MIB as u64 + 4096), pattern(pi as u64 * 1000 + i, sizes[i as usize % 5]))).collect();
        let tags: Vec<u64> = ios.iter().map(|(off, d)| h.submit(BlockOp::Write, *off, d.clone())).collect();
        for t in tags {
            assert_eq!(h.wait(t).0, BlockStatus::Ok, "policy {g:?}");
        }
        let tags: Vec<u64> = ios.iter().map(|(off, d)| h.submit(BlockOp::Read, *off, vec![0; d.len()])).collect();
        for (t, (off, d)) in tags.into_iter().zip(&ios) {
            let (st, got) = h.wait(t);
            assert_eq!(st, BlockStatus::Ok);
            assert!(got == *d, "policy {g:?}: read at {off} returns what was written");
        }
        let s = h.dev.stats();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.gathering.frames_sent, 240, "policy {g:?}: 200 IOs, 40 of them in two pieces");
        assert_eq!(s.gathering.frames_received, 240);
        if !g.enabled || g.batch_size == 64 {
            // 50 small request frames submitted before one poll, on an idle socket (every
            // earlier IO has completed): gathered, they leave together; without
            // gathering, each is its own send. (Large frames are not counted this way:
            // a full socket makes even ungathered frames share a write.)
            let before = h.dev.stats().gathering;
            let tags: Vec<u64> = (0..50).map(|i| h.submit(BlockOp::Read, i * 4096, vec![0; 4096])).collect();
            let mid = h.dev.stats().gathering;
            if g.enabled {
                assert_eq!(mid.sends, before.sends, "nothing leaves before the poll");
            }
            for t in tags {
                assert_eq!(h.wait(t).0, BlockStatus::Ok);
            }
            let after = h.dev.stats().gathering;
            assert_eq!(after.frames_sent - before.frames_sent, 50);
            let sends = after.sends - before.sends;
            if g.enabled {
                assert!(sends <= 2, "{sends} sends for 50 gathered frames");
            } else {
                assert_eq!(sends, 50, "without gathering every small frame is its own send: {:?}", after);
            }
        }
    }
}

/// The batch size forces a send as soon as that many frames are queued.
#[test]
fn gathering_batch_size_boundary() {
    let store = Store::default();
    let p = fake_proxy(&store, 0, Behaviour::default());
    let mut h = Harness::new(cfg("gb", MIB as u64, &[p]));
    h.set_gathering(gathering(true, 3, 0));
    let tags: Vec<u64> = (0..7).map(|i| h.submit(BlockOp::Read, i * 512, vec![0; 512])).collect();
    let s = h.dev.stats().gathering;
    assert_eq!((s.frames_sent, s.sends), (7, 2), "frames 1-3 and 4-6 left at the boundary, frame 7 waits for the poll");
    h.dev.poll(&mut ());
    assert_eq!(h.dev.stats().gathering.sends, 3);
    for t in tags {
        assert_eq!(h.wait(t).0, BlockStatus::Ok);
    }
}

/// A lone request leaves at the end of the poll that queued it whatever the window;
/// a request queued while others are in flight waits at most the window.
#[test]
fn gathering_window_never_delays_a_lone_request() {
    let store = Store::default();
    let slow = 8 * MIB as u64;
    let p = fake_proxy(&store, 0, Behaviour { slow_write_at: Some(slow), ..Default::default() });
    let mut h = Harness::new(cfg("gw", 16 * MIB as u64, &[p]));
    h.set_gathering(gathering(true, 64, 10_000));
    let t0 = h.submit(BlockOp::Read, 0, vec![0; 512]);
    assert_eq!(h.dev.stats().gathering.sends, 0);
    h.dev.poll(&mut ());
    assert_eq!(h.dev.stats().gathering.sends, 1, "the lone request left at the first poll");
    assert_eq!(h.wait(t0).0, BlockStatus::Ok);
    // A write the proxy answers after 300 ms keeps the connection busy...
    let tw = h.submit(BlockOp::Write, slow, vec![7; 512]);
    h.dev.poll(&mut ());
    assert_eq!(h.dev.stats().gathering.sends, 2, "lone again: sent at once");
    // ...so the next request may wait for company, but only for the window (10 ms).
    let start = Instant::now();
    let tr = h.submit(BlockOp::Read, 512, vec![0; 512]);
    assert_eq!(h.dev.poll(&mut ()), pov_runtime::PollStatus::Busy, "a held frame keeps the poller busy");
    if start.elapsed() < Duration::from_millis(9) {
        assert_eq!(h.dev.stats().gathering.sends, 2, "held inside the window");
    }
    while h.dev.stats().gathering.sends < 3 {
        assert!(start.elapsed() < Duration::from_millis(500), "the window expired but the frame was not sent");
        h.dev.poll(&mut ());
    }
    assert!(start.elapsed() >= Duration::from_millis(10) || h.dev.stats().gathering.sends == 3);
    assert_eq!(h.wait(tr).0, BlockStatus::Ok);
    assert_eq!(h.wait(tw).0, BlockStatus::Ok);
    let s = h.dev.stats();
    assert_eq!(s.gathering.frames_sent - s.failover.pings, 3, "pings aside (the 300 ms write draws one)");
}

/// Proxy failover (`forward::health`): of two proxies fronting one store, one fails;
/// every IO still completes `Ok` with the right data, through the survivor, and the
/// failed one is shown down. `fail` makes proxy 0 fail: hang up (killed) or go silent
/// (black-holed). The first IO, a 4 MiB read (four pieces, round-robin puts two on the
/// failed proxy), meets the failure; its time is returned.
fn failover(fail: Behaviour) -> Duration {
    failover_timed(fail, crate::forward::health::Liveness::default())
}

/// [`failover`] with the device's detection times set to `l`.
fn failover_timed(fail: Behaviour, l: crate::forward::health::Liveness) -> Duration {
    let store = Store::default();
    let good = fake_proxy(&store, 1, Behaviour::default());
    // Write the data through the good proxy; then serve through [bad, good].
    let c = cfg("vfail", 4 * MIB as u64, std::slice::from_ref(&good));
    open_volume(&c, Duration::from_secs(5)).unwrap();
    let data = pattern(9, 4 * MIB);
    let mut direct = Harness::unopened(c);
    assert_eq!(direct.io(BlockOp::Write, 0, data.clone()).0, BlockStatus::Ok);
    let bad = fake_proxy(&store, 0, fail);
    let mut c = cfg("vfail", 4 * MIB as u64, &[bad, good]);
    c.proxy_ping_after_ms = l.ping_after.as_millis() as u32;
    c.proxy_down_after_ms = l.down_after.as_millis() as u32;
    let mut h = Harness::unopened(c);
    let before = store.log.lock().unwrap().len();
    let t0 = Instant::now();
    let (st, back) = h.io(BlockOp::Read, 0, vec![0; 4 * MIB]);
    let first = t0.elapsed();
    assert_eq!(st, BlockStatus::Ok, "read through the survivor");
    assert!(back == data, "read what was written");
    // The failed proxy is down: new writes go to the survivor only.
    let data2 = pattern(10, 4 * MIB);
    assert_eq!(h.io(BlockOp::Write, 0, data2.clone()).0, BlockStatus::Ok, "write through the survivor");
    assert_eq!(h.io(BlockOp::Flush, 0, vec![]).0, BlockStatus::Ok);
    assert!(h.io(BlockOp::Read, 0, vec![0; 4 * MIB]).1 == data2, "read back what was written");
    let s = h.dev.stats();
    assert!(s.failover.resent >= 1 || fail.hang_up, "a piece sent to the failed proxy was resent: {s:?}");
    assert!(s.failover.rerouted >= 2, "later pieces avoid the failed proxy: {s:?}");
    assert_eq!((s.failover.proxies_down, s.failover.proxy_downs), (1, 1), "{s:?}");
    assert_eq!(s.failover.proxies[0].state, "down");
    assert_eq!(s.errors, 0);
    let log = store.log.lock().unwrap();
    assert!(log[before..].iter().all(|e| e.0 == 1), "only the survivor executed anything: {log:?}");
    first
}

#[test]
fn a_killed_proxy_loses_no_io() {
    let first = failover(Behaviour { hang_up: true, ..Default::default() });
    assert!(first < Duration::from_secs(1), "a broken connection is noticed at once: {first:?}");
}

#[test]
fn a_black_holed_proxy_is_declared_down_within_the_bound_and_loses_no_io() {
    use crate::forward::health::{DOWN_AFTER, PING_AFTER};
    let first = failover(Behaviour { silent: true, ..Default::default() });
    assert!(first >= DOWN_AFTER, "declared down only after an unanswered ping: {first:?}");
    assert!(first < PING_AFTER + DOWN_AFTER + Duration::from_millis(500), "within the bound: {first:?}");
}

/// The detection times are settings: shorter ones find a black hole sooner; values
/// out of range are refused.
#[test]
fn shorter_detection_times_find_a_black_hole_sooner() {
    use crate::forward::health::Liveness;
    let l = Liveness::from_ms(50, 200).unwrap();
    let first = failover_timed(Behaviour { silent: true, ..Default::default() }, l);
    assert!(first >= l.down_after && first < Duration::from_millis(750), "within 50 + 200 ms and a poll: {first:?}");
    let mut bad = cfg("vbad", MIB as u64, &["tcp:127.0.0.1:1".to_string()]);
    bad.proxy_down_after_ms = 10;
    assert!(bad.validate(false).is_err_and(|e| e.to_string().contains("proxy_down_after_ms")));
}

/// A write caught on a proxy that went silent is not resent elsewhere (the proxy may
/// be alive and run it late, over newer data): it waits for that proxy's answer and,
/// the proxy staying silent, fails at its deadline — outcome unknown — while reads and
/// new IO go on through the survivor.
#[test]
fn a_write_on_a_silent_proxy_waits_for_it_and_is_never_resent() {
    let store = Store::default();
    let good = fake_proxy(&store, 1, Behaviour::default());
    let c = cfg("vsil", MIB as u64, std::slice::from_ref(&good));
    open_volume(&c, Duration::from_secs(5)).unwrap();
    let bad = fake_proxy(&store, 0, Behaviour { silent: true, ..Default::default() });
    let mut c = cfg("vsil", MIB as u64, &[bad, good]);
    c.request_timeout_ms = 3_000;
    let mut h = Harness::unopened(c);
    // Round-robin: the first piece goes to the silent proxy.
    let t0 = Instant::now();
    let w = h.submit(BlockOp::Write, 0, pattern(3, 4096));
    // Meanwhile, once the proxy is down, other IO goes through the survivor.
    while t0.elapsed() < Duration::from_millis(2000) {
        h.pump();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.dev.stats().failover.proxies[0].state, "down");
    assert_eq!(h.io(BlockOp::Write, 8192, pattern(4, 4096)).0, BlockStatus::Ok);
    assert_eq!(h.io(BlockOp::Read, 8192, vec![0; 4096]), (BlockStatus::Ok, pattern(4, 4096)));
    assert_eq!(h.wait(w).0, BlockStatus::IoErr, "the caught write fails at its deadline");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(2900), "it waited for the silent proxy: {waited:?}");
    let s = h.dev.stats();
    assert_eq!(s.failover.resent, 0, "nothing was resent (reads after the down went to the survivor): {s:?}");
    let log = store.log.lock().unwrap();
    assert!(!log.iter().any(|e| e.1 == Op::VolumeWrite && e.2 == 0), "the caught write never ran elsewhere: {log:?}");
}

/// A proxy that is down is probed; once it answers again it takes its share back.
#[test]
fn a_proxy_that_comes_back_rejoins() {
    let store = Store::default();
    let good = fake_proxy(&store, 1, Behaviour::default());
    let c = cfg("vrejoin", MIB as u64, std::slice::from_ref(&good));
    open_volume(&c, Duration::from_secs(5)).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = l.local_addr().unwrap().to_string();
    drop(l);
    let mut h = Harness::unopened(cfg("vrejoin", MIB as u64, &[gone.clone(), good]));
    for i in 0..4u64 {
        assert_eq!(h.io(BlockOp::Write, i * 4096, pattern(i, 4096)).0, BlockStatus::Ok, "served by the survivor");
    }
    assert_eq!(h.dev.stats().failover.proxies[0].state, "down");
    serve(TcpListener::bind(&gone).unwrap(), store.clone(), 0, Behaviour::default());
    let t0 = Instant::now();
    while h.dev.stats().failover.proxies[0].state == "down" {
        assert!(t0.elapsed() < Duration::from_secs(5), "the proxy never rejoined: {:?}", h.dev.stats().failover.proxies);
        h.pump();
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = store.log.lock().unwrap().len();
    for i in 0..4u64 {
        assert_eq!(h.io(BlockOp::Read, i * 4096, vec![0; 4096]), (BlockStatus::Ok, pattern(i, 4096)));
    }
    let log = store.log.lock().unwrap();
    assert!(log[before..].iter().any(|e| e.0 == 0), "the rejoined proxy serves again: {log:?}");
}

/// A volume built before its proxy is up ([`VolumeDevice::new_opening`], as a
/// configuration replay does) opens its backing volume in the background; IO waits
/// for it and then completes. A proxy that refuses the open fails every IO.
#[test]
fn a_volume_opens_in_the_background_when_its_proxy_comes_up() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let c = cfg("vbg", MIB as u64, std::slice::from_ref(&addr));
    let mut h =
        Harness { dev: VolumeDevice::new_opening(c).unwrap(), gathering: Default::default(), next_tag: 1, done: HashMap::new() };
    let w = h.submit(BlockOp::Write, 4096, pattern(5, 4096));
    for _ in 0..30 {
        h.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = h.dev.stats();
    assert_eq!(s.state, "opening", "{s:?}");
    assert!(s.open_error.is_some(), "says why: {s:?}");
    assert!(h.try_take(w).is_none(), "the write waits for the open");
    let store = Store::default();
    serve(TcpListener::bind(&addr).unwrap(), store.clone(), 0, Behaviour::default());
    assert_eq!(h.wait(w).0, BlockStatus::Ok, "written once the volume opened");
    assert_eq!(h.dev.stats().state, "ready");
    assert_eq!(store.volumes.lock().unwrap()["vbg-backing"].len(), MIB, "created at its size");
    assert_eq!(h.io(BlockOp::Read, 4096, vec![0; 4096]), (BlockStatus::Ok, pattern(5, 4096)));

    // The backing volume exists with another size: the open is refused for good.
    let mut c = cfg("vbg", 2 * MIB as u64, std::slice::from_ref(&addr));
    c.request_timeout_ms = 2_000;
    let mut h =
        Harness { dev: VolumeDevice::new_opening(c).unwrap(), gathering: Default::default(), next_tag: 1, done: HashMap::new() };
    assert_eq!(h.io(BlockOp::Read, 0, vec![0; 512]).0, BlockStatus::IoErr);
    let s = h.dev.stats();
    assert_eq!(s.state, "failed", "{s:?}");
    assert!(s.open_error.unwrap().contains("another size"));
    assert_eq!(store.volumes.lock().unwrap()["vbg-backing"].len(), MIB, "never resized");
}
