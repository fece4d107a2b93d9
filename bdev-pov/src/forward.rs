//! Proxy connections: the fast path from a queue to the proxy it is mapped to, with
//! gathering IO (paper §4.3.2: "PoV leverages gathering IO to reduce interrupt
//! overhead"; there, about +15% IOPS).
//!
//! **Gathering.** With [`Gathering::enabled`], the proxy requests a device produces
//! while its poller serves the descriptors of one poll are only queued on the
//! transport ([`Transport::queue_frame`]) and leave together in one send at the start
//! of the device's next `poll` (which the adapter calls right after submitting the
//! poll's descriptors), or as soon as [`Gathering::batch_size`] frames are queued.
//! With [`Gathering::window_us`] > 0 the queued frames may wait up to that long for
//! more to join them, but only while other requests of the connection are in flight
//! (their answers produce the next requests): a lone request always leaves at the end
//! of the poll that queued it. Disabled, every frame is written at once.

use pov_runtime::transport::{connect, Transport, TransportCounters};
use pov_runtime::FdRegistry;
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Largest accepted [`Gathering::batch_size`], frames.
pub const MAX_BATCH_SIZE: u32 = 4096;
/// Largest accepted [`Gathering::window_us`], µs.
pub const MAX_WINDOW_US: u32 = 10_000;

/// Gathering settings of the proxy connections (the `pov_set_gathering` RPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gathering {
    /// Gather the requests of one poll into one send (`false`: one send per request).
    pub enabled: bool,
    /// Most frames queued before a send is forced, 1..=[`MAX_BATCH_SIZE`].
    pub batch_size: u32,
    /// Longest time, µs (0..=[`MAX_WINDOW_US`]), queued frames wait for more while
    /// other requests of their connection are in flight; 0 sends at every poll.
    pub window_us: u32,
}

impl Default for Gathering {
    /// Enabled, 64 frames per send at most, no window.
    fn default() -> Gathering {
        Gathering { enabled: true, batch_size: 64, window_us: 0 }
    }
}

impl Gathering {
    /// Checks the ranges; the error names the bad field.
    ///
    /// # Errors
    /// A message such as `batch_size must be 1..=4096`.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(format!("batch_size must be 1..={MAX_BATCH_SIZE}"));
        }
        if self.window_us > MAX_WINDOW_US {
            return Err(format!("window_us must be 0..={MAX_WINDOW_US}"));
        }
        Ok(())
    }
}

/// Gathering counters of a device's proxy connections (`pov_device_get_devices`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatherStats {
    /// Frames (proxy requests) sent.
    pub frames_sent: u64,
    /// Sends that carried them (TCP: `write(2)` calls that wrote bytes).
    pub sends: u64,
    /// `frames_sent / sends`.
    pub frames_per_send: f64,
    /// Frames (proxy responses) received.
    pub frames_received: u64,
    /// Receives that carried them (TCP: `read(2)` calls that returned bytes).
    pub receives: u64,
    /// `frames_received / receives`.
    pub frames_per_receive: f64,
}

impl GatherStats {
    /// Sums the counters of `conns`.
    pub(crate) fn of(conns: &[ProxyConn]) -> GatherStats {
        let mut c = TransportCounters::default();
        for p in conns {
            c += p.counters();
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        GatherStats {
            frames_sent: c.frames_sent,
            sends: c.sends,
            frames_per_send: ratio(c.frames_sent, c.sends),
            frames_received: c.frames_received,
            receives: c.receives,
            frames_per_receive: ratio(c.frames_received, c.receives),
        }
    }
}

/// Frames received in one poll, stored back to back (no allocation per frame).
#[derive(Default)]
pub(crate) struct RxFrames {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl RxFrames {
    fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.ends.push(self.bytes.len());
    }

    /// The frames, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let f = &self.bytes[start..end];
            start = end;
            f
        })
    }

    /// Forgets every frame (keeps the memory).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// A proxy connection failed: the transport's error, or `None` for a transport already
/// dropped after a failed send (its error was logged then).
#[derive(Debug)]
pub(crate) struct Broken(pub Option<pov_runtime::transport::TransportError>);

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
    /// Frames queued on the transport and not flushed yet (gathering).
    queued: u32,
    /// When the oldest of them was queued (only tracked with a gathering window).
    oldest_queued: Option<Instant>,
    /// Counters of transports dropped so far.
    retired: TransportCounters,
    /// A transport was dropped after a failed send: what was in flight on it will
    /// never be answered (reported once by [`ProxyConn::poll_frames`]).
    lost: bool,
}

/// A connection to no endpoint, never connected (a placeholder while the real one is
/// taken out to be polled).
impl Default for ProxyConn {
    fn default() -> ProxyConn {
        ProxyConn::new(String::new())
    }
}

impl ProxyConn {
    pub fn new(endpoint: String) -> ProxyConn {
        ProxyConn {
            endpoint,
            transport: None,
            watched_fd: None,
            last_attempt: None,
            dirty: false,
            in_flight: 0,
            queued: 0,
            oldest_queued: None,
            retired: TransportCounters::default(),
            lost: false,
        }
    }

