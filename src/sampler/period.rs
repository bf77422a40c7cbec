//! Learning how often a meter's counter actually moves, from the reads themselves.
//!
//! Owns the per-device period estimate only; pure, no clock and no I/O (read times come in as
//! arguments). A counter that updates every P while it is read every S < P changes at some reads and
//! stays still at the others: the reads at which it changed sit on a lattice of period P (seen
//! through the coarser lattice of reads). The mean distance between consecutive changes over a
//! window of recent changes is P, whatever the phase of the two lattices (spans of 50 and 100 ms
//! alternate for a 75 ms counter read every 50 ms). A counter that moves at every read has a period
//! of at most the sampling interval, and is reported as such.
//!
//! Spans are only counted between two changes seen without a break: a failed read, or held
//! intervals released by the hold bound, break the chain, so an outage never reads as a slow meter.

use std::collections::VecDeque;

/// Changes kept for the estimate.
pub const WINDOW: usize = 32;
/// Spans needed before the estimate is used.
pub const MIN_SPANS: usize = 4;

/// Where a device's update period comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodSource {
    /// Set by configuration (`meter_period_ms` or a spec's `period_ms=N`); never learned.
    Configured,
    /// Learned from the reads.
    Learned,
    /// Not known yet (fewer than [`MIN_SPANS`] spans between changes seen).
    Unknown,
}

/// A device's update period as the sampler knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    /// The period in nanoseconds, if known. When `every_read` is set it is the mean sampling
    /// interval, an upper bound: the counter may move faster than it is read.
    pub ns: Option<u64>,
    /// Where it comes from.
    pub source: PeriodSource,
    /// The counter moved at every one of the recent reads (its period is at most the interval).
    pub every_read: bool,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    ns: u64,
    reads: u32,
}

/// Learns a device's update period from the times of the reads at which its counter changed.
#[derive(Clone, Debug, Default)]
pub struct PeriodLearner {
    spans: VecDeque<Span>,
    sum_ns: u128,
    /// End of the read at which the counter last changed, and the reads since (this one included).
    last_change: Option<(u64, u32)>,
}

impl PeriodLearner {
    /// A learner with nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// A read ending at `end_ns` at which the counter did (`changed`) or did not move.
    pub fn read(&mut self, end_ns: u64, changed: bool) {
        let Some((last_ns, reads)) = self.last_change.as_mut() else {
            if changed {
                self.last_change = Some((end_ns, 0));
            }
            return;
        };
        *reads = reads.saturating_add(1);
        if !changed {
            return;
        }
        let span = Span {
            ns: end_ns.saturating_sub(*last_ns),
            reads: *reads,
        };
        self.last_change = Some((end_ns, 0));
        if self.spans.len() == WINDOW {
            if let Some(old) = self.spans.pop_front() {
                self.sum_ns -= u128::from(old.ns);
            }
        }
        self.sum_ns += u128::from(span.ns);
        self.spans.push_back(span);
    }

    /// The chain of changes is broken (failed read, released intervals): the next change starts a
    /// new chain instead of closing a span.
    pub fn break_chain(&mut self) {
        self.last_change = None;
    }

    /// The learned period: the mean span between changes, once [`MIN_SPANS`] are known.
    pub fn period(&self) -> Period {
        let n = self.spans.len();
        if n < MIN_SPANS {
            return Period {
                ns: None,
                source: PeriodSource::Unknown,
                every_read: false,
            };
        }
        let mean = self.sum_ns / n as u128;
        Period {
            ns: Some(u64::try_from(mean).unwrap_or(u64::MAX)),
            source: PeriodSource::Learned,
            every_read: !self.stood_still(),
        }
    }

    /// Whether any recent span covered more than one read: the counter stood still at a read, so
    /// it moves more slowly than it is read (or drew nothing for a while).
    pub fn stood_still(&self) -> bool {
        self.spans.iter().any(|s| s.reads > 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Reads every `s` ms of a counter updating every `p` ms (phase `phase` ms), for `n` reads.
    fn feed(l: &mut PeriodLearner, s: u64, p: u64, phase: u64, n: u64) {
        let updates = |t: u64| (t + phase) / p;
        for k in 1..=n {
            let (a, b) = ((k - 1) * s, k * s);
            l.read(b * MS, updates(b) > updates(a));
        }
    }

    #[test]
    fn learns_slow_counters_whatever_the_phase() {
        for (p, phase) in [(100, 0), (100, 37), (75, 10), (250, 199), (60, 0)] {
            let mut l = PeriodLearner::new();
            feed(&mut l, 50, p, phase, 200);
            let got = l.period();
            assert_eq!(got.source, PeriodSource::Learned, "p={p}");
            assert!(!got.every_read, "p={p}");
            let ns = got.ns.unwrap_or(0) as f64;
            // Over 32 spans the mean is within one read interval / 32 of the truth.
            assert!((ns / (p * MS) as f64 - 1.0).abs() < 0.05, "p={p}: {ns}");
        }
    }

    #[test]
    fn a_counter_moving_at_every_read_is_at_most_the_interval() {
        let mut l = PeriodLearner::new();
        feed(&mut l, 50, 20, 3, 40);
        let got = l.period();
        assert_eq!(got.ns, Some(50 * MS));
        assert!(got.every_read);
        assert!(!l.stood_still());
    }

    #[test]
    fn broken_chains_do_not_read_as_slow() {
        let mut l = PeriodLearner::new();
        l.read(50 * MS, true);
        l.break_chain();
        l.read(5_000 * MS, true);
        for k in 1..=4 {
            l.read((5_000 + 50 * k) * MS, true);
        }
        assert_eq!(l.period().ns, Some(50 * MS));
        assert!(l.period().every_read);
        // Too few spans: unknown.
        let mut u = PeriodLearner::new();
        feed(&mut u, 50, 100, 0, 6);
        assert_eq!(u.period().source, PeriodSource::Unknown);
    }
}
