//! Spreading a slow counter's increments over the time they cover.
//!
//! Owns one device's [`Spreader`]: pure, no clock and no I/O (interval bounds come in as arguments),
//! so the sampler and a virtual-time bench drive it alike. A counter that updates every 100 ms read
//! every 50 ms shows nothing at one read and two reads' worth at the next; sent as measured, every
//! other tick would read 0 W and the next twice the power. Instead, the intervals at which the
//! counter stood still are *held*, and when it moves, its increment is spread over the time it
//! covers: from the counter's previous update to this one, each placed at the middle of the interval
//! whose read saw it (the update fell somewhere in that interval; placing it at the read lagged the
//! timeline by half an interval: against a real H200 counter, tick p95 error 56 % instead of 16 %).
//! The held intervals' parts in that span share it in proportion to their length, or, where the
//! meter gives an instantaneous power at every read (NVML with `counter_ms=N`), to that power's
//! trapezoid integral over each part (the *shape*; lengths again whenever an interval lacks it or
//! every shape is 0). The interval that saw the update keeps its part after the middle for the next
//! increment, so an interval is final once an update is placed at or after its end. The result is
//! a smooth energy timeline, delayed by up to one meter period and one interval.
//!
//! Rules (energy is integer micro-joules and the sum emitted always equals the sum pushed):
//! - **A counter that moves at every read** is never held: each interval is final as soon as it is
//!   pushed, exactly as if there were no spreader; unless its update lag is known
//!   ([`Spreader::set_update_lag`]: its period, measured by the start-up burst or configured, is
//!   close to the interval, and the reads are aligned half an interval after its updates).
//!   Its last update then came that long before the read, and its increment is the
//!   energy up to that update: it goes to (previous update, this one], and the rest of the interval
//!   waits for the next read. A 50 ms counter read 25 ms after its updates, sent as read, put every
//!   tick's energy half an interval late (in the accuracy bench's bursts the first tick of a burst
//!   read idle power; tick energy 4.6 % off the engine's on average, 0.9 % spread).
//! - **Zero increments are held** only when the counter is known to be slower than the reads: its
//!   configured period exceeds the interval, or (not configured) the [`PeriodLearner`] saw it stand
//!   still between two changes among the recent reads. A counter that never moved (a device at 0 W)
//!   is not held.
//! - **Hold bound**: never more than `max(4 × period, 1 s)` (at most [`MAX_HOLD_NS`]) of intervals,
//!   nor [`MAX_HELD`] of them. Older held intervals are released with what they were given so far
//!   (0 µJ, or the part before the latest update of the one that saw it); the next
//!   increment is then spread over the intervals still held, and the chain the period is learned
//!   from is broken (a device that drew nothing for seconds is not a slow meter).
//! - **Failed reads** (`None`) are a barrier, never spread into: the held intervals before it are
//!   released with what they were given so far, the failed interval stays unavailable (`None`),
//!   and the next increment, which carries the energy of the gap (the counter kept its last good
//!   value), is spread only over the intervals after the failure. Energy is delayed, not lost, and an
//!   unavailable interval never receives energy it was not measured to have.
//! - [`Spreader::flush`] releases everything held with what it was given (shutdown, a replay that
//!   ended): energy after the last update was never measured.

use std::collections::VecDeque;

use super::period::{Period, PeriodLearner, PeriodSource};

/// The shortest hold bound.
pub const MIN_HOLD_NS: u64 = 1_000_000_000;
/// The longest hold bound, whatever the period.
pub const MAX_HOLD_NS: u64 = 10_000_000_000;
/// The most intervals held per device, whatever their length.
pub const MAX_HELD: usize = 4096;

/// One sampler interval `(start_ns, end_ns]` and its energy in micro-joules (`None`: unavailable).
pub type Interval = (u64, u64, Option<u64>);

/// A held interval: `(start_ns, end_ns, shape, energy given so far)`.
type Held = (u64, u64, Option<u128>, u64);

/// The span the counter's last increment covered: from the read at the change before it to the
/// read at which it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoveredSpan {
    /// Start (exclusive), ns.
    pub start_ns: u64,
    /// End (inclusive), ns.
    pub end_ns: u64,
    /// The increment, micro-joules.
    pub energy_uj: u64,
}

