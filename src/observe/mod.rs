//! Per-request live state: written by the data plane as traffic flows, read by accounting and admin.
//!
//! The data plane never waits on the ledger: the token observer stores into the atomics of a
//! [`RequestProgress`], and the accounting thread snapshots them on each tick. The only writes in the
//! other direction are the energy figures the accounting thread publishes back (so that a response can
//! carry its energy without asking anybody). [`InFlight`] is the registry; [`InFlightGuard`] is the RAII
//! handle the data plane holds for a request's whole life: dropping it marks the request finished
//! (aborted if nobody said otherwise), it never removes the entry itself, because accounting must see
//! the final state to settle the request's last intervals before retiring it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;

mod energy;
mod engine_queue;
mod settled;
mod steps;
pub use energy::{
    decode_context, decode_context_between, estimate_unsettled, EnergyNow, EnergyStatus,
    SystemRates, MAX_EXTRAPOLATION_NS,
};
pub use engine_queue::{EngineQueueInbox, EngineQueueReading, INBOX_READINGS};
pub use settled::Settled;
pub use steps::{StepClock, SAME_STEP_NS, STEP_RING};

/// What kind of API call a request is, as far as accounting cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/completions`
    Completions,
    /// `/v1/responses`
    Responses,
    /// `/v1/embeddings`
    Embeddings,
    /// Anything else (forwarded, not accounted as model work).
    Other,
}

impl Endpoint {
    /// The label used in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Other => "other",
        }
    }
}

/// How a request ended. Stored as a `u8` in [`RequestProgress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Still in flight.
    InFlight = 0,
    /// The upstream answered and the response was delivered completely.
    Ok = 1,
    /// The client went away (or the proxy was shut down) before the response ended.
    Aborted = 2,
    /// The upstream failed (status >= 400, mid-stream error, transport error).
    Error = 3,
}

impl Outcome {
    fn from_u8(v: u8) -> Outcome {
        match v {
            1 => Outcome::Ok,
            2 => Outcome::Aborted,
            3 => Outcome::Error,
            _ => Outcome::InFlight,
        }
    }
}

/// Facts fixed at arrival.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    /// Process-unique id; `x-energy-request-id` is [`RequestMeta::public_id`].
    pub id: u64,
    /// The `model` field of the request, if any (truncated to a bounded length by the inspector).
    pub model: Option<String>,
    /// Which API.
    pub endpoint: Endpoint,
    /// Keyed hash of the API key, never the key.
    pub key_hash: Option<String>,
    /// The `x-energy-tag` request header.
    pub tag: Option<String>,
    /// Whether the response is a stream.
    pub stream: bool,
    /// Arrival, clock nanoseconds.
    pub arrival_ns: u64,
    /// Prompt tokens estimated from the request body at arrival (0 if unknown).
    pub estimated_prompt_tokens: u64,
    /// Number of choices asked for (`n`, at least 1).
    pub choices: u32,
    /// Upper bound on completion tokens per choice, if the request set one.
    pub max_tokens: Option<u64>,
}

impl RequestMeta {
    /// The id as clients and `/requests/{id}` see it.
    pub fn public_id(&self) -> String {
        format_public_id(self.id)
    }
}

/// Formats a request id the way it appears on the wire.
pub fn format_public_id(id: u64) -> String {
    format!("jg-{id:016x}")
}

/// Parses what [`format_public_id`] produced.
pub fn parse_public_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("jg-")?, 16).ok()
}

