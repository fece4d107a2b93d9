//! Gathering IO (paper §4.3.2: "PoV leverages gathering IO to reduce interrupt
//! overhead"; there, about +15% IOPS): the policy, the daemon-wide shared setting and
//! the counters that show its effect.
//!
//! With [`Gathering::enabled`], the proxy requests a device produces while its poller
//! serves the descriptors of one poll are only queued on the transport
//! (`Transport::queue_frame`) and leave together in one send at the start of the
//! device's next `poll` (which the adapter calls right after submitting the poll's
//! descriptors), or as soon as [`Gathering::batch_size`] frames are queued. With
//! [`Gathering::window_us`] > 0 the queued frames may wait up to that long for more to
//! join them, but only while other requests of the connection are in flight (their
//! answers produce the next requests): a lone request always leaves at the end of the
//! poll that queued it. Disabled, every frame is written at once.
//!
//! The host side of gathering (completions of one poll notified together) belongs to
//! the virtqueue adapter, which reads the same [`GatheringControl`].

use pov_runtime::transport::TransportCounters;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest accepted [`Gathering::batch_size`], frames.
pub const MAX_BATCH_SIZE: u32 = 4096;
/// Largest accepted [`Gathering::window_us`], µs.
pub const MAX_WINDOW_US: u32 = 10_000;

/// Gathering settings of the proxy connections (the `pov_set_gathering` RPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gathering {
    /// Gather the requests of one poll into one send (`false`: one send per request).
    pub enabled: bool,
    /// Most frames queued before a send is forced, 1..=[`MAX_BATCH_SIZE`].
    pub batch_size: u32,
    /// Longest time, µs (0..=[`MAX_WINDOW_US`]), queued frames wait for more while
    /// other requests of their connection are in flight; 0 sends at every poll.
    pub window_us: u32,
}

impl Default for Gathering {
    /// Enabled, 64 frames per send at most, no window.
    fn default() -> Gathering {
        Gathering { enabled: true, batch_size: 64, window_us: 0 }
    }
}

impl Gathering {
    /// Checks the ranges; the error names the bad field.
    ///
    /// # Errors
    /// A message such as `batch_size must be 1..=4096`.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(format!("batch_size must be 1..={MAX_BATCH_SIZE}"));
        }
        if self.window_us > MAX_WINDOW_US {
            return Err(format!("window_us must be 0..={MAX_WINDOW_US}"));
        }
        Ok(())
    }
}

/// A shared, versioned [`Gathering`] setting (the daemon's, followed by every device
/// and every virtqueue poller). Clones share the value; readers notice a change with
/// one atomic load per poll ([`GatheringControl::version`]).
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

    /// Replaces the setting after checking it; readers apply it at their next poll.
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
    pub fn version(&self) -> u64 {
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

/// A reader's cached copy of a [`GatheringControl`], refreshed when its version moves.
pub(crate) struct GatheringView {
    control: GatheringControl,
    version: u64,
    policy: Gathering,
}

impl GatheringView {
    pub(crate) fn new(control: GatheringControl) -> GatheringView {
        let policy = control.get();
        GatheringView { version: control.version(), control, policy }
    }

    /// The policy in force, re-read if it changed since the last call.
    pub(crate) fn refresh(&mut self) -> Gathering {
        let v = self.control.version();
        if v != self.version {
            self.version = v;
            self.policy = self.control.get();
        }
        self.policy
    }

    /// The policy as of the last [`GatheringView::refresh`].
    #[cfg(test)]
    pub(crate) fn policy(&self) -> Gathering {
        self.policy
    }

    /// The setting in force now (applied at the next refresh if it just changed).
    pub(crate) fn current(&self) -> Gathering {
        self.control.get()
    }
}

/// Gathering counters of a device's proxy connections (`pov_device_get_devices`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatherStats {
    /// Frames (proxy requests) sent.
    pub frames_sent: u64,
    /// Sends that carried them (TCP: `write(2)` calls that wrote bytes).
    pub sends: u64,
    /// `frames_sent / sends`.
    pub frames_per_send: f64,
    /// Frames (proxy responses) received.
    pub frames_received: u64,
    /// Receives that carried them (TCP: `read(2)` calls that returned bytes).
    pub receives: u64,
    /// `frames_received / receives`.
    pub frames_per_receive: f64,
}

impl GatherStats {
    /// The ratios of summed counters.
    pub(crate) fn from_counters(c: TransportCounters) -> GatherStats {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        GatherStats {
            frames_sent: c.frames_sent,
            sends: c.sends,
            frames_per_send: ratio(c.frames_sent, c.sends),
            frames_received: c.frames_received,
            receives: c.receives,
            frames_per_receive: ratio(c.frames_received, c.receives),
        }
    }
}

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
        assert!(c.set(Gathering { window_us: MAX_WINDOW_US + 1, ..g }).unwrap_err().contains("window_us"));
        assert!(c.set(Gathering { batch_size: MAX_BATCH_SIZE + 1, ..g }).is_err());
        assert_eq!((c.get(), c.version()), (g, v + 1), "a refused setting changes nothing");
        assert_ne!(c, GatheringControl::default());
        assert_eq!(c, shared);
        let mut view = GatheringView::new(GatheringControl::default());
        assert_eq!(view.policy(), Gathering::default());
        let ctl = view.control.clone();
        ctl.set(g).unwrap();
        assert_eq!(view.policy(), Gathering::default(), "applied only at the next refresh");
        assert_eq!(view.refresh(), g);
    }
}
