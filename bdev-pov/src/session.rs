//! Sessions (one per host SDK instance), their IO queues and open file handles
//! (paper §4.3.1 control plane, §4.6 keep-alive and reclamation).

use pov_proto::admin::QosClass;
use pov_proto::crypto::{Protection, SessionKeys};
use pov_proto::io::Grant;
use rustc_hash::FxHashMap;
use std::time::Instant;

/// Most files one session may hold open.
pub(crate) const MAX_HANDLES: usize = 65_536;

/// An open file: the tenant-namespace path it resolves to and its access mode.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub path: String,
    pub writable: bool,
    /// The file's location key from the proxy's Open answer (its inode; 0: none): the
    /// route table places the handle's IO by it (`pov_proto::route`).
    pub location: u64,
}

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Serving requests.
    Open,
    /// Closed by the host or timed out: no new requests; queues are freed once their
    /// in-flight requests are answered.
    Reclaiming,
}

/// One session: a tenant's SDK instance in one host process.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: u64,
    pub tenant: String,
    pub pid: u32,
    pub area: u32,
    /// Keys derived at open (`pov_proto::crypto`): sealed requests and responses,
    /// admin MACs.
    pub keys: SessionKeys,
    /// How responses are protected.
    pub protection: Protection,
    /// What the session may do in its tenant's namespace.
    pub grant: Grant,
    /// Sequence number of the last authenticated admin request (replays refused).
    pub admin_seq: u64,
    pub state: SessionState,
    /// The host closed it (CloseSession), as opposed to its heartbeats stopping.
    pub closed_by_host: bool,
    pub last_heartbeat: Instant,
    /// Global IDs of the queues this session created.
    pub queues: Vec<u32>,
    /// Open files by handle (FxHash: handles are assigned here, never chosen by a peer).
    pub handles: FxHashMap<u64, Handle>,
    pub next_handle: u64,
    /// The tenant's live counters on this device (shared by its sessions).
    pub counters: std::sync::Arc<pov_metrics::TenantCounters>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        tenant: String,
        pid: u32,
        area: u32,
        keys: SessionKeys,
        protection: Protection,
        grant: Grant,
        now: Instant,
        counters: std::sync::Arc<pov_metrics::TenantCounters>,
    ) -> Session {
        counters.add_sessions(1);
        Session {
            id,
            tenant,
            pid,
            area,
            keys,
            protection,
            grant,
            admin_seq: 0,
            state: SessionState::Open,
            closed_by_host: false,
            last_heartbeat: now,
            queues: Vec::new(),
            handles: FxHashMap::default(),
            next_handle: 1,
            counters,
        }
    }

    /// Registers an open file, returning its handle, or `None` when the session holds
    /// [`MAX_HANDLES`] already.
    pub fn add_handle(&mut self, h: Handle) -> Option<u64> {
        if self.handles.len() >= MAX_HANDLES {
            return None;
        }
        let id = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(id, h);
        Some(id)
    }
}

/// Who owns an open queue (the mapping-table entry of paper §4.3.1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueOwner {
    pub session_id: u64,
    pub pid: u32,
    pub qos: QosClass,
    /// Index of the proxy connection this queue is mapped to.
    pub proxy: usize,
}
