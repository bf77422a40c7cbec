//! Test support: a counter that updates on its own lattice (every `period` after `phase`), with
//! deterministic multiplicative noise, read at arbitrary times. No clock: "now" is an argument.

/// A slow, noisy cumulative counter of a device drawing constant power.
pub struct LumpyCounter {
    /// (update time, cumulative µJ after it), ascending.
    updates: Vec<(u64, u64)>,
}

impl LumpyCounter {
    /// `watts` drawn, the counter updated at `phase + k·period` for every update up to `horizon_ns`,
    /// each increment off by a uniform factor within ±`noise` (e.g. 0.01), from `seed`.
    pub fn new(
        watts: u64,
        period_ns: u64,
        phase_ns: u64,
        noise: f64,
        horizon_ns: u64,
        seed: u64,
    ) -> Self {
        let mut rng = seed | 1;
        let mut updates = Vec::new();
        let mut total = 0u64;
        let mut t = phase_ns % period_ns.max(1);
        let mut prev = 0u64;
        while t <= horizon_ns {
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            let u = (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            let exact = watts as f64 * (t - prev) as f64 / 1_000.0; // W·ns = 1e-3 µJ
            total += (exact * (1.0 + noise * (2.0 * u - 1.0))).round() as u64;
            updates.push((t, total));
            prev = t;
            t += period_ns.max(1);
        }
        LumpyCounter { updates }
    }

    /// The counter's value at `t_ns` (its last update at or before it).
    pub fn value_at(&self, t_ns: u64) -> u64 {
        let i = self.updates.partition_point(|&(u, _)| u <= t_ns);
        if i == 0 {
            0
        } else {
            self.updates[i - 1].1
        }
    }
}
