//! The engine's rates as the ledger learns them: the prefill rate (from vLLM's prefill times, or
//! the upper envelope of `prompt / time to first token`) and the per-sequence decode rate (from
//! the streams that decoded through each tick and finished streams), used to place the work of
//! requests whose progress is invisible.
//!
//! Part of the [`Ledger`]'s implementation (split from `work.rs` by concern).

use super::attribution::Ledger;
use crate::observe::ProgressSnapshot;

/// Finished answers teach the rates only where no stream decoded for this long
/// ([`Ledger::learn_answer_rates`]): streams show the engine's cadence and time to first token
/// directly, an answer only bounds them, and in the real-time run (streams and answers mixed, 8B,
/// 50 ms counter, two runs each) answers teaching beside streams read p95 27.6-27.8 % where
/// streams alone read 22.8-25.4 %. Ten seconds, ns.
const STREAMS_SHOW_RATES_NS: u64 = 10_000_000_000;

/// Weight of one finished request in the rates' moving averages.
const RATE_WEIGHT: f64 = 1.0 / 16.0;

/// `tokens` over `ns` per second, where that is a rate (finite and positive).
fn rate_of(tokens: f64, ns: u64) -> Option<f64> {
    let r = tokens / (ns as f64 / 1e9);
    (r.is_finite() && r > 0.0).then_some(r)
}

/// One step of a rate's upper envelope towards a lower `bound` of it: quickly up, slowly down.
fn follow_envelope(rate: &mut f64, bound: f64) {
    let w = if bound > *rate { 0.25 } else { 0.02 };
    *rate += w * (bound - *rate);
}

/// Weight of a tick's decodes in [`RecentDecodes`] one tick later (about four ticks' memory, as
/// the per-tick moving average before it).
const DECODE_POOL_DECAY: f64 = 0.75;

/// The decodes of the streams that decoded through recent ticks, each tick's sums decayed by
/// [`DECODE_POOL_DECAY`] per tick since.
#[derive(Debug, Default)]
pub(super) struct RecentDecodes {
    /// Tokens per sequence they produced.
    tokens: f64,
    /// Seconds they decoded, summed over the streams.
    stream_s: f64,
}

impl Ledger {
    /// Sets the per-request decode rate to the rate of the streams that decoded through recent
    /// ticks: the tokens they produced over the time they decoded, each tick's sums weighing
    /// [`DECODE_POOL_DECAY`] per tick older. Invisible (non-streamed) requests decode at the
    /// same rate as the visible ones batched with them, which a rate learned from finished
    /// streams lags by seconds.
    ///
    /// Pooled, not a median per tick: a stream produces a whole number of tokens in a tick, and
    /// when the engine's per-sequence rate is below one token per tick (long contexts, long
    /// prefill steps: 7-11 tokens/s in the bench's context-bound mixed-long traffic, against
    /// 20 per 50 ms tick) most ticks show 0 or 1 token per stream; the median of those, with the
    /// zeros skipped, never took the rate below one token per tick. The answers' estimates then
    /// decoded at 20 tokens/s and overshot their true decode 1.3-2x in ticks that settled before
    /// they ended (accuracy bench, four seeds: records 8.1 / 30.2 -> 7.5 / 28.3 %, mixed-long
    /// 20.9 / 69.2 -> 16.3 / 54.5 %).
    ///
    /// The median of each tick's whole counts is still kept, as `typical_decode_rate`, for the
    /// figures an answer carries at its end ([`Ledger::answer_work_rates`]), which time its work
    /// with it: given the pooled rate there, the answers' figures read worse on prefill-heavy
    /// traffic (responses 6.3 / 44.9 -> 7.5 / 52.9 %; all responses 7.6 / 34.1 -> 7.8 / 35.4 %).
    pub(super) fn learn_tick_decode_rate(&mut self, dt_ns: u64) {
        if self.tick_decodes.is_empty() || dt_ns == 0 {
            return;
        }
        let mid = self.tick_decodes.len() / 2;
        let (_, median, _) = self.tick_decodes.select_nth_unstable(mid);
        let r = *median as f64 / (dt_ns as f64 / 1e9);
        if r.is_finite() && r > 0.0 {
            self.typical_decode_rate += 0.25 * (r - self.typical_decode_rate);
        }
        let tokens: u64 = self.tick_decodes.iter().sum();
        let stream_s = self.tick_decodes.len() as f64 * dt_ns as f64 / 1e9;
        let pool = &mut self.recent_decodes;
        pool.tokens = DECODE_POOL_DECAY * pool.tokens + tokens as f64;
        pool.stream_s = DECODE_POOL_DECAY * pool.stream_s + stream_s;
        let r = pool.tokens / pool.stream_s;
        if r.is_finite() && r > 0.0 {
            self.decode_rate = r;
        }
    }

