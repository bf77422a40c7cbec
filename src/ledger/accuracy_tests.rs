//! A small continuous-batching engine with known per-request energy, to check that the ledger's
//! placement rules recover the truth (the full accuracy bench against `crate::sim` lives elsewhere).
//!
//! Engine: fixed 20 ms steps; chunked prefill with a token budget; one decode token per running
//! request per step; step energy = static power × step + e_p × prefill + e_d × decode, split among
//! the step's requests by their marginal terms (the truth); idle power between work. A 50 ms meter
//! turns the energy into ticks; the proxy-side view is each request's visible stream.

use super::*;
use crate::observe::Outcome;

const MS: u64 = 1_000_000;
const STEP: u64 = 20 * MS;
const TICK: u64 = 50 * MS;
const E_P: f64 = 0.01; // J per prefill token
const E_D: f64 = 0.15; // J per decode token
const P_STATIC: f64 = 250.0; // W while stepping
const P_IDLE: f64 = 80.0; // W otherwise

#[derive(Clone, Debug)]
struct SimReq {
    arrival: u64,
    prompt: u64,
    output: u64,
    prefilled: u64,
    decoded: u64,
    prefill_start: u64,
    prefill_end: u64,
    tokens: Vec<u64>,
    end: u64,
    truth_j: f64,
}

/// Tiny deterministic generator (no external randomness in tests).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Runs the engine; returns requests and the (t, cumulative joules) energy trace per step edge.
fn simulate(
    seed: u64,
    n: usize,
    mean_gap_ms: u64,
    prompt_max: u64,
    out_max: u64,
) -> (Vec<SimReq>, Vec<(u64, f64)>) {
    let mut rng = Lcg(seed);
    let mut reqs = Vec::new();
    let mut t = 0;
    for _ in 0..n {
        t += rng.next(2 * mean_gap_ms + 1) * MS;
        reqs.push(SimReq {
            arrival: t + 1,
            prompt: 50 + rng.next(prompt_max),
            output: 5 + rng.next(out_max),
            prefilled: 0,
            decoded: 0,
            prefill_start: 0,
            prefill_end: 0,
            tokens: Vec::new(),
            end: 0,
            truth_j: 0.0,
        });
    }
    let mut trace = vec![(0u64, 0.0f64)];
    let mut energy = 0.0;
    let mut now = 0u64;
    let budget = 2048u64;
    let max_running = 32usize;
    while reqs.iter().any(|r| r.end == 0) {
        let step_end = now + STEP;
        // Admission: FIFO among arrived, bounded running set (prefilling or decoding).
        let mut active: Vec<usize> = (0..reqs.len())
            .filter(|&i| reqs[i].arrival <= now && reqs[i].end == 0)
            .take(max_running)
            .collect();
        active.sort_by_key(|&i| reqs[i].arrival);
        let mut left = budget;
        let mut work: Vec<(usize, f64, f64)> = Vec::new();
        for &i in &active {
            let r = &mut reqs[i];
            if r.prefilled < r.prompt {
                let take = left.min(r.prompt - r.prefilled);
                if take == 0 {
                    continue;
                }
                if r.prefilled == 0 {
                    r.prefill_start = now;
                }
                left -= take;
                r.prefilled += take;
                // The prefill step that completes the prompt also emits the first token.
                let first = u64::from(r.prefilled == r.prompt);
                work.push((i, take as f64, first as f64));
            } else {
                work.push((i, 0.0, 1.0));
            }
        }
        if work.is_empty() {
            energy += P_IDLE * STEP as f64 / 1e9;
        } else {
            let marginal: Vec<f64> = work.iter().map(|(_, p, d)| E_P * p + E_D * d).collect();
            let sum: f64 = marginal.iter().sum();
            let step_j = P_STATIC * STEP as f64 / 1e9 + sum;
            energy += step_j;
            for ((i, _, d), m) in work.iter().zip(&marginal) {
                let r = &mut reqs[*i];
                r.truth_j += step_j * m / sum;
                if *d > 0.0 {
                    if r.decoded == 0 {
                        r.prefill_end = step_end;
                    }
                    r.decoded += 1;
                    r.tokens.push(step_end);
                    if r.decoded == r.output {
                        r.end = step_end + MS / 2;
                    }
                }
            }
        }
        now = step_end;
        trace.push((now, energy));
    }
    (reqs, trace)
}

