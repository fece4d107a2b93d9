//! Which proxy connection a request takes: the [`Router`] seam (paper §4.3.2's route
//! table will be an implementation of it).
//!
//! [`RoundRobin`] is the policy in force: a PoV device maps each new queue to the next
//! proxy and keeps it for the queue's life (paper §4.3.1's mapping table); a plain
//! volume sends each piece of IO to the next proxy.

/// What a route is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKey {
    /// A new PoV queue (global queue ID): the connection its requests will use.
    Queue(u32),
    /// One piece of plain-volume IO at this byte offset of the volume.
    Volume {
        /// Byte offset of the piece.
        offset: u64,
    },
}

/// Picks a proxy connection (an index into the device's endpoints) for a key.
pub trait Router: Send {
    /// The connection index for `key`, below the number of endpoints the router was
    /// made for.
    fn route(&mut self, key: RouteKey) -> usize;
}

/// Every key goes to the next connection in turn.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    n: usize,
    next: usize,
}

impl RoundRobin {
    /// A router over `n` connections (at least 1).
    pub fn new(n: usize) -> RoundRobin {
        RoundRobin { n: n.max(1), next: 0 }
    }
}

impl Router for RoundRobin {
    fn route(&mut self, _key: RouteKey) -> usize {
        let i = self.next % self.n;
        self.next = self.next.wrapping_add(1);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_stays_in_range() {
        let mut r = RoundRobin::new(3);
        let got: Vec<usize> = (0..7).map(|q| r.route(RouteKey::Queue(q))).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
        let mut one = RoundRobin::new(0);
        assert_eq!(one.route(RouteKey::Volume { offset: 0 }), 0);
    }
}
