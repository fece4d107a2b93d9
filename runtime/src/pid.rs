//! A PID controller in velocity (incremental) form with a bounded output, shared by
//! the QoS stages (the DPU's BC window, `bdev_pov`; the proxy's, `pov_proxy::qos`).
//! Pure: the caller gives the error and the time step.
//!
//! `u_k = clamp(u_{k−1} + Kp·(e_k − e_{k−1}) + Ki·T·e_k + (Kd/T)·(e_k − 2e_{k−1} + e_{k−2}), min, max)`
//! (Åström & Hägglund, *PID Controllers: Theory, Design, and Tuning*, 2nd ed., §3.5,
//! "incremental algorithms"). The state is the output itself, so a saturated
//! controller has nothing wound up: it leaves the bound as soon as the error changes
//! sign (anti-windup by construction).

/// A PID controller in velocity form with a bounded output (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Pid {
    /// Proportional gain (output units per unit of error).
    pub kp: f64,
    /// Integral gain (output units per unit of error per second).
    pub ki: f64,
    /// Derivative gain (output units per unit of error change per second).
    pub kd: f64,
    /// Output bounds.
    pub min: f64,
    pub max: f64,
    output: f64,
    e1: f64,
    e2: f64,
}

impl Pid {
    /// A controller whose output starts at `start` (clamped to the bounds).
    pub fn new(kp: f64, ki: f64, kd: f64, min: f64, max: f64, start: f64) -> Pid {
        Pid { kp, ki, kd, min, max, output: start.clamp(min, max), e1: 0.0, e2: 0.0 }
    }

    /// One step: the error now and the seconds since the last step; returns the output.
    pub fn update(&mut self, error: f64, dt: f64) -> f64 {
        let dt = dt.max(1e-6);
        let du = self.kp * (error - self.e1) + self.ki * dt * error + self.kd / dt * (error - 2.0 * self.e1 + self.e2);
        self.output = (self.output + du).clamp(self.min, self.max);
        self.e2 = self.e1;
        self.e1 = error;
        self.output
    }

    /// The output now.
    pub fn output(&self) -> f64 {
        self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_never_leaves_its_bounds() {
        let mut p = Pid::new(3.0, 40.0, 1.0, 2.0, 9.0, 100.0);
        assert_eq!(p.output(), 9.0);
        let mut x = 0x1234_5678u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = (x % 2001) as f64 / 1000.0 - 1.0;
            let u = p.update(e, 0.1);
            assert!((2.0..=9.0).contains(&u), "{u}");
        }
    }

    #[test]
    fn a_saturated_output_leaves_its_bound_when_the_error_turns() {
        let mut p = Pid::new(1.0, 10.0, 0.0, 0.0, 10.0, 5.0);
        for _ in 0..1000 {
            p.update(-1.0, 0.1);
        }
        assert_eq!(p.output(), 0.0);
        assert!(p.update(0.5, 0.1) > 0.0, "no wound-up integral to unwind");
    }
}
