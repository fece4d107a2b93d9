//! `bdev-pov`: the PoV server that runs on the DPU (paper §4.3, §4.6, §5), and the
//! block-device seam of the DPU daemon.
//!
//! * [`block`]: block IO as the virtqueue adapter hands it over ([`BlockRequest`]:
//!   READ, WRITE, FLUSH, GET_ID at a byte offset, with a data buffer) and the
//!   [`BlockDevice`] trait every device model implements, shaped like SPDK's bdev
//!   function table.
//! * [`PovDevice`] ([`device`]): serves the PoV device protocol of `pov_proto` on top of
//!   block IO: the read-only configuration space, the admin request space (`admin`:
//!   sessions, queues, heartbeats, authentication against the [`TenantTable`]), and the
//!   per-session IO areas whose queues (`queue`) carry PoV requests. Requests are
//!   checked (queue owner, process ID, session, tenant namespace) and forwarded on the
//!   fast path — the queue's mapped proxy connection — to a proxy; responses are parked
//!   in the queue's response slot, where the host reads them.
//! * [`volume`]: a plain volume ([`volume::VolumeDevice`], an ordinary disk whose data
//!   the proxy stores) and [`null`]: the device-path null volume.
//! * [`forward`]: the [`Forwarder`](forward::Forwarder) both proxy-backed kinds share:
//!   proxy connections (never blocking the reactor), tags, gathering, timeouts,
//!   reconnects, and the [`Router`](forward::Router) seam that maps requests to
//!   connections.
//! * [`qos`]: tenants' QoS policies (class, weight, reservation, limits), read by each
//!   device's scheduler (`pov_runtime::qos`) between its PoV queues and its proxies.
//! * `testing` (feature `testing`): the RAM disk test double and the conformance body
//!   every [`BlockDevice`] passes.
//! * `fuzz` (feature `fuzzing`): the body of the fuzz target that drives a
//!   [`PovDevice`] with arbitrary block IO (`docs/fuzzing.md`).
//!
//! Nothing here knows about vhost or virtio: the `dpu-firmware` adapter turns
//! virtqueue descriptors into [`BlockRequest`]s and completions back into used
//! descriptors. A device is owned by one reactor and is driven by its poller.

mod admin;
pub mod block;
pub mod device;
pub mod forward;
pub mod null;
pub mod qos;
mod queue;
pub mod tenant;
pub mod volume;

mod session;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

pub use block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, BlockStatus, BufferError, IoBuffer};
pub use device::{DeviceError, DeviceStats, PovDevice, PovDeviceConfig};
pub use forward::{GatherStats, Gathering, GatheringControl, MAX_BATCH_SIZE, MAX_WINDOW_US};
pub use tenant::TenantTable;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod volume_tests;
