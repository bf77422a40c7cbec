//! The hold for the calibration (`calibration_hold_ticks`): until the fit is first trusted, ticks
//! with work wait past the settlement lag with their work frozen, and only while the hold can
//! end.

use super::*;

/// A stream that keeps the engine busy for the whole test: 30 tokens, one every 50 ms.
fn busy_stream() -> Script {
    stream(1, 0, 100, 20 * MS, 30, 50 * MS)
}

fn held(hold: usize, calibration: CalibrationConfig, p_idle_mw: Option<u64>) -> Ledger {
    Ledger::new(LedgerConfig {
        calibration_hold_ticks: hold,
        calibration,
        p_idle_mw,
        ..cfg()
    })
    .expect("config")
}

#[test]
fn until_the_fit_is_trusted_ticks_with_work_wait_past_the_lag_with_their_work_frozen() {
    let mut l = held(100, unit_weights(), Some(0));
    let s = [busy_stream()];
    run(&mut l, &s, 8, |_| Some(1_000));
    // The lag is 4 ticks, the hold 100 more: nothing settled yet. A lone stream's ticks are
    // complete once the next one is in (nothing unresolved): all but the newest are frozen.
    assert_eq!(l.totals().attributed_uj, 0);
    assert_eq!(l.window.len(), 8);
    assert_eq!(l.window.frozen_len(), 7);
    assert!(!l.calibrator.has_been_trusted());
    // Their work counts as done once, not as settled (nothing is), nor twice in the figures.
    let slot = l.index[&1];
    let frozen: f64 = l
        .window
        .iter()
        .take(7)
        .flat_map(|t| t.items.iter().filter(|i| i.slot == slot))
        .map(|i| f64::from(i.decode))
        .sum();
    let req = l.slots[slot as usize].as_ref().expect("tracked");
    assert!(frozen > 0.0);
    assert_eq!(req.done_work()[1], frozen);
    assert_eq!(req.settled_work, [0.0; 3]);
    let published = req.published().settled_tokens.decode as f64;
    let in_ticks: f64 = sum_per_tick(&l, 1, |i| f64::from(i.decode)).iter().sum();
    assert!(published <= in_ticks + 1.0, "{published} vs {in_ticks}");
    // Nothing lands in a frozen tick any more, and nothing there changes.
    let first_open = l.window.open_front().expect("open ticks").seq;
    let r = l
        .window
        .place_point(MS, window::Item::empty(slot))
        .expect("held");
    assert_eq!(r.0, first_open);
    let frozen_ref = (l.window.front().expect("held").seq, 0);
    assert!(l.window.item_mut(frozen_ref).is_none());
    assert!(l.window.item_ref(frozen_ref).is_none());
    // The stream ends in the tick ending at 1.5 s; a second with nothing in flight releases the
    // rest.
    run_from(&mut l, &s, 9..=49);
    assert_eq!(l.window.len(), 49, "still held at 2.45 s");
    assert_eq!(l.totals().attributed_uj, 0);
    run_from(&mut l, &s, 50..=50);
    assert!(l.window.len() <= 1);
    assert_eq!(l.totals().pending_uj, 0);
    assert_eq!(
        l.totals().attributed_uj,
        30_000,
        "the busy ticks' energy, exactly"
    );
}

#[test]
fn nothing_is_held_with_fixed_weights_or_before_p_idle_is_known() {
    let fixed = CalibrationConfig {
        fixed: true,
        ..unit_weights()
    };
    for (calibration, p_idle) in [(fixed, Some(0)), (unit_weights(), None)] {
        let mut l = held(6, calibration, p_idle);
        run(&mut l, &[busy_stream()], 8, |_| Some(1_000));
        // Complete ticks settle at once.
        assert_eq!(l.window.frozen_len(), 0);
        assert_eq!(l.window.len(), 1);
        assert!(l.totals().attributed_uj > 0);
    }
}

#[test]
fn a_fit_that_never_comes_is_not_waited_for_past_three_holds_of_work() {
    let mut l = held(2, unit_weights(), Some(0));
    let s = [busy_stream()];
    let mut longest = 0;
    for k in 1..=20 {
        run_from(&mut l, &s, k..=k);
        longest = longest.max(l.window.len());
    }
    assert!(!l.calibrator.has_been_trusted());
    // Held up to the lag of 4 and 2 more (ticks settle, oldest first, as the window passes
    // that) while the fit learned from its first 6 ticks of work...
    assert_eq!(longest, 6);
    assert!(l.calibrator.ticks_seen() >= 6);
    // ...then settled when complete again.
    assert_eq!(l.window.len(), 1);
    assert_eq!(l.window.frozen_len(), 0);
}

/// Eight ticks of `scripts` under a 100-tick hold bounded by `bounds` (requests, items):
/// returns the ledger after them.
fn held_within(scripts: &[Script], (requests, items): (usize, usize)) -> Ledger {
    let mut l = Ledger::new(LedgerConfig {
        calibration_hold_ticks: 100,
        calibration_hold_max_requests: requests,
        calibration_hold_max_items: items,
        calibration: unit_weights(),
        p_idle_mw: Some(0),
        ..cfg()
    })
    .expect("config");
    run_from(&mut l, scripts, 1..=8);
    assert!(!l.calibrator.has_been_trusted());
    l
}

#[test]
fn the_hold_ends_for_good_once_it_holds_more_requests_than_its_bound() {
    // Four streams keep the engine busy; a bound of four requests holds, of three gives up.
    let scripts: Vec<Script> = (1..=4)
        .map(|id| stream(id, 0, 100, 20 * MS, 30, 50 * MS))
        .collect();
    assert_eq!(held_within(&scripts, (4, 1_000)).window.len(), 8);
    let l = held_within(&scripts, (3, 1_000));
    assert_eq!(l.window.len(), 1);
    assert_eq!(l.window.frozen_len(), 0);
    assert!(l.totals().attributed_uj > 0);
    // For good: fewer requests later do not bring it back.
    assert!(l.hold_given_up);
    assert_eq!(l.calibration_hold(), 0);
}

#[test]
fn the_hold_ends_for_good_once_its_ticks_hold_more_items_than_its_bound() {
    // One stream, an item or two per tick: eight ticks of it are held under a bound of 100
    // items; a bound of five gives up once the window holds more.
    let s = [busy_stream()];
    let l = held_within(&s, (10, 100));
    assert_eq!((l.window.len(), l.hold_given_up), (8, false));
    let l = held_within(&s, (10, 5));
    assert_eq!((l.window.len(), l.hold_given_up), (1, true));
}

/// Applies the 50 ms ticks `ks` of 1 mJ each over the scripts still in flight.
fn run_from(l: &mut Ledger, scripts: &[Script], ks: std::ops::RangeInclusive<u64>) {
    for k in ks {
        let obs: Vec<Observation> = scripts.iter().filter_map(|s| s.at(k * 50 * MS)).collect();
        apply_50ms(l, k, Some(1_000), &obs);
        check_books(l);
        let mut out = Vec::new();
        l.drain_final(&mut out);
    }
}
