//! The control socket's command-line options, the same on every daemon
//! (`#[command(flatten)]` them into the daemon's arguments).

use crate::server::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESPONSE_BYTES};
use crate::{RpcLimits, MAX_REQUEST_BYTES, MIN_RESPONSE_BYTES};
use std::time::Duration;

/// Limits of the JSON-RPC control socket ([`RpcLimits`]).
#[derive(Debug, Clone, clap::Args)]
pub struct RpcArgs {
    /// Most JSON-RPC connections served at once; one more is answered with error -16
    /// ("too many connections") and closed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub rpc_max_connections: u32,
    /// Most calls in one JSON-RPC batch (array); a larger batch is answered with one
    /// -32600 error and none of its calls runs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BATCH as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rpc_max_batch: u32,
    /// Largest JSON-RPC answer, bytes; a call whose answer is larger gets a -32603
    /// error instead (min 1024).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_RESPONSE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(MIN_RESPONSE_BYTES as u64..=1 << 32))]
    pub rpc_max_response_bytes: u64,
    /// Close a JSON-RPC connection that has not sent a complete request this many
    /// seconds after connecting or after its last answer (nothing, or half a
    /// request), or that takes no byte of an answer for that long. 0: never.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64(), value_parser = parse_secs)]
    pub rpc_idle_timeout: f64,
}

impl RpcArgs {
    /// The limits these options give (requests up to [`MAX_REQUEST_BYTES`]).
    pub fn limits(&self) -> RpcLimits {
        RpcLimits {
            max_connections: self.rpc_max_connections as usize,
            max_request_bytes: MAX_REQUEST_BYTES,
            max_batch: self.rpc_max_batch as usize,
            max_response_bytes: usize::try_from(self.rpc_max_response_bytes).unwrap_or(usize::MAX),
            idle_timeout: (self.rpc_idle_timeout > 0.0).then(|| Duration::from_secs_f64(self.rpc_idle_timeout)),
            ..RpcLimits::default()
        }
    }
}

/// Seconds, 0 to one day, fractions allowed.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        rpc: RpcArgs,
    }

    #[test]
    fn defaults_and_bounds() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.rpc.limits(), RpcLimits::default());
        let t = T::try_parse_from(["t", "--rpc-idle-timeout", "0", "--rpc-max-batch", "3"]).unwrap();
        assert_eq!((t.rpc.limits().idle_timeout, t.rpc.limits().max_batch), (None, 3));
        assert!(T::try_parse_from(["t", "--rpc-idle-timeout", "-1"]).is_err());
        assert!(T::try_parse_from(["t", "--rpc-max-response-bytes", "100"]).is_err());
        assert!(T::try_parse_from(["t", "--rpc-max-connections", "0"]).is_err());
    }
}
