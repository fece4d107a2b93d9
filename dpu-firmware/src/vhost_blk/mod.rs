//! vhost-user-blk front end: the only module that knows about virtio and vhost.
//!
//! A [`VhostBlkServer`] exposes one [`BlockDevice`] on a vhost-user socket:
//!
//! * the device (a [`bdev_pov::BlockDevice`]) lives in a poller on one reactor (module `poller`); that poller processes
//!   the virtqueues of every connected client, SPDK style;
//! * an accept thread serves the socket. Several clients may be connected at once
//!   (e.g. two processes, each with its own libblkio connection): each connection gets
//!   its own `VhostUserDaemon` and backend (module `backend`), whose threads only handle
//!   vhost-user control messages and turn kicks into reactor wake-ups;
//! * [`request`] parses virtio-blk chains into [`bdev_pov::BlockRequest`]s whose
//!   buffers copy to and from guest memory.
//!
//! Offered: VIRTIO_F_VERSION_1, RING_EVENT_IDX, RING_INDIRECT_DESC, BLK_F_SEG_MAX,
//! BLK_F_SIZE_MAX, BLK_F_BLK_SIZE (the device's [`BlockDevice::block_size`]: 512, or a
//! volume's 4096), BLK_F_FLUSH, BLK_F_MQ, and vhost-user
//! PROTOCOL_FEATURES with REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS and MQ.
//!
//! **In-flight requests and vring stops.** `GET_VRING_BASE` and device reset do not
//! wait for in-flight requests (a PoV read may be parked for a long time): those
//! requests are abandoned and their completions dropped when they arrive (a generation
//! counter per vring). The same holds for requests of a client that disconnected.

mod backend;
mod poller;
pub mod request;

pub use poller::{AdapterStats, IoStat, BATCH, IOSTAT_TICK_RATE};

use backend::{BlkBackend, ConnState, DeviceShared};
use bdev_pov::{BlockDevice, GatheringControl};
use poller::DevicePoller;
use pov_runtime::{PollerId, ReactorHandle};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Default number of virtqueues offered (VIRTIO_BLK_F_MQ `num_queues`).
pub const DEFAULT_NUM_QUEUES: u16 = 4;
/// Largest number of virtqueues a device may offer.
pub const MAX_NUM_QUEUES: u16 = 64;
/// Default (and largest accepted) virtqueue size, descriptors.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;

/// Parameters of a [`VhostBlkServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostBlkOptions {
    /// Name used in logs, thread names and poller names.
    pub name: String,
    /// Path of the vhost-user unix socket to listen on.
    pub socket: PathBuf,
    /// Virtqueues offered, 1..=[`MAX_NUM_QUEUES`].
    pub num_queues: u16,
    /// Largest virtqueue size accepted: a power of two, 2..=32768.
    pub max_queue_size: u16,
    /// Gathering setting the device's poller follows (usually the daemon's, shared by
    /// every device).
    pub gathering: GatheringControl,
}

impl VhostBlkOptions {
    /// Options with [`DEFAULT_NUM_QUEUES`] queues of up to [`DEFAULT_QUEUE_SIZE`].
    pub fn new(name: &str, socket: impl Into<PathBuf>) -> VhostBlkOptions {
        VhostBlkOptions {
            name: name.to_string(),
            socket: socket.into(),
            num_queues: DEFAULT_NUM_QUEUES,
            max_queue_size: DEFAULT_QUEUE_SIZE,
            gathering: GatheringControl::default(),
        }
    }
}

/// Why a [`VhostBlkServer`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VhostBlkError {
    /// An option is out of range.
    #[error("invalid option {field}: {why}")]
    Invalid {
        /// The option.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Something that is not a stale socket exists at the path, or another server
    /// accepts connections on it.
    #[error("socket {0} already exists and is in use")]
    SocketInUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The device could not be created (the factory's message).
    #[error("cannot create device: {0}")]
    Device(String),
    /// The reactor chosen for the device has stopped.
    #[error("reactor {0} has stopped")]
    ReactorGone(u32),
}

/// A client connection as the server tracks it.
struct Client {
    shutdown: Option<ShutdownHandle>,
    thread: JoinHandle<()>,
}

/// One device exposed on a vhost-user-blk socket. Dropping it (or [`stop`](Self::stop))
/// disconnects every client, removes the socket and shuts the device down.
pub struct VhostBlkServer {
    shared: Arc<DeviceShared>,
    poller: PollerId,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    clients: Arc<Mutex<Vec<Client>>>,
}

impl std::fmt::Debug for VhostBlkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostBlkServer").field("name", &self.shared.name).field("socket", &self.socket).finish()
    }
}

