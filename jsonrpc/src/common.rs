//! What every daemon's control socket has ([`methods`]): its version, and its logging
//! (started by [`init_logging`] from `--log-level`) changed at run time.
//!
//! | method | params | result |
//! |---|---|---|
//! | `spdk_get_version` | — | `{"version": "PoV vX.Y.Z", "fields": {"major", "minor", "patch", "suffix"}}` (SPDK's shape) |
//! | `log_set_level`, `log_set_print_level` | `level` (SPDK's `ERROR`, `WARNING`, `NOTICE`, `INFO`, `DEBUG`, or `TRACE`, `DISABLED`; any case) | `true` |
//! | `log_get_level`, `log_get_print_level` | — | the level's name |
//!
//! SPDK keeps two levels (what is logged, what is printed); a PoV daemon logs only to
//! standard error, so both pairs act on the one level. `NOTICE` maps to `INFO`.

use crate::{params, Handler, NoOpts, RpcError};
use log::LevelFilter;
use serde::Deserialize;
use serde_json::{json, Value};

/// Installs the logger of a daemon: lines on standard error with a timestamp in
/// microseconds (UTC, RFC 3339), `level` as the run-time maximum (`log::set_max_level`,
/// which `log_set_level` changes later). Without `RUST_LOG` the logger itself passes
/// everything, so `log_set_level` can raise the level; `RUST_LOG`, when set, adds
/// per-module filters, wins where both speak and bounds what the level can be raised
/// to. A second call does nothing.
pub fn init_logging(level: LevelFilter) {
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    let base = if rust_log { level } else { LevelFilter::Trace };
    let logger = env_logger::Builder::new().filter_level(base).parse_default_env().format_timestamp_micros().build();
    let max = if rust_log { logger.filter() } else { level };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// One line of help per method of this module (`rpc_get_method_help`).
pub const HELP: &[(&str, &str)] = &[
    ("spdk_get_version", "→ {version: \"PoV vX.Y.Z\", fields: {major, minor, patch, suffix}}"),
    ("log_set_level", "level (ERROR, WARNING, NOTICE, INFO, DEBUG, TRACE, DISABLED) → true: the daemon's log level from now on"),
    ("log_get_level", "→ the log level's name"),
    ("log_set_print_level", "as log_set_level (one log output: the same level)"),
    ("log_get_print_level", "as log_get_level"),
];

/// Answers `rpc_get_method_help` from a daemon's help `tables`: with `name`, `{name,
/// help}` of that method (-19 if none); without, `[{name, help}]` of every method.
///
/// # Errors
/// -32602 for bad parameters, -19 for an unknown method.
pub fn method_help(tables: &[&[(&'static str, &'static str)]], p: Option<Value>) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HelpOpts {
        #[serde(default)]
        name: Option<String>,
    }
    let o: HelpOpts = params(p)?;
    let all = tables.iter().flat_map(|t| t.iter());
    match o.name {
        Some(n) => all
            .into_iter()
            .find(|(m, _)| *m == n)
            .map(|(m, h)| json!({ "name": m, "help": h }))
            .ok_or_else(|| RpcError::not_found(format!("no method named {n:?} (rpc_get_methods lists them)"))),
        None => Ok(Value::Array(all.map(|(m, h)| json!({ "name": m, "help": h })).collect())),
    }
}

/// The methods of this module, for any daemon's method table.
pub fn methods<C>() -> [(&'static str, Handler<C>); 5] {
    [
        ("spdk_get_version", spdk_get_version::<C>),
        ("log_set_level", set_level::<C>),
        ("log_get_level", get_level::<C>),
        ("log_set_print_level", set_level::<C>),
        ("log_get_print_level", get_level::<C>),
    ]
}

fn spdk_get_version<C>(_: &C, p: Option<Value>) -> Result<Value, RpcError> {
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

/// SPDK's log level names (and `log`'s) → `log`'s filters.
pub fn level_of(name: &str) -> Option<LevelFilter> {
    Some(match name.to_ascii_uppercase().as_str() {
        "DISABLED" | "OFF" => LevelFilter::Off,
        "ERROR" => LevelFilter::Error,
        "WARNING" | "WARN" => LevelFilter::Warn,
        "NOTICE" | "INFO" => LevelFilter::Info,
        "DEBUG" => LevelFilter::Debug,
        "TRACE" => LevelFilter::Trace,
        _ => return None,
    })
}

/// The SPDK name of `l` (`DISABLED` for off).
pub fn level_name(l: LevelFilter) -> &'static str {
    match l {
        LevelFilter::Off => "DISABLED",
        LevelFilter::Error => "ERROR",
        LevelFilter::Warn => "WARNING",
        LevelFilter::Info => "INFO",
        LevelFilter::Debug => "DEBUG",
        LevelFilter::Trace => "TRACE",
    }
}

fn set_level<C>(_: &C, p: Option<Value>) -> Result<Value, RpcError> {
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

fn get_level<C>(_: &C, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    Ok(json!(level_name(log::max_level())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_round_trip_and_spdk_names_are_accepted() {
        for l in [LevelFilter::Off, LevelFilter::Error, LevelFilter::Warn, LevelFilter::Info, LevelFilter::Debug] {
            assert_eq!(level_of(level_name(l)), Some(l));
        }
        assert_eq!(level_of("notice"), Some(LevelFilter::Info));
        assert_eq!(level_of("verbose"), None);
    }

    #[test]
    fn set_then_get_and_bad_names_are_refused() {
        let m = methods::<()>();
        let (set, get) = (m[1].1, m[2].1);
        let before = log::max_level();
        assert_eq!(set(&(), Some(json!({"level": "debug"}))).unwrap(), json!(true));
        assert_eq!(get(&(), None).unwrap(), json!("DEBUG"));
        let e = set(&(), Some(json!({"level": "verbose"}))).unwrap_err();
        assert!(e.code == crate::codes::INVALID_PARAMS && e.message.contains("verbose"), "{e}");
        assert_eq!(get(&(), None).unwrap(), json!("DEBUG"));
        assert!(set(&(), Some(json!({"level": "info", "extra": 1}))).is_err());
        log::set_max_level(before);
        let v = m[0].1(&(), None).unwrap();
        assert_eq!(v["version"], format!("PoV v{}", env!("CARGO_PKG_VERSION")));
        assert!(v["fields"]["major"].is_u64() && v["fields"]["suffix"].is_string(), "{v}");
    }
}
