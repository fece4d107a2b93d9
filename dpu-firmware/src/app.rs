//! The `pov-dpud` daemon's start-up and shutdown sequence (the binary only parses
//! arguments).

use crate::config::load_config_file;
use crate::daemon::Daemon;
use crate::rpc::{RpcLimits, RpcServer};
use anyhow::Context;
use pov_runtime::transport::tls::{self, ClientTls, TlsFiles};
use pov_runtime::{ReactorConfig, Runtime};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Control socket path.
    pub rpc_socket: PathBuf,
    /// One reactor per entry: `Some(cpu)` pinned, `None` unpinned.
    pub cores: Vec<Option<usize>>,
    /// Reactor tuning (adaptive polling).
    pub reactor: ReactorConfig,
    /// Configuration to replay before serving RPC.
    pub config: Option<PathBuf>,
    /// Limits of the control socket server.
    pub rpc_limits: RpcLimits,
    /// The DPU's TLS identity for `tls:` proxy endpoints (its client certificate and
    /// key, and the CA it trusts for proxies); `None`: `tls:` endpoints are refused.
    pub tls: Option<TlsFiles>,
    /// Serve Prometheus metrics on this address (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Parses a CPU list such as `0,1` or `0-3,6` (no duplicates) and checks that this
/// process may run on each CPU ([`pov_runtime::cpus`]).
///
/// # Errors
/// A message naming the bad element, or the CPU that does not exist here.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let cpus = pov_runtime::cpus::parse_cpu_list(s)?;
    pov_runtime::cpus::check_available(&cpus)?;
    Ok(cpus)
}

/// Runs the daemon until SIGINT or SIGTERM: installs handlers for them (`signal-hook`,
/// as `pov-proxy` does), loads the TLS identity (if any) and sets it process-wide
/// ([`tls::configure_client`]) so that devices can use `tls:` proxy endpoints, starts
/// the reactors, replays `config`, listens on the control socket, prints
/// `pov-dpud ready: rpc socket PATH` on stdout, waits for a signal, then removes the
/// control socket and every device socket and stops the reactors.
///
/// # Errors
/// Start-up failures (TLS files, reactors, config replay, control socket) with
/// context.
pub fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing SIGINT/SIGTERM handlers")?;
    if let Some(files) = &opts.tls {
        let identity = ClientTls::from_files(files).context("loading the DPU's TLS identity")?;
        tls::configure_client(identity);
        log::info!("TLS identity {} (trusting proxies signed by {})", files.cert.display(), files.ca.display());
    }
    let rt = Runtime::start(&opts.cores, opts.reactor.clone()).context("starting reactors")?;
    let daemon = Arc::new(Daemon::with_reactors(rt.reactors().to_vec()));
    if let Some(path) = &opts.config {
        let n = load_config_file(&daemon, path).with_context(|| format!("replaying {}", path.display()));
        match n {
            Ok(n) => log::info!("replayed {n} calls from {}", path.display()),
            Err(e) => {
                daemon.shutdown();
                return Err(e);
            }
        }
    }
    let metrics = match opts.metrics_listen.map(|a| pov_metrics::MetricsServer::start(a, crate::metrics::collector(&daemon))) {
        Some(Err(e)) => {
            daemon.shutdown();
            return Err(e).context("starting the metrics endpoint (--metrics-listen)");
        }
        Some(Ok(m)) => {
            log::info!("metrics at http://{}/metrics", m.addr());
            Some(m)
        }
        None => None,
    };
    let server = match RpcServer::start_with(&opts.rpc_socket, daemon.clone(), opts.rpc_limits.clone()) {
        Ok(s) => s,
        Err(e) => {
            daemon.shutdown();
            return Err(e).with_context(|| format!("listening on {}", opts.rpc_socket.display()));
        }
    };
    println!("pov-dpud ready: rpc socket {}", opts.rpc_socket.display());
    let _ = std::io::stdout().flush();
    let sig = signals.forever().next().context("waiting for signals")?;
    log::info!("signal {sig}: shutting down");
    server.stop();
    drop(metrics);
    daemon.shutdown();
    rt.shutdown();
    log::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        let first = pov_runtime::sys::allowed_cpus().unwrap()[0];
        assert_eq!(parse_cpu_list(&first.to_string()).unwrap(), vec![first]);
        let e = parse_cpu_list("1023").unwrap_err();
        assert!(e.contains("does not exist"), "CPUs beyond the machine are refused: {e}");
        assert!(parse_cpu_list("1,1").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
