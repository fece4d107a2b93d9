//! Which peer may act for which tenant and volume: the enrollment (`pov-proxy
//! --enrolled FILE`) and the per-connection [`Access`] every request is checked
//! against before it reaches a backend.
//!
//! **Identities.** A DPU is authenticated by the TLS handshake (`tls:` listener,
//! certificates signed by the CA given with `--tls-ca`). Its *identity* is a DNS name
//! in its certificate's subjectAltName (`scripts/dev-ca DIR NAME` issues `DNS:NAME`);
//! the subject CN is not used (it is not bound by modern verifiers, and a certificate
//! may carry several names). A certificate valid for no enrolled name is authenticated
//! but not enrolled: its connection is kept and every request is refused with
//! [`Status::Permission`], so the DPU and its host see why. A certificate valid for
//! more than one enrolled name (a wildcard or several SAN entries) is refused the same
//! way as ambiguous: the CA should issue exactly one name per DPU.
//!
//! **The file** (JSON, read at start-up; unknown fields are errors):
//!
//! ```json
//! {
//!   "dpus": {
//!     "dpu-a": { "tenants": ["acme", "other"], "volumes": ["vol1"] },
//!     "dpu-lab": { "tenants": ["*"], "volumes": ["*"] }
//!   }
//! }
//! ```
//!
//! `tenants` lists the tenant namespaces (file operations) the DPU may act for,
//! `volumes` the plain volumes (ops 16–19, whose frames name the volume in the tenant
//! field, `docs/protocol.md` "Plain volumes") it may open, read, write and flush; both
//! default to none, and `"*"` alone means every name. DPU names are DNS names
//! (compared case-insensitively), tenant and volume names follow the tenant-name
//! rules.
//!
//! **Checks.** [`Access::allows`] looks at the operation and the tenant field only, so
//! a refused request is answered before its path is even resolved; refusals are
//! counted ([`crate::stats::ServerStats::denied`]) and logged (rate-limited), never
//! executed.

use pov_proto::wire::ProxyRequest;
use pov_runtime::transport::PeerIdentity;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an enrollment file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollmentError {
    /// The file cannot be read.
    #[error("cannot read the enrollment file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the documented shape.
    #[error("bad enrollment file {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A name in the file breaks its rules.
    #[error("bad enrollment file {}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which name and what is wrong.
        why: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    dpus: BTreeMap<String, GrantFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
}

/// A set of tenant or volume names, or every name (`"*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// Every name.
    Any,
    /// These names only.
    Only(BTreeSet<String>),
}

impl Names {
    fn parse(list: Vec<String>, what: &str, dpu: &str) -> Result<Names, String> {
        if list.iter().any(|n| n == "*") {
            if list.len() > 1 {
                return Err(format!("dpu {dpu:?}: {what}: \"*\" (every name) must stand alone"));
            }
            return Ok(Names::Any);
        }
        let mut set = BTreeSet::new();
        for n in list {
            if !pov_proto::path::valid_tenant_name(&n) {
                return Err(format!("dpu {dpu:?}: {what}: {n:?} is not a valid tenant or volume name"));
            }
            if !set.insert(n.clone()) {
                return Err(format!("dpu {dpu:?}: {what}: {n:?} listed twice"));
            }
        }
        Ok(Names::Only(set))
    }

    /// Whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Names::Any => true,
            Names::Only(s) => s.contains(name),
        }
    }
}

/// What one enrolled DPU may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Tenant namespaces (file operations).
    pub tenants: Names,
    /// Plain volumes (volume operations).
    pub volumes: Names,
}

/// The enrolled DPUs: identity (DNS name, lower case) → what it may act for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrollment {
    dpus: BTreeMap<String, Arc<Grant>>,
}

