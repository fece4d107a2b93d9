//! SPDK-compatible statistics methods: what `spdk-rpc`, `spdk_top` and scripts written
//! for SPDK ask a target, answered from PoV's reactors and devices.
//!
//! | method | params | result |
//! |---|---|---|
//! | `framework_get_reactors` | — | `{"tick_rate", "reactors": [{"lcore", "busy", "idle", "lw_threads": [{"name", "id", "cpumask", "elapsed"}]}]}` |
//! | `thread_get_stats` | — | `{"tick_rate", "threads": [{"name", "id", "cpumask", "busy", "idle", "active_pollers_count", "timed_pollers_count", "paused_pollers_count"}]}` |
//! | `thread_get_pollers` | — | `{"tick_rate", "threads": [{"name", "id", "active_pollers": [{"name", "state", "run_count", "busy_count"}], "timed_pollers", "paused_pollers"}]}` |
//! | `bdev_get_bdevs` | `name?`, `timeout?` (ignored) | `[{"name", "aliases", "product_name", "block_size", "num_blocks", "claimed", "zoned", "supported_io_types", "driver_specific": {"pov": ..}}]` |
//! | `bdev_get_iostat` | `name?`, `per_channel?` (`true` refused) | `{"tick_rate", "ticks", "bdevs": [{"name", "bytes_read", "num_read_ops", .., "read_latency_ticks", ..}]}` |
//! | `spdk_get_version` | — | `{"version", "fields": {"major", "minor", "patch", "suffix"}}` |
//! | `log_set_level`, `log_set_print_level` | `level` (`ERROR`, `WARNING`, `NOTICE`, `INFO`, `DEBUG`, `DISABLED`) | `true` |
//! | `log_get_level`, `log_get_print_level` | — | the level's name |
//! | `pov_get_reactors` | — | PoV's own view: iterations, sleeps, messages, CPU time, pollers with counts |
//!
//! Shapes follow SPDK's `doc/jsonrpc.md`; the three framework/thread results carry
//! exactly the fields `spdk_top` decodes (its decoders reject unknown keys), so PoV's
//! extra reactor figures are in `pov_get_reactors`. Ticks are nanoseconds
//! (`tick_rate` 10⁹). Each reactor runs one lightweight thread in SPDK's terms, named
//! `reactor_N` with id N + 1 (SPDK numbers threads from 1). `busy` is wall time in
//! loop iterations that did work; `idle` the rest, sleeping included. Every bdev is a
//! device or volume of the registry; its IO statistics are counted by the vhost-blk
//! adapter (block IOs as the host sent them, from the descriptor chain's arrival to
//! its completion). `NOTICE` maps to PoV's `info`; PoV has one log output, so the
//! print level and the log level are one setting.

use crate::daemon::{Daemon, DaemonError};
use crate::rpc::{params, Handler, NoOpts, RpcError};
use crate::vhost_blk::IOSTAT_TICK_RATE;
use pov_runtime::ReactorHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

/// The methods of this module.
pub const METHODS: &[(&str, Handler)] = &[
    ("framework_get_reactors", framework_get_reactors),
    ("thread_get_stats", thread_get_stats),
    ("thread_get_pollers", thread_get_pollers),
    ("bdev_get_bdevs", bdev_get_bdevs),
    ("bdev_get_iostat", bdev_get_iostat),
    ("spdk_get_version", spdk_get_version),
    ("log_set_level", log_set_level),
    ("log_get_level", log_get_level),
    ("log_set_print_level", log_set_level),
    ("log_get_print_level", log_get_level),
    ("pov_get_reactors", pov_get_reactors),
];

/// SPDK's thread name for reactor `r`.
fn thread_name(r: &ReactorHandle) -> String {
    format!("reactor_{}", r.id())
}

/// The CPUs reactor `r` may run on, as SPDK writes a cpumask (`0x3`).
fn cpumask(r: &ReactorHandle) -> String {
    let cpus = match r.core() {
        Some(c) => vec![c],
        None => pov_runtime::sys::allowed_cpus().unwrap_or_default(),
    };
    let mask = cpus.iter().filter(|c| **c < 128).fold(0u128, |m, c| m | (1u128 << c));
    format!("0x{mask:x}")
}

