//! Where work lands: decode tokens one per engine step, a non-streamed answer counted back over
//! the steps (and its prefill over the time streams' prefills left free), the per-sequence decode
//! rate. What responses carry before settlement is in `tentative`.

use super::*;

/// Runs ticks 1..=`ticks` of 50 ms over `scripts` and `hold`, noting the engine step boundaries
/// `steps` as they fall in each tick; the steps are covered as a stream decoding through them
/// shows them (every one between the first and the last).
pub(super) fn run_with_steps(
    l: &mut Ledger,
    scripts: &[Script],
    hold: &Script,
    steps: &[u64],
    ticks: u64,
) {
    for w in steps.windows(2) {
        l.steps.cover(w[0], w[1]);
    }
    for k in 1..=ticks {
        tick_with_steps(l, k, steps, scripts.iter().chain([hold]));
    }
}

/// Tick `k` of 50 ms: notes the engine step boundaries of `steps` that fall in it, applies what
/// `scripts` show at its end, and checks the books.
pub(super) fn tick_with_steps<'a>(
    l: &mut Ledger,
    k: u64,
    steps: &[u64],
    scripts: impl IntoIterator<Item = &'a Script>,
) {
    let end = k * 50 * MS;
    let new: Vec<u64> = steps
        .iter()
        .copied()
        .filter(|&t| t <= end && t > end - 50 * MS)
        .collect();
    l.note_steps(&new);
    let obs: Vec<Observation> = scripts.into_iter().filter_map(|s| s.at(end)).collect();
    apply_50ms(l, k, Some(1_000), &obs);
    check_books(l);
}

/// Runs ticks 1..=`ticks` of 50 ms over `scripts`, noting the engine step boundaries `steps` as
/// they fall in each tick, and returns each held tick's decode tokens for request `id`. A request
/// that never ends and whose progress is invisible keeps every tick held for inspection.
fn decode_per_tick(scripts: &[Script], steps: &[u64], ticks: u64, id: u64) -> Vec<f32> {
    work_per_tick(scripts, steps, ticks, id)
        .into_iter()
        .map(|(decode, _)| decode)
        .collect()
}

/// [`decode_per_tick`] with the context tokens beside the decode tokens.
fn work_per_tick(scripts: &[Script], steps: &[u64], ticks: u64, id: u64) -> Vec<(f32, f32)> {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let hold = invisible(99, 0, 10, Vec::new(), None);
    run_with_steps(&mut l, scripts, &hold, steps, ticks);
    assert_eq!(l.window.len() as u64, ticks, "every tick is still held");
    let decode = sum_per_tick(&l, id, |i| i.decode);
    let context = sum_per_tick(&l, id, |i| i.context);
    decode.into_iter().zip(context).collect()
}

/// Stream 1, arrived at 0 with no prompt, its tokens seen at `tokens` and still in flight.
fn stream_in_flight(tokens: Vec<u64>) -> Script {
    Script {
        id: 1,
        arrival: 0,
        prompt: 0,
        visible: true,
        tokens,
        end: None,
        prefill_ns: 0,
    }
}

#[test]
fn a_streams_tokens_are_placed_one_per_engine_step_not_evenly_in_time() {
    // Two tokens seen at 45 ms, two more by 140 ms; the steps between ended at 105 and 140 ms:
    // one token ran in the long step (45, 105], one in the short step (105, 140].
    let s = stream_in_flight(vec![40 * MS, 45 * MS, 105 * MS, 140 * MS]);
    let steps = [20 * MS, 40 * MS, 45 * MS, 105 * MS, 140 * MS];
    let d = decode_per_tick(&[s], &steps, 3, 1);
    let near = |a: f32, b: f32| (a - b).abs() < 0.01;
    // Evenly in time over (45, 140] would give 2.105, 1.053 and 0.842.
    assert!(near(d[0], 2.0 + 5.0 / 60.0), "{d:?}");
    assert!(near(d[1], 50.0 / 60.0), "{d:?}");
    assert!(near(d[2], 5.0 / 60.0 + 1.0), "{d:?}");
}

#[test]
fn steps_closer_than_half_a_split_part_share_an_item() {
    // Streams not in lockstep show a step every millisecond: four tokens over (10, 50] ms are
    // placed one per step still, but in items of at least 5 ms (8 of them, not 40).
    let s = stream_in_flight(vec![10 * MS, 50 * MS, 50 * MS, 50 * MS]);
    let steps: Vec<u64> = (1..=100).map(|k| k * MS).collect();
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let hold = invisible(99, 0, 10, Vec::new(), None);
    run_with_steps(&mut l, &[s], &hold, &steps, 1);
    let slot = l.index[&1];
    let items: Vec<_> = l
        .window
        .iter()
        .flat_map(|t| t.items.iter().filter(|i| i.slot == slot && i.decode > 0.0))
        .collect();
    // The first token is a point at 10 ms; the other three over the 40 steps after it.
    assert_eq!(items.len(), 1 + 8, "{items:?}");
    let decode: f32 = items.iter().map(|i| i.decode).sum();
    assert!((decode - 4.0).abs() < 1e-4, "{decode}");
    assert!(items
        .iter()
        .skip(1)
        .all(|i| (i.decode - 3.0 / 8.0).abs() < 1e-4));
}

