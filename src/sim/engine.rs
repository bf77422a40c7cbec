//! A pure continuous-batching engine model with ground-truth energy: what a vLLM-like scheduler runs
//! in each step, how long the step takes and how much energy it draws, and whose energy that is.
//!
//! No clock and no I/O: [`Engine::step`] advances one step and reports its duration and energy;
//! [`Engine::idle`] accounts time with nothing to run. The real-time driver is [`super::runner`].
//!
//! **Scheduling** (vLLM v1 with chunked prefill): at most `max_running_seqs` sequences run; the others
//! wait in FIFO order. Each step has a budget of `max_batched_tokens`: first one decode token per
//! running sequence, then prefill chunks of running requests whose prompt is not done, then newly
//! admitted requests. A request with `n` choices is `n` sequences sharing one prefill; its choices
//! decode in lockstep. The step that completes a prompt's prefill also samples its first token.
//!
//! **Cost model** (per step, `P`/`D`/`C` = prefill tokens, decode tokens, KV context tokens read):
//! `step_ns = t0 + a·P + b·D + c·C` and `E = P_static·step + e_p·P + e_d·D + e_c·C`; idle power between
//! steps. The context of a decode is its sequence's length; of a prefill chunk, the tokens cached
//! before it. Defaults ([`CostModel::h100_8b`]) approximate an H100 SXM serving a Llama-3-8B in bf16.
//!
//! **Ground truth.** A step's integer energy is split between the requests in it in proportion to
//! their own marginal terms (`e_p·p + e_d·d + e_c·c`), by largest remainder, so shares are exact
//! integers; a request's share counts as prefill energy in steps where it prefilled, decode energy
//! otherwise. Idle energy belongs to nobody. Hence, exactly: Σ truth + idle = total.

use std::collections::{HashMap, VecDeque};

/// The step-time and energy model. Times in nanoseconds (context: picoseconds), energies in
/// nanojoules, powers in milliwatts: integers, so the model is exact and deterministic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostModel {
    /// `t0`: fixed time of a step (weights read once per step), ns.
    pub step_base_ns: u64,
    /// `a`: time per prefill token, ns.
    pub prefill_ns_per_token: u64,
    /// `b`: time per decode token, ns.
    pub decode_ns_per_token: u64,
    /// `c`: time per KV-context token read, ps.
    pub context_ps_per_token: u64,
    /// `P_static`: power drawn while a step runs, whatever it does, mW.
    pub static_mw: u64,
    /// `e_p`: marginal energy per prefill token, nJ.
    pub prefill_nj_per_token: u64,
    /// `e_d`: marginal energy per decode token, nJ.
    pub decode_nj_per_token: u64,
    /// `e_c`: marginal energy per KV-context token read, nJ.
    pub context_nj_per_token: u64,
    /// Power with nothing running, mW.
    pub idle_mw: u64,
}

impl CostModel {
    /// An H100 SXM (700 W TDP) serving an 8B model in bf16: a 6 ms step floor (16 GB of weights at
    /// ~3.35 TB/s), 30 µs per prefill token (~16 GFLOP at ~550 TFLOP/s), 20 µs per decode token,
    /// 40 ns per context token (128 KiB of KV per token); 300 W while stepping, 70 W idle, 10 mJ per
    /// prefill token, 6 mJ per decode token, 14 µJ per context token. A 2048-token prefill step draws
    /// ~620 W, batch-1 decode ~300 W, batch-64 decode at 1k context ~430 W.
    pub fn h100_8b() -> Self {
        CostModel {
            step_base_ns: 6_000_000,
            prefill_ns_per_token: 30_000,
            decode_ns_per_token: 20_000,
            context_ps_per_token: 40_000,
            static_mw: 300_000,
            prefill_nj_per_token: 10_000_000,
            decode_nj_per_token: 6_000_000,
            context_nj_per_token: 14_000,
            idle_mw: 70_000,
        }
    }
}

