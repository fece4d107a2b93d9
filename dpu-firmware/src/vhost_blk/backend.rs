//! The `VhostUserBackend` of one client connection.
//!
//! It serves the control messages (features, config space, memory, vring lifecycle)
//! and does no IO itself: a kick only records the connection's vrings in the shared
//! [`ConnState`] and wakes the device's reactor, whose poller processes the queues.

use super::request::{config_slice, config_space};
use pov_runtime::ReactorHandle;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

/// Guest memory of one connection (no dirty-page bitmap).
pub(crate) type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// virtio feature bits offered to every client.
pub(crate) fn offered_features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_BLK_F_SEG_MAX)
        | (1 << VIRTIO_BLK_F_SIZE_MAX)
        | (1 << VIRTIO_BLK_F_BLK_SIZE)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_MQ)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// vhost-user protocol features offered (libblkio requires the first three).
pub(crate) fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::MQ
}

/// Per-device state shared by the accept loop, every connection's backend and the
/// device's poller.
pub(crate) struct DeviceShared {
    /// Device name (for logs and thread names).
    pub name: String,
    /// Reactor that owns the device; woken on kicks.
    pub reactor: ReactorHandle,
    /// Number of virtqueues offered.
    pub num_queues: u16,
    /// Largest queue size accepted.
    pub max_queue_size: u16,
    /// virtio-blk config space (set once the device reported its capacity).
    pub config: OnceLock<Vec<u8>>,
    /// Live connections; the poller re-reads the list when `conns_version` changes.
    pub conns: Mutex<Vec<Arc<ConnState>>>,
    /// Bumped on every change of `conns`.
    pub conns_version: AtomicU64,
    /// Source of connection ids.
    pub next_conn_id: AtomicU64,
}

impl DeviceShared {
    pub(crate) fn add_conn(&self, c: Arc<ConnState>) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        self.conns_version.fetch_add(1, Ordering::AcqRel);
        self.reactor.wake();
    }

    pub(crate) fn remove_conn(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| c.id != id);
        self.conns_version.fetch_add(1, Ordering::AcqRel);
        self.reactor.wake();
    }

    pub(crate) fn conn_count(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// State of one client connection, shared by its backend (vhost threads) and the
/// device poller (reactor thread).
pub(crate) struct ConnState {
    /// Connection id, unique per device.
    pub id: u64,
    /// The connection's guest memory (the same atomic the vhost handler updates).
    pub mem: GuestMem,
    /// The connection's vrings, index = queue index; recorded at the first event.
    pub vrings: OnceLock<Vec<VringRwLock<GuestMem>>>,
    /// Generation of each vring: bumped when the vring is stopped or the device
    /// reset, so completions of requests popped before are dropped.
    pub vring_gen: Vec<AtomicU64>,
    /// `false` once the client disconnected.
    pub alive: AtomicBool,
    /// The consumer ends of the exit events handed to the vhost crate, which it never
    /// closes ([`crate::sys::AbandonedFds`]); closed when the connection's state drops.
    pub exit_fds: crate::sys::AbandonedFds,
}

impl ConnState {
    pub(crate) fn new(id: u64, num_queues: u16, mem: GuestMem) -> ConnState {
        ConnState {
            id,
            mem,
            vrings: OnceLock::new(),
            vring_gen: (0..num_queues).map(|_| AtomicU64::new(0)).collect(),
            alive: AtomicBool::new(true),
            exit_fds: crate::sys::AbandonedFds::default(),
        }
    }

    /// Current generation of vring `q` (0 for an unknown queue).
    pub(crate) fn generation(&self, q: usize) -> u64 {
        self.vring_gen.get(q).map_or(0, |g| g.load(Ordering::Acquire))
    }

    pub(crate) fn bump(&self, q: usize) {
        if let Some(g) = self.vring_gen.get(q) {
            g.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The `VhostUserBackend` of one connection. Cloned by the vhost crate for its worker
/// thread; clones share everything.
#[derive(Clone)]
pub(crate) struct BlkBackend {
    pub dev: Arc<DeviceShared>,
    pub conn: Arc<ConnState>,
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMem>;

    fn num_queues(&self) -> usize {
        usize::from(self.dev.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.dev.max_queue_size)
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn reset_device(&self) {
        for q in 0..self.conn.vring_gen.len() {
            self.conn.bump(q);
        }
        self.dev.reactor.wake();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vhost crate sets EVENT_IDX on the vrings themselves; the poller asks the
        // queue whether a notification is needed.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        match self.dev.config.get() {
            Some(c) => config_slice(c, offset, size),
            None => config_slice(&config_space(0, self.dev.num_queues, super::request::BLK_SIZE), offset, size),
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        // Nothing in the offered config space is writable (no CONFIG_WCE): ignore.
        log::debug!("{}: ignoring config write of {} bytes at {offset}", self.dev.name, buf.len());
        Ok(())
    }

    fn update_memory(&self, _mem: GuestMem) -> std::io::Result<()> {
        // The handler updates the atomic this connection was created with.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => {
                // The vhost crate takes the consumer with `into_raw_fd` and never
                // closes it: it is closed with this connection's state.
                self.conn.exit_fds.record(pair.0.as_raw_fd());
                Some(pair)
            }
            Err(e) => {
                log::error!("{}: cannot create exit event: {e}", self.dev.name);
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        // The vring is already marked not ready, so the poller no longer touches it;
        // requests still in flight on it are abandoned (their completions dropped).
        self.conn.bump(queue_index as usize);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if usize::from(device_event) >= usize::from(self.dev.num_queues) {
            return Ok(());
        }
        if self.conn.vrings.get().is_none() {
            if vrings.len() != usize::from(self.dev.num_queues) {
                // One worker thread serves every queue (queues_per_thread default).
                log::error!("{}: expected {} vrings, got {}", self.dev.name, self.dev.num_queues, vrings.len());
                return Ok(());
            }
            let _ = self.conn.vrings.set(vrings.to_vec());
        }
        self.dev.reactor.wake();
        Ok(())
    }
}
