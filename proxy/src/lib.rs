//! `pov-proxy`: the storage-cluster side of PoV's data path (paper §4.3).
//!
//! The DPU firmware (`pov-dpud`) forwards each file request from a host as a
//! length-prefixed frame (`pov_proto::wire::ProxyRequest`) over a transport
//! connection (TCP now; RDMA planned). The proxy serves it from a storage backend inside
//! the request's tenant namespace and answers with a `ProxyResponse` carrying the same
//! tag. The proxy keeps no per-file state: handles live on the DPU.
//!
//! * [`backend`]: the storage seam ([`backend::Backend`]) with the `local`, `null` and
//!   (cargo feature `ceph`, on by default) `ceph` implementations, the spec strings that
//!   choose one (`local:DIR`, `null`, `ceph:...`) and the conformance suite every
//!   storing backend passes (cargo feature `testing`).
//! * [`service`]: transport-free request execution: frame body in, response frame out,
//!   each request checked against its connection's [`access::Access`].
//! * [`access`]: who may act for which tenant and volume: the enrollment file
//!   (`--enrolled`) mapping each DPU's certificate identity to its tenants and
//!   volumes.
//! * [`server`]: the polled-mode server on `pov_runtime` reactors
//!   ([`Server::start`] → [`Server`] with `local_addr()` and `shutdown()`).
//! * [`offload`]: the worker pool for blocking backends (Ceph; any with `--workers`).
//! * [`qos`]: the QoS stage over the worker pool: per-tenant, per-class queues, LC
//!   first, a PID controller bounding BC requests at the backend (paper §4.5).
//! * [`cluster`]: cluster membership, route table and redirects.
//! * [`stats`]: per-tenant and server-wide counters (`--stats-file` writes them with
//!   the QoS stage's); [`metrics`] serves them to Prometheus (`--metrics-listen`) and
//!   [`rpc`] over the JSON-RPC control socket (`--rpc-socket`).
//! * [`cli`]: the `pov-proxy` command line (the binary only parses and calls
//!   [`cli::run`]).
//! * [`sys`]: the crate's only `unsafe` code (`*at` system calls, the Ceph libraries).
//!
//! Quick start (in-process, as tests do):
//!
//! ```no_run
//! use pov_proxy::{backend::BackendSpec, Server, ServerConfig};
//! let server = Server::start(ServerConfig {
//!     listen: "127.0.0.1:0".into(),
//!     backend: BackendSpec::Null,
//!     ..Default::default()
//! })?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown();
//! # Ok::<(), pov_proxy::Error>(())
//! ```

pub mod access;
pub mod backend;
pub mod cli;
pub mod cluster;
pub mod metrics;
pub mod offload;
pub mod qos;
pub mod rpc;
pub mod server;
pub mod service;
pub mod stats;
pub mod sys;

pub use server::{Server, ServerConfig};

/// Setup errors of the proxy (per-request failures are response statuses instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend spec string is not one of the known forms.
    #[error("bad backend spec {spec:?}: {why}")]
    BadBackendSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// The backend's directory cannot be created or opened.
    #[error("cannot set up backend directory {}", path.display())]
    BackendSetup {
        /// The directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The Ceph backend cannot connect or mount (`errno` from libcephfs).
    #[error("cannot set up the Ceph backend: {what}: {}", std::io::Error::from_raw_os_error(*errno))]
    CephSetup {
        /// The failing step and the settings.
        what: String,
        /// The positive errno.
        errno: i32,
    },
    /// The listen endpoint cannot be parsed or bound.
    #[error("cannot listen on {endpoint}")]
    Listen {
        /// The endpoint as given.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The listener and the peer policy do not fit (an enrollment on a listener that
    /// authenticates nobody, or a TLS listener without an enrollment).
    #[error("cannot serve on {endpoint}: {why}")]
    Peers {
        /// The listen endpoint.
        endpoint: String,
        /// What does not fit.
        why: String,
    },
    /// The reactor threads cannot be started.
    #[error("cannot start reactors")]
    Runtime(#[source] std::io::Error),
    /// A reactor stopped while the server was being set up.
    #[error("reactor {0} stopped during startup")]
    ReactorStopped(u32),
}
