//! Pure attribution: splits each tick's measured energy among the requests in flight by their work.
//!
//! No clock, no I/O: ticks and request progress come in as arguments, so every rule here is
//! exhaustively testable. What this module owns:
//! - [`attribution`]: the [`Ledger`] (held window of ticks, work placement, settlement, invariant);
//! - [`window`]: the held ticks and where each request's work lands in them;
//! - [`types`]: the figures it publishes (per-request energy, coverage, totals);
//! - `settle`, `tick_split`, `prefill_pool`, `tentative`, `work`, `reconcile`, `rates`, `queue`,
//!   `seq_limit`, `slots` and `readout` (private): settlement, the weights a tick is split by,
//!   prompts priced over a window, the provisional split of held ticks, work placement,
//!   reconciliation of non-streamed answers, rate learning, the prefill conveyor, the engine's
//!   sequence limit, request slots and the published figures, split from the ledger by concern;
//! - [`split`]: exact largest-remainder splitting of micro-joules;
//! - [`idle`]: P_idle, learned from idle ticks or configured;
//! - [`calibration`]: the online NNLS fit of α, β, γ and the static power;
//! - [`record`]: the finished-request record served by `/requests/{id}` and the JSONL log.
//!
//! It must not touch the registry or atomics of [`crate::observe`] (the accounting glue does that):
//! it reads plain [`crate::observe::ProgressSnapshot`] copies.

pub mod attribution;
pub mod calibration;
mod engine_queue;
mod fill;
mod hold;
pub mod idle;
mod prefill_pool;
mod queue;
mod queue_serve;
mod rates;
mod readout;
mod reconcile;
pub mod record;
mod req;
mod seq_limit;
mod settle;
mod slots;
pub mod split;
pub mod steps;
mod tentative;
mod tick_split;
pub mod types;
pub mod window;
mod work;

pub use attribution::Ledger;
pub use calibration::{CalibrationConfig, CalibrationReport};
pub use fill::Fill;
pub use idle::IdleSource;
pub use record::{Attribution, RecordStatus, RequestRecord};
pub use types::{
    BatchStats, Coverage, FinalRequest, LedgerTotals, RequestEnergy, SettledTokens, TickSummary,
    BATCH_BUCKETS,
};

use crate::observe::ProgressSnapshot;

/// Settings of the ledger. Validated by [`LedgerConfig::validate`] (also done by [`Ledger::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerConfig {
    /// Most ticks whose energy may be held while work that belongs in them may still appear (the
    /// settlement lag bound). At 50 ms ticks the default of 60 is three seconds: long enough for
    /// most non-streamed answers to end while their ticks are held, so their true work replaces
    /// the estimate there (the accuracy bench: prefill-heavy median 28 % -> 11 % from 1 s to 3 s).
    pub settle_ticks: usize,
    /// Extra ticks a tick with work may be held past `settle_ticks` until the calibration's fit is
    /// trusted for the first time (0: never). Ticks split with the default weights keep the
    /// defaults' error for good; held a little longer, they are split with the first trusted fit.
    /// The calibration still learns from each at the usual lag. Only before the first trusted fit,
    /// and only once P_idle is known (without it the fit cannot learn).
    pub calibration_hold_ticks: usize,
    /// Most requests the ledger may hold while ticks are held for the calibration: past it the
    /// hold ends for good and held ticks settle with the weights in use (each held request keeps
    /// its slot and its items until its ticks settle, ~0.45 KiB: at 20,000 requests per second a
    /// ten-second hold kept 200,000 of them, 65 MB).
    pub calibration_hold_max_requests: usize,
    /// Most work items the held ticks may keep while ticks are held for the calibration: past
    /// it the hold ends for good, as for `calibration_hold_max_requests` (an item and its share
    /// of a provisional split take ~80 bytes: 256 paced streams put ~2,500 in every tick).
    pub calibration_hold_max_items: usize,
    /// Prefill rate used to place a prompt's prefill when vLLM did not report its prefill time,
    /// tokens per second (refined online from requests that did report it).
    pub prefill_tokens_per_s: f64,
    /// Per-request decode rate assumed for requests whose progress is invisible while in flight,
    /// tokens per second (refined online from finished streams).
    pub decode_tokens_per_s: f64,
    /// Configured idle power in milliwatts; `None` learns it from idle ticks.
    pub p_idle_mw: Option<u64>,
    /// Idle ticks kept for the P_idle estimate.
    pub idle_window: usize,
    /// Quantile of the kept idle powers used as P_idle.
    pub idle_quantile: f64,
    /// Idle ticks needed before a learned P_idle is used.
    pub idle_min_samples: usize,
    /// Calibration of α, β and γ.
    pub calibration: CalibrationConfig,
    /// Whether a tick's energy is split over ~10 ms sub-intervals, each by the work placed in it
    /// (see `settle`); otherwise over the whole tick at once.
    pub split_by_steps: bool,
    /// Whether held ticks are split provisionally once their work is in, so that the figures a
    /// response carries before its ticks settle include its share of them (see `settle`).
    pub tentative_split: bool,
    /// Window over which prompt tokens' energy is priced, ns (see `prefill_pool`; 0: each tick's
    /// prefill parts stay with the work placed in it).
    pub prefill_pool_ns: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            settle_ticks: 60,
            calibration_hold_ticks: 200,
            calibration_hold_max_requests: 10_000,
            calibration_hold_max_items: 100_000,
            prefill_tokens_per_s: 10_000.0,
            decode_tokens_per_s: 30.0,
            p_idle_mw: None,
            idle_window: 256,
            idle_quantile: 0.25,
            idle_min_samples: 10,
            calibration: CalibrationConfig::default(),
            split_by_steps: true,
            tentative_split: true,
            prefill_pool_ns: 8_000_000_000,
        }
    }
}

