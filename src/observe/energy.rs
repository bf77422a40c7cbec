//! A request's energy as the data plane reports it: the status of the figures, the system rates
//! accounting publishes after each tick, and [`RequestProgress::energy_now`], which prices a
//! request's unsettled work from them without waiting for the sampler.
//!
//! Owns only arithmetic over atomics; accounting writes them, the data plane reads them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{Endpoint, RequestProgress};

/// How much to trust a request's energy figure (`x-energy-status`, the record's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnergyStatus {
    /// Measured energy and the server's exact token counts.
    Ok,
    /// Measured energy, but token counts (and so the split) partly estimated.
    Estimated,
    /// No working meter, or the request's intervals were not measured.
    Unavailable,
}

impl EnergyStatus {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            EnergyStatus::Ok => "ok",
            EnergyStatus::Estimated => "estimated",
            EnergyStatus::Unavailable => "unavailable",
        }
    }
}

/// A request's energy as the data plane reports it on a response: computed from the atomics alone,
/// without waiting for the next tick (DESIGN §4: the last byte must not wait on the sampler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnergyNow {
    /// Total attributed energy, micro-joules.
    pub energy_uj: u64,
    /// Active (above idle) energy, micro-joules.
    pub active_uj: u64,
    /// Prompt tokens (exact or estimated, see `status`).
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Trust in the figures.
    pub status: EnergyStatus,
}

/// System-wide figures accounting publishes after each tick, so the data plane can estimate the
/// energy of work no tick has settled yet (a request shorter than the settlement lag) without
/// asking anybody.
#[derive(Debug, Default)]
pub struct SystemRates {
    /// Recent total power of the metered devices, milliwatts (0: unknown).
    pub power_mw: AtomicU64,
    /// Idle power, milliwatts (0: unknown).
    pub idle_mw: AtomicU64,
    /// Active energy per prefill token, micro-joules (calibrated or configured).
    pub prefill_uj_per_token: AtomicU64,
    /// Active energy per decode token, micro-joules.
    pub decode_uj_per_token: AtomicU64,
    /// What recent settled work cost per token, `f64` bits of µJ: total energy per prefill,
    /// decode and context token, then active energy per each. 0 until busy ticks settled.
    pub token_price_bits: [AtomicU64; 6],
    /// The engine's recent prefill rate (prompt tokens per second) and per-sequence decode rate
    /// (tokens per second), `f64` bits; 0 until known.
    pub work_rate_bits: [AtomicU64; 2],
    /// Learned ratio of the server's prompt counts to the request bodies' estimates, `f64` bits
    /// (0: none learned yet), and how many requests taught it.
    pub prompt_scale_bits: AtomicU64,
    prompt_scale_samples: AtomicU64,
    /// End of the newest tick whose energy the published figures hold (settled or split
    /// provisionally), ns; work after it is in no figure yet.
    pub covered_until_ns: AtomicU64,
}

/// Most weight one request has in the learned prompt scale (an average over the last ~32).
const PROMPT_SCALE_WEIGHT: f64 = 1.0 / 32.0;

impl SystemRates {
    /// Publishes the per-token prices (accounting, after each tick).
    pub fn set_token_prices(&self, prices: Option<([f64; 3], [f64; 3])>) {
        if let Some((total, active)) = prices {
            for (slot, v) in self
                .token_price_bits
                .iter()
                .zip(total.iter().chain(&active))
            {
                slot.store(v.to_bits(), Relaxed);
            }
        }
    }

    /// Publishes the engine's recent prefill and per-sequence decode rates, tokens per second.
    pub fn set_work_rates(&self, prefill_per_s: f64, decode_per_s: f64) {
        self.work_rate_bits[0].store(prefill_per_s.to_bits(), Relaxed);
        self.work_rate_bits[1].store(decode_per_s.to_bits(), Relaxed);
    }

