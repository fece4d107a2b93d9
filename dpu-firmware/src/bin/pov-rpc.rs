//! `pov-rpc`: call a JSON-RPC method of `pov-dpud` (or of `pov-proxy --rpc-socket`;
//! our `rpc.py`).

use clap::Parser;
use pov_dpu_firmware::rpc::client::{call, params_from_arg, ClientError};
use pov_dpu_firmware::rpc::DEFAULT_RPC_SOCKET;
use std::path::PathBuf;
use std::time::Duration;

/// Calls METHOD on pov-dpud's control socket (or, with -s, pov-proxy's) and prints
/// the result as JSON.
#[derive(Parser)]
#[command(name = "pov-rpc", version)]
struct Args {
    /// Control socket: pov-dpud's (`--rpc-socket`), or pov-proxy's (`--rpc-socket`).
    #[arg(short = 's', long = "server", value_name = "SOCK", default_value = DEFAULT_RPC_SOCKET)]
    server: PathBuf,
    /// Seconds to wait for the answer.
    #[arg(short = 't', long, default_value_t = 60.0)]
    timeout: f64,
    /// Method, e.g. `pov_device_get_devices` (`rpc_get_methods` lists them).
    method: String,
    /// Parameters as a JSON object, e.g. '{"name":"pov0"}'; `@FILE` reads them from
    /// FILE and `-` from standard input (keeps them off the command line).
    params: Option<String>,
}

use std::io::ErrorKind;

fn main() {
    let args = Args::parse();
    let params = match params_from_arg(args.params.as_deref(), std::io::stdin().lock()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pov-rpc: {}", pov_proto::ErrorChain(&e));
            std::process::exit(2);
        }
    };
    let timeout = Duration::try_from_secs_f64(args.timeout).ok().filter(|t| !t.is_zero());
    match call(&args.server, &args.method, params, timeout) {
        Ok(v) => {
            use std::io::Write;
            let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            match writeln!(std::io::stdout().lock(), "{text}") {
                Ok(()) => {}
                // A reader that stopped early (`pov-rpc ... | grep -q x`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => {
                    eprintln!("pov-rpc: writing the result: {e}");
                    std::process::exit(1);
                }
            }
        }
        Err(ClientError::Rpc(e)) => {
            eprintln!("pov-rpc: {}: {} (code {})", args.method, e.message, e.code);
            std::process::exit(1);
        }
        Err(ClientError::Io(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            let sock = args.server.display();
            eprintln!(
                "pov-rpc: no daemon is listening on {sock} ({e}): start it with `pov-dpud --rpc-socket {sock}` \
                 (or `pov-proxy --rpc-socket {sock}`), or name its socket with -s PATH"
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("pov-rpc: {}: {e}", args.server.display());
            std::process::exit(1);
        }
    }
}
