//! Spreader tests: hand-fed readings of counters slower and faster than the reads, no timing.

use super::*;
use crate::sampler::lumpy::LumpyCounter;
use proptest::prelude::*;

const MS: u64 = 1_000_000;

fn drain(s: &mut Spreader) -> Vec<Interval> {
    std::iter::from_fn(|| s.pop_final()).collect()
}

/// Reads `counter` every `interval` ms for `secs` seconds through a learning spreader, returning
/// every final interval (flushed at the end).
fn run(counter: &LumpyCounter, interval: u64, secs: u64, period: Option<u64>) -> Vec<Interval> {
    let mut s = Spreader::new(period.map(|p| p * MS));
    let mut out = Vec::new();
    let mut last = counter.value_at(0);
    for k in 1..=secs * 1000 / interval {
        let (a, b) = ((k - 1) * interval * MS, k * interval * MS);
        let v = counter.value_at(b);
        s.push(a, b, Some(v - last));
        last = v;
        out.extend(drain(&mut s));
        assert!(
            s.held() as u64 * interval * MS <= s.hold_bound_ns(),
            "hold bound kept"
        );
    }
    s.flush();
    out.extend(drain(&mut s));
    out
}

fn watts(i: &Interval) -> f64 {
    i.2.unwrap_or(0) as f64 / (i.1 - i.0) as f64 * 1e3
}

/// Worst relative error of the power of any tick, and of any run of ticks covering ≥ 1 s,
/// after the first second (learning) and before the last (released unspread at the end), against
/// `truth` watts.
fn errors(ticks: &[Interval], truth: f64) -> (f64, f64) {
    let end = ticks.last().map_or(0, |t| t.1).saturating_sub(1_000 * MS);
    let settled: Vec<&Interval> = ticks
        .iter()
        .filter(|t| t.0 >= 1_000 * MS && t.1 <= end)
        .collect();
    let tick = settled
        .iter()
        .map(|t| (watts(t) / truth - 1.0).abs())
        .fold(0.0, f64::max);
    let mut window = 0.0f64;
    for i in 0..settled.len() {
        let (mut e, mut j) = (0u64, i);
        while j < settled.len() && settled[j].1 - settled[i].0 < 1_000 * MS {
            j += 1;
        }
        if j == settled.len() {
            break;
        }
        for t in &settled[i..=j] {
            e += t.2.unwrap_or(0);
        }
        let p = e as f64 / (settled[j].1 - settled[i].0) as f64 * 1e3;
        window = window.max((p / truth - 1.0).abs());
    }
    (tick, window)
}

#[test]
fn slow_counters_are_spread_into_a_smooth_timeline() {
    // (counter period ms, phase ms, sampling interval ms, worst tick error, worst 1 s error).
    let cases = [
        (100, 0, 50, 0.02, 0.02),
        (100, 37, 50, 0.02, 0.02),
        (250, 120, 50, 0.02, 0.02),
        (50, 10, 50, 0.02, 0.02),
        // Not a multiple of the interval: spans of 40 and 60 ms each carry one 50 ms update, so a
        // single tick is off by up to 25 %; any second of them is right.
        (50, 7, 20, 0.27, 0.03),
        // Faster than the reads: 2 or 3 updates per read, ±20 % per tick, as without spreading.
        (20, 3, 50, 0.22, 0.03),
    ];
    for (p, phase, s, tick_tol, window_tol) in cases {
        let c = LumpyCounter::new(300, p * MS, phase * MS, 0.01, 13_000 * MS, p + phase);
        let ticks = run(&c, s, 12, None);
        // Same intervals, in order, contiguous, with every micro-joule.
        assert_eq!(ticks.len() as u64, 12_000 / s, "p={p} s={s}");
        assert!(ticks.windows(2).all(|w| w[0].1 == w[1].0));
        let sum: u64 = ticks.iter().filter_map(|t| t.2).sum();
        assert_eq!(sum, c.value_at(12_000 * MS), "p={p} s={s}: exact");
        let (tick, window) = errors(&ticks, 300.0);
        eprintln!("period {p} ms phase {phase} ms, sampled every {s} ms: worst tick {tick:.4}, worst 1 s {window:.4}");
        assert!(tick <= tick_tol, "p={p} s={s}: tick error {tick}");
        assert!(window <= window_tol, "p={p} s={s}: 1 s error {window}");
        assert!(
            ticks
                .iter()
                .filter(|t| t.0 >= 1_000 * MS && t.1 <= 11_000 * MS)
                .all(|t| t.2 > Some(0)),
            "p={p} s={s}: no 0 W tick once learned"
        );
    }
}

