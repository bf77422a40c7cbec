//! Unit tests of the pure engine: scheduling limits, chunked prefill, n > 1, exact conservation.

use super::*;

fn small() -> EngineConfig {
    EngineConfig {
        max_running_seqs: 4,
        max_batched_tokens: 100,
        cost: CostModel::h100_8b(),
    }
}

fn run_to_end(e: &mut Engine) -> Vec<StepReport> {
    let mut out = Vec::new();
    while let Some(r) = e.step() {
        out.push(r);
        assert!(out.len() < 100_000, "engine does not terminate");
    }
    out
}

fn check_conservation(e: &Engine, ids: impl IntoIterator<Item = u64>) {
    let t = e.totals();
    let truth: u64 = ids
        .into_iter()
        .map(|id| e.truth(id).unwrap().total_uj())
        .sum();
    assert_eq!(truth, t.step_uj);
    assert_eq!(truth + t.idle_uj, t.total_uj);
}

#[test]
fn single_request_prefills_then_decodes() {
    let mut e = Engine::new(small());
    e.add(1, 22, 8, 1);
    let steps = run_to_end(&mut e);
    // One prefill step samples token 1, then 7 decode steps.
    assert_eq!(steps.len(), 8);
    assert_eq!(steps[0].prefill_tokens, 22);
    assert_eq!(
        steps[0].emitted,
        vec![Emit {
            id: 1,
            generated: 1,
            finished: false
        }]
    );
    assert!(steps[1..]
        .iter()
        .all(|s| s.prefill_tokens == 0 && s.decode_tokens == 1));
    assert!(steps[7].emitted[0].finished);
    let t = e.truth(1).unwrap();
    assert_eq!(t.phase, Phase::Finished);
    assert_eq!(t.completion_tokens, 8);
    assert_eq!(t.prefill_uj, steps[0].energy_uj);
    assert!(t.decode_uj > 0);
    // The decode step's context is the prompt plus tokens so far.
    assert_eq!(steps[1].context_tokens, 23);
    check_conservation(&e, [1]);
}

#[test]
fn chunked_prefill_spreads_long_prompts_and_comes_before_the_first_token() {
    let mut e = Engine::new(small());
    e.add(1, 250, 3, 1);
    let steps = run_to_end(&mut e);
    let prefills: Vec<u64> = steps.iter().map(|s| s.prefill_tokens).collect();
    assert_eq!(&prefills[..3], &[100, 100, 50]);
    assert!(steps[0].emitted.is_empty() && steps[1].emitted.is_empty());
    assert_eq!(steps[2].emitted[0].generated, 1);
    // The second chunk reads the first one's KV.
    assert_eq!(steps[1].context_tokens, 100);
    check_conservation(&e, [1]);
}

#[test]
fn batching_limits_queue_and_budget() {
    let mut e = Engine::new(small());
    for id in 0..6 {
        e.add(id, 10, 5, 1);
    }
    let first = e.step().unwrap();
    // Only 4 sequences may run; the others wait without work or energy.
    assert_eq!(first.prefill_tokens, 40);
    assert_eq!(e.queue_depths(), (2, 4));
    assert_eq!(e.truth(5).unwrap().phase, Phase::Waiting);
    let steps = run_to_end(&mut e);
    assert!(steps.iter().all(|s| s.decode_tokens <= 4));
    for id in 0..6 {
        assert_eq!(e.truth(id).unwrap().completion_tokens, 5);
    }
    check_conservation(&e, 0..6);
}

#[test]
fn decode_takes_budget_before_prefill() {
    let mut e = Engine::new(EngineConfig {
        max_batched_tokens: 10,
        ..small()
    });
    e.add(1, 5, 20, 1);
    e.step();
    e.add(2, 30, 2, 1);
    let s = e.step().unwrap();
    assert_eq!((s.decode_tokens, s.prefill_tokens), (1, 9));
}

#[test]
fn n_choices_share_one_prefill_and_decode_in_lockstep() {
    let mut e = Engine::new(small());
    e.add(1, 22, 8, 2);
    let steps = run_to_end(&mut e);
    assert_eq!(steps[0].prefill_tokens, 22);
    assert_eq!(steps[1].decode_tokens, 2);
    assert_eq!(e.truth(1).unwrap().completion_tokens, 16);
    // n sequences count against the running limit.
    let mut e = Engine::new(small());
    e.add(1, 5, 3, 3);
    e.add(2, 5, 3, 2);
    e.step();
    assert_eq!(e.queue_depths(), (1, 3));
}

