//! Test harness: the driver against the real PoV server, in process.
//!
//! A [`Stack`] runs the real DPU-side device, [`bdev_pov::PovDevice`], and the real
//! proxy, [`pov_proxy::Server`] with its local backend in a temporary directory:
//!
//! ```text
//! driver (Device, Session, File)
//!   └ HarnessTransport (BlockTransport): each BlockOp becomes a bdev_pov::BlockRequest
//!       └ pump: a pov_runtime reactor whose poller owns the PovDevice
//!           └ proxy connection (see `connect_proxy`) ─ pov_proxy::Server ─ local backend
//! ```
//!
//! **The pump.** `PovDevice` is not `Sync`, and a response-slot READ stays parked in
//! it until the proxy answers, so the device must keep being polled while callers
//! wait. It is therefore owned by a [`DevicePoller`] on one `pov_runtime` reactor
//! thread: a caller (an IO thread, the session's heartbeat thread) sends its request
//! to the reactor as a message and waits on a channel of its own for that request's
//! completion, at most [`IO_TIMEOUT`]. The reactor polls the device and its proxy
//! connection, sleeps in `epoll_wait` when idle (woken by messages, the proxy socket
//! and the device's deadlines) and completes each caller as its completion arrives,
//! so concurrent callers all make progress and nothing busy-loops.
//!
//! **Observation and faults.** The transport records what the driver sent ([`Tap`]:
//! the IO requests, queue reuse before a response was read, the file handles the
//! driver opened and closed) and can inject the faults of a real bus or a misbehaving
//! neighbour ([`Faults`]): damaged configuration-space reads, lost heartbeats, and
//! another process writing admin requests at the same time (aimed at our mailbox).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev_pov::{BlockCompletion, BlockRequest, BlockStatus, DeviceStats, PovDevice, PovDeviceConfig, TenantTable};
use pov_proto::admin::{AdminOp, AdminRequest};
use pov_proto::io::{Op, RequestHeader, ResponseHeader};
use pov_proto::layout::{Geometry, Region, ADMIN_MAILBOXES, ADMIN_REQ_OFFSET, HEADER_SIZE};
use pov_runtime::{PollStatus, Poller, PollerId, ReactorConfig, ReactorContext, ReactorHandle, Runtime};

use crate::mem::IoBuf;
use crate::transport::{BlockOp, BlockTransport, Dir, Lane};
use crate::Device;

/// The tenant every stack knows.
pub(crate) const TENANT: &str = "acme";
/// Its secret.
pub(crate) const SECRET: &[u8] = b"s3cret";
/// Longest wait for the completion of one block IO.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait of [`Stack::wait_for`].
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whatever keeps the proxy end of a stack running; dropping it stops the proxy.
struct ProxyEnd {
    _server: pov_proxy::Server,
}

/// The proxy end of the stack, and the one place that decides how the device reaches
/// it: a real [`pov_proxy::Server`] listening on a named in-memory endpoint (`mem:…`,
/// `pov_runtime`'s in-process transport, through the connector registry: no sockets),
/// serving the local backend in `backend_dir`. Returns it and the endpoints for
/// [`PovDeviceConfig::proxies`].
fn connect_proxy(backend_dir: &Path) -> (ProxyEnd, Vec<String>) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!("host-harness-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let server = pov_proxy::Server::start(pov_proxy::ServerConfig {
        listen: format!("mem:{name}"),
        backend: pov_proxy::backend::BackendSpec::Local(backend_dir.to_path_buf()),
        ..Default::default()
    })
    .expect("start pov-proxy");
    let endpoints = vec![format!("mem:{}", server.local_addr())];
    (ProxyEnd { _server: server }, endpoints)
}

/// Damage done to a block of data in transit.
type Mangle = fn(&mut [u8]);

/// Faults the transport injects; all off by default.
#[derive(Default)]
pub(crate) struct Faults {
    /// Applied to the configuration space on its way to the driver (a damaged READ).
    mangle_config: Mutex<Option<Mangle>>,
    /// Admin WRITEs of a Heartbeat fail with `EIO`, as if lost on the bus.
    lose_heartbeats: AtomicBool,
    /// After each admin request WRITE, another "process" writes its own admin requests,
    /// one naming the same mailbox, before the driver reads its answer.
    race_admin: AtomicBool,
}

