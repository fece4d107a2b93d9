//! `pov-dpud`: the PoV DPU daemon (see the `pov_dpu_firmware` crate docs).

use clap::Parser;
use pov_dpu_firmware::app::{parse_cpu_list, run, DaemonOptions};
use pov_dpu_firmware::rpc::{
    RpcLimits, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RPC_SOCKET,
    MAX_REQUEST_BYTES, MIN_RESPONSE_BYTES,
};
use pov_runtime::transport::tls::TlsFiles;
use pov_runtime::ReactorConfig;
use std::path::PathBuf;
use std::time::Duration;

/// PoV DPU daemon: serves PoV devices over vhost-user-blk on polled reactors and is
/// configured over JSON-RPC (SPDK conventions).
#[derive(Parser)]
#[command(name = "pov-dpud", version)]
struct Args {
    /// JSON-RPC control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_RPC_SOCKET)]
    rpc_socket: PathBuf,
    /// One reactor per listed CPU, pinned (e.g. `0,1` or `0-3`).
    #[arg(long, value_name = "LIST", conflicts_with = "reactors")]
    cpus: Option<String>,
    /// Number of unpinned reactors.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    reactors: u16,
    /// Replay this configuration (saved by `save_config`, or a list of
    /// `{method, params}`) before serving RPC; start-up fails if a call fails.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep polling this many microseconds after the last work before a reactor
    /// sleeps (default: the runtime's, 100 µs).
    #[arg(long, value_name = "US")]
    poll_idle_us: Option<u64>,
    /// The DPU's client certificate chain (PEM) for `tls:` proxy endpoints; its
    /// subjectAltName DNS name is the identity the proxy's enrollment names. Needs
    /// --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE", env = "POV_DPUD_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", env = "POV_DPUD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that sign the proxies' certificates.
    #[arg(long, value_name = "FILE", env = "POV_DPUD_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Log level: off, error, warn, info, debug or trace (changed at run time with
    /// the `log_set_level` RPC). RUST_LOG, when set, adds per-module filters (e.g.
    /// `RUST_LOG=pov_dpu_firmware=debug`), wins where both speak and bounds what
    /// `log_set_level` can raise the level to.
    #[arg(long, value_name = "LEVEL", env = "POV_DPUD_LOG_LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
    /// Most JSON-RPC connections served at once; one more is answered with error -16
    /// ("too many connections") and closed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    rpc_max_connections: u32,
    /// Most calls in one JSON-RPC batch (array); a larger batch is answered with one
    /// -32600 error and none of its calls runs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BATCH as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rpc_max_batch: u32,
    /// Largest JSON-RPC answer, bytes; a call whose answer is larger gets a -32603
    /// error instead (min 1024).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_RESPONSE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(MIN_RESPONSE_BYTES as u64..=1 << 32))]
    rpc_max_response_bytes: u64,
    /// Close a JSON-RPC connection that has not sent a complete request this many
    /// seconds after connecting or after its last answer (nothing, or half a
    /// request), or that takes no byte of an answer for that long. 0: never.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64(), value_parser = parse_secs)]
    rpc_idle_timeout: f64,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics, e.g.
    /// `127.0.0.1:9464`; off by default. No authentication: bind a management address.
    #[arg(long, value_name = "ADDR", env = "POV_DPUD_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Logging with `level` as the run-time maximum (`log::set_max_level`, which
/// `log_set_level` changes later): the logger itself passes everything unless RUST_LOG
/// gives filters.
fn init_logging(level: log::LevelFilter) {
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    let base = if rust_log { level } else { log::LevelFilter::Trace };
    let logger = env_logger::Builder::new().filter_level(base).parse_default_env().format_timestamp_micros().build();
    let max = if rust_log { logger.filter() } else { level };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// Seconds, 0 to one day, fractions allowed.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

fn main() {
    let args = Args::parse();
    init_logging(args.log_level);
    let cores = match &args.cpus {
        Some(list) => match parse_cpu_list(list) {
            Ok(c) => c.into_iter().map(Some).collect(),
            Err(e) => {
                eprintln!("pov-dpud: --cpus: {e}");
                std::process::exit(2);
            }
        },
        None => vec![None; usize::from(args.reactors)],
    };
    let mut reactor = ReactorConfig::default();
    if let Some(us) = args.poll_idle_us {
        reactor.idle_window = Duration::from_micros(us);
    }
    let rpc_limits = RpcLimits {
        max_connections: args.rpc_max_connections as usize,
        max_request_bytes: MAX_REQUEST_BYTES,
        max_batch: args.rpc_max_batch as usize,
        max_response_bytes: usize::try_from(args.rpc_max_response_bytes).unwrap_or(usize::MAX),
        idle_timeout: (args.rpc_idle_timeout > 0.0).then(|| Duration::from_secs_f64(args.rpc_idle_timeout)),
        ..RpcLimits::default()
    };
    let tls = match (args.tls_cert, args.tls_key, args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
        _ => None,
    };
    if let Err(e) = run(DaemonOptions {
        rpc_socket: args.rpc_socket,
        cores,
        reactor,
        config: args.config,
        rpc_limits,
        tls,
        metrics_listen: args.metrics_listen,
    }) {
        eprintln!("pov-dpud: {e:#}");
        std::process::exit(1);
    }
}
