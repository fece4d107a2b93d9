//! Mutual-TLS transport (`tls:HOST:PORT`): frames over TLS 1.3 with `rustls` (on
//! `ring`, no OpenSSL), both sides authenticated by certificates of one CA.
//!
//! **Identities come from the process, not from the endpoint.** A process sets its TLS
//! identity once at start-up: `pov-dpud` calls [`configure_client`] (its client
//! certificate and key, and the CA it trusts for proxies), `pov-proxy` calls
//! [`configure_server`] (its server certificate and key, and the CA that signs the
//! DPUs it accepts). Endpoints stay plain strings (`tls:10.0.0.5:4420`) that any
//! device configuration can carry and `save_config` can write out; a `tls:` endpoint
//! in a process without a client identity is refused when it is parsed
//! ([`Endpoint::parse`], so `pov_device_create` fails with a clear message), and
//! listening on `tls:` without a server identity is a bind error.
//!
//! **What is checked.** The client verifies that the proxy's certificate chains to its
//! CA and is valid for the endpoint's host (a DNS name or an IP address in the
//! certificate's subjectAltName, as for HTTPS). The proxy verifies that the DPU's
//! certificate chains to its CA, is valid now and allows client authentication; a
//! peer without such a certificate never completes the handshake, so none of its bytes
//! reaches the application. *Who* the authenticated peer is, and what it may do, is
//! the application's decision: [`Transport::peer_identity`] hands it the peer's
//! verified end-entity certificate as a [`PeerIdentity`], which answers whether the
//! certificate is valid for a given DNS name ([`PeerIdentity::has_dns_name`], the
//! subjectAltName DNS entries, as webpki matches them; the subject CN is not used).
//! Only TLS 1.3 is offered, AES-128-GCM preferred (the bulk encryption of the frames
//! is most of what TLS costs on the data path); session tickets and resumption are
//! off (every connection presents and verifies certificates; connections are
//! long-lived, so a full handshake per connection costs nothing measurable).
//!
//! **Never blocking.** A connection attempt ([`TlsConnector`]) is the TCP attempt of
//! [`super::tcp`] followed by the TLS handshake, both driven by [`Connecting::poll`]:
//! each poll writes and reads what the socket takes without waiting and
//! [`Connecting::wait_for`] reports the socket and the readiness the handshake waits
//! for (writable while a flight is half sent, readable otherwise). The listener
//! ([`TlsListener`]) accepts TCP connections at once and keeps their handshakes in a
//! set of its own, advanced by [`Listener::accept`] only for the sockets that are
//! ready (an epoll instance of the listener, whose descriptor is what
//! [`Listener::fd`] returns, so a reactor sleeping on it wakes for a new connection
//! *and* for handshake progress). A completed handshake is what `accept` returns; a
//! peer that stalls costs one slot in that set until [`ServerTls::handshake_timeout`]
//! (default [`HANDSHAKE_TIMEOUT`]) drops it ([`Listener::deadline`] tells the reactor
//! when), and at most [`MAX_HANDSHAKES`] handshakes are kept (the oldest is dropped
//! for a new one), so stalled or flooding peers never delay the connections of others.
//!
//! **Frames and copies.** [`TlsTransport`] keeps the TCP transport's gathering
//! semantics: [`Transport::queue_frame`] encrypts the frame into rustls's send buffer
//! (one pass: the copy TCP makes into its send buffer is here the encryption) and
//! sends nothing; [`Transport::flush`] hands the buffered records to the socket with
//! `writev(2)` (up to 64 records a call) until it would block. A receive reads up to
//! [`RECV_CHUNK`] bytes per `read(2)` (rustls itself would read 4 KiB at a time),
//! rustls decrypts the records in place, and the frame parser takes the plaintext
//! straight from rustls's buffer (frames cut by a record or a read boundary are
//! copied aside, as for TCP). [`Transport::pending_send_bytes`] is an estimate here
//! (plaintext bytes not yet known to have left; 0 exactly when nothing is buffered).
//!
//! **RDMA (planned) authenticates the same way.** An RDMA transport has no byte
//! stream to run TLS over once its queue pairs carry frames, and RDMA CM private data
//! (at most 56 bytes in a REQ, 196 in a REP) is far too small for certificate
//! flights. The recommended design: the RDMA transport's connection setup starts with
//! *this* mutual-TLS handshake over a TCP connection to the proxy's RDMA service port
//! (same certificates, same [`PeerIdentity`], same enrollment check in the proxy), and
//! exchanges the queue-pair parameters (QPN, GID, and the memory keys of the frame
//! buffers) inside that TLS session together with a random 32-byte connection token
//! derived from the session (RFC 5705/8446 exporter, `export_keying_material`); the
//! token then travels in the RDMA CM private data of the CM REQ, and the proxy binds
//! the QP to the TLS-authenticated identity only if the token matches a session it has
//! just authenticated (one use, short expiry). The TLS session stays open as the
//! control channel (and its close tears the QP down). This keeps one authentication
//! path and one identity for both transports, needs nothing of the RDMA CM but its
//! private data, and keeps the crypto off the data path, as the paper's one-sided
//! transfers require; frames on the QP are then protected by the fabric's isolation
//! (partition keys), not encrypted, which the security docs must state for RDMA.

