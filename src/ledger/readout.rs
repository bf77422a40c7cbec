//! What the ledger tells the rest of the proxy: a request's figures, the running totals, idle
//! power, the calibration, recent prices per token, the effective batch and the rate estimates.
//! Read-only.
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern).

use super::attribution::Ledger;
use super::calibration::CalibrationReport;
use super::idle::IdleSource;
use super::req::Req;
use super::types::{LedgerTotals, RequestEnergy};

impl Ledger {
    /// The figures of a request the ledger knows (in flight or awaiting settlement).
    pub fn energy(&self, id: u64) -> Option<RequestEnergy> {
        let slot = *self.index.get(&id)?;
        self.slots.get(slot as usize)?.as_ref().map(|r| r.energy)
    }

    /// The figures of the requests observed by the latest [`Ledger::apply`], in the order of its
    /// observations (`None` for those that became final in it: see [`Ledger::drain_final`]).
    /// Cheaper than [`Ledger::energy`] per id: no hashing.
    pub fn observed_energy(&self) -> impl Iterator<Item = Option<RequestEnergy>> + '_ {
        self.observed.iter().map(|s| {
            self.slots
                .get(*s as usize)
                .and_then(Option::as_ref)
                .map(Req::published)
        })
    }

    /// Running totals.
    pub fn totals(&self) -> LedgerTotals {
        LedgerTotals {
            held_ticks: self.window.len() as u64,
            ..self.totals
        }
    }

    /// Idle power in mW, if known, and where it comes from.
    pub fn p_idle(&self) -> (Option<u64>, IdleSource) {
        (self.idle.power_mw(), self.idle.source())
    }

    /// The calibration fit and its quality.
    pub fn calibration(&self) -> CalibrationReport {
        self.calibrator.report()
    }

    /// What the recent settled busy ticks cost per token, with the weights in use now: energy
    /// per unit of marginal work (ΣE / (α·Σprefill + β·Σdecode + γ·Σcontext)) times each weight.
    /// Returns (total, active) µJ per (prefill, decode, context) token; `None` before any.
    pub fn token_prices(&self) -> Option<([f64; 3], [f64; 3])> {
        let (e, a, [p, d, c]) = self.price_sums;
        let (alpha, beta, gamma) = self.calibrator.weights();
        let work = alpha * p + beta * d + gamma * c;
        if work.is_nan() || work <= 0.0 {
            return None;
        }
        let per = |x: u64| {
            let k = x as f64 / work;
            [k * alpha, k * beta, k * gamma]
        };
        Some((per(e), per(a)))
    }

    /// The effective batch: requests that did work in each settled busy tick.
    pub fn batch(&self) -> super::types::BatchStats {
        self.batch
    }

    /// The current prefill-rate and per-request decode-rate estimates, tokens per second.
    pub fn rates(&self) -> (f64, f64) {
        (self.prefill_rate, self.decode_rate)
    }

    /// Number of requests the ledger tracks (not yet drained).
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// End of the newest settled tick, ns.
    pub fn settled_until_ns(&self) -> u64 {
        self.totals.settled_until_ns
    }
}
