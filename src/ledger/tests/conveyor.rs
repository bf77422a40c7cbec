//! The prefill conveyor: where prompts' prefill lands when they queue behind each other, on the
//! line through the first tokens that date them, and where the engine's steps bound it.

use super::placement::run_with_steps;
use super::*;

#[test]
fn invisible_prompts_are_prefilled_first_come_first_served() {
    // Two non-streamed requests: A (2,000 prompt tokens) at 0 and B (1,000) at 10 ms. At the
    // default 10,000 prefill tokens/s the engine works on A until 200 ms and on B from then to
    // 300 ms; B's estimate used to start at its own arrival, beside A's.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let a = invisible(1, 0, 2_000, Vec::new(), None);
    let b = invisible(2, 10 * MS, 1_000, Vec::new(), None);
    for k in 1..=8 {
        let obs: Vec<Observation> = [&a, &b].iter().filter_map(|s| s.at(k * 50 * MS)).collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
    }
    let (pa, pb) = (
        sum_per_tick(&l, 1, |i| i.prefill),
        sum_per_tick(&l, 2, |i| i.prefill),
    );
    let near = |x: f32, y: f32| (x - y).abs() < 1.0;
    for k in 0..4 {
        assert!(near(pa[k], 500.0), "A: {pa:?}");
        assert!(near(pb[k], 0.0), "B waits for A: {pb:?}");
    }
    assert!(near(pb[4], 500.0) && near(pb[5], 500.0), "B: {pb:?}");
    assert!(near(pa.iter().sum(), 2_000.0) && near(pb.iter().sum(), 1_000.0));
}

#[test]
fn back_to_back_prompts_share_the_time_between_their_first_tokens() {
    // Eight streams of 2,000-token prompts arrive together; the engine prefills them one after
    // another at 20,000 tokens/s, a first token every 100 ms. The ledger's prefill rate (10,000
    // tokens/s to start, learned from `prompt / time to first token`, which counts the wait)
    // stays far below that, so each prompt spread over `prompt / rate` before its first token
    // overlapped the one before it by more than half. On the conveyor's line (its throughput
    // measured between first tokens), the last one runs after its predecessor's first token,
    // or nearly.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let scripts: Vec<Script> = (0..8)
        .map(|i| stream(i + 1, i * MS, 2_000, (i + 1) * 100 * MS, 1, MS))
        .collect();
    // Keeps every tick held for inspection (see `work_per_tick`).
    let hold = invisible(99, 0, 10, Vec::new(), None);
    for k in 1..=17 {
        let obs: Vec<Observation> = scripts
            .iter()
            .chain([&hold])
            .filter_map(|s| s.at(k * 50 * MS))
            .collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
    }
    let last = sum_per_tick(&l, 8, |i| i.prefill);
    let near = |x: f32, y: f32| (x - y).abs() < 1.0;
    assert!(near(last.iter().sum(), 2_000.0), "{last:?}");
    // Its first token came at the end of tick 16 (800 ms), its predecessor's at the end of 14.
    let before_predecessor: f32 = last[..14].iter().sum();
    assert!(before_predecessor < 300.0, "{last:?}");
    // Every prompt is still placed whole, before its own first token.
    for id in 1..=8u64 {
        let p = sum_per_tick(&l, id, |i| i.prefill);
        assert!(near(p.iter().sum(), 2_000.0), "{id}: {p:?}");
        assert!(
            p[2 * id as usize..].iter().all(|&x| x == 0.0),
            "{id}: {p:?}"
        );
    }
}

#[test]
fn a_jump_of_the_conveyor_lands_between_the_first_tokens_that_show_it() {
    // Stream 1 (a 1,000-token prompt) has its first token at 100 ms; a non-streamed request
    // (6,000 tokens) and stream 3 (1,000) wait behind it. The engine prefills both by 300 ms
    // (35,000 tokens/s), far faster than the conveyor's first guess, so stream 3's first token
    // moves the conveyor thousands of tokens on at once. The engine ran them between 100 and
    // 300 ms: the request's estimated prefill lands there, not all in the tick of that token.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let scripts = [
        stream(1, 0, 1_000, 100 * MS, 20, 20 * MS),
        invisible(2, MS, 6_000, Vec::new(), None),
        stream(3, 2 * MS, 1_000, 300 * MS, 10, 20 * MS),
    ];
    for k in 1..=8 {
        let obs: Vec<Observation> = scripts.iter().filter_map(|s| s.at(k * 50 * MS)).collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
    }
    let prefill = sum_per_tick(&l, 2, |i| i.prefill);
    // Ticks end at 50, 100, ... ms: index 5 is (250, 300], the tick of stream 3's first token.
    let by_300: f32 = prefill[..6].iter().sum();
    assert!((by_300 - 6_000.0).abs() < 1.0, "{prefill:?}");
    assert_eq!(prefill[0], 0.0, "{prefill:?}");
    // Without the line: [0, 500, 500, 500, 500, 4000] (the jump all in the last tick).
    assert!(prefill[5] < 2_000.0, "{prefill:?}");
    assert!(prefill[3..5].iter().all(|&x| x > 1_000.0), "{prefill:?}");
}

