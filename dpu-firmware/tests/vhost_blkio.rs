//! A real vhost-user-blk client (libblkio, crate `blkio`) against `VhostBlkServer`
//! serving a `MemDisk`: features/config negotiation, memory regions, READ/WRITE/FLUSH,
//! several queues and two clients at once.

use bdev_pov::testing::MemDisk;
use bdev_pov::BlockDevice;
use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use pov_dpu_firmware::vhost_blk::{VhostBlkOptions, VhostBlkServer};
use pov_runtime::{ReactorConfig, Runtime};
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Duration;

const DISK: usize = 4 << 20;

struct Client {
    b: Blkio,
    queues: Vec<Blkioq>,
    region: MemoryRegion,
}

impl Client {
    fn connect(path: &Path, queues: i32) -> Client {
        let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
        b.set_str("path", path.to_str().unwrap()).unwrap();
        b.connect().unwrap();
        b.set_i32("num-queues", queues).unwrap();
        let out = b.start().unwrap();
        let region = b.alloc_mem_region(2 << 20).unwrap();
        b.map_mem_region(&region).unwrap();
        Client { b, queues: out.queues, region }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes mapped by libblkio for this client and lives
        // as long as `self.b`; no request is in flight while the slice is used.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    fn wait(&mut self, q: usize) -> i32 {
        let mut c = [MaybeUninit::<Completion>::uninit()];
        let mut t = Duration::from_secs(10);
        let n = self.queues[q].do_io(&mut c, 1, Some(&mut t), None).unwrap();
        assert_eq!(n, 1, "no completion within 10 s");
        // SAFETY: do_io filled the first `n` elements.
        unsafe { c[0].assume_init_ref() }.ret
    }

    fn write(&mut self, q: usize, offset: u64, off_in_buf: usize, len: usize) -> i32 {
        let p = self.region.addr as *const u8;
        self.queues[q].write(offset, p.wrapping_add(off_in_buf), len, 0, ReqFlags::empty());
        self.wait(q)
    }

    fn read(&mut self, q: usize, offset: u64, off_in_buf: usize, len: usize) -> i32 {
        let p = self.region.addr as *mut u8;
        self.queues[q].read(offset, p.wrapping_add(off_in_buf), len, 0, ReqFlags::empty());
        self.wait(q)
    }
}

fn start(dir: &Path) -> (Runtime, VhostBlkServer) {
    let _ = env_logger::builder().is_test(true).try_init();
    let rt = Runtime::start(&[None], ReactorConfig::default()).unwrap();
    let mut opts = VhostBlkOptions::new("mem0", dir.join("blk.sock"));
    opts.num_queues = 2;
    let srv = VhostBlkServer::start(opts, &rt.reactors()[0], || {
        Ok(Box::new(MemDisk::new(DISK, "mem0").with_deferred_completions()) as Box<dyn BlockDevice>)
    })
    .unwrap();
    (rt, srv)
}

#[test]
fn libblkio_round_trip_two_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, srv) = start(dir.path());
    let sock = srv.socket().to_path_buf();

    let mut a = Client::connect(&sock, 2);
    assert_eq!(a.b.get_u64("capacity").unwrap(), DISK as u64);
    let mut b = Client::connect(&sock, 1);
    assert_eq!(srv.clients(), 2);

    // 1 MiB + 4 KiB in one request (size_max), from client A's queue 1.
    let big = (1 << 20) + 4096;
    for (i, x) in a.buf()[..big].iter_mut().enumerate() {
        *x = (i % 251) as u8;
    }
    assert_eq!(a.write(1, 8192, 0, big), 0);
    a.queues[0].flush(0, ReqFlags::empty());
    assert_eq!(a.wait(0), 0);

    // Client B reads it back through its own connection.
    assert_eq!(b.read(0, 8192, 4096, big), 0);
    let data = b.buf()[4096..4096 + big].to_vec();
    assert!(data.iter().enumerate().all(|(i, x)| *x == (i % 251) as u8));

    // Out of range: an IO error, and the queue keeps working.
    assert!(a.read(0, DISK as u64, 0, 4096) < 0);
    assert_eq!(a.read(0, 0, 0, 512), 0);

    // A buffer outside the client's mapped memory completes with an error, never
    // success (NOTES: libblkio gives the client's virtual address as guest address).
    let mut own = vec![0u8; 4096];
    a.queues[0].read(0, own.as_mut_ptr(), own.len(), 0, ReqFlags::empty());
    assert!(a.wait(0) < 0);

    let stats = srv.stats().unwrap();
    assert_eq!(stats["vhost"]["bad_chains"], 1, "{stats}");

    drop(b);
    let t = std::time::Instant::now();
    while srv.clients() != 1 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.clients(), 1);
    // A new client can still connect after one left.
    let mut c = Client::connect(&sock, 1);
    assert_eq!(c.read(0, 8192, 0, 4096), 0);
    assert!(c.buf()[..4096].iter().enumerate().all(|(i, x)| *x == (i % 251) as u8));

    srv.stop();
    assert!(!sock.exists(), "socket file left behind");
    drop((a, c));
    rt.shutdown();
}

