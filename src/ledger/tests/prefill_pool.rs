//! The prefill pool: prompt tokens' energy priced over a window of settled ticks, with the books
//! exact and the balance paid out to the requests that drew from it.

use super::*;

/// Forty streams, one every 100 ms, each prefilling a 1,000-token prompt in the first 40 ms of
/// its 100 ms and sampling one token; the meter reads 10 mJ over even requests' prefill ticks
/// and 30 mJ over odd ones' (and nothing between). Returns each request's prefill energy and the
/// unattributed energy, µJ.
fn alternating_prefills(pool_ns: u64) -> (Vec<u64>, u64) {
    let mut l = Ledger::new(LedgerConfig {
        calibration: unit_weights(),
        prefill_pool_ns: pool_ns,
        ..cfg()
    })
    .expect("config");
    let scripts: Vec<Script> = (0..40u64)
        .map(|i| {
            let mut s = stream(i + 1, i * 100 * MS, 1000, i * 100 * MS + 45 * MS, 1, 0);
            s.prefill_ns = 40 * MS;
            s
        })
        .collect();
    // Tick k ends at k × 50 ms: request i prefills in tick 2i + 1.
    let energy = |k: u64| {
        Some(match k % 4 {
            1 => 10_000,
            3 => 30_000,
            _ => 0,
        })
    };
    let mut done = run(&mut l, &scripts, 90, energy);
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
