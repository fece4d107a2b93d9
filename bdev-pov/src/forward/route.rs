//! Which proxy connection a request takes.
//!
//! With a **route table** ([`RouteControl`], paper §4.3.2; `pov_proto::route`) every
//! request goes to the member that owns its route slot, in one hop; a proxy that
//! receives a request routed by an older table answers with its table (a redirect), the
//! device installs it ([`RouteControl::offer`]) and resends. The table comes from
//! `pov_route_set_table`, from `save_config`'s replay, or from the first redirect.
//!
//! Without one (a device whose proxies are not a cluster), the [`Router`] seam decides:
//! [`RoundRobin`] maps each new queue of a PoV device to the next proxy and keeps it
//! for the queue's life (paper §4.3.1's mapping table); a plain volume sends each
//! piece of IO to the next proxy.

use pov_proto::route::RouteTable;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The route table of one device, shared between the device (on its reactor), the
/// daemon's RPC methods and `save_config`. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct RouteControl(Arc<RouteShared>);

#[derive(Debug, Default)]
struct RouteShared {
    /// Bumped at every change (devices compare it with one atomic load per request).
    version: AtomicU64,
    table: Mutex<Option<Arc<RouteTable>>>,
    /// Tables installed from redirects.
    learned: AtomicU64,
}

impl RouteControl {
    /// The table in force (`None`: no table, the [`Router`] decides).
    pub fn get(&self) -> Option<Arc<RouteTable>> {
        self.0.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the table (the operator's `pov_route_set_table`, whatever its epoch),
    /// or removes it with `None`.
    pub fn set(&self, table: Option<RouteTable>) {
        *self.0.table.lock().unwrap_or_else(|e| e.into_inner()) = table.map(Arc::new);
        self.0.version.fetch_add(1, Ordering::Release);
    }

    /// Installs `table` if it is newer than the one in force (a higher epoch, or no
    /// table yet). Returns `true` if it was installed.
    pub fn offer(&self, table: RouteTable) -> bool {
        let mut g = self.0.table.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|t| t.epoch >= table.epoch) {
            return false;
        }
        log::info!(
            "route table epoch {} -> {} learned from a redirect ({} members, {} slots)",
            g.as_ref().map_or(0, |t| t.epoch),
            table.epoch,
            table.members.len(),
            table.slots()
        );
        *g = Some(Arc::new(table));
        self.0.learned.fetch_add(1, Ordering::Relaxed);
        self.0.version.fetch_add(1, Ordering::Release);
        true
    }

    /// Handles the payload of a `Redirect` answer to `who` (`"device NAME"`): offers the
    /// table it carries ([`RouteControl::offer`]); one that does not decode is logged
    /// and ignored (the request is resent by the table in force).
    pub fn follow_redirect(&self, payload: &[u8], who: &str) {
        match RouteTable::decode(payload) {
            Ok(t) => {
                self.offer(t);
            }
            Err(e) => log::warn!("{who}: a redirect carried a route table that does not decode: {e}"),
        }
    }

    /// Tables installed from redirects so far.
    pub fn learned(&self) -> u64 {
        self.0.learned.load(Ordering::Relaxed)
    }

    fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }
}

/// A device's cached view of its [`RouteControl`]: [`RouteView::table`] costs one
/// atomic load unless the table changed.
#[derive(Debug, Default)]
pub struct RouteView {
    control: RouteControl,
    version: u64,
    table: Option<Arc<RouteTable>>,
}

impl RouteView {
    /// A view of `control`.
    pub fn new(control: RouteControl) -> RouteView {
        let version = control.version();
        let table = control.get();
        RouteView { control, version, table }
    }

    /// The control this view follows.
    pub fn control(&self) -> &RouteControl {
        &self.control
    }

    /// The table in force, refreshed if it changed.
    pub fn table(&mut self) -> Option<&Arc<RouteTable>> {
        let v = self.control.version();
        if v != self.version {
            self.version = v;
            self.table = self.control.get();
        }
        self.table.as_ref()
    }
}

/// What a route is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKey {
    /// A new PoV queue (global queue ID): the connection its requests will use.
    Queue(u32),
    /// One piece of plain-volume IO at this byte offset of the volume.
    Volume {
        /// Byte offset of the piece.
        offset: u64,
    },
}

/// Picks a proxy connection (an index into the device's endpoints) for a key.
pub trait Router: Send {
    /// The connection index for `key`, below the number of endpoints the router was
    /// made for.
    fn route(&mut self, key: RouteKey) -> usize;
}

/// Every key goes to the next connection in turn.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    n: usize,
    next: usize,
}

impl RoundRobin {
    /// A router over `n` connections (at least 1).
    pub fn new(n: usize) -> RoundRobin {
        RoundRobin { n: n.max(1), next: 0 }
    }
}

impl Router for RoundRobin {
    fn route(&mut self, _key: RouteKey) -> usize {
        let i = self.next % self.n;
        self.next = self.next.wrapping_add(1);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_tables_win_and_views_follow() {
        let c = RouteControl::default();
        let mut v = RouteView::new(c.clone());
        assert!(v.table().is_none());
        let t = |e| RouteTable::hashed(e, vec!["tcp:a:1".into()], 4).unwrap();
        assert!(c.offer(t(3)));
        assert_eq!(v.table().map(|t| t.epoch), Some(3));
        assert!(!c.offer(t(3)), "same epoch: kept");
        assert!(!c.offer(t(2)), "older: refused");
        c.set(Some(t(1)));
        assert_eq!(v.table().map(|t| t.epoch), Some(1), "the operator may go back");
        assert_eq!(c.learned(), 1);
    }

    #[test]
    fn round_robin_cycles_and_stays_in_range() {
        let mut r = RoundRobin::new(3);
        let got: Vec<usize> = (0..7).map(|q| r.route(RouteKey::Queue(q))).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
        let mut one = RoundRobin::new(0);
        assert_eq!(one.route(RouteKey::Volume { offset: 0 }), 0);
    }
}