/// Whether `s` is a DNS name (labels of letters, digits and `-`, not starting or
/// ending with `-`, dot-separated; not all digits, so never an IPv4 address).
fn valid_dns_name(s: &str) -> bool {
    s.len() <= 253
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Enrollment {
    /// Reads and checks an enrollment file (format in the module docs).
    ///
    /// # Errors
    /// [`EnrollmentError`] naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<Enrollment, EnrollmentError> {
        let text = std::fs::read(path).map_err(|source| EnrollmentError::Read { path: path.into(), source })?;
        let file: File = serde_json::from_slice(&text).map_err(|source| EnrollmentError::Json { path: path.into(), source })?;
        Enrollment::from_file(file).map_err(|why| EnrollmentError::Invalid { path: path.into(), why })
    }

    /// Parses enrollment JSON (for tests and tools; [`Enrollment::load`] for files).
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(json: &str) -> Result<Enrollment, String> {
        let file: File = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Enrollment::from_file(file)
    }

    fn from_file(file: File) -> Result<Enrollment, String> {
        let mut dpus = BTreeMap::new();
        for (name, g) in file.dpus {
            if !valid_dns_name(&name) {
                return Err(format!("dpu {name:?}: an identity is a DNS name (its certificate's subjectAltName)"));
            }
            let grant = Grant {
                tenants: Names::parse(g.tenants, "tenants", &name)?,
                volumes: Names::parse(g.volumes, "volumes", &name)?,
            };
            if dpus.insert(name.to_ascii_lowercase(), Arc::new(grant)).is_some() {
                return Err(format!("dpu {name:?} listed twice (names compare case-insensitively)"));
            }
        }
        Ok(Enrollment { dpus })
    }

    /// Number of enrolled DPUs.
    pub fn len(&self) -> usize {
        self.dpus.len()
    }

    /// Whether no DPU is enrolled.
    pub fn is_empty(&self) -> bool {
        self.dpus.is_empty()
    }

    /// The access of a connection whose peer presented `identity` (`None`: the
    /// transport authenticates nobody, which an enrollment never trusts).
    pub fn access_for(&self, identity: Option<&PeerIdentity>) -> Access {
        let Some(id) = identity else {
            return Access::Denied { why: "the connection is not authenticated (no TLS client certificate)".into() };
        };
        let matches: Vec<(&String, &Arc<Grant>)> = self.dpus.iter().filter(|(name, _)| id.has_dns_name(name)).collect();
        match matches.as_slice() {
            [(name, grant)] => Access::Enrolled { name: (*name).clone(), grant: Arc::clone(grant) },
            [] => Access::Denied { why: "its certificate names no enrolled DPU".into() },
            many => Access::Denied {
                why: format!(
                    "its certificate is valid for several enrolled DPUs ({}): ambiguous",
                    many.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
}

/// What the peer of one connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anything: the proxy trusts whoever connects (plain TCP, development only).
    Open,
    /// An enrolled DPU: what its grant allows.
    Enrolled {
        /// Its identity (the enrolled DNS name).
        name: String,
        /// What it may act for.
        grant: Arc<Grant>,
    },
    /// Nothing: authenticated but not enrolled, ambiguous, or not authenticated.
    Denied {
        /// Why, for the log.
        why: String,
    },
}

impl Access {
    /// Whether the peer may make `req`: volume operations by the volume named in the
    /// tenant field, every other operation by its tenant.
    pub fn allows(&self, req: &ProxyRequest) -> bool {
        match self {
            Access::Open => true,
            Access::Denied { .. } => false,
            Access::Enrolled { grant, .. } if req.op.is_volume() => grant.volumes.contains(&req.tenant),
            Access::Enrolled { grant, .. } => grant.tenants.contains(&req.tenant),
        }
    }

    /// Whether every request is allowed (no check needed).
    pub fn is_open(&self) -> bool {
        matches!(self, Access::Open)
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Open => f.write_str("unauthenticated peer, trusted for every tenant"),
            Access::Enrolled { name, .. } => write!(f, "enrolled DPU {name}"),
            Access::Denied { why } => write!(f, "peer refused for every request: {why}"),
        }
    }
}

/// Whom a server serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Peers {
    /// Whoever connects, for every tenant and volume (plain TCP, development only:
    /// the server logs a warning).
    #[default]
    Anyone,
    /// Only enrolled DPUs, each for what its grant allows; needs a listener that
    /// authenticates its peers (`tls:`).
    Enrolled(Arc<Enrollment>),
}

impl Peers {
    /// The access of a connection whose transport authenticated `identity`.
    pub fn access_for(&self, identity: Option<&PeerIdentity>) -> Access {
        match self {
            Peers::Anyone => Access::Open,
            Peers::Enrolled(e) => e.access_for(identity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pov_proto::io::Op;

    #[test]
    fn enrollment_files_parse_and_check_names() {
        let e = Enrollment::parse(
            r#"{"dpus": {"DPU-a": {"tenants": ["acme", "other"], "volumes": ["vol1"]}, "lab.dpu": {"tenants": ["*"]}}}"#,
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        let a = &e.dpus["dpu-a"];
        assert!(a.tenants.contains("acme") && a.tenants.contains("other") && !a.tenants.contains("evil"));
        assert!(a.volumes.contains("vol1") && !a.volumes.contains("acme"));
        let lab = &e.dpus["lab.dpu"];
        assert_eq!((lab.tenants.clone(), lab.volumes.clone()), (Names::Any, Names::Only(BTreeSet::new())));
        assert!(Enrollment::parse(r#"{"dpus": {}}"#).unwrap().is_empty());
        for bad in [
            r#"{}"#,
            r#"{"dpus": {"a": {"tenant": ["x"]}}}"#,
            r#"{"dpus": {"a": {"tenants": ["x"]}}, "extra": 1}"#,
            r#"{"dpus": {"bad name": {}}}"#,
            r#"{"dpus": {"-a": {}}}"#,
            r#"{"dpus": {"10.0.0.5": {}}}"#,
            r#"{"dpus": {"a": {"tenants": ["../x"]}}}"#,
            r#"{"dpus": {"a": {"tenants": ["x", "x"]}}}"#,
            r#"{"dpus": {"a": {"volumes": ["*", "x"]}}}"#,
            r#"{"dpus": {"a": {}, "A": {}}}"#,
            r#"[1, 2]"#,
            "not json",
        ] {
            assert!(Enrollment::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn access_checks_tenants_and_volumes_separately() {
        let grant = Arc::new(Grant {
            tenants: Names::Only(["acme".to_string()].into()),
            volumes: Names::Only(["vol1".to_string()].into()),
        });
        let a = Access::Enrolled { name: "dpu-a".into(), grant };
        let req = |op, t: &str| ProxyRequest::new(op, t, if op == Op::VolumeRead { "" } else { "f" });
        assert!(a.allows(&req(Op::Read, "acme")));
        assert!(!a.allows(&req(Op::Read, "other")));
        assert!(!a.allows(&req(Op::Read, "vol1")), "a volume grant is not a tenant grant");
        assert!(a.allows(&req(Op::VolumeRead, "vol1")));
        assert!(!a.allows(&req(Op::VolumeRead, "acme")), "a tenant grant is not a volume grant");
        assert!(Access::Open.allows(&req(Op::Remove, "anyone")) && Access::Open.is_open());
        let d = Access::Denied { why: "x".into() };
        assert!(!d.allows(&req(Op::Stat, "acme")) && !d.is_open());
        assert!(Enrollment::default().access_for(None).to_string().contains("not authenticated"));
    }
}
