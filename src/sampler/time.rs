//! The sampler's time: the [`TimeSource`] trait ("now" and "sleep until"), the production
//! [`ClockTime`], and the drift-free [`Schedule`]. Tests inject their own source so schedules and
//! ticks are driven without sleeping.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::clock::Clock;

/// Whether a wait ended at its deadline or because the sampler is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The deadline passed.
    Deadline,
    /// Stop requested.
    Stop,
}

/// The sampler's notion of time: "now" and "sleep until".
pub trait TimeSource: Send + 'static {
    /// Now, in shared-clock nanoseconds.
    fn now_ns(&mut self) -> u64;
    /// Waits until `deadline_ns` or until `stop` fires (a message or its sender dropped).
    fn sleep_until(&mut self, deadline_ns: u64, stop: &Receiver<()>) -> Wake;
}

/// Production time: the shared [`Clock`], waiting on the stop channel so a stop is immediate.
#[derive(Clone, Copy, Debug)]
pub struct ClockTime(pub Clock);

impl TimeSource for ClockTime {
    fn now_ns(&mut self) -> u64 {
        self.0.now_ns()
    }

    fn sleep_until(&mut self, deadline_ns: u64, stop: &Receiver<()>) -> Wake {
        loop {
            let now = self.0.now_ns();
            if now >= deadline_ns {
                // A stop that arrived while we were busy still wins.
                return match stop.try_recv() {
                    Err(std::sync::mpsc::TryRecvError::Empty) => Wake::Deadline,
                    _ => Wake::Stop,
                };
            }
            match stop.recv_timeout(Duration::from_nanos(deadline_ns - now)) {
                Err(RecvTimeoutError::Timeout) => continue,
                _ => return Wake::Stop,
            }
        }
    }
}

/// Drift-free deadlines `start + k * interval`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start_ns: u64,
    interval_ns: u64,
    k: u64,
}

impl Schedule {
    /// A schedule whose slot 0 is `start_ns`.
    pub fn new(start_ns: u64, interval: Duration) -> Self {
        let interval_ns = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Schedule {
            start_ns,
            interval_ns,
            k: 0,
        }
    }

    /// The next deadline strictly after `now_ns` (and after the previous one), skipping missed slots.
    pub fn next_deadline(&mut self, now_ns: u64) -> u64 {
        let due = now_ns.saturating_sub(self.start_ns) / self.interval_ns + 1;
        self.k = due.max(self.k + 1);
        self.start_ns
            .saturating_add(self.k.saturating_mul(self.interval_ns))
    }
}