impl VhostBlkServer {
    /// Binds `opts.socket`, creates the device on `reactor` by calling `make` there (so
    /// the device never crosses threads) and starts accepting clients.
    ///
    /// A stale socket file at the path (nobody accepts on it) is replaced.
    ///
    /// # Errors
    /// [`VhostBlkError::Invalid`] for bad options, [`VhostBlkError::SocketInUse`] if the
    /// path is taken, [`VhostBlkError::Socket`] if binding fails,
    /// [`VhostBlkError::Device`] if `make` fails and [`VhostBlkError::ReactorGone`] if
    /// the reactor has stopped.
    pub fn start<F>(opts: VhostBlkOptions, reactor: &ReactorHandle, make: F) -> Result<VhostBlkServer, VhostBlkError>
    where
        F: FnOnce() -> Result<Box<dyn BlockDevice>, String> + Send + 'static,
    {
        if opts.num_queues == 0 || opts.num_queues > MAX_NUM_QUEUES {
            return Err(VhostBlkError::Invalid { field: "num_queues", why: format!("must be 1..={MAX_NUM_QUEUES}") });
        }
        if !opts.max_queue_size.is_power_of_two() || opts.max_queue_size < 2 || opts.max_queue_size > 32768 {
            return Err(VhostBlkError::Invalid { field: "max_queue_size", why: "must be a power of two in 2..=32768".into() });
        }
        let mut listener = bind(&opts.socket)?;
        let shared = Arc::new(DeviceShared {
            name: opts.name.clone(),
            reactor: reactor.clone(),
            num_queues: opts.num_queues,
            max_queue_size: opts.max_queue_size,
            config: OnceLock::new(),
            conns: Mutex::new(Vec::new()),
            conns_version: AtomicU64::new(0),
            next_conn_id: AtomicU64::new(0),
        });
        let shared2 = shared.clone();
        let gathering = opts.gathering.clone();
        let created = reactor.call(move |ctx| -> Result<(PollerId, u64, u32), String> {
            let dev = make()?;
            let capacity = dev.capacity_sectors();
            let blk_size = dev.block_size();
            Ok((ctx.add_poller(Box::new(DevicePoller::new(dev, shared2, gathering))), capacity, blk_size))
        });
        let (poller, capacity, blk_size) = match created {
            None => return Err(VhostBlkError::ReactorGone(reactor.id())),
            Some(Err(e)) => return Err(VhostBlkError::Device(e)),
            Some(Ok(v)) => v,
        };
        let _ = shared.config.set(request::config_space(capacity, opts.num_queues, blk_size));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Mutex::new(Vec::new()));
        let (shared3, stop2, clients2) = (shared.clone(), stop.clone(), clients.clone());
        let accept = std::thread::Builder::new()
            .name(thread_name("vhacc", &opts.name))
            .spawn(move || accept_loop(&mut listener, shared3, stop2, clients2));
        let accept = match accept {
            Ok(t) => t,
            Err(e) => {
                reactor.send(move |ctx| ctx.remove_poller(poller));
                return Err(VhostBlkError::Socket { path: opts.socket, source: e });
            }
        };
        log::info!("{}: vhost-user-blk on {} ({capacity} sectors, {} queues)", opts.name, opts.socket.display(), opts.num_queues);
        Ok(VhostBlkServer { shared, poller, socket: opts.socket, stop, accept: Some(accept), clients })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The reactor that owns the device.
    pub fn reactor(&self) -> &ReactorHandle {
        &self.shared.reactor
    }

