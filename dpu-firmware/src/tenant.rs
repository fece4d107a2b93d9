//! Tenants (`pov_tenant_create`, `pov_tenant_delete`, `pov_tenant_get_tenants`): the
//! daemon-wide [`bdev_pov::TenantTable`] every PoV device authenticates sessions
//! against.
//!
//! A tenant's secret is a key of the [keyring](crate::keyring): `pov_tenant_create
//! {"name", "key"}` copies the key's bytes into the tenant table, and the key cannot be
//! removed while the tenant exists. The secret itself never appears in a call, a
//! listing or `save_config` (which writes `{"name", "key"}` after the keyring's
//! `keyring_file_add_key` calls).
//!
//! The former `{"name", "secret"}` form is refused with a message saying what to do
//! instead: a secret in JSON-RPC parameters ends up on command lines (`pov-rpc METHOD
//! '{...}'`, visible in `ps`), in shell histories and in saved configurations, and a
//! tenant without a key file cannot be written out as a replayable call without writing
//! its secret.

use crate::daemon::{Daemon, DaemonError, NameOpts};
use crate::keyring::Keyring;
use crate::rpc::{params, Handler, NoOpts, RpcError};
use bdev_pov::TenantTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroize;

/// Parameters of `pov_tenant_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCreateOpts {
    /// Tenant name: 1-63 characters of `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// Name of the keyring key (`keyring_file_add_key`) holding the shared secret the
    /// tenant's applications authenticate with (1-255 bytes).
    pub key: String,
}

/// The tenant methods.
pub const METHODS: &[(&str, Handler)] = &[
    ("pov_tenant_create", pov_tenant_create),
    ("pov_tenant_delete", pov_tenant_delete),
    ("pov_tenant_get_tenants", pov_tenant_get_tenants),
];

/// Why `pov_tenant_create {"name", "secret"}` is refused.
pub const SECRET_PARAM_REMOVED: &str = "pov_tenant_create no longer takes \"secret\" (secrets never travel in RPC \
     parameters): write the secret to a file of mode 0600, add it with keyring_file_add_key {\"name\": KEY, \"path\": \
     FILE}, then call pov_tenant_create {\"name\": TENANT, \"key\": KEY}";

impl Daemon {
    /// Adds a tenant whose secret is the keyring key `opts.key`.
    ///
    /// # Errors
    /// [`DaemonError::Exists`] if the tenant exists, [`DaemonError::NotFound`] if the
    /// key does not, [`DaemonError::Invalid`] for a bad name.
    pub fn tenant_create(&self, opts: &TenantCreateOpts) -> Result<(), DaemonError> {
        self.keyring()
            .use_key(&opts.key, &opts.name, |secret| Ok::<_, DaemonError>(self.tenants().create(&opts.name, secret)?))?;
        log::info!("tenant {} created with key {}", opts.name, opts.key);
        Ok(())
    }

    /// Removes a tenant (its key stays in the keyring); its open sessions are refused
    /// at their next heartbeat.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] if there is no such tenant.
    pub fn tenant_delete(&self, name: &str) -> Result<(), DaemonError> {
        self.keyring().release(name, || Ok::<_, DaemonError>(self.tenants().delete(name)?))?;
        self.qos().clear(name);
        log::info!("tenant {name} deleted");
        Ok(())
    }

    /// Tenant names, sorted (secrets are never shown).
    pub fn tenant_names(&self) -> Vec<String> {
        names(self.tenants())
    }
}

/// The tenant names of `tenants`; the secret copies [`TenantTable::list`] makes are
/// wiped at once.
fn names(tenants: &TenantTable) -> Vec<String> {
    tenants
        .list()
        .into_iter()
        .map(|(n, mut secret)| {
            secret.zeroize();
            n
        })
        .collect()
}

/// The `pov_tenant_create` calls that recreate `tenants`: each names its key, never its
/// secret. A tenant put into the table without a key (through the library API, not
/// RPC) cannot be written without its secret and is left out, with a warning.
pub(crate) fn save_config(tenants: &TenantTable, keyring: &Keyring) -> Vec<Value> {
    names(tenants)
        .into_iter()
        .filter_map(|name| match keyring.key_of(&name) {
            Some(key) => Some(json!({ "method": "pov_tenant_create", "params": TenantCreateOpts { name, key } })),
            None => {
                log::warn!("save_config: tenant {name} has no keyring key and is not saved");
                None
            }
        })
        .collect()
}

fn pov_tenant_create(d: &Daemon, mut p: Option<Value>) -> Result<Value, RpcError> {
    // The removed form: wipe the secret we were sent (the copies serde_json made while
    // parsing the request are out of reach) and say what to do instead.
    if let Some(secret) = p.as_mut().and_then(Value::as_object_mut).and_then(|o| o.remove("secret")) {
        if let Value::String(mut s) = secret {
            s.zeroize();
        }
        return Err(RpcError::invalid_params(SECRET_PARAM_REMOVED));
    }
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
    let keyring = d.keyring();
    Ok(Value::Array(d.tenant_names().into_iter().map(|n| json!({ "name": n, "key": keyring.key_of(&n) })).collect()))
}