impl CostModel {
    /// Four H100 SXM in tensor parallel serving a 70B model in bf16 (all figures for the four
    /// GPUs together): a 12 ms step floor (140 GB of weights at ~13 TB/s), 75 µs per prefill token,
    /// 45 µs per decode token, 30 ns per context token (320 KiB of KV per token); 1.4 kW while
    /// stepping, 320 W idle, 45 mJ per prefill token, 12 mJ per decode token, 40 µJ per context
    /// token. Static power weighs more and decode less than on the 8B model.
    pub fn h100x4_70b() -> Self {
        CostModel {
            step_base_ns: 12_000_000,
            prefill_ns_per_token: 75_000,
            decode_ns_per_token: 45_000,
            context_ps_per_token: 30_000,
            static_mw: 1_400_000,
            prefill_nj_per_token: 45_000_000,
            decode_nj_per_token: 12_000_000,
            context_nj_per_token: 40_000,
            idle_mw: 320_000,
        }
    }

    /// A memory-bound long-context profile (an L40S-class card serving a small model with a large
    /// KV cache): a short 4 ms step floor, 50 µs per prefill token, 10 µs per decode token, 120 ns
    /// per context token; 250 W while stepping, 60 W idle, 4 mJ per prefill token, 2 mJ per decode
    /// token, 60 µJ per context token: attention over the context dominates long decodes.
    pub fn context_bound() -> Self {
        CostModel {
            step_base_ns: 4_000_000,
            prefill_ns_per_token: 50_000,
            decode_ns_per_token: 10_000,
            context_ps_per_token: 120_000,
            static_mw: 250_000,
            prefill_nj_per_token: 4_000_000,
            decode_nj_per_token: 2_000_000,
            context_nj_per_token: 60_000,
            idle_mw: 60_000,
        }
    }
}

impl Default for CostModel {
    fn default() -> Self {
        Self::h100_8b()
    }
}

/// Engine limits and cost model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most sequences running at once (vLLM `max_num_seqs`).
    pub max_running_seqs: u32,
    /// Token budget of one step (vLLM `max_num_batched_tokens`).
    pub max_batched_tokens: u32,
    /// Time and energy per step.
    pub cost: CostModel,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running_seqs: 256,
            max_batched_tokens: 2048,
            cost: CostModel::default(),
        }
    }
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Queued, no work done.
    Waiting,
    /// Admitted: prefilling or decoding.
    Running,
    /// All tokens produced.
    Finished,
    /// Aborted (client gone) before finishing.
    Aborted,
}

/// Ground truth of one request, exact integer micro-joules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    /// Energy of steps while it prefilled.
    pub prefill_uj: u64,
    /// Energy of steps while it decoded.
    pub decode_uj: u64,
    /// Of `prefill_uj + decode_uj`, the part above idle power: each step's energy minus the idle
    /// power over its duration, split by the same shares.
    pub active_uj: u64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens produced, summed over choices.
    pub completion_tokens: u64,
    /// Where it is.
    pub phase: Phase,
}

impl Truth {
    /// Total energy.
    pub fn total_uj(&self) -> u64 {
        self.prefill_uj + self.decode_uj
    }
}

/// Energy totals since the engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// All energy: steps plus idle.
    pub total_uj: u64,
    /// Energy of steps, all of it attributed to requests.
    pub step_uj: u64,
    /// Energy while nothing ran.
    pub idle_uj: u64,
    /// Simulated time stepping, ns.
    pub busy_ns: u64,
    /// Simulated idle time, ns.
    pub idle_ns: u64,
    /// Steps run.
    pub steps: u64,
}

/// A request's progress reported by a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emit {
    /// Request id given to [`Engine::add`].
    pub id: u64,
    /// Tokens generated so far per choice (all choices advance together).
    pub generated: u32,
    /// Whether the request finished in this step.
    pub finished: bool,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// Simulated duration, ns.
    pub duration_ns: u64,
    /// Energy, µJ (integer; sub-µJ remainders carry to the next step).
    pub energy_uj: u64,
    /// Prefill tokens computed.
    pub prefill_tokens: u64,
    /// Decode tokens computed.
    pub decode_tokens: u64,
    /// KV context tokens read.
    pub context_tokens: u64,
    /// Requests that produced tokens or finished, in schedule order.
    pub emitted: Vec<Emit>,
}

#[derive(Clone, Debug)]
struct Req {
    prompt: u32,
    prefilled: u32,
    max_tokens: u32,
    n: u32,
    generated: u32,
    truth: Truth,
}

/// The engine: queues, running set, and ground truth per request.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    waiting: VecDeque<u64>,
    running: Vec<u64>,
    running_seqs: u32,
    reqs: HashMap<u64, Req>,
    totals: Totals,
    carry_nj: u64,
}

