//! `pov-proxy --rpc-socket PATH`: the proxy's JSON-RPC control socket, with SPDK's
//! conventions and the same server, framing and limits as `pov-dpud`'s
//! ([`pov_jsonrpc`]); `pov-rpc -s PATH` and SPDK's client call it.
//!
//! | method | params | result |
//! |---|---|---|
//! | `rpc_get_methods` | `current?`, `include_aliases?` (ignored) | method names |
//! | `rpc_get_method_help` | `name?` | `{"name", "help"}`, or all of them |
//! | `proxy_get_stats` | — | `{"listen", "backend", "server": {frames, bad_frames, denied, connections_open, …}, "tenants": [TenantStats], "volumes": [TenantStats], "qos": {..} \| null}` (what `--stats-file` writes, plus `listen` and `backend`) |
//! | `proxy_get_tenants` | `name?` | `[TenantStats]`: per tenant, requests by operation, errors by status, bytes, requests in flight, latency histogram; `-19` if `name` has no counters |
//! | `proxy_get_volumes` | `name?` | the same for plain volumes (`tenant` holds the volume's name) |
//! | `framework_get_reactors`, `thread_get_stats`, `thread_get_pollers`, `pov_get_reactors` | — | the reactors ([`pov_jsonrpc::reactors`]) |
//! | `spdk_get_version`, `log_set_level`, `log_get_level` (+ `_print_` aliases) | see [`pov_jsonrpc::common`] | |
//!
//! `TenantStats` is [`crate::stats::TenantStats`] as JSON: `{"tenant", "requests",
//! "errors", "read_bytes", "write_bytes", "in_flight", "sessions", "by_op": {op: n},
//! "errors_by_status": {status: n}, "latency": {"count", "sum_s", "buckets": ..}}`.
//! Latency at the proxy runs from a request's decoding to its answer (QoS wait
//! excluded). Counters start at 0 when the proxy starts and only grow (except the
//! in-flight gauges). The socket has no authentication of its own: its file's
//! permissions decide who may connect (as SPDK's).

use crate::server::Server;
use crate::stats::TenantStats;
use pov_jsonrpc::{dispatch, params, GetMethodsOpts, Handler, NoOpts, RpcError, Service};
use serde::Deserialize;
use serde_json::{json, Value};

/// Every method with its handler, in the order `rpc_get_methods` lists them.
pub fn methods() -> Vec<(&'static str, Handler<Server>)> {
    let mut all: Vec<(&'static str, Handler<Server>)> = vec![
        ("rpc_get_methods", rpc_get_methods),
        ("rpc_get_method_help", rpc_get_method_help),
        ("proxy_get_stats", proxy_get_stats),
        ("proxy_get_tenants", proxy_get_tenants),
        ("proxy_get_volumes", proxy_get_volumes),
    ];
    all.extend(pov_jsonrpc::reactors::methods::<Server>());
    all.extend(pov_jsonrpc::common::methods::<Server>());
    all
}

impl Service for Server {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        dispatch(self, &methods(), method, params)
    }
}

impl pov_jsonrpc::reactors::Reactors for Server {
    fn reactors(&self) -> &[pov_runtime::ReactorHandle] {
        Server::reactors(self)
    }
}

/// One line of help per method of this module (`rpc_get_method_help`, `pov-rpc -s
/// SOCK help METHOD`).
pub const HELP: &[(&str, &str)] = &[
    ("rpc_get_methods", "current?, include_aliases? (both ignored) → every method's name"),
    ("rpc_get_method_help", "name? → {name, help} of that method, or the list of all"),
    ("proxy_get_stats", "→ {listen, backend, server: {frames, bad_frames, denied, connections_open, …}, tenants: [TenantStats], volumes: [TenantStats], qos}"),
    ("proxy_get_tenants", "name? → [{tenant, requests, errors, read_bytes, write_bytes, in_flight, by_op, errors_by_status, latency}] (-19: no counters for name)"),
    ("proxy_get_volumes", "name? → the same for plain volumes (tenant holds the volume's name)"),
];

fn rpc_get_method_help(_s: &Server, p: Option<Value>) -> Result<Value, RpcError> {
    pov_jsonrpc::common::method_help(&[HELP, pov_jsonrpc::common::HELP, pov_jsonrpc::reactors::HELP], p)
}

fn rpc_get_methods(_s: &Server, p: Option<Value>) -> Result<Value, RpcError> {
    let _: GetMethodsOpts = params(p)?;
    Ok(json!(methods().into_iter().map(|(n, _)| n).collect::<Vec<_>>()))
}

fn proxy_get_stats(s: &Server, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    let mut v = s.stats_json();
    v["listen"] = json!(s.local_addr());
    v["backend"] = json!(s.backend_kind());
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOpts {
    #[serde(default)]
    name: Option<String>,
}

/// `list`, or only the entry named `o.name` (`-19` if there is none).
fn select(list: Vec<TenantStats>, o: NameOpts, what: &str) -> Result<Value, RpcError> {
    let Some(name) = o.name else { return Ok(json!(list)) };
    let one: Vec<TenantStats> = list.into_iter().filter(|t| t.tenant == name).collect();
    if one.is_empty() {
        return Err(RpcError::not_found(format!("no {what} named {name:?} has counters (none of its requests came here)")));
    }
    Ok(json!(one))
}

fn proxy_get_tenants(s: &Server, p: Option<Value>) -> Result<Value, RpcError> {
    select(s.tenant_stats(), params(p)?, "tenant")
}

fn proxy_get_volumes(s: &Server, p: Option<Value>) -> Result<Value, RpcError> {
    select(s.volume_stats(), params(p)?, "volume")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_help_line() {
        let names: Vec<&str> = methods().into_iter().map(|(n, _)| n).collect();
        let mut helped: Vec<&str> =
            [HELP, pov_jsonrpc::common::HELP, pov_jsonrpc::reactors::HELP].concat().into_iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        helped.sort_unstable();
        assert_eq!(sorted, helped);
    }
}
