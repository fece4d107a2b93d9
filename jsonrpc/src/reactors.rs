//! SPDK's reactor and thread statistics methods, answered from a daemon's reactors
//! (`pov_runtime`), the same on every daemon: what `spdk-rpc` and `spdk_top` ask.
//!
//! | method | params | result |
//! |---|---|---|
//! | `framework_get_reactors` | — | `{"tick_rate", "reactors": [{"lcore", "busy", "idle", "lw_threads": [{"name", "id", "cpumask", "elapsed"}]}]}` |
//! | `thread_get_stats` | — | `{"tick_rate", "threads": [{"name", "id", "cpumask", "busy", "idle", "active_pollers_count", "timed_pollers_count", "paused_pollers_count"}]}` |
//! | `thread_get_pollers` | — | `{"tick_rate", "threads": [{"name", "id", "active_pollers": [{"name", "state", "run_count", "busy_count"}], "timed_pollers", "paused_pollers"}]}` |
//! | `pov_get_reactors` | — | PoV's own view: iterations, sleeps, messages, CPU time, pollers with counts |
//!
//! Shapes follow SPDK's `doc/jsonrpc.md`; the three framework/thread results carry
//! exactly the fields `spdk_top` decodes (its decoders reject unknown keys), so PoV's
//! extra reactor figures are in `pov_get_reactors`. Ticks are nanoseconds
//! ([`TICK_RATE`], 10⁹ per second). Each reactor runs one lightweight thread in SPDK's
//! terms, named `reactor_N` with id N + 1 (SPDK numbers threads from 1). `busy` is
//! wall time in loop iterations that did work; `idle` the rest, sleeping included.

use crate::{params, Handler, NoOpts, RpcError};
use pov_runtime::ReactorHandle;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Ticks per second of every tick count these methods report (nanoseconds).
pub const TICK_RATE: u64 = 1_000_000_000;

/// A daemon with reactors.
pub trait Reactors {
    /// The daemon's reactors, in id order.
    fn reactors(&self) -> &[ReactorHandle];
}

/// One line of help per method of this module (`rpc_get_method_help`).
pub const HELP: &[(&str, &str)] = &[
    ("framework_get_reactors", "→ {tick_rate, reactors: [{lcore, busy, idle, lw_threads: [{name, id, cpumask, elapsed}]}]} (ticks: ns; spdk_top's fields)"),
    ("thread_get_stats", "→ {tick_rate, threads: [{name, id, cpumask, busy, idle, active_pollers_count, timed_pollers_count, paused_pollers_count}]}"),
    ("thread_get_pollers", "→ {tick_rate, threads: [{name, id, active_pollers: [{name, state, run_count, busy_count}], timed_pollers, paused_pollers}]}"),
    ("pov_get_reactors", "→ {reactors: [{reactor, lcore, pinned, busy_iterations, idle_iterations, busy_ns, idle_ns, sleeps, messages, cpu_time_us, pollers}]}"),
];

/// The methods of this module, for any daemon's method table.
pub fn methods<C: Reactors>() -> [(&'static str, Handler<C>); 4] {
    [
        ("framework_get_reactors", framework_get_reactors::<C>),
        ("thread_get_stats", thread_get_stats::<C>),
        ("thread_get_pollers", thread_get_pollers::<C>),
        ("pov_get_reactors", pov_get_reactors::<C>),
    ]
}

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

/// The `name`, `id` and `cpumask` of reactor `r`'s thread, plus `fields`.
fn thread_json(r: &ReactorHandle, fields: Value) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("name".into(), json!(thread_name(r)));
    o.insert("id".into(), json!(u64::from(r.id()) + 1));
    if let Value::Object(m) = fields {
        o.extend(m);
    }
    Value::Object(o)
}

/// The pollers of reactor `r` with their counts, each with `state` if given.
fn pollers_json(r: &ReactorHandle, state: Option<&str>) -> Vec<Value> {
    let list = r.stats().pollers.lock().unwrap_or_else(|e| e.into_inner());
    list.iter()
        .map(|p| {
            let mut v = json!({
                "name": p.name,
                "run_count": p.counters.runs.load(Ordering::Relaxed),
                "busy_count": p.counters.busy.load(Ordering::Relaxed),
            });
            if let Some(st) = state {
                v["state"] = json!(st);
            }
            v
        })
        .collect()
}

fn busy_idle(r: &ReactorHandle) -> (u64, u64) {
    let s = r.stats();
    (s.busy_ns.load(Ordering::Relaxed), s.idle_ns.load(Ordering::Relaxed))
}

fn framework_get_reactors<C: Reactors>(d: &C, p: Option<Value>) -> Result<Value, RpcError> {
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
                "lw_threads": [thread_json(r, json!({ "cpumask": cpumask(r), "elapsed": busy + idle }))],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": TICK_RATE, "reactors": reactors }))
}

fn thread_get_stats<C: Reactors>(d: &C, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let threads: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let (busy, idle) = busy_idle(r);
            let pollers = r.stats().pollers.lock().unwrap_or_else(|e| e.into_inner()).len();
            thread_json(
                r,
                json!({
                    "cpumask": cpumask(r),
                    "busy": busy,
                    "idle": idle,
                    "active_pollers_count": pollers,
                    "timed_pollers_count": 0,
                    "paused_pollers_count": 0,
                }),
            )
        })
        .collect();
    Ok(json!({ "tick_rate": TICK_RATE, "threads": threads }))
}

fn thread_get_pollers<C: Reactors>(d: &C, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let threads: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let pollers = pollers_json(r, Some("waiting"));
            thread_json(r, json!({ "active_pollers": pollers, "timed_pollers": [], "paused_pollers": [] }))
        })
        .collect();
    Ok(json!({ "tick_rate": TICK_RATE, "threads": threads }))
}

fn pov_get_reactors<C: Reactors>(d: &C, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let reactors: Vec<Value> = d
        .reactors()
        .iter()
        .map(|r| {
            let s = r.stats();
            let pollers = pollers_json(r, None);
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