fn busy_idle(r: &ReactorHandle) -> (u64, u64) {
    let s = r.stats();
    (s.busy_ns.load(Ordering::Relaxed), s.idle_ns.load(Ordering::Relaxed))
}

fn framework_get_reactors(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let reactors: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let (busy, idle) = busy_idle(r);
            json!({
                "lcore": r.core().unwrap_or(r.id() as usize),
                "busy": busy,
                "idle": idle,
                "lw_threads": [{
                    "name": thread_name(r),
                    "id": u64::from(r.id()) + 1,
                    "cpumask": cpumask(r),
                    "elapsed": busy + idle,
                }],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": IOSTAT_TICK_RATE, "reactors": reactors }))
}

fn thread_get_stats(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let threads: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let (busy, idle) = busy_idle(r);
            let pollers = r.stats().pollers.lock().unwrap_or_else(|e| e.into_inner()).len();
            json!({
                "name": thread_name(r),
                "id": u64::from(r.id()) + 1,
                "cpumask": cpumask(r),
                "busy": busy,
                "idle": idle,
                "active_pollers_count": pollers,
                "timed_pollers_count": 0,
                "paused_pollers_count": 0,
            })
        })
        .collect();
    Ok(json!({ "tick_rate": IOSTAT_TICK_RATE, "threads": threads }))
}

fn thread_get_pollers(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let threads: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let pollers: Vec<Value> = r
                .stats()
                .pollers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "state": "waiting",
                        "run_count": p.counters.runs.load(Ordering::Relaxed),
                        "busy_count": p.counters.busy.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "name": thread_name(r),
                "id": u64::from(r.id()) + 1,
                "active_pollers": pollers,
                "timed_pollers": [],
                "paused_pollers": [],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": IOSTAT_TICK_RATE, "threads": threads }))
}

