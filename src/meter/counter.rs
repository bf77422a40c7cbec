//! Turning successive cumulative readings of one device into per-interval energy.
//!
//! Pure arithmetic, no I/O and no clock: the sampler feeds `(value, time)` pairs. Policy, chosen so
//! that no interval ever carries negative or absurd energy and every anomaly is counted:
//! - **Increase**: the difference, if plausible (see [`CounterTracker::bound_uj`]); an implausible jump
//!   (garbage, a different counter swapped in) contributes 0 and is counted as a reset.
//! - **Decrease with a known wrap modulus** `N`: the counter wrapped; the delta is `N - last + value`
//!   (counted as a wrap) if plausible, else it is treated as a reset.
//! - **Decrease without one** (driver reload, file rewritten from zero): a reset. The energy since the
//!   reset, i.e. the new value, is counted when it is plausible for the elapsed time, else 0: a counter
//!   restarted from zero inside the interval measured exactly that energy.
//! - **Failed reading**: the tracker keeps its last good value, so the next good reading's delta covers
//!   the gap: energy is delayed, not lost (the plausibility bound scales with the elapsed time).
//!
//! The bound scales with the time the increment can cover, not with the time since the last read: a
//! counter that updates more slowly than it is read (NVML's every ~100 ms, read every 10 ms) shows
//! its whole update at one read, energy accrued since the read *before* its previous change. That
//! window starts no later than [`MIN_BOUND_WINDOW_NS`] before the read, since the update before the
//! first change read is unseen. (Measured on an H200: with the bound over the read interval alone,
//! a 10 ms sampler dropped two thirds of the energy under load as "implausible".)

/// Plausibility ceiling per device when its power limit is unknown: far above any accelerator or CPU
/// package, yet small enough to reject garbage and 64-bit jumps.
pub const DEFAULT_MAX_WATTS: u64 = 50_000;
/// Slack added to the plausibility bound, for coarse counters (1 J resolution files, NVML's ~100 ms
/// counter updates landing in a short interval).
pub const BOUND_SLACK_UJ: u64 = 1_000_000;
/// Shortest window the plausibility bound allows for: a counter's update may carry energy from before
/// the tracker's first read, and counters update at least this often in practice (NVML ~0.1 s).
pub const MIN_BOUND_WINDOW_NS: u64 = 1_000_000_000;

/// What one reading did to the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// First reading: the baseline; no energy yet.
    Baseline,
    /// A normal increase by this many micro-joules.
    Increase(u64),
    /// The counter wrapped; this many micro-joules elapsed.
    Wrapped(u64),
    /// The counter reset or jumped implausibly; this many micro-joules are counted (0 or the plausible
    /// post-reset value).
    Reset(u64),
}

impl Step {
    /// Micro-joules this step contributes to its interval.
    pub fn delta_uj(self) -> u64 {
        match self {
            Step::Baseline => 0,
            Step::Increase(d) | Step::Wrapped(d) | Step::Reset(d) => d,
        }
    }
}

/// Tracks one device's cumulative counter.
#[derive(Clone, Debug)]
pub struct CounterTracker {
    wrap_uj: Option<u64>,
    max_watts: u64,
    last: Option<(u64, u64)>,
    /// The read before the counter's last observed change (or the baseline read): the increment
    /// seen at the next change can have accrued since then, not only since the last read.
    window_start_ns: u64,
}

impl CounterTracker {
    /// A tracker for a counter wrapping modulo `wrap_uj` (if known), whose device cannot plausibly
    /// draw more than `max_watts`.
    pub fn new(wrap_uj: Option<u64>, max_watts: u64) -> Self {
        CounterTracker {
            wrap_uj: wrap_uj.filter(|&w| w > 0),
            max_watts: max_watts.max(1),
            last: None,
            window_start_ns: 0,
        }
    }

    /// A tracker with the plausibility ceiling derived from a power limit (4x it, at least 1 kW), or
    /// [`DEFAULT_MAX_WATTS`] when the limit is unknown.
    pub fn for_device(wrap_uj: Option<u64>, power_limit_w: Option<f64>) -> Self {
        let max_watts = match power_limit_w {
            Some(w) if w.is_finite() && w > 0.0 => ((w * 4.0) as u64).max(1_000),
            _ => DEFAULT_MAX_WATTS,
        };
        Self::new(wrap_uj, max_watts)
    }

    /// The most energy plausible over `elapsed_ns`, in micro-joules.
    pub fn bound_uj(&self, elapsed_ns: u64) -> u64 {
        // W * ns = 1e-9 J = 1e-3 uJ.
        let b = u128::from(self.max_watts) * u128::from(elapsed_ns) / 1_000;
        u64::try_from(b)
            .unwrap_or(u64::MAX)
            .saturating_add(BOUND_SLACK_UJ)
    }

