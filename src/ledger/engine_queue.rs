//! Which non-streamed answers wait in the engine's queue, from the engine's own queue gauges
//! (vLLM's `vllm:num_requests_waiting` and `_running`, read from its `/metrics`; see
//! [`crate::observe::EngineQueueReading`]).
//!
//! Owns the two newest readings turned into arrival cut-offs, and the gate. The engine admits in
//! arrival order, so at a reading that shows `w` requests waiting, the `w` newest requests in
//! flight then are the waiting ones: everything that arrived after the cut-off (the arrival of
//! the next older one). An answer is held back (no estimated work) while it was among the
//! waiting at both of the two newest readings and the gate is open.
//!
//! Why both readings: a reading is up to an interval old, and a request the engine admits within
//! a step or two of its arrival shows as waiting in one reading only; true queueing persists.
//! Why the gate (the engine running at the most requests it has shown in more than
//! [`AT_MOST_SHARE`] of recent readings): prompts also wait for the step's token budget (long
//! prompts, chunked prefill), and those are the prefill conveyor's to place, not a sequence
//! slot's. Accuracy bench, eight seeds, records (median / p95), without and with it (and the
//! conveyor's stop at held prompts, `super::queue_serve`): traffic without streams 17.88 / 75.85
//! -> 13.45 / 55.18 % (queueing 55.2 / 228.4 -> 19.8 / 63.0 %), the matrix's mix 3.63 / 15.39 ->
//! 3.67 / 15.50 % (mixed-long's overloaded 70B only). Four seeds: without the gate 12.39 / 50.08
//! and 3.68 / 17.28 %, the newest reading at the most instead of the share 12.52 / 50.50 and
//! 3.65 / 16.31 % (against 13.23 / 52.20 and 3.61 / 15.74 %); held back on one reading only, the
//! mix lost more (3.89 / 17.45 %, stop 41's evaluation).

use crate::observe::EngineQueueReading;

/// Time constant of the share of recent readings at the most running seen, ns: a reading's
/// weight is `1 - exp(-gap / AT_MOST_TAU_NS)` for the gap since the one before, so the share
/// means the same at any reading interval (0.1 a reading at the default 250 ms).
const AT_MOST_TAU_NS: f64 = 2.4e9;

/// Share of recent readings at the most running seen above which the engine is taken to hold
/// requests back for sequence slots.
pub(super) const AT_MOST_SHARE: f64 = 0.8;

/// The gap taken before the first reading, ns (the default reading interval).
const DEFAULT_GAP_NS: u64 = crate::config::defaults::UPSTREAM_METRICS_INTERVAL_MS * 1_000_000;

/// Readings this much older than the tick, at least, are no longer used (see
/// [`EngineQueue::holds`]), ns.
const STALE_FLOOR_NS: u64 = 1_000_000_000;

/// One reading as the ledger keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cutoff {
    /// When it was read, ns.
    at_ns: u64,
    /// Requests that arrived after this waited then (`u64::MAX`: none waited).
    after_ns: u64,
}

/// The gauges' state.
#[derive(Debug, Default)]
pub(super) struct EngineQueue {
    /// The newest reading and the one before it.
    newest: Option<Cutoff>,
    previous: Option<Cutoff>,
    /// The most requests seen running at once, and the share of recent readings at it.
    most_running: u32,
    at_most_share: f64,
    /// The newest reading's gauges.
    pub(super) waiting: u32,
    pub(super) running: u32,
    /// Readings taken in.
    pub(super) readings: u64,
    /// Scratch for the arrivals in flight at a reading.
    arrivals: Vec<u64>,
}

impl EngineQueue {
    /// Takes in a reading; `in_flight` gives the `(arrival, end)` of every model request the
    /// proxy tracks (end 0 while in flight).
    pub(super) fn note(
        &mut self,
        reading: EngineQueueReading,
        in_flight: impl Iterator<Item = (u64, u64)>,
    ) {
        if self.newest.is_some_and(|n| reading.at_ns < n.at_ns) {
            return;
        }
        self.arrivals.clear();
        self.arrivals.extend(
            in_flight
                .filter(|&(arrival, end)| {
                    arrival <= reading.at_ns && (end == 0 || end > reading.at_ns)
                })
                .map(|(arrival, _)| arrival),
        );
        let waiting = reading.waiting as usize;
        let after_ns = if waiting == 0 {
            u64::MAX
        } else if waiting >= self.arrivals.len() {
            0
        } else {
            // The (waiting + 1)-th newest: everything newer than it waits.
            let k = self.arrivals.len() - 1 - waiting;
            *self.arrivals.select_nth_unstable(k).1
        };
        let gap_ns = self
            .newest
            .map_or(DEFAULT_GAP_NS, |n| reading.at_ns - n.at_ns);
        self.previous = self.newest;
        self.newest = Some(Cutoff {
            at_ns: reading.at_ns,
            after_ns,
        });
        self.most_running = self.most_running.max(reading.running);
        let at_most = f64::from(u8::from(
            reading.running > 0 && reading.running >= self.most_running,
        ));
        let weight = -(-(gap_ns as f64) / AT_MOST_TAU_NS).exp_m1();
        self.at_most_share += weight * (at_most - self.at_most_share);
        self.waiting = reading.waiting;
        self.running = reading.running;
        self.readings = self.readings.saturating_add(1);
    }

