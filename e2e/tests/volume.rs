//! Plain volumes end to end: a libblkio client (a real vhost-user-blk driver) ->
//! pov-dpud (`pov_volume_create`) -> TLS -> pov-proxy -> the local backend's file
//! `DIR/@volumes/<name>`. Data survives SIGKILL of both daemons (pov-dpud comes back
//! from its saved config), FLUSH reaches the backend file, the null volume keeps
//! nothing, and bad RPC parameters get SPDK-coded errors.

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use pov_e2e::{pattern, rpc, Stack};
use serde_json::{json, Value};
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;
const VOL_SIZE: usize = 64 * MIB;
const REGION: usize = 8 * MIB;

/// One libblkio connection with one queue and one mapped buffer region.
struct Client {
    _b: Blkio,
    q: Blkioq,
    region: MemoryRegion,
    capacity: u64,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let mut b = Blkio::new("virtio-blk-vhost-user").expect("libblkio driver");
        b.set_str("path", sock.to_str().unwrap()).unwrap();
        b.connect().unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        b.set_i32("num-queues", 1).unwrap();
        let capacity = b.get_u64("capacity").unwrap();
        let mut out = b.start().unwrap();
        let region = b.alloc_mem_region(REGION).unwrap();
        b.map_mem_region(&region).unwrap();
        Client { q: out.queues.remove(0), _b: b, region, capacity }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes mapped by libblkio for this client and lives
        // as long as `self._b`; no request is in flight while the slice is used (every
        // helper below waits for its completion).
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Waits for one completion; returns its `ret` (0 = success, negative errno).
    fn wait(&mut self) -> i32 {
        let mut c = [MaybeUninit::<Completion>::uninit()];
        let mut t = Duration::from_secs(30);
        let n = self.q.do_io(&mut c, 1, Some(&mut t), None).unwrap();
        assert_eq!(n, 1, "no completion within 30 s");
        // SAFETY: do_io filled the first `n` elements.
        unsafe { c[0].assume_init_ref() }.ret
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> i32 {
        self.buf()[..data.len()].copy_from_slice(data);
        self.q.write(offset, self.region.addr as *const u8, data.len(), 0, ReqFlags::empty());
        self.wait()
    }

    fn read(&mut self, offset: u64, len: usize) -> (i32, Vec<u8>) {
        self.buf()[..len].fill(0xee);
        self.q.read(offset, self.region.addr as *mut u8, len, 0, ReqFlags::empty());
        let r = self.wait();
        (r, self.buf()[..len].to_vec())
    }

    fn flush(&mut self) -> i32 {
        self.q.flush(0, ReqFlags::empty());
        self.wait()
    }
}

/// (offset, length) of every write: first and last block, unaligned to 4 KiB, across
/// 1 MiB boundaries, and IOs over 1 MiB (split into 1 MiB frames by pov-dpud).
fn layout() -> Vec<(u64, usize)> {
    let mut v = vec![
        (0, 4096),
        (8192, 512),
        (MIB as u64 - 512, 1024),
        (3 * MIB as u64, MIB + 4096),
        (7 * MIB as u64 + 512, 3 * MIB + 1024),
        ((VOL_SIZE - 4096) as u64, 4096),
    ];
    for i in 0..24u64 {
        v.push((12 * MIB as u64 + i * 1_900_544, 512 * (1 + i as usize % 9)));
    }
    v
}

fn code(e: &Value) -> i64 {
    e["code"].as_i64().unwrap_or_else(|| panic!("not an error object: {e}"))
}

#[test]
fn volume_survives_restarts_and_flush_reaches_the_backend() {
    let mut stack = Stack::start(json!({}));
    let proxies = json!([stack.proxy_endpoint()]);
    let sock = stack.dir.path().join("vol1.sock");
    let null_sock = stack.dir.path().join("null1.sock");
    let created =
        rpc(&stack.rpc_sock, "pov_volume_create", json!({"name": "vol1", "socket": sock, "size": VOL_SIZE, "proxies": proxies}));
    assert_eq!(created, Ok(json!("vol1")), "SPDK's bdev convention: the new bdev's name");
    let created = rpc(
        &stack.rpc_sock,
        "pov_volume_create",
        json!({"name": "null1", "socket": null_sock, "size": 16 * MIB, "block_size": 4096, "null": true}),
    );
    assert_eq!(created, Ok(json!("null1")));
    let file = stack.backend_root().join("@volumes").join("vol1");
    assert_eq!(std::fs::metadata(&file).expect("backing file created").len(), VOL_SIZE as u64);

    // Listed with their kinds next to the PoV device.
    let all = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({})).unwrap();
    let kinds: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().into(), d["kind"].as_str().unwrap().into()))
        .collect();
    assert_eq!(kinds, [("pov0".into(), "pov".into()), ("null1".into(), "volume".into()), ("vol1".into(), "volume".into())]);

    // Bad parameters: SPDK codes and clear messages.
    let e = rpc(&stack.rpc_sock, "pov_volume_create", json!({"name": "vol2", "socket": stack.dir.path().join("v2.sock"), "size": 2 * VOL_SIZE, "volume": "vol1", "proxies": proxies})).unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    assert!(e["message"].as_str().unwrap().contains("never resized"), "{e}");
    let e = rpc(
        &stack.rpc_sock,
        "pov_volume_create",
        json!({"name": "vol1", "socket": stack.dir.path().join("v3.sock"), "size": VOL_SIZE, "proxies": proxies}),
    )
    .unwrap_err();
    assert_eq!(code(&e), -17, "{e}");
    let e = rpc(
        &stack.rpc_sock,
        "pov_volume_create",
        json!({"name": "vol4", "socket": stack.dir.path().join("v4.sock"), "size": 12345, "proxies": proxies}),
    )
    .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    let e = rpc(
        &stack.rpc_sock,
        "pov_volume_create",
        json!({"name": "vol5", "socket": stack.dir.path().join("v5.sock"), "size": VOL_SIZE}),
    )
    .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    let e = rpc(&stack.rpc_sock, "pov_volume_delete", json!({"name": "nope"})).unwrap_err();
    assert_eq!(code(&e), -19, "{e}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), VOL_SIZE as u64, "the refused size left the volume alone");

    // Write the pattern, IO errors for bad IO, FLUSH, and the bytes are in the file.
    let mut c = Client::connect(&sock);
    assert_eq!(c.capacity, VOL_SIZE as u64);
    for (i, &(off, len)) in layout().iter().enumerate() {
        assert_eq!(c.write(off, &pattern(len, i as u64)), 0, "write {len} bytes at {off}");
    }
    assert!(c.read(VOL_SIZE as u64, 4096).0 < 0, "read past the end fails");
    assert!(c.write(VOL_SIZE as u64 - 512, &[1u8; 1024]) < 0, "write across the end fails");
    assert_eq!(c.flush(), 0);
    let on_disk = std::fs::read(&file).unwrap();
    for (i, &(off, len)) in layout().iter().enumerate() {
        let o = off as usize;
        assert!(on_disk[o..o + len] == pattern(len, i as u64)[..], "backend file lacks the write at {off} after FLUSH");
    }
    for (i, &(off, len)) in layout().iter().enumerate() {
        let (r, got) = c.read(off, len);
        assert_eq!(r, 0);
        assert!(got == pattern(len, i as u64), "read back at {off}");
    }
    assert!(c.read(4096, 4096).1.iter().all(|&x| x == 0), "never-written blocks read as zeros");

    // Null volume: writes dropped, zeros read.
    let mut n = Client::connect(&null_sock);
    assert_eq!(n.capacity, 16 * MIB as u64);
    assert_eq!(n.write(0, &pattern(MIB, 99)), 0);
    assert_eq!(n.flush(), 0);
    let (r, got) = n.read(0, MIB);
    assert_eq!(r, 0);
    assert!(got.iter().all(|&x| x == 0), "the null volume keeps nothing");
    drop(n);

    // Save the config, SIGKILL both daemons, bring them back (pov-dpud from the file).
    let saved = rpc(&stack.rpc_sock, "save_config", json!({})).unwrap();
    let cfg = stack.dir.path().join("saved.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    drop(c);
    stack.restart_proxy();
    stack.restart_dpud(Some(&cfg));
    let mut c = Client::connect(&sock);
    assert_eq!(c.capacity, VOL_SIZE as u64);
    for (i, &(off, len)) in layout().iter().enumerate() {
        let (r, got) = c.read(off, len);
        assert_eq!(r, 0, "read at {off} after restart");
        assert!(got == pattern(len, i as u64), "data at {off} lost across restarts");
    }
    // Still writable; the null volume came back too.
    assert_eq!(c.write(0, &pattern(4096, 500)), 0);
    assert_eq!(c.flush(), 0);
    assert_eq!(c.read(0, 4096).1, pattern(4096, 500));
    let mut n = Client::connect(&null_sock);
    assert!(n.read(0, 4096).1.iter().all(|&x| x == 0));
    let info = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "vol1"})).unwrap();
    assert_eq!(info[0]["config"]["volume"], "vol1");
    assert!(info[0]["stats"]["flushes"].as_u64().unwrap() >= 1, "{info}");
}

