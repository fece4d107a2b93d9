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
    /// Method, e.g. `pov_device_get_devices` (`rpc_get_methods` lists them); `help
    /// [METHOD]` prints what a method takes and returns (every method without one),
    /// as the daemon answers `rpc_get_method_help`.
    method: String,
    /// Parameters as a JSON object, e.g. '{"name":"pov0"}'; `@FILE` reads them from
    /// FILE and `-` from standard input (keeps them off the command line).
    params: Option<String>,
}

use std::io::ErrorKind;

fn main() {
    let args = Args::parse();
    let timeout = Duration::try_from_secs_f64(args.timeout).ok().filter(|t| !t.is_zero());
    // `help [METHOD]`: the daemon's own help lines, as text.
    let help = args.method == "help";
    let (method, params) = match (help, args.params.as_deref()) {
        (true, Some(m)) => ("rpc_get_method_help", Some(serde_json::json!({ "name": m }))),
        (true, None) => ("rpc_get_method_help", None),
        (false, p) => match params_from_arg(p, std::io::stdin().lock()) {
            Ok(p) => (args.method.as_str(), p),
            Err(e) => {
                eprintln!("pov-rpc: {}", pov_proto::ErrorChain(&e));
                std::process::exit(2);
            }
        },
    };
    match call(&args.server, method, params, timeout) {
        Ok(v) if help => {
            let lines: Vec<serde_json::Value> = match v {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            };
            let mut out = std::io::stdout().lock();
            for l in lines {
                use std::io::Write;
                let (name, text) = (l["name"].as_str().unwrap_or("?"), l["help"].as_str().unwrap_or(""));
                if writeln!(out, "{name}\n    {text}").is_err() {
                    break;
                }
            }
        }
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
