//! Endpoints and the scheme → [`Connector`] registry.
//!
//! An [`Endpoint`] is `SCHEME:ADDRESS`, e.g. `tcp:10.0.0.5:4420`; a string without a
//! registered scheme prefix is a TCP address (`HOST:PORT`, IPv6 in brackets). Parsing
//! checks the syntax through the scheme's connector and does no IO (no DNS lookup),
//! so a device can refuse a bad endpoint when it is created.
//!
//! A [`Connector`] makes transports for one scheme: [`Connector::connect`] starts an
//! attempt and returns at once; the caller advances the [`Connecting`] attempt from its
//! poller and sleeps on [`Connecting::wait_for`] meanwhile, so that a peer that drops
//! packets never stalls a reactor. Built in: `tcp` ([`super::tcp::TcpConnector`]),
//! `tls` ([`super::tls::TlsConnector`], mutual TLS) and, with the `testing` feature,
//! `mem` (in-process listeners). Adding a transport is a
//! new file implementing [`Connector`] plus one line in `builtin()` (or a call to
//! [`register`] at start-up).

use super::{Listener, Transport, TransportError};
use crate::sys::Interest;
use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock, RwLock};

/// Makes transports for one endpoint scheme.
pub trait Connector: Send + Sync {
    /// The scheme, e.g. `"tcp"`.
    fn scheme(&self) -> &'static str;

    /// Checks the address part of an endpoint (after `SCHEME:`) without any IO.
    ///
    /// # Errors
    /// A message saying what is wrong (shown to the operator).
    fn check(&self, address: &str) -> Result<(), String>;

    /// Starts connecting to `ep`; never blocks (a name to resolve is resolved off the
    /// caller's thread).
    ///
    /// # Errors
    /// [`TransportError::Connect`] if the attempt fails at once (e.g. no socket).
    fn connect(&self, ep: &Endpoint) -> Result<Box<dyn Connecting>, TransportError>;

    /// Binds a listener on `address` (the part after `SCHEME:`; for TCP, port 0 picks a
    /// free port). May block briefly, e.g. to resolve a name: call it off the reactors.
    ///
    /// # Errors
    /// The bind error (`InvalidInput` for a malformed address).
    fn listen(&self, address: &str) -> std::io::Result<Box<dyn Listener>>;
}

/// A connection attempt in progress, advanced by its owner without blocking.
pub trait Connecting: Send {
    /// Advances the attempt: `Ok(Some(transport))` once connected, `Ok(None)` while it
    /// is still under way. After an error the attempt is over (drop it).
    ///
    /// # Errors
    /// [`TransportError::Connect`] (refused, unreachable, name not resolved).
    fn poll(&mut self) -> Result<Option<Box<dyn Transport>>, TransportError>;

    /// The descriptor and readiness the attempt waits for, to sleep on; `None` if it
    /// can make progress at once.
    fn wait_for(&self) -> Option<(RawFd, Interest)>;
}

/// Why an endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The string is empty.
    #[error("empty endpoint: use SCHEME:ADDRESS, e.g. tcp:HOST:PORT")]
    Empty,
    /// `SCHEME:` names no registered transport.
    #[error("endpoint {endpoint:?}: unknown transport scheme {scheme:?} (known: {known})")]
    UnknownScheme {
        /// The endpoint as given.
        endpoint: String,
        /// The scheme asked for.
        scheme: String,
        /// The registered schemes, comma separated.
        known: String,
    },
    /// The address part is malformed for its scheme.
    #[error("endpoint {endpoint:?}: {why}")]
    BadAddress {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        why: String,
    },
}

/// A checked `SCHEME:ADDRESS` endpoint with the connector that serves it. Compares,
/// prints and serializes as the string it was parsed from.
#[derive(Clone)]
pub struct Endpoint {
    text: String,
    /// Byte offset of the address part in `text`.
    address_at: usize,
    connector: Arc<dyn Connector>,
}

impl Endpoint {
    /// Parses and checks `s` (see the module docs). No IO.
    ///
    /// # Errors
    /// [`EndpointError`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Endpoint, EndpointError> {
        let (connector, address_at) = split_scheme(s)?;
        connector.check(&s[address_at..]).map_err(|why| EndpointError::BadAddress {
            endpoint: s.to_string(),
            why: format!("{}: {why}", connector.scheme()),
        })?;
        Ok(Endpoint { text: s.to_string(), address_at, connector })
    }

    /// The scheme, e.g. `"tcp"` (also for a bare `HOST:PORT`).
    pub fn scheme(&self) -> &'static str {
        self.connector.scheme()
    }

    /// The address part, e.g. `10.0.0.5:4420`.
    pub fn address(&self) -> &str {
        &self.text[self.address_at..]
    }

    /// The string the endpoint was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The connector that serves the endpoint's scheme.
    pub fn connector(&self) -> &dyn Connector {
        self.connector.as_ref()
    }

    /// Starts connecting (see [`Connector::connect`]); never blocks.
    ///
    /// # Errors
    /// As [`Connector::connect`].
    pub fn connect(&self) -> Result<Box<dyn Connecting>, TransportError> {
        self.connector.connect(self)
    }
}