    /// Returns a connected transport, connecting if the last attempt is old enough.
    pub fn ensure_connected(&mut self) -> Option<&mut Box<dyn Transport>> {
        if self.lost {
            // Not before the requests of the lost transport have been failed.
            return None;
        }
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

    /// Sends one frame on the connected transport under the gathering policy `g`:
    /// written at once if gathering is off or `g.batch_size` frames are queued, else
    /// queued until [`ProxyConn::poll_frames`].
    ///
    /// # Errors
    /// The transport failed (the caller drops it with [`ProxyConn::drop_transport`]);
    /// [`pov_runtime::transport::TransportError::Closed`] if not connected.
    pub fn send(&mut self, frame: &[u8], g: &Gathering) -> Result<(), pov_runtime::transport::TransportError> {
        let Some(t) = self.transport.as_mut() else {
            return Err(pov_runtime::transport::TransportError::Closed { peer: self.endpoint.clone() });
        };
        if !g.enabled {
            return t.send_frame(frame);
        }
        t.queue_frame(frame)?;
        self.queued += 1;
        if g.window_us > 0 && self.oldest_queued.is_none() {
            self.oldest_queued = Some(Instant::now());
        }
        if self.queued >= g.batch_size {
            self.queued = 0;
            self.oldest_queued = None;
            t.flush()?;
        }
        Ok(())
    }

    /// Whether queued frames may wait for more at the end of this poll (see the
    /// module docs): only with a window, while other requests are in flight, and
    /// until the window has passed.
    fn hold(&self, g: &Gathering) -> bool {
        g.enabled
            && g.window_us > 0
            && self.in_flight > self.queued
            && self.oldest_queued.is_some_and(|t| t.elapsed() < Duration::from_micros(u64::from(g.window_us)))
    }

    /// Flushes gathered frames (unless [`Gathering::window_us`] lets them wait), then
    /// receives: frames received are appended to `frames`. Returns `(busy, broken)`:
    /// whether bytes moved or frames are held back (the caller must poll again soon),
    /// and whether the connection failed (logged with `device`'s name; the caller fails
    /// what was in flight on it and calls [`ProxyConn::disconnect`]).
    pub fn poll_frames(&mut self, device: &str, g: &Gathering, frames: &mut RxFrames) -> (bool, bool) {
        match self.poll_with(g, &mut |f| frames.push(f)) {
            Ok(busy) => (busy, false),
            Err(Broken(e)) => {
                if let Some(e) = e {
                    log::warn!("device {device}: proxy {}: {e}", self.endpoint);
                }
                (false, true)
            }
        }
    }

    /// As [`ProxyConn::poll_frames`], but hands each received frame body to `on_frame`
    /// as it is parsed (no copy). Returns whether bytes moved or frames are held back;
    /// [`Broken`] if the connection failed (the caller logs the error, fails what was
    /// in flight on it and calls [`ProxyConn::disconnect`]).
    pub fn poll_with(&mut self, g: &Gathering, on_frame: &mut dyn FnMut(&[u8])) -> Result<bool, Broken> {
        let held = self.queued > 0 && self.hold(g);
        let Some(t) = self.transport.as_mut() else {
            return if std::mem::take(&mut self.lost) { Err(Broken(None)) } else { Ok(false) };
        };
        let sent = if held { false } else { t.flush().map_err(|e| Broken(Some(e)))? };
        let received = t.receive(on_frame).map_err(|e| Broken(Some(e)))?;
        if !held {
            self.queued = 0;
            self.oldest_queued = None;
        }
        Ok(received || sent || held)
    }

    /// Frame and syscall counters of every transport this connection has had.
    pub fn counters(&self) -> TransportCounters {
        let mut c = self.retired;
        if let Some(t) = &self.transport {
            c += t.counters();
        }
        c
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

    /// Drops the transport after a failed send, without touching the watch list (done
    /// at the next [`ProxyConn::sync_watch`]). The next [`ProxyConn::poll_frames`]
    /// reports the connection broken, so that the requests in flight on it (gathered
    /// ones included) fail at once instead of waiting for their timeout.
    pub fn drop_transport(&mut self) {
        if self.transport.is_some() {
            self.retired = self.counters();
            self.lost = true;
        }
        self.queued = 0;
        self.oldest_queued = None;
        self.transport = None;
        self.dirty = true;
    }

    /// Drops the transport (after an error; its requests in flight have been failed)
    /// and stops watching it.
    pub fn disconnect(&mut self, fds: &mut dyn FdRegistry) {
        self.drop_transport();
        self.lost = false;
        self.sync_watch(fds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pov_runtime::transport::mem;

    #[test]
    fn a_failed_send_is_reported_once_and_blocks_reconnect_until_handled() {
        let (a, b) = mem::pair();
        let mut conn = ProxyConn::new("tcp:127.0.0.1:9".into());
        conn.transport = Some(Box::new(a));
        let g = Gathering::default();
        conn.send(b"\x01\x00\x00\x00x", &g).unwrap();
        drop(b);
        assert!(conn.send(b"\x01\x00\x00\x00y", &g).is_err(), "the peer is gone");
        conn.drop_transport();
        assert!(conn.ensure_connected().is_none(), "no reconnect before the loss is handled");
        let mut frames = RxFrames::default();
        assert_eq!(conn.poll_frames("d", &g, &mut frames), (false, true), "loss reported");
        conn.disconnect(&mut ());
        assert_eq!(conn.poll_frames("d", &g, &mut frames), (false, false), "and only once");
        assert_eq!(conn.counters().frames_sent, 1, "counters survive the transport");
    }

    #[test]
    fn rx_frames_keep_order_and_bounds() {
        let mut f = RxFrames::default();
        for x in [&b""[..], b"a", b"bcd", b""] {
            f.push(x);
        }
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![&b""[..], b"a", b"bcd", b""]);
        f.clear();
        assert_eq!(f.iter().count(), 0);
    }
}