#[test]
fn the_prompts_of_one_engine_step_run_through_all_of_it() {
    // Eight 2,000-token prompts prefilled back to back, a first token every 50 ms from 150 ms
    // (the conveyor learns ~30,000 tokens/s), then one 60 ms step, (500, 560], that ran the last
    // chunks of two 1,000-token prompts, A and B: both first tokens at 560 ms. Through the first
    // tokens, B's line starts halfway between Q8's (500) and its own, at 530 ms, and so crowds
    // its prompt into the step's second half; the step began at 500 ms (streams showed every
    // step), and so did B's prefill.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let mut scripts: Vec<Script> = (0..8)
        .map(|i| stream(i + 1, 0, 2_000, (150 + 50 * i) * MS, 1, MS))
        .collect();
    scripts.push(stream(9, MS, 1_000, 560 * MS, 1, MS));
    scripts.push(stream(10, 2 * MS, 1_000, 560 * MS, 1, MS));
    let hold = invisible(99, 3 * MS, 10, Vec::new(), None);
    let steps: Vec<u64> = (1..=50).chain(56..=70).map(|k| k * 10 * MS).collect();
    run_with_steps(&mut l, &scripts, &hold, &steps, 13);
    let b = sum_per_tick(&l, 10, |i| i.prefill);
    assert!((b.iter().sum::<f32>() - 1_000.0).abs() < 1.0, "{b:?}");
    // Ticks end every 50 ms: index 11 is (550, 600]. From 500 ms, 10 of its 60 ms lie there
    // (167 tokens); from the line's 530 ms, 10 of 30 (333).
    assert!(b[11] < 200.0, "{b:?}");
    assert!(b[10] > 800.0, "{b:?}");
}

#[test]
fn an_exact_prompt_count_moves_the_places_after_it() {
    // Stream S1 (1,000 tokens) at 0, a non-streamed answer A at 1 ms whose body suggested 4,000
    // tokens (its usage says 2,000 when it ends at 350 ms), stream S2 (1,000) at 2 ms. The engine
    // prefills 10,000 tokens/s, one after another: S1 until 100 ms, A until 300, S2 until 400. S1's
    // and S2's first tokens measure the throughput over the places between them, which A's
    // estimate had made 5,000 tokens long instead of 3,000 (16,700 tokens/s).
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let s1 = stream(1, 0, 1_000, 100 * MS, 3, 10 * MS);
    let a = invisible(
        2,
        MS,
        2_000,
        vec![310 * MS, 330 * MS],
        Some((350 * MS, Outcome::Ok)),
    );
    let s2 = stream(3, 2 * MS, 1_000, 400 * MS, 20, 50 * MS);
    for k in 1..=10 {
        let obs: Vec<Observation> = [&s1, &a, &s2]
            .iter()
            .filter_map(|s| s.at(k * 50 * MS))
            .map(|mut o| {
                if o.progress.id == 2 && o.progress.end_ns == 0 {
                    o.progress.prompt_tokens = 4_000;
                    o.progress.prompt_exact = false;
                }
                o
            })
            .collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
    }
    let rate = l.prefill_queue.rate();
    assert!((rate - 10_000.0).abs() < 1.0, "{rate}");
    // S2's place is the engine's cumulative prompt tokens: 1,000 + 2,000 + 1,000.
    let place = |id: u64| {
        l.slots
            .iter()
            .flatten()
            .find(|r| r.id == id)
            .map(|r| (r.queue_place, r.queue_prompt))
    };
    assert_eq!(place(3), Some((4_000.0, 1_000.0)));
}

