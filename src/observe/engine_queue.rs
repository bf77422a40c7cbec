//! The upstream engine's own queue gauges as the proxy reads them (vLLM's
//! `vllm:num_requests_waiting` and `vllm:num_requests_running` from its Prometheus `/metrics`),
//! handed from the reader (the proxy's scraper, or the accuracy bench's virtual engine) to
//! accounting, which drains them on each tick into the ledger.
//!
//! Owns the hand-off only: a bounded inbox of timestamped readings. Bounded: it keeps the newest
//! [`INBOX_READINGS`]; a reader that fell further behind loses the oldest (the ledger only uses
//! the two newest readings anyway), counted in [`EngineQueueInbox::dropped`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Readings the inbox keeps between two drains (64 s of readings at the default 250 ms: far
/// more than a tick).
pub const INBOX_READINGS: usize = 256;

/// One reading of the engine's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineQueueReading {
    /// When the reading was asked for, clock ns.
    pub at_ns: u64,
    /// Requests waiting in the engine's queue (summed over the upstream's engines and models).
    pub waiting: u32,
    /// Requests in the engine's running batch.
    pub running: u32,
}

/// The hand-off between the reader and accounting. A mutex, not a ring of atomics: a few
/// readings a second, never on the data plane.
#[derive(Debug, Default)]
pub struct EngineQueueInbox {
    readings: Mutex<VecDeque<EngineQueueReading>>,
    dropped: AtomicU64,
}

impl EngineQueueInbox {
    /// Adds a reading (the oldest goes when the inbox is full).
    pub fn push(&self, reading: EngineQueueReading) {
        let mut q = self
            .readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() == INBOX_READINGS {
            q.pop_front();
            self.dropped.fetch_add(1, Relaxed);
        }
        q.push_back(reading);
    }

    /// Moves every reading into `out`, oldest first.
    pub fn drain_into(&self, out: &mut Vec<EngineQueueReading>) {
        let mut q = self
            .readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.extend(q.drain(..));
    }

    /// Readings lost because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ns: u64) -> EngineQueueReading {
        EngineQueueReading {
            at_ns,
            waiting: 1,
            running: 2,
        }
    }

    #[test]
    fn a_full_inbox_drops_the_oldest_and_counts_it() {
        let inbox = EngineQueueInbox::default();
        for t in 0..INBOX_READINGS as u64 + 3 {
            inbox.push(reading(t));
        }
        let mut out = Vec::new();
        inbox.drain_into(&mut out);
        assert_eq!(out.len(), INBOX_READINGS);
        assert_eq!(out[0].at_ns, 3);
        assert_eq!(inbox.dropped(), 3);
        out.clear();
        inbox.drain_into(&mut out);
        assert!(out.is_empty());
    }
}