impl CoveredSpan {
    /// Mean power over the span in milliwatts (`None` for an empty span).
    pub fn power_mw(&self) -> Option<u64> {
        let dt = self.end_ns.saturating_sub(self.start_ns);
        // uJ / ns = kW; in mW: uJ * 1e6 / ns.
        (dt > 0).then(|| {
            u64::try_from(u128::from(self.energy_uj) * 1_000_000 / u128::from(dt))
                .unwrap_or(u64::MAX)
        })
    }
}

/// One device's spreader: push each sampler interval's raw increment, pop them back, in order,
/// with their final energy.
#[derive(Clone, Debug)]
pub struct Spreader {
    override_ns: Option<u64>,
    learner: PeriodLearner,
    /// Held intervals: start, end, shape (the power's trapezoid integral over the interval, in
    /// mW·ns, when the reads at both ends carried a power) and the energy given to it so far (its
    /// part before the latest estimated update).
    held: VecDeque<Held>,
    /// The estimated time of the counter's latest update: the middle of the interval whose read
    /// saw it change. Energy before it is given out; the held intervals after it wait.
    cut_ns: Option<u64>,
    /// The power of the previous read, if it carried one.
    last_power_mw: Option<u64>,
    ready: VecDeque<Interval>,
    last_span: Option<CoveredSpan>,
    /// End of the read at which the counter last changed.
    last_change_ns: Option<u64>,
    /// How long before the read that sees it a counter that moves at every read last updated, on
    /// average, where known ([`Spreader::set_update_lag`]).
    update_lag_ns: Option<u64>,
}

impl Spreader {
    /// A spreader for a device whose update period is `period_override_ns` if configured (never
    /// learned then), or learned from the reads.
    pub fn new(period_override_ns: Option<u64>) -> Self {
        Spreader {
            override_ns: period_override_ns.filter(|&p| p > 0),
            learner: PeriodLearner::new(),
            held: VecDeque::new(),
            cut_ns: None,
            last_power_mw: None,
            ready: VecDeque::new(),
            last_span: None,
            last_change_ns: None,
            update_lag_ns: None,
        }
    }

    /// Sets how long before the read that sees it a counter that moves at every read last
    /// updated (the sampler sets half the interval where the reads are aligned to the counter's
    /// updates, `SamplerCore::align_start`): its increments are then spread over the time up to
    /// that update, as a slower counter's are.
    pub fn set_update_lag(&mut self, lag_ns: Option<u64>) {
        self.update_lag_ns = lag_ns.filter(|&l| l > 0);
    }

    /// Feeds the interval `(start_ns, end_ns]` and its raw (wrap- and reset-corrected) increment,
    /// `None` when the read failed. Intervals must be pushed in order.
    pub fn push(&mut self, start_ns: u64, end_ns: u64, delta_uj: Option<u64>) {
        self.push_shaped(start_ns, end_ns, delta_uj, None);
    }

