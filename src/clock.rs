//! The process-wide monotonic clock: nanoseconds since an epoch taken at start-up.
//!
//! The data plane (token timestamps), the sampler (tick bounds) and the accounting glue all express time
//! as `u64` nanoseconds from the same [`Clock`], so the pure modules (`ledger`, `openai`) receive plain
//! integers and never read a clock themselves. Wall-clock time is derived only for records (RFC 3339).

use std::time::{Duration, Instant, SystemTime};

/// A copyable handle on the shared epoch. Clones agree on what `0` means.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
    wall_epoch: SystemTime,
}

impl Clock {
    /// Starts a clock whose zero is now.
    pub fn new() -> Self {
        Clock {
            epoch: Instant::now(),
            wall_epoch: SystemTime::now(),
        }
    }

    /// Nanoseconds since the epoch. Saturates rather than wrapping (584 years of uptime).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Converts an [`Instant`] taken after the epoch to clock nanoseconds (0 if it predates the epoch).
    pub fn ns_of(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The wall-clock time of a clock reading, for records and logs.
    pub fn wall(&self, ns: u64) -> SystemTime {
        self.wall_epoch + Duration::from_nanos(ns)
    }

    /// RFC 3339 (UTC, microseconds) of a clock reading.
    pub fn rfc3339(&self, ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(ns)).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_monotonic_and_walls_follow() {
        let clock = Clock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
        assert!(clock.wall(b) >= clock.wall(a));
        assert!(clock.rfc3339(0).ends_with('Z'));
    }
}