#[test]
fn the_period_is_learned_or_configured() {
    for (p, s) in [(100, 50), (250, 50), (50, 20)] {
        let c = LumpyCounter::new(300, p * MS, 0, 0.01, 5_000 * MS, 9);
        let mut sp = Spreader::new(None);
        let mut last = 0;
        for k in 1..=4_000 / s {
            let v = c.value_at(k * s * MS);
            sp.push((k - 1) * s * MS, k * s * MS, Some(v - last));
            last = v;
        }
        let got = sp.period();
        assert_eq!(got.source, PeriodSource::Learned);
        assert!(!got.every_read);
        assert_eq!(got.ns, Some(p * MS), "p={p} s={s}");
        assert_eq!(sp.hold_bound_ns(), (4 * p * MS).max(MIN_HOLD_NS));
    }
    let conf = Spreader::new(Some(100 * MS));
    assert_eq!(conf.period().source, PeriodSource::Configured);
    assert_eq!(conf.period().ns, Some(100 * MS));
}

#[test]
fn a_configured_period_holds_from_the_first_read() {
    let c = LumpyCounter::new(300, 100 * MS, 0, 0.0, 2_000 * MS, 1);
    let ticks = run(&c, 50, 2, Some(100));
    // With the period known, not even the first updates are lumpy: past the first one (placed
    // at 75 ms, a read's middle, where it came at 100 ms) every tick holds its 50 ms at 300 W, to
    // the last, whose second half was never measured.
    let n = ticks.len();
    assert!(
        ticks[2..n - 1].iter().all(|t| t.2 == Some(15_000_000)),
        "{ticks:?}"
    );
    let sum: u64 = ticks.iter().filter_map(|t| t.2).sum();
    assert_eq!(sum, c.value_at(2_000 * MS));
    // A configured period at or under the interval never holds.
    let mut fast = Spreader::new(Some(20 * MS));
    fast.push(0, 50 * MS, Some(0));
    assert_eq!(fast.pop_final(), Some((0, 50 * MS, Some(0))));
}

#[test]
fn a_counter_moving_at_every_read_is_never_delayed() {
    let mut s = Spreader::new(None);
    for k in 1..100u64 {
        let d = 1_000 + k * 7;
        s.push((k - 1) * 50 * MS, k * 50 * MS, Some(d));
        assert_eq!(
            s.pop_final(),
            Some(((k - 1) * 50 * MS, k * 50 * MS, Some(d)))
        );
        assert_eq!(s.pop_final(), None);
    }
    assert!(s.period().every_read);
    // A device at 0 W (the counter never moved) is not held either.
    let mut idle = Spreader::new(None);
    idle.push(0, MS, Some(0));
    assert_eq!(idle.pop_final(), Some((0, MS, Some(0))));
}

/// With an update lag (the counter moves at every read, `lag` before it), each increment goes to
/// the time from the previous update to this one, and an interval is final once the next update
/// is past its end.
#[test]
fn an_every_read_counter_with_an_update_lag_is_spread_up_to_its_updates() {
    let mut s = Spreader::new(None);
    s.set_update_lag(Some(25 * MS));
    // Update at 25 ms: all of it before the update; the interval waits for the rest.
    s.push(0, 50 * MS, Some(1_000));
    assert_eq!(s.pop_final(), None);
    // Update at 75 ms: (25, 75] is half in each interval.
    s.push(50 * MS, 100 * MS, Some(2_000));
    assert_eq!(s.pop_final(), Some((0, 50 * MS, Some(2_000))));
    assert_eq!(s.pop_final(), None);
    s.push(100 * MS, 150 * MS, Some(4_000));
    assert_eq!(s.pop_final(), Some((50 * MS, 100 * MS, Some(3_000))));
    // Nothing more will come: the last interval goes out with its part before the update.
    s.flush();
    assert_eq!(s.pop_final(), Some((100 * MS, 150 * MS, Some(2_000))));
    assert_eq!(s.pop_final(), None);
}

/// Before an interval is final, its estimate is the energy given to it so far (its part before
/// the counter's latest update) scaled to its length; once final, its energy; nothing while none
/// of it is covered.
#[test]
fn an_interval_not_yet_final_is_estimated_from_its_part_so_far() {
    let mut s = Spreader::new(None);
    s.set_update_lag(Some(25 * MS));
    s.push(0, 50 * MS, Some(1_000));
    // Half of it covered (up to the update at 25 ms) with 1,000 µJ: 2,000 for the whole.
    assert_eq!(s.estimate_of(0, 50 * MS), Some(2_000));
    assert_eq!(s.estimate_of(50 * MS, 100 * MS), None);
    s.push(50 * MS, 100 * MS, Some(4_000));
    // Final (1,000 + half of 4,000), waiting to be popped; the next one half covered.
    assert_eq!(s.estimate_of(0, 50 * MS), Some(3_000));
    assert_eq!(s.estimate_of(50 * MS, 100 * MS), Some(4_000));
    // A counter slower than the reads, not moved yet within its interval: nothing to go on.
    let mut slow = Spreader::new(Some(100 * MS));
    slow.push(0, 50 * MS, Some(0));
    assert_eq!(slow.estimate_of(0, 50 * MS), None);
}