/// A setting the ledger cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerConfigError {
    /// `settle_ticks` must be in 1..=10000.
    #[error("settle_ticks must be between 1 and 10000, got {0}")]
    SettleTicks(usize),
    /// `calibration_hold_ticks` must be at most 10000.
    #[error("calibration_hold_ticks must be at most 10000, got {0}")]
    CalibrationHoldTicks(usize),
    /// A rate must be finite and positive.
    #[error("{name} must be a finite positive number, got {value}")]
    Rate {
        /// The setting's name.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A window must hold at least one entry.
    #[error("{0} must be at least 1")]
    EmptyWindow(&'static str),
    /// `idle_quantile` must be within 0..=1.
    #[error("idle_quantile must be between 0 and 1, got {0}")]
    Quantile(f64),
}

impl LedgerConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), LedgerConfigError> {
        if self.settle_ticks == 0 || self.settle_ticks > 10_000 {
            return Err(LedgerConfigError::SettleTicks(self.settle_ticks));
        }
        if self.calibration_hold_ticks > 10_000 {
            return Err(LedgerConfigError::CalibrationHoldTicks(
                self.calibration_hold_ticks,
            ));
        }
        let rates = [
            ("prefill_tokens_per_s", self.prefill_tokens_per_s),
            ("decode_tokens_per_s", self.decode_tokens_per_s),
            (
                "calibration.default_alpha_j",
                self.calibration.default_alpha_j,
            ),
            (
                "calibration.default_beta_j",
                self.calibration.default_beta_j,
            ),
            (
                "calibration.default_gamma_j",
                self.calibration.default_gamma_j,
            ),
        ];
        for (name, value) in rates {
            if !(value.is_finite() && value > 0.0) {
                return Err(LedgerConfigError::Rate { name, value });
            }
        }
        if self.idle_window == 0 {
            return Err(LedgerConfigError::EmptyWindow("idle_window"));
        }
        if self.calibration.window_ticks == 0 {
            return Err(LedgerConfigError::EmptyWindow("calibration.window_ticks"));
        }
        if !(0.0..=1.0).contains(&self.idle_quantile) {
            return Err(LedgerConfigError::Quantile(self.idle_quantile));
        }
        Ok(())
    }
}

/// One sampler interval as the ledger sees it: `(start_ns, end_ns]` and its energy, if measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickSpan {
    /// Sequence number from the sampler (informational).
    pub seq: u64,
    /// Start of the interval, clock nanoseconds (exclusive).
    pub start_ns: u64,
    /// End of the interval, clock nanoseconds (inclusive).
    pub end_ns: u64,
    /// Micro-joules measured, `None` when unavailable.
    pub delta_uj: Option<u64>,
    /// Whether the energy comes later, through [`Ledger::fill`] (a slow meter's increment not yet
    /// spread over this interval); `delta_uj` is then ignored.
    pub energy_later: bool,
}

impl From<&crate::tick::Tick> for TickSpan {
    fn from(t: &crate::tick::Tick) -> Self {
        TickSpan {
            seq: t.seq,
            start_ns: t.start_ns,
            end_ns: t.end_ns,
            delta_uj: t.delta_uj,
            energy_later: t.phase == crate::tick::TickPhase::Announce,
        }
    }
}

/// One registered request's progress at this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The data plane's counters.
    pub progress: ProgressSnapshot,
    /// What work the request makes the engine do.
    pub kind: WorkKind,
    /// Choices (`n`): that many sequences decode in lockstep after one prefill.
    pub choices: u32,
}

/// What work a request makes the engine do, as far as attribution cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    /// Prefill then decode (chat, completions, responses).
    Generate,
    /// Prefill only (embeddings): no decode is ever estimated for it.
    PromptOnly,
    /// No model work (forwarded paths): never attributed, never makes a tick busy.
    None,
}

impl WorkKind {
    /// The kind of work an endpoint does.
    pub fn of(endpoint: crate::observe::Endpoint) -> WorkKind {
        use crate::observe::Endpoint;
        match endpoint {
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Responses => {
                WorkKind::Generate
            }
            Endpoint::Embeddings => WorkKind::PromptOnly,
            Endpoint::Other => WorkKind::None,
        }
    }
}

#[cfg(test)]
mod tests;
