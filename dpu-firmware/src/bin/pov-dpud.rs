//! `pov-dpud`: the PoV DPU daemon (see the `pov_dpu_firmware` crate docs).

use clap::Parser;
use pov_dpu_firmware::app::{parse_cpu_list, run, DaemonOptions};
use pov_dpu_firmware::rpc::DEFAULT_RPC_SOCKET;
use std::path::PathBuf;

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
    /// Log level: error, warn, info, debug, trace (or an env_logger filter).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

fn main() {
    let args = Args::parse();
    env_logger::Builder::new().parse_filters(&args.log_level).format_timestamp_micros().init();
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
    if let Err(e) = run(DaemonOptions { rpc_socket: args.rpc_socket, cores, config: args.config }) {
        eprintln!("pov-dpud: {e:#}");
        std::process::exit(1);
    }
}