    /// The engine's recent (prefill, per-sequence decode) rates, tokens per second; `None` until
    /// known.
    pub fn work_rates(&self) -> Option<(f64, f64)> {
        let v: [f64; 2] =
            std::array::from_fn(|i| f64::from_bits(self.work_rate_bits[i].load(Relaxed)));
        (v.iter().all(|x| x.is_finite() && *x > 0.0)).then_some((v[0], v[1]))
    }

    /// What a request body's prompt estimate is multiplied by: the server's exact counts over the
    /// estimates of recent requests (1 until one is known). Bytes per token differ by tokenizer,
    /// language and chat template; a fixed 4 was off by 30 % against the simulated engine.
    pub fn prompt_scale(&self) -> f64 {
        let s = f64::from_bits(self.prompt_scale_bits.load(Relaxed));
        if s.is_finite() && s > 0.0 {
            s
        } else {
            1.0
        }
    }

    /// Teaches the prompt scale one request: its body's `estimate` and the server's `exact`
    /// count (accounting, single writer). A geometric running average, so that one odd request
    /// (a prompt of token ids, a huge system prompt) moves it little; each ratio within 0.1..10.
    pub fn learn_prompt_scale(&self, estimate: u64, exact: u64) {
        if estimate == 0 || exact == 0 {
            return;
        }
        let ratio = (exact as f64 / estimate as f64).clamp(0.1, 10.0);
        let n = self.prompt_scale_samples.fetch_add(1, Relaxed) + 1;
        let w = (1.0 / n as f64).max(PROMPT_SCALE_WEIGHT);
        let old = self.prompt_scale();
        let new = (old.ln() + w * (ratio.ln() - old.ln())).exp();
        self.prompt_scale_bits.store(new.to_bits(), Relaxed);
    }

    /// Total and active µJ per (prefill, decode, context) token; `None` until known (the
    /// prior of the prompt's price is bounded where accounting computes them:
    /// `Ledger::token_prices_with`).
    pub fn token_prices(&self) -> Option<([f64; 3], [f64; 3])> {
        let v: [f64; 6] =
            std::array::from_fn(|i| f64::from_bits(self.token_price_bits[i].load(Relaxed)));
        let ok = v.iter().all(|x| x.is_finite() && *x >= 0.0) && (v[0] > 0.0 || v[1] > 0.0);
        ok.then(|| ([v[0], v[1], v[2]], [v[3], v[4], v[5]]))
    }
}

/// Context tokens read by the decodes that take a request's completion count (summed over its
/// `choices` sequences) from `from` to `to`: each sequence's next token reads its prompt and the
/// tokens it generated before (DESIGN.md §3, the γ term).
pub fn decode_context(prompt: u64, choices: u32, from: u64, to: u64) -> f64 {
    decode_context_between(prompt, choices, from as f64, to as f64)
}

/// [`decode_context`] for fractional counts (an estimate's tokens at a rate): the same sum,
/// continued between whole tokens, so that a tick holding a third of a token holds a third of its
/// context, not none or all of it.
pub fn decode_context_between(prompt: u64, choices: u32, from: f64, to: f64) -> f64 {
    if from.is_nan() || to.is_nan() || to <= from || from < 0.0 {
        return 0.0;
    }
    let n = f64::from(choices.max(1));
    let (a, b) = (from / n, to / n);
    n * ((b - a) * prompt as f64 + (b * (b - 1.0) - a * (a - 1.0)) / 2.0)
}

/// Longest stretch the settled figure is extrapolated over with the request's recent power: beyond
/// it the sampler is evidently stalled and guessing would be worse than reporting what is settled.
pub const MAX_EXTRAPOLATION_NS: u64 = 1_000_000_000;

