//! The "settled" signal of one request: set once by accounting when it has retired the request
//! (its final figures are in the request's atomics and its record is in the ring), awaited by the
//! data plane in `response_energy = "settled"` mode, with a bound.
//!
//! Owns only a flag and a [`Notify`]; it never reads a clock itself (the bound is tokio's timer,
//! which tests can pause) and it knows nothing of the ledger.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Set once when accounting has published a request's final figures; awaited with a bound.
#[derive(Debug, Default)]
pub struct Settled {
    flag: AtomicBool,
    notify: Notify,
}

impl Settled {
    /// Marks the request settled and wakes every waiter. Everything its caller stored before
    /// (with any ordering) is visible to a waiter that sees the flag.
    pub fn mark(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the request is settled.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Waits until the request is settled.
    pub async fn wait(&self) {
        loop {
            // Register before checking the flag: a `mark` between the check and the await would
            // otherwise be missed (`notify_waiters` stores no permit).
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }

    /// Waits at most `max_wait`; whether the request is settled. An already settled request
    /// returns `true` at once, even with a zero bound.
    pub async fn wait_for(&self, max_wait: Duration) -> bool {
        if self.is_set() {
            return true;
        }
        tokio::time::timeout(max_wait, self.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_when_marked() {
        let s = Arc::new(Settled::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_for(Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!s.is_set());
        s.mark();
        assert!(waiter.await.expect("waiter"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_ends_the_wait() {
        let s = Settled::default();
        assert!(!s.wait_for(Duration::from_millis(5)).await);
        s.mark();
        assert!(s.wait_for(Duration::ZERO).await);
    }
}