/// Live state of one request. Timestamps are clock nanoseconds, `0` meaning "not yet".
#[derive(Debug)]
pub struct RequestProgress {
    /// Facts fixed at arrival.
    pub meta: RequestMeta,
    // --- written by the data plane ---
    /// Prompt tokens: the estimate until `prompt_exact`, then the server's count.
    pub prompt_tokens: AtomicU64,
    /// Whether `prompt_tokens` came from the server's usage.
    pub prompt_exact: AtomicBool,
    /// Completion tokens observed so far (summed over choices).
    pub completion_tokens: AtomicU64,
    /// Whether the completion count is the server's (usage) rather than counted from chunks.
    pub completion_exact: AtomicBool,
    /// Whether token progress is visible while in flight (a stream with per-chunk counts).
    pub progress_visible: AtomicBool,
    /// Arrival of the first completion token.
    pub first_token_ns: AtomicU64,
    /// Arrival of the latest completion-token increment.
    pub last_token_ns: AtomicU64,
    /// vLLM `metrics` (`queue_time_ms`): time spent queued in the engine, nanoseconds (0 if
    /// unknown).
    pub queue_ns: AtomicU64,
    /// vLLM `metrics` (`time_to_first_token_ms`): from first scheduling to the first token, i.e. the
    /// prefill without the queue, nanoseconds (0 if unknown).
    pub prefill_ns: AtomicU64,
    /// vLLM `metrics` (`generation_time_ms`): from the first token to the last, nanoseconds (0 if
    /// unknown).
    pub generation_ns: AtomicU64,
    /// Whether the three engine times above came from the upstream's per-request `metrics` (then a
    /// 0 among them is a measured 0, not "unknown").
    pub engine_timed: AtomicBool,
    /// End of the response (last byte or abort), 0 while in flight.
    pub end_ns: AtomicU64,
    outcome: AtomicU8,
    // --- written by accounting ---
    /// Energy attributed so far, micro-joules.
    pub energy_uj: AtomicU64,
    /// Active energy (excluding the idle baseline share) so far, micro-joules.
    pub active_uj: AtomicU64,
    /// Of `energy_uj`, the prefill part.
    pub prefill_uj: AtomicU64,
    /// Of `energy_uj`, the decode part.
    pub decode_uj: AtomicU64,
    /// The end of the last tick included in the energy figures.
    pub settled_until_ns: AtomicU64,
    /// Prompt, completion and context tokens of its work in settled ticks (see
    /// `ledger::RequestEnergy::settled_tokens`).
    pub settled_tokens: [AtomicU64; 3],
    /// The request's attributed power over its latest tick, milliwatts: used to extend the settled
    /// figure to "now" when a stream ends between ticks.
    pub recent_power_mw: AtomicU64,
    /// Its mean fraction of the work in the held ticks its provisional energy comes from, parts
    /// per million (see `ledger::RequestEnergy::tentative_own_ppm`).
    pub tentative_own_ppm: AtomicU64,
    /// Whether energy is measured at all (false when no meter works).
    pub energy_available: AtomicBool,
    /// Set by accounting once the request is retired (final figures published, record pushed):
    /// what `response_energy = "settled"` waits for.
    pub settled: Settled,
    /// Where token arrivals are noted as engine step boundaries (the registry's; none for a
    /// request built outside a registry).
    steps: Option<Arc<StepClock>>,
    /// The prompt estimate from the body alone, before the learned scale (what teaches it).
    pub body_prompt_estimate: u64,
}

impl RequestProgress {
    /// A fresh in-flight request.
    pub fn new(meta: RequestMeta) -> Self {
        let estimate = meta.estimated_prompt_tokens;
        RequestProgress {
            meta,
            prompt_tokens: AtomicU64::new(estimate),
            prompt_exact: AtomicBool::new(false),
            completion_tokens: AtomicU64::new(0),
            completion_exact: AtomicBool::new(false),
            progress_visible: AtomicBool::new(false),
            first_token_ns: AtomicU64::new(0),
            last_token_ns: AtomicU64::new(0),
            queue_ns: AtomicU64::new(0),
            prefill_ns: AtomicU64::new(0),
            generation_ns: AtomicU64::new(0),
            engine_timed: AtomicBool::new(false),
            end_ns: AtomicU64::new(0),
            outcome: AtomicU8::new(Outcome::InFlight as u8),
            energy_uj: AtomicU64::new(0),
            active_uj: AtomicU64::new(0),
            prefill_uj: AtomicU64::new(0),
            decode_uj: AtomicU64::new(0),
            settled_until_ns: AtomicU64::new(0),
            settled_tokens: Default::default(),
            recent_power_mw: AtomicU64::new(0),
            tentative_own_ppm: AtomicU64::new(0),
            energy_available: AtomicBool::new(true),
            settled: Settled::default(),
            steps: None,
            body_prompt_estimate: estimate,
        }
    }

