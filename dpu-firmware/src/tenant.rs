//! Tenants (`pov_tenant_create`, `pov_tenant_delete`, `pov_tenant_get_tenants`): the
//! daemon-wide [`bdev_pov::TenantTable`] every PoV device authenticates sessions
//! against.

use crate::daemon::{Daemon, DaemonError, NameOpts};
use crate::rpc::{params, Handler, NoOpts, RpcError};
use bdev_pov::TenantTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Parameters of `pov_tenant_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCreateOpts {
    /// Tenant name: 1-63 characters of `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// Shared secret the tenant's applications authenticate with (1-255 bytes).
    pub secret: String,
}

/// The tenant methods.
pub const METHODS: &[(&str, Handler)] = &[
    ("pov_tenant_create", pov_tenant_create),
    ("pov_tenant_delete", pov_tenant_delete),
    ("pov_tenant_get_tenants", pov_tenant_get_tenants),
];

impl Daemon {
    /// Adds a tenant.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] if it exists, [`DaemonError::Invalid`] for a bad name or
    /// secret.
    pub fn tenant_create(&self, opts: &TenantCreateOpts) -> Result<(), DaemonError> {
        self.tenants().create(&opts.name, opts.secret.as_bytes())?;
        log::info!("tenant {} created", opts.name);
        Ok(())
    }

    /// Removes a tenant; its open sessions are refused at their next heartbeat.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such tenant.
    pub fn tenant_delete(&self, name: &str) -> Result<(), DaemonError> {
        self.tenants().delete(name)?;
        log::info!("tenant {name} deleted");
        Ok(())
    }

    /// Tenant names, sorted (secrets are never shown).
    pub fn tenant_names(&self) -> Vec<String> {
        self.tenants().list().into_iter().map(|(n, _)| n).collect()
    }
}

/// The `pov_tenant_create` calls that recreate `tenants` (secrets included).
pub(crate) fn save_config(tenants: &TenantTable) -> Vec<Value> {
    tenants
        .list()
        .into_iter()
        .map(|(name, secret)| {
            let params = TenantCreateOpts { name, secret: String::from_utf8_lossy(&secret).into_owned() };
            json!({ "method": "pov_tenant_create", "params": params })
        })
        .collect()
}

fn pov_tenant_create(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: TenantCreateOpts = params(p)?;
    d.tenant_create(&o)?;
    Ok(json!(true))
}

fn pov_tenant_delete(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let o: NameOpts = params(p)?;
    d.tenant_delete(&o.name)?;
    Ok(json!(true))
}

fn pov_tenant_get_tenants(d: &Daemon, p: Option<Value>) -> Result<Value, RpcError> {
    let _: NoOpts = params(p)?;
    Ok(Value::Array(d.tenant_names().into_iter().map(|n| json!({ "name": n })).collect()))
}