impl Faults {
    /// Damages every later configuration-space read with `f` (`None`: stop).
    pub(crate) fn mangle_config(&self, f: Option<Mangle>) {
        *self.mangle_config.lock().unwrap() = f;
    }

    /// Loses (fails) every heartbeat while `on`.
    pub(crate) fn lose_heartbeats(&self, on: bool) {
        self.lose_heartbeats.store(on, Ordering::Relaxed);
    }

    /// Races every admin request with a foreign one while `on`.
    pub(crate) fn race_admin(&self, on: bool) {
        self.race_admin.store(on, Ordering::Relaxed);
    }
}

/// What the transport saw the driver do.
#[derive(Default)]
struct Tap {
    /// `(op, payload_len, length)` of every IO request written to a request slot.
    requests: Vec<(Op, u32, u32)>,
    /// `(op, SDK hint location key)` of every IO request.
    locations: Vec<(Op, u64)>,
    /// Per queue: the request (op, file handle) written and whose response has not
    /// been read yet (read at slot offset 0).
    pending: HashMap<u32, (Op, u64)>,
    /// File handles opened and not closed, by (IO area, handle).
    handles: HashSet<(u32, u64)>,
    /// Protocol rules the driver broke.
    violations: Vec<String>,
}

impl Tap {
    fn request_written(&mut self, queue: u32, data: &[u8]) {
        let hdr = match RequestHeader::decode(&data[..HEADER_SIZE.min(data.len())]) {
            Ok(h) => h,
            Err(e) => return self.violations.push(format!("queue {queue}: undecodable request header: {e}")),
        };
        self.requests.push((hdr.op, hdr.payload_len, hdr.length));
        self.locations.push((hdr.op, hdr.hint.location_key));
        if self.pending.insert(queue, (hdr.op, hdr.file_handle)).is_some() {
            self.violations.push(format!("queue {queue} reused before its response was read"));
        }
    }

    fn response_read(&mut self, geometry: Geometry, queue: u32, data: &[u8]) {
        let Some((op, handle)) = self.pending.remove(&queue) else { return };
        let Ok(resp) = ResponseHeader::decode(&data[..HEADER_SIZE.min(data.len())]) else { return };
        if !resp.status.is_ok() {
            return;
        }
        let area = queue / geometry.queues_per_area;
        match op {
            Op::Open => {
                self.handles.insert((area, resp.result));
            }
            Op::Close => {
                self.handles.remove(&(area, handle));
            }
            _ => {}
        }
    }
}

/// One block IO for the pump, with the channel its completion goes to.
struct Job {
    req: BlockRequest,
    done: SyncSender<BlockCompletion>,
}

/// The reactor poller that owns the device.
struct DevicePoller {
    dev: PovDevice,
    next_tag: u64,
    waiting: HashMap<u64, SyncSender<BlockCompletion>>,
    out: Vec<BlockCompletion>,
}

impl DevicePoller {
    fn submit(&mut self, job: Job) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.waiting.insert(tag, job.done);
        self.dev.submit(BlockRequest { tag, ..job.req });
        self.deliver();
    }

    /// Hands every completion so far to its caller; returns whether there was any.
    fn deliver(&mut self) -> bool {
        self.dev.take_completions(&mut self.out);
        let any = !self.out.is_empty();
        for c in self.out.drain(..) {
            if let Some(done) = self.waiting.remove(&c.tag) {
                // The caller may have given up (timeout); nothing to do then.
                let _ = done.send(c);
            }
        }
        any
    }
}

impl Poller for DevicePoller {
    fn name(&self) -> String {
        format!("pov_device_{}", self.dev.config().name)
    }

    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
        let polled = self.dev.poll(ctx);
        if self.deliver() || polled == PollStatus::Busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.dev.deadline()
    }

    fn on_unregister(&mut self, ctx: &mut ReactorContext) {
        // Parked and in-flight IO completes with an error; callers see it.
        self.dev.shutdown(ctx);
        self.deliver();
        self.waiting.clear();
    }
}

/// The reactor that owns the device, and how to reach its poller.
struct Pump {
    reactor: ReactorHandle,
    poller: PollerId,
}