use super::endpoint::{Connecting, Connector, Endpoint};
use super::tcp::{split_host_port, TcpConnecting, TcpConnector};
use super::{FrameBuf, Listener, Transport, TransportCounters, TransportError, RECV_CHUNK};
use crate::sys::{Epoll, Interest};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConnection, Connection, RootCertStore, ServerConnection};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long an accepted connection may take to finish its handshake by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most handshakes a listener keeps under way; a new connection beyond that drops the
/// oldest.
pub const MAX_HANDSHAKES: usize = 256;
/// Most new TCP connections taken per [`Listener::accept`] call.
const ACCEPT_BATCH: usize = 32;
/// Failed handshakes logged at `warn` per listener (later ones at `debug`), so a
/// scanning peer cannot flood the log.
const FAILURE_WARNINGS: u64 = 20;

/// Why a TLS identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("cannot read the {what} from {}", path.display())]
    Pem {
        /// What the file should hold (`certificate chain`, `private key`, `CA certificates`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The read or parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no item of the expected kind.
    #[error("{} holds no {what} (PEM)", path.display())]
    Empty {
        /// What it should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificates or key (e.g. the key does not match the
    /// certificate, an unsupported key type, a malformed CA certificate).
    #[error("bad TLS {what}")]
    Rustls {
        /// What was refused.
        what: &'static str,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier cannot be built from the CA certificates.
    #[error("cannot build the client-certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The PEM files of one side's identity: `cert` (the end-entity certificate, then any
/// intermediates), `key` (its private key: PKCS#8, PKCS#1 or SEC1) and `ca` (the CA
/// certificates that sign the *peers*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Trusted CA certificates for the peer, PEM.
    pub ca: PathBuf,
}

/// ring's provider with AES-128-GCM preferred (then AES-256-GCM, ChaCha20-Poly1305):
/// the frames' bulk encryption is most of TLS's cost on the data path
/// (docs/performance.md), and AES-128-GCM needs fewer rounds per block than AES-256.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { what, path: path.to_path_buf(), source };
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?.collect::<Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty { what: WHAT, path: path.to_path_buf() },
        source => TlsError::Pem { what: WHAT, path: path.to_path_buf(), source },
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path, "CA certificates")? {
        roots.add(c).map_err(|source| TlsError::Rustls { what: "CA certificate", source })?;
    }
    Ok(roots)
}

