//! TCP transport: non-blocking sockets with `TCP_NODELAY`, connected without ever
//! blocking the caller ([`TcpConnector`]).
//!
//! A connection attempt to an IP address is a non-blocking `connect(2)` whose
//! completion the caller sleeps on as writability; a host name is first resolved on a
//! short-lived thread (`getaddrinfo` cannot be made non-blocking) that signals an
//! eventfd when done. Each resolved address is tried in turn.

use super::endpoint::{Connecting, Connector, Endpoint};
use super::{FrameBuf, Listener, Transport, TransportCounters, TransportError, RECV_CHUNK};
use crate::sys::{wait_fd, EventFd, Interest};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A TCP connection carrying frames.
pub struct TcpTransport {
    stream: TcpStream,
    peer: String,
    rx: FrameBuf,
    /// What one `read(2)` fills ([`RECV_CHUNK`] bytes, allocated and zeroed once).
    chunk: Box<[u8]>,
    /// Bytes queued for sending, one contiguous buffer (no allocation per frame);
    /// `tx[tx_off..]` is still to be written.
    tx: Vec<u8>,
    tx_off: usize,
    counters: TransportCounters,
}

impl TcpTransport {
    /// Wraps an accepted or connected stream (made non-blocking, `TCP_NODELAY`).
    ///
    /// # Errors
    /// The `fcntl`/`setsockopt` error.
    pub fn from_stream(stream: TcpStream) -> std::io::Result<TcpTransport> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        Ok(TcpTransport {
            stream,
            peer,
            rx: FrameBuf::default(),
            chunk: vec![0; RECV_CHUNK].into_boxed_slice(),
            tx: Vec::new(),
            tx_off: 0,
            counters: TransportCounters::default(),
        })
    }

    fn io_err(&self, source: std::io::Error) -> TransportError {
        TransportError::Io { peer: self.peer.clone(), source }
    }
}

impl Transport for TcpTransport {
    fn queue_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        self.tx.extend_from_slice(frame);
        self.counters.frames_sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, TransportError> {
        let mut moved = false;
        while self.tx_off < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_off..]) {
                Ok(0) => return Err(TransportError::Closed { peer: self.peer.clone() }),
                Ok(n) => {
                    moved = true;
                    self.counters.sends += 1;
                    self.tx_off += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(e)),
            }
        }
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        } else if self.tx_off > 0 && self.tx_off >= self.tx.len() / 2 {
            // The socket is full: compact, so the buffer does not grow forever.
            self.tx.drain(..self.tx_off);
            self.tx_off = 0;
        }
        Ok(moved)
    }

    fn counters(&self) -> TransportCounters {
        self.counters
    }

    fn receive(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        self.receive_at_most(usize::MAX, on_frame)
    }

    fn receive_at_most(&mut self, max_bytes: usize, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        let mut moved = false;
        let mut left = max_bytes;
        while left > 0 {
            let want = left.min(self.chunk.len());
            left -= want;
            match self.stream.read(&mut self.chunk[..want]) {
                Ok(0) => {
                    // What arrived before the close has been delivered.
                    return Err(TransportError::Closed { peer: self.peer.clone() });
                }
                Ok(n) => {
                    moved = true;
                    self.counters.receives += 1;
                    self.counters.frames_received += self.rx.feed(&self.chunk[..n], &self.peer, on_frame)?;
                    if n < want {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => left += want,
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Ok(moved)
    }

    fn partial_frame_bytes(&self) -> usize {
        self.rx.partial_bytes()
    }

    fn pending_send_bytes(&self) -> usize {
        self.tx.len() - self.tx_off
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.stream.as_raw_fd())
    }

    fn peer(&self) -> &str {
        &self.peer
    }
}

/// A non-blocking TCP listener.
pub struct TcpListener {
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Binds `HOST:PORT` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error.
    pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
        let inner = std::net::TcpListener::bind(addr)?;
        inner.set_nonblocking(true)?;
        Ok(TcpListener { inner })
    }
}

impl Listener for TcpListener {
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>> {
        match self.inner.accept() {
            Ok((s, _)) => Ok(Some(Box::new(TcpTransport::from_stream(s)?))),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }

    fn local_addr(&self) -> String {
        self.inner.local_addr().map(|a| a.to_string()).unwrap_or_default()
    }
}

/// `HOST:PORT` split into host and port; `[v6]` hosts lose their brackets.
pub(crate) fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or("expected HOST:PORT")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?} (1-65535)"))?;
    if port == 0 {
        return Err("port 0 cannot be connected to".into());
    }
    let host = match host.strip_prefix('[') {
        Some(h) => {
            let h = h.strip_suffix(']').ok_or("unclosed '[' in IPv6 address")?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| format!("bad IPv6 address {h:?}"))?;
            h
        }
        None if host.contains(':') => return Err("IPv6 addresses go in brackets: [ADDR]:PORT".into()),
        None => host,
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    if host.parse::<IpAddr>().is_err() && !name_ok(host) {
        return Err(format!("bad host {host:?}"));
    }
    Ok((host, port))
}

/// The `tcp:` scheme (also every endpoint without a scheme).
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn scheme(&self) -> &'static str {
        "tcp"
    }

    fn check(&self, address: &str) -> Result<(), String> {
        split_host_port(address).map(|_| ())
    }

    fn connect(&self, ep: &Endpoint) -> Result<Box<dyn Connecting>, TransportError> {
        Ok(Box::new(TcpConnector::start(ep)?))
    }

    fn listen(&self, address: &str) -> std::io::Result<Box<dyn Listener>> {
        Ok(Box::new(TcpListener::bind(address)?))
    }
}