impl Engine {
    /// An idle engine.
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            running_seqs: 0,
            reqs: HashMap::new(),
            totals: Totals::default(),
            carry_nj: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Queues a request (`n` choices of `max_tokens` each after a `prompt`-token prefill). An empty
    /// prompt still costs one token, as in vLLM; a reused id replaces the old record.
    pub fn add(&mut self, id: u64, prompt: u32, max_tokens: u32, n: u32) {
        // Take a reused id out of the queues first, so that it is never scheduled twice.
        self.abort(id);
        let prompt = prompt.max(1);
        self.reqs.insert(
            id,
            Req {
                prompt,
                prefilled: 0,
                max_tokens,
                n: n.max(1),
                generated: 0,
                truth: Truth {
                    prefill_uj: 0,
                    decode_uj: 0,
                    active_uj: 0,
                    prompt_tokens: prompt,
                    completion_tokens: 0,
                    phase: Phase::Waiting,
                },
            },
        );
        self.waiting.push_back(id);
    }

    /// Aborts a waiting or running request; its truth so far is kept.
    pub fn abort(&mut self, id: u64) {
        let Some(r) = self.reqs.get_mut(&id) else {
            return;
        };
        match r.truth.phase {
            Phase::Waiting => self.waiting.retain(|&w| w != id),
            Phase::Running => {
                self.running.retain(|&w| w != id);
                self.running_seqs -= r.n;
            }
            Phase::Finished | Phase::Aborted => return,
        }
        r.truth.phase = Phase::Aborted;
    }

    /// Whether a step would do anything.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Requests waiting and sequences running.
    pub fn queue_depths(&self) -> (usize, u32) {
        (self.waiting.len(), self.running_seqs)
    }

    /// The truth of a request.
    pub fn truth(&self, id: u64) -> Option<&Truth> {
        self.reqs.get(&id).map(|r| &r.truth)
    }

    /// Drops the record of a finished or aborted request.
    pub fn forget(&mut self, id: u64) {
        if matches!(
            self.truth(id).map(|t| t.phase),
            Some(Phase::Finished | Phase::Aborted)
        ) {
            self.reqs.remove(&id);
        }
    }

    /// Energy totals.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Idle energy of `total_idle_ns` of idle time: the exact integer the engine accounts.
    pub fn idle_energy_uj(&self, total_idle_ns: u64) -> u64 {
        // mW * ns = pJ; 1e6 pJ = 1 µJ.
        (u128::from(self.cfg.cost.idle_mw) * u128::from(total_idle_ns) / 1_000_000) as u64
    }

    /// Accounts `ns` of idle time; returns the idle energy added, µJ.
    pub fn idle(&mut self, ns: u64) -> u64 {
        let before = self.idle_energy_uj(self.totals.idle_ns);
        self.totals.idle_ns = self.totals.idle_ns.saturating_add(ns);
        let added = self.idle_energy_uj(self.totals.idle_ns) - before;
        self.totals.idle_uj += added;
        self.totals.total_uj += added;
        added
    }