/// A DPU's (client) TLS identity: its certificate and key, and the CA it trusts for
/// proxies.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Loads the identity from PEM files (see [`TlsFiles`]).
    ///
    /// # Errors
    /// [`TlsError`] naming the file or the refused item.
    pub fn from_files(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        let roots = load_roots(&files.ca)?;
        let certs = load_certs(&files.cert, "certificate chain")?;
        let key = load_key(&files.key)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls { what: "protocol versions", source })?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|source| TlsError::Rustls { what: "client certificate or key", source })?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTls { config: Arc::new(config) })
    }

    /// Starts connecting to `ep` (a `tls:` endpoint, or any `HOST:PORT` endpoint) with
    /// this identity instead of the process's ([`configure_client`]); never blocks.
    ///
    /// # Errors
    /// [`TransportError::Connect`] for an address that cannot name a TLS server, or
    /// when no socket can be made.
    pub fn connect(&self, ep: &Endpoint) -> Result<TlsConnecting, TransportError> {
        let fail = |why: String| TransportError::Connect {
            endpoint: ep.to_string(),
            source: std::io::Error::new(ErrorKind::InvalidInput, why),
        };
        let (host, _) = split_host_port(ep.address()).map_err(fail)?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| fail(format!("{host:?} cannot name a TLS server: {e}")))?;
        let tcp = TcpConnector::start(ep)?;
        Ok(TlsConnecting { state: ClientState::Tcp(tcp), name, tls: self.clone(), endpoint: ep.to_string() })
    }
}

/// A proxy's (server) TLS identity: its certificate and key, the CA that signs the
/// DPUs it accepts, and how long a handshake may take.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    /// How long an accepted connection may take to complete its handshake before it
    /// is dropped ([`HANDSHAKE_TIMEOUT`] unless changed).
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("handshake_timeout", &self.handshake_timeout).finish()
    }
}

impl ServerTls {
    /// Loads the identity from PEM files (see [`TlsFiles`]); every client must present
    /// a certificate signed by `files.ca`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or the refused item.
    pub fn from_files(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let roots = load_roots(&files.ca)?;
        let certs = load_certs(&files.cert, "certificate chain")?;
        let key = load_key(&files.key)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(TlsError::Verifier)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls { what: "protocol versions", source })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Rustls { what: "server certificate or key", source })?;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(ServerTls { config: Arc::new(config), handshake_timeout: HANDSHAKE_TIMEOUT })
    }
}

static CLIENT: RwLock<Option<ClientTls>> = RwLock::new(None);
static SERVER: RwLock<Option<ServerTls>> = RwLock::new(None);

/// Sets the process's client identity, used by every `tls:` connection started after
/// the call (`pov-dpud --tls-cert/--tls-key/--tls-ca`).
pub fn configure_client(tls: ClientTls) {
    *CLIENT.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
}

/// Sets the process's server identity, used by every `tls:` listener bound after the
/// call (`pov-proxy --tls-cert/--tls-key/--tls-ca`).
pub fn configure_server(tls: ServerTls) {
    *SERVER.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
}

/// Whether [`configure_client`] was called.
pub fn client_configured() -> bool {
    CLIENT.read().unwrap_or_else(|e| e.into_inner()).is_some()
}

fn client_config() -> Option<ClientTls> {
    CLIENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn server_config() -> Option<ServerTls> {
    SERVER.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The verified certificate a TLS peer presented (its end-entity certificate, DER).
/// Only transports that authenticate their peer have one
/// ([`Transport::peer_identity`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerIdentity({} bytes of certificate)", self.cert.len())
    }
}