    /// Without vLLM's prefill time, a stream's time to first token bounds its prefill time from
    /// above (it adds the queue wait and the step in progress at arrival), so `prompt / TTFT`
    /// bounds the prefill rate from below. The rate follows the upper envelope of those bounds:
    /// quickly up, slowly down. A rate guessed too low spreads prefill over ticks where it did not
    /// run, which both misplaces its energy and biases the calibrated α low (errors in the
    /// regressor); one too high only compresses it towards the first token, where the step that
    /// finishes a prefill also samples the first token.
    pub(super) fn learn_prefill_rate(&mut self, p: &ProgressSnapshot) {
        // Short prompts say more about step latency than about prefill throughput.
        const MIN_PROMPT: u64 = 128;
        if p.prefill_ns > 0 || p.prompt_tokens < MIN_PROMPT {
            return;
        }
        let ttft = p.first_token_ns.saturating_sub(Self::work_start_ns(p));
        if ttft == 0 {
            return;
        }
        if let Some(bound) = rate_of(p.prompt_tokens as f64, ttft) {
            follow_envelope(&mut self.prefill_rate, bound);
        }
    }

    /// Refines the prefill and decode rate estimates from a finished stream of `choices` choices
    /// (EWMA, weight 1/16). The decode rate is per sequence.
    pub(super) fn learn_rates(&mut self, p: &ProgressSnapshot, choices: u32) {
        let decode = (p.completion_tokens >= 2
            && p.last_token_ns > p.first_token_ns
            && p.first_token_ns != 0)
            .then(|| {
                let per_choice = p.completion_tokens as f64 / f64::from(choices.max(1));
                (per_choice, p.last_token_ns - p.first_token_ns)
            });
        self.step_towards_timing(p.prompt_tokens, p.prefill_ns, decode);
    }

    /// Refines the rates from a finished non-streamed answer of `choices` sequences. Traffic
    /// without streams taught nothing before: the rates its estimates were placed and its
    /// figures timed with stayed at the defaults (30 tokens/s per sequence where the simulated
    /// 8B decodes at ~100-150). With vLLM's own timing (`metrics`: its prefill and generation
    /// times) the rates learn from it as from a stream ([`Ledger::learn_rates`]). Without it, the
    /// answer's life bounds its decode time from above, so `(tokens - 1) / life` bounds the
    /// per-sequence decode rate from below, and the decode rates follow the upper envelope of
    /// those bounds (quickly up, slowly down, as the prefill rate follows streams' times to first
    /// token). Only where no stream decoded for [`STREAMS_SHOW_RATES_NS`]: streams show the
    /// rates directly.
    ///
    /// Accuracy bench, every request non-streamed (`ACCURACY_STREAMS=none`), four seeds, figures
    /// read: 24.6 / 54.2 -> 17.6 / 47.5 % (with `metrics` 26.1 / 54.0 -> 17.6 / 44.1 %); records
    /// 16.9 / 71.5 -> 17.7 / 73.3 % (17.4 / 72.4 -> 17.9 / 70.3 %; queueing worse, see the
    /// README); the matrix's own mix unchanged.
    pub(super) fn learn_answer_rates(&mut self, p: &ProgressSnapshot, choices: u32) {
        if self.streams_decoded_at_ns != 0
            && p.end_ns.saturating_sub(self.streams_decoded_at_ns) < STREAMS_SHOW_RATES_NS
        {
            return;
        }
        let per_choice = p.completion_tokens as f64 / f64::from(choices.max(1));
        if !p.engine_timed {
            let life = p.end_ns.saturating_sub(Self::work_start_ns(p));
            if per_choice >= 2.0 && life > 0 {
                if let Some(bound) = rate_of(per_choice - 1.0, life) {
                    follow_envelope(&mut self.decode_rate, bound);
                    follow_envelope(&mut self.typical_decode_rate, bound);
                }
            }
            return;
        }
        let decode =
            (per_choice >= 2.0 && p.generation_ns > 0).then_some((per_choice, p.generation_ns));
        if let Some(r) = self.step_towards_timing(p.prompt_tokens, p.prefill_ns, decode) {
            self.typical_decode_rate += RATE_WEIGHT * (r - self.typical_decode_rate);
        }
    }

    /// One step of the moving averages (weight [`RATE_WEIGHT`]) towards a request's own timing:
    /// `prompt` tokens prefilled in `prefill_ns` (0: not known), and `decode`, `(tokens per
    /// sequence, ns)` from each sequence's first token to its last (the first token of every
    /// sequence came with the prefill). Returns the decode rate stepped towards.
    fn step_towards_timing(
        &mut self,
        prompt: u64,
        prefill_ns: u64,
        decode: Option<(f64, u64)>,
    ) -> Option<f64> {
        if prefill_ns > 0 && prompt > 0 {
            if let Some(r) = rate_of(prompt as f64, prefill_ns) {
                self.prefill_rate += RATE_WEIGHT * (r - self.prefill_rate);
            }
        }
        let r = decode.and_then(|(per_choice, ns)| rate_of(per_choice - 1.0, ns))?;
        self.decode_rate += RATE_WEIGHT * (r - self.decode_rate);
        Some(r)
    }
}
