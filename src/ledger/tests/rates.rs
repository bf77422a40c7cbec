//! The rate estimates the ledger places invisible work with: the per-request decode rate follows
//! the streams decoding through each tick, and the prefill rate follows the upper envelope of
//! `prompt / time to first token`. Also the per-token prices responses use for unsettled work.

use super::*;

#[test]
fn decode_rate_follows_the_streams_batched_with_hidden_requests() {
    // Two ticks of settlement lag only: reconciliation at the end cannot repair the early ticks,
    // so what the hidden request gets there is what its provisional rate says.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 2,
        calibration: unit_weights(),
        ..cfg()
    })
    .expect("config");
    // Both decode at 200 tokens/s for 2 s (continuous batching: same rate), one of them hidden.
    let tokens: Vec<u64> = (0..400).map(|i| (i * 5 + 3) * MS).collect();
    let hidden = invisible(1, 0, 0, tokens.clone(), Some((2_000 * MS, Outcome::Ok)));
    let visible = Script {
        id: 2,
        arrival: 0,
        prompt: 0,
        visible: true,
        tokens,
        end: Some((2_000 * MS, Outcome::Ok)),
        prefill_ns: 0,
    };
    let done = run(&mut l, &[hidden, visible], 44, |_| Some(1_000));
    let (_, decode_rate) = l.rates();
    assert!(
        (150.0..=250.0).contains(&decode_rate),
        "decode rate {decode_rate} tokens/s"
    );
    let e = |id| {
        done.iter()
            .find(|f| f.id == id)
            .map(|f| f.energy.energy_uj)
            .unwrap_or(0)
    };
    assert_eq!(e(1) + e(2), 40_000);
    // Equal work: about half each (the default 30 tokens/s would give the hidden one ~1/8 of
    // every tick settled before its end).
    assert!(
        e(1).abs_diff(20_000) < 3_000,
        "hidden got {} of 40000",
        e(1)
    );
}

#[test]
fn prefill_rate_rises_to_the_fastest_time_to_first_token_and_ignores_short_prompts() {
    let mut l = Ledger::new(cfg()).expect("config");
    let start = l.rates().0;
    // 2,000 prompt tokens and the first token 40 ms after arrival: at least 50,000 tokens/s.
    let long = stream(1, 5 * MS, 2_000, 45 * MS, 3, 5 * MS);
    // A short prompt's TTFT is mostly step latency: it must not pull the rate down.
    let short = stream(2, 5 * MS, 20, 200 * MS, 3, 5 * MS);
    run(&mut l, &[long, short], 8, |_| Some(1_000));
    let (prefill_rate, _) = l.rates();
    assert!(prefill_rate > start, "{prefill_rate} <= {start}");
    assert!(prefill_rate < 50_000.0, "{prefill_rate}");
    // vLLM's own prefill time, when given, is learned as before (and the TTFT bound is skipped).
    let mut l = Ledger::new(cfg()).expect("config");
    let timed = Script {
        prefill_ns: 100 * MS,
        ..stream(1, 0, 5_000, 120 * MS, 3, 5 * MS)
    };
    run(&mut l, &[timed], 8, |_| Some(1_000));
    let (rate, _) = l.rates();
    // One EWMA step (1/16) from 10,000 towards 50,000.
    assert!((rate - 12_500.0).abs() < 1.0, "{rate}");
}

#[test]
fn a_prompt_token_is_priced_at_what_prefill_got_not_at_decodes_cost() {
    // One stream: a 2,000-token prompt prefilled in its first tick, then 200 tokens alone at
    // 10 ms, every tick 1 J. The prefill tick's joule went to 2,000 prompt tokens (and a few
    // decodes), the other 39 J to ~200 decode tokens: a prompt token cost a few hundredth of a
    // decode token. One price per unit of work for all (the old way) priced them alike (α = β
    // by default); each kind's own price, blended with that as a 512-token prior, keeps them
    // apart by more than 5x.
    let mut l = Ledger::new(cfg()).expect("config");
    let s = stream(1, 0, 2_000, 60 * MS, 200, 10 * MS);
    run(&mut l, &[s], 45, |_| Some(1_000_000));
    let (total, active) = l.token_prices().expect("busy ticks settled");
    let (alpha, beta, _) = l.calibrator.weights();
    assert!(
        (alpha - beta).abs() < 1e-12,
        "defaults tie them: {alpha} {beta}"
    );
    assert!(total[0] > 0.0 && total[0] * 5.0 < total[1], "{total:?}");
    assert!(active[0] * 5.0 < active[1], "{active:?}");
    // What the settled ticks gave all work, priced back, is what they measured (within the
    // prior's pull): 40 J over the 2,000 prompt and ~200 decode tokens.
    let priced: f64 = (0..3).map(|i| total[i] * l.price_sums.tokens[i]).sum();
    let measured: f64 = l.price_sums.energy.iter().sum();
    assert!(
        (priced / measured - 1.0).abs() < 0.5,
        "{priced} vs {measured}"
    );
}