impl Pump {
    /// Sends `req` to the device and waits for its completion, at most [`IO_TIMEOUT`].
    ///
    /// Errors: `TimedOut`, or `BrokenPipe` once the pump has stopped.
    fn run(&self, req: BlockRequest) -> io::Result<BlockCompletion> {
        Pump::finish(self.start(req)?)
    }

    /// Sends `req` to the device (after every request sent before it); its completion
    /// comes from [`Pump::finish`].
    ///
    /// Errors: `BrokenPipe` once the pump has stopped.
    fn start(&self, req: BlockRequest) -> io::Result<mpsc::Receiver<BlockCompletion>> {
        let (done, rx) = mpsc::sync_channel(1);
        let id = self.poller;
        let job = Job { req, done };
        let sent = self.reactor.send(move |ctx| {
            if let Some(p) = ctx.poller_mut::<DevicePoller>(id) {
                p.submit(job);
            }
        });
        if !sent {
            return Err(pump_stopped());
        }
        Ok(rx)
    }

    /// Waits for the completion of a request [`Pump::start`]ed, at most [`IO_TIMEOUT`].
    ///
    /// Errors: `TimedOut`, or `BrokenPipe` once the pump has stopped.
    fn finish(rx: mpsc::Receiver<BlockCompletion>) -> io::Result<BlockCompletion> {
        match rx.recv_timeout(IO_TIMEOUT) {
            Ok(c) => Ok(c),
            Err(RecvTimeoutError::Timeout) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("no completion within {IO_TIMEOUT:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => Err(pump_stopped()),
        }
    }

    /// Runs `f` on the device, on the reactor thread.
    fn with_device<R: Send + 'static>(&self, f: impl FnOnce(&mut PovDevice) -> R + Send + 'static) -> Option<R> {
        let id = self.poller;
        self.reactor.call(move |ctx| ctx.poller_mut::<DevicePoller>(id).map(|p| f(&mut p.dev))).flatten()
    }
}

fn pump_stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the harness device has stopped")
}

/// State shared by the stack and its transports.
struct Shared {
    name: String,
    geometry: Geometry,
    pump: Pump,
    faults: Faults,
    tap: Mutex<Tap>,
}

/// The real device and proxy, running; see the module docs. Dropping it stops the
/// device (outstanding IO fails), then the proxy, then removes the backend directory.
pub(crate) struct Stack {
    shared: Arc<Shared>,
    // Drop order: the device's reactor before the proxy, the proxy before its files.
    runtime: Option<Runtime>,
    _proxy: ProxyEnd,
    backend: tempfile::TempDir,
}

impl Stack {
    /// A stack whose device has 4 IO areas (sessions) of 8 queues, adjusted by `tweak`,
    /// and knows tenant [`TENANT`] with [`SECRET`].
    pub(crate) fn start(tweak: impl FnOnce(&mut PovDeviceConfig)) -> Stack {
        let backend = tempfile::tempdir().expect("backend directory");
        let (proxy, endpoints) = connect_proxy(backend.path());
        let tenants = TenantTable::default();
        tenants.create(TENANT, SECRET).expect("create tenant");
        let mut cfg = PovDeviceConfig::new("dev0", endpoints);
        cfg.max_sessions = 4;
        cfg.num_queues = 8;
        tweak(&mut cfg);
        let name = cfg.name.clone();
        let runtime = Runtime::start(&[None], ReactorConfig::default()).expect("start the device reactor");
        let reactor = runtime.reactors()[0].clone();
        let (poller, geometry) = reactor
            .call(move |ctx| {
                let dev = PovDevice::new(cfg, tenants).map_err(|e| e.to_string())?;
                let geometry = dev.geometry();
                let p = DevicePoller { dev, next_tag: 1, waiting: HashMap::new(), out: Vec::new() };
                Ok::<_, String>((ctx.add_poller(Box::new(p)), geometry))
            })
            .expect("device reactor running")
            .expect("create the PoV device");
        let shared = Arc::new(Shared {
            name,
            geometry,
            pump: Pump { reactor, poller },
            faults: Faults::default(),
            tap: Mutex::new(Tap::default()),
        });
        Stack { shared, runtime: Some(runtime), _proxy: proxy, backend }
    }

    /// A new transport to the device (all transports of a stack share it).
    pub(crate) fn transport(&self) -> Box<dyn BlockTransport> {
        Box::new(HarnessTransport { shared: Arc::clone(&self.shared) })
    }

