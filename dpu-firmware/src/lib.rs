//! `pov-dpud`, the PoV daemon of the DPU: the heavy half of the PoV IO path.
//!
//! * [`vhost_blk`]: the vhost-user-blk front end, the only place that knows virtio
//!   and vhost. A device is owned by a poller on one reactor (SPDK shape); the poller
//!   moves descriptors of every client connection in and out.
//! * [`blockdev`]: the [`BlockDevice`](blockdev::BlockDevice) seam the front end
//!   drives: [`bdev_pov::PovDevice`] in production, [`MemDisk`](blockdev::MemDisk) in
//!   tests.
