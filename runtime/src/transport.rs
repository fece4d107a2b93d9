//! The transport seam between `pov-dpud` and `pov-proxy` (paper §4.3: RDMA queue pairs
//! with a TCP fallback).
//!
//! A [`Transport`] is one connection carrying `pov_proto::wire` frames (a `u32`
//! little-endian length, then the body). It never blocks: [`Transport::send_frame`]
//! queues bytes, [`Transport::poll`] moves bytes in both directions and hands every
//! complete received frame body to a callback. A reactor poller drives it and, when
//! idle, sleeps on [`Transport::fd`].
//!
//! Implementations: [`tcp`] (default), [`mem`] (in-process pair for tests). Both pass
//! the same conformance test body ([`conformance`]).

use pov_proto::wire::{frame_len, LEN_PREFIX};
use std::os::fd::RawFd;

/// A broken or misbehaving connection. After an error the transport is dead: the
/// owner drops it and fails what was in flight on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("connection closed by peer {peer}")]
    Closed { peer: String },
    /// The peer sent a frame length over the protocol limit.
    #[error("peer {peer} sent a bad frame: {why}")]
    BadFrame { peer: String, why: String },
    /// A socket error.
    #[error("transport IO error with {peer}: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    /// The endpoint string could not be parsed or reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
}

/// One connection carrying length-prefixed frames.
pub trait Transport: Send {
    /// Queues one complete frame (length prefix included, as produced by the
    /// `encode_frame` functions of `pov_proto::wire`). Never blocks.
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), TransportError>;

    /// Sends queued bytes and receives available ones; calls `on_frame` with the body
    /// (length prefix stripped) of every complete frame received. Returns `true` if any
    /// byte moved.
    fn poll(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError>;

    /// Bytes queued but not yet handed to the network.
    fn pending_send_bytes(&self) -> usize;

    /// A descriptor that becomes readable when data arrives (for the reactor's sleep).
    fn fd(&self) -> Option<RawFd>;

    /// The peer's address, for messages.
    fn peer(&self) -> &str;
}

/// Accepts incoming transports (server side).
pub trait Listener: Send {
    /// Accepts one pending connection, if any. Never blocks.
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>>;

    /// A descriptor that becomes readable when a connection is pending.
    fn fd(&self) -> RawFd;

    /// The address actually bound (useful with port 0).
    fn local_addr(&self) -> String;
}

/// Connects to an endpoint: `tcp:HOST:PORT` or `HOST:PORT`.
pub fn connect(endpoint: &str) -> Result<Box<dyn Transport>, TransportError> {
    let addr = endpoint.strip_prefix("tcp:").unwrap_or(endpoint);
    Ok(Box::new(tcp::TcpTransport::connect(addr)?))
}

/// Binds a listener: `tcp:HOST:PORT` or `HOST:PORT`.
pub fn listen(endpoint: &str) -> std::io::Result<Box<dyn Listener>> {
    let addr = endpoint.strip_prefix("tcp:").unwrap_or(endpoint);
    Ok(Box::new(tcp::TcpListener::bind(addr)?))
}