    /// Records an exact prompt count from the server.
    pub fn set_prompt_exact(&self, tokens: u64) {
        self.prompt_tokens.store(tokens, Relaxed);
        self.prompt_exact.store(true, Relaxed);
    }

    /// Records the cumulative completion count observed at `now_ns`; stamps first/last token times
    /// when the count grows.
    pub fn observe_completion(&self, cumulative: u64, now_ns: u64) {
        let now_ns = now_ns.max(1);
        let before = self.completion_tokens.fetch_max(cumulative, Relaxed);
        if cumulative > before {
            if before == 0 {
                let _ = self
                    .first_token_ns
                    .compare_exchange(0, now_ns, Relaxed, Relaxed);
            }
            self.last_token_ns.store(now_ns, Relaxed);
            if let Some(steps) = &self.steps {
                steps.observe(now_ns);
            }
        }
    }

    /// Records the engine's own timing of the request (vLLM's per-request `metrics`), nanoseconds;
    /// `None` leaves a value as it was. The data plane writes them before it marks the end.
    pub fn set_engine_times(
        &self,
        queue_ns: Option<u64>,
        prefill_ns: Option<u64>,
        generation_ns: Option<u64>,
    ) {
        for (slot, value) in [
            (&self.queue_ns, queue_ns),
            (&self.prefill_ns, prefill_ns),
            (&self.generation_ns, generation_ns),
        ] {
            if let Some(v) = value {
                slot.store(v, Relaxed);
            }
        }
        if queue_ns.is_some() || prefill_ns.is_some() || generation_ns.is_some() {
            self.engine_timed.store(true, Relaxed);
        }
    }

    /// Marks the end of the request, first writer wins.
    pub fn finish(&self, outcome: Outcome, now_ns: u64) {
        if self
            .outcome
            .compare_exchange(Outcome::InFlight as u8, outcome as u8, Relaxed, Relaxed)
            .is_ok()
        {
            self.end_ns.store(now_ns.max(1), Relaxed);
        }
    }

    /// How the request ended, or [`Outcome::InFlight`].
    pub fn outcome(&self) -> Outcome {
        Outcome::from_u8(self.outcome.load(Relaxed))
    }

    /// A consistent-enough copy of the data-plane fields, for one ledger tick.
    pub fn snapshot(&self) -> ProgressSnapshot {
        // Read the end first: if it is set, the counts read after it are final.
        let end_ns = self.end_ns.load(Relaxed);
        ProgressSnapshot {
            id: self.meta.id,
            arrival_ns: self.meta.arrival_ns,
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            prompt_exact: self.prompt_exact.load(Relaxed),
            completion_tokens: self.completion_tokens.load(Relaxed),
            completion_exact: self.completion_exact.load(Relaxed),
            progress_visible: self.progress_visible.load(Relaxed),
            first_token_ns: self.first_token_ns.load(Relaxed),
            last_token_ns: self.last_token_ns.load(Relaxed),
            queue_ns: self.queue_ns.load(Relaxed),
            prefill_ns: self.prefill_ns.load(Relaxed),
            generation_ns: self.generation_ns.load(Relaxed),
            engine_timed: self.engine_timed.load(Relaxed),
            end_ns,
            outcome: self.outcome(),
        }
    }
}

