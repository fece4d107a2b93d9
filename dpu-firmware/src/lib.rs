//! `pov-dpud`, the PoV daemon of the DPU: the heavy half of the PoV IO path.
//!
//! * [`vhost_blk`]: the vhost-user-blk front end, the only place that knows virtio
//!   and vhost. A device (a [`bdev_pov::BlockDevice`]) is owned by a poller on one
//!   reactor (SPDK shape); the poller moves descriptors of every client connection in
//!   and out.
//! * [`kinds`]: the device kinds (PoV devices, plain volumes), each with its create,
//!   delete and info functions and its RPC handlers beside them, and the registry of
//!   kinds.
//! * [`daemon`]: orchestration: reactors, the one registry of devices of every kind,
//!   `save_config`; [`keyring`]: keys read from key files (SPDK's `keyring_file_*`);
//!   [`tenant`]: the tenant table's RPCs, tenants referencing keys; [`gathering`]: the
//!   daemon-wide gathering IO setting the pollers and devices follow; [`routes`]: each
//!   device's route table and proxy membership (`pov_route_*`, `pov_proxy_*`); [`qos`]:
//!   tenants' QoS policies (`pov_tenant_set_qos`, ...).
//! * [`rpc`]: the JSON-RPC 2.0 control server (SPDK conventions), its method table
//!   assembled from the modules above, and a client; [`config`]: replay of a saved
//!   configuration.
//! * [`app`]: the daemon's start-up/shutdown sequence; `src/bin/` holds the thin
//!   `pov-dpud` and `pov-rpc` binaries.
//! * `fuzz` (feature `fuzzing`): the bodies of the fuzz targets of the virtqueue chain
//!   parser and the JSON-RPC server (`docs/fuzzing.md`).

#![warn(missing_docs)]

pub mod app;
pub mod config;
pub mod daemon;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod gathering;
pub mod keyring;
pub mod kinds;
pub mod metrics;
pub mod qos;
pub mod routes;
pub mod rpc;
pub mod stats;
pub mod tenant;
pub mod vhost_blk;

mod sys;