/// Incremental frame parser over a receive buffer.
#[derive(Default)]
struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuf {
    /// Delivers every complete frame in the buffer, then compacts it.
    fn deliver(&mut self, peer: &str, on_frame: &mut dyn FnMut(&[u8])) -> Result<(), TransportError> {
        loop {
            let avail = &self.buf[self.start..];
            let n = match frame_len(avail) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err(TransportError::BadFrame { peer: peer.to_string(), why: e.to_string() }),
            };
            if avail.len() < LEN_PREFIX + n {
                break;
            }
            on_frame(&avail[LEN_PREFIX..LEN_PREFIX + n]);
            self.start += LEN_PREFIX + n;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

pub mod tcp {
    //! TCP transport: non-blocking sockets with `TCP_NODELAY`.

    use super::*;
    use std::collections::VecDeque;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// How long a connect may take before it fails.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A TCP connection carrying frames.
    pub struct TcpTransport {
        stream: TcpStream,
        peer: String,
        rx: FrameBuf,
        tx: VecDeque<Vec<u8>>,
        tx_off: usize,
        tx_bytes: usize,
    }

    impl TcpTransport {
        /// Connects to `HOST:PORT` (bounded by [`CONNECT_TIMEOUT`]).
        pub fn connect(addr: &str) -> Result<TcpTransport, TransportError> {
            let err = |source| TransportError::Connect { endpoint: addr.to_string(), source };
            let sa = addr
                .to_socket_addrs()
                .map_err(err)?
                .next()
                .ok_or_else(|| err(std::io::Error::new(ErrorKind::InvalidInput, "no address")))?;
            let stream = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT).map_err(err)?;
            TcpTransport::from_stream(stream).map_err(err)
        }

        /// Wraps an accepted or connected stream.
        pub fn from_stream(stream: TcpStream) -> std::io::Result<TcpTransport> {
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
            Ok(TcpTransport { stream, peer, rx: FrameBuf::default(), tx: VecDeque::new(), tx_off: 0, tx_bytes: 0 })
        }

        fn io_err(&self, source: std::io::Error) -> TransportError {
            TransportError::Io { peer: self.peer.clone(), source }
        }

        fn flush(&mut self) -> Result<bool, TransportError> {
            let mut moved = false;
            while let Some(front) = self.tx.front() {
                match self.stream.write(&front[self.tx_off..]) {
                    Ok(0) => return Err(TransportError::Closed { peer: self.peer.clone() }),
                    Ok(n) => {
                        moved = true;
                        self.tx_off += n;
                        self.tx_bytes -= n;
                        if self.tx_off == front.len() {
                            self.tx.pop_front();
                            self.tx_off = 0;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_err(e)),
                }
            }
            Ok(moved)
        }
    }

    impl Transport for TcpTransport {
        fn send_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
            self.tx_bytes += frame.len();
            self.tx.push_back(frame.to_vec());
            // Try to send at once: most frames leave without waiting for a poll.
            self.flush().map(|_| ())
        }

        fn poll(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
            let mut moved = self.flush()?;
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut chunk) {
                    Ok(0) => {
                        // Deliver what arrived before the close, then report it.
                        self.rx.deliver(&self.peer, on_frame)?;
                        return Err(TransportError::Closed { peer: self.peer.clone() });
                    }
                    Ok(n) => {
                        moved = true;
                        self.rx.buf.extend_from_slice(&chunk[..n]);
                        if n < chunk.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_err(e)),
                }
            }
            if moved {
                let peer = self.peer.clone();
                self.rx.deliver(&peer, on_frame)?;
            }
            Ok(moved)
        }

        fn pending_send_bytes(&self) -> usize {
            self.tx_bytes
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
}

pub mod mem {
    //! In-process transport pair for unit tests of the layers above the transport.

    use super::*;
    use crate::sys::EventFd;
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};

    struct Pipe {
        bytes: Mutex<Vec<u8>>,
        closed: std::sync::atomic::AtomicBool,
        ready: EventFd,
    }

    /// One end of an in-memory connection.
    pub struct MemTransport {
        tx: Arc<Pipe>,
        rx: Arc<Pipe>,
        frames: FrameBuf,
        peer: String,
    }

    /// Creates a connected pair.
    pub fn pair() -> (MemTransport, MemTransport) {
        let mk = || {
            Arc::new(Pipe {
                bytes: Mutex::new(Vec::new()),
                closed: Default::default(),
                ready: EventFd::new().expect("eventfd"),
            })
        };
        let (a, b) = (mk(), mk());
        (
            MemTransport { tx: a.clone(), rx: b.clone(), frames: FrameBuf::default(), peer: "mem:b".into() },
            MemTransport { tx: b, rx: a, frames: FrameBuf::default(), peer: "mem:a".into() },
        )
    }

    impl Drop for MemTransport {
        fn drop(&mut self) {
            self.tx.closed.store(true, std::sync::atomic::Ordering::Release);
            self.tx.ready.notify();
        }
    }

    impl Transport for MemTransport {
        fn send_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
            if self.rx.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(TransportError::Closed { peer: self.peer.clone() });
            }
            self.tx.bytes.lock().unwrap().extend_from_slice(frame);
            self.tx.ready.notify();
            Ok(())
        }

        fn poll(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
            self.rx.ready.drain();
            let got = std::mem::take(&mut *self.rx.bytes.lock().unwrap());
            let moved = !got.is_empty();
            self.frames.buf.extend_from_slice(&got);
            let peer = self.peer.clone();
            self.frames.deliver(&peer, on_frame)?;
            if !moved && self.rx.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(TransportError::Closed { peer });
            }
            Ok(moved)
        }

        fn pending_send_bytes(&self) -> usize {
            0
        }

        fn fd(&self) -> Option<RawFd> {
            Some(self.rx.ready.as_raw_fd())
        }

        fn peer(&self) -> &str {
            &self.peer
        }
    }
}

#[doc(hidden)]
pub mod conformance {
    //! The one test body every [`Transport`] implementation must pass.