    /// Whether the engine holds requests back for sequence slots, as its gauges show.
    pub(super) fn at_limit(&self) -> bool {
        self.at_most_share > AT_MOST_SHARE
    }

    /// Whether a request that arrived at `arrival_ns` waited at both newest readings, with the
    /// engine at its limit, at `now_ns`. Not once the readings stopped coming (the newest older
    /// than four gaps between the two, and a second): an answer held back then would stay so.
    pub(super) fn holds(&self, arrival_ns: u64, now_ns: u64) -> bool {
        let (Some(newest), Some(previous)) = (self.newest, self.previous) else {
            return false;
        };
        let gap = newest.at_ns.saturating_sub(previous.at_ns);
        let fresh =
            now_ns.saturating_sub(newest.at_ns) <= gap.saturating_mul(4).max(STALE_FLOOR_NS);
        fresh
            && self.at_limit()
            && arrival_ns <= previous.at_ns
            && arrival_ns > newest.after_ns.max(previous.after_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `i`-th reading, 250 ms after the one before.
    fn reading(i: u64, waiting: u32, running: u32) -> EngineQueueReading {
        EngineQueueReading {
            at_ns: i * 250_000_000,
            waiting,
            running,
        }
    }

    impl EngineQueue {
        /// [`EngineQueue::holds`] at the newest reading.
        fn holds_now(&self, arrival_ns: u64) -> bool {
            self.holds(arrival_ns, self.newest.map_or(0, |n| n.at_ns))
        }
    }

    /// Requests arriving at 1..=10 ns (before every reading), none ended.
    fn ten() -> impl Iterator<Item = (u64, u64)> {
        (1..=10).map(|a| (a, 0))
    }

    #[test]
    fn the_newest_requests_wait_at_two_readings_with_the_engine_at_its_limit() {
        let mut q = EngineQueue::default();
        // Thirty readings at the same running count: the share of readings at the most passes
        // the gate.
        for i in 0..30 {
            q.note(reading(100 + i, 3, 4), ten());
        }
        assert!(q.at_limit());
        // Three waiting: arrivals 8, 9 and 10.
        assert!(!q.holds_now(7));
        assert!(q.holds_now(8) && q.holds_now(10));
        // One waiting now: only the newest is held back (the previous reading had three).
        q.note(reading(200, 1, 4), ten());
        assert!(!q.holds_now(9));
        assert!(q.holds_now(10));
        // Arrived after the previous reading: seen waiting once only.
        assert!(!q.holds_now(129 * 250_000_000 + 1));
        // Ended requests are not in the queue: with 10 ended, the one waiting is 9.
        q.note(
            reading(300, 1, 4),
            (1..=10).map(|a| (a, if a == 10 { 250 } else { 0 })),
        );
        // (10 itself the ledger no longer asks about: it ended.)
        assert!(!q.holds_now(9));
        q.note(
            reading(400, 1, 4),
            (1..=10).map(|a| (a, if a == 10 { 250 } else { 0 })),
        );
        assert!(q.holds_now(9) && !q.holds_now(8));
    }

    #[test]
    fn nothing_is_held_back_before_the_engine_runs_at_its_most() {
        let mut q = EngineQueue::default();
        q.note(reading(100, 3, 4), ten());
        q.note(reading(101, 3, 4), ten());
        // Two readings at the most: the share is 0.19, the gate shut.
        assert!(!q.at_limit());
        assert!(!q.holds_now(10));
        // A new most: the share climbs back; running below it again, it falls.
        for i in 0..30 {
            q.note(reading(102 + i, 3, 8), ten());
        }
        assert!(q.holds_now(10));
        for i in 0..3 {
            q.note(reading(132 + i, 3, 5), ten());
        }
        assert!(!q.holds_now(10));
    }

    #[test]
    fn no_waiting_holds_nothing_and_more_waiting_than_tracked_holds_all() {
        let mut q = EngineQueue::default();
        for i in 0..30 {
            q.note(reading(100 + i, 0, 4), ten());
        }
        assert!(!q.holds_now(10));
        q.note(reading(200, 50, 4), ten());
        q.note(reading(300, 50, 4), ten());
        assert!(q.holds_now(1) && q.holds_now(10));
        // A reading older than the newest is ignored.
        q.note(reading(250, 0, 4), ten());
        assert!(q.holds_now(1));
        // Readings that stopped coming hold nothing: up to four gaps between the two newest
        // (100 readings apart here) after the newest, still; then no more.
        let (newest, gap) = (300 * 250_000_000, 100 * 250_000_000);
        assert!(q.holds(1, newest + 4 * gap));
        assert!(!q.holds(1, newest + 4 * gap + 1));
    }
}