impl RequestProgress {
    /// The share of the request's life so far that its work (`prompt` tokens at the engine's
    /// prefill rate, `completion` at its per-sequence decode rate) does not explain: time spent
    /// queued, in 0..=1 (0 while the rates are unknown).
    fn queued_share(&self, now_ns: u64, rates: &SystemRates, prompt: u64, completion: u64) -> f64 {
        let Some((prefill_per_s, decode_per_s)) = rates.work_rates() else {
            return 0.0;
        };
        let life_s = now_ns.saturating_sub(self.meta.arrival_ns) as f64 / 1e9;
        if life_s <= 0.0 {
            return 0.0;
        }
        let per_choice = completion as f64 / f64::from(self.meta.choices.max(1));
        let work_s = prompt as f64 / prefill_per_s + per_choice / decode_per_s;
        (1.0 - work_s / life_s).clamp(0.0, 1.0)
    }

    /// What a finished non-streamed answer's published figure lacks, (total, active) µJ,
    /// signed; `None` while the engine's rates are unknown. Its published work is the
    /// estimate's, placed before its true counts came (`left`: true counts minus the work its
    /// figure paid for; `(prompt, completion)`: its true counts). Work after the newest covered tick ([`SystemRates::covered_until_ns`])
    /// is in no figure yet: its tokens there (the last of its decode at the per-sequence rate,
    /// then prefill, both squeezed into its life where the rates say its work took longer: a
    /// long prompt's answer, 8B prefill-heavy JSON figures 28.6 / 77.7 -> 23.9 / 65.4 % in one
    /// run each) are priced whole. The rest of `left` lies in covered ticks, where the ledger
    /// will swap its true counts in for the estimate: its share of their energy moves only by
    /// what the others hold of them (a request alone in its ticks gains nothing from more
    /// work there), so that part is priced times one minus its mean fraction of those ticks'
    /// work. Real-time run, 8B, 50 ms counter: JSON figures steady 19-20 / 89 % (median / p95)
    /// with all of `left` priced, 12-13 / 50 % with only the uncovered part, 15-16 / 62 % with
    /// this; the deterministic matrix's JSON figures 10.2 / 43.5, 10.9 / 49.4 and 9.8 / 43.9 %.
    ///
    /// Only the prompt's shortfall in covered ticks is priced that way; the decode's (and its
    /// context's) counts there only when they fall short of the estimate, as a take-back. The
    /// estimate decodes at the engine's recent per-sequence rate from its estimated first
    /// token; its true decode, counted back over the steps streams showed, lands in the same
    /// ticks, and its share of them came out where the estimate had put it (both benches: a
    /// steady answer's held share was within a few per cent of its record before any
    /// repricing, and each J the decode's shortfall added was an error). Real time, 8B, 50 ms
    /// counter, JSON figures (median / p95): steady 17.1 / 34.9 -> 11.2 / 29.4 %, decode-heavy
    /// 7.2 / 14.7 -> 5.2 / 7.8 %, n = 3 13.0 / 41.7 -> 10.7 / 28.6 %, prefill-heavy 13.6 / 40.9
    /// -> 13.7 / 38.6 %; matrix responses 9.2 / 38.9 -> 9.2 / 38.5 %. Dropping the covered
    /// shortfall altogether: prefill-heavy and queueing answers lose their prompts (matrix
    /// JSON 4.9 / 25.6 -> 13.6 / 52.8 % and 10.4 / 48.4 -> 16.8 / 91.2 %).
    fn reprice_answer(
        &self,
        now_ns: u64,
        rates: &SystemRates,
        (prompt, completion): (u64, u64),
        left: [f64; 3],
        prices: [[f64; 3]; 2],
    ) -> Option<(f64, f64)> {
        let (prefill_per_s, decode_per_s) = rates.work_rates()?;
        let covered = rates.covered_until_ns.load(Relaxed);
        let life_s = now_ns.saturating_sub(self.meta.arrival_ns) as f64 / 1e9;
        let tail_s = now_ns.saturating_sub(covered.max(self.meta.arrival_ns)) as f64 / 1e9;
        let n = f64::from(self.meta.choices.max(1));
        // Its work as the rates time it, prefill then decode up to its end; squeezed into its
        // life where the rates say it took longer (they are the engine's recent averages).
        let (mut prefill_s, mut decode_s) = (
            prompt as f64 / prefill_per_s,
            completion as f64 / n / decode_per_s,
        );
        let work_s = prefill_s + decode_s;
        if work_s > life_s && work_s > 0.0 {
            prefill_s *= life_s / work_s;
            decode_s *= life_s / work_s;
        }
        let part = |s: f64, of: f64| {
            if of > 0.0 {
                (s / of).clamp(0.0, 1.0)
            } else {
                1.0
            }
        };
        let tail_decode = part(tail_s, decode_s) * completion as f64;
        let tail_prefill = part(tail_s - decode_s, prefill_s) * prompt as f64;
        let from = completion.saturating_sub(tail_decode as u64);
        let tail = [
            tail_prefill,
            tail_decode,
            decode_context(prompt, self.meta.choices, from, completion),
        ];
        let own = (self.tentative_own_ppm.load(Relaxed) as f64 / 1e6).clamp(0.0, 1.0);
        let placed: [f64; 3] = std::array::from_fn(|i| {
            let covered_shortfall = left[i] - tail[i];
            let counted = if i == 0 {
                covered_shortfall
            } else {
                covered_shortfall.min(0.0)
            };
            tail[i] + counted * (1.0 - own)
        });
        let price = |p: &[f64; 3]| (0..3).map(|i| placed[i] * p[i]).sum::<f64>();
        let (e, a) = (price(&prices[0]), price(&prices[1]));
        (e.is_finite() && a.is_finite()).then_some((e, a))
    }