/// The proxy goes away under a connected client: IO fails with an error in bounded
/// time (never hangs), and works again once the proxy is back.
#[test]
fn volume_io_fails_while_proxy_is_down_and_recovers() {
    let mut stack = Stack::start(json!({}));
    let sock = stack.dir.path().join("volr.sock");
    let params =
        json!({"name": "volr", "socket": sock, "size": 8 * MIB, "proxies": [stack.proxy_endpoint()], "request_timeout_ms": 2000});
    assert_eq!(rpc(&stack.rpc_sock, "pov_volume_create", params.clone()), Ok(params["name"].clone()));
    let mut c = Client::connect(&sock);
    assert_eq!(c.write(0, &pattern(4096, 1)), 0);
    stack.proxy.kill();
    let t = std::time::Instant::now();
    assert!(c.write(4096, &pattern(4096, 2)) < 0, "write with the proxy down must fail");
    assert!(c.read(0, 4096).0 < 0);
    assert!(t.elapsed() < Duration::from_secs(10), "errors come in bounded time");
    stack.restart_proxy();
    let t = std::time::Instant::now();
    loop {
        let (r, got) = c.read(0, 4096);
        if r == 0 {
            assert_eq!(got, pattern(4096, 1));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no recovery after the proxy came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.write(4096, &pattern(4096, 2)), 0);
    assert_eq!(c.flush(), 0);
}

/// pov-dpud restarts from its saved configuration while the volume's proxy is down:
/// it comes up anyway (the volume opens in the background, shown as `opening`), a
/// client's IO waits, and once the proxy is back the volume is `ready` with its data.
#[test]
fn replay_with_the_proxy_down_opens_the_volume_in_the_background() {
    let mut stack = Stack::start(json!({}));
    let sock = stack.dir.path().join("volb.sock");
    let params = json!({"name": "volb", "socket": sock, "size": 8 * MIB, "proxies": [stack.proxy_endpoint()]});
    assert_eq!(rpc(&stack.rpc_sock, "pov_volume_create", params.clone()), Ok(params["name"].clone()));
    let mut c = Client::connect(&sock);
    assert_eq!(c.write(0, &pattern(4096, 7)), 0);
    assert_eq!(c.flush(), 0);
    drop(c);
    let saved = rpc(&stack.rpc_sock, "save_config", json!({})).unwrap();
    let cfg = stack.dir.path().join("saved.json");
    std::fs::write(&cfg, saved.to_string()).unwrap();
    stack.proxy.kill();
    let t = std::time::Instant::now();
    stack.restart_dpud(Some(&cfg));
    println!("pov-dpud replayed its config with the proxy down in {:?}", t.elapsed());
    let info = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "volb"})).unwrap();
    assert_eq!(info[0]["stats"]["state"], "opening", "{info}");
    assert!(info[0]["stats"]["open_error"].is_string(), "says why: {info}");
    // A client connects and reads while the proxy is still down; the read waits.
    let reader = std::thread::spawn(move || {
        let mut c = Client::connect(&sock);
        let t = std::time::Instant::now();
        let (r, got) = c.read(0, 4096);
        (r, got, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (proxy, _) = pov_e2e::spawn_proxy(&stack.backend_spec, &stack.proxy_endpoint(), &stack.pki.proxy_args(&stack.enrolled));
    stack.proxy = proxy;
    let (r, got, waited) = reader.join().unwrap();
    println!("a read issued while the proxy was down completed after {waited:?}");
    assert_eq!(r, 0, "the read completes once the volume opened");
    assert!(got == pattern(4096, 7), "the data is there");
    let info = rpc(&stack.rpc_sock, "pov_device_get_devices", json!({"name": "volb"})).unwrap();
    assert_eq!(info[0]["stats"]["state"], "ready", "{info}");
}

/// A plain volume on the Ceph backend: an RBD image in pool `pov-rbd` holds the bytes
/// (read back directly with librbd after FLUSH), and they survive a proxy restart.
/// Uses the dev cluster of `scripts/ceph-dev` (skipped loudly without Ceph outside CI).
#[cfg(feature = "ceph")]
#[test]
fn volume_on_ceph_is_an_rbd_image() {
    use pov_proxy::backend::ceph::dev::DevCluster;
    use pov_proxy::sys::rados::Rados;
    let Some(cluster) = DevCluster::shared() else { return };
    let conf = cluster.conf().display().to_string();
    let mut stack = Stack::start_on(Some(&format!("ceph:conf={conf},root=/e2e-vol,session_uuid=e2e-vol-proxy")), json!({}));
    let sock = stack.dir.path().join("rbd1.sock");
    let params = json!({"name": "rbd1", "socket": sock, "size": VOL_SIZE, "proxies": [stack.proxy_endpoint()]});
    assert_eq!(rpc(&stack.rpc_sock, "pov_volume_create", params.clone()), Ok(params["name"].clone()));
    let mut c = Client::connect(&sock);
    assert_eq!(c.capacity, VOL_SIZE as u64);
    for (i, &(off, len)) in layout().iter().enumerate() {
        assert_eq!(c.write(off, &pattern(len, i as u64)), 0, "write {len} bytes at {off}");
    }
    assert!(c.read(VOL_SIZE as u64, 4096).0 < 0, "read past the end fails");
    assert_eq!(c.flush(), 0);
    // The image, read with librbd directly.
    let io = std::sync::Arc::new(Rados::connect("admin", &conf, &[]).expect("RADOS").ioctx("pov-rbd").expect("pool"));
    let img = io.rbd_open("rbd1").expect("RBD image rbd1 exists");
    assert_eq!(img.size(), Ok(VOL_SIZE as u64));
    for (i, &(off, len)) in layout().iter().enumerate() {
        let mut buf = vec![0u8; len];
        assert_eq!(img.read(off, &mut buf), Ok(len));
        assert!(buf == pattern(len, i as u64), "RBD image lacks the write at {off} after FLUSH");
    }
    drop(img);
    drop(c);
    stack.restart_proxy();
    let mut c = Client::connect(&sock);
    // pov-dpud fails IO at once while the proxy is unreachable and retries the
    // connection every 500 ms: wait for the first read to succeed, then check all.
    let t = std::time::Instant::now();
    while c.read(0, 4096).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "no recovery after the proxy restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, &(off, len)) in layout().iter().enumerate() {
        let (r, got) = c.read(off, len);
        assert_eq!(r, 0, "read at {off} after the proxy restart");
        assert!(got == pattern(len, i as u64), "data at {off} after the proxy restart");
    }
    drop(c);
    drop(stack);
}
