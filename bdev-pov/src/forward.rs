//! Proxy connections: the fast path from a queue to the proxy it is mapped to.

use pov_runtime::transport::{connect, Transport};
use pov_runtime::FdRegistry;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Least time between two connection attempts to one proxy.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// One proxy endpoint and its (re)connectable transport.
pub(crate) struct ProxyConn {
    pub endpoint: String,
    pub transport: Option<Box<dyn Transport>>,
    watched_fd: Option<RawFd>,
    last_attempt: Option<Instant>,
    /// The transport changed since the last [`ProxyConn::sync_watch`] (a closed fd's
    /// number may be reused by the next connection, so compare-by-number is not enough).
    dirty: bool,
    /// Requests in flight on this connection (sent to the proxy as load information).
    pub in_flight: u32,
}

impl ProxyConn {
    pub fn new(endpoint: String) -> ProxyConn {
        ProxyConn { endpoint, transport: None, watched_fd: None, last_attempt: None, dirty: false, in_flight: 0 }
    }

    /// Returns a connected transport, connecting if the last attempt is old enough.
    pub fn ensure_connected(&mut self) -> Option<&mut Box<dyn Transport>> {
        if self.transport.is_none() {
            let now = Instant::now();
            if self.last_attempt.is_some_and(|t| now.duration_since(t) < RECONNECT_INTERVAL) {
                return None;
            }
            self.last_attempt = Some(now);
            match connect(&self.endpoint) {
                Ok(t) => {
                    log::info!("connected to proxy {}", self.endpoint);
                    self.transport = Some(t);
                    self.dirty = true;
                }
                Err(e) => {
                    log::warn!("proxy {}: {e}", self.endpoint);
                    return None;
                }
            }
        }
        self.transport.as_mut()
    }

    /// Polls the transport, if connected: frames received are appended to `frames`.
    /// Returns `(moved, broken)`: whether bytes moved, and whether the connection
    /// failed (logged with `device`'s name; the caller fails what was in flight on it
    /// and calls [`ProxyConn::disconnect`]).
    pub fn poll_frames(&mut self, device: &str, frames: &mut Vec<Vec<u8>>) -> (bool, bool) {
        let Some(t) = self.transport.as_mut() else { return (false, false) };
        match t.poll(&mut |f| frames.push(f.to_vec())) {
            Ok(moved) => (moved, false),
            Err(e) => {
                log::warn!("device {device}: proxy {}: {e}", self.endpoint);
                (false, true)
            }
        }
    }

    /// Bytes queued on the transport and not yet sent.
    pub fn pending_send_bytes(&self) -> usize {
        self.transport.as_ref().map_or(0, |t| t.pending_send_bytes())
    }

    /// Keeps the reactor's watch list in line with the current transport.
    pub fn sync_watch(&mut self, fds: &mut dyn FdRegistry) {
        let fd = self.transport.as_ref().and_then(|t| t.fd());
        if fd != self.watched_fd || self.dirty {
            self.dirty = false;
            if let Some(old) = self.watched_fd.take() {
                fds.unwatch(old);
            }
            if let Some(new) = fd {
                fds.watch(new);
            }
            self.watched_fd = fd;
        }
    }

    /// Drops the transport without touching the watch list (done at the next
    /// [`ProxyConn::sync_watch`]).
    pub fn drop_transport(&mut self) {
        self.transport = None;
        self.dirty = true;
    }

    /// Drops the transport (after an error) and stops watching it.
    pub fn disconnect(&mut self, fds: &mut dyn FdRegistry) {
        self.drop_transport();
        self.sync_watch(fds);
    }
}