#[test]
fn the_prior_of_a_prompt_tokens_price_is_bounded_but_not_what_prefill_got() {
    // Decode only: no prompt token settled, so the prompt's price is all prior, one energy per
    // unit of work for all kinds (α = β by default): a decode token's. Bounded, it is the bound.
    let mut l = Ledger::new(cfg()).expect("config");
    let s = stream(1, 0, 1, 10 * MS, 200, 10 * MS);
    run(&mut l, &[s], 45, |_| Some(1_000_000));
    let (free, _) = l.token_prices().expect("busy ticks settled");
    let (bounded, active) = l.token_prices_with(Some(100.0)).expect("prices");
    assert!(free[0] > 10_000.0, "{free:?}");
    let (e, n) = (l.price_sums.energy[0], l.price_sums.tokens[0]);
    let expected = (e + 100.0 * 512.0) / (n + 512.0);
    assert!(
        n < 10.0 && (bounded[0] - expected).abs() < 1e-6,
        "{bounded:?} {expected}"
    );
    assert!(active[0] <= bounded[0] + 1e-9, "{active:?}");
    assert_eq!((bounded[1], bounded[2]), (free[1], free[2]));
    // With prompts settled, the prompt's price is theirs, pulled only by the bounded prior.
    let mut l = Ledger::new(cfg()).expect("config");
    let s = stream(1, 0, 20_000, 60 * MS, 200, 10 * MS);
    run(&mut l, &[s], 45, |_| Some(1_000_000));
    let (free, _) = l.token_prices().expect("busy ticks settled");
    let (bounded, _) = l.token_prices_with(Some(1.0)).expect("prices");
    let settled = l.price_sums.energy[0] / l.price_sums.tokens[0];
    assert!(
        bounded[0] < free[0] && bounded[0] > 0.9 * settled,
        "{bounded:?} {free:?} {settled}"
    );
}

#[test]
fn before_any_tick_settles_the_published_prices_are_the_held_ticks() {
    // The same stream as above beside a non-streamed answer still running (its work may yet
    // appear in every tick since its arrival), with a settlement lag longer than the run: no
    // tick settles, so the settled window has no price; the published prices come from the held
    // ticks' splits and keep a prompt token apart from a decode token as settled ones do.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 100,
        ..cfg()
    })
    .expect("config");
    let scripts = [
        stream(1, 0, 2_000, 60 * MS, 200, 10 * MS),
        invisible(2, 0, 10, Vec::new(), None),
    ];
    run(&mut l, &scripts, 30, |_| Some(1_000_000));
    assert!(l.token_prices().is_none(), "nothing settled");
    let (total, active) = l.published_token_prices(None).expect("held ticks priced");
    assert!(total[0] > 0.0 && total[0] * 5.0 < total[1], "{total:?}");
    assert!(active[0] * 5.0 < active[1], "{active:?}");
    // About what the settled window gives where ticks settle at a short lag (settlement splits
    // them alike; that window lacks the newest ticks and the prior weighs a little differently).
    let mut settled = Ledger::new(cfg()).expect("config");
    run(&mut settled, &scripts, 30, |_| Some(1_000_000));
    let (expected, _) = settled.token_prices().expect("busy ticks settled");
    for kind in 0..2 {
        let ratio = total[kind] / expected[kind];
        assert!((0.8..1.25).contains(&ratio), "{total:?} {expected:?}");
    }
    // Once a tick has settled, the settled window's prices are what is published.
    assert_eq!(settled.published_token_prices(None), settled.token_prices());
}

#[test]
fn non_streamed_answers_teach_the_decode_rate_where_no_stream_does() {
    // Answers only, each 201 tokens over its 2 s life (100 tokens/s after the first): without
    // vLLM's timing, a life bounds the rate from below and the rate follows the bounds up.
    let mut l = Ledger::new(cfg()).expect("config");
    let start = l.rates().1;
    let answers: Vec<Script> = (0..4)
        .map(|i| {
            let at = i * 2_100 * MS;
            let tokens: Vec<u64> = (0..201).map(|k| at + 10 * MS + k * 9_950_000).collect();
            invisible(i + 1, at, 50, tokens, Some((at + 2_000 * MS, Outcome::Ok)))
        })
        .collect();
    run(&mut l, &answers, 200, |_| Some(1_000));
    let (_, decode) = l.rates();
    assert!(decode > start + 30.0, "{start} -> {decode}");
    assert!(decode <= 100.5, "a lower bound never overshoots: {decode}");
    // With vLLM's timing (prefill 0.1 s for 2,000 tokens, generation 1 s for the 200 tokens
    // after the first), both rates are learned as from a stream: one step of the moving average.
    let mut l = Ledger::new(cfg()).expect("config");
    let (prefill_start, decode_start) = l.rates();
    let tokens: Vec<u64> = (0..201).map(|k| 1_000 * MS + k * 5 * MS).collect();
    let script = invisible(1, 0, 2_000, tokens, Some((2_010 * MS, Outcome::Ok)));
    let mut p = script.at(2_010 * MS).expect("arrived").progress;
    (p.engine_timed, p.prefill_ns, p.generation_ns) = (true, 100 * MS, 1_000 * MS);
    l.learn_answer_rates(&p, 1);
    let (prefill, decode) = l.rates();
    let step = |from: f64, to: f64| from + (to - from) / 16.0;
    assert!(
        (prefill - step(prefill_start, 20_000.0)).abs() < 1e-6,
        "{prefill}"
    );
    assert!(
        (decode - step(decode_start, 200.0)).abs() < 1e-6,
        "{decode}"
    );
    // Where a stream decoded within the last ten seconds, the streams' rates stand.
    l.streams_decoded_at_ns = p.end_ns - 1_000 * MS;
    l.learn_answer_rates(&p, 1);
    assert_eq!(l.rates(), (prefill, decode));
}