#[test]
fn failed_reads_are_barriers_never_spread_into() {
    let mut s = Spreader::new(Some(100 * MS));
    s.push(0, 50, Some(0));
    s.push(50, 100, Some(0));
    s.push(100, 150, None);
    // Held intervals before the failure are released as measured; the failed one stays unavailable.
    assert_eq!(
        drain(&mut s),
        [(0, 50, Some(0)), (50, 100, Some(0)), (100, 150, None)]
    );
    // The next increment (which carries the gap's energy) covers only intervals after the failure,
    // up to the middle of the interval whose read saw it (the update's estimated time); the rest
    // of that interval waits for the next increment, or gets nothing at a flush.
    s.push(150, 200, Some(0));
    s.push(200, 250, Some(900));
    assert_eq!(drain(&mut s), [(150, 200, Some(600))]);
    s.flush();
    assert_eq!(drain(&mut s), [(200, 250, Some(300))]);
}

#[test]
fn the_hold_bound_releases_as_measured() {
    let mut s = Spreader::new(Some(100 * MS));
    // 1 s bound (4 × 100 ms < 1 s): the 21st 50 ms interval pushes the first one out.
    for k in 0..21u64 {
        s.push(k * 50 * MS, (k + 1) * 50 * MS, Some(0));
    }
    assert_eq!(s.held(), 20);
    assert_eq!(drain(&mut s), [(0, 50 * MS, Some(0))]);
    // The update is placed at 1,075 ms: 20 whole intervals and half of the last share it.
    s.push(1_050 * MS, 1_100 * MS, Some(20_500));
    let rest = drain(&mut s);
    assert_eq!(rest.len(), 20);
    assert!(rest.iter().all(|t| t.2 == Some(1_000)), "{rest:?}");
    s.flush();
    assert_eq!(drain(&mut s), [(1_050 * MS, 1_100 * MS, Some(500))]);
    assert_eq!(s.last_span().and_then(|c| c.power_mw()), Some(19));
}

#[test]
fn spreading_is_exact_for_uneven_intervals() {
    let mut s = Spreader::new(Some(1_000));
    s.push(0, 3, Some(0));
    s.push(3, 4, Some(0));
    s.push(4, 4, Some(0)); // empty interval: gets nothing
                           // Seen at 7, the update is placed at 5 (the middle of (4, 7], rounded down): (0, 5] shares it
                           // by length, and (4, 7] waits with its part.
    s.push(4, 7, Some(10));
    let got = drain(&mut s);
    assert_eq!(got, [(0, 3, Some(6)), (3, 4, Some(2)), (4, 4, Some(0))]);
    s.flush();
    assert_eq!(drain(&mut s), [(4, 7, Some(2))]);
    assert_eq!(
        s.last_span(),
        Some(CoveredSpan {
            start_ns: 0,
            end_ns: 7,
            energy_uj: 10
        })
    );
    // Absurd lengths and energies neither panic nor lose a micro-joule.
    let mut h = Spreader::new(Some(u64::MAX));
    h.push(0, u64::MAX / 2, Some(0));
    h.push(u64::MAX / 2, u64::MAX, Some(u64::MAX));
    h.flush();
    let sum: u64 = drain(&mut h).iter().filter_map(|t| t.2).sum();
    assert_eq!(sum, u64::MAX);
    assert_eq!(mul_div(7, 5, 0), 7);
}

proptest! {
    #[test]
    fn emitted_energy_equals_pushed_energy_in_order(
        steps in proptest::collection::vec(
            (
                0u64..200 * MS,
                proptest::option::weighted(0.9, prop_oneof![Just(0u64), 0u64..100_000_000]),
                // Instantaneous power at the read (a sparse counter's shape), sometimes missing.
                proptest::option::weighted(0.5, prop_oneof![Just(0u64), 0u64..2_000_000, Just(u64::MAX)]),
            ),
            0..400,
        ),
        period in proptest::option::of(1u64..2_000 * MS),
        lag in proptest::option::of(0u64..200 * MS),
    ) {
        let mut s = Spreader::new(period);
        s.set_update_lag(lag);
        let (mut t, mut pushed, mut out) = (0u64, 0u64, Vec::new());
        let mut spans = Vec::new();
        for (dt, d, power) in steps {
            s.push_shaped(t, t + dt, d, power);
            spans.push((t, t + dt, d.is_none()));
            t += dt;
            pushed += d.unwrap_or(0);
            out.extend(drain(&mut s));
            prop_assert!(s.held() <= MAX_HELD);
        }
        s.flush();
        out.extend(drain(&mut s));
        prop_assert_eq!(out.len(), spans.len());
        for (o, (a, b, failed)) in out.iter().zip(&spans) {
            prop_assert_eq!((o.0, o.1, o.2.is_none()), (*a, *b, *failed));
        }
        prop_assert_eq!(out.iter().filter_map(|o| o.2).sum::<u64>(), pushed);
    }
}