/// The connector of `s`'s scheme and where its address part starts (see the module
/// docs: no registered scheme prefix means TCP).
fn split_scheme(s: &str) -> Result<(Arc<dyn Connector>, usize), EndpointError> {
    if s.is_empty() {
        return Err(EndpointError::Empty);
    }
    Ok(match s.split_once(':') {
        Some((scheme, rest)) => match connector(scheme) {
            Some(c) => (c, scheme.len() + 1),
            None if looks_like_scheme(scheme) && rest.contains(':') => {
                return Err(EndpointError::UnknownScheme {
                    endpoint: s.to_string(),
                    scheme: scheme.to_string(),
                    known: schemes().join(", "),
                })
            }
            None => (tcp_connector(), 0),
        },
        None => (tcp_connector(), 0),
    })
}

/// Binds a listener for `s` (`SCHEME:ADDRESS` as for [`Endpoint::parse`], but any
/// port, 0 included).
///
/// # Errors
/// `InvalidInput` for an unknown scheme; the connector's bind error.
pub fn listen_on(s: &str) -> std::io::Result<Box<dyn Listener>> {
    let (c, at) = split_scheme(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    c.listen(&s[at..])
}

fn looks_like_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase()) && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'+')
}

impl PartialEq for Endpoint {
    fn eq(&self, o: &Endpoint) -> bool {
        self.text == o.text
    }
}

impl Eq for Endpoint {}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({:?})", self.text)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Endpoint, EndpointError> {
        Endpoint::parse(s)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        let s = String::deserialize(d)?;
        Endpoint::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn builtin() -> Vec<Arc<dyn Connector>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn Connector>> = vec![Arc::new(super::tcp::TcpConnector)];
    v.push(Arc::new(super::tls::TlsConnector));
    #[cfg(any(test, feature = "testing"))]
    v.push(Arc::new(super::mem::MemConnector));
    v
}

fn registry() -> &'static RwLock<Vec<Arc<dyn Connector>>> {
    static R: OnceLock<RwLock<Vec<Arc<dyn Connector>>>> = OnceLock::new();
    R.get_or_init(|| RwLock::new(builtin()))
}

fn tcp_connector() -> Arc<dyn Connector> {
    connector("tcp").unwrap_or_else(|| Arc::new(super::tcp::TcpConnector))
}

/// The connector registered for `scheme`.
pub fn connector(scheme: &str) -> Option<Arc<dyn Connector>> {
    registry().read().unwrap_or_else(|e| e.into_inner()).iter().find(|c| c.scheme() == scheme).cloned()
}

/// Registers `c` for its scheme, replacing a connector registered before for it.
/// Endpoints parsed earlier keep the connector they were parsed with.
pub fn register(c: Arc<dyn Connector>) {
    let mut r = registry().write().unwrap_or_else(|e| e.into_inner());
    r.retain(|x| x.scheme() != c.scheme());
    r.push(c);
}

/// The registered schemes.
pub fn schemes() -> Vec<&'static str> {
    registry().read().unwrap_or_else(|e| e.into_inner()).iter().map(|c| c.scheme()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_check_without_io() {
        for good in ["tcp:127.0.0.1:4420", "127.0.0.1:4420", "tcp:[::1]:9", "localhost:4420", "tcp:proxy-1.example:1"] {
            let e = Endpoint::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(e.scheme(), "tcp");
            assert_eq!(e.to_string(), good);
            assert_eq!(e.as_str(), good);
        }
        assert_eq!(Endpoint::parse("tcp:10.0.0.5:4420").unwrap().address(), "10.0.0.5:4420");
        assert_eq!(Endpoint::parse("10.0.0.5:4420").unwrap().address(), "10.0.0.5:4420");
        assert_eq!(Endpoint::parse("mem:x").unwrap().scheme(), "mem");
        assert!(matches!(Endpoint::parse(""), Err(EndpointError::Empty)));
        for bad in
            ["tcp:", "tcp:host", "tcp:host:", "tcp:host:0", "tcp:host:65536", "tcp:::1:9", "tcp:a b:1", "host:x", "tcp:[::1:9"]
        {
            assert!(matches!(Endpoint::parse(bad), Err(EndpointError::BadAddress { .. })), "{bad} accepted");
        }
        let e = Endpoint::parse("rdma:10.0.0.5:4420").unwrap_err();
        assert!(matches!(e, EndpointError::UnknownScheme { ref scheme, .. } if scheme == "rdma"), "{e}");
        assert!(e.to_string().contains("tcp"), "lists the known schemes: {e}");
    }

    #[test]
    fn endpoints_serialize_as_strings() {
        let e: Endpoint = serde_json_like("tcp:127.0.0.1:1");
        assert_eq!(e, Endpoint::parse("tcp:127.0.0.1:1").unwrap());
        assert_ne!(e, Endpoint::parse("127.0.0.1:1").unwrap());
    }

    /// Round trip through serde's value-less string deserializer.
    fn serde_json_like(s: &str) -> Endpoint {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = s.into_deserializer();
        <Endpoint as serde::Deserialize>::deserialize(d).unwrap()
    }
}
