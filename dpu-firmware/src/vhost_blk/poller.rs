//! The reactor poller that owns a device and moves descriptors in and out of every
//! vring of every connection (the SPDK vhost shape: virtqueues are polled by the
//! reactor, not served by the vhost threads).
//!
//! One [`DevicePoller::poll`]:
//! 1. pops up to [`BATCH`] chains from each ready vring, parses them and submits
//!    the requests to the device (malformed chains complete at once with an error);
//! 2. polls the device;
//! 3. takes its completions, writes each status byte and used element, and signals
//!    every vring that got used elements and needs a notification (EVENT_IDX aware).
//!
//! With gathering on (the default, see [`bdev_pov::forward::gather`]) step 3 signals each vring
//! at most once per poll, after all its used elements; the device sends the requests
//! of step 1 to its proxy together in step 2. With gathering off, every used element
//! is signalled at once (still only if the driver asks for it).
//!
//! While it finds work it keeps guest notifications disabled; before the reactor
//! sleeps, [`prepare_sleep`](pov_runtime::Poller::prepare_sleep) re-enables them and
//! vetoes the sleep if descriptors arrived meanwhile.

use super::backend::{ConnState, DeviceShared};
use super::request::{parse_chain, GuestBuffer};
use bdev_pov::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus, GatheringControl};
use pov_runtime::{FdRegistry, PollStatus, Poller, ReactorContext};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};

/// Most chains popped from one vring in one poll, so that a busy queue cannot starve
/// the others nor hold the vring lock that control messages need.
pub const BATCH: usize = 64;

/// Counters of the adapter itself (the device keeps its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdapterStats {
    /// Requests submitted to the device.
    pub requests: u64,
    /// Chains rejected without reaching the device.
    pub bad_chains: u64,
    /// Completions dropped because their vring was stopped or reset, or their client
    /// disconnected, since the request was submitted.
    pub stale_completions: u64,
    /// Guest notifications sent.
    pub notifications: u64,
    /// Used elements put in a used ring (requests completed back to the driver).
    pub completions: u64,
}

/// Block IO counters of one device, in the shape of SPDK's `bdev_get_iostat`
/// (`struct spdk_bdev_io_stat`): operations and bytes by type, and latency from the
/// descriptor chain's arrival to its completion in ticks of [`IOSTAT_TICK_RATE`]
/// (ns). `min_*` is 0 until the first IO of its type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IoStat {
    /// Bytes of completed READ IOs.
    pub bytes_read: u64,
    /// Completed READ IOs.
    pub num_read_ops: u64,
    /// Bytes of completed WRITE IOs.
    pub bytes_written: u64,
    /// Completed WRITE IOs.
    pub num_write_ops: u64,
    /// Bytes of completed unmap (not offered) IOs.
    pub bytes_unmapped: u64,
    /// Completed unmap (not offered) IOs.
    pub num_unmap_ops: u64,
    /// Bytes of completed copy (not offered) IOs.
    pub bytes_copied: u64,
    /// Completed copy (not offered) IOs.
    pub num_copy_ops: u64,
    /// Summed latency of READ IOs, ticks.
    pub read_latency_ticks: u64,
    /// Longest latency of READ IOs, ticks.
    pub max_read_latency_ticks: u64,
    /// Shortest latency of READ IOs, ticks.
    pub min_read_latency_ticks: u64,
    /// Summed latency of WRITE IOs, ticks.
    pub write_latency_ticks: u64,
    /// Longest latency of WRITE IOs, ticks.
    pub max_write_latency_ticks: u64,
    /// Shortest latency of WRITE IOs, ticks.
    pub min_write_latency_ticks: u64,
    /// Summed latency of unmap (not offered) IOs, ticks.
    pub unmap_latency_ticks: u64,
    /// Longest latency of unmap (not offered) IOs, ticks.
    pub max_unmap_latency_ticks: u64,
    /// Shortest latency of unmap (not offered) IOs, ticks.
    pub min_unmap_latency_ticks: u64,
    /// Summed latency of copy (not offered) IOs, ticks.
    pub copy_latency_ticks: u64,
    /// Longest latency of copy (not offered) IOs, ticks.
    pub max_copy_latency_ticks: u64,
    /// Shortest latency of copy (not offered) IOs, ticks.
    pub min_copy_latency_ticks: u64,
    /// FLUSHes completed (SPDK counts them only in its per-type error and channel
    /// stats; PoV shows them here).
    pub num_flush_ops: u64,
    /// IOs completed with an error status (IOERR or UNSUPP).
    pub num_io_errors: u64,
}

