//! In-process transports for tests (the `testing` feature): a connected [`pair`], and
//! named listeners that `mem:NAME` endpoints connect to through the connector registry,
//! so that a device and a proxy in one process talk without sockets.

use super::endpoint::{Connecting, Connector, Endpoint};
use super::{FrameBuf, Listener, Transport, TransportCounters, TransportError};
use crate::sys::{EventFd, Interest};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

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
    /// Queued, not yet flushed.
    out: Vec<u8>,
    counters: TransportCounters,
}

/// Creates a connected pair.
pub fn pair() -> (MemTransport, MemTransport) {
    let mk =
        || Arc::new(Pipe { bytes: Mutex::new(Vec::new()), closed: Default::default(), ready: EventFd::new().expect("eventfd") });
    let (a, b) = (mk(), mk());
    (MemTransport::new(a.clone(), b.clone(), "mem:b"), MemTransport::new(b, a, "mem:a"))
}

impl MemTransport {
    fn new(tx: Arc<Pipe>, rx: Arc<Pipe>, peer: &str) -> MemTransport {
        MemTransport {
            tx,
            rx,
            frames: FrameBuf::default(),
            peer: peer.into(),
            out: Vec::new(),
            counters: TransportCounters::default(),
        }
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.tx.closed.store(true, std::sync::atomic::Ordering::Release);
        self.tx.ready.notify();
    }
}

impl Transport for MemTransport {
    fn queue_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        if self.rx.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(TransportError::Closed { peer: self.peer.clone() });
        }
        self.out.extend_from_slice(frame);
        self.counters.frames_sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, TransportError> {
        if self.out.is_empty() {
            return Ok(false);
        }
        if self.rx.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(TransportError::Closed { peer: self.peer.clone() });
        }
        self.tx.bytes.lock().unwrap().append(&mut self.out);
        self.tx.ready.notify();
        self.counters.sends += 1;
        Ok(true)
    }

    fn counters(&self) -> TransportCounters {
        self.counters
    }

    fn receive(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, TransportError> {
        let mut moved = false;
        self.rx.ready.drain();
        let got = std::mem::take(&mut *self.rx.bytes.lock().unwrap());
        if !got.is_empty() {
            moved = true;
            self.counters.receives += 1;
        }
        self.frames.push(&got);
        let peer = self.peer.clone();
        self.counters.frames_received += self.frames.deliver(&peer, on_frame)?;
        if !moved && self.rx.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(TransportError::Closed { peer });
        }
        Ok(moved)
    }

    fn partial_frame_bytes(&self) -> usize {
        self.frames.partial_bytes()
    }

    fn pending_send_bytes(&self) -> usize {
        self.out.len()
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.rx.ready.as_raw_fd())
    }

    fn peer(&self) -> &str {
        &self.peer
    }
}

/// Pending connections of one named listener.
struct Backlog {
    pending: Mutex<VecDeque<MemTransport>>,
    ready: EventFd,
}

fn listeners() -> &'static Mutex<HashMap<String, Weak<Backlog>>> {
    static L: OnceLock<Mutex<HashMap<String, Weak<Backlog>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// A named in-process listener: `mem:NAME` endpoints connect to it while it lives.
pub struct MemListener {
    name: String,
    backlog: Arc<Backlog>,
}

impl MemListener {
    /// Listens on `name`.
    ///
    /// # Errors
    /// `AddrInUse` if a live listener has that name.
    pub fn bind(name: &str) -> std::io::Result<MemListener> {
        let mut l = listeners().lock().unwrap_or_else(|e| e.into_inner());
        if l.get(name).is_some_and(|w| w.strong_count() > 0) {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("mem:{name} is in use")));
        }
        let backlog = Arc::new(Backlog { pending: Mutex::new(VecDeque::new()), ready: EventFd::new()? });
        l.insert(name.to_string(), Arc::downgrade(&backlog));
        Ok(MemListener { name: name.to_string(), backlog })
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        let mut l = listeners().lock().unwrap_or_else(|e| e.into_inner());
        if l.get(&self.name).is_some_and(|w| w.ptr_eq(&Arc::downgrade(&self.backlog))) {
            l.remove(&self.name);
        }
    }
}

impl Listener for MemListener {
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>> {
        self.backlog.ready.drain();
        let mut p = self.backlog.pending.lock().unwrap_or_else(|e| e.into_inner());
        let next = p.pop_front();
        if !p.is_empty() {
            self.backlog.ready.notify();
        }
        Ok(next.map(|t| Box::new(t) as Box<dyn Transport>))
    }

    fn fd(&self) -> RawFd {
        self.backlog.ready.as_raw_fd()
    }

    fn local_addr(&self) -> String {
        self.name.clone()
    }
}

/// The `mem:` scheme: `mem:NAME` connects to the [`MemListener`] named `NAME`.
pub struct MemConnector;

/// A `mem:` attempt: settled when made.
struct Ready(Option<MemTransport>);

impl Connecting for Ready {
    fn poll(&mut self) -> Result<Option<Box<dyn Transport>>, TransportError> {
        Ok(self.0.take().map(|t| Box::new(t) as Box<dyn Transport>))
    }

    fn wait_for(&self) -> Option<(RawFd, Interest)> {
        None
    }
}

impl Connector for MemConnector {
    fn scheme(&self) -> &'static str {
        "mem"
    }

    fn check(&self, address: &str) -> Result<(), String> {
        if address.is_empty() {
            return Err("expected mem:NAME".into());
        }
        Ok(())
    }

    fn connect(&self, ep: &Endpoint) -> Result<Box<dyn Connecting>, TransportError> {
        let backlog = listeners().lock().unwrap_or_else(|e| e.into_inner()).get(ep.address()).and_then(Weak::upgrade);
        let Some(backlog) = backlog else {
            return Err(TransportError::Connect {
                endpoint: ep.to_string(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            });
        };
        let (client, server) = pair();
        backlog.pending.lock().unwrap_or_else(|e| e.into_inner()).push_back(server);
        backlog.ready.notify();
        Ok(Box::new(Ready(Some(client))))
    }

    fn listen(&self, address: &str) -> std::io::Result<Box<dyn Listener>> {
        Ok(Box::new(MemListener::bind(address)?))
    }
}