impl PeerIdentity {
    /// Wraps a certificate the handshake verified.
    fn new(cert: CertificateDer<'static>) -> PeerIdentity {
        PeerIdentity { cert }
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &[u8] {
        &self.cert
    }

    /// Whether the certificate is valid for the DNS name `name`: one of its
    /// subjectAltName DNS entries matches it (webpki's matching, case-insensitive; a
    /// wildcard entry `*.example` matches one label). The subject CN is not consulted;
    /// `name` must be a syntactically valid DNS name (not an IP address).
    pub fn has_dns_name(&self, name: &str) -> bool {
        let Ok(n @ ServerName::DnsName(_)) = ServerName::try_from(name) else { return false };
        match webpki::EndEntityCert::try_from(&self.cert) {
            Ok(ee) => ee.verify_is_valid_for_subject_name(&n).is_ok(),
            Err(_) => false,
        }
    }
}

/// Where a handshake stands after a step.
enum Step {
    Done,
    Wait(Interest),
}

/// Advances a handshake as far as the socket allows without blocking.
fn drive_handshake(conn: &mut Connection, stream: &mut TcpStream) -> std::io::Result<Step> {
    loop {
        if conn.wants_write() {
            match conn.write_tls(stream) {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Wait(Interest::Write)),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if !conn.is_handshaking() {
            return Ok(Step::Done);
        }
        match conn.read_tls(stream) {
            Ok(0) => {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "peer closed the connection during the handshake"))
            }
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Best effort: tell the peer why (the alert rustls queued).
                    let _ = conn.write_tls(stream);
                    return Err(std::io::Error::new(ErrorKind::InvalidData, e));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Wait(Interest::Read)),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A TLS connection carrying frames (see the module docs).
pub struct TlsTransport {
    stream: TcpStream,
    conn: Connection,
    peer: String,
    identity: Option<PeerIdentity>,
    rx: FrameBuf,
    /// What one `read(2)` fills, handed to rustls from memory.
    chunk: Box<[u8]>,
    /// Plaintext bytes queued and not yet known to have left (an estimate).
    unsent: usize,
    counters: TransportCounters,
}

impl TlsTransport {
    /// Wraps a connection whose handshake is complete (stream non-blocking).
    fn new(stream: TcpStream, mut conn: Connection, peer: String) -> TlsTransport {
        let _ = stream.set_nodelay(true);
        // What is queued is bounded by the owner (in-flight limits), as for TCP.
        conn.set_buffer_limit(None);
        let identity = conn.peer_certificates().and_then(|c| c.first()).map(|c| PeerIdentity::new(c.clone()));
        TlsTransport {
            stream,
            conn,
            peer,
            identity,
            rx: FrameBuf::default(),
            chunk: vec![0; RECV_CHUNK].into_boxed_slice(),
            unsent: 0,
            counters: TransportCounters::default(),
        }
    }

    fn io_err(&self, source: std::io::Error) -> TransportError {
        TransportError::Io { peer: self.peer.clone(), source }
    }

    /// Hands every plaintext byte rustls holds to the frame parser. Returns `true` if
    /// the peer closed the TLS session (cleanly or not) after those bytes.
    fn drain_plaintext(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        loop {
            let mut reader = self.conn.reader();
            match reader.fill_buf() {
                Ok([]) => return Ok(true),
                Ok(buf) => {
                    let n = buf.len();
                    self.counters.frames_received += self.rx.feed(buf, &self.peer, on_frame)?;
                    reader.consume(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(TransportError::Io { peer: self.peer.clone(), source: e }),
            }
        }
    }
}

impl Drop for TlsTransport {
    fn drop(&mut self) {
        // Best effort, never blocking: a clean close for a peer still reading.
        self.conn.send_close_notify();
        let _ = self.conn.write_tls(&mut self.stream);
    }
}

impl Transport for TlsTransport {
    fn queue_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        self.conn.writer().write_all(frame).map_err(|e| self.io_err(e))?;
        self.unsent += frame.len();
        self.counters.frames_sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, TransportError> {
        let mut moved = false;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.stream) {
                Ok(0) => return Err(TransportError::Closed { peer: self.peer.clone() }),
                Ok(n) => {
                    moved = true;
                    self.counters.sends += 1;
                    self.unsent = self.unsent.saturating_sub(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(e)),
            }
        }
        if !self.conn.wants_write() {
            self.unsent = 0;
        }
        Ok(moved)
    }

    fn counters(&self) -> TransportCounters {
        self.counters
    }

    fn receive(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        // Plaintext left from the handshake's last read or an earlier pass first: the
        // socket may have nothing more to say.
        let before = self.counters.frames_received;
        let mut closed = self.drain_plaintext(on_frame)?;
        let mut moved = self.counters.frames_received > before;
        while !closed {
            let n = match self.stream.read(&mut self.chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(e)),
            };
            moved = true;
            self.counters.receives += 1;
            let mut at = 0;
            while at < n && !closed {
                let mut data = &self.chunk[at..n];
                let k = match self.conn.read_tls(&mut data) {
                    Ok(k) => k,
                    Err(e) => return Err(self.io_err(e)),
                };
                at += k;
                if let Err(e) = self.conn.process_new_packets() {
                    let _ = self.conn.write_tls(&mut self.stream);
                    return Err(self.io_err(std::io::Error::new(ErrorKind::InvalidData, e)));
                }
                closed = self.drain_plaintext(on_frame)? || k == 0;
            }
            if n < self.chunk.len() {
                break;
            }
        }
        if closed {
            // What arrived before the close has been delivered.
            return Err(TransportError::Closed { peer: self.peer.clone() });
        }
        Ok(moved)
    }

    fn pending_send_bytes(&self) -> usize {
        if self.conn.wants_write() {
            self.unsent.max(1)
        } else {
            0
        }
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.stream.as_raw_fd())
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }
}

/// The `tls:` scheme: `tls:HOST:PORT` (host as for `tcp:`; the proxy's certificate
/// must be valid for it).
pub struct TlsConnector;

const NO_CLIENT_IDENTITY: &str = "tls: endpoints need this process's TLS identity (pov-dpud: --tls-cert, --tls-key and --tls-ca)";

impl Connector for TlsConnector {
    fn scheme(&self) -> &'static str {
        "tls"
    }

