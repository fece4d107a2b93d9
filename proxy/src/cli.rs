//! The `pov-proxy` command line.
//!
//! ```text
//! pov-proxy [--listen ADDR] [--backend SPEC] [--reactors N | --cpus LIST] [--log-level LEVEL]
//! ```
//!
//! On startup the binary prints one line to stdout, `pov-proxy listening on
//! HOST:PORT` (the address actually bound), so scripts can wait for it. It runs until
//! SIGINT or SIGTERM, then closes every connection, logs the per-tenant counters and
//! exits with status 0. Setup failures exit with status 1 and a message on stderr.

use crate::backend::BackendSpec;
use crate::server::{Server, ServerConfig, DEFAULT_LISTEN};
use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;

/// Default backend spec.
pub const DEFAULT_BACKEND: &str = "local:./pov-data";

/// Command-line options of `pov-proxy`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "pov-proxy", version, about = "PoV proxy: serves DPU file requests from a storage backend")]
pub struct Args {
    /// Endpoint to listen on: HOST:PORT or tcp:HOST:PORT (port 0 picks a free port).
    #[arg(long, env = "POV_PROXY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Storage backend: `local:DIR` (files under DIR/TENANT/, DIR created if
    /// missing), `ceph[:conf=PATH,client=NAME,keyring=PATH,root=DIR,workers=N,
    /// timeout_ms=MS,rbd_pool=POOL,rbd_prefix=P]` (files in CephFS, volumes as RBD
    /// images; see docs/ceph.md) or `null` (stores nothing, reads return zeros:
    /// benchmarks only).
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
}

/// A list of CPU indexes: comma-separated numbers and inclusive ranges (`0,2-3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Most CPUs a list may name.
pub const MAX_CPUS: usize = 1024;

impl std::str::FromStr for CpuList {
    type Err = String;

    /// Parses `0,2-3`. Errors: empty items, non-numbers, reversed ranges, duplicates,
    /// indexes of [`MAX_CPUS`] or more.
    fn from_str(s: &str) -> Result<CpuList, String> {
        let num = |t: &str| -> Result<usize, String> {
            let v: usize = t.trim().parse().map_err(|_| format!("{t:?} is not a CPU number"))?;
            if v >= MAX_CPUS {
                return Err(format!("CPU {v} is out of range (max {})", MAX_CPUS - 1));
            }
            Ok(v)
        };
        let mut out = Vec::new();
        for item in s.split(',') {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let v = num(item)?;
                    (v, v)
                }
            };
            if a > b {
                return Err(format!("reversed range {item:?}"));
            }
            for c in a..=b {
                if out.contains(&c) {
                    return Err(format!("CPU {c} listed twice"));
                }
                out.push(c);
            }
        }
        Ok(CpuList(out))
    }
}

impl Args {
    /// The reactor placement these options ask for.
    pub fn cores(&self) -> Vec<Option<usize>> {
        match &self.cpus {
            Some(list) => list.0.iter().map(|&c| Some(c)).collect(),
            None => vec![None; self.reactors.max(1) as usize],
        }
    }
}

/// Runs the proxy until SIGINT or SIGTERM.
///
/// Errors: signal handlers cannot be installed, or the server cannot start (bad
/// backend directory, address in use, ...).
pub fn run(args: Args) -> anyhow::Result<()> {
    let _ = env_logger::Builder::new().filter_level(args.log_level).parse_default_env().try_init();
    // signal-hook's handlers only write to a self-pipe; `forever()` below reads it (the
    // same design as `pov-dpud`).
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing SIGINT/SIGTERM handlers")?;
    let config = ServerConfig {
        listen: args.listen.clone(),
        backend: args.backend.clone(),
        cores: args.cores(),
        ..ServerConfig::default()
    };
    let server = Server::start(config)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "pov-proxy listening on {}", server.local_addr()).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    let sig = signals.forever().next().context("waiting for a termination signal")?;
    log::info!("signal {sig} received, shutting down");
    let tenants = server.tenant_stats();
    let totals = server.stats();
    server.shutdown();
    log::info!("served {} frames ({} bad) on {} connections", totals.frames, totals.bad_frames, totals.connections_accepted);
    for t in tenants {
        log::info!(
            "tenant {}: {} requests, {} errors, {} bytes read, {} bytes written",
            t.tenant,
            t.requests,
            t.errors,
            t.read_bytes,
            t.write_bytes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cpu_lists() {
        assert_eq!("1".parse::<CpuList>().unwrap().0, [1]);
        assert_eq!("0,2-3".parse::<CpuList>().unwrap().0, [0, 2, 3]);
        for bad in ["", "a", "3-1", "1,1", "0-", "1024", "1,,2"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad:?}");
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
        #[cfg(feature = "ceph")]
        {
            let a = Args::try_parse_from(["pov-proxy", "--backend", "ceph:conf=/c,workers=8"]).unwrap();
            assert!(matches!(a.backend, BackendSpec::Ceph(ref c) if c.workers == 8));
        }
        #[cfg(not(feature = "ceph"))]
        assert!(Args::try_parse_from(["pov-proxy", "--backend", "ceph:conf=/c,workers=8"]).is_err());
    }
}
