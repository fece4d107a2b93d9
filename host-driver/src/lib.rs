//! PoV host driver: the light, host-side half of PoV.
//!
//! An application talks to PoV storage through a *PoV device*, a virtio-blk device whose
//! address space carries RPCs instead of disk blocks (see [`pov_proto::layout`]). This
//! crate encodes file operations as ordinary sector reads and writes to that device and
//! decodes the answers; it knows nothing about the storage behind it.
//!
//! ```no_run
//! use pov_host::{Device, OpenOptions, Session};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::open("/dev/vdb")?; // or "vhost-user:/run/pov/dev0.sock"
//! let session = Session::open(&device, "acme", b"secret", 4)?;
//! let f = session.create("/logs/today")?;
//! f.write_at(b"hello", 0)?;
//! f.append(b", world")?;
//! let mut buf = [0u8; 12];
//! let n = f.read_at(&mut buf, 0)?;
//! assert_eq!(&buf[..n], b"hello, world");
//! for e in session.list("/logs")? {
//!     println!("{} {}", e.name, e.size);
//! }
//! f.close()?;
//! session.close()?;
//! # Ok(()) }
//! ```
//!
//! Layers, bottom up:
//! * [`transport`]: the device-access seam, [`BlockTransport`], with two
//!   implementations: [`kernel::KernelTransport`] (`/dev/vdX`, `O_DIRECT`) and
//!   [`vhost::VhostUserTransport`] (libblkio over a vhost-user-blk socket). [`mem`] holds
//!   the IO buffers and every `unsafe` block of the crate.
//! * [`Device`]: opens a [`DeviceSpec`], validates the configuration space and runs
//!   admin requests under the device-wide admin lock (mutex + `flock(2)`).
//! * [`Session`]: authenticates a tenant, creates IO queues, heartbeats in the
//!   background, and runs each request as a WRITE to a queue's request slot plus a READ
//!   of its response slot.
//! * [`File`] / [`OpenOptions`]: `std::fs`-like file access; `read_at`/`write_at` split
//!   IO into requests of at most 1 MiB ([`pov_proto::MAX_IO_BYTES`]).
//! * [`cli`]: the `pov-host` command-line tool.
//!
//! Errors: setup and control operations return [`Error`] (an [`ErrorKind`] plus
//! context); file operations return `std::io::Result`, with the device's PoV status
//! available through [`status_of`].

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod discover;
mod engine;
pub mod error;
pub mod file;
pub mod kernel;
pub mod mem;
pub mod session;
pub mod spec;
pub mod transport;
pub mod vhost;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

pub use device::Device;
pub use error::{status_of, Error, ErrorKind, Result, StatusError};
pub use file::{File, OpenOptions};
pub use mem::IoBuf;
pub use pov_proto::admin::QosClass;
pub use pov_proto::entry::{DirEntry, Kind, Stat};
pub use pov_proto::Status;
pub use session::{Session, SessionInfo, SessionOptions};
pub use spec::{DeviceOptions, DeviceSpec};
pub use transport::BlockTransport;