    /// Number of clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.conn_count()
    }

    /// Device and adapter counters: `{"device": .., "vhost": AdapterStats, "in_flight": n}`.
    /// `None` if the reactor has stopped.
    pub fn stats(&self) -> Option<serde_json::Value> {
        let id = self.poller;
        self.shared.reactor.call(move |ctx| ctx.poller_mut::<DevicePoller>(id).map(|p| p.stats_json())).flatten()
    }

    /// Stops accepting, disconnects every client, removes the socket, then shuts the
    /// device down on its reactor (in-flight requests fail and are dropped).
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.stop.store(true, Ordering::Release);
        // Unblock accept(): the loop sees the flag once it has the connection.
        let poke = UnixStream::connect(&self.socket);
        let _ = accept.join();
        drop(poke);
        let clients = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()));
        for c in &clients {
            if let Some(s) = &c.shutdown {
                s.shutdown();
            }
        }
        for c in clients {
            let _ = c.thread.join();
        }
        let id = self.poller;
        // on_unregister shuts the device down.
        self.shared.reactor.call(move |ctx| ctx.remove_poller(id));
        log::info!("{}: stopped", self.shared.name);
    }
}

impl Drop for VhostBlkServer {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A thread name of at most 15 bytes (the Linux limit).
fn thread_name(prefix: &str, name: &str) -> String {
    let mut s = format!("{prefix}-{name}");
    while s.len() > 15 {
        s.pop();
    }
    s
}

/// Binds the socket, replacing a stale socket file.
fn bind(path: &Path) -> Result<Listener, VhostBlkError> {
    pov_jsonrpc::claim_socket_path(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => VhostBlkError::SocketInUse(path.to_path_buf()),
        _ => VhostBlkError::Socket { path: path.to_path_buf(), source: e },
    })?;
    Listener::new(path, false).map_err(|e| VhostBlkError::Socket {
        path: path.to_path_buf(),
        source: match e {
            VhostUserError::SocketError(io) => io,
            other => std::io::Error::other(other.to_string()),
        },
    })
}

/// Tells every vring worker thread of `daemon` to exit.
fn send_exit_events(daemon: &VhostUserDaemon<BlkBackend>) {
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
}

/// Accepts clients until `stop` is set; each client gets a daemon and a waiter thread.
fn accept_loop(listener: &mut Listener, shared: Arc<DeviceShared>, stop: Arc<AtomicBool>, clients: Arc<Mutex<Vec<Client>>>) {
    let name = shared.name.clone();
    while !stop.load(Ordering::Acquire) {
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let conn = Arc::new(ConnState::new(id, shared.num_queues, mem.clone()));
        let backend = BlkBackend { dev: shared.clone(), conn: conn.clone() };
        let mut daemon = match VhostUserDaemon::new(thread_name("vhost", &name), backend, mem) {
            Ok(d) => d,
            Err(e) => {
                log::error!("{name}: cannot create vhost-user daemon: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let started = daemon.start(listener);
        if stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
            let _ = daemon.wait();
            send_exit_events(&daemon);
            break;
        }
        if let Err(e) = started {
            log::error!("{name}: accept failed: {e}");
            send_exit_events(&daemon);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        log::info!("{name}: client {id} connected");
        shared.add_conn(conn.clone());
        let shutdown = daemon.shutdown_handle();
        let shared2 = shared.clone();
        let waiter = std::thread::Builder::new().name(thread_name("vhwait", &name)).spawn(move || {
            let name = &shared2.name;
            match daemon.wait() {
                Ok(())
                | Err(DaemonError::HandleRequest(VhostUserError::Disconnected))
                | Err(DaemonError::HandleRequest(VhostUserError::PartialMessage)) => {
                    log::info!("{name}: client {id} disconnected")
                }
                Err(e) => log::warn!("{name}: client {id}: {e}"),
            }
            send_exit_events(&daemon);
            conn.alive.store(false, Ordering::Release);
            shared2.remove_conn(id);
            drop(daemon);
        });
        let mut list = clients.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|c| !c.thread.is_finished());
        match waiter {
            Ok(thread) => list.push(Client { shutdown, thread }),
            Err(e) => {
                log::error!("{name}: cannot start client thread: {e}");
                shared.remove_conn(id);
            }
        }
    }
}
