//! PoV over Ceph against Ceph's own client libraries, in one run.
//!
//! ```text
//! pov-ceph-bench [--conf CEPH_CONF] [--seconds S] [--rounds R]
//! ```
//! (`scripts/ceph-bench` starts a dev cluster pinned to CPU 1 and runs this pinned to
//! CPU 0.) Without `--conf` a dev cluster is started with `scripts/ceph-dev` and
//! stopped at the end.
//!
//! Three clients issue the same operations: 4 KiB reads and 4 KiB writes at random
//! 4 KiB-aligned offsets of a 16 MiB region, at queue depth 1 and 16 (QD = that many
//! threads, each with one operation outstanding):
//! * **PoV**: the host driver (libblkio over vhost-user with 16 data virtqueues, one
//!   session with 16 queues)
//!   → `pov-dpud` → TCP → `pov-proxy --backend ceph` → libcephfs → Ceph;
//! * **libcephfs**: the same file-system calls issued directly from this process
//!   (one mount, client cache off as in the proxy);
//! * **librados**: `rados_read`/`rados_write` on four 4 MiB objects of pool
//!   `pov-rados` (the floor under both);
//! * **PoV volume**: a plain volume (`pov_volume_create`, 16 virtqueues) driven by
//!   a libblkio client with one virtqueue per thread → `pov-dpud` → TCP →
//!   `pov-proxy` → librbd (RBD image in `pov-rbd`);
//! * **librbd**: `rbd_read`/`rbd_write` on another image of the same size, directly.
//!
//! Each round runs every (operation, QD) for each client in turn (PoV, libcephfs,
//! librados); the report gives medians over rounds of IOPS and of the per-round
//! median (p50) and p99 latency, and PoV's ratio to each direct client.

use pov_e2e::{pattern, Stack, SECRET};
use pov_proxy::backend::ceph::dev::DevCluster;
use pov_proxy::sys::cephfs::CephMount;
use pov_proxy::sys::rados::Rados;
use serde_json::json;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IO: usize = 4096;
const REGION: u64 = 16 << 20;
const OBJECT: u64 = 4 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Read,
    Write,
}

/// One measurement: operations done and their latencies.
struct Sample {
    iops: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `op(thread, offset, buf)` from `threads` threads for `secs`.
fn measure(threads: usize, secs: f64, op: &(dyn Fn(usize, u64, &mut [u8]) + Sync)) -> Sample {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1);
                    let mut buf = pattern(IO, t as u64);
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % (REGION / IO as u64)) * IO as u64;
                        let t0 = Instant::now();
                        op(t, off, &mut buf);
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("bench thread")).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default();
    Sample { iops: lat.len() as f64 / elapsed, p50: pct(0.5), p99: pct(0.99) }
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

/// A libblkio client of a plain volume: one queue and one 4 KiB buffer per thread.
struct VolumeClient {
    _b: blkio::Blkio,
    queues: Vec<Mutex<blkio::Blkioq>>,
    region: blkio::MemoryRegion,
}

impl VolumeClient {
    fn connect(sock: &Path, queues: usize) -> VolumeClient {
        let mut b = blkio::Blkio::new("virtio-blk-vhost-user").expect("libblkio driver");
        b.set_str("path", sock.to_str().expect("UTF-8 socket path")).expect("path");
        b.connect().expect("connect to the volume");
        b.set_i32("num-queues", queues as i32).expect("num-queues");
        let out = b.start().expect("start libblkio");
        let region = b.alloc_mem_region(queues * IO).expect("buffers");
        b.map_mem_region(&region).expect("map buffers");
        VolumeClient { queues: out.queues.into_iter().map(Mutex::new).collect(), _b: b, region }
    }

    /// One IO of `IO` bytes at `off` on thread `t`'s queue and buffer.
    fn io(&self, t: usize, write: bool, off: u64) {
        let mut q = self.queues[t].lock().expect("queue lock");
        let buf = (self.region.addr + t * IO) as *mut u8;
        if write {
            q.write(off, buf, IO, 0, blkio::ReqFlags::empty());
        } else {
            q.read(off, buf, IO, 0, blkio::ReqFlags::empty());
        }
        let mut c = [MaybeUninit::<blkio::Completion>::uninit()];
        let mut timeout = Duration::from_secs(30);
        let n = q.do_io(&mut c, 1, Some(&mut timeout), None).expect("do_io");
        assert_eq!(n, 1, "no completion within 30 s");
        // SAFETY: do_io filled the first `n` completions.
        let ret = unsafe { c[0].assume_init_ref() }.ret;
        assert_eq!(ret, 0, "volume IO failed");
    }
}

