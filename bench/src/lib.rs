//! `pov-bench`: a load generator for PoV and for any vhost-user-blk device.
//!
//! Two modes, one client (libblkio, crate `blkio`, one queue per job):
//! * **block** ([`block::BlockTarget`]): plain virtio-blk reads and writes to a
//!   vhost-user-blk socket: a PoV volume, qemu-storage-daemon, SPDK, ... so that peers
//!   are measured with the same client.
//! * **pov-file** ([`pov::PovFileTarget`]): PoV file reads and writes through the whole
//!   path (host → pov-dpud → pov-proxy → backend), set up with the `pov-host`
//!   library, with `qd` requests in flight on `qd` PoV queues.
//!
//! Workloads ([`workload`]): fio-style patterns (`randread`, `randwrite`, `randrw` with
//! a read percentage, sequential `read`/`write`), any block size (4 KiB, 64 KiB, 1 MiB),
//! queue depth 1–128, several jobs (connections, or PoV sessions possibly of different
//! tenants) at once, for a fixed duration or IO count, after a warm-up.
//!
//! Figures ([`report`]): IOPS, MiB/s, latency percentiles from an HDR histogram (crate
//! `hdrhistogram`, 3 significant digits), and the CPU time of every process named on the
//! command line plus the benchmark itself ([`cpu`], from `/proc/<pid>/stat`). Printed
//! as a table row and written as JSON.
//!
//! The benchmark does not pin itself: run it under `taskset` (see
//! `scripts/bench-compare`).

#![warn(missing_docs)]

pub mod block;
pub mod cpu;
pub mod engine;
pub mod mem;
pub mod pov;
pub mod report;
pub mod run;
pub mod workload;
