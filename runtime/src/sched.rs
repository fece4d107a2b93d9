//! The scheduling seam of the data path (paper §4.5, full-path QoS): where requests
//! that are ready to go wait for their turn.
//!
//! A stage (the DPU between a PoV queue and its proxy connection; later the proxy
//! between a connection and its backend) puts each ready item in a [`Scheduler`] with
//! its QoS class and cost, and takes items out in the order the scheduler decides,
//! whenever it polls. [`Fifo`] is the scheduler in force today: one queue, arrival
//! order, never holds anything back. A priority or rate-limiting scheduler (LC before
//! BC, token buckets, a PID controller's targets) is another implementation of the
//! same trait; throttling is a state (the item stays queued and
//! [`Scheduler::next_wakeup`] says when to look again), never an error.

use std::collections::VecDeque;
use std::time::Instant;

/// What a scheduler knows of an item: its QoS class (`pov_proto::admin::QosClass` as
/// a number: 0 latency-critical, 1 bandwidth-critical), its tenant and its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket<'a> {
    /// QoS class number.
    pub class: u8,
    /// Tenant the item is accounted to.
    pub tenant: &'a str,
    /// Payload bytes the item moves (read or written).
    pub bytes: u64,
    /// The item writes (its bytes count against a write limit, else a read limit).
    pub write: bool,
}

/// Orders ready items of type `T`.
pub trait Scheduler<T>: Send {
    /// Queues `item`.
    fn push(&mut self, ticket: Ticket<'_>, item: T);
    /// The next item allowed to go at `now`, if any.
    fn pop(&mut self, now: Instant) -> Option<T>;
    /// As [`Scheduler::pop`], with the item's effective class (`0` LC, `1` BC); with
    /// `bc == false` only an LC item may go (the caller's bound on BC work in flight is
    /// reached: BC items stay queued). A scheduler without classes ([`Fifo`]) ignores
    /// `bc` and returns every item as class `0`: it is not bounded.
    fn pop_class(&mut self, now: Instant, bc: bool) -> Option<(u8, T)> {
        let _ = bc;
        self.pop(now).map(|t| (0, t))
    }
    /// Items queued.
    fn len(&self) -> usize;
    /// `true` if nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// When an item held back becomes eligible (the caller's poller deadline); `None`
    /// if nothing is held back.
    fn next_wakeup(&self) -> Option<Instant> {
        None
    }
    /// Per-class counters of a QoS scheduler (`None` for one without: [`Fifo`]).
    fn qos_stats(&self) -> Option<crate::qos::QosStats> {
        None
    }
}

/// Arrival order, nothing held back (no QoS).
pub struct Fifo<T>(VecDeque<T>);

impl<T> Default for Fifo<T> {
    fn default() -> Fifo<T> {
        Fifo(VecDeque::new())
    }
}

impl<T: Send> Scheduler<T> for Fifo<T> {
    fn push(&mut self, _ticket: Ticket<'_>, item: T) {
        self.0.push_back(item);
    }
    fn pop(&mut self, _now: Instant) -> Option<T> {
        self.0.pop_front()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_keeps_arrival_order_whatever_the_class() {
        let mut f = Fifo::default();
        let now = Instant::now();
        for (i, class) in [1u8, 0, 1, 0].into_iter().enumerate() {
            f.push(Ticket { class, tenant: "t", bytes: 4096, write: false }, i);
        }
        assert_eq!(f.len(), 4);
        let out: Vec<usize> = std::iter::from_fn(|| f.pop(now)).collect();
        assert_eq!(out, vec![0, 1, 2, 3]);
        assert!(f.is_empty() && f.next_wakeup().is_none());
    }
}
