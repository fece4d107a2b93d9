//! `bdev-pov`: the PoV server that runs on the DPU (paper §4.3, §4.6, §5).
//!
//! A [`PovDevice`](device::PovDevice) receives ordinary block IO ([`block::BlockRequest`]:
//! READ, WRITE, FLUSH, GET_ID at a byte offset, with a data buffer) and serves the PoV
//! device protocol of `pov_proto` on top of it: the read-only configuration space, the
//! admin request space (sessions, queues, heartbeats, authentication against the
//! [`tenant::TenantTable`]), and the per-session IO areas whose request slots carry PoV
//! requests. Requests are checked (queue owner, process ID, session, tenant namespace)
//! and forwarded on the fast path — the queue's mapped proxy connection — to a proxy;
//! responses are parked in the queue's response slot, where the host reads them.
//!
//! Nothing here knows about vhost or virtio: the `dpu-firmware` adapter turns
//! virtqueue descriptors into [`block::BlockRequest`]s and completions back into used
//! descriptors. A device is owned by one reactor and is driven by its poller.
//!
//! [`volume`] holds the other device models: a plain volume
//! ([`volume::VolumeDevice`], an ordinary disk whose data the proxy stores) and the
//! device-path null volume ([`volume::NullVolume`]).

pub mod block;
pub mod device;
pub mod tenant;
pub mod volume;

mod forward;
mod session;

pub use block::{BlockCompletion, BlockOp, BlockRequest, BlockStatus, BufferError, IoBuffer};
pub use device::{DeviceStats, PovDevice, PovDeviceConfig};
pub use tenant::TenantTable;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod volume_tests;