#[test]
fn a_non_streamed_answer_is_placed_back_from_its_end_one_token_per_step() {
    // Arrives at 30 ms, answers 2 tokens at 140 ms. The steps streams showed end at 55 and
    // 140 ms, so its first token came at 55 ms and its decode ran over (55, 140]; the default
    // per-sequence rate (30 tokens/s) would have started it at 74 ms.
    let b = invisible(
        2,
        30 * MS,
        0,
        vec![55 * MS, 140 * MS],
        Some((140 * MS, Outcome::Ok)),
    );
    let steps = [20 * MS, 40 * MS, 45 * MS, 55 * MS, 140 * MS];
    let d = decode_per_tick(&[b], &steps, 3, 2);
    let near = |a: f32, b: f32| (a - b).abs() < 0.01;
    assert!(near(d[0], 0.0), "{d:?}");
    assert!(near(d[1], 2.0 * 45.0 / 85.0), "{d:?}");
    assert!(near(d[2], 2.0 * 40.0 / 85.0), "{d:?}");
}

#[test]
fn a_reconciled_answer_keeps_no_provisional_context() {
    // A non-streamed answer with a 1,000-token prompt is estimated to decode while in flight
    // (each estimated token reading ~1,000 context tokens), then ends with 2 tokens. Its true
    // decode reads 1,000 + 1,001 context tokens; the estimate's context must go with the
    // estimate's tokens, or it keeps weighing γ per token for work that never ran.
    let b = invisible(
        2,
        0,
        1_000,
        vec![390 * MS, 400 * MS],
        Some((400 * MS, Outcome::Ok)),
    );
    let steps = [20 * MS, 40 * MS, 60 * MS, 390 * MS, 400 * MS];
    let w = work_per_tick(&[b], &steps, 8, 2);
    let decode: f32 = w.iter().map(|x| x.0).sum();
    let context: f32 = w.iter().map(|x| x.1).sum();
    assert!((decode - 2.0).abs() < 0.01, "{w:?}");
    assert!((context - 2_001.0).abs() < 1.0, "{w:?}");
}

/// Runs `script` alone for `ticks` ticks of 50 ms with a settlement lag of `settle_ticks`, settles
/// everything and returns its final work.
fn final_work(script: &Script, settle_ticks: usize, ticks: u64) -> SettledTokens {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks,
        ..cfg()
    })
    .expect("config");
    let mut finals = Vec::new();
    for k in 1..=ticks {
        let obs: Vec<Observation> = script.at(k * 50 * MS).into_iter().collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
        l.drain_final(&mut finals);
    }
    l.flush();
    l.drain_final(&mut finals);
    finals
        .iter()
        .find(|f| f.id == script.id)
        .expect("final")
        .energy
        .settled_tokens
}

#[test]
fn a_reconciled_answer_totals_its_true_work_whatever_settled_on_its_estimate() {
    // An invisible request decodes 20 tokens in 400 ms (50 tokens/s) under a settlement lag of
    // 4 ticks: its first 200 ms settle on the provisional estimate (the default 30 tokens/s,
    // about 6 tokens), the rest holds until it ends. Its final work is its true count: the held
    // part makes up what the estimate missed instead of adding only its own share (16).
    let b = invisible(
        7,
        0,
        100,
        (1..=20).map(|i| i * 20 * MS).collect(),
        Some((400 * MS, Outcome::Ok)),
    );
    let t = final_work(&b, 4, 12);
    assert_eq!(t.prefill, 100, "{t:?}");
    assert!((19..=20).contains(&t.decode), "{t:?}");
}

#[test]
fn a_reconciled_answer_whose_estimate_overshot_still_takes_its_held_ticks() {
    // Alone for 1 s with 5 tokens (the default estimate says ~25): the settled part already
    // holds more work than it did, so its held part is scaled down, but never to nothing: the
    // held ticks' energy is still its own, not unattributed (scaled to nothing, 5 of its 20
    // ticks went unattributed). One tick still did until stop 28: the one before its first token
    // as the default rate places it (833 ms), where its estimate was dropped; with no stream to
    // show the steps, its first token is now the prefill conveyor's, and its prompt is spread
    // from the earlier of the two prefill starts, over that tick too.
    let mut l = Ledger::new(cfg()).expect("config");
    let b = invisible(
        8,
        0,
        100,
        (1..=5).map(|i| i * 200 * MS).collect(),
        Some((1_000 * MS, Outcome::Ok)),
    );
    for k in 1..=24 {
        let obs: Vec<Observation> = b.at(k * 50 * MS).into_iter().collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
    }
    l.flush();
    let t = l.totals();
    assert_eq!(t.unattributed_uj, 0, "{t:?}");
}

