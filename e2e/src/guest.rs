//! The checks `scripts/guest-test` runs inside a QEMU guest, against a PoV device that
//! the guest kernel's own virtio-blk driver exposes as `/dev/vdX` (the host-driver's
//! kernel transport: `O_DIRECT` reads and writes, `flock(2)` on the admin space).
//!
//! Every check prints `CHECK <name> ok (...)` or `CHECK <name> FAILED: <why>`; [`run`]
//! returns the number of failed checks, which the binary turns into its exit status.
//! The trees written by the two-process check are made by [`make_tree`] with fixed
//! seeds, so the host can rebuild them and compare them with what the proxy's backend
//! holds after the guest is gone.

use crate::pattern;
use pov_host::discover::scan_sysfs;
use pov_host::{Device, OpenOptions, Session};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Sizes of the files of a tree and of the multi-thread check, bytes: empty, tiny, around
/// a page, exactly one PoV IO (1 MiB), one IO plus a byte, and a multi-IO file.
pub const SIZES: [usize; 8] = [0, 1, 4095, 4096, 65_536, MIB, MIB + 1, 2 * MIB - 7];

/// Seeds of the two trees the two-process check copies in (`/guest/tree<i>` in PoV).
pub const TREE_SEEDS: [u64; 2] = [1001, 2002];

/// Writes a deterministic tree under `root` (created): one file per [`SIZES`] entry in
/// nested directories plus 24 small text files. Returns the number of files.
///
/// Errors: any file system error.
pub fn make_tree(root: &Path, seed: u64) -> std::io::Result<usize> {
    let mut files = 0;
    for (i, &n) in SIZES.iter().enumerate() {
        let dir = root.join(format!("d{}/sub{}", i % 2, i % 3));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("file{i}.bin")), pattern(n, seed + i as u64))?;
        files += 1;
    }
    fs::create_dir_all(root.join("empty-dir"))?;
    for i in 0..24 {
        fs::write(root.join(format!("small{i}.txt")), format!("small file {i} of tree {seed}\n"))?;
        files += 1;
    }
    Ok(files)
}

/// Compares two local trees byte by byte (files and directories of `a` must exist in
/// `b` with the same content). Returns the number of files compared.
///
/// Errors: a description of the first difference.
pub fn compare_trees(a: &Path, b: &Path) -> Result<usize, String> {
    let mut n = 0;
    let rd = fs::read_dir(a).map_err(|e| format!("read_dir {}: {e}", a.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("read_dir {}: {e}", a.display()))?;
        let other = b.join(e.file_name());
        let ft = e.file_type().map_err(|e| e.to_string())?;
        if ft.is_dir() {
            if !other.is_dir() {
                return Err(format!("directory {} missing", other.display()));
            }
            n += compare_trees(&e.path(), &other)?;
        } else {
            let x = fs::read(e.path()).map_err(|e| e.to_string())?;
            let y = fs::read(&other).map_err(|e2| format!("{}: {e2}", other.display()))?;
            if x != y {
                let at = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
                return Err(format!(
                    "{} differs ({} vs {} bytes, first difference at byte {at})",
                    other.display(),
                    x.len(),
                    y.len()
                ));
            }
            n += 1;
        }
    }
    Ok(n)
}

/// What the guest checks need to know.
#[derive(Clone)]
pub struct GuestConfig {
    /// Tenant to open sessions for.
    pub tenant: String,
    /// The tenant's secret (wiped from memory when dropped).
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    /// The file the secret was read from, handed to the `pov-host` processes the
    /// checks start (`None`: they get it in `POV_SECRET`).
    pub secret_file: Option<PathBuf>,
    /// The serial the PoV device must show (`pov-<device name>`).
    pub expect_serial: String,
    /// The `pov-host` binary (for discovery and the two-process check).
    pub pov_host: PathBuf,
    /// A scratch directory on a local file system.
    pub scratch: PathBuf,
}

struct Checks {
    failed: usize,
}

impl Checks {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<String, String>) {
        let t0 = Instant::now();
        match f() {
            Ok(note) => println!("CHECK {name} ok ({note}; {:.2} s)", t0.elapsed().as_secs_f64()),
            Err(why) => {
                self.failed += 1;
                println!("CHECK {name} FAILED: {why}");
            }
        }
    }
}

/// `what: error: its causes` (the whole source chain, each cause once).
fn err<E: std::error::Error + 'static>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {}", pov_host::error::Chain(&e))
}

/// Reads a whitespace-separated `/sys/block/<dev>/stat` (kernel
/// Documentation/block/stat.rst): reads, read merges, sectors read, read ticks, writes,
/// write merges, ...
fn block_stat(dev: &str) -> Result<Vec<u64>, String> {
    let s = fs::read_to_string(format!("/sys/block/{dev}/stat")).map_err(err("block stat"))?;
    Ok(s.split_whitespace().filter_map(|v| v.parse().ok()).collect())
}