    /// The device, opened through a new transport.
    pub(crate) fn device(&self) -> Device {
        Device::from_transport(self.transport()).expect("open the harness device")
    }

    /// The fault switches.
    pub(crate) fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The device's counters.
    pub(crate) fn stats(&self) -> DeviceStats {
        self.shared.pump.with_device(|d| d.stats()).expect("device running")
    }

    /// Waits until the device's counters satisfy `cond`, at most 10 s; returns them.
    ///
    /// Panics (naming `what`) on timeout.
    pub(crate) fn wait_for(&self, what: &str, cond: impl Fn(&DeviceStats) -> bool) -> DeviceStats {
        let t0 = Instant::now();
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            assert!(t0.elapsed() < WAIT_TIMEOUT, "timed out waiting for {what}: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `(op, payload_len, length)` of every IO request the driver sent so far.
    pub(crate) fn requests(&self) -> Vec<(Op, u32, u32)> {
        self.shared.tap.lock().unwrap().requests.clone()
    }

    /// `(op, SDK hint location key)` of every IO request so far.
    pub(crate) fn locations(&self) -> Vec<(Op, u64)> {
        self.shared.tap.lock().unwrap().locations.clone()
    }

    /// How many IO requests of `op` the driver sent so far.
    pub(crate) fn count(&self, op: Op) -> usize {
        self.shared.tap.lock().unwrap().requests.iter().filter(|r| r.0 == op).count()
    }

    /// Protocol rules the driver broke (e.g. a queue reused before its response was
    /// read); empty if none.
    pub(crate) fn violations(&self) -> Vec<String> {
        self.shared.tap.lock().unwrap().violations.clone()
    }

    /// File handles the driver opened and has not closed.
    pub(crate) fn open_handles(&self) -> usize {
        self.shared.tap.lock().unwrap().handles.len()
    }

    /// Where the backend keeps tenant [`TENANT`]'s file `path` (relative, e.g. `d/a`).
    pub(crate) fn backend_path(&self, path: &str) -> PathBuf {
        self.backend.path().join(TENANT).join(path)
    }

    /// Contents of tenant [`TENANT`]'s file `path` in the backend, if it exists.
    pub(crate) fn file(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.backend_path(path)).ok()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown();
        }
    }
}

/// The [`BlockTransport`] of a [`Stack`]: block IO to the real `PovDevice`.
struct HarnessTransport {
    shared: Arc<Shared>,
}

impl HarnessTransport {
    /// One block IO through the pump: WRITE sends `data`, READ returns what the device
    /// wrote (`data` gives the length).
    ///
    /// Errors: `EIO` for a failed completion, a short READ, and those of [`Pump::run`].
    fn io(&self, op: bdev_pov::BlockOp, offset: u64, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let len = data.len();
        let c = self.shared.pump.run(BlockRequest { op, offset, buf: Box::new(data), tag: 0 })?;
        Self::completed(op, offset, len, c)
    }

    /// The data of completion `c` of a block IO of `len` bytes at `offset`.
    ///
    /// Errors: `EIO` for a failed completion or a short READ.
    fn completed(op: bdev_pov::BlockOp, offset: u64, len: usize, c: BlockCompletion) -> io::Result<Vec<u8>> {
        let eio = |why: String| io::Error::other(format!("{op:?} at {offset:#x}: {why}"));
        if c.status != BlockStatus::Ok {
            return Err(eio(format!("completed with {:?}", c.status)));
        }
        if op == bdev_pov::BlockOp::Read && c.written as usize != len {
            return Err(eio(format!("short read: {} of {len} bytes", c.written)));
        }
        let mut out = vec![0u8; c.buf.len()];
        c.buf.read_at(0, &mut out).map_err(|e| eio(e.to_string()))?;
        Ok(out)
    }