    use super::*;
    use pov_proto::io::{Op, SdkHint};
    use pov_proto::wire::{ProxyRequest, ProxyResponse};
    use pov_proto::Status;
    use std::time::{Duration, Instant};

    fn pump(t: &mut dyn Transport, want: usize, got: &mut Vec<Vec<u8>>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < want {
            assert!(Instant::now() < deadline, "timed out waiting for frames");
            t.poll(&mut |f| got.push(f.to_vec())).expect("poll");
        }
    }

    /// Runs the conformance body over a connected pair `(client, server)`.
    pub fn run(client: &mut dyn Transport, server: &mut dyn Transport) {
        // 1. Many frames of many sizes, both directions, in order, byte-exact.
        let sizes = [0usize, 1, 511, 4096, 65_537, pov_proto::MAX_IO_BYTES as usize];
        let mut frame = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            let r = ProxyRequest {
                op: Op::Write,
                tag: i as u64,
                offset: 0,
                length: 0,
                flags: 0,
                hint: SdkHint::default(),
                trace: false,
                qos: 0,
                load: 0,
                session_id: 1,
                tenant: "t".into(),
                path: format!("f{i}"),
            };
            r.encode_frame(&payload, &mut frame).unwrap();
            client.send_frame(&frame).unwrap();
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < sizes.len() {
            assert!(Instant::now() < deadline, "timed out");
            client.poll(&mut |_| panic!("client got an unexpected frame")).unwrap();
            server.poll(&mut |f| got.push(f.to_vec())).unwrap();
        }
        for (i, f) in got.iter().enumerate() {
            let d = ProxyRequest::decode(f).unwrap();
            assert_eq!(d.req.tag, i as u64);
            assert_eq!(d.payload.len(), sizes[i]);
            assert!(d.payload.iter().enumerate().all(|(j, b)| *b == (i * 31 + j) as u8));
        }
        for i in 0..100u64 {
            ProxyResponse { op: 3, tag: i, status: Status::Ok, result: i, flags: 0 }.encode_frame(&i.to_le_bytes(), &mut frame);
            server.send_frame(&frame).unwrap();
        }
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while back.len() < 100 {
            assert!(Instant::now() < deadline, "timed out");
            server.poll(&mut |_| {}).unwrap();
            client.poll(&mut |f| back.push(f.to_vec())).unwrap();
        }
        for (i, f) in back.iter().enumerate() {
            let (r, p) = ProxyResponse::decode(f).unwrap();
            assert_eq!(r.tag, i as u64);
            assert_eq!(p, (i as u64).to_le_bytes());
        }
        // 2. Nothing more arrives.
        let mut extra = Vec::new();
        client.poll(&mut |f| extra.push(f.to_vec())).unwrap();
        assert!(extra.is_empty());
        let _ = pump;
    }

    /// After the server end is dropped, the client sees an error, not a hang.
    pub fn run_close(client: &mut dyn Transport, server: Box<dyn Transport>) {
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "close not detected");
            match client.poll(&mut |_| {}) {
                Err(_) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// A peer announcing an oversized frame gets a `BadFrame` error, not a huge
    /// allocation.
    pub fn run_bad_frame(client: &mut dyn Transport, server: &mut dyn Transport) {
        client.send_frame(&u32::MAX.to_le_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "bad frame not detected");
            client.poll(&mut |_| {}).unwrap();
            match server.poll(&mut |_| panic!("no frame expected")) {
                Err(TransportError::BadFrame { .. }) => break,
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn tcp_pair() -> (Box<dyn Transport>, Box<dyn Transport>) {
        let mut l = listen("127.0.0.1:0").unwrap();
        let c = connect(&format!("tcp:{}", l.local_addr())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = l.accept().unwrap() {
                return (c, s);
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn tcp_conformance() {
        let (mut c, mut s) = tcp_pair();
        conformance::run(c.as_mut(), s.as_mut());
        let (mut c, s) = tcp_pair();
        conformance::run_close(c.as_mut(), s);
        let (mut c, mut s) = tcp_pair();
        conformance::run_bad_frame(c.as_mut(), s.as_mut());
    }

    #[test]
    fn mem_conformance() {
        let (mut c, mut s) = mem::pair();
        conformance::run(&mut c, &mut s);
        let (mut c, s) = mem::pair();
        conformance::run_close(&mut c, Box::new(s));
        let (mut c, mut s) = mem::pair();
        conformance::run_bad_frame(&mut c, &mut s);
    }

    #[test]
    fn connect_refused_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(connect(&addr.to_string()), Err(TransportError::Connect { .. })));
    }
}
