//! Reconciliation of non-streamed answers when they end: their true counts replace their
//! estimate, and their prompt keeps the prefill conveyor's date where counting their tokens back
//! over the steps streams showed misses steps.

use super::placement::tick_with_steps;
use super::*;

/// Ends of the held 50 ms ticks where request `id` has more than one prompt token placed.
fn ends_of_ticks_with_prefill(l: &Ledger, id: u64) -> Vec<u64> {
    let first = l.window.front().map_or(0, |t| t.start_ns);
    sum_per_tick(l, id, |i| f64::from(i.prefill))
        .iter()
        .enumerate()
        .filter(|(_, p)| **p > 1.0)
        .map(|(i, _)| first + (i as u64 + 1) * 50 * MS)
        .collect()
}

/// A ledger holding ticks up to 40 (2 s) for late work, splitting at fixed unit weights (a
/// prompt token and a decode token alike), so that a test can count where work went.
fn held_for_40_ticks_at_unit_weights() -> Ledger {
    Ledger::new(LedgerConfig {
        settle_ticks: 40,
        calibration: CalibrationConfig {
            fixed: true,
            ..unit_weights()
        },
        ..cfg()
    })
    .expect("config")
}

#[test]
fn invisible_requests_are_reconciled_with_their_true_counts() {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 40,
        calibration: unit_weights(),
        ..cfg()
    })
    .expect("config");
    // A non-streaming request and a stream, both for 0..500 ms. The stream makes 10 tokens; the
    // hidden one makes 30 (well above the 30 tok/s estimate), only known at the end.
    let hidden = invisible(
        1,
        0,
        0,
        (0..30).map(|i| (i * 16 + 10) * MS).collect(),
        Some((500 * MS, Outcome::Ok)),
    );
    let visible = Script {
        end: Some((500 * MS, Outcome::Ok)),
        ..stream(2, 0, 0, 10 * MS, 10, 49 * MS)
    };
    let done = run(&mut l, &[hidden, visible], 12, |_| Some(1_000));
    let e = |id| {
        done.iter()
            .find(|f| f.id == id)
            .map(|f| f.energy.energy_uj)
            .unwrap_or(0)
    };
    // 10 ticks of 1000 uJ, in the window the whole time: 30:10 work.
    assert_eq!(e(1) + e(2), 10_000);
    assert!(e(1).abs_diff(7_500) < 600, "hidden got {}", e(1));
}

/// A non-streamed answer whose first token the steps streams showed would date too early (the
/// only stream pauses while the answer decodes, so counting its tokens back over the steps seen
/// jumps the gap) keeps the prefill conveyor's date for its prompt: its prefill stays over
/// (300, 500] ms, where the conveyor put it, instead of moving before 400 ms.
#[test]
fn an_answer_keeps_the_conveyors_prefill_date_when_the_step_count_jumps_a_gap() {
    let l = gap_after_its_end();
    // Its prompt, held or settled, is its true count.
    let per_tick = sum_per_tick(&l, 3, |i| f64::from(i.prefill));
    let total: f64 = per_tick.iter().sum::<f64>()
        + l.slots[l.index[&3] as usize]
            .as_ref()
            .map_or(0.0, |r| r.settled_work[0]);
    assert!((total - 2_000.0).abs() < 1.0, "prefill {total}");
    // Its prefill runs to the tick ending at 500 ms, the conveyor's date (the count's would stop
    // at 400 ms and leave the ticks after it without work).
    let prefill_ends = ends_of_ticks_with_prefill(&l, 3);
    assert_eq!(prefill_ends.last(), Some(&(500 * MS)), "{prefill_ends:?}");
    assert!(
        prefill_ends.first() >= Some(&(350 * MS)),
        "{prefill_ends:?}"
    );
}

/// The scenario of the two tests above and below, run to the tick in which the answer (request
/// 3) ended: a stream decoding every 10 ms until 390 ms, then another stream's two tokens at
/// 1,000 and 1,010 ms, the only steps the proxy sees; the answer, 2,000 prompt tokens from
/// 300 ms (200 ms at the default 10,000 tokens/s), three tokens, the last at 1,020 ms; a
/// one-token answer in flight from 250 ms to past the end keeps the ticks held.
fn gap_after_its_end() -> Ledger {
    let mut l = held_for_40_ticks_at_unit_weights();
    let a = stream(1, 0, 100, 20 * MS, 38, 10 * MS);
    let b = stream(2, 990 * MS, 1, 1_000 * MS, 2, 10 * MS);
    let hidden = invisible(
        3,
        300 * MS,
        2_000,
        vec![500 * MS, 760 * MS, 1_020 * MS],
        Some((1_020 * MS, Outcome::Ok)),
    );
    let keeper = invisible(
        4,
        250 * MS,
        1,
        vec![1_400 * MS],
        Some((1_500 * MS, Outcome::Ok)),
    );
    let steps: Vec<u64> = a.tokens.iter().chain(&b.tokens).copied().collect();
    let scripts = [a, b, hidden, keeper];
    // Steps noted as they fall, but covered only where the streams themselves show them.
    for k in 1..=21u64 {
        tick_with_steps(&mut l, k, &steps, &scripts);
    }
    l
}

