//! The prefill pool: prompt tokens' energy priced over a window of settled ticks, with the books
//! exact and the balance paid out to the requests that drew from it.

use super::*;

/// Forty streams (ids 1 to 40), one every 100 ms, each prefilling a 1,000-token prompt in the
/// first 40 ms of its 100 ms (tick `2i + 1` for request `i + 1`) and sampling one token.
fn alternating_streams() -> Vec<Script> {
    (0..40u64)
        .map(|i| {
            let mut s = stream(i + 1, i * 100 * MS, 1000, i * 100 * MS + 45 * MS, 1, 0);
            s.prefill_ns = 40 * MS;
            s
        })
        .collect()
}

/// The meter over [`alternating_streams`]: 10 mJ over even requests' prefill ticks, 30 mJ over
/// odd ones', nothing between (tick `k` ends at `k` × 50 ms).
fn alternating_energy(k: u64) -> Option<u64> {
    Some(match k % 4 {
        1 => 10_000,
        3 => 30_000,
        _ => 0,
    })
}

/// Runs [`alternating_streams`] over [`alternating_energy`] to the end. Returns each request's
/// prefill energy and the unattributed energy, µJ.
fn alternating_prefills(pool_ns: u64) -> (Vec<u64>, u64) {
    let mut l = Ledger::new(LedgerConfig {
        calibration: unit_weights(),
        prefill_pool_ns: pool_ns,
        ..cfg()
    })
    .expect("config");
    let scripts = alternating_streams();
    let mut done = run(&mut l, &scripts, 90, alternating_energy);
    l.flush();
    l.drain_final(&mut done);
    check_books(&l);
    assert_eq!(l.totals().pending_uj, 0);
    assert_eq!(done.len(), 40);
    done.sort_by_key(|f| f.id);
    let prefills = done.iter().map(|f| f.energy.prefill_uj).collect();
    (prefills, l.totals().unattributed_uj)
}

#[test]
fn prompts_are_priced_over_the_window_not_by_the_tick_they_were_placed_in() {
    let (per_tick, unattributed_per_tick) = alternating_prefills(0);
    let (pooled, unattributed_pooled) = alternating_prefills(8_000_000_000);
    let spread = |v: &[u64]| {
        let later = &v[10..];
        let (lo, hi) = (later.iter().min().unwrap(), later.iter().max().unwrap());
        *hi as f64 / (*lo).max(1) as f64
    };
    // Tick by tick, each prompt takes its own tick's energy: three to one.
    assert!(spread(&per_tick) > 2.5, "{per_tick:?}");
    // Pooled, equal prompts read about equal once the window holds a few of them.
    assert!(spread(&pooled) < 1.15, "{pooled:?}");
    // Moved, not lost: what the prompts took tick by tick is what they took pooled plus the
    // balance nobody could claim when traffic stopped (less than one prompt's worth here).
    let sum = |v: &[u64]| v.iter().sum::<u64>();
    let left = unattributed_pooled - unattributed_per_tick;
    assert_eq!(sum(&pooled) + left, sum(&per_tick));
    assert!(left < 10_000, "{left} µJ unclaimed");
}

#[test]
fn a_held_ticks_provisional_split_prices_prompts_as_settlement_will() {
    let published = |pool_ns: u64| {
        let mut l = Ledger::new(LedgerConfig {
            calibration: unit_weights(),
            prefill_pool_ns: pool_ns,
            ..cfg()
        })
        .expect("config");
        // A non-streamed request in flight throughout keeps ticks held for the settlement lag
        // (its work there is unknown until it ends); its estimate takes little of their energy.
        let mut scripts = alternating_streams();
        scripts.push(invisible(
            100,
            0,
            0,
            vec![],
            Some((4_500 * MS, Outcome::Ok)),
        ));
        // Request 31 prefills in tick 61 (10 mJ); after tick 62 that tick is still held.
        run(&mut l, &scripts, 62, alternating_energy);
        // Published: settled plus its part of the held ticks' provisional splits.
        let slot = l.index[&31] as usize;
        let req = l.slots[slot].as_ref().expect("request 31 is tracked");
        req.published().energy_uj
    };
    let (per_tick, pooled) = (published(0), published(8_000_000_000));
    // Its own tick's energy, bar the decode token's share; pooled, the window's price (its
    // settled ticks alternate 10 and 30 mJ per 1,000 prompt tokens: about 20 mJ).
    assert!(per_tick.abs_diff(10_000) < 100, "{per_tick}");
    assert!(pooled.abs_diff(20_000) < 1_500, "{pooled}");
}

#[test]
fn a_prompt_paid_above_the_window_price_gives_the_excess_back_when_final() {
    let mut l = Ledger::new(LedgerConfig {
        calibration: unit_weights(),
        prefill_pool_ns: 8_000_000_000,
        ..cfg()
    })
    .expect("config");
    // Request 1's 1,000-token prompt is alone in the first tick, which draws 30 mJ; it then
    // decodes a token every 200 ms for a second. Requests 2 to 20 prefill 1,000-token prompts
    // in ticks that draw 10 mJ each (tick `4i + 3` for request `i + 1`); ticks with only decode
    // tokens draw 0.1 mJ.
    let mut first = stream(1, 0, 1000, 45 * MS, 6, 200 * MS);
    first.prefill_ns = 40 * MS;
    let mut scripts = vec![first];
    for i in 1..20u64 {
        let start = (4 * i + 2) * 50 * MS;
        let mut s = stream(i + 1, start, 1000, start + 45 * MS, 1, 0);
        s.prefill_ns = 40 * MS;
        scripts.push(s);
    }
    let energy = |k: u64| {
        Some(match k {
            1 => 30_000,
            k if k >= 7 && k % 4 == 3 && k < 80 => 10_000,
            _ => 100,
        })
    };
    let mut done = run(&mut l, &scripts, 120, energy);
    l.flush();
    l.drain_final(&mut done);
    check_books(&l);
    assert_eq!(done.len(), 20);
    let prefill = |id: u64| {
        done.iter()
            .find(|f| f.id == id)
            .map(|f| f.energy.prefill_uj)
            .expect("final")
    };
    // Paid its own tick's 30 mJ when that tick settled, repriced near the window's price when it
    // became final a second on (about 13 mJ: 80 mJ over its prompt and the five after it).
    let early = prefill(1);
    assert!((9_000..15_000).contains(&early), "{early} µJ");
    // What it gave back went to the prompts after it, not to unattributed.
    let later: u64 = (2..=20).map(prefill).sum();
    assert!(later > 19 * 10_000, "{later} µJ");
    assert!(l.totals().unattributed_uj < 5_000, "{:?}", l.totals());
}