fn pov_get_reactors(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let reactors: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let s = r.stats();
            let pollers: Vec<Value> = s
                .pollers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "run_count": p.counters.runs.load(Ordering::Relaxed),
                        "busy_count": p.counters.busy.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "reactor": r.id(),
                "lcore": r.core().unwrap_or(r.id() as usize),
                "pinned": r.core().is_some(),
                "busy_iterations": s.busy_iterations.load(Ordering::Relaxed),
                "idle_iterations": s.idle_iterations.load(Ordering::Relaxed),
                "busy_ns": s.busy_ns.load(Ordering::Relaxed),
                "idle_ns": s.idle_ns.load(Ordering::Relaxed),
                "sleeps": s.sleeps.load(Ordering::Relaxed),
                "messages": s.messages.load(Ordering::Relaxed),
                "cpu_time_us": s.cpu_time_us.load(Ordering::Relaxed),
                "pollers": pollers,
            })
        })
        .collect();
    Ok(json!({ "reactors": reactors }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BdevOpts {
    #[serde(default)]
    name: Option<String>,
    /// SPDK waits up to this long for a bdev to appear; PoV's exist or not.
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IostatOpts {
    #[serde(default)]
    name: Option<String>,
    /// SPDK's per-io-channel breakdown; PoV counts per device only.
    #[serde(default)]
    per_channel: Option<bool>,
}

/// `(name, live counters)` of every bdev, or only `name`.
fn bdevs(d: &Daemon, name: Option<&str>) -> Result<Vec<(Value, Value)>, RpcError> {
    let all = d.all_entries(|e, stats| {
        let info = json!({
            "kind": e.kind.kind(),
            "socket": e.socket,
            "reactor": e.reactor(),
            "virtqueues": e.virtqueues,
            "clients": e.clients(),
        });
        (e.name.clone(), info, stats.get("bdev").cloned().unwrap_or(Value::Null))
    });
    let v: Vec<(Value, Value)> = all
        .into_iter()
        .filter(|(n, _, _)| name.map_or(true, |x| x == n))
        .map(|(n, info, b)| (json!({"name": n, "pov": info}), b))
        .collect();
    match name {
        Some(n) if v.is_empty() => Err(DaemonError::NotFound { kind: "bdev", name: n.to_string() }.into()),
        _ => Ok(v),
    }
}

fn bdev_get_bdevs(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: BdevOpts = params(p)?;
    let out: Vec<Value> = bdevs(d, o.name.as_deref())?
        .into_iter()
        .map(|(id, b)| {
            let product = if id["pov"]["kind"] == "pov" { "PoV device" } else { "PoV volume" };
            json!({
                "name": id["name"],
                "aliases": [],
                "product_name": product,
                "block_size": b.get("block_size").cloned().unwrap_or(Value::Null),
                "num_blocks": b.get("num_blocks").cloned().unwrap_or(Value::Null),
                "claimed": false,
                "zoned": false,
                "supported_io_types": b.get("supported_io_types").cloned().unwrap_or(Value::Null),
                "driver_specific": { "pov": id["pov"] },
            })
        })
        .collect();
    Ok(Value::Array(out))
}

/// Ticks now (ns since the first call: SPDK's `ticks` are a free-running counter).
fn ticks_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn bdev_get_iostat(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: IostatOpts = params(p)?;
    if o.per_channel == Some(true) {
        return Err(RpcError::invalid_params("per_channel: PoV keeps bdev statistics per device, not per io channel"));
    }
    let out: Vec<Value> = bdevs(d, o.name.as_deref())?
        .into_iter()
        .map(|(id, b)| {
            let mut s = b.get("iostat").cloned().unwrap_or_else(|| json!({}));
            if let Some(m) = s.as_object_mut() {
                m.insert("name".into(), id["name"].clone());
            }
            s
        })
        .collect();
    Ok(json!({ "tick_rate": IOSTAT_TICK_RATE, "ticks": ticks_now(), "bdevs": out }))
}

fn spdk_get_version(_d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.splitn(3, '.').map(|x| x.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("0"));
    let mut num = || parts.next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let (major, minor, patch) = (num(), num(), num());
    let suffix = v.find('-').map_or("", |i| &v[i..]);
    Ok(json!({ "version": format!("PoV v{v}"), "fields": { "major": major, "minor": minor, "patch": patch, "suffix": suffix } }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelOpts {
    level: String,
}

/// SPDK's log level names ↔ `log`'s filters.
fn level_of(name: &str) -> Option<log::LevelFilter> {
    Some(match name.to_ascii_uppercase().as_str() {
        "DISABLED" => log::LevelFilter::Off,
        "ERROR" => log::LevelFilter::Error,
        "WARNING" | "WARN" => log::LevelFilter::Warn,
        "NOTICE" | "INFO" => log::LevelFilter::Info,
        "DEBUG" => log::LevelFilter::Debug,
        "TRACE" => log::LevelFilter::Trace,
        _ => return None,
    })
}

fn level_name(l: log::LevelFilter) -> &'static str {
    match l {
        log::LevelFilter::Off => "DISABLED",
        log::LevelFilter::Error => "ERROR",
        log::LevelFilter::Warn => "WARNING",
        log::LevelFilter::Info => "INFO",
        log::LevelFilter::Debug => "DEBUG",
        log::LevelFilter::Trace => "TRACE",
    }
}

fn log_set_level(_d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: LevelOpts = params(p)?;
    let l = level_of(&o.level).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "unknown log level {:?}: one of ERROR, WARNING, NOTICE, INFO, DEBUG, TRACE, DISABLED",
            o.level
        ))
    })?;
    log::set_max_level(l);
    log::warn!("log level set to {}", level_name(l));
    Ok(json!(true))
}

fn log_get_level(_d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    Ok(json!(level_name(log::max_level())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_round_trip_and_spdk_names_are_accepted() {
        for l in [log::LevelFilter::Off, log::LevelFilter::Error, log::LevelFilter::Warn, log::LevelFilter::Info] {
            assert_eq!(level_of(level_name(l)), Some(l));
        }
        assert_eq!(level_of("notice"), Some(log::LevelFilter::Info));
        assert_eq!(level_of("verbose"), None);
    }
}