/// 4 KiB random reads at queue depth `qd` on queue 0 of `c` for `dur` over the first
/// `disk` bytes; returns IOPS.
fn random_4k_reads(c: &mut Client, disk: u64, qd: usize, dur: Duration) -> f64 {
    let mut comps: Vec<MaybeUninit<Completion>> = (0..qd).map(|_| MaybeUninit::uninit()).collect();
    let base = c.region.addr as *mut u8;
    let mut x: u64 = 0x9e37_79b9;
    let mut next_off = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (disk / 4096)) * 4096
    };
    for i in 0..qd {
        c.queues[0].read(next_off(), base.wrapping_add(i * 4096), 4096, i, ReqFlags::empty());
    }
    let t = std::time::Instant::now();
    let mut done = 0u64;
    while t.elapsed() < dur {
        let n = c.queues[0].do_io(&mut comps, 1, None, None).unwrap();
        for comp in &comps[..n] {
            // SAFETY: do_io filled the first n elements.
            let comp = unsafe { comp.assume_init_ref() };
            assert_eq!(comp.ret, 0);
            let slot = comp.user_data;
            c.queues[0].read(next_off(), base.wrapping_add(slot * 4096), 4096, slot, ReqFlags::empty());
        }
        done += n as u64;
    }
    let elapsed = t.elapsed();
    let mut left = qd;
    while left > 0 {
        left -= c.queues[0].do_io(&mut comps, 1, None, None).unwrap();
    }
    done as f64 / elapsed.as_secs_f64()
}

fn bench_runtime() -> Runtime {
    let _ = env_logger::builder().is_test(true).try_init();
    let cpu = std::env::var("BENCH_REACTOR_CPU").ok().and_then(|v| v.parse().ok());
    let mut cfg = ReactorConfig::default();
    if let Some(us) = std::env::var("BENCH_IDLE_US").ok().and_then(|v| v.parse().ok()) {
        cfg.idle_window = Duration::from_micros(us);
    }
    Runtime::start(&[cpu], cfg).unwrap()
}

/// Rough throughput of the adapter alone (MemDisk answers at once): 4 KiB random
/// reads at QD1 and QD32 for 2 s each. Run with
/// `cargo test --release -p pov-dpu-firmware --test vhost_blkio -- --ignored --nocapture`
/// (env `BENCH_REACTOR_CPU=N` pins the reactor, `BENCH_IDLE_US` sets its idle window).
#[test]
#[ignore]
fn bench_memdisk_4k_reads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = bench_runtime();
    let opts = VhostBlkOptions::new("bench", dir.path().join("b.sock"));
    let srv =
        VhostBlkServer::start(opts, &rt.reactors()[0], || Ok(Box::new(MemDisk::new(DISK, "b")) as Box<dyn BlockDevice>)).unwrap();
    let mut c = Client::connect(srv.socket(), 1);
    for qd in [1usize, 32] {
        println!("QD{qd}: {:.0} IOPS", random_4k_reads(&mut c, DISK as u64, qd, Duration::from_secs(2)));
    }
    drop(c);
    srv.stop();
    rt.shutdown();
}

/// The device-path null volume against MemDisk, A/B in one run: 4 KiB random reads at
/// QD1 and QD32, 1 s per sample, A B A B A B, medians printed. Both devices zero-fill
/// or copy 4 KiB per read, so the difference is the volume model's own cost. Run
/// pinned: `taskset -c 1 cargo test --release -p pov-dpu-firmware --test vhost_blkio
/// bench_null_volume -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_null_volume_vs_memdisk_4k_reads() {
    use bdev_pov::volume::{NullVolume, VolumeConfig};
    let dir = tempfile::tempdir().unwrap();
    let rt = bench_runtime();
    let mem = VhostBlkServer::start(VhostBlkOptions::new("mem", dir.path().join("m.sock")), &rt.reactors()[0], || {
        Ok(Box::new(MemDisk::new(DISK, "m")) as Box<dyn BlockDevice>)
    })
    .unwrap();
    let cfg = VolumeConfig {
        name: "nv".into(),
        volume: "nv".into(),
        size: DISK as u64,
        block_size: 512,
        proxies: Vec::new(),
        request_timeout_ms: 30_000,
        proxy_ping_after_ms: bdev_pov::forward::health::default_ping_after_ms(),
        proxy_down_after_ms: bdev_pov::forward::health::default_down_after_ms(),
    };
    let null = VhostBlkServer::start(VhostBlkOptions::new("null", dir.path().join("n.sock")), &rt.reactors()[0], move || {
        NullVolume::new(cfg).map(|d| Box::new(d) as Box<dyn BlockDevice>).map_err(|e| e.to_string())
    })
    .unwrap();
    let mut a = Client::connect(mem.socket(), 1);
    let mut b = Client::connect(null.socket(), 1);
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    for qd in [1usize, 32] {
        let (mut ma, mut mb) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ma.push(random_4k_reads(&mut a, DISK as u64, qd, Duration::from_secs(1)));
            mb.push(random_4k_reads(&mut b, DISK as u64, qd, Duration::from_secs(1)));
        }
        let (ma, mb) = (median(ma), median(mb));
        println!("QD{qd}: MemDisk {ma:.0} IOPS, null volume {mb:.0} IOPS, ratio null/MemDisk {:.2}", mb / ma);
    }
    drop((a, b));
    mem.stop();
    null.stop();
    rt.shutdown();
}