    /// Runs one step, or returns `None` when there is nothing to run.
    pub fn step(&mut self) -> Option<StepReport> {
        // (id, prefill tokens, decode tokens, context tokens)
        let mut work: Vec<(u64, u64, u64, u64)> = Vec::new();
        let mut budget = u64::from(self.cfg.max_batched_tokens);
        for &id in &self.running {
            let r = &self.reqs[&id];
            if r.prefilled == r.prompt && budget >= u64::from(r.n) {
                budget -= u64::from(r.n);
                let ctx = u64::from(r.n) * u64::from(r.prompt + r.generated);
                work.push((id, 0, u64::from(r.n), ctx));
            }
        }
        for &id in &self.running {
            let r = &self.reqs[&id];
            if r.prefilled < r.prompt && budget > 0 {
                let chunk = u64::from(r.prompt - r.prefilled).min(budget);
                budget -= chunk;
                work.push((id, chunk, 0, u64::from(r.prefilled)));
            }
        }
        while let Some(&id) = self.waiting.front() {
            let n = self.reqs[&id].n;
            let fits = self.running_seqs + n <= self.cfg.max_running_seqs || self.running_seqs == 0;
            if budget == 0 || !fits {
                break;
            }
            self.waiting.pop_front();
            self.running.push(id);
            self.running_seqs += n;
            let r = self.reqs.get_mut(&id).expect("queued ids have records");
            r.truth.phase = Phase::Running;
            let chunk = u64::from(r.prompt).min(budget);
            budget -= chunk;
            work.push((id, chunk, 0, 0));
        }
        if work.is_empty() {
            return None;
        }
        let c = &self.cfg.cost;
        let (p, d, ctx) = work
            .iter()
            .fold((0, 0, 0), |a, w| (a.0 + w.1, a.1 + w.2, a.2 + w.3));
        let duration_ns = c
            .step_base_ns
            .saturating_add(c.prefill_ns_per_token.saturating_mul(p))
            .saturating_add(c.decode_ns_per_token.saturating_mul(d))
            .saturating_add((u128::from(c.context_ps_per_token) * u128::from(ctx) / 1000) as u64);
        let weight = |w: &(u64, u64, u64, u64)| {
            u128::from(c.prefill_nj_per_token) * u128::from(w.1)
                + u128::from(c.decode_nj_per_token) * u128::from(w.2)
                + u128::from(c.context_nj_per_token) * u128::from(w.3)
        };
        let marginal: u128 = work.iter().map(weight).sum();
        // mW * ns = pJ; /1000 = nJ.
        let energy_nj = u128::from(c.static_mw) * u128::from(duration_ns) / 1000
            + marginal
            + u128::from(self.carry_nj);
        let energy_uj = (energy_nj / 1000) as u64;
        self.carry_nj = (energy_nj % 1000) as u64;
        let mut weights: Vec<u128> = work.iter().map(weight).collect();
        if marginal == 0 {
            // A cost model without marginal terms: split by tokens instead.
            weights = work.iter().map(|w| u128::from(w.1 + w.2).max(1)).collect();
        }
        let shares = split_exact(energy_uj, &weights);
        let idle_part_uj = (u128::from(c.idle_mw) * u128::from(duration_ns) / 1_000_000) as u64;
        let active_shares = split_exact(energy_uj.saturating_sub(idle_part_uj), &weights);
        let mut emitted = Vec::new();
        for ((w, share), active) in work.iter().zip(shares).zip(active_shares) {
            let r = self.reqs.get_mut(&w.0).expect("scheduled ids have records");
            r.truth.active_uj += active;
            if w.1 > 0 {
                r.truth.prefill_uj += share;
                r.prefilled += w.1 as u32;
                if r.prefilled < r.prompt {
                    continue;
                }
            } else {
                r.truth.decode_uj += share;
            }
            // A completed prefill samples the first token; a decode samples the next.
            if r.generated < r.max_tokens {
                r.generated += 1;
                r.truth.completion_tokens += u64::from(r.n);
            }
            let finished = r.generated >= r.max_tokens;
            emitted.push(Emit {
                id: w.0,
                generated: r.generated,
                finished,
            });
        }
        for e in emitted.iter().filter(|e| e.finished) {
            let r = self.reqs.get_mut(&e.id).expect("emitted ids have records");
            r.truth.phase = Phase::Finished;
            self.running_seqs -= r.n;
            self.running.retain(|&x| x != e.id);
        }
        self.totals.steps += 1;
        self.totals.busy_ns = self.totals.busy_ns.saturating_add(duration_ns);
        self.totals.step_uj += energy_uj;
        self.totals.total_uj += energy_uj;
        Some(StepReport {
            duration_ns,
            energy_uj,
            prefill_tokens: p,
            decode_tokens: d,
            context_tokens: ctx,
            emitted,
        })
    }
}

/// Splits `total` in proportion to `weights` into integers summing exactly to `total` (largest
/// remainder; ties to the earlier entry).
pub fn split_exact(total: u64, weights: &[u128]) -> Vec<u64> {
    let sum: u128 = weights.iter().sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if sum == 0 {
        let mut out = vec![0; weights.len()];
        out[0] = total;
        return out;
    }
    let mut out = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    let mut given = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(total) * w;
        let q = (exact / sum) as u64;
        out.push(q);
        rems.push((exact % sum, i));
        given += q;
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take((total - given) as usize) {
        out[i] += 1;
    }
    out
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
