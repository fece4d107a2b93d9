//! `pov-dpud`: the PoV DPU daemon (see the `pov_dpu_firmware` crate docs).

use clap::Parser;
use pov_dpu_firmware::app::{parse_cpu_list, run, DaemonOptions};
use pov_dpu_firmware::rpc::DEFAULT_RPC_SOCKET;
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
    #[command(flatten)]
    rpc: pov_jsonrpc::cli::RpcArgs,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics, e.g.
    /// `127.0.0.1:9464`; off by default. No authentication: bind a management address.
    #[arg(long, value_name = "ADDR", env = "POV_DPUD_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() {
    let args = Args::parse();
    pov_jsonrpc::common::init_logging(args.log_level);
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
    let tls = match (args.tls_cert, args.tls_key, args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
        _ => None,
    };
    if let Err(e) = run(DaemonOptions {
        rpc_socket: args.rpc_socket,
        cores,
        reactor,
        config: args.config,
        rpc_limits: args.rpc.limits(),
        tls,
        metrics_listen: args.metrics_listen,
    }) {
        eprintln!("pov-dpud: {e:#}");
        std::process::exit(1);
    }
}
