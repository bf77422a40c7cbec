//! The engine's recent step boundaries, as token arrivals showed them (`observe::StepClock`): the
//! ledger places decode work one token per step over them, and finds where a non-streamed
//! answer's first token came by counting its tokens back from its end. Pure data, bounded to
//! [`STEP_HISTORY`] boundaries.

use std::collections::VecDeque;

/// Boundaries kept: at a 5 ms step, 80 s of history; older ones are dropped first.
pub const STEP_HISTORY: usize = 16_384;

/// Recent step boundaries, increasing, clock nanoseconds.
#[derive(Debug, Default)]
pub struct StepHistory {
    ends: VecDeque<u64>,
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
        let many: Vec<u64> = (100..100 + STEP_HISTORY as u64 + 5).collect();
        h.extend(&many);
        assert_eq!(h.len(), STEP_HISTORY);
        assert!(!h.covers(104) && h.covers(105));
    }
}
