//! `response_energy = "settled"`: the energy-bearing part of a response (the headers of a JSON
//! response; a stream's final usage chunk and trailers) waits, bounded, until accounting has
//! retired the request, then carries the figures of its record.
//!
//! Owns the decision to wait and the figures after the wait. It reads only the request's atomics
//! and its [`crate::observe::Settled`] signal, never the ledger; the waiting itself happens where
//! the part is produced (the JSON phase of the service, the relay's body wrapper).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::{EnergyNow, EnergyStatus, RequestProgress, SystemRates};

/// A bounded wait for a request's settlement: `true` when it settled in time.
pub type SettleWait = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Whether (and how long at most) `progress` should wait before its energy-bearing part goes out:
/// only in settled mode (`max_wait`), and never while its energy is not measured (no meter, or
/// the sampler stalled: nothing will settle it in time).
pub fn should_wait(progress: &RequestProgress, max_wait: Option<Duration>) -> Option<Duration> {
    max_wait.filter(|_| progress.energy_available.load(Relaxed))
}

/// The wait, boxed for a body wrapper to poll.
pub fn wait(progress: Arc<RequestProgress>, max_wait: Duration) -> SettleWait {
    Box::pin(async move { progress.settled.wait_for(max_wait).await })
}

/// The figures a response carries after its wait: the record's when `settled`, otherwise the
/// provisional figure with status `estimated` (or `unavailable` when nothing was measured).
pub fn figures_after(
    progress: &RequestProgress,
    settled: bool,
    now_ns: u64,
    rates: &SystemRates,
) -> EnergyNow {
    if settled {
        return settled_figures(progress);
    }
    let mut e = progress.energy_now(now_ns, rates);
    if e.status == EnergyStatus::Ok {
        e.status = EnergyStatus::Estimated;
    }
    e
}

/// What accounting published when it retired the request: the record's energy and counts.
///
/// Read from the atomics directly rather than through `energy_now`, which extends the settled
/// figure to "now" with the request's recent power and so would drift from the record.
pub fn settled_figures(p: &RequestProgress) -> EnergyNow {
    let status = if !p.energy_available.load(Relaxed) {
        EnergyStatus::Unavailable
    } else if p.prompt_exact.load(Relaxed) && p.completion_exact.load(Relaxed) {
        EnergyStatus::Ok
    } else {
        EnergyStatus::Estimated
    };
    EnergyNow {
        energy_uj: p.energy_uj.load(Relaxed),
        active_uj: p.active_uj.load(Relaxed),
        prompt_tokens: p.prompt_tokens.load(Relaxed),
        completion_tokens: p.completion_tokens.load(Relaxed),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{Endpoint, RequestMeta};

    fn progress() -> Arc<RequestProgress> {
        Arc::new(RequestProgress::new(RequestMeta {
            id: 1,
            model: None,
            endpoint: Endpoint::ChatCompletions,
            key_hash: None,
            tag: None,
            stream: false,
            arrival_ns: 1,
            estimated_prompt_tokens: 4,
            choices: 1,
            max_tokens: None,
        }))
    }

    #[test]
    fn settled_figures_do_not_drift_with_time() {
        let p = progress();
        p.energy_uj.store(2_000_000, Relaxed);
        p.active_uj.store(500_000, Relaxed);
        p.settled_until_ns.store(1_000, Relaxed);
        p.recent_power_mw.store(100_000, Relaxed);
        p.set_prompt_exact(4);
        p.observe_completion(3, 10);
        p.completion_exact.store(true, Relaxed);
        let rates = SystemRates::default();
        let later = figures_after(&p, true, 500_000_000, &rates);
        assert_eq!((later.energy_uj, later.active_uj), (2_000_000, 500_000));
        assert_eq!((later.prompt_tokens, later.completion_tokens), (4, 3));
        assert_eq!(later.status, EnergyStatus::Ok);
        // Not settled in time: the provisional figure, never `ok`.
        let early = figures_after(&p, false, 500_000_000, &rates);
        assert!(early.energy_uj > 2_000_000);
        assert_eq!(early.status, EnergyStatus::Estimated);
    }

    #[test]
    fn unmeasured_requests_never_wait() {
        let p = progress();
        let bound = Some(Duration::from_secs(1));
        assert_eq!(should_wait(&p, bound), bound);
        assert_eq!(should_wait(&p, None), None);
        p.energy_available.store(false, Relaxed);
        assert_eq!(should_wait(&p, bound), None);
        assert_eq!(
            figures_after(&p, false, 10, &SystemRates::default()).status,
            EnergyStatus::Unavailable
        );
    }
}
