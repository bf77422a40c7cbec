//! The engine's step boundaries as the proxy sees them: every token a response delivers ends an
//! engine step (continuous batching emits one token per running sequence per step, and all the
//! step's outputs leave together), so the times at which any response's token count grows mark
//! where steps ended.
//!
//! The data plane records those times in a fixed ring of atomics ([`StepClock::observe`]: one
//! load on most events, a CAS and two stores once per step); accounting drains the ring on each
//! tick ([`StepClock::drain_since`]) into the ledger's step history, which places work where the
//! steps ran. Bounded: the ring keeps the newest [`STEP_RING`] boundaries; a reader that fell
//! further behind loses the oldest (they only refine placement; nothing is accounted from them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Boundaries kept by the ring (a power of two). At a 5 ms step that is 20 s of history, far
/// more than accounting's tick (which drains it).
pub const STEP_RING: usize = 4096;

/// Token events closer than this to the latest recorded boundary belong to the same step (the
/// outputs of one step reach the proxy within microseconds of each other; no engine steps
/// faster than a millisecond).
pub const SAME_STEP_NS: u64 = 1_000_000;

/// Ring of recent step boundaries, clock nanoseconds.
#[derive(Debug)]
pub struct StepClock {
    ring: Box<[AtomicU64]>,
    /// Number of boundaries ever recorded (the next write goes to `head % STEP_RING`).
    head: AtomicU64,
    /// The latest recorded boundary.
    latest: AtomicU64,
}

impl Default for StepClock {
    fn default() -> Self {
        StepClock {
            ring: (0..STEP_RING).map(|_| AtomicU64::new(0)).collect(),
            head: AtomicU64::new(0),
            latest: AtomicU64::new(0),
        }
    }
}

impl StepClock {
    /// Notes that a response's token count grew at `now_ns`.
    pub fn observe(&self, now_ns: u64) {
        let latest = self.latest.load(Relaxed);
        if now_ns < latest.saturating_add(SAME_STEP_NS) {
            return;
        }
        // One writer per step: the others see the new `latest` and return above.
        if self
            .latest
            .compare_exchange(latest, now_ns, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let i = self.head.fetch_add(1, Relaxed);
        self.ring[(i as usize) % STEP_RING].store(now_ns, Relaxed);
    }

    /// Appends to `out` the boundaries recorded since the reader's cursor `*next` (a count from
    /// [`StepClock::observe`]'s point of view) and advances it. Boundaries that were overwritten
    /// before they were read are skipped; so are slots whose write has not landed yet (they
    /// would look older than what precedes them), which only loses one boundary.
    pub fn drain_since(&self, next: &mut u64, out: &mut Vec<u64>) {
        let head = self.head.load(Relaxed);
        let from = (*next).max(head.saturating_sub(STEP_RING as u64));
        let mut last = out.last().copied().unwrap_or(0);
        for i in from..head {
            let t = self.ring[(i as usize) % STEP_RING].load(Relaxed);
            if t > last {
                out.push(t);
                last = t;
            }
        }
        *next = head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_one_step_are_one_boundary() {
        let c = StepClock::default();
        c.observe(10_000_000);
        c.observe(10_000_100);
        c.observe(10_900_000);
        c.observe(12_000_000);
        let (mut next, mut out) = (0, Vec::new());
        c.drain_since(&mut next, &mut out);
        assert_eq!(out, vec![10_000_000, 12_000_000]);
        c.observe(20_000_000);
        out.clear();
        c.drain_since(&mut next, &mut out);
        assert_eq!(out, vec![20_000_000]);
        out.clear();
        c.drain_since(&mut next, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_reader_far_behind_gets_the_newest_ring() {
        let c = StepClock::default();
        for k in 1..=(STEP_RING as u64 + 10) {
            c.observe(k * 2 * SAME_STEP_NS);
        }
        let (mut next, mut out) = (0, Vec::new());
        c.drain_since(&mut next, &mut out);
        assert_eq!(out.len(), STEP_RING);
        assert_eq!(out[0], 11 * 2 * SAME_STEP_NS);
        assert_eq!(next, STEP_RING as u64 + 10);
    }
}