/// Cumulative joules at `t`, interpolating inside a step (the meter sees a smooth counter).
fn energy_at(trace: &[(u64, f64)], t: u64) -> f64 {
    let i = trace.partition_point(|(x, _)| *x <= t);
    if i == 0 {
        return 0.0;
    }
    if i >= trace.len() {
        return trace.last().map(|x| x.1).unwrap_or(0.0);
    }
    let (t0, e0) = trace[i - 1];
    let (t1, e1) = trace[i];
    e0 + (e1 - e0) * (t - t0) as f64 / (t1 - t0) as f64
}

fn observe(r: &SimReq, id: u64, now: u64) -> Option<Observation> {
    if r.arrival > now {
        return None;
    }
    let seen = r.tokens.partition_point(|t| *t <= now);
    let ended = r.end != 0 && r.end <= now;
    Some(Observation {
        progress: ProgressSnapshot {
            id,
            arrival_ns: r.arrival,
            prompt_tokens: r.prompt,
            prompt_exact: true,
            completion_tokens: seen as u64,
            completion_exact: ended,
            progress_visible: true,
            first_token_ns: if seen > 0 { r.tokens[0] } else { 0 },
            last_token_ns: if seen > 0 { r.tokens[seen - 1] } else { 0 },
            queue_ns: 0,
            prefill_ns: 0,
            generation_ns: 0,
            engine_timed: false,
            end_ns: if ended { r.end } else { 0 },
            outcome: if ended {
                Outcome::Ok
            } else {
                Outcome::InFlight
            },
        },
        kind: WorkKind::Generate,
    })
}

/// Median and p95 of per-request relative error.
fn errors(seed: u64, gap_ms: u64, prompt_max: u64, out_max: u64) -> (f64, f64, Ledger) {
    let (reqs, trace) = simulate(seed, 150, gap_ms, prompt_max, out_max);
    let mut l = Ledger::new(LedgerConfig {
        // The library's default weights and online calibration, as shipped, except that this
        // toy's steps last 20 ms whatever they hold: a prefill displaces no decode time here
        // (with it on: steady p95 0.16 -> 0.30; on `crate::sim`, whose step time grows with
        // prefill tokens as vLLM's does, it lowers the mixed workload's p95 from 47 % to ~35 %).
        prefill_displaces_decode: false,
        p_idle_mw: Some((P_IDLE * 1000.0) as u64),
        ..LedgerConfig::default()
    })
    .expect("config");
    let horizon = trace.last().map(|x| x.0).unwrap_or(0) + 40 * TICK;
    let mut finals = Vec::new();
    let (mut k, mut prev_uj) = (0u64, 0u64);
    while k * TICK < horizon {
        k += 1;
        let end = k * TICK;
        let cum = (energy_at(&trace, end) * 1e6) as u64;
        let obs: Vec<Observation> = reqs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| observe(r, i as u64 + 1, end + MS))
            .filter(|o| !finals.iter().any(|f: &FinalRequest| f.id == o.progress.id))
            .collect();
        l.apply(
            TickSpan {
                seq: k,
                start_ns: end - TICK,
                end_ns: end,
                delta_uj: Some(cum - prev_uj),
            },
            &obs,
        );
        prev_uj = cum;
        l.drain_final(&mut finals);
    }
    assert_eq!(finals.len(), reqs.len());
    let mut errs: Vec<f64> = finals
        .iter()
        .map(|f| {
            let truth = reqs[(f.id - 1) as usize].truth_j;
            (f.energy.energy_uj as f64 / 1e6 - truth).abs() / truth
        })
        .collect();
    errs.sort_by(f64::total_cmp);
    (errs[errs.len() / 2], errs[errs.len() * 95 / 100], l)
}

#[test]
fn per_request_error_is_small_on_mixed_workloads() {
    // (gap ms, prompt max, output max): steady, bursty-ish, prefill-heavy, decode-heavy.
    for (name, gap, pmax, omax) in [
        ("steady", 60, 800, 120),
        ("busy", 15, 800, 120),
        ("prefill-heavy", 60, 4000, 20),
        ("decode-heavy", 40, 200, 300),
    ] {
        let (median, p95, l) = errors(7, gap, pmax, omax);
        // Bounds are regression guards for this toy engine (20 ms steps under 50 ms ticks: the
        // split inside a tick cannot follow the steps), not the DESIGN accuracy targets.
        let t = l.totals();
        assert_eq!(
            t.attributed_uj + t.idle_uj + t.unattributed_uj + t.pending_uj,
            t.measured_uj
        );
        eprintln!(
            "{name}: median {median:.3} p95 {p95:.3} unattributed {} uJ",
            t.unattributed_uj
        );
        assert!(median < 0.08, "{name}: median {median}");
        assert!(p95 < 0.30, "{name}: p95 {p95}");
    }
}
