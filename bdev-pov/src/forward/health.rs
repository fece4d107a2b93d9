//! Proxy liveness: when a proxy is declared down, how requests avoid it, and how it
//! rejoins (`docs/protocol.md`, "Proxy liveness and rerouting"; paper §4.3.2, §4.6).
//!
//! A connection is **usable** until it is declared **down**, which happens when
//!
//! * its connection breaks or cannot be made (a killed proxy: at once), or
//! * it has requests in flight, nothing has arrived from it for [`PING_AFTER`], and the
//!   [`Op::Ping`](pov_proto::io::Op::Ping) then sent is not answered (nor any other
//!   frame received) within [`DOWN_AFTER`] (a black-holed link or a stopped process:
//!   within `PING_AFTER + DOWN_AFTER` = 1.75 s by default, plus one poll; both are
//!   device settings, [`Liveness`]).
//!
//! The proxy answers pings from its network loop, ahead of its backend, so a slow
//! backend alone does not make its proxy look dead. A proxy down, new requests go to
//! the others. What it had in flight:
//!
//! * a **broken** connection (the proxy process is gone): everything fails with
//!   `Unavailable` at once, and the device may resend idempotent requests elsewhere;
//! * a **silent** proxy (maybe only stalled: a stopped process, a partition that heals)
//!   may still run what it holds, so requests that change nothing fail at once (and are
//!   resent), while **data-changing requests wait for its answer** on the connection
//!   they went out on, until their deadline (`Timeout`: outcome unknown). Resending a
//!   write elsewhere would let the stale copy land after newer data — the failover test
//!   lost an acknowledged block that way. When none is left the connection is reset.
//!
//! Then probing starts: a new connection attempt carrying a ping,
//! [`FIRST_PROBE`] after it went down, then backing off to every [`PROBE_INTERVAL`];
//! the first frame received on it makes the proxy usable again, so a proxy that comes
//! back rejoins without a configuration change.
//!
//! [`pick`] chooses where a request goes: its home connection while usable, else the
//! next usable one in ring order.

use std::time::{Duration, Instant};

/// Default of [`Liveness::ping_after`]: with requests in flight and nothing heard for
/// this long, a connection is pinged.
pub const PING_AFTER: Duration = Duration::from_millis(250);
/// Default of [`Liveness::down_after`]: a ping unanswered (and nothing else received)
/// for this long declares the proxy down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// The detection times of a device's proxies (device settings `proxy_ping_after_ms`
/// and `proxy_down_after_ms`): a silent proxy is declared down within
/// `ping_after + down_after` (plus one poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Silence (with requests in flight) before a ping.
    pub ping_after: Duration,
    /// Wait for any frame after a ping before the proxy is down.
    pub down_after: Duration,
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness { ping_after: PING_AFTER, down_after: DOWN_AFTER }
    }
}

impl Liveness {
    /// From the settings in ms; checks 10 ≤ ping_after ≤ 60000 and 50 ≤ down_after ≤
    /// 60000 (the error names the setting).
    pub fn from_ms(ping_after_ms: u32, down_after_ms: u32) -> Result<Liveness, String> {
        if !(10..=60_000).contains(&ping_after_ms) {
            return Err(format!("proxy_ping_after_ms {ping_after_ms}: must be 10-60000"));
        }
        if !(50..=60_000).contains(&down_after_ms) {
            return Err(format!("proxy_down_after_ms {down_after_ms}: must be 50-60000"));
        }
        Ok(Liveness {
            ping_after: Duration::from_millis(u64::from(ping_after_ms)),
            down_after: Duration::from_millis(u64::from(down_after_ms)),
        })
    }
}

/// Serde default of `proxy_ping_after_ms` (ms).
pub fn default_ping_after_ms() -> u32 {
    PING_AFTER.as_millis() as u32
}