/// Block IOs (reads + writes) the kernel completed on `dev` so far.
fn block_ios(dev: &str) -> Result<u64, String> {
    let st = block_stat(dev)?;
    Ok(st.first().copied().unwrap_or(0) + st.get(4).copied().unwrap_or(0))
}

/// The `q`-quantile of sorted `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Duration {
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Reads per mode and round in [`round_trips`].
const RT_READS: usize = 100;
/// Rounds of [`round_trips`] (the modes alternate, so drift hits both alike).
const RT_ROUNDS: usize = 5;

/// 4 KiB reads on `/dev/vdX` with the request WRITE and the response READ submitted
/// together (io_uring, response windows) and one after the other, A/B in one run:
/// latency p50/p99, block IOs per request (every one must stay 2: one WRITE, one READ),
/// and session-open times. Figures only; the check fails on wrong data or extra IOs.
fn round_trips(cfg: &GuestConfig, path: &Path, name: &str) -> Result<String, String> {
    let spec: pov_host::DeviceSpec = path.to_string_lossy().parse().map_err(err("spec"))?;
    let data = pattern(4096, 4242);
    let mut modes = Vec::new();
    for joint in [false, true] {
        let opts = pov_host::DeviceOptions { joint_round_trip: joint, ..pov_host::DeviceOptions::default() };
        let dev = Device::open_with(&spec, &opts).map_err(err("open device"))?;
        if dev.joint_round_trip() != joint {
            return Err(format!("joint round trip {joint} asked, the device says {}", dev.joint_round_trip()));
        }
        let mut opens = Vec::new();
        for queues in [1, 4] {
            let mut t = Vec::new();
            for _ in 0..5 {
                let t0 = Instant::now();
                let s = Session::open(&dev, &cfg.tenant, &cfg.secret, queues).map_err(err("open session"))?;
                t.push(t0.elapsed());
                s.close().map_err(err("close"))?;
            }
            t.sort();
            opens.push(t[2]);
        }
        let s = Session::open(&dev, &cfg.tenant, &cfg.secret, 1).map_err(err("open session"))?;
        let p = format!("/guest/rt-{joint}");
        s.write(&p, &data).map_err(err("write"))?;
        let f = OpenOptions::new().open(&s, &p).map_err(err("open"))?;
        let mut buf = vec![0u8; 4096];
        for _ in 0..20 {
            f.read_exact_at(&mut buf, 0).map_err(err("warm-up read"))?;
        }
        modes.push((joint, dev, s, f, opens, Vec::new(), 0u64, 0u64));
    }
    let mut buf = vec![0u8; 4096];
    for _ in 0..RT_ROUNDS {
        for (_, dev, _, f, _, lat, ios, trips) in modes.iter_mut() {
            let before = block_ios(name)?;
            let trips_before = dev.round_trips();
            for _ in 0..RT_READS {
                let t0 = Instant::now();
                f.read_exact_at(&mut buf, 0).map_err(err("read"))?;
                lat.push(t0.elapsed());
                if buf != data {
                    return Err("4 KiB read back differs".into());
                }
            }
            *ios += block_ios(name)? - before;
            *trips += dev.round_trips() - trips_before;
        }
    }
    let mut summary = Vec::new();
    for (joint, _dev, s, f, opens, mut lat, ios, trips) in modes {
        lat.sort();
        let n = lat.len();
        let per_request = ios as f64 / n as f64;
        let trips = trips as f64 / n as f64;
        let mode = if joint { "joint (io_uring, response window)" } else { "serial (pwrite, then pread)" };
        println!(
            "ROUND-TRIPS {mode}: 4 KiB reads n={n} p50 {:.0} us p99 {:.0} us; {per_request:.3} block IOs and {trips:.3} \
             device round trips per request; \
             session open (median of 5) 1 queue {:.2} ms, 4 queues {:.2} ms",
            quantile(&lat, 0.5).as_secs_f64() * 1e6,
            quantile(&lat, 0.99).as_secs_f64() * 1e6,
            opens[0].as_secs_f64() * 1e3,
            opens[1].as_secs_f64() * 1e3,
        );
        // One WRITE and one READ per request; heartbeats add a few admin IOs a second.
        if !(2.0..2.1).contains(&per_request) {
            return Err(format!("{mode}: {per_request:.3} block IOs per 4 KiB read, expected 2 (one WRITE, one READ)"));
        }
        // The library's own count of waits on the device (heartbeats of the session
        // add two per second): one per request when joint, two when not.
        let expect = if joint { 1.0 } else { 2.0 };
        if !(expect..expect + 0.05).contains(&trips) {
            return Err(format!("{mode}: {trips:.3} device round trips per 4 KiB read, expected {expect}"));
        }
        f.close().map_err(err("close"))?;
        s.close().map_err(err("close"))?;
        summary.push(format!(
            "{}: p50 {:.0} us",
            if joint { "joint" } else { "serial" },
            quantile(&lat, 0.5).as_secs_f64() * 1e6
        ));
    }
    Ok(summary.join(", "))
}

