use super::*;
use crate::clock::Clock;

fn meta(id: u64) -> RequestMeta {
    RequestMeta {
        id,
        model: Some("m".into()),
        endpoint: Endpoint::ChatCompletions,
        key_hash: None,
        tag: None,
        stream: true,
        arrival_ns: 10,
        estimated_prompt_tokens: 5,
        choices: 1,
        max_tokens: None,
    }
}

#[test]
fn dropped_guard_marks_abort_but_keeps_entry_for_settlement() {
    let reg = Arc::new(InFlight::new());
    let id = reg.next_id();
    let guard = reg.register(meta(id), Clock::new());
    guard.progress().observe_completion(3, 100);
    guard.progress().observe_completion(2, 200); // stale count never lowers
    drop(guard);
    let p = reg.get(id).expect("still registered");
    let s = p.snapshot();
    assert_eq!(s.outcome, Outcome::Aborted);
    assert_eq!(s.completion_tokens, 3);
    assert_eq!(s.first_token_ns, 100);
    assert_eq!(s.last_token_ns, 100);
    assert!(s.end_ns > 0);
    assert!(reg.retire(id).is_some());
    assert!(reg.is_empty());
}

#[test]
fn explicit_finish_wins_over_drop() {
    let reg = Arc::new(InFlight::new());
    let guard = reg.register(meta(7), Clock::new());
    guard.finish(Outcome::Ok);
    let p = guard.progress().clone();
    drop(guard);
    assert_eq!(p.outcome(), Outcome::Ok);
}

#[test]
fn energy_now_extends_settled_energy_with_recent_power() {
    let p = RequestProgress::new(meta(1));
    p.energy_uj.store(2_000_000, Relaxed);
    p.active_uj.store(1_000_000, Relaxed);
    p.settled_until_ns.store(1_000_000_000, Relaxed);
    p.recent_power_mw.store(100_000, Relaxed); // 100 W
    let rates = SystemRates::default();
    let e = p.energy_now(1_010_000_000, &rates); // 10 ms later: +1 J
    assert_eq!(e.energy_uj, 3_000_000);
    assert_eq!(e.active_uj, 1_500_000);
    assert_eq!(e.status, EnergyStatus::Estimated);
    p.set_prompt_exact(5);
    p.completion_exact.store(true, Relaxed);
    assert_eq!(p.energy_now(1_010_000_000, &rates).status, EnergyStatus::Ok);
    // A stalled sampler is not extrapolated forever.
    let far = p.energy_now(100_000_000_000, &rates);
    assert_eq!(far.energy_uj, 2_000_000 + 100_000_000);
    p.energy_available.store(false, Relaxed);
    assert_eq!(p.energy_now(0, &rates).status, EnergyStatus::Unavailable);
}

#[test]
fn unsettled_requests_are_estimated_from_system_rates() {
    let rates = SystemRates::default();
    rates.power_mw.store(400_000, Relaxed); // 400 W
    rates.idle_mw.store(100_000, Relaxed); // 100 W idle
    rates.prefill_uj_per_token.store(20_000, Relaxed); // 0.02 J
    rates.decode_uj_per_token.store(300_000, Relaxed); // 0.3 J
                                                       // 100 prompt + 10 completion tokens: active 2 + 3 = 5 J, total 5 x 400/300 J
    let (total, active) = estimate_unsettled(100, 10, 10_000_000_000, &rates);
    assert_eq!(active, 5_000_000);
    assert_eq!(total, 6_666_666);
    // Never more than the whole system's power over the request's life (10 ms x 400 W = 4 J).
    let (total, active) = estimate_unsettled(100, 10, 10_000_000, &rates);
    assert_eq!(total, 4_000_000);
    assert_eq!(active, 4_000_000);
    // Through energy_now: nothing settled yet, so the estimate is used.
    let p = RequestProgress::new(meta(1));
    p.set_prompt_exact(100);
    p.observe_completion(10, 20);
    let e = p.energy_now(10 + 10_000_000_000, &rates);
    assert_eq!(e.energy_uj, 6_666_666);
    // Nothing known: zero, never a panic.
    assert_eq!(estimate_unsettled(5, 5, 5, &SystemRates::default()), (0, 0));
}

#[test]
fn public_ids_round_trip() {
    assert_eq!(parse_public_id(&format_public_id(42)), Some(42));
    assert_eq!(parse_public_id("nope"), None);
}

