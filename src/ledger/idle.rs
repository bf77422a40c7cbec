//! P_idle: the power drawn when no request is in flight, configured or learned.
//!
//! Owns the estimator only. It is fed the settled ticks during which nothing was in flight and
//! answers with a low quantile of recent idle power: right after a burst a GPU stays in a high power
//! state for a while, and a low quantile keeps those tails from inflating the baseline.
//!
//! Each sample is the mean power over the last [`SPAN_NS`] of idle ticks (their energy summed over
//! their summed length), not one tick's: a meter slower than the sampler delivers its energy in
//! lumps (0 then double when its increments are not spread, ±25 % per tick when they are spread
//! over read intervals that do not divide its period), and meter noise of 1 % per update would
//! otherwise move the quantile itself. Over a second these average out, so the estimate is within
//! a fraction of a percent of a steady idle draw. Fed through [`IdleEstimator::observe_span`],
//! which knows where ticks lie in time, an idle tick right after a gap (a busy tick in between) is
//! left out, and so is the one before the gap: they hold the power-state tails of the burst.

use std::collections::VecDeque;

/// Idle time each sample averages over, ns.
pub const SPAN_NS: u64 = 1_000_000_000;

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
    /// The most recent idle ticks (µJ, ns) covering at least [`SPAN_NS`], and their sums.
    recent: VecDeque<(u64, u64)>,
    recent_uj: u128,
    recent_ns: u128,
    /// Through `observe_span`: the last idle tick, held until the next one shows it is not next to
    /// a busy tick (start, end, µJ).
    held: Option<(u64, u64, u64)>,
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
            recent: VecDeque::new(),
            recent_uj: 0,
            recent_ns: 0,
            held: None,
        }
    }

    /// Feeds one idle tick: `energy_uj` over `dt_ns`, taken as following the previous idle tick.
    /// Ticks of zero length are ignored.
    pub fn observe(&mut self, energy_uj: u64, dt_ns: u64) {
        if self.configured_mw.is_some() || dt_ns == 0 {
            return;
        }
        self.recent.push_back((energy_uj, dt_ns));
        self.recent_uj += u128::from(energy_uj);
        self.recent_ns += u128::from(dt_ns);
        while let Some(&(e, d)) = self.recent.front() {
            if self.recent_ns - u128::from(d) < u128::from(SPAN_NS) {
                break;
            }
            self.recent.pop_front();
            self.recent_uj -= u128::from(e);
            self.recent_ns -= u128::from(d);
        }
        // uJ / ns = kW; * 1e6 gives mW.
        let mw =
            u64::try_from(self.recent_uj * 1_000_000 / self.recent_ns.max(1)).unwrap_or(u64::MAX);
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

    /// Feeds one idle tick `(start_ns, end_ns]` with its energy. A tick that does not start where
    /// the previous idle tick ended has a busy tick before it: it is left out, and so is the idle
    /// tick before that busy one (held until now for this reason), as both border a burst.
    pub fn observe_span(&mut self, start_ns: u64, end_ns: u64, energy_uj: u64) {
        let follows = self.held.is_some_and(|(_, e, _)| e == start_ns);
        let prev = self.held.replace((start_ns, end_ns, energy_uj));
        match prev {
            Some((s, e, uj)) if follows => self.observe(uj, e.saturating_sub(s)),
            Some(_) => {
                // Both sides of the gap border a burst; the window restarts after it.
                self.held = None;
                self.recent.clear();
                self.recent_uj = 0;
                self.recent_ns = 0;
            }
            None => {}
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

    /// Splits a tick's energy `e` (µJ, `dt_ns` long, `busy_ns` of it with a request in flight):
    /// the idle part of its time with nothing in flight, which belongs to nobody; the rest, to
    /// be split by work; and the idle baseline within that rest (what is not active energy).
    pub fn split_tick(&self, e: u64, dt_ns: u64, busy_ns: u64) -> TickEnergy {
        let idle_uj = self.baseline_uj(dt_ns.saturating_sub(busy_ns)).min(e);
        let rest_uj = e - idle_uj;
        let baseline_uj = self.baseline_uj(busy_ns.min(dt_ns)).min(rest_uj);
        TickEnergy {
            idle_uj,
            rest_uj,
            baseline_uj,
        }
    }
}

/// A tick's energy as [`IdleEstimator::split_tick`] divides it, µJ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickEnergy {
    /// The P_idle share of the tick's time with nothing in flight.
    pub idle_uj: u64,
    /// Everything else: split between the requests by work.
    pub rest_uj: u64,
    /// Of `rest_uj`, the P_idle share of the busy time (the rest of it is active energy).
    pub baseline_uj: u64,
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

    /// Spread ticks of a 100 ms counter read every 50 ms at 300 W with 1 % noise (and, unspread,
    /// the same counter's raw 0-then-double ticks).
    fn lumpy_ticks(spread: bool, secs: u64) -> Vec<(u64, u64, u64)> {
        use crate::sampler::lumpy::LumpyCounter;
        use crate::sampler::Spreader;
        const MS: u64 = 1_000_000;
        let c = LumpyCounter::new(300, 100 * MS, 37 * MS, 0.01, (secs + 1) * 1_000 * MS, 5);
        let mut sp = Spreader::new(None);
        let (mut out, mut last) = (Vec::new(), 0);
        for k in 1..=secs * 20 {
            let (a, b) = ((k - 1) * 50 * MS, k * 50 * MS);
            let v = c.value_at(b);
            if spread {
                sp.push(a, b, Some(v - last));
                out.extend(
                    std::iter::from_fn(|| sp.pop_final()).filter_map(|(a, b, d)| Some((a, b, d?))),
                );
            } else {
                out.push((a, b, v - last));
            }
            last = v;
        }
        out
    }

    #[test]
    fn learns_a_lumpy_meters_idle_power_within_one_percent_in_ten_seconds() {
        for spread in [true, false] {
            let mut e = IdleEstimator::new(None, 256, 0.25, 10);
            let mut s = IdleEstimator::new(None, 256, 0.25, 10);
            for (a, b, uj) in lumpy_ticks(spread, 10) {
                e.observe(uj, b - a);
                s.observe_span(a, b, uj);
            }
            for est in [&e, &s] {
                let w = est.power_mw().unwrap_or(0) as f64 / 1e3;
                assert!((w / 300.0 - 1.0).abs() < 0.01, "spread={spread}: {w} W");
                assert_eq!(est.source(), IdleSource::Learned);
            }
        }
    }

    #[test]
    fn ticks_bordering_a_burst_are_left_out() {
        const MS: u64 = 1_000_000;
        let mut e = IdleEstimator::new(None, 256, 0.5, 1);
        // Idle at 60 W, a busy tick (not fed) at 400-450 ms, 200 W tails on both sides of it.
        for k in 0..7u64 {
            e.observe_span(k * 50 * MS, (k + 1) * 50 * MS, 3_000_000);
        }
        e.observe_span(350 * MS, 400 * MS, 10_000_000);
        e.observe_span(450 * MS, 500 * MS, 10_000_000);
        for k in 10..30u64 {
            e.observe_span(k * 50 * MS, (k + 1) * 50 * MS, 3_000_000);
        }
        // Only 60 W ticks made it into the samples.
        assert_eq!(e.power_mw(), Some(60_000));
        assert_eq!(e.samples(), 7 + 19);
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