    /// The energy so far: what accounting settled, plus the request's tokens not yet in a settled
    /// interval priced at what recent settled tokens cost ([`SystemRates::token_prices`]), and
    /// work published beyond its true counts (an invisible request's estimate) taken back at
    /// those prices; a finished non-streamed answer's figure is mixed with its counts priced whole
    /// by its queued share. Before any busy interval settled (no prices yet), the settled figure
    /// is extended to `now_ns` with the request's recent power (bounded by
    /// [`MAX_EXTRAPOLATION_NS`]), or, with nothing settled, estimated from its tokens and the
    /// calibrated per-token energy ([`estimate_unsettled`]).
    pub fn energy_now(&self, now_ns: u64, rates: &SystemRates) -> EnergyNow {
        let settled = self.energy_uj.load(Relaxed);
        let active = self.active_uj.load(Relaxed);
        let settled_until = self.settled_until_ns.load(Relaxed);
        let power_mw = self.recent_power_mw.load(Relaxed);
        let prompt = self.prompt_tokens.load(Relaxed);
        let completion = self.completion_tokens.load(Relaxed);
        let priced = rates
            .token_prices()
            .filter(|_| self.meta.endpoint != Endpoint::Other);
        let (energy_uj, active_uj) = if let Some((total, active_price)) = priced {
            // The request's own work not yet settled, priced at what recent settled work cost
            // per token (static power included): close to what settlement will give it.
            let [sp, sd, sc] = [0, 1, 2].map(|i| self.settled_tokens[i].load(Relaxed) as f64);
            let context = decode_context(prompt, self.meta.choices, 0, completion);
            // Signed: work published beyond the true counts (an estimate for an answer whose
            // progress was invisible, corrected once its usage is in) is taken back at the same
            // prices, down to nothing (bench, two seeds: response p95 58.8 -> 49.0 %).
            let left = [prompt as f64 - sp, completion as f64 - sd, context - sc];
            let price = |p: [f64; 3]| (0..3).map(|i| left[i] * p[i]).sum::<f64>();
            let adjust = |base: u64, by: f64| {
                if by >= 0.0 {
                    base.saturating_add(by as u64)
                } else {
                    base.saturating_sub((-by) as u64)
                }
            };
            let corrected = (
                adjust(settled, price(total)),
                adjust(active, price(active_price)),
            );
            if self.progress_visible.load(Relaxed) || !self.completion_exact.load(Relaxed) {
                corrected
            } else {
                // A non-streamed answer, its usage in: what it published rests on estimates of
                // when its work ran, good while it ran from its arrival, wrong by as much as it
                // waited in the engine's queue (unseen). Its true counts priced whole are the
                // other estimate; they are mixed by the share of its life its work does not
                // explain (bench, two seeds: response median / p95 13.1 / 49.1 -> 11.3 / 43.9 %,
                // prefill-heavy 19-48 / 72-119 -> 7-17 / 37-65 %; mixing by the prefill share
                // instead, 11.0 / 49.4 %; half and half, 11.8 / 46.1 % but decode-heavy worse).
                let corrected = self
                    .reprice_answer(
                        now_ns,
                        rates,
                        (prompt, completion),
                        left,
                        [total, active_price],
                    )
                    .map_or(corrected, |(e, a)| (adjust(settled, e), adjust(active, a)));
                let queued = self.queued_share(now_ns, rates, prompt, completion);
                let all = [prompt as f64, completion as f64, context];
                let whole = |p: [f64; 3]| (0..3).map(|i| all[i] * p[i]).sum::<f64>().max(0.0);
                let mix = |w: f64, c: u64| (queued * w + (1.0 - queued) * c as f64) as u64;
                (
                    mix(whole(total), corrected.0),
                    mix(whole(active_price), corrected.1),
                )
            }
        } else if power_mw > 0 && settled_until > 0 {
            let dt = now_ns
                .saturating_sub(settled_until)
                .min(MAX_EXTRAPOLATION_NS);
            // mW x ns = 1e-12 J = 1e-6 uJ
            let extra = ((u128::from(power_mw) * u128::from(dt)) / 1_000_000) as u64;
            let active_extra = if settled == 0 {
                0
            } else {
                ((u128::from(extra) * u128::from(active)) / u128::from(settled)) as u64
            };
            (
                settled.saturating_add(extra),
                active.saturating_add(active_extra),
            )
        } else if settled == 0 {
            let life_ns = now_ns.saturating_sub(self.meta.arrival_ns);
            estimate_unsettled(
                self.prompt_tokens.load(Relaxed),
                self.completion_tokens.load(Relaxed),
                life_ns,
                rates,
            )
        } else {
            (settled, active)
        };
        let status = if !self.energy_available.load(Relaxed) {
            EnergyStatus::Unavailable
        } else if self.prompt_exact.load(Relaxed) && self.completion_exact.load(Relaxed) {
            EnergyStatus::Ok
        } else {
            EnergyStatus::Estimated
        };
        EnergyNow {
            energy_uj,
            active_uj,
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            completion_tokens: self.completion_tokens.load(Relaxed),
            status,
        }
    }
}

/// Energy of a request's work that no tick has settled, from the system's per-token active energy
/// (`a = prefill_uj x prompt + decode_uj x completion`), scaled up by its share of idle power the
/// way the ledger splits it (`a x P / (P - P_idle)`), and never more than the whole system's power
/// over the request's life. Returns (total, active) micro-joules; (0, 0) when nothing is known.
pub fn estimate_unsettled(
    prompt: u64,
    completion: u64,
    life_ns: u64,
    rates: &SystemRates,
) -> (u64, u64) {
    let power = u128::from(rates.power_mw.load(Relaxed));
    let idle = u128::from(rates.idle_mw.load(Relaxed));
    let active = u128::from(prompt) * u128::from(rates.prefill_uj_per_token.load(Relaxed))
        + u128::from(completion) * u128::from(rates.decode_uj_per_token.load(Relaxed));
    let total = if power > idle {
        active * power / (power - idle)
    } else {
        active
    };
    let ceiling = if power > 0 {
        power * u128::from(life_ns) / 1_000_000
    } else {
        total
    };
    let total = total.min(ceiling);
    let active = active.min(total);
    (
        u64::try_from(total).unwrap_or(u64::MAX),
        u64::try_from(active).unwrap_or(u64::MAX),
    )
}
