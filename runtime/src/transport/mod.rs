//! The transport seam between `pov-dpud` and `pov-proxy` (paper §4.3: RDMA queue pairs
//! with a TCP fallback).
//!
//! A [`Transport`] is one connection carrying `pov_proto::wire` frames (a `u32`
//! little-endian length, then the body). It never blocks: [`Transport::send_frame`]
//! queues bytes, [`Transport::poll`] moves bytes in both directions and hands every
//! complete received frame body to a callback. A reactor poller drives it and, when
//! idle, sleeps on [`Transport::fd`].
//!
//! **Endpoints and connectors.** A peer is named by an [`Endpoint`], `SCHEME:ADDRESS`
//! (`tcp:HOST:PORT`; a bare `HOST:PORT` means TCP), parsed and checked without any IO
//! when a device is created. Each scheme has a [`Connector`] in the registry
//! ([`endpoint`]): TCP and TLS are built in, the in-memory `mem:` transport with the
//! `testing` feature, and a new transport (RDMA) is one new file plus one registry line.
//! **Connecting never blocks a reactor**: [`Connector::connect`] returns a
//! [`Connecting`] attempt that the owner advances from its poller and sleeps on
//! ([`Connecting::wait_for`]); [`connect_blocking`] is the variant for threads that may
//! wait (control plane, tests).
//!
//! **Gathering (paper §4.3.2).** [`Transport::queue_frame`] only buffers a frame;
//! [`Transport::flush`] hands every buffered frame to the network in one send (one
//! `write(2)` for TCP while the socket accepts it). A caller that queues the frames of
//! one poll and flushes once pays one syscall per batch instead of one per frame;
//! [`Transport::send_frame`] is queue + flush. Receiving always drains what the socket
//! holds with reads of up to 64 KiB, so one `read(2)` returns many frames.
//! [`TransportCounters`] count both sides so the effect is visible.
//!
//! **Authentication.** [`tls`] (`tls:HOST:PORT`) is TCP with mutual TLS 1.3: each
//! process sets its certificate, key and trusted CA once at start-up
//! ([`tls::configure_client`], [`tls::configure_server`]), so endpoints stay plain
//! strings; a listener hands out only connections whose handshake succeeded, and
//! [`Transport::peer_identity`] gives the application the peer's verified certificate
//! to decide what it may do. Plain `tcp:` trusts whoever connects.
//!
//! Implementations: [`tcp`] (default), [`tls`] and, with the `testing` feature, `mem`
//! (an in-process pair and named in-process listeners). All pass the same conformance
//! test body (`conformance`, also with `testing`). The frame reassembler they share has a
//! fuzz target whose body is `fuzz` (with `testing`; `docs/fuzzing.md`).

pub mod endpoint;
mod frame;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod tcp;
pub mod tls;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod mem;

pub use endpoint::{connector, register, Connecting, Connector, Endpoint, EndpointError};
pub(crate) use frame::FrameBuf;
pub use frame::RECV_CHUNK;
pub use tls::PeerIdentity;

use crate::sys::Interest;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A broken or misbehaving connection. After an error the transport is dead: the
/// owner drops it and fails what was in flight on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("connection closed by peer {peer}")]
    Closed {
        /// The peer's address.
        peer: String,
    },
    /// The peer sent a frame length over the protocol limit.
    #[error("peer {peer} sent a bad frame: {why}")]
    BadFrame {
        /// The peer's address.
        peer: String,
        /// What is wrong with the frame.
        why: String,
    },
    /// A socket error.
    #[error("transport IO error with {peer}")]
    Io {
        /// The peer's address.
        peer: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint could not be reached (refused, unreachable, name not resolved,
    /// timed out).
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// The system error (`TimedOut` for an attempt that outlived its deadline).
        #[source]
        source: std::io::Error,
    },
    /// The endpoint names no registered transport scheme.
    #[error("no transport for endpoint {endpoint}")]
    NoConnector {
        /// The endpoint as given.
        endpoint: String,
    },
}

/// Frame and syscall counters of one transport (monotonic since it was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Frames queued for sending.
    pub frames_sent: u64,
    /// Flushes that handed at least one byte to the network (TCP: `write(2)` calls
    /// that wrote something).
    pub sends: u64,
    /// Complete frames received.
    pub frames_received: u64,
    /// Receives that returned at least one byte (TCP: `read(2)` calls).
    pub receives: u64,
}

impl std::ops::AddAssign for TransportCounters {
    fn add_assign(&mut self, o: TransportCounters) {
        self.frames_sent += o.frames_sent;
        self.sends += o.sends;
        self.frames_received += o.frames_received;
        self.receives += o.receives;
    }
}

/// One connection carrying length-prefixed frames.
pub trait Transport: Send {
    /// Buffers one complete frame (length prefix included, as produced by the
    /// `encode_frame` functions of `pov_proto::wire`) without sending it: it leaves at
    /// the next [`flush`](Transport::flush), [`send_frame`](Transport::send_frame) or
    /// [`poll`](Transport::poll). Never blocks.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the peer is known to be gone.
    fn queue_frame(&mut self, frame: &[u8]) -> Result<(), TransportError>;

    /// Hands buffered bytes to the network, as many as it takes without blocking, in
    /// as few sends as possible. Returns `true` if any byte left.
    ///
    /// # Errors
    /// A dead connection ([`TransportError`]).
    fn flush(&mut self) -> Result<bool, TransportError>;