/// A device that parks every READ until shutdown (like a PoV response slot whose
/// proxy never answers) and completes everything else at once.
struct Parking {
    parked: Vec<bdev_pov::BlockRequest>,
    done: Vec<bdev_pov::BlockCompletion>,
}

impl BlockDevice for Parking {
    fn name(&self) -> &str {
        "park"
    }
    fn capacity_sectors(&self) -> u64 {
        2048
    }
    fn submit(&mut self, req: bdev_pov::BlockRequest) {
        if req.op == bdev_pov::BlockOp::Read {
            self.parked.push(req);
        } else {
            self.done.push(bdev_pov::BlockCompletion {
                tag: req.tag,
                status: bdev_pov::BlockStatus::Ok,
                written: 0,
                buf: req.buf,
            });
        }
    }
    fn poll(&mut self, _fds: &mut dyn pov_runtime::FdRegistry) -> pov_runtime::PollStatus {
        pov_runtime::PollStatus::Idle
    }
    fn take_completions(&mut self, out: &mut Vec<bdev_pov::BlockCompletion>) {
        out.append(&mut self.done);
    }
    fn deadline(&self) -> Option<std::time::Instant> {
        None
    }
    fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({ "parked": self.parked.len() })
    }
    fn write_config_json(&self) -> serde_json::Value {
        serde_json::json!({ "method": "test_parking_create", "params": { "name": "park" } })
    }
    fn destruct(&mut self, _fds: &mut dyn pov_runtime::FdRegistry) {
        for r in self.parked.drain(..) {
            self.done.push(bdev_pov::BlockCompletion {
                tag: r.tag,
                status: bdev_pov::BlockStatus::IoErr,
                written: 0,
                buf: r.buf,
            });
        }
    }
}

#[test]
fn client_leaving_with_parked_reads_and_stop_with_io_in_flight() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&[None], ReactorConfig::default()).unwrap();
    let opts = VhostBlkOptions::new("park", dir.path().join("p.sock"));
    let srv = VhostBlkServer::start(opts, &rt.reactors()[0], || {
        Ok(Box::new(Parking { parked: Vec::new(), done: Vec::new() }) as Box<dyn BlockDevice>)
    })
    .unwrap();
    let wait_in_flight = |n: u64| {
        let t = std::time::Instant::now();
        loop {
            let s = srv.stats().unwrap();
            if s["in_flight"] == n {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "in_flight never reached {n}: {s}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    {
        let mut a = Client::connect(srv.socket(), 1);
        let p = a.region.addr as *mut u8;
        a.queues[0].read(0, p, 4096, 0, ReqFlags::empty());
        a.queues[0].read(4096, p.wrapping_add(4096), 4096, 0, ReqFlags::empty());
        let mut c = [MaybeUninit::<Completion>::uninit()];
        let mut t = Duration::from_millis(50);
        // Nothing completes: the reads are parked.
        assert_eq!(a.queues[0].do_io(&mut c, 0, Some(&mut t), None).unwrap(), 0);
        wait_in_flight(2);
        // Writes on the same queue still complete while reads are parked.
        assert_eq!(a.write(0, 0, 8192, 512), 0);
    }
    // The client left with two reads parked; a new client is served normally.
    let t = std::time::Instant::now();
    while srv.clients() != 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut b = Client::connect(srv.socket(), 1);
    assert_eq!(b.write(0, 0, 0, 4096), 0);
    let p = b.region.addr as *mut u8;
    b.queues[0].read(0, p, 4096, 0, ReqFlags::empty());
    wait_in_flight(3);
    // Stopping with a connected client and IO in flight: no hang, completions of the
    // departed client are dropped, the socket is removed.
    srv.stop();
    assert!(!dir.path().join("p.sock").exists());
    drop(b);
    rt.shutdown();
}
