//! The engine's recent step boundaries, as token arrivals showed them (`observe::StepClock`): the
//! ledger places decode work one token per step over them, and finds where a non-streamed
//! answer's first token came by counting its tokens back from its end. It also keeps where the
//! boundaries are complete: a stream decodes one token per engine step, so from one of its
//! tokens to the next no step went unseen; elsewhere the count may skip steps. Pure data,
//! bounded to [`STEP_HISTORY`] boundaries and [`COVERED_HISTORY`] stretches.

use std::collections::VecDeque;

/// Boundaries kept: at a 5 ms step, 80 s of history; older ones are dropped first.
pub const STEP_HISTORY: usize = 16_384;

/// Stretches of time kept during which every step was seen.
pub const COVERED_HISTORY: usize = 4_096;

/// Share of a span streams must have decoded through for its steps to count as all seen
/// ([`StepHistory::all_seen`]): short gaps between one stream's end and the next one's first
/// token miss little.
pub const SEEN_COVERAGE: f64 = 0.9;

/// Recent step boundaries, increasing, clock nanoseconds; and the stretches of time in which
/// they are complete (a stream decoded through them, so no step went unseen).
#[derive(Debug, Default)]
pub struct StepHistory {
    ends: VecDeque<u64>,
    covered: VecDeque<(u64, u64)>,
}

impl StepHistory {
    /// Appends newly seen boundaries (ones not after the newest kept are ignored).
    pub fn extend(&mut self, ends: &[u64]) {
        for &t in ends {
            if self.ends.back().is_some_and(|&b| t <= b) {
                continue;
            }
            if self.ends.len() == STEP_HISTORY {
                self.ends.pop_front();
            }
            self.ends.push_back(t);
        }
    }

    /// Whether the history reaches back to `t` (a boundary at or before it is kept).
    pub fn covers(&self, t: u64) -> bool {
        self.ends.front().is_some_and(|&f| f <= t)
    }

    /// The `k`-th boundary counting back from `t` (the last one at or before `t` is the first),
    /// if it is after `floor`.
    pub fn nth_back(&self, t: u64, k: usize, floor: u64) -> Option<u64> {
        let i = self.ends.partition_point(|&e| e <= t);
        let j = i.checked_sub(k.max(1))?;
        self.ends.get(j).copied().filter(|&e| e > floor)
    }

    /// Durations of the (at most `n`) latest steps that ended at or before `t`, newest first
    /// (gaps of a second or more, idle time, left out).
    pub fn durations_before(&self, t: u64, n: usize) -> impl Iterator<Item = u64> + '_ {
        let i = self.ends.partition_point(|&e| e <= t);
        let lo = i.saturating_sub(n + 1);
        (lo + 1..i)
            .rev()
            .map(move |j| self.ends[j] - self.ends[j - 1])
            .filter(|&d| d < 1_000_000_000)
    }

    /// The boundaries in `(lo, hi]`, oldest first.
    pub fn within(&self, lo: u64, hi: u64) -> impl Iterator<Item = u64> + '_ {
        let i = self.ends.partition_point(|&t| t <= lo);
        self.ends.range(i..).copied().take_while(move |&t| t <= hi)
    }

    /// Notes that every step in `(lo, hi]` was seen (a stream decoded through it: one token per
    /// step). Overlapping and touching stretches merge; they come nearly in time order (one per
    /// stream and read), so the search starts from the newest. The oldest go first past
    /// [`COVERED_HISTORY`].
    pub fn cover(&mut self, lo: u64, hi: u64) {
        if hi <= lo {
            return;
        }
        // Most calls extend or fall inside the newest stretch (every stream of a batch covers the
        // same steps at each tick): no search, no move.
        if let Some(last) = self.covered.back_mut() {
            if last.0 <= lo && lo <= last.1 {
                last.1 = last.1.max(hi);
                return;
            }
        }
        // The first stretch ending at or after `lo`: it or the ones after may touch `(lo, hi]`.
        let mut i = self.covered.len();
        while i > 0 && self.covered[i - 1].1 >= lo {
            i -= 1;
        }
        let (mut a, mut b) = (lo, hi);
        let mut j = i;
        while j < self.covered.len() && self.covered[j].0 <= b {
            a = a.min(self.covered[j].0);
            b = b.max(self.covered[j].1);
            j += 1;
        }
        self.covered.drain(i..j);
        self.covered.insert(i, (a, b));
        if self.covered.len() > COVERED_HISTORY {
            self.covered.pop_front();
        }
    }

    /// Whether the steps in `(lo, hi]` count as all seen: streams covered at least
    /// [`SEEN_COVERAGE`] of it.
    pub fn all_seen(&self, lo: u64, hi: u64) -> bool {
        self.coverage(lo, hi) >= SEEN_COVERAGE
    }

    /// The share of `(lo, hi]` in which every step was seen (0 for an empty interval).
    pub fn coverage(&self, lo: u64, hi: u64) -> f64 {
        if hi <= lo {
            return 0.0;
        }
        let i = self.covered.partition_point(|&(_, b)| b <= lo);
        let seen: u64 = self
            .covered
            .range(i..)
            .take_while(|&&(a, _)| a < hi)
            .map(|&(a, b)| b.min(hi).saturating_sub(a.max(lo)))
            .sum();
        seen as f64 / (hi - lo) as f64
    }

    /// Number of boundaries kept.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_bound() {
        let mut h = StepHistory::default();
        assert!(!h.covers(5));
        h.extend(&[10, 20, 20, 15, 30]);
        assert_eq!(h.len(), 3);
        assert!(h.covers(10) && !h.covers(9));
        assert_eq!(h.within(10, 30).collect::<Vec<_>>(), vec![20, 30]);
        assert_eq!(h.within(30, 90).count(), 0);
        assert_eq!(h.nth_back(30, 1, 0), Some(30));
        assert_eq!(h.nth_back(29, 2, 0), Some(10));
        assert_eq!(h.nth_back(30, 3, 10), None);
        let d: Vec<u64> = h.durations_before(30, 8).collect();
        assert_eq!(d, vec![10, 10]);
        assert_eq!(h.durations_before(25, 1).collect::<Vec<_>>(), vec![10]);
        assert_eq!(h.durations_before(10, 8).count(), 0);
        h.cover(50, 60);
        h.cover(20, 30);
        h.cover(12, 20);
        h.cover(10, 14);
        h.cover(55, 58);
        assert_eq!(h.coverage(10, 30), 1.0);
        assert_eq!(h.coverage(0, 40), 0.5);
        assert_eq!(h.coverage(25, 55), 10.0 / 30.0);
        assert_eq!(h.coverage(30, 50), 0.0);
        assert_eq!(h.coverage(5, 5), 0.0);
        h.cover(25, 52);
        assert_eq!(h.coverage(10, 60), 1.0);
        let many: Vec<u64> = (100..100 + STEP_HISTORY as u64 + 5).collect();
        h.extend(&many);
        assert_eq!(h.len(), STEP_HISTORY);
        assert!(!h.covers(104) && h.covers(105));
    }
}
