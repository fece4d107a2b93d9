//! The daemon-wide gathering IO setting (paper §4.3.2): `pov_set_gathering` and
//! `pov_get_gathering`.
//!
//! The setting is a [`bdev_pov::GatheringControl`] shared by every device and every
//! virtqueue poller; each picks a change up at its next poll (one atomic load) and
//! applies it to its own side:
//! * proxy side of a device (`bdev_pov::forward::gather`): the requests of one poll
//!   leave in one send, bounded by `batch_size` and `window_us`;
//! * host side (the vhost-user-blk poller): the completions of one poll go into the used
//!   ring together and each virtqueue gets at most one notification per poll (only if
//!   the driver wants one: `VIRTIO_RING_F_EVENT_IDX` / `VRING_AVAIL_F_NO_INTERRUPT`
//!   respected). Disabled, every completion is notified on its own (same EVENT_IDX
//!   rules).

use crate::daemon::{Daemon, DaemonError};
use crate::rpc::{params, Handler, NoOpts, RpcError};
use bdev_pov::{Gathering, GatheringControl};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Parameters of `pov_set_gathering`: every field is optional and keeps its current
/// value when absent (defaults: enabled, 64 frames, no window; see
/// [`bdev_pov::Gathering`] for the ranges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatheringOpts {
    /// Gathering on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Most proxy requests in one send, 1..=4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Longest wait of a queued request for company while others are in flight, µs,
    /// 0..=10000 (0: send at every poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_us: Option<u32>,
}

/// The gathering methods.
pub const METHODS: &[(&str, Handler)] = &[("pov_set_gathering", pov_set_gathering), ("pov_get_gathering", pov_get_gathering)];

impl Daemon {
    /// The gathering setting every device follows.
    pub fn gathering(&self) -> Gathering {
        self.gathering_control().get()
    }

    /// Changes the gathering setting of every device, current and future; fields left
    /// `None` keep their value. Returns the setting now in force.
    ///
    /// # Errors
    /// [`DaemonError::Invalid`] for an out-of-range value (nothing changes).
    pub fn set_gathering(&self, opts: &GatheringOpts) -> Result<Gathering, DaemonError> {
        let old = self.gathering();
        let g = Gathering {
            enabled: opts.enabled.unwrap_or(old.enabled),
            batch_size: opts.batch_size.unwrap_or(old.batch_size),
            window_us: opts.window_us.unwrap_or(old.window_us),
        };
        self.gathering_control().set(g).map_err(DaemonError::Invalid)?;
        log::info!("gathering: {g:?}");
        Ok(g)
    }
}

/// The `pov_set_gathering` call that restores the setting.
pub(crate) fn save_config(control: &GatheringControl) -> Value {
    let g = control.get();
    let params = GatheringOpts { enabled: Some(g.enabled), batch_size: Some(g.batch_size), window_us: Some(g.window_us) };
    json!({ "method": "pov_set_gathering", "params": params })
}

fn pov_set_gathering(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: GatheringOpts = params(p)?;
    Ok(json!(d.set_gathering(&o)?))
}

fn pov_get_gathering(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    Ok(json!(d.gathering()))
}
