//! Where work lands and what responses carry before settlement: decode tokens one per engine step,
//! a non-streamed answer counted back over the steps, the per-sequence decode rate, and the
//! provisional split of held ticks.

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

#[test]
fn a_streams_tokens_are_placed_one_per_engine_step_not_evenly_in_time() {
    // Two tokens seen at 45 ms, two more by 140 ms; the steps between ended at 105 and 140 ms:
    // one token ran in the long step (45, 105], one in the short step (105, 140].
    let s = Script {
        id: 1,
        arrival: 0,
        prompt: 0,
        visible: true,
        tokens: vec![40 * MS, 45 * MS, 105 * MS, 140 * MS],
        end: None,
        prefill_ns: 0,
    };
    let steps = [20 * MS, 40 * MS, 45 * MS, 105 * MS, 140 * MS];
    let d = decode_per_tick(&[s], &steps, 3, 1);
    let near = |a: f32, b: f32| (a - b).abs() < 0.01;
    // Evenly in time over (45, 140] would give 2.105, 1.053 and 0.842.
    assert!(near(d[0], 2.0 + 5.0 / 60.0), "{d:?}");
    assert!(near(d[1], 50.0 / 60.0), "{d:?}");
    assert!(near(d[2], 5.0 / 60.0 + 1.0), "{d:?}");
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

/// A stream decoding every 10 ms beside a request whose progress is invisible (which holds every
/// tick), over four 50 ms ticks of `energy(k)` µJ, the fourth announced (its energy to come, a slow
/// meter's; `energy(4)` is then the sampler's estimate of it) when `announce_last`; the books
/// checked after each. Returns the ledger and the scripts.
fn stream_beside_an_invisible(
    tentative_split: bool,
    announce_last: bool,
    energy: impl Fn(u64) -> Option<u64>,
) -> (Ledger, [Script; 2]) {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        tentative_split,
        ..cfg()
    })
    .expect("config");
    let scripts = [
        Script {
            id: 1,
            arrival: 0,
            prompt: 100,
            visible: true,
            tokens: (1..=19).map(|i| i * 10 * MS).collect(),
            end: None,
            prefill_ns: 0,
        },
        invisible(2, 0, 100, Vec::new(), None),
    ];
    for k in 1..=4 {
        let end = k * 50 * MS;
        let obs: Vec<Observation> = scripts.iter().filter_map(|x| x.at(end)).collect();
        l.apply(
            TickSpan {
                energy_later: announce_last && k == 4,
                seq: k,
                start_ns: end - 50 * MS,
                end_ns: end,
                delta_uj: energy(k),
            },
            &obs,
        );
        check_books(&l);
    }
    (l, scripts)
}

/// The stream's published figures (it registered first).
fn published(l: &Ledger) -> RequestEnergy {
    l.observed_energy()
        .next()
        .flatten()
        .expect("stream observed first")
}

/// The stream of [`stream_beside_an_invisible`]'s published figures and the ledger's totals.
fn published_while_held(tentative_split: bool) -> (RequestEnergy, LedgerTotals) {
    let (l, _) = stream_beside_an_invisible(tentative_split, false, |_| Some(10_000));
    (published(&l), l.totals())
}

#[test]
fn a_response_carries_its_share_of_held_ticks_split_provisionally() {
    let (p, t) = published_while_held(true);
    // Nothing settled yet: the invisible request holds every tick.
    assert_eq!(t.attributed_uj, 0, "{t:?}");
    assert_eq!(t.held_ticks, 4);
    // All four ticks (the newest too) are split provisionally: the stream has its share of their
    // 40,000 µJ (about half: the invisible request's estimate has the same prompt and decodes at
    // the stream's rate), and the tokens they paid for (all 19 it decoded so far) are not priced
    // again.
    assert!(p.energy_uj > 15_000 && p.energy_uj <= 40_000, "{p:?}");
    assert_eq!(p.settled_tokens.decode, 19, "{p:?}");
    assert_eq!(p.settled_tokens.prefill, 100, "{p:?}");
    // Without the provisional split the figure is only what settled: nothing.
    let (p, _) = published_while_held(false);
    assert_eq!((p.energy_uj, p.settled_tokens.decode), (0, 0), "{p:?}");
}

#[test]
fn a_tick_whose_energy_is_still_to_come_is_split_on_an_estimate() {
    // Before its fill, the announced tick is split provisionally on its duration at the latest
    // complete tick's power (10,000 µJ per 50 ms here, as it then measures): the response carries
    // the same figure as if its energy had come with it. Left out, the stream's last 50 ms were
    // priced per token instead (with the update lag of `sampler::spread`, which announces every
    // tick of a 50 ms counter read 25 ms after its updates, the figures read in the real-time run
    // went 4.3-4.7 / 26.7-26.8 -> 5.1-5.9 / 32.6-34.3 %, 8B, two runs each).
    // (No estimate from the sampler: nothing of the tick measured yet.)
    let no_estimate = |k| (k < 4).then_some(10_000);
    let announced = published(&stream_beside_an_invisible(true, true, no_estimate).0);
    let whole = published(&stream_beside_an_invisible(true, false, |_| Some(10_000)).0);
    assert_eq!(
        announced.energy_uj, whole.energy_uj,
        "{announced:?} {whole:?}"
    );
    assert_eq!(announced.settled_tokens.decode, 19, "{announced:?}");
}

