//! The daemon-wide gathering IO setting (paper §4.3.2), shared by every device
//! poller: the `pov_set_gathering` RPC writes it, each poller picks a change up at its
//! next poll (one atomic load per poll) and applies it to its device and to its own
//! completion path.
//!
//! What gathering does on each side:
//! * proxy side of a device ([`bdev_pov::Gathering`]): the requests of one poll leave
//!   in one send, bounded by `batch_size` and `window_us`;
//! * host side (the vhost-user-blk poller): the completions of one poll go into the used
//!   ring together and each virtqueue gets at most one notification per poll (only if
//!   the driver wants one: `VIRTIO_RING_F_EVENT_IDX` / `VRING_AVAIL_F_NO_INTERRUPT`
//!   respected). Disabled, every completion is notified on its own (same EVENT_IDX
//!   rules).

use bdev_pov::Gathering;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A shared, versioned [`Gathering`] setting. Clones share the value.
#[derive(Clone, Default)]
pub struct GatheringControl(Arc<Inner>);

#[derive(Default)]
struct Inner {
    version: AtomicU64,
    value: Mutex<Gathering>,
}

impl GatheringControl {
    /// A control holding `g` (not validated: use [`GatheringControl::set`] for input).
    pub fn new(g: Gathering) -> GatheringControl {
        GatheringControl(Arc::new(Inner { version: AtomicU64::new(0), value: Mutex::new(g) }))
    }

    /// The setting in force.
    pub fn get(&self) -> Gathering {
        *self.0.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the setting after checking it; pollers apply it at their next poll.
    ///
    /// # Errors
    /// The reason from [`Gathering::validate`]; the setting is then unchanged.
    pub fn set(&self, g: Gathering) -> Result<(), String> {
        g.validate()?;
        *self.0.value.lock().unwrap_or_else(|e| e.into_inner()) = g;
        self.0.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Bumped by every [`GatheringControl::set`].
    pub(crate) fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for GatheringControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Two controls are equal if they are the same shared setting.
impl PartialEq for GatheringControl {
    fn eq(&self, other: &GatheringControl) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for GatheringControl {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_validates_and_bumps_the_version() {
        let c = GatheringControl::default();
        let shared = c.clone();
        assert_eq!(c.get(), Gathering::default());
        let v = c.version();
        let g = Gathering { enabled: false, batch_size: 8, window_us: 50 };
        c.set(g).unwrap();
        assert_eq!((shared.get(), shared.version()), (g, v + 1));
        assert!(c.set(Gathering { batch_size: 0, ..g }).unwrap_err().contains("batch_size"));
        assert!(c.set(Gathering { window_us: bdev_pov::MAX_WINDOW_US + 1, ..g }).unwrap_err().contains("window_us"));
        assert!(c.set(Gathering { batch_size: bdev_pov::MAX_BATCH_SIZE + 1, ..g }).is_err());
        assert_eq!((c.get(), c.version()), (g, v + 1), "a refused setting changes nothing");
        assert_ne!(c, GatheringControl::default());
        assert_eq!(c, shared);
    }
}