    /// [`Spreader::push`] with the instantaneous power at the interval's end read, if the meter has
    /// one: increments are then spread in proportion to the power's integral.
    pub fn push_shaped(
        &mut self,
        start_ns: u64,
        end_ns: u64,
        delta_uj: Option<u64>,
        power_mw: Option<u64>,
    ) {
        // Saturating: a garbage power reading must not overflow (nor panic), only skew the shape.
        let shape = match (self.last_power_mw, power_mw) {
            (Some(a), Some(b)) => Some(
                (u128::from(a) + u128::from(b))
                    .saturating_mul(u128::from(end_ns.saturating_sub(start_ns)))
                    / 2,
            ),
            _ => None,
        };
        self.last_power_mw = power_mw;
        match delta_uj {
            None => {
                self.release_held();
                self.learner.break_chain();
                self.ready.push_back((start_ns, end_ns, None));
            }
            Some(0) => {
                self.learner.read(end_ns, false);
                if self.holds(end_ns.saturating_sub(start_ns)) {
                    self.held.push_back((start_ns, end_ns, shape, 0));
                    self.enforce_bound(end_ns);
                } else {
                    self.release_held();
                    self.ready.push_back((start_ns, end_ns, Some(0)));
                }
                // The power stays that of the last covered span unless the counter never moved, or
                // has stood still for longer than any hold: then the device draws (next to) nothing.
                let still_from = match self.last_change_ns {
                    None => Some(start_ns),
                    Some(c) if end_ns.saturating_sub(c) > self.hold_bound_ns() => Some(c),
                    Some(_) => None,
                };
                if let Some(from) = still_from {
                    self.last_span = Some(CoveredSpan {
                        start_ns: from,
                        end_ns,
                        energy_uj: 0,
                    });
                }
            }
            Some(d) => {
                self.learner.read(end_ns, true);
                let first = self.held.front().map_or(start_ns, |h| h.0);
                // The power span runs from the previous change even where the intervals between
                // were released unspread (period not learned yet, a failure, the hold bound).
                let first = self.last_change_ns.replace(end_ns).unwrap_or(first);
                self.last_span = Some(CoveredSpan {
                    start_ns: first,
                    end_ns,
                    energy_uj: d,
                });
                let slow = self.holds(end_ns.saturating_sub(start_ns));
                self.held.push_back((start_ns, end_ns, shape, 0));
                let update_ns = if slow {
                    // The counter changed somewhere in this interval: at its middle, on average.
                    Some(start_ns + end_ns.saturating_sub(start_ns) / 2)
                } else {
                    self.update_lag_ns
                        .map(|lag| end_ns.saturating_sub(lag).max(start_ns))
                };
                if let Some(update_ns) = update_ns {
                    // The increment is the energy since the previous update, so it goes to
                    // (previous update, this one]; the rest of this interval waits for the next.
                    let from = self.cut_ns.unwrap_or(0);
                    self.spread_held(d, from, update_ns);
                    self.cut_ns = Some(update_ns);
                    while self.held.front().is_some_and(|h| h.1 <= update_ns) {
                        if let Some((s, e, _, given)) = self.held.pop_front() {
                            self.ready.push_back((s, e, Some(given)));
                        }
                    }
                } else {
                    self.spread_held(d, 0, end_ns);
                    self.release_held();
                }
            }
        }
    }

    /// The power at the baseline read (before any interval), so the first interval has a shape too.
    pub fn baseline_power(&mut self, power_mw: Option<u64>) {
        self.last_power_mw = power_mw;
    }

    /// The oldest interval whose energy is final, if any.
    pub fn pop_final(&mut self) -> Option<Interval> {
        self.ready.pop_front()
    }

    /// An estimate of the energy of the interval `(start_ns, end_ns]` before it is final: its
    /// energy if it is final and waiting; for the newest held interval, the part of it given so
    /// far (before the counter's latest estimated update) scaled to its whole length, when at
    /// least a fifth of it is covered. `None` otherwise (nothing of it measured yet).
    pub fn estimate_of(&self, start_ns: u64, end_ns: u64) -> Option<u64> {
        if let Some(&(_, _, d)) = self.ready.iter().find(|r| r.0 == start_ns && r.1 == end_ns) {
            return d;
        }
        let &(s, e, _, given) = self
            .held
            .back()
            .filter(|h| h.0 == start_ns && h.1 == end_ns)?;
        let len = e.saturating_sub(s);
        let covered = self.cut_ns?.min(e).saturating_sub(s);
        (covered > 0 && covered.saturating_mul(5) >= len)
            .then(|| crate::ledger::split::mul_div(given, len, covered))
    }