fn sysfs_queue(dev: &str, attr: &str) -> String {
    fs::read_to_string(format!("/sys/block/{dev}/queue/{attr}")).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Runs every PoV check against the one PoV device found in sysfs. Returns the number
/// of failed checks (0 = all passed).
pub fn run(cfg: &GuestConfig) -> usize {
    let mut c = Checks { failed: 0 };
    let mut dev_path: Option<PathBuf> = None;

    c.run("discovery", || {
        let found = scan_sysfs(Path::new("/sys/block"));
        let [d] = found.as_slice() else {
            return Err(format!("expected exactly one PoV device in /sys/block, found {found:?}"));
        };
        if d.serial != cfg.expect_serial {
            return Err(format!("{} has serial {:?}, expected {:?}", d.path.display(), d.serial, cfg.expect_serial));
        }
        // The CLI, told nothing, must find the same device and validate its config space.
        let out = Command::new(&cfg.pov_host).arg("list").env_remove("POV_DEVICE").output().map_err(err("run pov-host list"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            return Err(format!("pov-host list failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let line = text.lines().find(|l| l.starts_with(&*d.path.to_string_lossy()));
        if !line.is_some_and(|l| l.contains(&cfg.expect_serial) && l.contains("ok (name")) {
            return Err(format!("pov-host list does not show {} as a valid PoV device", d.path.display()));
        }
        // Other virtio-blk disks (volumes, plain disks) are not PoV devices.
        for e in fs::read_dir("/sys/block").map_err(err("/sys/block"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let serial = fs::read(e.path().join("serial")).unwrap_or_default();
            if name.starts_with("vd") && !serial.starts_with(b"pov-") && text.contains(&format!("/dev/{name} ")) {
                return Err(format!(
                    "pov-host list reports /dev/{name} (serial {:?}) as a PoV device",
                    String::from_utf8_lossy(&serial)
                ));
            }
        }
        dev_path = Some(d.path.clone());
        Ok(format!("{} serial {}", d.path.display(), d.serial))
    });
    let Some(path) = dev_path else {
        println!("no PoV device: skipping the remaining checks");
        return c.failed + 1;
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "block queue limits of {name}: max_sectors_kb={} max_hw_sectors_kb={} max_segments={} max_segment_size={} logical_block_size={}",
        sysfs_queue(&name, "max_sectors_kb"),
        sysfs_queue(&name, "max_hw_sectors_kb"),
        sysfs_queue(&name, "max_segments"),
        sysfs_queue(&name, "max_segment_size"),
        sysfs_queue(&name, "logical_block_size"),
    );
    let stat_before = block_stat(&name).unwrap_or_default();

    let mut session: Option<(Device, Session)> = None;
    c.run("session-open", || {
        let spec = path.to_string_lossy().into_owned();
        let dev = Device::open(&spec).map_err(err("open device"))?;
        let s = Session::open(&dev, &cfg.tenant, &cfg.secret, 4).map_err(err("open session"))?;
        let note = format!("session {:#x}, area {}, queues {:?}", s.info().session_id, s.info().area, s.queue_ids());
        session = Some((dev, s));
        Ok(note)
    });
    let Some((_dev, s)) = session else {
        println!("no session: skipping the remaining checks");
        return c.failed + 1;
    };

    c.run("threads-share-session", || {
        let errors: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4u64)
                .map(|t| {
                    let s = &s;
                    sc.spawn(move || -> Result<usize, String> {
                        let mut bytes = 0;
                        for (i, &n) in SIZES.iter().enumerate() {
                            let data = pattern(n, 50 + t * 10 + i as u64);
                            let p = format!("/guest/threads/t{t}/f{i}");
                            s.write(&p, &data).map_err(err(&p))?;
                            if s.read(&p).map_err(err(&p))? != data {
                                return Err(format!("{p}: read back differs"));
                            }
                            bytes += n;
                        }
                        Ok(bytes)
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| match h.join() {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("thread panicked".into()),
                })
                .collect()
        });
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(format!("4 threads x {} files, written and read back", SIZES.len()))
    });

    c.run("1mib-ios", || {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&s, "/guest/big").map_err(err("create"))?;
        let blocks: Vec<Vec<u8>> = (0..4).map(|i| pattern(MIB, 900 + i)).collect();
        for (i, b) in blocks.iter().enumerate() {
            if f.write_at(b, (i * MIB) as u64).map_err(err("write_at"))? != MIB {
                return Err("short write".into());
            }
        }
        let mut r = vec![0u8; MIB];
        for (i, b) in blocks.iter().enumerate() {
            f.read_exact_at(&mut r, (i * MIB) as u64).map_err(err("read_exact_at"))?;
            if &r != b {
                return Err(format!("1 MiB block {i} differs"));
            }
        }
        // A 1 MiB read straddling two written blocks.
        f.read_exact_at(&mut r, (MIB / 2) as u64).map_err(err("read_exact_at"))?;
        if r[..MIB / 2] != blocks[0][MIB / 2..] || r[MIB / 2..] != blocks[1][..MIB / 2] {
            return Err("straddling 1 MiB read differs".into());
        }
        f.close().map_err(err("close"))?;
        Ok("4 x 1 MiB writes, 5 x 1 MiB reads verified".into())
    });

    c.run("heartbeats", || {
        let every = s.info().heartbeat_interval;
        let h0 = s.heartbeats();
        std::thread::sleep(every * 3 + Duration::from_millis(500));
        let h1 = s.heartbeats();
        s.check().map_err(err("session after idle"))?;
        if h1 < h0 + 2 {
            return Err(format!("{} heartbeats in {:?} (interval {every:?})", h1 - h0, every * 3));
        }
        // The session still serves IO after the idle period.
        s.write("/guest/after-idle", b"still here").map_err(err("write after idle"))?;
        Ok(format!("{} heartbeats while idle, interval {every:?}", h1 - h0))
    });

    c.run("two-processes-tree", || {
        let mut files = 0;
        for (i, &seed) in TREE_SEEDS.iter().enumerate() {
            files += make_tree(&cfg.scratch.join(format!("tree{i}")), seed).map_err(err("make tree"))?;
        }
        // `pov-host cp -r FROM TO` in its own process, with its own session.
        let cp = |from: &str, to: &str| {
            let mut c = Command::new(&cfg.pov_host);
            c.args(["cp", "-r", from, to]).env("POV_DEVICE", &path).env("POV_TENANT", &cfg.tenant);
            match &cfg.secret_file {
                Some(f) => c.env("POV_SECRET_FILE", f).env_remove("POV_SECRET"),
                None => c.env("POV_SECRET", std::ffi::OsStr::from_bytes(&cfg.secret)),
            };
            c.spawn()
        };
        for inbound in [true, false] {
            let mut children = Vec::new();
            for i in 0..TREE_SEEDS.len() {
                let local = cfg.scratch.join(format!("{}{i}", if inbound { "tree" } else { "out" }));
                let (local, remote) = (local.to_string_lossy().into_owned(), format!("pov:/guest/tree{i}"));
                let child = if inbound { cp(&local, &remote) } else { cp(&remote, &local) };
                children.push(child.map_err(err("spawn pov-host"))?);
            }
            // Both processes run at once; wait for all of them before judging.
            let statuses: Vec<_> = children.into_iter().map(|mut c| c.wait()).collect();
            for st in statuses {
                match st {
                    Ok(st) if st.success() => {}
                    other => return Err(format!("pov-host cp -r ({}) failed: {other:?}", if inbound { "in" } else { "out" })),
                }
            }
        }
        let mut compared = 0;
        for i in 0..TREE_SEEDS.len() {
            compared += compare_trees(&cfg.scratch.join(format!("tree{i}")), &cfg.scratch.join(format!("out{i}")))?;
        }
        if compared != files {
            return Err(format!("compared {compared} files, made {files}"));
        }
        Ok(format!("2 concurrent pov-host processes, {files} files in and out, every byte verified"))
    });

    c.run("round-trips", || round_trips(cfg, &path, &name));

    c.run("session-close", || {
        s.close().map_err(err("close"))?;
        Ok("closed".into())
    });

    c.run("block-layer-no-merges", || {
        let after = block_stat(&name)?;
        let (rm, wm) = (after.get(1).copied().unwrap_or(0), after.get(5).copied().unwrap_or(0));
        let (rm0, wm0) = (stat_before.get(1).copied().unwrap_or(0), stat_before.get(5).copied().unwrap_or(0));
        let reads = after.first().copied().unwrap_or(0) - stat_before.first().copied().unwrap_or(0);
        let writes = after.get(4).copied().unwrap_or(0) - stat_before.get(4).copied().unwrap_or(0);
        println!("{name}: {reads} reads, {writes} writes, read merges {}, write merges {}", rm - rm0, wm - wm0);
        if rm != rm0 || wm != wm0 {
            return Err(format!("the block layer merged requests: {} read merges, {} write merges", rm - rm0, wm - wm0));
        }
        Ok(format!("{reads} reads, {writes} writes, 0 merges"))
    });
    c.failed
}