/// Ticks per second of [`IoStat`]'s latencies: nanoseconds.
pub const IOSTAT_TICK_RATE: u64 = 1_000_000_000;

impl IoStat {
    fn record(&mut self, op: BlockOp, bytes: u64, ok: bool, ticks: u64) {
        if !ok {
            self.num_io_errors += 1;
            return;
        }
        let (n, b, sum, max, min) = match op {
            BlockOp::Read => (
                &mut self.num_read_ops,
                &mut self.bytes_read,
                &mut self.read_latency_ticks,
                &mut self.max_read_latency_ticks,
                &mut self.min_read_latency_ticks,
            ),
            BlockOp::Write => (
                &mut self.num_write_ops,
                &mut self.bytes_written,
                &mut self.write_latency_ticks,
                &mut self.max_write_latency_ticks,
                &mut self.min_write_latency_ticks,
            ),
            BlockOp::Flush => {
                self.num_flush_ops += 1;
                return;
            }
            _ => return,
        };
        *n += 1;
        *b += bytes;
        *sum += ticks;
        *max = (*max).max(ticks);
        *min = if *min == 0 { ticks } else { (*min).min(ticks) };
    }
}

/// A request in flight: where its completion goes.
struct Inflight {
    conn: Arc<ConnState>,
    queue: u16,
    generation: u64,
    head: u16,
    status: GuestAddress,
    mem: Arc<GuestMemoryMmap>,
    /// For the IO statistics: type, data bytes, arrival.
    op: BlockOp,
    bytes: u64,
    since: Instant,
}

/// What to put in a used element.
struct Finish {
    conn: Arc<ConnState>,
    queue: u16,
    generation: u64,
    head: u16,
    /// Status byte and where to write it.
    status: Option<(GuestAddress, u8)>,
    /// Used length: bytes written into the chain, status byte included.
    len: u32,
    mem: Arc<GuestMemoryMmap>,
}

/// The poller's view of one connection.
struct PollConn {
    conn: Arc<ConnState>,
    /// Per vring: guest notifications currently enabled.
    notify_on: Vec<bool>,
    /// Per vring: used elements added since the last notification check.
    dirty: Vec<bool>,
}