    /// Whether an interval is final and waiting in [`Spreader::pop_final`].
    pub fn has_final(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Releases every held interval as measured (0 µJ): nothing more will come to spread over them.
    pub fn flush(&mut self) {
        if !self.held.is_empty() {
            self.learner.break_chain();
        }
        self.release_held();
    }

    /// Intervals held, waiting for the counter to move.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The span from the read at the counter's previous change to the read at its last change, and
    /// that increment: its power is the device's current power. A span of 0 µJ while the counter has
    /// never moved, or once it has stood still for longer than the hold bound.
    pub fn last_span(&self) -> Option<CoveredSpan> {
        self.last_span
    }

    /// The update period in force: configured, else learned.
    pub fn period(&self) -> Period {
        match self.override_ns {
            Some(ns) => Period {
                ns: Some(ns),
                source: PeriodSource::Configured,
                every_read: false,
            },
            None => self.learner.period(),
        }
    }

    /// The update period configured for this device, if any.
    pub fn configured_period(&self) -> Option<u64> {
        self.override_ns
    }

    /// The longest time intervals are held: `max(4 × period, 1 s)`, at most [`MAX_HOLD_NS`].
    pub fn hold_bound_ns(&self) -> u64 {
        let p = self.period().ns.unwrap_or(0);
        p.saturating_mul(4).clamp(MIN_HOLD_NS, MAX_HOLD_NS)
    }

    fn holds(&self, interval_ns: u64) -> bool {
        match self.override_ns {
            Some(p) => p > interval_ns,
            None => self.learner.stood_still(),
        }
    }

    /// Releases every held interval with the energy given to it so far; the next increment
    /// starts a new span.
    fn release_held(&mut self) {
        while let Some((s, e, _, given)) = self.held.pop_front() {
            self.ready.push_back((s, e, Some(given)));
        }
        self.cut_ns = None;
    }

    fn enforce_bound(&mut self, now_ns: u64) {
        let bound = self.hold_bound_ns();
        let mut released = false;
        while let Some(&(s, e, _, given)) = self.held.front() {
            if self.held.len() <= MAX_HELD && now_ns.saturating_sub(s) <= bound {
                break;
            }
            self.held.pop_front();
            self.ready.push_back((s, e, Some(given)));
            released = true;
        }
        if released {
            self.learner.break_chain();
        }
    }

    /// Gives `d` to the held intervals' parts within `(from_ns, to_ns]`, in proportion to those
    /// parts' shape when every interval has one and they are not all 0, else to their length,
    /// exactly: part i gets `floor(d·C_i/T) − floor(d·C_{i−1}/T)` with C the cumulative weight,
    /// which telescopes to `d`. With no part of positive weight, the newest interval takes it all.
    fn spread_held(&mut self, d: u64, from_ns: u64, to_ns: u64) {
        let part = |&(s, e, _, _): &Held| {
            let len = e.saturating_sub(s);
            let overlap = e.min(to_ns).saturating_sub(s.max(from_ns));
            (len, overlap)
        };
        let shaped = self.held.iter().all(|h| h.2.is_some())
            && self.held.iter().any(|h| h.2.is_some_and(|w| w > 0));
        let weight = |h: &Held| {
            let (len, overlap) = part(h);
            match h.2 {
                // w · overlap / len without overflow (overlap <= len).
                Some(w) if shaped && len > 0 => {
                    w / u128::from(len) * u128::from(overlap)
                        + w % u128::from(len) * u128::from(overlap) / u128::from(len)
                }
                _ => u128::from(overlap),
            }
        };
        let total: u128 = self
            .held
            .iter()
            .map(weight)
            .fold(0u128, u128::saturating_add);
        let n = self.held.len();
        let (mut cum, mut given) = (0u128, 0u64);
        for (i, h) in self.held.iter_mut().enumerate() {
            let upto = if total == 0 {
                if i + 1 == n {
                    d
                } else {
                    0
                }
            } else {
                cum = cum.saturating_add(weight(h));
                if cum >= total {
                    d
                } else {
                    mul_div(d, cum, total)
                }
            };
            let share = upto.saturating_sub(given);
            given = given.max(upto);
            h.3 = h.3.saturating_add(share);
        }
    }
}

/// `d · num / den` for `num <= den`, rounded down, without overflow (both are scaled down together
/// in the absurd case where the product does not fit 128 bits).
fn mul_div(d: u64, mut num: u128, mut den: u128) -> u64 {
    loop {
        if den == 0 {
            return d;
        }
        if let Some(p) = u128::from(d).checked_mul(num) {
            return u64::try_from(p / den).unwrap_or(d).min(d);
        }
        num >>= 1;
        den >>= 1;
    }
}

#[cfg(test)]
#[path = "spread_tests.rs"]
mod tests;
