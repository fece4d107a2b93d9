//! The `pov-proxy` command line.
//!
//! ```text
//! pov-proxy [--listen ENDPOINT] [--backend SPEC] [--reactors N | --cpus LIST] [--log-level LEVEL]
//!           [--rpc-socket PATH] [--metrics-listen ADDR] [--stats-file FILE]
//!           [--tls-cert FILE --tls-key FILE --tls-ca FILE --enrolled FILE [--tls-handshake-timeout-ms MS]]
//!           [--insecure-tcp] [--max-outstanding-bytes SIZE] [--max-requests N]
//!           [--frame-timeout SECS] [--idle-timeout SECS]
//! ```
//!
//! **Whom it serves.** With `--listen tls:HOST:PORT` the proxy speaks mutual TLS: its
//! certificate and key (`--tls-cert`, `--tls-key`), the CA that signs the DPUs'
//! client certificates (`--tls-ca`) and the enrollment (`--enrolled`, see
//! [`crate::access`]) are then required, and a DPU may act only for the tenants and
//! volumes its identity is enrolled for. Without `tls:` (the default,
//! `127.0.0.1:4420`) it is plain TCP: whoever connects may act for every tenant, the
//! log says so at `warn`, and a listen address other than loopback is refused unless
//! `--insecure-tcp` says that this is meant. The TLS options with a TCP listener are
//! an error, never silently ignored.
//!
//! The last four options are the per-connection limits ([`crate::server::ConnLimits`],
//! docs/security.md "Resource limits").
//!
//! On startup the binary prints one line to stdout, `pov-proxy listening on
//! HOST:PORT` (the address actually bound), so scripts can wait for it. It runs until
//! SIGINT or SIGTERM, then closes every connection, logs the per-tenant counters and
//! exits with status 0. Setup failures exit with status 1 and a message on stderr.

use crate::access::{Enrollment, Peers};
use crate::backend::BackendSpec;
use crate::server::{
    ConnLimits, Server, ServerConfig, DEFAULT_FRAME_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_OUTSTANDING_BYTES, DEFAULT_MAX_REQUESTS,
};
use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::time::Duration;

/// Default backend spec.
pub const DEFAULT_BACKEND: &str = "local:./pov-data";

/// Command-line options of `pov-proxy`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "pov-proxy", version, about = "PoV proxy: serves DPU file requests from a storage backend")]
pub struct Args {
    /// Endpoint to listen on: tls:HOST:PORT (mutual TLS, enrolled DPUs only: needs
    /// --tls-cert, --tls-key, --tls-ca and --enrolled), or HOST:PORT / tcp:HOST:PORT
    /// (plain TCP, trusts any peer: development only). Port 0 picks a free port.
    #[arg(long, env = "POV_PROXY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// The proxy's certificate chain (PEM), for tls: listeners.
    #[arg(long, env = "POV_PROXY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "POV_PROXY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The CA certificate(s) (PEM) that sign enrolled DPUs' client certificates.
    #[arg(long, env = "POV_PROXY_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// The enrollment (JSON): which DPU identity (a DNS name in its certificate's
    /// subjectAltName) may act for which tenants and volumes. See docs/security.md.
    #[arg(long, env = "POV_PROXY_ENROLLED", value_name = "FILE")]
    pub enrolled: Option<std::path::PathBuf>,

    /// How long an accepted connection may take to finish its TLS handshake, ms.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub tls_handshake_timeout_ms: u64,

    /// Allow a plain-TCP listener on an address other than loopback (any host that
    /// reaches it may then act for every tenant).
    #[arg(long)]
    pub insecure_tcp: bool,

    /// Storage backend: `local:DIR` (files under DIR/TENANT/, DIR created if
    /// missing), `null` (stores nothing, reads return zeros: benchmarks only), or
    /// `ceph[:KEY=VALUE,...]` (files in CephFS, volumes as RBD images; docs/ceph.md)
    /// with keys conf, client, keyring, root, workers, timeout_ms, session_uuid,
    /// rbd_pool and rbd_prefix, e.g. `ceph:conf=/etc/ceph/ceph.conf,root=/pov,workers=16`.
    #[arg(long, env = "POV_PROXY_BACKEND", default_value = DEFAULT_BACKEND)]
    pub backend: BackendSpec,