/// Slots of in-flight requests; a tag is `(slot sequence << 32) | slot index`, so a
/// duplicate or forged completion tag is recognised and ignored.
#[derive(Default)]
struct Slab {
    slots: Vec<(u32, Option<Inflight>)>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, v: Inflight) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Some(v);
        (u64::from(slot.0) << 32) | idx as u64
    }

    fn take(&mut self, tag: u64) -> Option<Inflight> {
        let idx = (tag & 0xffff_ffff) as usize;
        let seq = (tag >> 32) as u32;
        let slot = self.slots.get_mut(idx)?;
        if slot.0 != seq {
            return None;
        }
        let v = slot.1.take()?;
        self.free.push(idx);
        Some(v)
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// Owns one device on its reactor and serves its vhost-user connections.
pub(crate) struct DevicePoller {
    dev: Box<dyn BlockDevice>,
    shared: Arc<DeviceShared>,
    conns: Vec<PollConn>,
    conns_version: u64,
    inflight: Slab,
    chains: Vec<DescriptorChain<Arc<GuestMemoryMmap>>>,
    completions: Vec<BlockCompletion>,
    stats: AdapterStats,
    iostat: IoStat,
    shut_down: bool,
    gathering: GatheringControl,
    /// Version of `gathering` last applied (`u64::MAX`: never).
    gathering_version: u64,
    /// Coalesce notifications (one per vring per poll).
    coalesce: bool,
}

fn status_byte(s: BlockStatus) -> u8 {
    (match s {
        BlockStatus::Ok => VIRTIO_BLK_S_OK,
        BlockStatus::IoErr => VIRTIO_BLK_S_IOERR,
        BlockStatus::Unsupported => VIRTIO_BLK_S_UNSUPP,
    }) as u8
}

impl DevicePoller {
    pub(crate) fn new(dev: Box<dyn BlockDevice>, shared: Arc<DeviceShared>, gathering: GatheringControl) -> DevicePoller {
        DevicePoller {
            dev,
            shared,
            conns: Vec::new(),
            conns_version: u64::MAX,
            inflight: Slab::default(),
            chains: Vec::with_capacity(BATCH),
            completions: Vec::new(),
            stats: AdapterStats::default(),
            iostat: IoStat::default(),
            shut_down: false,
            gathering,
            gathering_version: u64::MAX,
            coalesce: true,
        }
    }

    /// Applies a new gathering setting, if there is one.
    fn refresh_gathering(&mut self) {
        let v = self.gathering.version();
        if v != self.gathering_version {
            self.gathering_version = v;
            // The device follows the same control for its proxy side.
            self.coalesce = self.gathering.get().enabled;
        }
    }

    /// Device and adapter counters as JSON.
    pub(crate) fn stats_json(&self) -> serde_json::Value {
        let per_notification =
            if self.stats.notifications == 0 { 0.0 } else { self.stats.completions as f64 / self.stats.notifications as f64 };
        let mut vhost = serde_json::to_value(&self.stats).unwrap_or_default();
        if let Some(o) = vhost.as_object_mut() {
            o.insert("completions_per_notification".into(), per_notification.into());
        }
        serde_json::json!({
            "device": self.dev.stats_json(),
            "vhost": vhost,
            "in_flight": self.inflight.len(),
            "bdev": {
                "block_size": self.dev.block_size(),
                "num_blocks": self.dev.capacity_sectors() * 512 / u64::from(self.dev.block_size().max(1)),
                "supported_io_types": {
                    "read": self.dev.io_type_supported(BlockOp::Read),
                    "write": self.dev.io_type_supported(BlockOp::Write),
                    "flush": self.dev.io_type_supported(BlockOp::Flush),
                    "unmap": false, "write_zeroes": false, "reset": false, "nvme_admin": false, "nvme_io": false,
                },
                "iostat": self.iostat,
            },
        })
    }

    /// Picks up connections that came or went.
    fn refresh_conns(&mut self) {
        let v = self.shared.conns_version.load(Ordering::Acquire);
        if v == self.conns_version {
            return;
        }
        self.conns_version = v;
        let list = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut old = std::mem::take(&mut self.conns);
        let nq = usize::from(self.shared.num_queues);
        for conn in list {
            match old.iter().position(|p| p.conn.id == conn.id) {
                Some(i) => self.conns.push(old.swap_remove(i)),
                None => self.conns.push(PollConn { conn, notify_on: vec![true; nq], dirty: vec![false; nq] }),
            }
        }
    }

    /// One pass over every vring, device poll and completion. Returns `true` if
    /// anything happened.
    pub(crate) fn run_once(&mut self, fds: &mut dyn FdRegistry) -> bool {
        self.refresh_conns();
        self.refresh_gathering();
        let mut busy = false;
        for ci in 0..self.conns.len() {
            let conn = self.conns[ci].conn.clone();
            if !conn.alive.load(Ordering::Acquire) {
                continue;
            }
            let Some(vrings) = conn.vrings.get() else { continue };
            for (q, vring) in vrings.iter().enumerate() {
                busy |= self.pop_vring(ci, &conn, q, vring) > 0;
            }
        }
        if self.dev.poll(fds) == PollStatus::Busy {
            busy = true;
        }
        busy |= self.reap();
        self.notify_dirty();
        busy
    }

    /// Pops, parses and submits up to [`BATCH`] chains of vring `q` of connection `ci`.
    fn pop_vring(&mut self, ci: usize, conn: &Arc<ConnState>, q: usize, vring: &VringRwLock<super::backend::GuestMem>) -> usize {
        let mut mem = conn.mem.memory().into_inner();
        let generation;
        {
            let mut st = vring.get_mut();
            if !st.get_queue().ready() || !st.is_enabled() {
                return 0;
            }
            generation = conn.generation(q);
            match st.get_queue_mut().iter(mem.clone()) {
                Ok(it) => self.chains.extend(it.take(BATCH)),
                Err(_) => return 0,
            }
            if self.chains.is_empty() {
                return 0;
            }
            if self.conns[ci].notify_on[q] {
                let _ = st.disable_notification();
                self.conns[ci].notify_on[q] = false;
            }
        }
        let n = self.chains.len();
        let queue = q as u16;
        let mut chains = std::mem::take(&mut self.chains);
        for chain in chains.drain(..) {
            let head = chain.head_index();
            let mut parsed = parse_chain(head, chain.clone(), &mem);
            if matches!(&parsed, Err(bad) if bad.outside_memory()) {
                // The memory snapshot was taken before the avail ring was read: a region
                // the driver added (and had acknowledged) since then is missing from it.
                // Retry with the current memory before failing the request.
                let fresh = conn.mem.memory().into_inner();
                if !Arc::ptr_eq(&fresh, &mem) {
                    mem = fresh;
                    parsed = parse_chain(head, chain, &mem);
                }
            }
            match parsed {
                Ok(req) => {
                    let buf = Box::new(GuestBuffer::new(mem.clone(), req.data));
                    let tag = self.inflight.insert(Inflight {
                        conn: conn.clone(),
                        queue,
                        generation,
                        head,
                        status: req.status,
                        mem: mem.clone(),
                        op: req.op,
                        bytes: bdev_pov::IoBuffer::len(buf.as_ref()) as u64,
                        since: Instant::now(),
                    });
                    self.stats.requests += 1;
                    self.dev.submit(BlockRequest { op: req.op, offset: req.offset, buf, tag });
                }
                Err(bad) => {
                    self.stats.bad_chains += 1;
                    log::debug!("{}: queue {q} head {head}: bad request: {}", self.shared.name, bad.why);
                    let status = bad.status.map(|a| (a, VIRTIO_BLK_S_IOERR as u8));
                    let len = u32::from(status.is_some());
                    let f = Finish { conn: conn.clone(), queue, generation, head, status, len, mem: mem.clone() };
                    self.finish(f);
                }
            }
        }
        self.chains = chains;
        n
    }

    /// Takes the device's completions and puts them in their vrings.
    fn reap(&mut self) -> bool {
        self.dev.take_completions(&mut self.completions);
        if self.completions.is_empty() {
            return false;
        }
        let mut done = std::mem::take(&mut self.completions);
        for c in done.drain(..) {
            let Some(inf) = self.inflight.take(c.tag) else {
                log::warn!("{}: completion with unknown tag {:#x}", self.shared.name, c.tag);
                continue;
            };
            let ticks = u64::try_from(inf.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.iostat.record(inf.op, inf.bytes, c.status == BlockStatus::Ok, ticks);
            self.finish(Finish {
                conn: inf.conn,
                queue: inf.queue,
                generation: inf.generation,
                head: inf.head,
                status: Some((inf.status, status_byte(c.status))),
                len: c.written.saturating_add(1),
                mem: inf.mem,
            });
        }
        self.completions = done;
        true
    }

    /// Writes the status byte and the used element, unless the vring or connection
    /// changed since the request was popped.
    fn finish(&mut self, f: Finish) {
        let q = usize::from(f.queue);
        let Some(pc) = self.conns.iter_mut().find(|p| p.conn.id == f.conn.id) else {
            self.stats.stale_completions += 1;
            return;
        };
        let Some(vring) = f.conn.vrings.get().and_then(|v| v.get(q)) else { return };
        if !f.conn.alive.load(Ordering::Acquire) || f.conn.generation(q) != f.generation {
            self.stats.stale_completions += 1;
            return;
        }
        let mut st = vring.get_mut();
        // Re-check under the vring lock: stop_vring marks the queue not ready (under
        // this lock) before bumping the generation.
        if !st.get_queue().ready() || !st.is_enabled() || f.conn.generation(q) != f.generation {
            self.stats.stale_completions += 1;
            return;
        }
        if let Some((addr, byte)) = f.status {
            if let Err(e) = f.mem.write_slice(&[byte], addr) {
                log::warn!("{}: queue {q}: cannot write status byte: {e}", self.shared.name);
            }
        }
        if let Err(e) = st.add_used(f.head, f.len) {
            log::warn!("{}: queue {q}: add_used failed: {e}", self.shared.name);
            return;
        }
        self.stats.completions += 1;
        if self.coalesce {
            pc.dirty[q] = true;
        } else if st.needs_notification().unwrap_or(true) {
            if let Err(e) = st.signal_used_queue() {
                log::debug!("{}: queue {q}: signal failed: {e}", self.shared.name);
            }
            self.stats.notifications += 1;
        }
    }

    /// Signals the vrings that got used elements, if the driver wants to know.
    fn notify_dirty(&mut self) {
        for pc in &mut self.conns {
            let Some(vrings) = pc.conn.vrings.get() else { continue };
            for (q, dirty) in pc.dirty.iter_mut().enumerate() {
                if !std::mem::take(dirty) {
                    continue;
                }
                let Some(vring) = vrings.get(q) else { continue };
                let mut st = vring.get_mut();
                if st.needs_notification().unwrap_or(true) {
                    if let Err(e) = st.signal_used_queue() {
                        log::debug!("{}: queue {q}: signal failed: {e}", self.shared.name);
                    }
                    self.stats.notifications += 1;
                }
            }
        }
    }

    /// Re-enables guest notifications on every vring; `true` if descriptors arrived
    /// in the meantime (the reactor must not sleep).
    fn arm_notifications(&mut self) -> bool {
        self.refresh_conns();
        let mut pending = false;
        for pc in &mut self.conns {
            if !pc.conn.alive.load(Ordering::Acquire) {
                continue;
            }
            let Some(vrings) = pc.conn.vrings.get() else { continue };
            for (q, vring) in vrings.iter().enumerate() {
                let mut st = vring.get_mut();
                if !st.get_queue().ready() || !st.is_enabled() {
                    continue;
                }
                match st.enable_notification() {
                    Ok(more) => pending |= more,
                    Err(e) => log::debug!("{}: queue {q}: enable_notification: {e}", self.shared.name),
                }
                pc.notify_on[q] = true;
            }
        }
        pending
    }

    /// Fails everything in flight and drops the completions (their clients are gone).
    fn shutdown(&mut self, fds: &mut dyn FdRegistry) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        self.dev.destruct(fds);
        self.reap();
        self.notify_dirty();
    }
}

impl Poller for DevicePoller {
    fn name(&self) -> String {
        format!("vhost_blk_{}", self.shared.name)
    }

    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
        if self.shut_down {
            return PollStatus::Idle;
        }
        if self.run_once(ctx) {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn prepare_sleep(&mut self, _ctx: &mut ReactorContext) -> bool {
        !self.shut_down && self.arm_notifications()
    }

    fn deadline(&self) -> Option<Instant> {
        if self.shut_down {
            None
        } else {
            self.dev.deadline()
        }
    }

    fn on_unregister(&mut self, ctx: &mut ReactorContext) {
        self.shutdown(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_blk::backend::GuestMem;
    use bdev_pov::testing::MemDisk;
    use pov_runtime::{ReactorConfig, Runtime};
    use std::sync::atomic::AtomicU64;
    use std::sync::{Mutex, OnceLock};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    const QSIZE: u16 = 16;

    struct Rig {
        _rt: Runtime,
        mem: GuestMem,
        conn: Arc<ConnState>,
        shared: Arc<DeviceShared>,
        poller: DevicePoller,
        gathering: GatheringControl,
    }

    fn rig(disk: MemDisk) -> Rig {
        let rt = Runtime::start(&[None], ReactorConfig::default()).unwrap();
        let mem: GuestMem = GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let shared = Arc::new(DeviceShared {
            name: "t".into(),
            reactor: rt.reactors()[0].clone(),
            num_queues: 1,
            max_queue_size: QSIZE,
            config: OnceLock::new(),
            conns: Mutex::new(Vec::new()),
            conns_version: AtomicU64::new(0),
            next_conn_id: AtomicU64::new(0),
        });
        let conn = Arc::new(ConnState::new(7, 1, mem.clone()));
        shared.add_conn(conn.clone());
        let gathering = GatheringControl::default();
        let poller = DevicePoller::new(Box::new(disk), shared.clone(), gathering.clone());
        Rig { _rt: rt, mem, conn, shared, poller, gathering }
    }

    /// Sets up the connection's vring 0 over the mock queue's rings.
    fn attach(r: &Rig, q: &MockSplitQueue<GuestMemoryMmap>) -> VringRwLock<GuestMem> {
        let v = VringRwLock::new(r.mem.clone(), QSIZE).unwrap();
        v.set_queue_size(QSIZE);
        v.set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0).unwrap();
        v.set_queue_ready(true);
        v.set_enabled(true);
        r.conn.vrings.set(vec![v.clone()]).ok().unwrap();
        v
    }

    /// Writes a chain at descriptor index `start`: (addr, len, device-writable).
    fn chain(q: &MockSplitQueue<GuestMemoryMmap>, start: u16, parts: &[(u64, u32, bool)]) {
        let descs: Vec<RawDescriptor> = parts
            .iter()
            .enumerate()
            .map(|(i, &(a, l, w))| {
                let mut f = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < parts.len() {
                    f |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(a, l, f, start + i as u16 + 1))
            })
            .collect();
        q.add_desc_chains(&descs, start).unwrap();
    }

    fn header(m: &GuestMemoryMmap, at: u64, rtype: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&rtype.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn used(q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let n = q.used().idx().load();
        (0..n).map(|i| q.used().ring().ref_at(i as usize).unwrap().load()).map(|e| (e.id(), e.len())).collect()
    }

    fn status(m: &GuestMemoryMmap, at: u64) -> u8 {
        let mut b = [0xffu8];
        m.read_slice(&mut b, GuestAddress(at)).unwrap();
        b[0]
    }

    #[test]
    fn write_then_read_round_trip_and_malformed_chains() {
        let mut r = rig(MemDisk::new(64 << 10, "s"));
        let g = r.mem.memory();
        let q = MockSplitQueue::new(&*g, QSIZE);
        attach(&r, &q);
        g.write_slice(&[0xab; 1024], GuestAddress(0x4_0000)).unwrap();
        header(&g, 0x2_0000, VIRTIO_BLK_T_OUT, 2);
        chain(&q, 0, &[(0x2_0000, 16, false), (0x4_0000, 1024, false), (0x3_0000, 1, true)]);
        header(&g, 0x2_0100, VIRTIO_BLK_T_IN, 3);
        chain(&q, 3, &[(0x2_0100, 16, false), (0x5_0000, 512, true), (0x3_0001, 1, true)]);
        // No status byte at all.
        chain(&q, 6, &[(0x2_0000, 16, false)]);
        // Data outside guest memory: error status.
        chain(&q, 7, &[(0x2_0100, 16, false), ((1 << 20) - 100, 512, true), (0x3_0002, 1, true)]);
        assert!(r.poller.run_once(&mut ()));
        assert_eq!(used(&q), vec![(6, 0), (7, 1), (0, 1), (3, 513)]);
        assert_eq!((status(&g, 0x3_0000), status(&g, 0x3_0001), status(&g, 0x3_0002)), (0, 0, 1));
        let mut back = [0u8; 512];
        g.read_slice(&mut back, GuestAddress(0x5_0000)).unwrap();
        assert!(back.iter().all(|b| *b == 0xab));
        assert_eq!(r.poller.stats.bad_chains, 2);
        assert_eq!(r.poller.stats.requests, 2);
        assert!(!r.poller.run_once(&mut ()));
    }

    #[test]
    fn async_completions_and_stale_generations() {
        let mut r = rig(MemDisk::new(64 << 10, "s").with_deferred_completions());
        let g = r.mem.memory();
        let q = MockSplitQueue::new(&*g, QSIZE);
        attach(&r, &q);
        header(&g, 0x2_0000, VIRTIO_BLK_T_IN, 0);
        chain(&q, 0, &[(0x2_0000, 16, false), (0x5_0000, 512, true), (0x3_0000, 1, true)]);
        chain(&q, 3, &[(0x2_0000, 16, false), (0x5_1000, 512, true), (0x3_0001, 1, true)]);
        r.poller.run_once(&mut ());
        // The disk completes at its second poll, in reverse order.
        assert_eq!(used(&q), vec![]);
        assert_eq!(r.poller.inflight.len(), 2);
        r.poller.run_once(&mut ());
        assert_eq!(used(&q), vec![(3, 513), (0, 513)]);

        // A request popped before the vring was stopped must not complete into it.
        chain(&q, 6, &[(0x2_0000, 16, false), (0x5_0000, 512, true), (0x3_0002, 1, true)]);
        r.poller.run_once(&mut ());
        r.conn.bump(0);
        r.poller.run_once(&mut ());
        assert_eq!(used(&q).len(), 2);
        assert_eq!(r.poller.stats.stale_completions, 1);

        // Nor into a connection that went away.
        chain(&q, 9, &[(0x2_0000, 16, false), (0x5_0000, 512, true), (0x3_0003, 1, true)]);
        r.poller.run_once(&mut ());
        r.conn.alive.store(false, Ordering::Release);
        r.shared.remove_conn(7);
        r.poller.run_once(&mut ());
        assert_eq!(used(&q).len(), 2);
        assert_eq!(r.poller.stats.stale_completions, 2);
        assert_eq!(r.poller.inflight.len(), 0);
    }

    #[test]
    fn batch_bound_and_notification_rearm() {
        let mut r = rig(MemDisk::new(64 << 10, "s"));
        let g = r.mem.memory();
        let q = MockSplitQueue::new(&*g, QSIZE);
        let v = attach(&r, &q);
        header(&g, 0x2_0000, VIRTIO_BLK_T_IN, 0);
        // Nothing pending: arming finds nothing.
        assert!(!r.poller.arm_notifications());
        for i in 0..5u16 {
            chain(&q, i * 3, &[(0x2_0000, 16, false), (0x5_0000, 512, true), (0x3_0000 + u64::from(i), 1, true)]);
        }
        // Work appeared: arming reports it, so the reactor does not sleep.
        assert!(r.poller.arm_notifications());
        assert!(r.poller.run_once(&mut ()));
        assert_eq!(used(&q).len(), 5);
        assert!(!r.poller.arm_notifications());
        // A vring that is not enabled is left alone.
        v.set_enabled(false);
        chain(&q, 15, &[(0x2_0000, 1, false)]);
        assert!(!r.poller.run_once(&mut ()));
        assert_eq!(used(&q).len(), 5);
    }

    /// Gathering on: one notification for the completions of a poll; off: one each.
    /// Either way, only when EVENT_IDX says the driver wants one.
    #[test]
    fn notifications_coalesced_per_poll_only_with_gathering() {
        let mut r = rig(MemDisk::new(64 << 10, "s"));
        let g = r.mem.memory();
        let q = MockSplitQueue::new(&*g, QSIZE);
        let v = attach(&r, &q);
        header(&g, 0x2_0000, VIRTIO_BLK_T_IN, 0);
        let add = |first: u16, n: u16| {
            for i in first..first + n {
                chain(&q, (i % 5) * 3, &[(0x2_0000, 16, false), (0x5_0000, 512, true), (0x3_0000 + u64::from(i), 1, true)]);
            }
        };
        add(0, 5);
        assert!(r.poller.run_once(&mut ()));
        assert_eq!((r.poller.stats.completions, r.poller.stats.notifications), (5, 1));
        assert_eq!(r.poller.stats_json()["vhost"]["completions_per_notification"], 5.0);
        r.gathering.set(bdev_pov::Gathering { enabled: false, ..Default::default() }).unwrap();
        add(5, 5);
        assert!(r.poller.run_once(&mut ()));
        assert_eq!((r.poller.stats.completions, r.poller.stats.notifications), (10, 6));
        assert_eq!(used(&q).len(), 10);
        // EVENT_IDX: the driver wants a notification only when the used index passes
        // `used_event` (after the avail ring). Gathering off still respects it...
        v.set_queue_event_idx(true);
        let used_event = GuestAddress(q.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
        g.write_obj::<u16>(100, used_event).unwrap();
        add(10, 3);
        assert!(r.poller.run_once(&mut ()));
        assert_eq!((r.poller.stats.completions, r.poller.stats.notifications), (13, 6));
        // ...and so does gathering on: used index 13 -> 16 passes 14, one notification.
        // (16 chains in all: the mock queue does not wrap its avail ring.)
        r.gathering.set(bdev_pov::Gathering::default()).unwrap();
        g.write_obj::<u16>(14, used_event).unwrap();
        add(13, 3);
        assert!(r.poller.run_once(&mut ()));
        assert_eq!((r.poller.stats.completions, r.poller.stats.notifications), (16, 7));
        assert_eq!(used(&q).len(), 16);
    }

    #[test]
    fn slab_rejects_unknown_and_duplicate_tags() {
        let mut s = Slab::default();
        let m = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4096)]).unwrap());
        let conn = Arc::new(ConnState::new(0, 1, GuestMemoryAtomic::new(GuestMemoryMmap::new())));
        let mk = || Inflight {
            conn: conn.clone(),
            queue: 0,
            generation: 0,
            head: 0,
            status: GuestAddress(0),
            mem: m.clone(),
            op: BlockOp::Read,
            bytes: 0,
            since: Instant::now(),
        };
        let a = s.insert(mk());
        assert!(s.take(a).is_some());
        assert!(s.take(a).is_none());
        let b = s.insert(mk());
        assert_ne!(a, b);
        assert!(s.take(a).is_none());
        assert!(s.take(u64::MAX).is_none());
        assert_eq!(s.len(), 1);
    }
}