#[test]
fn token_arrivals_of_registered_requests_mark_engine_steps() {
    let reg = Arc::new(InFlight::new());
    let a = reg.register(meta(1), Clock::new());
    let b = reg.register(meta(2), Clock::new());
    let ms = 1_000_000;
    // One step's outputs reach both streams within microseconds: one boundary.
    a.progress().observe_completion(1, 10 * ms);
    b.progress().observe_completion(1, 10 * ms + 20_000);
    // A count that does not grow is no token.
    a.progress().observe_completion(1, 15 * ms);
    a.progress().observe_completion(2, 30 * ms);
    b.progress().observe_completion(2, 30 * ms + 5_000);
    let (mut cursor, mut ends) = (0, Vec::new());
    reg.steps.drain_since(&mut cursor, &mut ends);
    assert_eq!(ends, vec![10 * ms, 30 * ms]);
    // A request built outside a registry notes nothing.
    RequestProgress::new(meta(3)).observe_completion(5, 50 * ms);
    ends.clear();
    reg.steps.drain_since(&mut cursor, &mut ends);
    assert!(ends.is_empty());
}

#[test]
fn published_work_beyond_the_true_counts_is_taken_back_at_the_same_prices() {
    // A non-streamed answer's estimate published 100 decode tokens (and their context) worth
    // 1,000,000 µJ; its usage says 40 tokens. At 10,000 µJ per decode token and 1 µJ per context
    // token, the 60 tokens it did not decode (and their context) are taken off its figure.
    let rates = SystemRates::default();
    rates.set_token_prices(Some(([0.0, 10_000.0, 1.0], [0.0, 10_000.0, 1.0])));
    let p = RequestProgress::new(RequestMeta {
        estimated_prompt_tokens: 0,
        ..meta(1)
    });
    p.set_prompt_exact(0);
    p.observe_completion(40, 1_000);
    p.energy_uj.store(1_000_000, Relaxed);
    p.active_uj.store(1_000_000, Relaxed);
    p.settled_tokens[1].store(100, Relaxed);
    p.settled_tokens[2].store(decode_context(0, 1, 0, 100) as u64, Relaxed);
    let context_back = decode_context(0, 1, 0, 100) - decode_context(0, 1, 0, 40);
    let want = 1_000_000 - 600_000 - context_back as u64;
    let e = p.energy_now(2_000, &rates);
    assert_eq!(e.energy_uj, want, "{e:?}");
    // Never below nothing.
    p.energy_uj.store(100_000, Relaxed);
    assert_eq!(p.energy_now(2_000, &rates).energy_uj, 0);
}

#[test]
fn a_queued_answer_moves_from_its_published_share_to_its_counts_priced_whole() {
    // 100 prompt tokens at 1,000 tokens/s and 10 tokens at 10 per second: 1.1 s of work. Priced
    // whole (1,000 µJ per prompt token, 10,000 per decode token) it is 200,000 µJ; its published
    // share (where its estimate placed it) says 1,000,000 µJ. Answered 1.1 s after arrival, it
    // keeps the published share; after 4.4 s (three quarters of its life unexplained by its work:
    // queued, unseen) it carries 0.75 × 200,000 + 0.25 × 1,000,000. A stream keeps its share.
    let rates = SystemRates::default();
    rates.set_token_prices(Some(([1_000.0, 10_000.0, 0.0], [1_000.0, 10_000.0, 0.0])));
    rates.set_work_rates(1_000.0, 10.0);
    let answer = |visible: bool, life_ns: u64| {
        let p = RequestProgress::new(meta(1));
        p.set_prompt_exact(100);
        p.observe_completion(10, 1_000);
        p.progress_visible.store(visible, Relaxed);
        p.completion_exact.store(true, Relaxed);
        p.energy_uj.store(1_000_000, Relaxed);
        p.settled_tokens[0].store(100, Relaxed);
        p.settled_tokens[1].store(10, Relaxed);
        p.settled_tokens[2].store(decode_context(100, 1, 0, 10) as u64, Relaxed);
        p.energy_now(p.meta.arrival_ns + life_ns, &rates).energy_uj
    };
    assert_eq!(answer(false, 1_100_000_000), 1_000_000);
    assert_eq!(answer(false, 4_400_000_000), 400_000);
    assert_eq!(answer(true, 4_400_000_000), 1_000_000);
}

