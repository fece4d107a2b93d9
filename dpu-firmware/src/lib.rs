//! `pov-dpud`, the PoV daemon of the DPU: the heavy half of the PoV IO path.
//!
//! * [`vhost_blk`]: the vhost-user-blk front end, the only place that knows virtio
//!   and vhost. A device is owned by a poller on one reactor (SPDK shape); the poller
//!   moves descriptors of every client connection in and out.
//! * [`blockdev`]: the [`BlockDevice`](blockdev::BlockDevice) seam the front end
//!   drives: [`bdev_pov::PovDevice`] in production, [`MemDisk`](blockdev::MemDisk) in
//!   tests.
//! * [`gathering`]: the daemon-wide gathering IO setting the pollers follow.
//! * [`daemon`]: the control API (tenants, devices, reactors, `save_config`).
//! * [`rpc`]: the JSON-RPC 2.0 control server (SPDK conventions) and a client;
//!   [`config`]: replay of a saved configuration.
//! * [`app`]: the daemon's start-up/shutdown sequence; `src/bin/` holds the thin
//!   `pov-dpud` and `pov-rpc` binaries.

#![warn(missing_docs)]

pub mod app;
pub mod blockdev;
pub mod config;
pub mod daemon;
pub mod gathering;
pub mod rpc;
pub mod vhost_blk;

mod util;