impl TcpConnector {
    /// Starts a TCP connection attempt to `ep`'s `HOST:PORT` (any scheme: the TLS
    /// connector runs its handshake over such an attempt). Never blocks.
    ///
    /// # Errors
    /// [`TransportError::Connect`] for a malformed address or when no socket can be
    /// made.
    pub fn start(ep: &Endpoint) -> Result<TcpConnecting, TransportError> {
        let endpoint = ep.to_string();
        let (host, port) = split_host_port(ep.address()).map_err(|why| TransportError::Connect {
            endpoint: endpoint.clone(),
            source: std::io::Error::new(ErrorKind::InvalidInput, why),
        })?;
        let mut attempt = TcpConnecting { endpoint, state: State::Idle, addrs: VecDeque::new(), last_error: None };
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                attempt.addrs.push_back(SocketAddr::new(ip, port));
                attempt.next_address()?;
            }
            Err(_) => attempt.resolve(host.to_string(), port)?,
        }
        Ok(attempt)
    }
}

enum State {
    /// Nothing under way (before the first address, or after the last failed).
    Idle,
    /// A resolver thread is looking the name up; it signals `done` when it has.
    Resolving { rx: mpsc::Receiver<std::io::Result<Vec<SocketAddr>>>, done: Arc<EventFd> },
    /// A non-blocking `connect(2)` to `addr` is in progress.
    Connecting { socket: OwnedFd, addr: SocketAddr },
    /// Connected at once (loopback often is).
    Connected(TcpStream),
}

/// A TCP connection attempt (see the module docs).
pub struct TcpConnecting {
    endpoint: String,
    state: State,
    /// Addresses still to try.
    addrs: VecDeque<SocketAddr>,
    last_error: Option<std::io::Error>,
}

impl TcpConnecting {
    fn fail(&mut self, source: std::io::Error) -> TransportError {
        self.state = State::Idle;
        TransportError::Connect { endpoint: self.endpoint.clone(), source }
    }

    fn resolve(&mut self, host: String, port: u16) -> Result<(), TransportError> {
        let done = Arc::new(EventFd::new().map_err(|e| self.fail(e))?);
        let (tx, rx) = mpsc::channel();
        let signal = done.clone();
        let spawned = std::thread::Builder::new().name("pov-resolve".into()).spawn(move || {
            let r = (host.as_str(), port).to_socket_addrs().map(|a| a.collect());
            let _ = tx.send(r);
            signal.notify();
        });
        if let Err(e) = spawned {
            return Err(self.fail(e));
        }
        self.state = State::Resolving { rx, done };
        Ok(())
    }

    /// Starts a non-blocking connect to the next address.
    fn next_address(&mut self) -> Result<(), TransportError> {
        loop {
            let Some(addr) = self.addrs.pop_front() else {
                let e = self.last_error.take().unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address"));
                return Err(self.fail(e));
            };
            let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
            let socket = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)
                .map_err(|e| self.fail(e.into()))?;
            match rustix::net::connect(&socket, &addr) {
                Ok(()) => {
                    self.state = State::Connected(TcpStream::from(socket));
                    return Ok(());
                }
                Err(e) if e == rustix::io::Errno::INPROGRESS || e == rustix::io::Errno::INTR => {
                    self.state = State::Connecting { socket, addr };
                    return Ok(());
                }
                Err(e) => self.last_error = Some(e.into()),
            }
        }
    }

    /// Advances the attempt like [`Connecting::poll`], returning the connected stream
    /// itself (non-blocking, as the attempt made it).
    ///
    /// # Errors
    /// As [`Connecting::poll`].
    pub fn poll_stream(&mut self) -> Result<Option<TcpStream>, TransportError> {
        loop {
            match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => return Err(self.fail(std::io::Error::new(ErrorKind::NotConnected, "attempt is over"))),
                State::Connected(s) => return Ok(Some(s)),
                State::Resolving { rx, done } => match rx.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => {
                        self.state = State::Resolving { rx, done };
                        return Ok(None);
                    }
                    Err(mpsc::TryRecvError::Disconnected) => {
                        return Err(self.fail(std::io::Error::other("name resolver thread failed")))
                    }
                    Ok(Err(e)) => return Err(self.fail(e)),
                    Ok(Ok(addrs)) => {
                        self.addrs = addrs.into();
                        self.next_address()?;
                    }
                },
                State::Connecting { socket, addr } => {
                    match wait_fd(socket.as_fd(), Interest::Write, Duration::ZERO) {
                        Ok(false) => {
                            self.state = State::Connecting { socket, addr };
                            return Ok(None);
                        }
                        Ok(true) => {}
                        Err(e) => return Err(self.fail(e)),
                    }
                    match rustix::net::sockopt::socket_error(&socket) {
                        Ok(Ok(())) => return Ok(Some(TcpStream::from(socket))),
                        Ok(Err(e)) => self.last_error = Some(e.into()),
                        Err(e) => self.last_error = Some(e.into()),
                    }
                    self.next_address()?;
                }
            }
        }
    }

    /// The endpoint as given, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// As [`Connecting::wait_for`].
    pub fn waits_for(&self) -> Option<(RawFd, Interest)> {
        match &self.state {
            State::Resolving { done, .. } => Some((done.as_raw_fd(), Interest::Read)),
            State::Connecting { socket, .. } => Some((socket.as_raw_fd(), Interest::Write)),
            State::Idle | State::Connected(_) => None,
        }
    }
}

impl Connecting for TcpConnecting {
    fn poll(&mut self) -> Result<Option<Box<dyn Transport>>, TransportError> {
        let Some(stream) = self.poll_stream()? else { return Ok(None) };
        let t = TcpTransport::from_stream(stream).map_err(|e| self.fail(e))?;
        Ok(Some(Box::new(t)))
    }

    fn wait_for(&self) -> Option<(RawFd, Interest)> {
        self.waits_for()
    }
}