#[test]
fn the_body_estimate_of_a_prompt_is_scaled_by_what_the_server_counted_before() {
    // Nothing learned: the body's estimate as it is.
    let reg = Arc::new(InFlight::new());
    let register = |id: u64, estimated_prompt_tokens: u64| {
        let m = RequestMeta {
            estimated_prompt_tokens,
            ..meta(id)
        };
        reg.register(m, Clock::new())
    };
    assert_eq!(reg.rates.prompt_scale(), 1.0);
    let first = register(1, 100);
    assert_eq!(first.progress().prompt_tokens.load(Relaxed), 100);
    // The server counted 1.5x the body's estimate, request after request: the first teaches it
    // whole, later ones move it towards theirs.
    reg.rates.learn_prompt_scale(100, 150);
    assert!((reg.rates.prompt_scale() - 1.5).abs() < 1e-9);
    let next = register(2, 200);
    assert_eq!(next.progress().prompt_tokens.load(Relaxed), 300);
    // What teaches it is the body's own estimate, not the scaled one.
    assert_eq!(next.progress().body_prompt_estimate, 200);
    // One odd request (a prompt of token ids: the body says 10, the server 1,000) moves it by
    // at most its weight, and no ratio counts beyond 10x.
    for _ in 0..40 {
        reg.rates.learn_prompt_scale(100, 150);
    }
    reg.rates.learn_prompt_scale(10, 1_000);
    let s = reg.rates.prompt_scale();
    assert!(
        s > 1.5 && s < 1.5 * (10.0f64 / 1.5).powf(1.0 / 32.0) + 1e-9,
        "{s}"
    );
    // Zero on either side teaches nothing.
    reg.rates.learn_prompt_scale(0, 10);
    reg.rates.learn_prompt_scale(10, 0);
    assert_eq!(reg.rates.prompt_scale(), s);
}

#[test]
fn an_answer_prices_its_tail_and_its_prompts_shortfall_by_its_share_but_not_its_decodes() {
    // A non-streamed answer: a 100-token prompt (prefill instant at 1e9 tokens/s) and 10 decode
    // tokens at 10 per second (1 s of decode), published 1,000,000 µJ for the 60 prompt tokens
    // and `decoded` decode tokens its estimate placed in the ticks covered up to 0.1 s before
    // its end. At 1,000 µJ per prompt token and 10,000 per decode token: its last 0.1 s (1
    // token) is in no tick yet and is priced whole. The 40 prompt tokens it lacks lie in covered
    // ticks: alone there, swapping its true counts in changes nothing; with half of those ticks'
    // work, half of them; with none, all of them. Decode tokens lacking there are not priced
    // (its true decode lands where the estimate's was), decode tokens beyond its true count
    // are taken back like the prompt's.
    let rates = SystemRates::default();
    rates.set_token_prices(Some(([1_000.0, 10_000.0, 0.0], [1_000.0, 10_000.0, 0.0])));
    rates.set_work_rates(1e9, 10.0);
    let answer = |own_ppm: u64, decoded: u64| {
        let p = RequestProgress::new(RequestMeta {
            estimated_prompt_tokens: 0,
            ..meta(1)
        });
        p.set_prompt_exact(100);
        p.observe_completion(10, 1_000);
        p.completion_exact.store(true, Relaxed);
        p.energy_uj.store(1_000_000, Relaxed);
        p.active_uj.store(1_000_000, Relaxed);
        p.settled_tokens[0].store(60, Relaxed);
        p.settled_tokens[1].store(decoded, Relaxed);
        p.tentative_own_ppm.store(own_ppm, Relaxed);
        let end = p.meta.arrival_ns + 1_000_000_000;
        rates.covered_until_ns.store(end - 100_000_000, Relaxed);
        p.energy_now(end, &rates).energy_uj
    };
    assert_eq!(answer(1_000_000, 5), 1_010_000);
    assert_eq!(answer(500_000, 5), 1_030_000);
    assert_eq!(answer(0, 5), 1_050_000);
    // 12 published where 10 came: the 3 covered beyond the truth less the tail's 1, taken
    // back by half with half of the ticks' work.
    assert_eq!(answer(500_000, 12), 1_000_000 + 10_000 + 20_000 - 15_000);
}

#[test]
fn decode_context_continues_between_whole_tokens() {
    // 10 tokens after a 100-token prompt read 100 + 101 + ... + 109 context tokens.
    assert_eq!(decode_context(100, 1, 0, 10), 1_045.0);
    // Fractional stretches add up to the whole, and a third of a token holds a third of a
    // token's context (whole counts gave it none or all).
    let parts: f64 = (0..30)
        .map(|i| decode_context_between(100, 1, i as f64 / 3.0, (i + 1) as f64 / 3.0))
        .sum();
    assert!((parts - 1_045.0).abs() < 1e-6, "{parts}");
    let third = decode_context_between(100, 1, 5.0, 5.0 + 1.0 / 3.0);
    assert!((third - 104.0 / 3.0).abs() < 1.0, "{third}");
    // Two choices decode in lockstep: the same sum per sequence.
    assert_eq!(decode_context(100, 2, 0, 20), 2.0 * 1_045.0);
    // Nothing, or nonsense, reads nothing.
    assert_eq!(decode_context_between(100, 1, 3.0, 3.0), 0.0);
    assert_eq!(decode_context_between(100, 1, f64::NAN, 3.0), 0.0);
    assert_eq!(decode_context_between(100, 1, -1.0, 3.0), 0.0);
}