    fn check(&self, address: &str) -> Result<(), String> {
        split_host_port(address)?;
        if !client_configured() {
            return Err(NO_CLIENT_IDENTITY.into());
        }
        Ok(())
    }

    fn connect(&self, ep: &Endpoint) -> Result<Box<dyn Connecting>, TransportError> {
        let tls = client_config().ok_or_else(|| TransportError::Connect {
            endpoint: ep.to_string(),
            source: std::io::Error::new(ErrorKind::NotFound, NO_CLIENT_IDENTITY),
        })?;
        Ok(Box::new(tls.connect(ep)?))
    }

    fn listen(&self, address: &str) -> std::io::Result<Box<dyn Listener>> {
        let tls = server_config().ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::InvalidInput,
                "listening on tls: needs this process's TLS identity (pov-proxy: --tls-cert, --tls-key and --tls-ca)",
            )
        })?;
        Ok(Box::new(TlsListener::bind(address, tls)?))
    }
}

enum ClientState {
    Tcp(TcpConnecting),
    /// Boxed: rustls's connection state is large.
    Handshake(Box<ClientHandshake>),
    Over,
}

struct ClientHandshake {
    stream: TcpStream,
    conn: Connection,
    wants: Interest,
}

/// A TLS connection attempt: TCP connect, then the handshake (see the module docs).
pub struct TlsConnecting {
    state: ClientState,
    name: ServerName<'static>,
    tls: ClientTls,
    endpoint: String,
}

impl TlsConnecting {
    fn fail(&mut self, kind: ErrorKind, why: String) -> TransportError {
        self.state = ClientState::Over;
        TransportError::Connect { endpoint: self.endpoint.clone(), source: std::io::Error::new(kind, why) }
    }
}