/// Runs `requests` over twelve 50 ms ticks, every one held, beside a stream (id 2) decoding in
/// 10 ms engine steps up to 700 ms but for one long step, `(from_ms, to_ms]` (multiples of 10).
fn beside_a_decoding_stream(requests: &[Script], (from_ms, to_ms): (u64, u64)) -> Ledger {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let mut scripts = requests.to_vec();
    scripts.push(stream(2, 0, 10, 10 * MS, 60, 10 * MS));
    let hold = invisible(99, 3 * MS, 10, Vec::new(), None);
    let steps: Vec<u64> = (1..=from_ms / 10)
        .chain(to_ms / 10..=70)
        .map(|k| k * 10 * MS)
        .collect();
    run_with_steps(&mut l, &scripts, &hold, &steps, 12);
    l
}

/// Runs `waited` (id 1, a 1,000-token prompt) beside a decoding stream whose steps show one
/// 40 ms step, (400, 440], that ran the prompt and sampled its first token; checks that all
/// its prefill landed in the tick (400, 450] and returns the ledger.
fn prefilled_in_the_long_step(waited: Script) -> Ledger {
    let l = beside_a_decoding_stream(&[waited], (400, 440));
    let prefill = sum_per_tick(&l, 1, |i| i.prefill);
    assert!(
        (prefill.iter().sum::<f32>() - 1_000.0).abs() < 1.0,
        "{prefill:?}"
    );
    // Ticks end every 50 ms: index 8 is (400, 450].
    assert!(prefill[8] > 999.0, "{prefill:?}");
    l
}

#[test]
fn a_prompt_that_waited_for_a_sequence_slot_is_prefilled_in_its_long_step() {
    // The engine decodes in 10 ms steps; a 1,000-token prompt that arrived at 1 ms waited for a
    // sequence slot and ran in one 40 ms step, (400, 440], whose end sampled its first token.
    // At the default prefill rate (10,000 tokens/s) its prefill would have started at 340 ms,
    // over three ticks; the short steps before the long one say it had not started.
    let l = prefilled_in_the_long_step(stream(1, MS, 1_000, 440 * MS, 3, 10 * MS));
    // The conveyor had it from 10 ms (the other stream's first token): a wait for a slot.
    assert!(l.slot_gated > 0.1, "{}", l.slot_gated);
}

#[test]
fn an_answer_that_waited_for_a_sequence_slot_is_prefilled_in_its_long_step() {
    // As above for a non-streamed answer (arrived at 15 ms, once streams showed the steps): its
    // three tokens, counted back from its end at 460 ms over the steps, put its first token at
    // 440 ms, the end of the long step.
    prefilled_in_the_long_step(invisible(
        1,
        15 * MS,
        1_000,
        vec![440 * MS, 450 * MS, 460 * MS],
        Some((460 * MS, Outcome::Ok)),
    ));
}

#[test]
fn prompts_that_share_an_engine_step_are_placed_over_it_together() {
    // Two 300-token prompts arrived at 300 ms and ran together in one 80 ms engine step, (400,
    // 480], whose end sampled both first tokens. Each on its own (300 tokens at the default
    // 10,000 tokens/s: 30 ms before its first token) sat in (450, 480], and the step's first
    // 50 ms, the tick (400, 450], held only the decode beside them. Together they span (420,
    // 480]: half of each in that tick.
    let first = stream(1, 300 * MS, 300, 480 * MS, 3, 10 * MS);
    let second = stream(3, 300 * MS, 300, 480 * MS, 3, 10 * MS);
    let l = beside_a_decoding_stream(&[first, second], (400, 480));
    for id in [1, 3] {
        let prefill = sum_per_tick(&l, id, |i| i.prefill);
        assert!(
            (prefill.iter().sum::<f32>() - 300.0).abs() < 1.0,
            "{prefill:?}"
        );
        // Ticks end every 50 ms: index 8 is (400, 450] (about half: the learned rate moved).
        assert!((130.0..170.0).contains(&prefill[8]), "{id}: {prefill:?}");
    }
}