    /// Number of reactor threads, unpinned.
    #[arg(long, default_value_t = 1, conflicts_with = "cpus", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub reactors: u32,

    /// CPUs to run one pinned reactor each on, e.g. `1` or `0,2-3`.
    #[arg(long)]
    pub cpus: Option<CpuList>,

    /// Log level (error, warn, info, debug, trace); RUST_LOG adds per-module filters.
    #[arg(long, env = "POV_PROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,

    /// Most answer bytes one connection may have outstanding (answers not yet written
    /// to its socket plus room reserved for its requests being served; a read
    /// reserves its length). At the bound the proxy stops reading that connection's
    /// requests until its answers drain (TCP back-pressure; nothing is dropped).
    /// Bytes, or with a K, M or G suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_MAX_OUTSTANDING_BYTES))]
    pub max_outstanding_bytes: Size,

    /// Most requests one connection may have being served at once on a blocking
    /// backend's workers (Ceph); further ones wait, unread.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_REQUESTS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_requests: u32,

    /// Close a connection that has not completed its first frame this many seconds
    /// after connecting, or leaves a frame incomplete this long while the proxy reads
    /// it (half a frame, then silence). 0: never.
    #[arg(long, value_name = "SECS", default_value_t = Secs(DEFAULT_FRAME_TIMEOUT))]
    pub frame_timeout: Secs,

    /// Close a connection with nothing outstanding that sends nothing for this many
    /// seconds. 0 (the default): never, since a DPU keeps its proxy connections open
    /// while idle (it reconnects on its next request, but one sent as the proxy
    /// closes fails).
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::ZERO))]
    pub idle_timeout: Secs,

    /// Make this proxy a member of the cluster described in FILE (JSON: epoch,
    /// placement `hash` or `ceph`, members' endpoints and co-located OSDs; see
    /// docs/protocol.md, "Route tables and redirects"). Requests routed by a DPU with an
    /// older route table to a slot another member owns are redirected; FILE is re-read
    /// when it changes. Needs --member.
    #[arg(long, value_name = "FILE", requires = "member")]
    pub cluster: Option<std::path::PathBuf>,

    /// This proxy's index in the --cluster file's members (from 0).
    #[arg(long, value_name = "N", requires = "cluster")]
    pub member: Option<usize>,

    /// Run backend calls on N worker threads instead of the backend's choice (the
    /// local backend: 0, on the reactors; Ceph: its workers= setting). The QoS stage
    /// acts only with workers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub workers: Option<u32>,

    /// QoS stage (docs/qos.md): on (default) queues requests per tenant and class in
    /// front of the backend's workers, latency-critical first, with a PID controller
    /// bounding bandwidth-critical requests at the backend; off serves in arrival order.
    #[arg(long, value_enum, default_value = "on")]
    pub qos: OnOff,

    /// QoS: the latency-critical latency target at the proxy (queueing for a worker
    /// plus the backend call), µs, at --qos-percentile.
    #[arg(long, value_name = "US", default_value_t = crate::qos::DEFAULT_LC_TARGET_US,
          value_parser = clap::value_parser!(u32).range(10..=10_000_000))]
    pub qos_lc_target_us: u32,

    /// QoS: the percentile of latency-critical latency held to the target.
    #[arg(long, value_name = "P", default_value_t = 99.0, value_parser = parse_percentile)]
    pub qos_percentile: f64,

    /// QoS: the largest window of bandwidth-critical requests at the backend (0: the
    /// number of workers).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub qos_window_max: usize,

    /// Write every counter (server, tenants, the QoS controller's target, measurement
    /// and window) as JSON to FILE once a second (replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics, e.g.
    /// `127.0.0.1:9465`; off by default. No authentication: bind a management address.
    #[arg(long, value_name = "ADDR", env = "POV_PROXY_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Serve the JSON-RPC control socket (SPDK's conventions; `pov-rpc -s PATH
    /// proxy_get_stats`, `rpc_get_methods` lists the methods) at PATH; off by
    /// default. Whoever may connect to PATH (its permissions) may read every counter
    /// and change the log level.
    #[arg(long, value_name = "PATH", env = "POV_PROXY_RPC_SOCKET")]
    pub rpc_socket: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub rpc: pov_jsonrpc::cli::RpcArgs,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