/// Before any stream has shown the engine's steps (a run's first answers), counting an answer's
/// tokens back has nothing to count on: its prompt keeps the conveyor's date in measured ticks
/// instead of moving to just before its decode at the engine's average rates, which left the
/// ticks the engine prefilled it in with no work and their energy unattributed.
#[test]
fn an_answer_no_stream_has_dated_keeps_the_conveyors_prefill() {
    let mut l = held_for_40_ticks_at_unit_weights();
    // 2,000 prompt tokens from 0 ms (200 ms at the default 10,000 tokens/s), three tokens, the
    // last at 1,020 ms; a one-token answer keeps the ticks held past its end.
    let hidden = invisible(
        1,
        0,
        2_000,
        vec![500 * MS, 760 * MS, 1_020 * MS],
        Some((1_020 * MS, Outcome::Ok)),
    );
    let keeper = invisible(2, 0, 1, vec![1_400 * MS], Some((1_500 * MS, Outcome::Ok)));
    let scripts = [hidden, keeper];
    let mut prefill_ends = Vec::new();
    for k in 1..=21u64 {
        let end = k * 50 * MS;
        let obs: Vec<Observation> = scripts.iter().filter_map(|s| s.at(end)).collect();
        apply_50ms(&mut l, k, Some(1_000), &obs);
        check_books(&l);
        if k == 21 {
            prefill_ends = ends_of_ticks_with_prefill(&l, 1);
        }
    }
    // Its prefill stays in the first ticks (the count at 30 tokens/s would put it at ~720-920 ms).
    assert!(
        prefill_ends.last().is_some_and(|&e| e <= 300 * MS),
        "{prefill_ends:?}"
    );
}

/// The same gap, seen the other way: counting the answer's three tokens back over the steps seen
/// lands at ~390 ms, but no stream decoded over most of (390, 1,020] ms, so steps went unseen
/// there; the answer decodes from the conveyor's first token (500 ms) instead, and its prompt is
/// spread from the earlier of the two prefill starts to it.
#[test]
fn an_answer_counted_over_unseen_steps_decodes_from_the_conveyors_first_token() {
    let l = gap_after_its_end();
    let decode = sum_per_tick(&l, 3, |i| f64::from(i.decode));
    let first = l.window.front().map_or(0, |t| t.end_ns);
    let ends = |pred: &dyn Fn(u64) -> bool| -> f64 {
        decode
            .iter()
            .enumerate()
            .filter(|(i, _)| pred(first + *i as u64 * 50 * MS))
            .map(|(_, d)| d)
            .sum()
    };
    // Nothing decoded before the conveyor's first token (held from before the count's).
    assert!(first <= 350 * MS, "{first}");
    assert!(ends(&|e| e <= 500 * MS) < 1e-3, "{decode:?}");
    assert!((ends(&|e| e > 500 * MS) - 3.0).abs() < 1e-3, "{decode:?}");
}

#[test]
fn a_prompt_no_estimate_placed_and_counted_back_before_the_window_is_kept() {
    // Answer 2 arrives behind answer 1's prompt of 200,000 tokens, which holds the prefill
    // conveyor for 20 s at its default rate: answer 2 gets no estimate at all. It ends at 8 s with
    // 100 tokens; counted back at the default 30 tokens/s its decode starts 3.3 s earlier, and its
    // prompt lies before the held window (half a second). Dropped there, its record had no
    // prefill; now the window's oldest tick carries it.
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 10,
        ..cfg()
    })
    .expect("config");
    let scripts = [
        invisible(1, 0, 200_000, Vec::new(), None),
        invisible(
            2,
            MS,
            1_000,
            (0..100).map(|i| 4_700 * MS + i * 33 * MS).collect(),
            Some((8_000 * MS, Outcome::Ok)),
        ),
    ];
    let finals = run(&mut l, &scripts, 200, |_| Some(1_000));
    let answer = finals
        .iter()
        .find(|f| f.id == 2)
        .expect("the answer is final");
    assert!(
        answer.energy.prefill_uj > 0,
        "its prompt is counted: {:?}",
        answer.energy
    );
}
