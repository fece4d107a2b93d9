//! Tenants and their secrets, shared by every device of a daemon.

use pov_proto::crypto::{macs_equal, open_proof, SessionKeys, MAC_LEN, NONCE_LEN};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

/// Tenant name → secret. Cloning shares the table. Written by the control plane
/// (JSON-RPC), read when a session opens. The stored secrets are wiped from memory
/// (`zeroize`) when a tenant is deleted or the table dropped; the copies [`list`]
/// returns are the caller's to wipe.
///
/// [`list`]: TenantTable::list
#[derive(Clone, Default)]
pub struct TenantTable {
    inner: Arc<RwLock<BTreeMap<String, Zeroizing<Vec<u8>>>>>,
}

/// Shows the tenant names only, never a secret.
impl std::fmt::Debug for TenantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("TenantTable").field("tenants", &t.keys().collect::<Vec<_>>()).finish()
    }
}

/// Why a tenant could not be created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    /// Name not 1..=63 bytes of `[A-Za-z0-9_.-]`.
    #[error("invalid tenant name {0:?}: use 1-63 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    /// Secret empty or over 255 bytes.
    #[error("invalid secret: must be 1-255 bytes")]
    BadSecret,
    /// A tenant of that name exists.
    #[error("tenant {0:?} already exists")]
    Exists(String),
    /// No tenant of that name.
    #[error("tenant {0:?} does not exist")]
    NotFound(String),
}

impl TenantTable {
    /// Adds a tenant.
    pub fn create(&self, name: &str, secret: &[u8]) -> Result<(), TenantError> {
        if !pov_proto::path::valid_tenant_name(name) {
            return Err(TenantError::BadName(name.to_string()));
        }
        if secret.is_empty() || secret.len() > pov_proto::admin::MAX_SECRET {
            return Err(TenantError::BadSecret);
        }
        let mut t = self.inner.write().unwrap();
        if t.contains_key(name) {
            return Err(TenantError::Exists(name.to_string()));
        }
        t.insert(name.to_string(), Zeroizing::new(secret.to_vec()));
        Ok(())
    }

    /// Removes a tenant. Open sessions of that tenant are refused at their next
    /// heartbeat.
    pub fn delete(&self, name: &str) -> Result<(), TenantError> {
        self.inner.write().unwrap().remove(name).map(|_| ()).ok_or_else(|| TenantError::NotFound(name.to_string()))
    }

    /// `true` if `secret` is the tenant's secret (constant-time comparison).
    pub fn authenticate(&self, name: &str, secret: &[u8]) -> bool {
        let t = self.inner.read().unwrap();
        let Some(s) = t.get(name) else { return false };
        // `subtle` compares in time independent of where the bytes differ (a length
        // difference is not secret: lengths are 1-255 for every tenant).
        subtle::ConstantTimeEq::ct_eq(s.as_slice(), secret).into()
    }

    /// Checks an OpenSession proof ([`pov_proto::crypto::open_proof`]) against the
    /// tenant's secret, which never leaves the table; `false` for an unknown tenant.
    #[allow(clippy::too_many_arguments)]
    pub fn check_proof(
        &self,
        name: &str,
        nc: &[u8; NONCE_LEN],
        nd: &[u8; NONCE_LEN],
        pid: u32,
        grant_flags: u8,
        prefix: &str,
        proof: &[u8; MAC_LEN],
    ) -> bool {
        let t = self.inner.read().unwrap();
        let Some(s) = t.get(name) else { return false };
        macs_equal(&open_proof(s, name, nc, nd, pid, grant_flags, prefix), proof)
    }

    /// The keys of session `session_id` opened by the exchange `nc`/`nd`
    /// ([`SessionKeys::derive`]); `None` for an unknown tenant.
    pub fn session_keys(&self, name: &str, nc: &[u8; NONCE_LEN], nd: &[u8; NONCE_LEN], session_id: u64) -> Option<SessionKeys> {
        let t = self.inner.read().unwrap();
        t.get(name).map(|s| SessionKeys::derive(s, nc, nd, name, session_id))
    }

    /// `true` if the tenant exists.
    pub fn exists(&self, name: &str) -> bool {
        self.inner.read().unwrap().contains_key(name)
    }

    /// Every tenant with a copy of its secret (the caller wipes the copies).
    pub fn list(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.read().unwrap().iter().map(|(k, v)| (k.clone(), v.to_vec())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_auth_delete() {
        let t = TenantTable::default();
        t.create("acme", b"pw").unwrap();
        assert_eq!(t.create("acme", b"pw"), Err(TenantError::Exists("acme".into())));
        assert!(matches!(t.create("../x", b"pw"), Err(TenantError::BadName(_))));
        assert_eq!(t.create("b", b""), Err(TenantError::BadSecret));
        assert!(t.authenticate("acme", b"pw"));
        assert!(!t.authenticate("acme", b"pW"));
        assert!(!t.authenticate("acme", b"pw2"));
        assert!(!t.authenticate("nobody", b"pw"));
        let (nc, nd) = ([1u8; 32], [2u8; 32]);
        let proof = open_proof(b"pw", "acme", &nc, &nd, 7, 0, "");
        assert!(t.check_proof("acme", &nc, &nd, 7, 0, "", &proof));
        assert!(!t.check_proof("acme", &nc, &nd, 8, 0, "", &proof), "another PID");
        assert!(!t.check_proof("nobody", &nc, &nd, 7, 0, "", &proof));
        assert!(t.session_keys("acme", &nc, &nd, 1).is_some() && t.session_keys("nobody", &nc, &nd, 1).is_none());
        t.delete("acme").unwrap();
        assert!(!t.authenticate("acme", b"pw"));
        assert!(t.delete("acme").is_err());
    }

    #[test]
    fn debug_shows_names_never_secrets() {
        let t = TenantTable::default();
        t.create("acme", b"Sekr1t-xyz").unwrap();
        let shown = format!("{t:?}");
        assert!(shown.contains("acme") && !shown.contains("Sekr1t"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", b"Sekr1t-xyz".to_vec())), "{shown}");
    }
}
