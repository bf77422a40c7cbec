//! The ledger's public figures: per-request energy, coverage, final requests and the running books.
//!
//! Plain data, shared by the attribution, settlement and accounting code; no behaviour beyond
//! deriving a request's coverage.

/// How much of a request's life had measured energy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every tick it overlapped was measured (or it overlapped none and no tick failed).
    Full,
    /// Some ticks it overlapped were unavailable.
    Partial,
    /// Every tick it overlapped was unavailable, or no tick was ever seen.
    None,
}

/// Work in settled ticks, tokens (rounded down per tick).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettledTokens {
    /// Prompt tokens prefilled.
    pub prefill: u64,
    /// Completion tokens decoded.
    pub decode: u64,
    /// Context tokens read by those decodes.
    pub context: u64,
}

/// A request's energy figures so far, micro-joules, as published into its atomics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestEnergy {
    /// Energy attributed so far (settled ticks only).
    pub energy_uj: u64,
    /// Of it, above the idle baseline.
    pub active_uj: u64,
    /// Of it, prefill.
    pub prefill_uj: u64,
    /// Of it, decode.
    pub decode_uj: u64,
    /// The request's attributed power in the latest settled tick where it got energy, mW.
    pub recent_power_mw: u64,
    /// The work its settled energy paid for: prompt tokens prefilled, completion tokens decoded
    /// and context tokens those decodes read, in settled ticks. What is left of its work on top
    /// of this is priced at the system's recent energy per token ([`super::Ledger::token_prices`]).
    pub settled_tokens: SettledTokens,
    /// Over its energy in held ticks split provisionally, its mean fraction of those ticks'
    /// work, parts per million (0: none): how far its share of their energy would move with
    /// more or less work of its own placed there.
    pub tentative_own_ppm: u32,
    /// Measured ticks overlapping the request.
    pub available_ticks: u32,
    /// Unavailable ticks overlapping the request.
    pub unavailable_ticks: u32,
}

impl RequestEnergy {
    /// How much of the request's life was measured.
    pub fn coverage(&self) -> Coverage {
        match (self.available_ticks, self.unavailable_ticks) {
            (_, 0) if self.available_ticks > 0 => Coverage::Full,
            (0, _) => Coverage::None,
            _ => Coverage::Partial,
        }
    }
}

/// A request whose energy is final: it ended and no held tick carries its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalRequest {
    /// Request id.
    pub id: u64,
    /// Final figures.
    pub energy: RequestEnergy,
    /// Whether the ledger stopped seeing it before it ended (retired by someone else).
    pub vanished: bool,
}

/// Running totals, micro-joules and counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerTotals {
    /// Sum of measured tick energy.
    pub measured_uj: u64,
    /// Given to requests.
    pub attributed_uj: u64,
    /// Drawn with nothing in flight.
    pub idle_uj: u64,
    /// Drawn with requests in flight but no work to place it on.
    pub unattributed_uj: u64,
    /// Measured but held (not settled yet).
    pub pending_uj: u64,
    /// Of `attributed_uj`, above the idle baseline.
    pub active_uj: u64,
    /// Prompt tokens of settled prefill work (rounded per tick).
    pub prefill_tokens: u64,
    /// Completion tokens of settled decode work (rounded per tick).
    pub decode_tokens: u64,
    /// Ticks applied.
    pub ticks: u64,
    /// Of them, unavailable.
    pub unavailable_ticks: u64,
    /// Ticks currently held.
    pub held_ticks: u64,
    /// End of the newest settled tick, ns.
    pub settled_until_ns: u64,
}

/// What one [`Ledger::apply`](super::Ledger::apply) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Ticks settled by this call.
    pub settled: u32,
    /// Requests that became final (take them with [`Ledger::drain_final`](super::Ledger::drain_final)).
    pub finalized: u32,
}

/// Upper bounds of the effective-batch histogram (requests doing work in a tick).
pub const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The effective batch: how many requests did work in each settled busy tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct BatchStats {
    /// Settled busy ticks in the sliding window (the last minute at the default interval).
    pub window_ticks: u64,
    /// Mean over the window.
    pub mean: f64,
    /// Largest in the window.
    pub max: u64,
    /// In the latest settled busy tick.
    pub last: u64,
    /// Ticks per bucket since start (not cumulative; the last one is above 1024).
    pub buckets: [u64; BATCH_BUCKETS.len() + 1],
    /// Sum over all settled busy ticks since start.
    pub sum: u64,
    /// Settled busy ticks since start.
    pub count: u64,
    /// The most sequences seen running at once (streams decoding, and the ended non-streamed
    /// answers' decode counted back from their ends), over the last 256 ticks and before: where
    /// the engine holds prompts back for sequence slots, the estimate of its limit (vLLM's
    /// `max_num_seqs`).
    pub sequences_max: u32,
    /// Whether recent prompts waited for sequence slots: the engine runs at its sequence limit,
    /// and non-streamed answers the slots cannot hold get no estimated work.
    pub held_for_slots: bool,
    /// Readings of the engine's own queue gauges taken in (0 where the proxy does not read the
    /// upstream's `/metrics`; `upstream_metrics`).
    pub engine_queue_readings: u64,
    /// The newest reading: requests waiting in the engine's queue, and in its running batch.
    pub engine_waiting: u32,
    pub engine_running: u32,
    /// Whether the gauges show the engine at its limit (running at the most requests it has
    /// shown in most recent readings): non-streamed answers then get no estimated work while
    /// they wait in its queue at two readings in a row.
    pub engine_at_limit: bool,
}
