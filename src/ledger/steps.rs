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

/// Latest steps whose durations give the engine's short step ([`StepHistory::short_step_ns`]).
const SHORT_STEP_SAMPLE: usize = 1024;

/// The quantile of those durations taken as a short step: a decode-only step where any ran.
const SHORT_STEP_QUANTILE: f64 = 0.25;

/// A step longer than this many short steps ran prefill (a chunk's time on top of the decode).
const PREFILL_STEP_FACTOR: f64 = 1.5;

/// The step that sampled a first token must be at least this many short steps long for the
/// short step to tell prefill steps from the others (prefill-bound traffic has no short steps).
const DISTINCT_STEP_FACTOR: f64 = 2.0;

/// Steps looked back over for the start of a run of prefill steps.
const MAX_PREFILL_RUN: usize = 64;

/// Recent step boundaries, increasing, clock nanoseconds; and the stretches of time in which
/// they are complete (a stream decoded through them, so no step went unseen).
#[derive(Debug, Default)]
pub struct StepHistory {
    ends: VecDeque<u64>,
    covered: VecDeque<(u64, u64)>,
    /// Low quantile of the latest steps' durations, refreshed when boundaries come.
    short_step_ns: Option<u64>,
    scratch: Vec<u64>,
}

impl StepHistory {
    /// Appends newly seen boundaries (ones not after the newest kept are ignored).
    pub fn extend(&mut self, ends: &[u64]) {
        let before = self.ends.back().copied();
        for &t in ends {
            if self.ends.back().is_some_and(|&b| t <= b) {
                continue;
            }
            if self.ends.len() == STEP_HISTORY {
                self.ends.pop_front();
            }
            self.ends.push_back(t);
        }
        if self.ends.back().copied() != before {
            self.refresh_short_step();
        }
    }

    /// Once per call with new boundaries (once per ledger tick), not per query: a selection
    /// over [`SHORT_STEP_SAMPLE`] durations.
    fn refresh_short_step(&mut self) {
        let mut d = std::mem::take(&mut self.scratch);
        d.clear();
        d.extend(self.durations_before(u64::MAX, SHORT_STEP_SAMPLE));
        self.short_step_ns = if d.len() < 8 {
            None
        } else {
            let k = ((d.len() - 1) as f64 * SHORT_STEP_QUANTILE) as usize;
            Some(*d.select_nth_unstable(k).1)
        };
        self.scratch = d;
    }

    /// The engine's short step: the low quartile of the latest steps' durations (idle gaps
    /// left out), `None` before eight steps were seen.
    pub fn short_step_ns(&self) -> Option<u64> {
        self.short_step_ns
    }

    /// Where the prefill of a prompt whose first token came at `ft` could have started at the
    /// earliest, as the steps' lengths show: the start of the run of long steps that ends with
    /// the step that sampled the token. A step that runs a prompt chunk is longer than the
    /// decode-only steps around it by the chunk's time, and a waiting prompt is scheduled
    /// chunk after chunk in consecutive steps, so a short step before the run means the prompt
    /// had not started yet: it waited for a sequence slot (vLLM's `max_num_seqs`), not for the
    /// prefill queue, which is what the conveyor and the prefill rate assume (accuracy bench,
    /// queueing traffic with true weights: prefill placed 0.63-0.80 off the engine's per tick,
    /// one step's worth of tokens spread over two to five steps before it). `None` where the
    /// steps say nothing: the first token's step no longer than [`DISTINCT_STEP_FACTOR`] short
    /// steps (prefill-bound traffic, where every step is long), no short step within
    /// [`MAX_PREFILL_RUN`] steps, an idle gap, or steps unseen over the run.
    pub fn prefill_run_start(&self, ft: u64, same_step_ns: u64) -> Option<u64> {
        let short = self.short_step_ns? as f64;
        let probe = ft.saturating_sub(same_step_ns);
        let i = self.ends.partition_point(|&e| e <= probe);
        let mut later = ft;
        for (k, j) in (i.saturating_sub(MAX_PREFILL_RUN)..i).rev().enumerate() {
            let b = self.ends[j];
            let d = later.saturating_sub(b) as f64;
            if d >= 1e9 {
                return None;
            }
            let long = d > PREFILL_STEP_FACTOR * short;
            if k == 0 && d < DISTINCT_STEP_FACTOR * short {
                return None;
            }
            if !long {
                // `(b, later]` is the short step before the run: the run starts at `later`.
                return self.all_seen(later, ft).then_some(later);
            }
            later = b;
        }
        None
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

    /// The number of steps that ended in `(lo, hi]`, where they count as all seen and the
    /// history reaches back to `lo`; `None` otherwise.
    pub fn seen_count(&self, lo: u64, hi: u64) -> Option<usize> {
        (self.covers(lo) && self.all_seen(lo, hi)).then(|| self.within(lo, hi).count())
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

    /// Decode-only steps of 10 ms, then a 40 ms step that ran a prompt and sampled its first
    /// token: the prompt ran in that step alone, however long it waited before.
    #[test]
    fn a_prompt_scheduled_after_short_steps_starts_at_its_long_steps() {
        let ms = 1_000_000u64;
        let mut h = StepHistory::default();
        let mut ends: Vec<u64> = (1..=20).map(|k| k * 10 * ms).collect();
        ends.push(240 * ms);
        h.extend(&ends);
        h.cover(10 * ms, 240 * ms);
        assert_eq!(h.short_step_ns(), Some(10 * ms));
        assert_eq!(h.prefill_run_start(240 * ms, 2 * ms), Some(200 * ms));
        // Two long steps (a prompt longer than one step's budget): the run is both.
        h.extend(&[270 * ms]);
        h.cover(240 * ms, 270 * ms);
        assert_eq!(h.prefill_run_start(270 * ms, 2 * ms), Some(200 * ms));
        // A first token at the end of a short step says nothing.
        h.extend(&[280 * ms]);
        h.cover(270 * ms, 280 * ms);
        assert_eq!(h.prefill_run_start(280 * ms, 2 * ms), None);
        // Nor where the steps over the run went unseen.
        let mut unseen = StepHistory::default();
        unseen.extend(&ends);
        unseen.cover(10 * ms, 200 * ms);
        assert_eq!(unseen.prefill_run_start(240 * ms, 2 * ms), None);
    }

    /// Prefill-bound traffic: every step is long, so no step is distinctly longer than the
    /// short one and the run is not used.
    #[test]
    fn steps_all_alike_say_nothing_about_a_prompts_start() {
        let ms = 1_000_000u64;
        let mut h = StepHistory::default();
        let ends: Vec<u64> = (1..=30).map(|k| k * 70 * ms).collect();
        h.extend(&ends);
        h.cover(70 * ms, 2100 * ms);
        assert_eq!(h.short_step_ns(), Some(70 * ms));
        assert_eq!(h.prefill_run_start(2100 * ms, 2 * ms), None);
    }
}