/// A counter read every 1 s (`nvml:...,counter_ms=1000`) with instantaneous power at every 50 ms
/// read: a second of 100 W then 700 W halves is spread by the power's integral, not by time, and
/// every micro-joule of the increment lands (the counter stays the truth over the second).
#[test]
fn a_sparse_counter_is_spread_by_the_power_shape() {
    let mut s = Spreader::new(Some(1_000 * MS));
    let power = |k: u64| if k <= 10 { 100_000 } else { 700_000 };
    s.baseline_power(Some(power(0)));
    let mut out = Vec::new();
    for k in 1..=20u64 {
        let delta = if k == 20 { 400_000_000 } else { 0 };
        s.push_shaped((k - 1) * 50 * MS, k * 50 * MS, Some(delta), Some(power(k)));
        out.extend(drain(&mut s));
    }
    // The update is placed at 975 ms: the last interval keeps its second half for the next one.
    assert_eq!(out.len(), 19);
    s.flush();
    out.extend(drain(&mut s));
    assert_eq!(out.iter().map(|i| i.2.unwrap()).sum::<u64>(), 400_000_000);
    // Shape: trapezoids of 100 W, the step interval at 400 W, then 700 W (the last one half of
    // it); scaled by the counter (400 J) over the readings' integral up to 975 ms
    // (0.5·100 + 0.05·400 + 0.4·700 + 0.025·700 = 367.5 J).
    let scale = 400.0 / 367.5;
    for (k, watts) in out.iter().map(watts).enumerate() {
        let expect = match k {
            0..=9 => 100.0,
            10 => 400.0,
            19 => 350.0,
            _ => 700.0,
        } * scale;
        assert!(
            (watts - expect).abs() < 0.01,
            "interval {k}: {watts} W, expected {expect}"
        );
    }
}

/// An interval without a power reading (a failed power read) makes that increment fall back to
/// spreading by time; shapes that are all zero do too.
#[test]
fn a_missing_or_zero_shape_falls_back_to_time() {
    let mut s = Spreader::new(Some(200 * MS));
    s.baseline_power(Some(100_000));
    s.push_shaped(0, 50 * MS, Some(0), Some(100_000));
    s.push_shaped(50 * MS, 100 * MS, Some(0), None);
    s.push_shaped(100 * MS, 150 * MS, Some(0), Some(900_000));
    s.push_shaped(150 * MS, 200 * MS, Some(35_000_000), Some(900_000));
    // By time up to the update's estimated time (175 ms): 10 J per whole interval, whatever the
    // readings said, 5 J in the half that is in.
    let mut out = drain(&mut s);
    s.flush();
    out.extend(drain(&mut s));
    assert_eq!(
        out.iter().map(|i| i.2.unwrap()).collect::<Vec<_>>(),
        vec![10_000_000, 10_000_000, 10_000_000, 5_000_000]
    );
    let mut z = Spreader::new(Some(100 * MS));
    z.baseline_power(Some(0));
    z.push_shaped(0, 50 * MS, Some(0), Some(0));
    z.push_shaped(50 * MS, 100 * MS, Some(9), Some(0));
    z.flush();
    assert_eq!(
        drain(&mut z)
            .iter()
            .map(|i| i.2.unwrap())
            .collect::<Vec<_>>(),
        vec![6, 3]
    );
}

/// Garbage powers (the largest a reading can say) neither overflow nor lose a micro-joule.
#[test]
fn absurd_powers_neither_panic_nor_lose_energy() {
    let mut s = Spreader::new(Some(u64::MAX / 4));
    s.baseline_power(Some(u64::MAX));
    s.push_shaped(0, u64::MAX / 4, Some(0), Some(u64::MAX));
    s.push_shaped(u64::MAX / 4, u64::MAX / 2, Some(0), Some(0));
    s.push_shaped(u64::MAX / 2, u64::MAX, Some(u64::MAX), Some(u64::MAX));
    s.flush();
    let sum: u64 = drain(&mut s).iter().filter_map(|t| t.2).sum();
    assert_eq!(sum, u64::MAX);
}