fn parse_percentile(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 100.0 => Ok(p),
        _ => Err(format!("'{s}' is not a percentile above 0 and below 100")),
    }
}

/// A byte count given as `N`, `NK`, `NM` or `NG` (powers of 1024; `KiB`, `MiB`,
/// `GiB` and lower case accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl std::str::FromStr for Size {
    type Err = String;

    /// Errors: not a number, an unknown suffix, 0, or more than `usize` holds.
    fn from_str(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kib" => 10,
            "m" | "mib" => 20,
            "g" | "gib" => 30,
            u => return Err(format!("unknown unit {u:?} in {s:?} (use K, M or G)")),
        };
        let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
        let v = n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))?;
        if v == 0 {
            return Err("the size must be at least 1 byte".into());
        }
        Ok(Size(v))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v % (1 << 30) == 0 => write!(f, "{}G", v >> 30),
            v if v % (1 << 20) == 0 => write!(f, "{}M", v >> 20),
            v if v % (1 << 10) == 0 => write!(f, "{}K", v >> 10),
            v => write!(f, "{v}"),
        }
    }
}

/// A duration given in seconds (fractions allowed, e.g. `0.5`); `0` means "never"
/// where an option says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl Secs {
    /// `None` for 0 ("never"), else the duration.
    pub fn nonzero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl std::str::FromStr for Secs {
    type Err = String;

    /// Errors: not a number, negative, or more than a day.
    fn from_str(s: &str) -> Result<Secs, String> {
        let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
        if !(0.0..=86_400.0).contains(&v) {
            return Err(format!("{s:?} is out of range (0 to 86400 seconds)"));
        }
        Ok(Secs(Duration::from_secs_f64(v)))
    }
}

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A list of CPU indexes: comma-separated numbers and inclusive ranges (`0,2-3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Most CPUs a list may name.
pub use pov_runtime::cpus::MAX_CPUS;

impl std::str::FromStr for CpuList {
    type Err = String;

    /// Parses `0,2-3` ([`pov_runtime::cpus::parse_cpu_list`]).
    fn from_str(s: &str) -> Result<CpuList, String> {
        pov_runtime::cpus::parse_cpu_list(s).map(CpuList)
    }
}

impl Args {
    /// The per-connection limits these options ask for.
    pub fn limits(&self) -> ConnLimits {
        ConnLimits {
            max_outstanding_bytes: self.max_outstanding_bytes.0,
            max_requests: self.max_requests as usize,
            frame_timeout: self.frame_timeout.nonzero(),
            idle_timeout: self.idle_timeout.nonzero(),
        }
    }

    /// The QoS stage these options ask for (`None`: off).
    pub fn qos(&self) -> Option<crate::qos::QosConfig> {
        (self.qos == OnOff::On).then(|| crate::qos::QosConfig {
            lc_target_us: self.qos_lc_target_us,
            percentile: self.qos_percentile,
            window_max: self.qos_window_max,
            ..crate::qos::QosConfig::default()
        })
    }

    /// The reactor placement these options ask for.
    pub fn cores(&self) -> Vec<Option<usize>> {
        match &self.cpus {
            Some(list) => list.0.iter().map(|&c| Some(c)).collect(),
            None => vec![None; self.reactors.max(1) as usize],
        }
    }
}

/// Whether a plain-TCP listen endpoint (`HOST:PORT`, `tcp:HOST:PORT`) binds only
/// loopback addresses.
fn loopback_only(listen: &str) -> bool {
    let addr = listen.strip_prefix("tcp:").unwrap_or(listen);
    let Some((host, _)) = addr.rsplit_once(':') else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Args {
    /// Whom to serve, after checking that the options fit the listener: for a `tls:`
    /// listener, loads the TLS identity (and sets it process-wide,
    /// `pov_runtime::transport::tls::configure_server`) and the enrollment.
    ///
    /// Errors: a missing or extra option, an unreadable or bad certificate, key or
    /// enrollment file, a non-loopback TCP listener without `--insecure-tcp`.
    pub fn peers(&self) -> anyhow::Result<Peers> {
        use pov_runtime::transport::tls;
        let tls_opts = [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-ca", &self.tls_ca),
            ("--enrolled", &self.enrolled),
        ];
        if !self.listen.starts_with("tls:") {
            if let Some((flag, _)) = tls_opts.iter().find(|(_, v)| v.is_some()) {
                anyhow::bail!("{flag} needs a TLS listener (--listen tls:HOST:PORT); {} is plain TCP", self.listen);
            }
            if !loopback_only(&self.listen) && !self.insecure_tcp {
                anyhow::bail!(
                    "refusing to serve plain TCP on {}, which is not loopback: any host reaching it could act for every \
                     tenant. Use --listen tls:HOST:PORT with --tls-cert/--tls-key/--tls-ca/--enrolled, or --insecure-tcp",
                    self.listen
                );
            }
            return Ok(Peers::Anyone);
        }
        if let Some((flag, _)) = tls_opts.iter().find(|(_, v)| v.is_none()) {
            anyhow::bail!("--listen {} needs --tls-cert, --tls-key, --tls-ca and --enrolled ({flag} is missing)", self.listen);
        }
        let (Some(cert), Some(key), Some(ca), Some(enrolled)) = (&self.tls_cert, &self.tls_key, &self.tls_ca, &self.enrolled)
        else {
            unreachable!("checked above")
        };
        let files = tls::TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() };
        let mut identity = tls::ServerTls::from_files(&files).context("loading the proxy's TLS identity")?;
        identity.handshake_timeout = std::time::Duration::from_millis(self.tls_handshake_timeout_ms);
        let enrollment = Enrollment::load(enrolled)?;
        if enrollment.is_empty() {
            log::warn!("{} enrolls no DPU: every request will be refused", enrolled.display());
        }
        tls::configure_server(identity);
        Ok(Peers::Enrolled(std::sync::Arc::new(enrollment)))
    }
}

/// Runs the proxy until SIGINT or SIGTERM.
///
/// Errors: signal handlers cannot be installed, the TLS options or files are bad
/// ([`Args::peers`]), or the server cannot start (bad backend directory, address in
/// use, ...).
pub fn run(args: Args) -> anyhow::Result<()> {
    // The same logger as pov-dpud's (log_set_level changes the level at run time).
    pov_jsonrpc::common::init_logging(args.log_level);
    // signal-hook's handlers only write to a self-pipe; `forever()` below reads it (the
    // same design as `pov-dpud`).
    if let Some(list) = &args.cpus {
        pov_runtime::cpus::check_available(&list.0).map_err(|e| anyhow::anyhow!("--cpus: {e}"))?;
    }
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing SIGINT/SIGTERM handlers")?;
    let config = ServerConfig {
        listen: args.listen.clone(),
        backend: args.backend.clone(),
        cores: args.cores(),
        limits: args.limits(),
        peers: args.peers()?,
        cluster: match (&args.cluster, args.member) {
            (Some(f), Some(me)) => Some(crate::cluster::Cluster::load(f, me)?),
            _ => None,
        },
        workers: args.workers.map(|n| n as usize),
        qos: args.qos(),
        ..ServerConfig::default()
    };
    let cluster = config.cluster.clone();
    let server = Server::start(config)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "pov-proxy listening on {}", server.local_addr()).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    let server = std::sync::Arc::new(server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = args.stats_file.clone().map(|f| start_stats_writer(f, server.clone(), stop.clone()));
    let metrics = match args.metrics_listen {
        Some(a) => {
            let m = pov_metrics::MetricsServer::start(a, crate::metrics::collector(&server))
                .with_context(|| format!("starting the metrics endpoint (--metrics-listen {a})"))?;
            log::info!("metrics at http://{}/metrics", m.addr());
            Some(m)
        }
        None => None,
    };
    let rpc = match &args.rpc_socket {
        Some(path) => Some(
            pov_jsonrpc::RpcServer::start_with(path, server.clone(), args.rpc.limits())
                .with_context(|| format!("starting the control socket (--rpc-socket {})", path.display()))?,
        ),
        None => None,
    };
    let sig = signals.forever().next().context("waiting for a termination signal")?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Each joins its threads: no scrape or call holds the server past this point.
    drop(metrics);
    drop(rpc);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let server = std::sync::Arc::into_inner(server).context("the stats writer still holds the server")?;
    log::info!("signal {sig} received, shutting down");
    let tenants = server.tenant_stats();
    let volumes = server.volume_stats();
    let totals = server.stats();
    let qos = server.qos().map(|q| q.stats_json());
    server.shutdown();
    if let Some(q) = qos {
        log::info!("QoS stage: {q}");
    }
    log::info!(
        "served {} frames ({} bad, {} refused for their tenant or volume) on {} connections",
        totals.frames,
        totals.bad_frames,
        totals.denied,
        totals.connections_accepted
    );
    if let Some(c) = cluster {
        log::info!("{}", c.summary());
    }
    for (kind, list) in [("tenant", tenants), ("volume", volumes)] {
        for t in list {
            log::info!(
                "{kind} {}: {} requests, {} errors, {} bytes read, {} bytes written",
                t.tenant,
                t.requests,
                t.errors,
                t.read_bytes,
                t.write_bytes
            );
        }
    }
    Ok(())
}

/// Writes `server.stats_json()` to `file` once a second (through `FILE.tmp` and a
/// rename, so a reader never sees half a file) until `stop`.
fn start_stats_writer(
    file: std::path::PathBuf,
    server: std::sync::Arc<Server>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tmp = file.with_extension("tmp");
        let mut warned = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let text = server.stats_json().to_string();
            if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &file)) {
                if !warned {
                    log::warn!("cannot write the stats file {}: {e}", file.display());
                    warned = true;
                }
            }
            for _ in 0..10 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The TLS options fit the listener or the proxy refuses to start; plain TCP
    /// beyond loopback needs `--insecure-tcp`.
    #[test]
    fn peer_options_must_fit_the_listener() {
        let peers = |args: &[&str]| {
            let mut v = vec!["pov-proxy"];
            v.extend_from_slice(args);
            Args::try_parse_from(v).unwrap().peers().map_err(|e| format!("{e:#}"))
        };
        assert_eq!(peers(&[]), Ok(Peers::Anyone));
        for l in ["127.0.0.1:0", "tcp:127.0.0.5:9", "[::1]:0", "localhost:1", "tcp:LOCALHOST:1"] {
            assert_eq!(peers(&["--listen", l]), Ok(Peers::Anyone), "{l}");
        }
        let e = peers(&["--listen", "0.0.0.0:4420"]).unwrap_err();
        assert!(e.contains("not loopback") && e.contains("--insecure-tcp"), "{e}");
        assert_eq!(peers(&["--listen", "tcp:10.0.0.5:4420", "--insecure-tcp"]), Ok(Peers::Anyone));
        let e = peers(&["--enrolled", "/x.json"]).unwrap_err();
        assert!(e.contains("--enrolled needs a TLS listener"), "{e}");
        let e = peers(&["--listen", "tls:127.0.0.1:0", "--tls-cert", "/c", "--tls-key", "/k", "--tls-ca", "/a"]).unwrap_err();
        assert!(e.contains("--enrolled is missing"), "{e}");
        let e =
            peers(&["--listen", "tls:127.0.0.1:0", "--tls-cert", "/c", "--tls-key", "/k", "--tls-ca", "/a", "--enrolled", "/e"])
                .unwrap_err();
        assert!(e.contains("/a"), "names the unreadable file: {e}");
    }

    /// Every backend spec `--help` shows as an example parses, and every Ceph key the
    /// parser knows is named.
    #[test]
    fn help_examples_parse() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for key in ["conf", "client", "keyring", "root", "workers", "timeout_ms", "session_uuid", "rbd_pool", "rbd_prefix"] {
            assert!(help.contains(key), "--help names the Ceph key {key}");
        }
        let example = help.split('`').find(|t| t.starts_with("ceph:")).expect("a Ceph example");
        #[cfg(feature = "ceph")]
        assert!(BackendSpec::parse(example).is_ok(), "{example}");
        assert!(!example.contains(' '), "{example}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!("1".parse::<CpuList>().unwrap().0, [1]);
        assert_eq!("0,2-3".parse::<CpuList>().unwrap().0, [0, 2, 3]);
        for bad in ["", "a", "3-1", "1,1", "0-", "1024", "1,,2"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_seconds() {
        for (s, v) in [("1", 1), ("4096", 4096), ("8M", 8 << 20), ("64k", 64 << 10), ("1GiB", 1 << 30), ("3 MiB", 3 << 20)] {
            assert_eq!(s.parse::<Size>(), Ok(Size(v)), "{s}");
        }
        for bad in ["", "0", "M", "1T", "-1", "1.5M", "99999999999999999999G"] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?}");
        }
        assert_eq!(Size(8 << 20).to_string(), "8M");
        assert_eq!(Size(1000).to_string(), "1000");
        assert_eq!("30".parse::<Secs>().unwrap().nonzero(), Some(Duration::from_secs(30)));
        assert_eq!("0".parse::<Secs>().unwrap().nonzero(), None);
        assert_eq!(Secs(DEFAULT_FRAME_TIMEOUT).to_string(), "30");
        for bad in ["", "x", "-0.5", "1e9", "NaN"] {
            assert!(bad.parse::<Secs>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from(["pov-proxy"]).unwrap();
        assert_eq!(a.listen, DEFAULT_LISTEN);
        assert_eq!(a.backend, BackendSpec::Local("./pov-data".into()));
        assert_eq!(a.cores(), [None]);
        let a = Args::try_parse_from(["pov-proxy", "--listen", "tcp:0.0.0.0:9", "--backend", "null", "--reactors", "2"]).unwrap();
        assert_eq!((a.listen.as_str(), a.backend.clone(), a.cores()), ("tcp:0.0.0.0:9", BackendSpec::Null, vec![None, None]));
        let a = Args::try_parse_from(["pov-proxy", "--cpus", "1,3", "--log-level", "debug"]).unwrap();
        assert_eq!(a.cores(), [Some(1), Some(3)]);
        assert_eq!(a.log_level, log::LevelFilter::Debug);
        assert!(Args::try_parse_from(["pov-proxy", "--reactors", "2", "--cpus", "1"]).is_err());
        assert!(Args::try_parse_from(["pov-proxy", "--reactors", "0"]).is_err());
        assert!(Args::try_parse_from(["pov-proxy", "--backend", "ceph:x"]).is_err());
        assert!(!a.insecure_tcp && a.tls_cert.is_none() && a.enrolled.is_none());
        assert_eq!(a.tls_handshake_timeout_ms, 5000);
        assert_eq!(a.limits(), ConnLimits::default());
        let a = Args::try_parse_from([
            "pov-proxy",
            "--max-outstanding-bytes",
            "2M",
            "--max-requests",
            "8",
            "--frame-timeout",
            "0.5",
            "--idle-timeout",
            "600",
        ])
        .unwrap();
        let l = a.limits();
        assert_eq!((l.max_outstanding_bytes, l.max_requests), (2 << 20, 8));
        assert_eq!((l.frame_timeout, l.idle_timeout), (Some(Duration::from_millis(500)), Some(Duration::from_secs(600))));
        let a = Args::try_parse_from(["pov-proxy", "--frame-timeout", "0"]).unwrap();
        assert_eq!(a.limits().frame_timeout, None);
        for bad in [
            &["--max-outstanding-bytes", "0"][..],
            &["--max-outstanding-bytes", "8X"],
            &["--max-requests", "0"],
            &["--frame-timeout", "-1"],
            &["--idle-timeout", "soon"],
        ] {
            assert!(Args::try_parse_from(["pov-proxy"].iter().chain(bad)).is_err(), "{bad:?}");
        }
        #[cfg(feature = "ceph")]
        {
            let a = Args::try_parse_from(["pov-proxy", "--backend", "ceph:conf=/c,workers=8"]).unwrap();
            assert!(matches!(a.backend, BackendSpec::Ceph(ref c) if c.workers == 8));
        }
        #[cfg(not(feature = "ceph"))]
        assert!(Args::try_parse_from(["pov-proxy", "--backend", "ceph:conf=/c,workers=8"]).is_err());
    }
}