#[test]
fn an_invisible_request_aborted_keeps_its_estimated_decode() {
    // A non-streamed request whose client leaves after 1 s: no usage ever comes, but the engine
    // prefilled and decoded until the abort. Its record keeps the estimate carried to the abort
    // (default rates: 10,000 prompt tokens/s, then 30 tokens/s: about 30 tokens), not only the
    // prefill. Every tick is held until the abort (a long lag), so nothing settled before it.
    let b = invisible(9, 0, 100, Vec::new(), Some((1_000 * MS, Outcome::Aborted)));
    let t = final_work(&b, 40, 24);
    assert_eq!(t.prefill, 100, "{t:?}");
    assert!((25..=31).contains(&t.decode), "{t:?}");
}

#[test]
fn the_decode_rate_is_per_sequence_whatever_the_choices() {
    let mut l = Ledger::new(cfg()).expect("config");
    // n = 2: both choices advance every 10 ms, so the count grows by 2 per step: 100 tokens/s
    // per sequence, the rate at which a non-streamed request's every choice decodes.
    let tokens: Vec<u64> = (1..=100).flat_map(|i| [i * 10 * MS, i * 10 * MS]).collect();
    let s = Script {
        id: 1,
        arrival: 0,
        prompt: 10,
        visible: true,
        tokens,
        end: None,
        prefill_ns: 0,
    };
    for k in 1..=20 {
        let end = k * 50 * MS;
        let obs: Vec<Observation> = s
            .at(end)
            .map(|mut o| {
                o.choices = 2;
                o
            })
            .into_iter()
            .collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
    }
    let (_, per_sequence) = l.rates();
    assert!((per_sequence - 100.0).abs() < 5.0, "{per_sequence}");
}

#[test]
fn a_decode_rate_below_one_token_per_tick_is_learned() {
    // Three streams decoding a token every 140 ms (about 7 tokens/s, below the one token per
    // 50 ms tick that each tick's whole counts can show), staggered: most ticks show each of
    // them 0 tokens, some 1. The rate taken per tick could not go below 20 tokens/s.
    let mut l = Ledger::new(cfg()).expect("config");
    let scripts: Vec<Script> = (0..3)
        .map(|i| Script {
            id: i + 1,
            arrival: 0,
            prompt: 10,
            visible: true,
            tokens: (1..=40).map(|k| k * 140 * MS + i * 45 * MS).collect(),
            end: None,
            prefill_ns: 0,
        })
        .collect();
    for k in 1..=80 {
        let obs: Vec<Observation> = scripts.iter().filter_map(|s| s.at(k * 50 * MS)).collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
    }
    let (_, per_sequence) = l.rates();
    assert!((per_sequence - 1e3 / 140.0).abs() < 1.5, "{per_sequence}");
}

#[test]
fn a_streams_estimate_settled_before_its_first_token_counts_towards_its_prompt() {
    // A 1,000-token stream waits 400 ms for its first token with ticks settling after 2: the
    // conveyor's estimate of its prefill settles in the ticks it waited in, and its first token
    // places only the rest, so its prompt is counted once.
    let s = stream(1, 10 * MS, 1_000, 400 * MS, 5, 10 * MS);
    let w = final_work(&s, 2, 14);
    assert_eq!((w.prefill, w.decode), (1_000, 5), "{w:?}");
}

#[test]
fn an_answers_estimated_decode_follows_the_engine_steps_streams_show() {
    // A non-streamed answer in flight with no prompt; its estimate decodes from the second
    // tick. Streams show one long step in the second tick and five in the third: it decoded one
    // token per step, not the same count per tick (at the rate, 1.5 in each).
    let b = invisible(2, 10 * MS, 0, Vec::new(), None);
    let steps: Vec<u64> = [10, 20, 30, 40, 50, 100, 110, 120, 130, 140, 150]
        .iter()
        .map(|&t| t * MS)
        .collect();
    let d = decode_per_tick(&[b], &steps, 3, 2);
    let near = |a: f32, b: f32| (a - b).abs() < 0.01;
    assert!(near(d[1], 1.0) && near(d[2], 5.0), "{d:?}");
}

#[test]
fn an_answers_prefill_is_counted_back_over_the_time_streams_prefills_left_free() {
    let mut l = Ledger::new(cfg()).expect("config");
    // Streams' prefills over 100-200 ms and 250-300 ms.
    l.stream_prefills
        .extend([(100 * MS, 200 * MS), (250 * MS, 300 * MS)]);
    // 150 ms of prefill before a first token at 400 ms: 100 ms free after 300, 50 before 250.
    assert_eq!(l.back_from_in_free_time(400 * MS, 150 * MS, 0), 200 * MS);
    // Not before the request's arrival.
    assert_eq!(
        l.back_from_in_free_time(400 * MS, 150 * MS, 220 * MS),
        220 * MS
    );
    // With nothing in the way, its own duration back.
    assert_eq!(l.back_from_in_free_time(90 * MS, 50 * MS, 0), 40 * MS);
    // Its first token inside a stream's prefill: the 50 ms between the two, then 10 before.
    assert_eq!(l.back_from_in_free_time(280 * MS, 60 * MS, 0), 90 * MS);
}