struct Args {
    conf: Option<PathBuf>,
    secs: f64,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut a = Args { conf: None, secs: 2.0, rounds: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| usage(&format!("{k} needs a value")));
        match k.as_str() {
            "--conf" => a.conf = Some(v.into()),
            "--seconds" => a.secs = v.parse().unwrap_or_else(|_| usage("--seconds takes a number")),
            "--rounds" => {
                a.rounds = v.parse().ok().filter(|&r| r >= 1).unwrap_or_else(|| usage("--rounds takes a positive integer"))
            }
            _ => usage(&format!("unknown option {k}")),
        }
    }
    a
}

fn usage(why: &str) -> ! {
    eprintln!("pov-ceph-bench: {why}\nusage: pov-ceph-bench [--conf CEPH_CONF] [--seconds S] [--rounds R]");
    std::process::exit(2)
}

fn main() {
    let args = parse_args();
    let cluster = match &args.conf {
        Some(_) => None,
        None => Some(DevCluster::shared().expect("Ceph is not installed: run ci/install-deps.sh")),
    };
    let conf = args.conf.clone().unwrap_or_else(|| cluster.as_ref().expect("cluster").conf().to_path_buf());
    let conf_s = conf.to_string_lossy().into_owned();

    // PoV: the whole path.
    // POV_BENCH_BACKEND=SPEC replaces the proxy's backend (e.g. `null` to see the PoV
    // path's own cost); the direct clients still use Ceph.
    let spec = std::env::var("POV_BENCH_BACKEND").unwrap_or(format!("ceph:conf={conf_s},root=/bench-pov,workers=32"));
    // 17 virtqueues and 16 libblkio data queues: each of the 16 threads has its own
    // virtqueue (the host driver serializes PoV queues that share one).
    let stack = Stack::start_on(Some(&spec), json!({"virtqueues": 17}));
    let dev_spec: pov_host::DeviceSpec = stack.device_spec().parse().expect("device spec");
    let dev_opts = pov_host::DeviceOptions { blkio_queues: 16, ..Default::default() };
    let dev = pov_host::Device::open_with(&dev_spec, &dev_opts).expect("open PoV device");
    let opts = pov_host::SessionOptions { queues: 16, ..Default::default() };
    let session = pov_host::Session::open_with(&dev, "acme", SECRET.as_bytes(), &opts).expect("open session");
    eprintln!("pov-ceph-bench: PoV session with {} queues", session.queue_ids().len());
    let mut oo = pov_host::OpenOptions::new();
    oo.write(true).create(true);
    let pov_file = oo.open(&session, "/bench.dat").expect("create bench file");
    let fill = pattern(1 << 20, 99);
    for i in 0..REGION / (1 << 20) {
        pov_file.write_at(&fill, i << 20).expect("fill bench file");
    }

    // libcephfs directly, with the proxy's settings.
    let mount = CephMount::mount("admin", &conf_s, &[("client_oc", "false")]).expect("mount CephFS");
    let _ = mount.mkdir("/bench-direct", 0o755);
    let cfile = mount.open("/bench-direct/bench.dat", libc::O_RDWR | libc::O_CREAT, 0o600).expect("create direct file");
    for i in 0..REGION / (1 << 20) {
        cfile.write_at(&fill, Some(i << 20)).expect("fill direct file");
    }

    // A plain volume through PoV, and librbd directly.
    let vol_sock = stack.dir.path().join("benchvol.sock");
    let params = json!({"name": "benchvol", "socket": vol_sock, "size": REGION * 4, "block_size": 4096,
        "virtqueues": 16, "proxies": [format!("tcp:{}", stack.proxy_addr)]});
    pov_e2e::rpc(&stack.rpc_sock, "pov_volume_create", params).expect("pov_volume_create");
    let vol = VolumeClient::connect(&vol_sock, 16);
    let rbd_io = Arc::new(
        Rados::connect("admin", &conf_s, &[("rbd_cache", "false")]).expect("RADOS").ioctx("pov-rbd").expect("pool pov-rbd"),
    );
    let _ = rbd_io.rbd_create("bench-direct", REGION * 4);
    let img = rbd_io.rbd_open("bench-direct").expect("open RBD image");
    for i in 0..REGION / (1 << 20) {
        img.write(i << 20, &fill).expect("fill image");
    }
    for t in 0..16 {
        for i in 0..REGION / IO as u64 / 16 {
            vol.io(t, true, (i * 16 + t as u64) * IO as u64);
        }
    }

    // librados directly.
    let rados = Rados::connect("admin", &conf_s, &[]).expect("connect RADOS");
    let io = Arc::new(rados.ioctx("pov-rados").expect("pool pov-rados"));
    for o in 0..REGION / OBJECT {
        for i in 0..OBJECT / (1 << 20) {
            io.write(&format!("bench.{o}"), &fill, i << 20).expect("fill objects");
        }
    }

    type Op<'a> = Box<dyn Fn(usize, u64, &mut [u8]) + Sync + 'a>;
    let client = |name: &str, k: Kind| -> Op<'_> {
        match (name, k) {
            ("PoV", Kind::Read) => Box::new(|_, off, buf: &mut [u8]| {
                assert_eq!(pov_file.read_at(buf, off).expect("PoV read"), IO);
            }),
            ("PoV", Kind::Write) => Box::new(|_, off, buf: &mut [u8]| {
                assert_eq!(pov_file.write_at(buf, off).expect("PoV write"), IO);
            }),
            ("libcephfs", Kind::Read) => Box::new(|_, off, buf: &mut [u8]| {
                assert_eq!(cfile.read_at(buf, off).expect("libcephfs read"), IO);
            }),
            ("libcephfs", Kind::Write) => Box::new(|_, off, buf: &mut [u8]| {
                assert_eq!(cfile.write_at(buf, Some(off)).expect("libcephfs write"), IO);
            }),
            ("PoV volume", k) => {
                let vol = &vol;
                Box::new(move |t, off, _buf: &mut [u8]| vol.io(t, k == Kind::Write, off))
            }
            ("librbd", Kind::Read) => Box::new(|_, off, buf: &mut [u8]| {
                assert_eq!(img.read(off, buf).expect("librbd read"), IO);
            }),
            ("librbd", Kind::Write) => Box::new(|_, off, buf: &mut [u8]| {
                assert_eq!(img.write(off, buf).expect("librbd write"), IO);
            }),
            (_, Kind::Read) => {
                let io = io.clone();
                Box::new(move |_, off, buf: &mut [u8]| {
                    let n = io.read(&format!("bench.{}", off / OBJECT), buf, off % OBJECT).expect("rados read");
                    assert_eq!(n, IO);
                })
            }
            (_, Kind::Write) => {
                let io = io.clone();
                Box::new(move |_, off, buf: &mut [u8]| {
                    io.write(&format!("bench.{}", off / OBJECT), buf, off % OBJECT).expect("rados write")
                })
            }
        }
    };

    let clients = ["PoV", "libcephfs", "librados", "PoV volume", "librbd"];
    let mut cases = vec![(Kind::Read, 1usize), (Kind::Write, 1), (Kind::Read, 16), (Kind::Write, 16)];
    if let Ok(only) = std::env::var("POV_BENCH_QD") {
        let qd: usize = only.parse().unwrap_or_else(|_| usage("POV_BENCH_QD takes a number"));
        cases.retain(|c| c.1 == qd);
    }
    // results[case][client] = samples over rounds
    let mut results: Vec<Vec<Vec<Sample>>> = cases.iter().map(|_| clients.iter().map(|_| Vec::new()).collect()).collect();
    let cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Cpus_allowed_list")).map(|l| l.split_whitespace().last().unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    eprintln!("pov-ceph-bench: {} rounds of {} s per point; client CPUs {cpus}", args.rounds, args.secs);
    for round in 0..args.rounds {
        for (ci, &(k, qd)) in cases.iter().enumerate() {
            for (li, name) in clients.iter().enumerate() {
                let s = measure(qd, args.secs, &*client(name, k));
                eprintln!(
                    "round {} {:?} QD{qd} {name}: {:.0} IOPS, p50 {:.0} µs, p99 {:.0} µs",
                    round + 1,
                    k,
                    s.iops,
                    s.p50.as_secs_f64() * 1e6,
                    s.p99.as_secs_f64() * 1e6
                );
                results[ci][li].push(s);
            }
        }
    }
    println!("| op | QD | client | IOPS (median) | p50 µs | p99 µs | PoV / this |");
    println!("|---|---|---|---|---|---|---|");
    for (ci, &(k, qd)) in cases.iter().enumerate() {
        let med = |li: usize| {
            let v = &results[ci][li];
            (
                median(v.iter().map(|s| s.iops).collect()),
                median(v.iter().map(|s| s.p50.as_secs_f64() * 1e6).collect()),
                median(v.iter().map(|s| s.p99.as_secs_f64() * 1e6).collect()),
            )
        };
        for (li, name) in clients.iter().enumerate() {
            let (iops, p50, p99) = med(li);
            // Files compare with the first client, volumes with PoV volume.
            let base = if li < 3 { 0 } else { 3 };
            let pov = med(base);
            let ratio =
                if li == base { "—".to_string() } else { format!("{:.2}× IOPS, {:.2}× p50", pov.0 / iops, pov.1 / p50) };
            println!("| {} 4 KiB | {qd} | {name} | {iops:.0} | {p50:.0} | {p99:.0} | {ratio} |", format!("{k:?}").to_lowercase());
        }
    }
    drop(vol);
    drop(img);
    drop(rbd_io);
    drop(cfile);
    drop(mount);
    drop(pov_file);
    let _ = session.close();
    drop(dev);
    drop(stack);
    for o in 0..REGION / OBJECT {
        let _ = io.remove(&format!("bench.{o}"));
    }
    drop(io);
    drop(cluster);
}