impl Connecting for TlsConnecting {
    fn poll(&mut self) -> Result<Option<Box<dyn Transport>>, TransportError> {
        loop {
            match std::mem::replace(&mut self.state, ClientState::Over) {
                ClientState::Over => return Err(self.fail(ErrorKind::NotConnected, "attempt is over".into())),
                ClientState::Tcp(mut tcp) => match tcp.poll_stream()? {
                    None => {
                        self.state = ClientState::Tcp(tcp);
                        return Ok(None);
                    }
                    Some(stream) => {
                        let conn = ClientConnection::new(self.tls.config.clone(), self.name.clone())
                            .map_err(|e| self.fail(ErrorKind::InvalidInput, format!("TLS client: {e}")))?;
                        let conn = Connection::Client(conn);
                        self.state = ClientState::Handshake(Box::new(ClientHandshake { stream, conn, wants: Interest::Write }));
                    }
                },
                ClientState::Handshake(mut h) => match drive_handshake(&mut h.conn, &mut h.stream) {
                    Ok(Step::Done) => {
                        let peer = h.stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| self.endpoint.clone());
                        let ClientHandshake { stream, conn, .. } = *h;
                        return Ok(Some(Box::new(TlsTransport::new(stream, conn, peer))));
                    }
                    Ok(Step::Wait(wants)) => {
                        h.wants = wants;
                        self.state = ClientState::Handshake(h);
                        return Ok(None);
                    }
                    Err(e) => {
                        let kind = e.kind();
                        return Err(self.fail(kind, format!("TLS handshake: {e}")));
                    }
                },
            }
        }
    }

    fn wait_for(&self) -> Option<(RawFd, Interest)> {
        match &self.state {
            ClientState::Tcp(t) => t.waits_for(),
            ClientState::Handshake(h) => Some((h.stream.as_raw_fd(), h.wants)),
            ClientState::Over => None,
        }
    }
}

/// An accepted connection whose handshake is under way.
struct Handshake {
    stream: TcpStream,
    conn: Connection,
    peer: String,
    expires: Instant,
}

/// Token of the listening socket in the listener's epoll set.
const LISTEN_TOKEN: u64 = u64::MAX;

/// A TLS listener: accepts TCP connections and completes their handshakes without
/// blocking (see the module docs). [`Listener::accept`] returns only connections whose
/// handshake succeeded.
pub struct TlsListener {
    tcp: std::net::TcpListener,
    tls: ServerTls,
    /// The listening socket and every handshaking socket (tokens: [`LISTEN_TOKEN`],
    /// handshake ids).
    epoll: Epoll,
    pending: HashMap<u64, Handshake>,
    ready: VecDeque<Box<dyn Transport>>,
    next_id: u64,
    tokens: Vec<u64>,
    stats: ListenerStats,
}

/// Handshake counters of one [`TlsListener`] (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Handshakes completed (connections handed out by `accept`).
    pub authenticated: u64,
    /// Handshakes that failed (no or a bad certificate, not TLS, peer closed).
    pub failed: u64,
    /// Handshakes dropped for taking longer than the timeout.
    pub timed_out: u64,
    /// Handshakes dropped to make room for a new connection ([`MAX_HANDSHAKES`]).
    pub evicted: u64,
}

impl TlsListener {
    /// Binds `HOST:PORT` (port 0 picks a free port) and serves TLS with `tls`.
    ///
    /// # Errors
    /// The bind or epoll error.
    pub fn bind(addr: &str, tls: ServerTls) -> std::io::Result<TlsListener> {
        let tcp = std::net::TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.add(tcp.as_raw_fd(), LISTEN_TOKEN, Interest::Read)?;
        Ok(TlsListener {
            tcp,
            tls,
            epoll,
            pending: HashMap::new(),
            ready: VecDeque::new(),
            next_id: 0,
            tokens: Vec::new(),
            stats: ListenerStats::default(),
        })
    }

    /// The handshake counters.
    pub fn stats(&self) -> ListenerStats {
        self.stats
    }

    /// Number of handshakes under way.
    pub fn handshaking(&self) -> usize {
        self.pending.len()
    }