/// Request ids are process-unique integers chosen by us, not by clients, so a multiplicative hash
/// is enough and much cheaper than SipHash at 10,000 lookups per tick. It is also
/// deterministic: the registry iterates in the same order for the same requests, so accounting
/// (and the accuracy harness) gives the same figures to the digit on every run.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Plain copy of a request's progress at one instant: what the pure ledger consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub id: u64,
    pub arrival_ns: u64,
    pub prompt_tokens: u64,
    pub prompt_exact: bool,
    pub completion_tokens: u64,
    pub completion_exact: bool,
    pub progress_visible: bool,
    pub first_token_ns: u64,
    pub last_token_ns: u64,
    /// The engine's queue time (vLLM `metrics.queue_time_ms`), ns; 0 if unknown.
    pub queue_ns: u64,
    /// The engine's prefill time without the queue (vLLM `metrics.time_to_first_token_ms`), ns; 0 if
    /// unknown.
    pub prefill_ns: u64,
    /// The engine's first-to-last-token time (vLLM `metrics.generation_time_ms`), ns; 0 if unknown.
    pub generation_ns: u64,
    /// Whether the engine times came from the upstream's `metrics` (a 0 among them is then real).
    pub engine_timed: bool,
    pub end_ns: u64,
    pub outcome: Outcome,
}

/// The registry of requests that accounting has not retired yet.
#[derive(Debug, Default)]
pub struct InFlight {
    map: DashMap<u64, Arc<RequestProgress>, BuildHasherDefault<IdHasher>>,
    next_id: AtomicU64,
    /// System-wide rates accounting publishes for the data plane's estimates.
    pub rates: SystemRates,
    /// Engine step boundaries seen in token arrivals, drained by accounting.
    pub steps: Arc<StepClock>,
    /// The upstream engine's queue gauges as read from its `/metrics`, drained by accounting.
    pub engine_queue: EngineQueueInbox,
}

impl InFlight {
    /// An empty registry; ids start at 1.
    pub fn new() -> Self {
        InFlight {
            map: DashMap::with_hasher(BuildHasherDefault::default()),
            next_id: AtomicU64::new(1),
            rates: SystemRates::default(),
            steps: Arc::new(StepClock::default()),
            engine_queue: EngineQueueInbox::default(),
        }
    }

    /// Allocates a request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Registers a request and returns the guard the data plane holds until the response ends.
    pub fn register(
        self: &Arc<Self>,
        meta: RequestMeta,
        clock: crate::clock::Clock,
    ) -> InFlightGuard {
        let mut meta = meta;
        let body_estimate = meta.estimated_prompt_tokens;
        if body_estimate > 0 {
            let scaled = (body_estimate as f64 * self.rates.prompt_scale()).round();
            meta.estimated_prompt_tokens = (scaled as u64).max(1);
        }
        let mut progress = RequestProgress::new(meta);
        progress.body_prompt_estimate = body_estimate;
        progress.steps = Some(self.steps.clone());
        let progress = Arc::new(progress);
        self.map.insert(progress.meta.id, progress.clone());
        InFlightGuard { progress, clock }
    }

    /// Looks a live (or finished but not yet retired) request up.
    pub fn get(&self, id: u64) -> Option<Arc<RequestProgress>> {
        self.map.get(&id).map(|e| e.value().clone())
    }

    /// Removes a request once accounting has settled it.
    pub fn retire(&self, id: u64) -> Option<Arc<RequestProgress>> {
        self.map.remove(&id).map(|(_, v)| v)
    }

    /// Every registered request (in no particular order).
    pub fn all(&self) -> Vec<Arc<RequestProgress>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Number of registered requests (in flight or awaiting settlement).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Held by the data plane for a request's life. Dropping it without [`RequestProgress::finish`]
/// marks the request aborted: a cancelled stream is reported by its `Drop`.
#[derive(Debug)]
pub struct InFlightGuard {
    progress: Arc<RequestProgress>,
    clock: crate::clock::Clock,
}

impl InFlightGuard {
    /// The live state.
    pub fn progress(&self) -> &Arc<RequestProgress> {
        &self.progress
    }

    /// Marks the request finished now with `outcome`.
    pub fn finish(&self, outcome: Outcome) {
        self.progress.finish(outcome, self.clock.now_ns());
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.progress.finish(Outcome::Aborted, self.clock.now_ns());
    }
}

#[cfg(test)]
mod tests;
