//! What the ledger tells the rest of the proxy: a request's figures, the running totals, idle
//! power, the calibration, recent prices per token, the effective batch and the rate estimates.
//! Read-only.
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern).

use super::attribution::{Ledger, PriceEntry};
use super::calibration::CalibrationReport;
use super::idle::IdleSource;
use super::req::Req;
use super::types::{LedgerTotals, RequestEnergy};

/// Tokens of each kind (prefill, decode, context) the one-price-for-all estimate counts for in
/// [`Ledger::token_prices`].
const PRIOR_TOKENS: [f64; 3] = [512.0, 512.0, 32768.0];

impl Ledger {
    /// The figures of a request the ledger knows (in flight or awaiting settlement).
    pub fn energy(&self, id: u64) -> Option<RequestEnergy> {
        let slot = *self.index.get(&id)?;
        self.slots
            .get(slot as usize)?
            .as_ref()
            .map(Req::settled_energy)
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

    /// What the recent settled busy ticks gave each kind of work per token: the energy their
    /// splits gave prefill, decode and context tokens divided by those tokens, each kind on its
    /// own. A prefill token shares a long prefill step's static power with many others, a decode
    /// token a short step's with a batch, so one energy per unit of marginal work for all
    /// (ΣE / (α·Σprefill + β·Σdecode + γ·Σcontext) times each weight, as before) priced prompt
    /// tokens at decode's cost: in the real-time run a long prompt's answer read 3 to 8 times
    /// its record (figures read, 8B, 50 ms counter: p95 77 -> 39 % with this and the learned
    /// prompt scale). That old price stays as a prior worth [`PRIOR_TOKENS`] tokens of each
    /// kind, so a kind with few recent tokens is not priced from a handful (deterministic
    /// matrix, four seeds, responses: switching at 64 tokens 9.2 / 41.0 %, the prior at 128
    /// 9.0 / 41.1, at 512 9.0 / 40.3 %, before 9.6 / 40.2 %). Returns (total, active) µJ per
    /// (prefill, decode, context) token; `None` before any.
    pub fn token_prices(&self) -> Option<([f64; 3], [f64; 3])> {
        self.token_prices_with(None)
    }

    /// [`Ledger::token_prices`] with the prior of a prompt token's price at most
    /// `prefill_prior_cap` µJ (accounting passes the system's recent power over the engine's
    /// prefill rate: what a prompt token would cost if nothing but prefill drew power). The
    /// prior, one energy per unit of work for all kinds, is what prices prompts early in a run
    /// or after a long stretch of decode, and low-batch decode makes it dear: in the real-time
    /// run (8B, 50 ms counter) the first long prompts were priced at 0.14 J a token against
    /// ~0.02 J of truth (a 1,230-token prompt answered in 8 tokens read 62-71 J against 33 J;
    /// mixed workload, JSON figures' p95 141.5 and 70.3 % without a bound, 29.7 and 36.8 %
    /// with it). Bounding the blended price instead of its prior cut the prompts of short
    /// prefill-heavy streams too, which settled prices had right (their usage-chunk figures
    /// 20.9 / 45.5 and 10.2 / 44.5 % against 9.1 / 37.5 and 9.9 / 36.7 % this way, two
    /// interleaved pairs of runs).
    pub fn token_prices_with(
        &self,
        prefill_prior_cap: Option<f64>,
    ) -> Option<([f64; 3], [f64; 3])> {
        Self::prices_of(
            &self.price_sums,
            self.calibrator.weights(),
            prefill_prior_cap,
        )
    }

    /// Total and active µJ per (prefill, decode, context) token from `s`, each kind's own price
    /// blended with the one-price-for-all prior ([`Ledger::token_prices`]).
    pub(super) fn prices_of(
        s: &PriceEntry,
        (alpha, beta, gamma): (f64, f64, f64),
        prefill_prior_cap: Option<f64>,
    ) -> Option<([f64; 3], [f64; 3])> {
        let weight = [alpha, beta, gamma];
        let [p, d, c] = s.tokens;
        let work = alpha * p + beta * d + gamma * c;
        if work.is_nan() || work <= 0.0 {
            return None;
        }
        let total: f64 = s.energy.iter().sum();
        let per = |energy: &[f64; 3]| {
            let sum = energy.iter().sum::<f64>();
            let k = sum / work;
            // The cap is on total energy; the active prices scale it by their share.
            let share = if total > 0.0 { sum / total } else { 1.0 };
            std::array::from_fn(|i| {
                let mut prior = k * weight[i];
                if let (0, Some(cap)) = (i, prefill_prior_cap) {
                    prior = prior.min(cap * share);
                }
                (energy[i] + prior * PRIOR_TOKENS[i]) / (s.tokens[i] + PRIOR_TOKENS[i])
            })
        };
        Some((per(&s.energy), per(&s.active)))
    }

    /// The effective batch: requests that did work in each settled busy tick.
    pub fn batch(&self) -> super::types::BatchStats {
        super::types::BatchStats {
            sequences_max: self.seq_limit.limit(),
            held_for_slots: self.slot_gated > super::queue_serve::SLOT_GATED_SHARE,
            engine_queue_readings: self.engine_queue.readings,
            engine_waiting: self.engine_queue.waiting,
            engine_running: self.engine_queue.running,
            engine_at_limit: self.engine_queue.at_limit(),
            ..self.batch
        }
    }

    /// The current prefill-rate and per-request decode-rate estimates, tokens per second.
    pub fn rates(&self) -> (f64, f64) {
        (self.prefill_rate, self.decode_rate)
    }

    /// The rates that time a finished answer's work for the figure it carries: the prefill
    /// rate and the median per-tick decode rate of the streams (see
    /// [`Ledger::learn_tick_decode_rate`] for why not the per-request rate), tokens per second.
    pub fn answer_work_rates(&self) -> (f64, f64) {
        (self.prefill_rate, self.typical_decode_rate)
    }

    /// Number of requests the ledger tracks (not yet drained).
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// End of the newest tick whose energy is in the figures published (settled, or split
    /// provisionally), ns: work after it has no energy in any figure yet.
    pub fn covered_until_ns(&self) -> u64 {
        self.window
            .iter()
            .filter(|t| t.tentative.is_some())
            .map(|t| t.end_ns)
            .max()
            .unwrap_or(0)
            .max(self.totals.settled_until_ns)
    }

    /// End of the newest settled tick, ns.
    pub fn settled_until_ns(&self) -> u64 {
        self.totals.settled_until_ns
    }
}
