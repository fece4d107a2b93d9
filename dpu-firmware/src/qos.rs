//! Tenants' QoS policies (paper §4.5): `pov_tenant_set_qos`, `pov_tenant_get_qos` and
//! `pov_tenant_clear_qos`, over the daemon-wide [`bdev_pov::qos::QosTable`] every PoV
//! device's scheduler reads (`pov_runtime::qos`).
//!
//! `pov_tenant_set_qos {"name": TENANT, "class": "lc"|"bc", "weight": 100,
//! "reservation_ios_per_sec": 0, "reservation_mbytes_per_sec": 0, "rw_ios_per_sec": 0,
//! "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0,
//! "latency_target_us": N, "latency_percentile": 99}` (all but
//! `name` and `class` optional; 0 = none) sets or replaces the policy; the tenant must
//! exist. A tenant without a policy is BC with weight 100 and no limits, so a host's
//! latency-critical queue is served as LC only for a tenant the operator made `"lc"`.
//! `save_config` writes each policy after the tenants; deleting a tenant drops its
//! policy.
//!
//! `pov_qos_set_options {"enabled": true, "bc_in_flight_kib": 4096}` (both optional;
//! omitted ones keep their value) sets the daemon's [`QosOptions`]: the bound on each
//! device's bandwidth-critical bytes at its proxies (at once), and whether devices
//! created from now on schedule by QoS at all (`false`: arrival order, for A/B
//! measurements). `pov_qos_get_options` shows them; `save_config` writes them before
//! the policies when they differ from the defaults.

use crate::daemon::{Daemon, DaemonError};
use crate::rpc::{params, Handler, RpcError};
use bdev_pov::qos::{QosOptions, TenantQos};
use serde_json::{json, Value};

/// The QoS methods.
pub const METHODS: &[(&str, Handler)] = &[
    ("pov_tenant_set_qos", pov_tenant_set_qos),
    ("pov_tenant_get_qos", pov_tenant_get_qos),
    ("pov_tenant_clear_qos", pov_tenant_clear_qos),
    ("pov_qos_set_options", pov_qos_set_options),
    ("pov_qos_get_options", pov_qos_get_options),
];

impl Daemon {
    /// Sets tenant `name`'s QoS policy.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] for an unknown tenant, [`DaemonError::Invalid`] for a
    /// policy out of range (the message names the field).
    pub fn tenant_set_qos(&self, name: &str, qos: TenantQos) -> Result<(), DaemonError> {
        if !self.tenants().exists(name) {
            return Err(DaemonError::NotFound { kind: "tenant", name: name.to_string() });
        }
        log::info!("tenant {name}: QoS {}", json!(qos));
        self.qos().set(name, qos).map_err(DaemonError::Invalid)
    }
}

/// `pov_qos_set_options` (when not the defaults), then one `pov_tenant_set_qos` call
/// per policy of an existing tenant.
pub(crate) fn save_config(d: &Daemon) -> Vec<Value> {
    // The options only when they differ from the defaults (as SPDK leaves out unset
    // `*_set_options`), so a saved configuration follows a newer default.
    let o = d.qos().options();
    let options = (o != QosOptions::default()).then(|| json!({ "method": "pov_qos_set_options", "params": o }));
    options
        .into_iter()
        .chain(d.qos().list().into_iter().filter(|(name, _)| d.tenants().exists(name)).map(|(name, q)| {
            let mut p = json!(q);
            p["name"] = json!(name);
            json!({ "method": "pov_tenant_set_qos", "params": p })
        }))
        .collect()
}

fn pov_qos_set_options(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let mut now = json!(d.qos().options());
    match p {
        Some(Value::Object(o)) => {
            for (k, v) in o {
                now[k] = v;
            }
        }
        None => {}
        Some(_) => return Err(RpcError::invalid_params("expected an object: {\"enabled\": BOOL, \"bc_in_flight_kib\": N}")),
    }
    let o: QosOptions = serde_json::from_value(now).map_err(|e| RpcError::invalid_params(format!("invalid parameters: {e}")))?;
    d.qos().set_options(o).map_err(RpcError::invalid_params)?;
    log::info!("QoS options {}", json!(o));
    Ok(json!(true))
}

fn pov_qos_get_options(d: &Daemon, _p: Option<Value>) -> Result<Value, RpcError> {
    Ok(json!(d.qos().options()))
}

fn pov_tenant_set_qos(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let mut obj = match p {
        Some(Value::Object(o)) => o,
        _ => return Err(RpcError::invalid_params("expected an object with \"name\" and \"class\"")),
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) => n,
        _ => return Err(RpcError::invalid_params("\"name\" (the tenant) is required")),
    };
    if !matches!(obj.get("class").and_then(Value::as_str), Some("lc" | "bc")) {
        return Err(RpcError::invalid_params("\"class\" is required: \"lc\" (latency-critical) or \"bc\" (bandwidth-critical)"));
    }
    let qos: TenantQos =
        serde_json::from_value(Value::Object(obj)).map_err(|e| RpcError::invalid_params(format!("invalid parameters: {e}")))?;
    d.tenant_set_qos(&name, qos)?;
    Ok(json!(true))
}

/// Every policy set (`[{"name", ...policy}]`), or tenant `name`'s (its default shown
/// as `{"name", "class": "bc", "weight": 100, "default": true}`).
fn pov_tenant_get_qos(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: crate::daemon::MaybeNameOpts = params(p)?;
    let show = |name: &str, q: Option<TenantQos>| {
        let mut v = match q {
            Some(q) => json!(q),
            None => json!({ "class": "bc", "weight": 100, "default": true }),
        };
        v["name"] = json!(name);
        v
    };
    match o.name {
        Some(n) if !d.tenants().exists(&n) => Err(DaemonError::NotFound { kind: "tenant", name: n }.into()),
        Some(n) => Ok(show(&n, d.qos().get(&n))),
        None => Ok(Value::Array(d.qos().list().into_iter().map(|(n, q)| show(&n, Some(q))).collect())),
    }
}

fn pov_tenant_clear_qos(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: crate::daemon::NameOpts = params(p)?;
    if !d.tenants().exists(&o.name) {
        return Err(DaemonError::NotFound { kind: "tenant", name: o.name }.into());
    }
    d.qos().clear(&o.name);
    Ok(json!(true))
}