/// A 2,000-token stream arriving at 0 whose first token comes at 300 ms, run over ticks 1..=`k`
/// of 50 ms (with `slot_gated` set before the first); returns its prefill per held tick and
/// whether any of it is still an estimate.
fn stream_waiting_for_its_first_token(k: u64, slot_gated: f64) -> (Vec<f32>, bool) {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    l.slot_gated = slot_gated;
    // Still decoding at 400 ms, so still in flight; `hold` keeps every tick held.
    let s = stream(1, 0, 2_000, 300 * MS, 20, 10 * MS);
    let hold = invisible(99, 3 * MS, 10, Vec::new(), None);
    for t in 1..=k {
        let obs: Vec<Observation> = [&s, &hold]
            .iter()
            .filter_map(|x| x.at(t * 50 * MS))
            .collect();
        apply_50ms(&mut l, t, Some(1_000), &obs);
        check_books(&l);
    }
    let estimated = l
        .window
        .iter()
        .flat_map(|t| t.items.iter())
        .any(|i| i.slot == l.index[&1] && i.provisional && i.prefill > 0.0);
    (sum_per_tick(&l, 1, |i| i.prefill), estimated)
}

#[test]
fn a_stream_waiting_for_its_first_token_holds_the_conveyors_estimate_until_it_comes() {
    // At the default 10,000 tokens/s the conveyor serves 500 of its tokens per tick: while it
    // waits, its held ticks carry them (responses of streams ending meanwhile split with it).
    let (waiting, estimated) = stream_waiting_for_its_first_token(3, 0.0);
    assert!(estimated, "{waiting:?}");
    assert!(
        waiting.iter().all(|&x| (x - 500.0).abs() < 1.0),
        "{waiting:?}"
    );
    // Its first token at 300 ms places the true prompt: the estimate gives way, none doubled.
    let (placed, estimated) = stream_waiting_for_its_first_token(8, 0.0);
    assert!(!estimated, "{placed:?}");
    assert!(
        (placed.iter().sum::<f32>() - 2_000.0).abs() < 1.0,
        "{placed:?}"
    );
    // Over the 200 ms before it at the prefill rate (which the 300 ms wait lowered a little).
    assert!(placed[0].abs() < 1.0 && placed[1] < 20.0, "{placed:?}");
    assert!(placed[2..6].iter().all(|&x| x > 490.0), "{placed:?}");
}

#[test]
fn a_stream_gets_no_estimate_while_the_engine_holds_prompts_for_sequence_slots() {
    // Recent prompts waited for sequence slots, which the conveyor does not see: a stream
    // waiting for its first token may not be prefilling at all.
    let (waiting, estimated) = stream_waiting_for_its_first_token(3, 1.0);
    assert!(!estimated, "{waiting:?}");
    assert!(waiting.iter().all(|&x| x.abs() < 1e-3), "{waiting:?}");
}

#[test]
fn an_answer_the_sequence_slots_cannot_hold_waits_with_no_estimate() {
    // Two streams decode from 20 ms on: as far as the proxy has seen, the engine runs two
    // sequences at most, and has for over a second. An answer that came after them gets an
    // estimate unless the engine holds prompts back for sequence slots; then it waits for one.
    let newest_estimate = |slot_gated: f64| {
        let mut l = Ledger::new(LedgerConfig {
            settle_ticks: 20,
            ..cfg()
        })
        .expect("config");
        l.slot_gated = slot_gated;
        // Four answers ended, so the limit's estimate is used (they ran outside these ticks).
        for _ in 0..4 {
            l.seq_limit.note_answer(0, MS, 1);
        }
        let scripts = [
            stream(1, 0, 100, 20 * MS, 200, 10 * MS),
            stream(2, 0, 100, 20 * MS, 200, 10 * MS),
            invisible(3, 5 * MS, 400, Vec::new(), None),
        ];
        for t in 1..=30 {
            let obs: Vec<Observation> = scripts.iter().filter_map(|x| x.at(t * 50 * MS)).collect();
            apply_50ms(&mut l, t, Some(1_000), &obs);
            check_books(&l);
        }
        let estimate = l
            .window
            .iter()
            .last()
            .expect("held")
            .items
            .iter()
            .filter(|i| i.slot == l.index[&3] && i.provisional)
            .map(|i| i.prefill + i.decode)
            .sum::<f32>();
        let batch = l.batch();
        (estimate, (batch.sequences_max, batch.held_for_slots))
    };
    assert!(newest_estimate(0.0).0 > 1.0, "{:?}", newest_estimate(0.0));
    assert_eq!(newest_estimate(1.0).0, 0.0);
    // `/stats` shows the estimate and why it applies.
    let (sequences_max, held_for_slots) = newest_estimate(1.0).1;
    assert_eq!((sequences_max, held_for_slots), (2, true));
    assert!(!newest_estimate(0.0).1 .1);
}