/// Serde default of `proxy_down_after_ms` (ms).
pub fn default_down_after_ms() -> u32 {
    DOWN_AFTER.as_millis() as u32
}
/// Longest time between two probes (connection attempt + ping) of a proxy that is
/// down: the first comes [`FIRST_PROBE`] after it went down, each next one twice as late,
/// up to this (a restarted proxy is found within ~100 ms of listening again).
pub const PROBE_INTERVAL: Duration = super::conn::RECONNECT_INTERVAL;
/// Delay of the first probe of a proxy that went down.
pub const FIRST_PROBE: Duration = Duration::from_millis(25);

/// Liveness of one proxy connection.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// Since when the proxy is down (`None`: usable).
    pub down_since: Option<Instant>,
    /// Last time a frame arrived (or the forwarder was made).
    pub last_heard: Instant,
    /// The ping in flight: its tag and when it was sent.
    pub ping: Option<(u64, Instant)>,
    /// Tag of the last ping sent (its answer may come after another frame ended the
    /// wait; it is not a stale answer).
    pub last_ping_tag: u64,
    /// Last probe of a down proxy.
    pub last_probe: Option<Instant>,
    /// Wait before the next probe (doubles up to [`PROBE_INTERVAL`]).
    pub probe_wait: Duration,
    /// Times this proxy was declared down.
    pub downs: u64,
    /// Declared down by silence with data-changing requests still waiting on its
    /// connection (see the module docs).
    pub silent: bool,
}

impl Health {
    pub(crate) fn new(now: Instant) -> Health {
        Health {
            down_since: None,
            last_heard: now,
            ping: None,
            last_ping_tag: 0,
            last_probe: None,
            probe_wait: FIRST_PROBE,
            downs: 0,
            silent: false,
        }
    }

    pub(crate) fn usable(&self) -> bool {
        self.down_since.is_none()
    }

    /// Marks the proxy down (if it is not already). Returns `true` if it was usable.
    pub(crate) fn mark_down(&mut self, now: Instant) -> bool {
        self.ping = None;
        if self.down_since.is_some() {
            return false;
        }
        self.down_since = Some(now);
        self.last_probe = Some(now);
        self.probe_wait = FIRST_PROBE;
        self.downs += 1;
        true
    }

    /// A frame arrived. Returns `true` if this brings the proxy back.
    pub(crate) fn heard(&mut self, now: Instant) -> bool {
        self.last_heard = now;
        self.ping = None;
        self.silent = false;
        self.down_since.take().is_some()
    }

    /// What a usable, connected proxy with `in_flight` requests needs now.
    pub(crate) fn check(&self, now: Instant, in_flight: u32, l: &Liveness) -> Check {
        match self.ping {
            Some((_, sent)) if now.saturating_duration_since(sent) >= l.down_after => Check::Down,
            Some(_) => Check::Wait,
            None if in_flight > 0 && now.saturating_duration_since(self.last_heard) >= l.ping_after => Check::Ping,
            None => Check::Wait,
        }
    }

    /// `true` if a down proxy is due for a probe.
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        self.down_since.is_some()
            && self.ping.is_none()
            && self.last_probe.map_or(true, |t| now.saturating_duration_since(t) >= self.probe_wait)
    }

    /// Records a probe sent now; the next one waits twice as long (at most
    /// [`PROBE_INTERVAL`]).
    pub(crate) fn probed(&mut self, now: Instant) {
        self.last_probe = Some(now);
        self.probe_wait = (self.probe_wait * 2).min(PROBE_INTERVAL);
    }

    /// The next instant liveness needs a look, given `in_flight` requests on it.
    pub(crate) fn deadline(&self, in_flight: u32, l: &Liveness) -> Option<Instant> {
        match (self.ping, self.down_since) {
            (Some((_, sent)), _) => Some(sent + l.down_after),
            (None, Some(_)) => Some(self.last_probe.map_or_else(Instant::now, |t| t + self.probe_wait)),
            (None, None) if in_flight > 0 => Some(self.last_heard + l.ping_after),
            (None, None) => None,
        }
    }
}

/// What [`Health::check`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Wait,
    Ping,
    Down,
}