    /// Feeds a good reading `value` (micro-joules) taken at `at_ns`.
    pub fn observe(&mut self, value: u64, at_ns: u64) -> Step {
        let Some((last, last_ns)) = self.last.replace((value, at_ns)) else {
            self.window_start_ns = at_ns;
            return Step::Baseline;
        };
        let window_ns = at_ns
            .saturating_sub(self.window_start_ns)
            .max(MIN_BOUND_WINDOW_NS);
        if value != last {
            self.window_start_ns = last_ns;
        }
        let bound = self.bound_uj(window_ns);
        if value >= last {
            let d = value - last;
            return if d <= bound {
                Step::Increase(d)
            } else {
                Step::Reset(0)
            };
        }
        if let Some(n) = self.wrap_uj {
            if last < n {
                let d = (n - last).saturating_add(value);
                if d <= bound {
                    return Step::Wrapped(d);
                }
            }
        }
        Step::Reset(if value <= bound { value } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn increases_wraps_and_resets() {
        let mut t = CounterTracker::new(Some(1_000_000_000), 100);
        assert_eq!(t.observe(999_000_000, 0), Step::Baseline);
        assert_eq!(t.observe(999_500_000, 100 * MS), Step::Increase(500_000));
        // Wraps past 1e9 back to 200_000: 500_000 + 200_000.
        assert_eq!(t.observe(200_000, 200 * MS), Step::Wrapped(700_000));
        let mut r = CounterTracker::new(None, 100);
        r.observe(5_000_000, 0);
        // Reset to a small value: the post-reset energy is plausible and counted.
        assert_eq!(r.observe(30_000, 100 * MS), Step::Reset(30_000));
        // Reset to a value too large for 100 ms at 100 W (+1 J slack): counted as 0.
        r.observe(500_000_000, 200 * MS);
        assert_eq!(r.observe(400_000_000, 300 * MS), Step::Reset(0));
    }

    #[test]
    fn implausible_jumps_contribute_nothing() {
        let mut t = CounterTracker::new(None, 1_000);
        t.observe(0, 0);
        assert_eq!(t.observe(u64::MAX, 50 * MS), Step::Reset(0));
        // Baseline moved to the new value: normal increases resume.
        assert_eq!(t.observe(u64::MAX, 100 * MS), Step::Increase(0));
    }

    #[test]
    fn gaps_widen_the_bound() {
        let mut t = CounterTracker::new(None, 1_000);
        t.observe(0, 0);
        // 10 s at 500 W after failed reads in between: plausible for 10 s.
        assert_eq!(
            t.observe(5_000_000_000, 10_000 * MS),
            Step::Increase(5_000_000_000)
        );
    }

    #[test]
    fn wrap_with_a_bogus_last_value_is_a_reset() {
        let mut t = CounterTracker::new(Some(1_000), 1_000);
        t.observe(5_000, 0); // above the modulus: the wrap range is wrong for this value
        assert_eq!(t.observe(10, MS), Step::Reset(10));
    }

    #[test]
    fn power_limit_sets_the_ceiling() {
        let t = CounterTracker::for_device(None, Some(700.0));
        assert_eq!(t.bound_uj(1_000 * MS), 2_800_000_000 + BOUND_SLACK_UJ);
        let d = CounterTracker::for_device(None, None);
        assert_eq!(d.bound_uj(1_000 * MS), 50_000_000_000 + BOUND_SLACK_UJ);
    }

    /// The H200's shape: a 700 W card whose counter updates every 100 ms, read every 10 ms. Each
    /// update carries 100 ms at full power (70 J), far more than 10 ms could: it is energy since the
    /// read before the previous change, and must be counted, every time.
    #[test]
    fn slow_counter_updates_read_often_are_plausible() {
        let mut t = CounterTracker::for_device(None, Some(700.0));
        let mut value = 1_000_000_000_000;
        assert_eq!(t.observe(value, 0), Step::Baseline);
        for k in 1..=200u64 {
            if k % 10 == 3 {
                value += 70_000_000;
                assert_eq!(t.observe(value, k * 10 * MS), Step::Increase(70_000_000));
            } else {
                assert_eq!(t.observe(value, k * 10 * MS), Step::Increase(0));
            }
        }
    }

    /// A counter file rewritten every 5 s by another program, read every 50 ms: each rewrite covers
    /// 5 s, and the bound follows it; a jump no device could make in that window still is a reset.
    #[test]
    fn the_window_spans_the_time_since_the_previous_change() {
        let mut t = CounterTracker::new(None, 1_000);
        t.observe(0, 0);
        let mut step = Step::Baseline;
        for k in 1..=100u64 {
            let value = if k == 100 { 4_000_000_000 } else { 0 };
            step = t.observe(value, k * 50 * MS);
        }
        assert_eq!(step, Step::Increase(4_000_000_000), "800 W over 5 s");
        for k in 101..=200u64 {
            let value = if k == 200 {
                4_000_000_000 + 6_000_000_000
            } else {
                4_000_000_000
            };
            step = t.observe(value, k * 50 * MS);
        }
        assert_eq!(
            step,
            Step::Reset(0),
            "1200 W over 5 s exceeds the 1 kW ceiling"
        );
    }
}
