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
//! Layers, bottom up (each uses only the ones below it):
//! * **transport** ([`transport`]): the device-access seam, [`BlockTransport`], with
//!   two implementations: [`kernel::KernelTransport`] (`/dev/vdX`, `O_DIRECT`) and
//!   [`vhost::VhostUserTransport`] (libblkio over a vhost-user-blk socket). [`mem`]
//!   holds the IO buffers and every `unsafe` block of the crate.
//! * **device** ([`Device`]): opens a [`DeviceSpec`], validates the configuration space
//!   and runs admin exchanges (protocol v2: each names a random mailbox and a one-time
//!   key for its sealed answer, so no lock is needed between threads or processes).
//! * **engine** (private module `engine`): the IO queues of one session and the request
//!   round trip: lease a free queue, WRITE the request slot and READ the response slot
//!   in one batch, check that the response answers the request, fetch the rest of a
//!   large response. Also the data-path helpers (request encoding, 1 MiB splitting,
//!   parallel pieces, wire paths).
//! * **session** ([`Session`]): the lifecycle: authenticate a tenant (Hello +
//!   OpenSession, a proof of the secret; the secret never crosses the device), derive
//!   the session keys that tag every request and open every response, create its IO
//!   queues (rolling back on failure), hand them to an engine, heartbeat in the
//!   background, close. [`SessionOptions`] asks for a grant (read-only, a path prefix)
//!   and the response protection. Namespace operations (`stat`, `list`, `remove`, ...) are
//!   single engine requests.
//! * **file** ([`File`] / [`OpenOptions`]): `std::fs`-like file access on an engine;
//!   `read_at`/`write_at` split IO into requests of at most 1 MiB
//!   ([`pov_proto::MAX_IO_BYTES`]) run in parallel on the session's queues. A `File`
//!   holds the engine, not the session.
//!
//! Beside them:
//! * [`discover`]: finds the host's PoV devices (`/sys/block/vd*/serial` starting with
//!   `pov-`) and probes their configuration space.
//! * `fuse` (cargo feature `fuse`, part of `cli`): a FUSE mount of a session, for
//!   programs that know nothing of PoV (`pov-host mount`).
//! * `cli` (cargo feature `cli`, on by default): the `pov-host` command-line tool.
//!   With `default-features = false` the crate is the library alone, without clap,
//!   indicatif, env_logger, anyhow or humantime.
//!
//! Errors: setup and control operations return [`Error`] (an [`ErrorKind`] plus
//! context); file operations return `std::io::Result`, with the device's PoV status
//! available through [`status_of`]. No message repeats its source: print chains with
//! [`error::Chain`].

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod discover;
mod engine;
pub mod error;
pub mod file;
#[cfg(feature = "fuse")]
pub mod fuse;
pub mod kernel;
pub mod mem;
pub mod session;
pub mod spec;
pub mod trace;
pub mod transport;
pub mod vhost;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

pub use device::Device;
pub use error::{errno_of, outcome_unknown, status_of, Error, ErrorKind, OutcomeUnknown, Result, StatusError};
pub use file::{File, OpenOptions};
pub use mem::IoBuf;
pub use pov_proto::admin::QosClass;
pub use pov_proto::crypto::{Protection, SessionKeys};
pub use pov_proto::entry::{DirEntry, Kind, Stat, StatFs};
pub use pov_proto::Status;
pub use session::{Session, SessionInfo, SessionOptions};
pub use spec::{DeviceOptions, DeviceSpec};
pub use trace::{RequestTrace, Tracer};
pub use transport::BlockTransport;