    /// Queues one frame and flushes at once (no gathering). Never blocks.
    ///
    /// # Errors
    /// As [`queue_frame`](Transport::queue_frame) and [`flush`](Transport::flush).
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        self.queue_frame(frame)?;
        self.flush().map(|_| ())
    }

    /// Frame and syscall counters.
    fn counters(&self) -> TransportCounters;

    /// Receives available bytes without sending; calls `on_frame` with the body (length
    /// prefix stripped) of every complete frame received. Returns `true` if any byte
    /// arrived.
    ///
    /// # Errors
    /// A dead connection or a bad frame ([`TransportError`]); frames that arrived
    /// before a close are delivered first.
    fn receive(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError>;

    /// [`receive`](Transport::receive), but stops reading from the network once about
    /// `max_bytes` have been read in this call (frames those bytes complete are still
    /// all delivered; the rest stays in the kernel, which is how a caller exerts
    /// back-pressure on its peer). `max_bytes` 0 reads nothing. The default ignores
    /// the budget: a transport that cannot stop early reads what is there.
    ///
    /// # Errors
    /// As [`receive`](Transport::receive).
    fn receive_at_most(&mut self, max_bytes: usize, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        if max_bytes == 0 {
            return Ok(false);
        }
        self.receive(on_frame)
    }

    /// Bytes of a frame received in part (its length prefix or body not complete yet),
    /// held until the rest arrives; 0 between frames. The default, for a transport
    /// that cannot tell, is 0.
    fn partial_frame_bytes(&self) -> usize {
        0
    }

    /// [`flush`](Transport::flush) then [`receive`](Transport::receive). Returns `true`
    /// if any byte moved.
    ///
    /// # Errors
    /// As those two.
    fn poll(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        let sent = self.flush()?;
        Ok(self.receive(on_frame)? || sent)
    }

    /// Bytes queued but not yet handed to the network.
    fn pending_send_bytes(&self) -> usize;

    /// A descriptor that becomes readable when data arrives (for the reactor's sleep).
    fn fd(&self) -> Option<RawFd>;

    /// The peer's address, for messages.
    fn peer(&self) -> &str;

    /// The peer's verified certificate, for transports that authenticate their peer
    /// ([`tls`]); `None` for transports that do not (TCP, mem): whoever connected.
    fn peer_identity(&self) -> Option<&PeerIdentity> {
        None
    }
}

/// Accepts incoming transports (server side).
pub trait Listener: Send {
    /// Accepts one pending connection, if any. Never blocks.
    ///
    /// # Errors
    /// The `accept(2)` error other than "nothing pending" (e.g. out of descriptors).
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>>;

    /// A descriptor that becomes readable when a connection is pending.
    fn fd(&self) -> RawFd;

    /// The address actually bound (useful with port 0), without the scheme.
    fn local_addr(&self) -> String;

    /// When [`accept`](Listener::accept) must be called again even if [`fd`](Listener::fd)
    /// stays quiet (TLS: the earliest handshake timeout); `None` if only the descriptor
    /// matters.
    fn deadline(&self) -> Option<Instant> {
        None
    }
}

/// How long [`connect`] waits for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `endpoint` (see [`Endpoint`]), waiting up to [`CONNECT_TIMEOUT`].
/// Blocks: for threads that may wait (control plane, tests), never a reactor.
///
/// # Errors
/// [`TransportError::Connect`] for a bad or unreachable endpoint (a parse error as
/// `InvalidInput`), [`TransportError::NoConnector`] for an unknown scheme.
pub fn connect(endpoint: &str) -> Result<Box<dyn Transport>, TransportError> {
    let ep = Endpoint::parse(endpoint).map_err(|e| TransportError::Connect {
        endpoint: endpoint.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    connect_blocking(&ep, CONNECT_TIMEOUT)
}

/// Connects to `ep`, waiting up to `timeout` (blocks the caller; see [`connect`]).
///
/// # Errors
/// As [`Connector::connect`] and [`Connecting::poll`]; [`TransportError::Connect`]
/// with `TimedOut` when the attempt outlives `timeout`.
pub fn connect_blocking(ep: &Endpoint, timeout: Duration) -> Result<Box<dyn Transport>, TransportError> {
    let deadline = Instant::now() + timeout;
    let mut attempt = ep.connector().connect(ep)?;
    loop {
        if let Some(t) = attempt.poll()? {
            return Ok(t);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::Connect { endpoint: ep.to_string(), source: std::io::ErrorKind::TimedOut.into() });
        }
        match attempt.wait_for() {
            Some((fd, interest)) => wait_raw(fd, interest, left.min(Duration::from_millis(100))),
            None => std::thread::sleep(left.min(Duration::from_millis(1))),
        }
    }
}

/// Waits (bounded) for a raw descriptor an attempt reported; errors only shorten the
/// wait, the next poll reports them.
fn wait_raw(fd: RawFd, interest: Interest, timeout: Duration) {
    if !matches!(crate::sys::wait_raw_fd(fd, interest, timeout), Ok(true)) && fd < 0 {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
    }
}

/// Binds a listener on `endpoint` (`tcp:HOST:PORT` or `HOST:PORT`; port 0 picks one).
///
/// # Errors
/// `InvalidInput` for a bad endpoint or a scheme without a connector; the bind error.
pub fn listen(endpoint: &str) -> std::io::Result<Box<dyn Listener>> {
    endpoint::listen_on(endpoint)
}

#[cfg(test)]
mod tests;