/// The stream of [`stream_beside_an_invisible`]'s published figures before and after a fifth tick,
/// its fourth tick drawing 30,000 µJ: announced and then filled when `fill_late` (split on an
/// estimate of 10,000 µJ meanwhile, the previous tick's power: the sampler had none), else whole.
fn published_after_a_fill(fill_late: bool) -> (RequestEnergy, RequestEnergy) {
    let energy = |k| match k {
        4 if fill_late => None,
        4 => Some(30_000),
        _ => Some(10_000),
    };
    let (mut l, scripts) = stream_beside_an_invisible(true, fill_late, energy);
    let before = published(&l);
    if fill_late {
        l.fill(150 * MS, 200 * MS, Some(30_000));
        check_books(&l);
    }
    let obs: Vec<Observation> = scripts.iter().filter_map(|x| x.at(250 * MS)).collect();
    apply_50ms(&mut l, 5, Some(10_000), &obs);
    check_books(&l);
    (before, published(&l))
}

#[test]
fn an_announced_tick_is_split_on_the_samplers_estimate_of_it() {
    // The sampler saw the counter's update within the tick: its estimate (what was measured of
    // the tick, scaled to it) says 30,000 µJ where the previous tick's power would say 10,000.
    let energy = |k| Some(if k == 4 { 30_000 } else { 10_000 });
    let announced = published(&stream_beside_an_invisible(true, true, energy).0);
    let whole = published(&stream_beside_an_invisible(true, false, energy).0);
    assert_eq!(
        announced.energy_uj, whole.energy_uj,
        "{announced:?} {whole:?}"
    );
    // Without it, the tick is split on the previous tick's power: the stream has about half of
    // 10,000 µJ instead of half of 30,000.
    let without =
        published(&stream_beside_an_invisible(true, true, |k| (k < 4).then_some(10_000)).0);
    assert!(
        announced.energy_uj > without.energy_uj + 8_000,
        "{announced:?} {without:?}"
    );
}

#[test]
fn a_fill_replaces_the_estimate_its_tick_was_split_on() {
    // The fill says the tick drew three times the estimate: its split is made again on it (kept,
    // the estimate would have stayed in the figures until the tick settled).
    let (estimated, filled) = published_after_a_fill(true);
    let (whole_before, whole) = published_after_a_fill(false);
    assert!(
        estimated.energy_uj + 8_000 < whole_before.energy_uj,
        "{estimated:?} {whole_before:?}"
    );
    assert_eq!(filled.energy_uj, whole.energy_uj, "{filled:?} {whole:?}");
}

#[test]
fn a_provisional_split_is_made_again_when_its_work_changed() {
    // A non-streamed answer (B) ends at 140 ms: its true work replaces its estimate in ticks whose
    // provisional split was already made. Within a tick or two those splits follow the new work,
    // so a response ending now carries its share of the ticks as they stand.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 20,
        ..cfg()
    })
    .expect("config");
    let a = stream(1, 0, 100, 20 * MS, 40, 10 * MS);
    let b = invisible(
        2,
        0,
        800,
        (0..10).map(|i| 40 * MS + i * 10 * MS).collect(),
        Some((140 * MS, Outcome::Ok)),
    );
    // Never answered: holds every tick, so the splits stay provisional for inspection.
    let hold = invisible(3, 0, 10, Vec::new(), None);
    for k in 1..=6 {
        let obs: Vec<Observation> = [&a, &b, &hold]
            .iter()
            .filter_map(|s| s.at(k * 50 * MS))
            .collect();
        apply_50ms(&mut l, k, Some(10_000), &obs);
        check_books(&l);
    }
    let slot_b = l.index[&2];
    let now = sum_per_tick(&l, 2, |i| i.prefill + i.decode);
    let mut checked = 0;
    for (tick, now) in l.window.iter().zip(now) {
        let Some(parts) = &tick.tentative else {
            continue;
        };
        // The tokens the split saw for B are B's tokens there now.
        let split: f32 = parts
            .iter()
            .filter(|t| t.slot == slot_b)
            .map(|t| t.tokens[0] + t.tokens[1])
            .sum();
        assert!(
            (split - now).abs() < 0.5,
            "tick {}: split saw {split}, now {now}",
            tick.seq
        );
        checked += 1;
    }
    assert!(checked >= 3, "{checked} ticks split");
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