/// Bit of connection `i` in a request's set of connections tried (connections past 63
/// are not tracked: a request may then be tried on one of them twice).
pub(crate) fn conn_bit(i: usize) -> u64 {
    if i < 64 {
        1 << i
    } else {
        0
    }
}

/// Takes out of `held` (requests waiting for a usable proxy) those whose deadline
/// passed (first: to fail) and, when a proxy is `usable`, all the others (second: to
/// send); what remains stays held.
pub(crate) fn release_held<T>(held: &mut Vec<T>, usable: bool, deadline: impl Fn(&T) -> Instant) -> (Vec<T>, Vec<T>) {
    if held.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let now = Instant::now();
    let (expired, waiting): (Vec<T>, Vec<T>) = std::mem::take(held).into_iter().partition(|x| now >= deadline(x));
    if usable {
        (expired, waiting)
    } else {
        *held = waiting;
        (expired, Vec::new())
    }
}

/// The connection a request whose home is `home` takes: `home` if it is usable and not
/// `avoid`ed, else the next usable one after it in ring order that is not avoided;
/// when none is usable, the first not avoided (from `home` on: its attempt may find
/// the proxy back). `None` when every connection is avoided.
pub(crate) fn pick(health: &[Health], home: usize, avoid: &dyn Fn(usize) -> bool) -> Option<usize> {
    let n = health.len();
    let ring = || (0..n).map(|k| (home + k) % n).filter(|&i| !avoid(i));
    ring().find(|&i| health[i].usable()).or_else(|| ring().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_prefers_home_then_the_next_usable_and_honours_avoid() {
        let now = Instant::now();
        let mut h: Vec<Health> = (0..3).map(|_| Health::new(now)).collect();
        let none = |_: usize| false;
        assert_eq!(pick(&h, 1, &none), Some(1));
        h[1].mark_down(now);
        assert_eq!(pick(&h, 1, &none), Some(2), "next in ring order");
        assert_eq!(pick(&h, 1, &|i| i == 2), Some(0));
        h[0].mark_down(now);
        h[2].mark_down(now);
        assert_eq!(pick(&h, 1, &none), Some(1), "all down: home, whose attempt may find it back");
        assert_eq!(pick(&h, 1, &|_| true), None);
        assert!(h[1].heard(now), "a frame brings it back");
        assert_eq!(pick(&h, 2, &none), Some(1));
    }

    #[test]
    fn a_silent_proxy_is_pinged_then_declared_down() {
        let l = Liveness::default();
        assert!(Liveness::from_ms(5, 100).is_err() && Liveness::from_ms(100, 10).is_err());
        assert_eq!(Liveness::from_ms(250, 1500), Ok(l));
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        assert_eq!(h.check(t0 + PING_AFTER * 4, 0, &l), Check::Wait, "nothing in flight: nothing to wait for");
        assert_eq!(h.check(t0 + PING_AFTER / 2, 1, &l), Check::Wait);
        assert_eq!(h.check(t0 + PING_AFTER, 1, &l), Check::Ping);
        h.ping = Some((7, t0 + PING_AFTER));
        assert_eq!(h.check(t0 + PING_AFTER + DOWN_AFTER / 2, 1, &l), Check::Wait);
        assert_eq!(h.check(t0 + PING_AFTER + DOWN_AFTER, 1, &l), Check::Down);
        assert!(h.mark_down(t0 + PING_AFTER + DOWN_AFTER));
        assert!(!h.mark_down(t0 + PING_AFTER + DOWN_AFTER), "counted once");
        assert_eq!(h.downs, 1);
        let down = t0 + PING_AFTER + DOWN_AFTER;
        assert!(!h.probe_due(down), "the first probe waits a little");
        assert!(h.probe_due(down + FIRST_PROBE));
        h.probed(down + FIRST_PROBE);
        assert!(!h.probe_due(down + FIRST_PROBE * 2), "backs off");
        assert!(h.probe_due(down + FIRST_PROBE * 3));
        for _ in 0..10 {
            h.probed(down);
        }
        assert_eq!(h.probe_wait, PROBE_INTERVAL, "capped");
    }
}
