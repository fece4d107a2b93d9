//! The DPU's QoS scheduler (paper §4.5, full-path QoS): a [`Scheduler`] between the
//! vhost poller and the forwarder, with per-tenant, per-class queues. Pure: no IO, no
//! threads, no clock reads; time is the `now` given to [`Scheduler::pop`].
//!
//! **Algorithm.** Each tenant has a FIFO per class. An item's class is
//! `max(ticket.class, policy.max_class)` ([`LC`] = 0 before [`BC`] = 1; any class
//! above 1 is BC), so a BC-only tenant cannot jump the LC queue. The policy is looked up
//! at every push ([`PolicyLookup`]) and replaces the tenant's: a new class applies to
//! that and later items, new rates and weight from the next pop on. `pop(now)`:
//! 1. **LC**: round-robin over tenants with LC items (FIFO within a tenant), skipping
//!    those whose limit cannot pay their head item now.
//! 2. **BC reservation** (mClock's reservation, Gulati et al., OSDI 2010, as a token
//!    bucket): among tenants with no LC item queued, whose limit and reservation buckets
//!    can both pay their BC head, the one whose reservation tokens have been available
//!    longest (mClock's earliest reservation tag). The reservation is a floor, not an
//!    extra: weight-phase service also drains the reservation bucket, down to zero.
//! 3. **BC weight**: start-time fair queueing (SFQ, Goyal et al., SIGCOMM 1996) over
//!    the same tenants: the smallest start tag goes; its finish tag is
//!    `start + cost × 10000 / weight` with cost = `max(bytes, 4096)` (tiny IOs are not
//!    free); virtual time is the start tag of the last item served. A tenant that comes
//!    back (idle, or held by its limit or its own LC items) starts at
//!    `max(virtual time, its last finish)`: no credit for time it was not eligible.
//! 4. Anything else stays queued: [`Scheduler::next_wakeup`] is the earliest instant a
//!    held head item's limit buckets can pay it. Nothing is failed or dropped.
//!
//! [`Scheduler::pop_class`]`(now, false)` stops after step 1: the caller's bound on BC
//! work in flight (a PoV device's BC window, a proxy's PID-controlled window) is
//! reached, so only LC items go and BC items wait for room.
//!
//! **Token buckets** (as Firecracker's rate limiter: separate ops and bytes buckets;
//! a read/write cap and, optionally, a read-only and a write-only cap as SPDK's
//! `bdev_set_qos_limit` has, each its own pair of buckets that must all pay;
//! throttling is a state and a timer resumes the queue). Rates are ops/s and bytes/s;
//! a rate of 0 means no bucket. Capacity is one second of rate; a bucket starts full and
//! refills continuously (exact integer nanosecond arithmetic) from the elapsed time.
//! **Rule:** an item of cost `c` goes when the bucket holds `min(c, capacity)` tokens;
//! it then takes `c` (the balance goes negative only for an item larger than the
//! capacity, and only from a full bucket). An item goes only if every bucket that applies
//! to it can pay.
//! Hence over any window of `W` seconds a limited tenant is served at most
//! `rate × W + max(rate × 1 s, largest item)` (ops: `rate × (W + 1 s)`).
//!
//! **Guarantees.** LC items of tenants not held by their limit always go before BC
//! items; limits are never exceeded beyond the bound above; work-conserving: if some
//! tenant's next item (its LC head if any, else its BC head) can be paid by its limit,
//! `pop` returns an item; backlogged BC tenants share by weight (cost-weighted, within
//! one item per tenant); a BC tenant under its reservation goes before weight sharing.
//! **Not guaranteed:** a reservation needs capacity (the caller's pop rate) to exist and
//! LC work not to take it all; a reservation above the limit is capped by the limit;
//! fairness is over the tenants queued here, not over the whole path; LC tenants get no
//! shares among themselves beyond round-robin by items.
//!
//! **Memory.** Tenant state (queues, buckets, tags) lives in a slab indexed by a
//! `HashMap` of names, allocated once per tenant. At most once a second a pop drops the
//! state of tenants with nothing queued whose buckets are full again: a tenant back
//! later is exactly as fresh, except that it may regain at most one item's weight tag.

use crate::sched::{Scheduler, Ticket};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// QoS class numbers as in [`Ticket::class`]: 0 latency-critical (LC).
pub const LC: u8 = 0;
/// Bandwidth-critical (BC).
pub const BC: u8 = 1;

/// Nanoseconds per second: bucket tokens are counted in token-nanoseconds.
const NS: i128 = 1_000_000_000;
/// Least weight-sharing cost of an item, bytes.
const MIN_COST: u64 = 4096;
/// Largest weight; a finish tag grows by `cost × MAX_WEIGHT / weight`.
const MAX_WEIGHT: u32 = 10_000;
/// How often a pop looks for idle tenant state to drop.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A rate: operations and bytes per second; 0 = no bound for that part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rate {
    /// Operations per second.
    pub ops_per_sec: u64,
    /// Bytes per second.
    pub bytes_per_sec: u64,
}