    fn log_failure(&mut self, peer: &str, why: &dyn std::fmt::Display) {
        let level =
            if self.stats.failed + self.stats.timed_out <= FAILURE_WARNINGS { log::Level::Warn } else { log::Level::Debug };
        log::log!(level, "TLS handshake with {peer} failed: {why}; connection dropped");
    }

    fn drop_handshake(&mut self, id: u64) -> Option<Handshake> {
        let h = self.pending.remove(&id)?;
        self.epoll.remove(h.stream.as_raw_fd());
        Some(h)
    }

    /// Takes new TCP connections into the handshake set.
    fn take_new(&mut self) -> std::io::Result<()> {
        for _ in 0..ACCEPT_BATCH {
            let (stream, addr) = match self.tcp.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let peer = addr.to_string();
            if let Err(e) = stream.set_nonblocking(true) {
                self.stats.failed += 1;
                self.log_failure(&peer, &e);
                continue;
            }
            let conn = match ServerConnection::new(self.tls.config.clone()) {
                Ok(c) => Connection::Server(c),
                Err(e) => {
                    self.stats.failed += 1;
                    self.log_failure(&peer, &e);
                    continue;
                }
            };
            if self.pending.len() >= MAX_HANDSHAKES {
                // Ids grow with arrival: the smallest is the oldest.
                if let Some(oldest) = self.pending.keys().min().copied() {
                    if let Some(h) = self.drop_handshake(oldest) {
                        self.stats.evicted += 1;
                        log::warn!("{MAX_HANDSHAKES} TLS handshakes under way: dropped the oldest, from {}", h.peer);
                    }
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let expires = Instant::now() + self.tls.handshake_timeout;
            self.pending.insert(id, Handshake { stream, conn, peer, expires });
            // The ClientHello may be there already.
            self.advance(id);
        }
        Ok(())
    }

    /// Advances handshake `id` as far as its socket allows.
    fn advance(&mut self, id: u64) {
        let Some(h) = self.pending.get_mut(&id) else { return };
        match drive_handshake(&mut h.conn, &mut h.stream) {
            Ok(Step::Wait(interest)) => {
                if let Err(e) = self.epoll.add(h.stream.as_raw_fd(), id, interest) {
                    let peer = h.peer.clone();
                    self.drop_handshake(id);
                    self.stats.failed += 1;
                    self.log_failure(&peer, &e);
                }
            }
            Ok(Step::Done) => {
                if let Some(h) = self.drop_handshake(id) {
                    self.stats.authenticated += 1;
                    log::debug!("TLS handshake with {} done", h.peer);
                    self.ready.push_back(Box::new(TlsTransport::new(h.stream, h.conn, h.peer)));
                }
            }
            Err(e) => {
                if let Some(h) = self.drop_handshake(id) {
                    self.stats.failed += 1;
                    self.log_failure(&h.peer, &e);
                }
            }
        }
    }

    /// Drops the handshakes past their deadline.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self.pending.iter().filter(|(_, h)| h.expires <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(h) = self.drop_handshake(id) {
                self.stats.timed_out += 1;
                let why = format!("not finished within {:?}", self.tls.handshake_timeout);
                self.log_failure(&h.peer, &why);
            }
        }
    }
}

impl Listener for TlsListener {
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>> {
        if let Some(t) = self.ready.pop_front() {
            return Ok(Some(t));
        }
        self.expire(Instant::now());
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        self.epoll.ready_tokens(Duration::ZERO, &mut tokens);
        let mut accept_error = None;
        for &token in &tokens {
            if token == LISTEN_TOKEN {
                accept_error = self.take_new().err();
            } else {
                self.advance(token);
            }
        }
        self.tokens = tokens;
        match (self.ready.pop_front(), accept_error) {
            (Some(t), _) => Ok(Some(t)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn local_addr(&self) -> String {
        self.tcp.local_addr().map(|a| a.to_string()).unwrap_or_default()
    }

    fn deadline(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(Instant::now());
        }
        self.pending.values().map(|h| h.expires).min()
    }
}
