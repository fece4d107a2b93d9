//! Deterministic test data shared by the tests of every crate (unit, conformance,
//! end-to-end), so that a failure is reproducible from its seed.

/// `len` pseudo-random bytes (xorshift64 seeded from `seed`), different for every seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_is_deterministic_and_seeded() {
        assert_eq!(super::pattern(7, 100), super::pattern(7, 100));
        assert_ne!(super::pattern(7, 100), super::pattern(8, 100));
        assert_eq!(super::pattern(7, 10), super::pattern(7, 100)[..10]);
    }
}