/// A tenant's QoS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Highest class the tenant may use: LC (may ask for LC or BC) or BC (an LC ask is served as BC).
    pub max_class: u8,
    /// BC share weight, 1..=10000 (default 100; values outside are clamped).
    pub weight: u32,
    /// Guaranteed rate (BC): served ahead of weight sharing while under it. Default none.
    pub reservation: Rate,
    /// Hard cap (any class): token buckets with a burst of one second's worth, at least one item.
    pub limit: Rate,
    /// Further caps on reads alone and on writes alone ([`Ticket::write`]), as `limit`.
    pub read_limit: Rate,
    pub write_limit: Rate,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_class: LC,
            weight: 100,
            reservation: Rate::default(),
            limit: Rate::default(),
            read_limit: Rate::default(),
            write_limit: Rate::default(),
        }
    }
}

/// Looks up a tenant's policy at push time (policies change at runtime).
pub type PolicyLookup = Arc<dyn Fn(&str) -> Policy + Send + Sync>;

/// Counters per class: queued now, served, throttled (items that had to wait for a
/// limit, each counted once), and BC items served in the reservation phase (also in
/// `bc_served`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QosStats {
    /// LC items queued now.
    pub lc_queued: u64,
    /// BC items queued now.
    pub bc_queued: u64,
    /// LC items served.
    pub lc_served: u64,
    /// BC items served (either BC phase).
    pub bc_served: u64,
    /// Items held back by a limit at least once.
    pub throttled: u64,
    /// BC items served ahead of weight sharing, under their tenant's reservation.
    pub reservation_served: u64,
    /// Pops that left BC items queued because the caller's bound on BC work in flight
    /// was reached ([`Scheduler::pop_class`] with `bc == false`).
    pub bc_window_holds: u64,
    /// The same per tenant (at most [`MAX_COUNTED_TENANTS`] names; the rest are counted
    /// under [`OTHER_TENANTS`]).
    pub tenants: std::collections::BTreeMap<String, TenantCounts>,
}

/// Most tenants counted by name in [`QosStats::tenants`].
pub const MAX_COUNTED_TENANTS: usize = 4096;
/// Name under which further tenants are counted.
pub const OTHER_TENANTS: &str = "*other*";

/// One tenant's counters at a scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantCounts {
    /// Items queued now.
    pub queued: u64,
    /// LC items served.
    pub lc_served: u64,
    /// BC items served.
    pub bc_served: u64,
    /// Items held back by a limit at least once.
    pub throttled: u64,
}

impl TenantCounts {
    fn add(&mut self, o: &TenantCounts) {
        self.queued += o.queued;
        self.lc_served += o.lc_served;
        self.bc_served += o.bc_served;
        self.throttled += o.throttled;
    }
}

/// `t + ns`, saturating far in the future instead of overflowing.
fn after(t: Instant, ns: i128) -> Instant {
    let d = Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX));
    t.checked_add(d).or_else(|| t.checked_add(Duration::from_secs(1 << 30))).unwrap_or(t)
}

/// One token bucket: `tokens` in token-nanoseconds (tokens × 10⁹) as of `last`.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u64,
    tokens: i128,
    last: Instant,
}

impl Bucket {
    fn cap(&self) -> i128 {
        i128::from(self.rate) * NS
    }
    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let ns = i128::try_from(now.duration_since(self.last).as_nanos()).unwrap_or(i128::MAX);
            self.tokens = self.tokens.saturating_add(ns.saturating_mul(i128::from(self.rate))).min(self.cap());
            self.last = now;
        }
    }
    fn need(&self, cost: u64) -> i128 {
        (i128::from(cost) * NS).min(self.cap())
    }
    fn can_pay(&self, cost: u64) -> bool {
        self.tokens >= self.need(cost)
    }
    /// When it can pay `cost` (`None`: now).
    fn ready_at(&self, cost: u64) -> Option<Instant> {
        let deficit = self.need(cost) - self.tokens;
        let rate = i128::from(self.rate);
        (deficit > 0).then(|| after(self.last, (deficit + rate - 1) / rate))
    }
}