    fn one(&self, op: &mut BlockOp<'_>) -> io::Result<()> {
        op.check()?;
        let s = &self.shared;
        let range = op.buf_offset..op.buf_offset + op.len;
        let region = s.geometry.classify(op.dev_offset, op.len as u64);
        match op.dir {
            Dir::Write => {
                let data = op.buf[range].to_vec();
                match region {
                    Region::AdminRequest { offset: 0 } => {
                        let heartbeat = AdminRequest::decode(&data).is_ok_and(|r| r.op == AdminOp::Heartbeat);
                        if heartbeat && s.faults.lose_heartbeats.load(Ordering::Relaxed) {
                            return Err(io::Error::from_raw_os_error(libc::EIO));
                        }
                    }
                    Region::RequestSlot { queue, offset: 0 } => s.tap.lock().unwrap().request_written(queue, &data),
                    _ => {}
                }
                let ours = AdminRequest::peek_return(&data).map(|r| r.mailbox);
                self.io(bdev_pov::BlockOp::Write, op.dev_offset, data)?;
                if let (Some(m), true) = (ours, s.faults.race_admin.load(Ordering::Relaxed)) {
                    // Aimed at our mailbox and at another one: the device refuses the first
                    // (the mailbox holds our fresh answer) and answers the second
                    // elsewhere; neither may disturb our exchange. Their WRITEs' own
                    // failures are the other process's business.
                    for mailbox in [m, (m + 1) % ADMIN_MAILBOXES] {
                        let _ = self.io(bdev_pov::BlockOp::Write, ADMIN_REQ_OFFSET, foreign_admin_request(mailbox));
                    }
                }
            }
            Dir::Read => {
                let mut data = self.io(bdev_pov::BlockOp::Read, op.dev_offset, vec![0u8; op.len])?;
                match region {
                    Region::Config { offset: 0 } => {
                        if let Some(f) = *s.faults.mangle_config.lock().unwrap() {
                            f(&mut data);
                        }
                    }
                    Region::ResponseSlot { queue, offset: 0 } | Region::ResponseWindow { queue, offset: 0, .. } => {
                        s.tap.lock().unwrap().response_read(s.geometry, queue, &data)
                    }
                    _ => {}
                }
                op.buf[range].copy_from_slice(&data);
            }
        }
        Ok(())
    }
}

/// The admin request of another process on the same device: a heartbeat for a session
/// that does not exist, answered in `mailbox`.
fn foreign_admin_request(mailbox: u16) -> Vec<u8> {
    let mut req = AdminRequest::new(AdminOp::Heartbeat, std::process::id().wrapping_add(1));
    req.seq = 0x0bad_0bad;
    req.mailbox = mailbox;
    req.exchange_key = [0x66; 32];
    req.encode().expect("encode an admin request").to_vec()
}

impl BlockTransport for HarnessTransport {
    fn describe(&self) -> String {
        format!("harness:{}", self.shared.name)
    }

    fn capacity(&self) -> u64 {
        self.shared.geometry.capacity_bytes()
    }

    fn alloc_buf(&self, len: usize) -> io::Result<IoBuf> {
        IoBuf::aligned(len)
    }

    fn submit(&self, _lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        // The device takes the IOs of a batch in order; a parked response READ waits
        // here while the pump keeps serving other callers.
        ops.iter_mut().try_for_each(|op| self.one(op))
    }

    /// A request WRITE and its response READ reach the device in reverse order: the
    /// READ first (the order a kernel block layer may produce from one io_uring
    /// submission, and the harder one for the response windows), so every driver test
    /// exercises it. Other batches run as [`BlockTransport::submit`].
    fn submit_joint(&self, lane: Lane, ops: &mut [BlockOp<'_>]) -> io::Result<()> {
        let [w, r] = ops else { return self.submit(lane, ops) };
        if w.dir != Dir::Write || r.dir != Dir::Read {
            return self.submit(lane, ops);
        }
        r.check()?;
        let s = &self.shared;
        let read = s.pump.start(BlockRequest {
            op: bdev_pov::BlockOp::Read,
            offset: r.dev_offset,
            buf: Box::new(vec![0u8; r.len]),
            tag: 0,
        })?;
        let written = self.one(w);
        // The READ is waited for even when the WRITE failed (the device answers it).
        let c = Pump::finish(read);
        written?;
        let data = Self::completed(bdev_pov::BlockOp::Read, r.dev_offset, r.len, c?)?;
        if let Region::ResponseWindow { queue, offset: 0, .. } = s.geometry.classify(r.dev_offset, r.len as u64) {
            s.tap.lock().unwrap().response_read(s.geometry, queue, &data);
        }
        r.buf[r.buf_offset..r.buf_offset + r.len].copy_from_slice(&data);
        Ok(())
    }
}
