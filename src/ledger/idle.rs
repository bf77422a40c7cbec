//! P_idle: the power drawn when no request is in flight, configured or learned.
//!
//! Owns the estimator only. It is fed the power of settled ticks during which nothing was in flight
//! and answers with a low quantile of the recent ones: right after a burst a GPU stays in a high
//! power state for a while, and a low quantile keeps those tails from inflating the baseline.

use std::collections::VecDeque;

/// Where the current P_idle comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleSource {
    /// Set by configuration; never learned.
    Configured,
    /// Learned from idle ticks.
    Learned,
    /// Not known yet (no idle tick seen): active energy equals energy.
    Unknown,
}

/// The learned-or-configured idle power.
#[derive(Clone, Debug)]
pub struct IdleEstimator {
    configured_mw: Option<u64>,
    samples: VecDeque<u64>,
    capacity: usize,
    quantile: f64,
    min_samples: usize,
    current_mw: Option<u64>,
    scratch: Vec<u64>,
}

impl IdleEstimator {
    /// An estimator keeping the last `capacity` idle-tick powers and answering their `quantile`
    /// (0..=1) once it has `min_samples`; `configured_mw` overrides learning entirely.
    pub fn new(
        configured_mw: Option<u64>,
        capacity: usize,
        quantile: f64,
        min_samples: usize,
    ) -> Self {
        IdleEstimator {
            configured_mw,
            samples: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            quantile: if quantile.is_finite() {
                quantile.clamp(0.0, 1.0)
            } else {
                0.25
            },
            min_samples: min_samples.max(1),
            current_mw: configured_mw,
            scratch: Vec::new(),
        }
    }

    /// Feeds one idle tick: `energy_uj` over `dt_ns`. Ticks of zero length are ignored.
    pub fn observe(&mut self, energy_uj: u64, dt_ns: u64) {
        if self.configured_mw.is_some() || dt_ns == 0 {
            return;
        }
        // uJ / ns = kW; * 1e6 gives mW.
        let mw = super::split::mul_div(energy_uj, 1_000_000, dt_ns);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(mw);
        if self.samples.len() >= self.min_samples {
            self.scratch.clear();
            self.scratch.extend(self.samples.iter().copied());
            let last = self.scratch.len() - 1;
            let k = ((last as f64) * self.quantile).round() as usize;
            let (_, v, _) = self.scratch.select_nth_unstable(k.min(last));
            self.current_mw = Some(*v);
        }
    }

    /// The idle power in milliwatts, if known.
    pub fn power_mw(&self) -> Option<u64> {
        self.current_mw
    }

    /// Where [`IdleEstimator::power_mw`] comes from.
    pub fn source(&self) -> IdleSource {
        match (self.configured_mw, self.current_mw) {
            (Some(_), _) => IdleSource::Configured,
            (None, Some(_)) => IdleSource::Learned,
            (None, None) => IdleSource::Unknown,
        }
    }

    /// Number of idle ticks currently held.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// The baseline energy of an interval: P_idle * dt, in micro-joules (0 when unknown).
    pub fn baseline_uj(&self, dt_ns: u64) -> u64 {
        self.current_mw
            .map(|mw| super::split::mul_div(mw, dt_ns, 1_000_000))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_low_quantile_and_ignores_tails() {
        let mut e = IdleEstimator::new(None, 100, 0.25, 4);
        assert_eq!(e.source(), IdleSource::Unknown);
        // 50 ms ticks at 60 W = 3 J, plus a few hot tails at 200 W.
        for _ in 0..20 {
            e.observe(3_000_000, 50_000_000);
        }
        for _ in 0..5 {
            e.observe(10_000_000, 50_000_000);
        }
        assert_eq!(e.power_mw(), Some(60_000));
        assert_eq!(e.source(), IdleSource::Learned);
        assert_eq!(e.baseline_uj(1_000_000_000), 60_000_000);
    }

    #[test]
    fn configured_value_wins() {
        let mut e = IdleEstimator::new(Some(75_000), 10, 0.25, 1);
        e.observe(1, 50_000_000);
        assert_eq!(e.power_mw(), Some(75_000));
        assert_eq!(e.source(), IdleSource::Configured);
        e.observe(1, 0);
        assert_eq!(e.samples(), 0);
    }
}