#[test]
fn abort_keeps_truth_and_frees_slots() {
    let mut e = Engine::new(small());
    e.add(1, 10, 50, 4);
    e.add(2, 10, 2, 1);
    e.step();
    e.step();
    let before = e.truth(1).unwrap().clone();
    e.abort(1);
    assert_eq!(e.truth(1).unwrap().phase, Phase::Aborted);
    assert_eq!(e.truth(1).unwrap().total_uj(), before.total_uj());
    run_to_end(&mut e);
    assert_eq!(e.truth(2).unwrap().phase, Phase::Finished);
    e.abort(2);
    assert_eq!(e.truth(2).unwrap().phase, Phase::Finished);
    check_conservation(&e, [1, 2]);
}

#[test]
fn embeddings_are_prefill_only() {
    let mut e = Engine::new(small());
    e.add(1, 7, 0, 1);
    let steps = run_to_end(&mut e);
    assert_eq!(steps.len(), 1);
    assert_eq!(
        steps[0].emitted,
        vec![Emit {
            id: 1,
            generated: 0,
            finished: true
        }]
    );
    assert_eq!(e.truth(1).unwrap().decode_uj, 0);
}

#[test]
fn idle_energy_is_exact_and_nobodys() {
    let mut e = Engine::new(small());
    let mut sum = 0;
    for _ in 0..1000 {
        sum += e.idle(333);
    }
    assert_eq!(sum, e.idle_energy_uj(333_000));
    assert_eq!(e.totals().idle_uj, sum);
    assert_eq!(e.totals().total_uj, sum);
}

#[test]
fn mixed_workload_is_deterministic_and_conserves_exactly() {
    let run = || {
        let mut e = Engine::new(EngineConfig {
            max_running_seqs: 8,
            max_batched_tokens: 256,
            ..Default::default()
        });
        let mut x = 7u64;
        let mut ids = Vec::new();
        for id in 0..60u64 {
            x = crate::sim::text::mix(x);
            e.add(
                id,
                (x % 900) as u32 + 1,
                (x >> 20) as u32 % 40,
                (x >> 40) as u32 % 3 + 1,
            );
            ids.push(id);
            for _ in 0..(x >> 50) % 4 {
                e.step();
            }
            if id % 7 == 3 {
                e.abort(id - 1);
            }
            e.idle(1_000_000);
        }
        let steps = run_to_end(&mut e);
        check_conservation(&e, ids.iter().copied());
        let truths: Vec<Truth> = ids.iter().map(|&id| e.truth(id).unwrap().clone()).collect();
        (steps, truths, e.totals())
    };
    assert_eq!(run(), run());
}

#[test]
fn step_energy_follows_the_documented_model() {
    let mut e = Engine::new(small());
    e.add(1, 100, 1, 1);
    let s = e.step().unwrap();
    let c = CostModel::h100_8b();
    assert_eq!(s.duration_ns, c.step_base_ns + 100 * c.prefill_ns_per_token);
    let nj = u128::from(c.static_mw) * u128::from(s.duration_ns) / 1000
        + 100 * u128::from(c.prefill_nj_per_token);
    assert_eq!(u128::from(s.energy_uj), nj / 1000);
    // ~600 W for a prefill-heavy step.
    let watts = s.energy_uj as f64 / s.duration_ns as f64 * 1e3;
    assert!((400.0..700.0).contains(&watts), "{watts} W");
}

#[test]
fn split_exact_sums_and_is_proportional() {
    assert_eq!(split_exact(10, &[1, 1, 1]), vec![4, 3, 3]);
    assert_eq!(split_exact(7, &[0, 0]), vec![7, 0]);
    assert_eq!(split_exact(100, &[3, 1]), vec![75, 25]);
    assert!(split_exact(5, &[]).is_empty());
    let s = split_exact(1_000_003, &[17, 5, 999, 1]);
    assert_eq!(s.iter().sum::<u64>(), 1_000_003);
}