/// The ops and bytes buckets of one [`Rate`].
#[derive(Debug, Clone, Default)]
struct Buckets {
    ops: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Buckets {
    /// Refills to `now` at the old rates, then follows `rate` (a new bucket is full).
    fn update(&mut self, rate: Rate, now: Instant) {
        for (b, r) in [(&mut self.ops, rate.ops_per_sec), (&mut self.bytes, rate.bytes_per_sec)] {
            match b {
                _ if r == 0 => *b = None,
                Some(b) => {
                    b.refill(now);
                    b.rate = r;
                    b.tokens = b.tokens.min(b.cap());
                }
                None => *b = Some(Bucket { rate: r, tokens: i128::from(r) * NS, last: now }),
            }
        }
    }
    fn each(&self, bytes: u64) -> impl Iterator<Item = (&Bucket, u64)> {
        self.ops.iter().map(|b| (b, 1)).chain(self.bytes.iter().map(move |b| (b, bytes)))
    }
    fn is_set(&self) -> bool {
        self.ops.is_some() || self.bytes.is_some()
    }
    fn is_full(&self) -> bool {
        self.each(0).all(|(b, _)| b.tokens >= b.cap())
    }
    fn can_pay(&self, bytes: u64) -> bool {
        self.each(bytes).all(|(b, c)| b.can_pay(c))
    }
    /// Nanoseconds since both buckets could pay (the larger, the earlier its deadline).
    fn slack(&self, bytes: u64) -> i128 {
        self.each(bytes).map(|(b, c)| (b.tokens - b.need(c)) / i128::from(b.rate)).min().unwrap_or(0)
    }
    fn ready_at(&self, bytes: u64) -> Option<Instant> {
        self.each(bytes).filter_map(|(b, c)| b.ready_at(c)).max()
    }
    /// Takes `bytes` and one op; `floor`: never below zero (nor lower if already below).
    fn take(&mut self, bytes: u64, floor: bool) {
        for (b, c) in [(&mut self.ops, 1), (&mut self.bytes, bytes)] {
            if let Some(b) = b {
                let left = b.tokens - i128::from(c) * NS;
                b.tokens = if floor { left.max(b.tokens.min(0)) } else { left };
            }
        }
    }
}

/// A tenant's limit buckets: reads and writes together, reads alone, writes alone. An
/// item goes only when every bucket that applies to it can pay.
#[derive(Debug, Clone, Default)]
struct Limits {
    rw: Buckets,
    r: Buckets,
    w: Buckets,
}

impl Limits {
    fn update(&mut self, p: &Policy, now: Instant) {
        self.rw.update(p.limit, now);
        self.r.update(p.read_limit, now);
        self.w.update(p.write_limit, now);
    }
    fn dir(&self, write: bool) -> &Buckets {
        if write {
            &self.w
        } else {
            &self.r
        }
    }
    fn can_pay(&self, (bytes, write): (u64, bool)) -> bool {
        self.rw.can_pay(bytes) && self.dir(write).can_pay(bytes)
    }
    fn take(&mut self, (bytes, write): (u64, bool)) {
        self.rw.take(bytes, false);
        if write {
            self.w.take(bytes, false);
        } else {
            self.r.take(bytes, false);
        }
    }
    fn ready_at(&self, (bytes, write): (u64, bool)) -> Option<Instant> {
        self.rw.ready_at(bytes).into_iter().chain(self.dir(write).ready_at(bytes)).max()
    }
    fn is_full(&self) -> bool {
        self.rw.is_full() && self.r.is_full() && self.w.is_full()
    }
}

/// One tenant: its policy, a FIFO per class (item, bytes, write), buckets and SFQ tags.
struct Tenant<T> {
    name: String,
    policy: Policy,
    queues: [VecDeque<(T, u64, bool)>; 2],
    limit: Limits,
    reserve: Buckets,
    /// SFQ start tag of the BC head (while BC items are queued).
    start: u128,
    /// SFQ finish tag of the last item served by weight.
    finish: u128,
    /// Head item already counted in `throttled`, per class.
    held: [bool; 2],
    /// Scratch of one pop: the limit can pay the head, per class.
    ok: [bool; 2],
    /// Its counters since its state was made (`queued` not kept: computed).
    counts: TenantCounts,
}

impl<T> Tenant<T> {
    fn queued(&self) -> usize {
        self.queues[0].len() + self.queues[1].len()
    }
    fn head_bytes(&self, class: usize) -> u64 {
        self.head(class).0
    }
    /// The head item's (bytes, write).
    fn head(&self, class: usize) -> (u64, bool) {
        self.queues[class].front().map_or((0, false), |&(_, b, w)| (b, w))
    }
    /// Eligible for the BC phases: no LC item of its own waiting and the limit pays.
    fn bc_ok(&self) -> bool {
        self.queues[0].is_empty() && self.ok[1]
    }
}

/// Which phase of `pop` serves an item.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Lc,
    Reservation,
    Weight,
}

/// LC first, BC by reservation then weight, every tenant held to its limit (module docs).
pub struct QosScheduler<T> {
    lookup: PolicyLookup,
    index: HashMap<String, usize>,
    tenants: Vec<Tenant<T>>,
    len: usize,
    lc_cursor: usize,
    vtime: u128,
    last_sweep: Option<Instant>,
    stats: QosStats,
    /// Counters of tenants whose state was dropped.
    retired: std::collections::BTreeMap<String, TenantCounts>,
}