/// Five seconds of 50 ms ticks over `scripts`, with the engine's gauges read every 250 ms as
/// `gauges(now)` gives them (`(waiting, running)`; `None`: not read).
fn with_engine_gauges(scripts: &[Script], gauges: impl Fn(u64) -> Option<(u32, u32)>) -> Ledger {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 100,
        ..cfg()
    })
    .expect("config");
    for t in 1..=100 {
        let now = t * 50 * MS;
        let obs: Vec<Observation> = scripts.iter().filter_map(|x| x.at(now)).collect();
        if let Some((waiting, running)) = gauges(now).filter(|_| t % 5 == 0) {
            let reading = crate::observe::EngineQueueReading {
                at_ns: now,
                waiting,
                running,
            };
            l.note_engine_queue(&[reading], &obs);
        }
        apply_50ms(&mut l, t, Some(1_000), &obs);
        check_books(&l);
    }
    l
}

#[test]
fn an_answer_the_engine_gauges_show_waiting_at_two_readings_gets_no_estimate() {
    // Three non-streamed answers; the engine's gauges show one running and two waiting: the two
    // newest. With the engine running at the most it has shown in most readings (twenty
    // readings, all at the most), they wait with no estimated work; without the readings, or
    // with the engine not at its most, they get the conveyor's estimate.
    let newest_estimates = |readings: bool, running_most: bool| {
        let scripts = [
            invisible(1, MS, 100, Vec::new(), None),
            invisible(2, 2 * MS, 100, Vec::new(), None),
            invisible(3, 3 * MS, 100, Vec::new(), None),
        ];
        let l = with_engine_gauges(&scripts, |now| {
            // A larger batch seen once long ago, where the engine is not at its most now.
            let running = if running_most || now > 250 * MS { 1 } else { 4 };
            readings.then_some((2, running))
        });
        let last = l.window.iter().last().expect("held");
        let estimate = |id: u64| {
            last.items
                .iter()
                .filter(|i| i.slot == l.index[&id] && i.provisional)
                .map(|i| i.prefill + i.decode)
                .sum::<f32>()
        };
        let batch = l.batch();
        assert_eq!(batch.engine_queue_readings, if readings { 20 } else { 0 });
        (
            [estimate(1), estimate(2), estimate(3)],
            batch.engine_at_limit,
        )
    };
    let ([first, second, third], at_limit) = newest_estimates(true, true);
    assert!(at_limit);
    assert!(first > 1.0, "the running one is estimated: {first}");
    assert_eq!((second, third), (0.0, 0.0));
    for (readings, running_most) in [(false, true), (true, false)] {
        let (e, at_limit) = newest_estimates(readings, running_most);
        assert!(!at_limit);
        assert!(
            e.iter().all(|&x| x > 1.0),
            "{readings} {running_most}: {e:?}"
        );
    }
}

#[test]
fn nothing_behind_an_answer_waiting_in_the_engines_queue_is_prefilled() {
    // Engines admit in arrival order: while the gauges show answer 2 waiting, the conveyor stops
    // at its prompt, and answer 3, which came after it (and after the previous reading, so not
    // itself held back yet), gets no estimated prefill either. Without the readings it gets its
    // prompt at the conveyor's rate.
    let prefill_of_the_last = |readings: bool| {
        let scripts = [
            invisible(1, MS, 100, Vec::new(), None),
            invisible(2, 2 * MS, 100, Vec::new(), None),
            invisible(3, 4_900 * MS, 100, Vec::new(), None),
        ];
        let l = with_engine_gauges(&scripts, |now| {
            // One running throughout; answer 2 waits, and answer 3 with it once it came.
            let waiting = if now >= 4_900 * MS { 2 } else { 1 };
            readings.then_some((waiting, 1))
        });
        assert_eq!(l.batch().engine_at_limit, readings);
        sum_per_tick(&l, 3, |i| i.prefill).iter().sum::<f32>()
    };
    let without = prefill_of_the_last(false);
    assert!((without - 100.0).abs() < 1.0, "{without}");
    assert_eq!(prefill_of_the_last(true), 0.0);
}