/// Adds `c` to `name`'s counters in `m` (or [`OTHER_TENANTS`]' when `m` is full).
fn count_into(m: &mut std::collections::BTreeMap<String, TenantCounts>, name: &str, c: &TenantCounts) {
    if let Some(e) = m.get_mut(name) {
        return e.add(c);
    }
    let key = if m.len() < MAX_COUNTED_TENANTS { name } else { OTHER_TENANTS };
    m.entry(key.to_string()).or_default().add(c);
}

impl<T> QosScheduler<T> {
    /// An empty scheduler reading tenants' policies from `lookup`.
    pub fn new(lookup: PolicyLookup) -> Self {
        QosScheduler {
            lookup,
            index: HashMap::new(),
            tenants: Vec::new(),
            len: 0,
            lc_cursor: 0,
            vtime: 0,
            last_sweep: None,
            stats: QosStats::default(),
            retired: Default::default(),
        }
    }

    /// The counters (queued counts as of now).
    pub fn stats(&self) -> QosStats {
        let mut s = self.stats.clone();
        s.tenants = self.retired.clone();
        for t in &self.tenants {
            let c = TenantCounts { queued: t.queued() as u64, ..t.counts };
            count_into(&mut s.tenants, &t.name, &c);
        }
        s
    }

    fn serve(&mut self, i: usize, class: usize, phase: Phase) -> Option<T> {
        let t = &mut self.tenants[i];
        let (item, bytes, write) = t.queues[class].pop_front()?;
        t.held[class] = false;
        t.limit.take((bytes, write));
        self.len -= 1;
        let s = &mut self.stats;
        if phase == Phase::Lc {
            s.lc_queued -= 1;
            s.lc_served += 1;
            t.counts.lc_served += 1;
        } else {
            s.bc_queued -= 1;
            s.bc_served += 1;
            t.counts.bc_served += 1;
        }
        if phase == Phase::Reservation {
            s.reservation_served += 1;
            t.reserve.take(bytes, false);
        } else if phase == Phase::Weight {
            t.reserve.take(bytes, true);
            self.vtime = t.start;
            let weight = t.policy.weight.clamp(1, MAX_WEIGHT);
            t.finish = t.start + u128::from(bytes.max(MIN_COST)) * u128::from(MAX_WEIGHT) / u128::from(weight);
            t.start = t.finish;
        }
        Some(item)
    }

    /// Drops the state of idle tenants whose buckets are full (at most once a second).
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        let mut i = 0;
        while i < self.tenants.len() {
            let t = &mut self.tenants[i];
            t.limit.update(&t.policy, now);
            t.reserve.update(t.policy.reservation, now);
            if t.queued() > 0 || !t.limit.is_full() || !t.reserve.is_full() {
                i += 1;
                continue;
            }
            let gone = self.tenants.swap_remove(i);
            count_into(&mut self.retired, &gone.name, &gone.counts);
            self.index.remove(&gone.name);
            if let Some(moved) = self.tenants.get(i) {
                self.index.insert(moved.name.clone(), i);
            }
        }
    }
}

impl<T: Send> Scheduler<T> for QosScheduler<T> {
    fn push(&mut self, ticket: Ticket<'_>, item: T) {
        let policy = (self.lookup)(ticket.tenant);
        let class = usize::from(ticket.class.max(policy.max_class).min(BC));
        let i = match self.index.get(ticket.tenant) {
            Some(&i) => i,
            None => {
                self.index.insert(ticket.tenant.to_string(), self.tenants.len());
                self.tenants.push(Tenant {
                    name: ticket.tenant.to_string(),
                    policy,
                    queues: [VecDeque::new(), VecDeque::new()],
                    limit: Limits::default(),
                    reserve: Buckets::default(),
                    start: 0,
                    finish: 0,
                    held: [false; 2],
                    ok: [false; 2],
                    counts: TenantCounts::default(),
                });
                self.tenants.len() - 1
            }
        };
        let t = &mut self.tenants[i];
        t.policy = policy;
        if class == 1 && t.queues[1].is_empty() {
            t.start = t.finish.max(self.vtime);
        }
        t.queues[class].push_back((item, ticket.bytes, ticket.write));
        self.len += 1;
        if class == 0 {
            self.stats.lc_queued += 1;
        } else {
            self.stats.bc_queued += 1;
        }
    }

    fn pop(&mut self, now: Instant) -> Option<T> {
        self.pop_class(now, true).map(|(_, t)| t)
    }

    fn pop_class(&mut self, now: Instant, bc: bool) -> Option<(u8, T)> {
        self.sweep(now);
        let vtime = self.vtime;
        for t in self.tenants.iter_mut() {
            t.ok = [false; 2];
            if t.queued() == 0 {
                continue;
            }
            t.limit.update(&t.policy, now);
            t.reserve.update(t.policy.reservation, now);
            for c in 0..2 {
                t.ok[c] = !t.queues[c].is_empty() && t.limit.can_pay(t.head(c));
                if !t.queues[c].is_empty() && !t.ok[c] && !t.held[c] {
                    t.held[c] = true;
                    self.stats.throttled += 1;
                    t.counts.throttled += 1;
                }
            }
            if !t.queues[1].is_empty() && !t.bc_ok() {
                t.start = t.start.max(vtime);
            }
        }
        let n = self.tenants.len();
        if let Some(i) = (0..n).map(|k| (self.lc_cursor + k) % n).find(|&i| self.tenants[i].ok[0]) {
            self.lc_cursor = i + 1;
            return self.serve(i, 0, Phase::Lc).map(|t| (LC, t));
        }
        if !bc {
            self.stats.bc_window_holds += u64::from(self.stats.bc_queued > 0);
            return None;
        }
        let reserved = self
            .tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| t.bc_ok() && t.reserve.is_set() && t.reserve.can_pay(t.head_bytes(1)));
        // Ties go to the first tenant: `max_by_key` keeps the last maximum, so negate.
        if let Some((i, _)) = reserved.min_by_key(|(_, t)| -t.reserve.slack(t.head_bytes(1))) {
            return self.serve(i, 1, Phase::Reservation).map(|t| (BC, t));
        }
        let by_weight = self.tenants.iter().enumerate().filter(|(_, t)| t.bc_ok());
        let (i, _) = by_weight.min_by_key(|(_, t)| t.start)?;
        self.serve(i, 1, Phase::Weight).map(|t| (BC, t))
    }

    fn len(&self) -> usize {
        self.len
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let heads = self.tenants.iter().filter(|t| t.queued() > 0);
        heads.filter_map(|t| t.limit.ready_at(t.head(usize::from(t.queues[0].is_empty())))).min()
    }

    fn qos_stats(&self) -> Option<QosStats> {
        Some(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// splitmix64: a small deterministic PRNG.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    type Table = Arc<Mutex<HashMap<String, Policy>>>;

    fn sched<T>(policies: &[(&str, Policy)]) -> (Table, QosScheduler<T>) {
        let table: Table = Arc::new(Mutex::new(policies.iter().map(|(n, p)| (n.to_string(), *p)).collect()));
        let t = table.clone();
        let lookup: PolicyLookup = Arc::new(move |n: &str| t.lock().unwrap().get(n).copied().unwrap_or_default());
        (table, QosScheduler::new(lookup))
    }

    fn ms(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn tk(class: u8, tenant: &str, bytes: u64) -> Ticket<'_> {
        Ticket { class, tenant, bytes, write: false }
    }

    /// A BC-only policy of `weight`.
    fn bc(weight: u32) -> Policy {
        Policy { max_class: BC, weight, ..Policy::default() }
    }

    fn limited(ops: u64, bytes: u64) -> Policy {
        Policy { limit: Rate { ops_per_sec: ops, bytes_per_sec: bytes }, ..Policy::default() }
    }

    /// Items are (tenant index, effective class, bytes, id).
    type Item = (usize, u8, u64, u64);

    #[test]
    fn lc_items_of_unthrottled_tenants_always_go_before_bc() {
        let names = ["l1", "l2", "l3", "b1", "b2"];
        let res = Policy { reservation: Rate { ops_per_sec: 1000, bytes_per_sec: 0 }, ..bc(100) };
        let pols = [Policy::default(), Policy::default(), limited(100, 0), bc(100), res];
        for seed in 0..3 {
            let (_, mut s) = sched::<Item>(&names.iter().copied().zip(pols).collect::<Vec<_>>());
            let (mut rng, base, mut now, mut lc_free) = (Rng(seed), Instant::now(), 0, 0);
            for id in 0..3000 {
                for _ in 0..rng.below(3) {
                    let (i, class) = (rng.below(5) as usize, rng.below(2) as u8);
                    let eff = class.max(pols[i].max_class);
                    lc_free += usize::from(eff == LC && i < 2);
                    s.push(tk(class, names[i], 4096), (i, eff, 4096, id));
                }
                now += rng.below(2);
                let got = s.pop(ms(base, now));
                if lc_free > 0 {
                    assert_eq!(got.map(|g| g.1), Some(LC), "seed {seed} step {id}: BC served while free LC work waits");
                }
                lc_free -= usize::from(got.is_some_and(|g| g.1 == LC && g.0 < 2));
            }
            assert!(s.stats().lc_served > 0 && s.stats().bc_served > 0);
        }
    }

    /// Checks `served ≤ rate × W + burst` over every window of `w_ns` starting at a serve.
    fn check_windows(serves: &[(u64, u64)], rate: u64, burst: u64, w_ns: u64) {
        let mut j = 0;
        let mut sum = 0u128;
        for i in 0..serves.len() {
            while j < serves.len() && serves[j].0 <= serves[i].0 + w_ns {
                sum += u128::from(serves[j].1);
                j += 1;
            }
            let bound = u128::from(rate) * u128::from(w_ns) + u128::from(burst) * 1_000_000_000;
            assert!(sum * 1_000_000_000 <= bound, "window at {} ns: {sum} served, rate {rate}, burst {burst}", serves[i].0);
            sum -= u128::from(serves[i].1);
        }
    }

    #[test]
    fn limits_are_never_exceeded_over_any_window() {
        let names = ["lim", "lim2", "free"];
        let pols = [
            limited(300, 16 << 20),
            Policy { limit: Rate { ops_per_sec: 0, bytes_per_sec: 512 << 10 }, ..bc(100) },
            Policy::default(),
        ];
        let sizes = [512u64, 4096, 4096, 4096, 4096, 16384, 65536];
        for seed in 0..4 {
            let (_, mut s) = sched::<Item>(&names.iter().copied().zip(pols).collect::<Vec<_>>());
            let (mut rng, base, mut now_us) = (Rng(seed), Instant::now(), 0u64);
            let (mut serves, mut queued): ([Vec<(u64, u64)>; 2], _) = ([Vec::new(), Vec::new()], [0; 3]);
            while now_us < 8_000_000 {
                for i in (0..3).flat_map(|i| std::iter::repeat(i).take(rng.below(4) as usize)).collect::<Vec<_>>() {
                    let bytes = if rng.below(100) == 0 { 3 << 20 } else { sizes[rng.below(sizes.len() as u64) as usize] };
                    // Limited tenants come and go (1.3 s off, 2.6 s on) so their buckets fill up.
                    let on = i == 2 || (now_us / 1_300_000 + seed) % 3 != 0;
                    if on && queued[i] < 300 {
                        s.push(tk(rng.below(2) as u8, names[i], bytes), (i, 0, bytes, 0));
                        queued[i] += 1;
                    }
                }
                now_us += rng.below(2000);
                for _ in 0..rng.below(16) {
                    if let Some((i, _, bytes, _)) = s.pop(base + Duration::from_micros(now_us)) {
                        queued[i] -= 1;
                        if i < 2 {
                            serves[i].push((now_us * 1000, bytes));
                        }
                    }
                }
            }
            let ops: Vec<(u64, u64)> = serves[0].iter().map(|&(t, _)| (t, 1)).collect();
            let n = (ops.len(), serves[1].len());
            assert!(n.0 > 1000 && n.1 > 5, "seed {seed}: too little served to test: {n:?}");
            for w in [1_000_000_000, 2_000_000_000] {
                check_windows(&ops, 300, 300, w);
                check_windows(&serves[0], 16 << 20, 16 << 20, w);
                check_windows(&serves[1], 512 << 10, 3 << 20, w);
            }
            assert!(s.stats().throttled > 0);
        }
    }

    #[test]
    fn read_and_write_limits_bound_their_direction_only() {
        // Writes capped at 1 MiB/s, reads at 4 MiB/s, nothing on both together. Tenant
        // "mix" reads and writes (one FIFO per class: a held write holds the reads behind
        // it, as in SPDK's bdev QoS), "ro" only reads: over every window each direction
        // of each stays within its own bound, and the write cap does not bound "ro".
        let pol = Policy {
            write_limit: Rate { ops_per_sec: 0, bytes_per_sec: 1 << 20 },
            read_limit: Rate { ops_per_sec: 0, bytes_per_sec: 4 << 20 },
            ..bc(100)
        };
        let (_, mut s) = sched::<(usize, bool, u64)>(&[("mix", pol), ("ro", pol)]);
        let (mut rng, base, mut now_us) = (Rng(11), Instant::now(), 0u64);
        let mut serves: [[Vec<(u64, u64)>; 2]; 2] = Default::default();
        let mut queued = [0; 2];
        while now_us < 6_000_000 {
            for (t, name) in ["mix", "ro"].into_iter().enumerate() {
                while queued[t] < 64 {
                    let write = t == 0 && rng.below(2) == 0;
                    let bytes = 4096 << rng.below(5);
                    s.push(Ticket { class: BC, tenant: name, bytes, write }, (t, write, bytes));
                    queued[t] += 1;
                }
            }
            now_us += 1 + rng.below(3000);
            while let Some((t, write, bytes)) = s.pop(base + Duration::from_micros(now_us)) {
                queued[t] -= 1;
                serves[t][usize::from(write)].push((now_us * 1000, bytes));
            }
        }
        let total = |v: &[(u64, u64)]| v.iter().map(|&(_, b)| b).sum::<u64>();
        assert!(total(&serves[1][0]) > 12 << 20, "reads alone are held to the read cap only: {}", total(&serves[1][0]));
        assert!(total(&serves[0][1]) > 3 << 20, "writes flow: {}", total(&serves[0][1]));
        for w in [1_000_000_000, 2_000_000_000] {
            for t in &serves {
                check_windows(&t[1], 1 << 20, (1 << 20) + (64 << 10), w);
                check_windows(&t[0], 4 << 20, (4 << 20) + (64 << 10), w);
            }
        }
    }

    #[test]
    fn reservation_is_met_against_heavier_backlogged_tenants() {
        let res = Policy { reservation: Rate { ops_per_sec: 500, bytes_per_sec: 0 }, ..bc(1) };
        let heavy = bc(1000);
        let names = ["res", "h1", "h2"];
        let (_, mut s) = sched::<Item>(&[("res", res), ("h1", heavy), ("h2", heavy)]);
        let (base, mut served, mut queued) = (Instant::now(), [0u64; 3], [0u64; 3]);
        for now in 0..10_000 {
            for i in 0..3 {
                while queued[i] < 50 {
                    s.push(tk(BC, names[i], 4096), (i, BC, 4096, 0));
                    queued[i] += 1;
                }
            }
            for _ in 0..5 {
                let (i, ..) = s.pop(ms(base, now)).unwrap();
                served[i] += 1;
                queued[i] -= 1;
            }
        }
        // Capacity 5000 ops/s: by weight alone "res" would get ~25 ops in 10 s.
        assert!(served[0] >= 4750, "reservation not met: {served:?}");
        assert!(served[0] <= 500 * 10 + 500 + 100, "the reservation is a floor, not an extra: {served:?}");
        assert!(served[1].abs_diff(served[2]) < served[1] / 20, "{served:?}");
        assert!(s.stats().reservation_served >= 4500);
    }

    #[test]
    fn backlogged_bc_tenants_share_by_weight() {
        let (_, mut s) = sched::<Item>(&[("a", bc(100)), ("b", bc(300))]);
        let (mut rng, now) = (Rng(7), Instant::now());
        for (round, random_sizes) in [false, true].into_iter().enumerate() {
            let mut cost = [0u64; 2];
            for i in 0..2 {
                for _ in 0..8000 {
                    let bytes = if random_sizes { 512 + rng.below(64 << 10) } else { 4096 };
                    s.push(tk(BC, ["a", "b"][i], bytes), (i, BC, bytes, 0));
                }
            }
            for _ in 0..8000 {
                let (i, _, bytes, _) = s.pop(now).unwrap();
                cost[i] += bytes.max(MIN_COST);
            }
            let ratio = cost[1] as f64 / cost[0] as f64;
            assert!((2.7..=3.3).contains(&ratio), "round {round}: cost served {cost:?}, ratio {ratio}");
            while s.pop(now).is_some() {}
        }
    }

    #[test]
    fn without_limits_pop_returns_an_item_whenever_one_is_queued() {
        for seed in 0..3 {
            let mut rng = Rng(seed);
            let names = ["t0", "t1", "t2", "t3", "t4", "t5"];
            let mut pols = Vec::new();
            for n in names {
                let reservation = Rate { ops_per_sec: rng.below(3) * 100, bytes_per_sec: rng.below(2) << 20 };
                let weight = 1 + rng.below(1000) as u32;
                pols.push((n, Policy { max_class: rng.below(2) as u8, weight, reservation, ..Policy::default() }));
            }
            let (_, mut s) = sched::<u64>(&pols);
            let (base, mut now) = (Instant::now(), 0);
            for id in 0..2000 {
                for _ in 0..rng.below(3) {
                    s.push(tk(rng.below(2) as u8, names[rng.below(6) as usize], 1 + rng.below(1 << 20)), id);
                }
                now += rng.below(3);
                let had = s.len();
                assert_eq!(s.pop(ms(base, now)).is_some(), had > 0, "seed {seed} step {id}");
                assert_eq!(s.next_wakeup(), None);
            }
        }
    }

    #[test]
    fn throttled_items_wait_for_next_wakeup_and_none_is_lost() {
        let names = ["a", "b", "c"];
        let (_, mut s) = sched::<u64>(&[("a", limited(50, 0)), ("b", limited(0, 256 << 10)), ("c", limited(20, 1 << 20))]);
        let (mut rng, base, mut now) = (Rng(3), Instant::now(), Duration::ZERO);
        let mut seen = vec![0u32; 600];
        let mut next_id = 0;
        while seen.contains(&0) {
            for _ in 0..rng.below(3) {
                if next_id < 600 {
                    s.push(tk(rng.below(2) as u8, names[rng.below(3) as usize], 512 + rng.below(128 << 10)), next_id);
                    next_id += 1;
                }
            }
            match s.pop(base + now) {
                Some(id) => seen[id as usize] += 1,
                None if s.is_empty() => now += Duration::from_millis(rng.below(10)),
                None => {
                    let w = s.next_wakeup().expect("items held back but no wakeup");
                    assert!(w > base + now);
                    now = w - base;
                    let id = s.pop(base + now).expect("nothing eligible at next_wakeup");
                    seen[id as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert!(s.is_empty() && s.next_wakeup().is_none() && s.pop(base + now).is_none());
        let st = s.stats();
        assert!(st.throttled > 100 && st.lc_served + st.bc_served == 600 && st.lc_queued + st.bc_queued == 0, "{st:?}");
    }

    #[test]
    fn a_bc_only_policy_demotes_lc_asks() {
        let (_, mut s) = sched::<&str>(&[("b", bc(100))]);
        s.push(tk(LC, "b", 4096), "b-lc-ask");
        s.push(tk(BC, "a", 4096), "a-bc");
        s.push(tk(LC, "a", 4096), "a-lc");
        assert_eq!((s.stats().lc_queued, s.stats().bc_queued), (1, 2));
        let now = Instant::now();
        assert_eq!(s.pop(now), Some("a-lc"));
        let mut rest = vec![s.pop(now).unwrap(), s.pop(now).unwrap()];
        rest.sort();
        assert_eq!(rest, ["a-bc", "b-lc-ask"]);
        assert_eq!((s.stats().lc_served, s.stats().bc_served), (1, 2));
    }

    #[test]
    fn policy_changes_take_effect_on_later_pushes() {
        let (table, mut s) = sched::<u32>(&[]);
        let now = Instant::now();
        s.push(tk(LC, "t", 4096), 1);
        assert_eq!(s.pop(now), Some(1));
        table.lock().unwrap().insert("t".into(), Policy { limit: Rate { ops_per_sec: 1, bytes_per_sec: 0 }, ..bc(100) });
        s.push(tk(LC, "t", 4096), 2);
        s.push(tk(LC, "t", 4096), 3);
        assert_eq!((s.stats().lc_queued, s.stats().bc_queued), (0, 2), "LC asks demoted from now on");
        assert_eq!(s.pop(now), Some(2), "a new limit starts with a full bucket");
        assert_eq!(s.pop(now), None, "1 op/s: the next one waits");
        assert_eq!(s.next_wakeup(), Some(now + Duration::from_secs(1)));
        assert_eq!(s.pop(now + Duration::from_secs(1)), Some(3));
        table.lock().unwrap().clear();
        s.push(tk(LC, "t", 4096), 4);
        s.push(tk(LC, "t", 4096), 5);
        assert_eq!((s.pop(now + Duration::from_secs(1)), s.pop(now + Duration::from_secs(1))), (Some(4), Some(5)));
        assert_eq!((s.stats().lc_served, s.stats().bc_served), (3, 2));
    }

    #[test]
    fn a_closed_bc_window_lets_only_lc_items_go_and_loses_nothing() {
        let (_, mut s) = sched::<u64>(&[("lc", Policy::default()), ("b1", bc(100)), ("b2", bc(300))]);
        let now = Instant::now();
        let mut rng = Rng(7);
        let (mut pushed, mut got) = (0u64, Vec::new());
        for round in 0..200u64 {
            for _ in 0..rng.below(4) {
                let t = ["lc", "b1", "b2"][rng.below(3) as usize];
                s.push(tk(LC, t, 4096 << rng.below(8)), pushed);
                pushed += 1;
            }
            // The window opens one round in three.
            let open = round % 3 == 0;
            while let Some((class, id)) = s.pop_class(now, open) {
                assert!(open || class == LC, "a BC item went through a closed window");
                got.push((class, id));
            }
            if !open {
                assert_eq!(s.stats().lc_queued, 0, "LC items wait only for their limit, never for the window");
            }
        }
        while let Some((_, id)) = s.pop_class(now, true) {
            got.push((1, id));
        }
        let mut ids: Vec<u64> = got.iter().map(|&(_, i)| i).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..pushed).collect::<Vec<_>>(), "every item comes out once");
        assert!(s.stats().bc_window_holds > 0);
        let st = s.stats();
        let per_tenant: u64 = st.tenants.values().map(|c| c.lc_served + c.bc_served).sum();
        assert_eq!(per_tenant, st.lc_served + st.bc_served, "per-tenant counters add up: {:?}", st.tenants);
        assert_eq!(st.tenants["lc"].bc_served, 0, "the LC tenant's items were all LC");
        assert_eq!(st.tenants["b1"].lc_served, 0, "a BC-only tenant's items were all BC");
    }

    #[test]
    fn idle_tenant_state_is_dropped_once_it_is_fresh_again() {
        let (_, mut s) = sched::<u32>(&[("a", limited(0, 1 << 20))]);
        let base = Instant::now();
        s.push(tk(BC, "a", 3 << 20), 1);
        s.push(tk(BC, "b", 4096), 2);
        while s.pop(base).is_some() {}
        assert_eq!(s.tenants.len(), 2);
        s.pop(ms(base, 1000));
        let left: Vec<&str> = s.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(left, ["a"], "a's bytes bucket is 2 MiB in debt: full again after 3 s");
        s.pop(ms(base, 2000));
        assert_eq!(s.tenants.len(), 1);
        s.pop(ms(base, 3000));
        assert!(s.tenants.is_empty() && s.index.is_empty());
        let st = s.stats();
        assert_eq!((st.tenants["a"].bc_served, st.tenants["b"].bc_served), (1, 1), "counters outlive the state: {st:?}");
    }
}
