//! `split_weights` against the per-part loop it replaced, and its parts' energy with a busy power.

use super::*;
use crate::ledger::window::Item;

/// The per-part loop `split_weights` replaced: every item's marginal spread over the parts it
/// overlaps, each part's energy shared by its work, empty parts shared by everyone.
fn reference(marginal: &[f64], items: &[Item], dt: u64) -> Vec<f64> {
    let parts = ((dt + SPLIT_NS / 2) / SPLIT_NS).clamp(1, 64) as usize;
    let dt32 = dt as u32;
    let plen = dt32 / parts as u32;
    let edge = |j: usize| if j >= parts { dt32 } else { plen * j as u32 };
    let part_of = |t: u32| ((t / plen) as usize).min(parts - 1);
    let spread = |item: &Item, m: f64| -> Vec<f64> {
        let mut v = vec![0.0; parts];
        if item.lo >= item.hi {
            v[part_of(item.hi.saturating_sub(1))] = m;
        } else {
            for (j, x) in v.iter_mut().enumerate() {
                let ov = item
                    .hi
                    .min(edge(j + 1))
                    .saturating_sub(item.lo.max(edge(j)));
                *x = m * f64::from(ov) / f64::from(item.hi - item.lo);
            }
        }
        v
    };
    let mut work = vec![0.0; parts];
    for (item, &m) in items.iter().zip(marginal) {
        for (w, x) in work.iter_mut().zip(spread(item, m)) {
            *w += x;
        }
    }
    let total: f64 = marginal.iter().sum();
    let empty = work.iter().filter(|w| **w <= 0.0).count() as f64;
    items
        .iter()
        .zip(marginal)
        .map(|(item, &m)| {
            let own: f64 = spread(item, m)
                .iter()
                .zip(&work)
                .filter(|(_, w)| **w > 0.0)
                .map(|(x, w)| x / w)
                .sum();
            own + empty * m / total
        })
        .collect()
}

/// A tick `(0, dt]`, busy throughout, holding `items`.
fn busy_tick(dt: u64, items: Vec<Item>) -> HeldTick {
    HeldTick {
        seq: 1,
        start_ns: 0,
        end_ns: dt,
        delta_uj: Some(1),
        unfilled_ns: 0,
        estimate_uj: None,
        busy: true,
        busy_ns: dt,
        items,
        tentative: None,
        stale: false,
    }
}

#[test]
fn spans_over_many_parts_weigh_as_the_per_part_loop_says() {
    let dt = 50_000_000u64;
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let mut items = Vec::new();
    let mut marginal = Vec::new();
    for slot in 0..200u32 {
        // Points, short spans, and spans over most of the tick (a third of the parts empty
        // of points: the spans alone fill them).
        let lo = next(dt) as u32;
        let hi = match slot % 3 {
            0 => lo,
            1 => (lo + next(3_000_000) as u32).min(dt as u32),
            _ => (lo + next(dt) as u32).min(dt as u32),
        };
        items.push(Item {
            lo,
            hi,
            decode: 1.0,
            ..Item::empty(slot)
        });
        marginal.push(1.0 + next(100) as f64);
    }
    let tick = busy_tick(dt, items.clone());
    let (mut scratch, mut weights) = (Vec::new(), Vec::new());
    split_weights(true, &marginal, &mut scratch, &mut weights, &tick, dt, None);
    let want = reference(&marginal, &items, dt);
    for (got, want) in weights.iter().zip(&want) {
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    assert_eq!(weights.len(), items.len());
}

/// Two 10 ms parts: a prefill chunk (1 J of marginal energy) and a decode beside it in the
/// first, a decode alone in the second. At 300 W of busy power the cost model expects 3 J + 1.01
/// J of the first and 3 J + 0.01 J of the second, so the lone decode gets 3.01 / 7.02 of the
/// tick (as the engine's own split gives a step's energy to the work in it), not half of it as
/// with equal parts.
#[test]
fn a_part_holds_the_energy_the_busy_power_and_its_work_predict() {
    let dt = 20_000_000u64;
    let ms10 = 10_000_000u32;
    let items = vec![
        Item {
            lo: 0,
            hi: ms10,
            prefill: 100.0,
            ..Item::empty(0)
        },
        Item {
            lo: 0,
            hi: ms10,
            decode: 1.0,
            ..Item::empty(1)
        },
        Item {
            lo: ms10,
            hi: 2 * ms10,
            decode: 1.0,
            ..Item::empty(2)
        },
    ];
    let marginal = [1.0, 0.01, 0.01];
    let tick = busy_tick(dt, items);
    let share_of_lone_decode = |busy: Option<f64>| {
        let (mut scratch, mut weights) = (Vec::new(), Vec::new());
        split_weights(true, &marginal, &mut scratch, &mut weights, &tick, dt, busy);
        weights[2] / weights.iter().sum::<f64>()
    };
    let equal = share_of_lone_decode(None);
    assert!((equal - 0.5).abs() < 1e-9, "{equal}");
    let busy = share_of_lone_decode(Some(300.0 * 1e-9));
    assert!((busy - 3.01 / 7.02).abs() < 1e-9, "{busy}");
    // The prefill and the decode beside it share the first part by their marginal energy.
    let (mut scratch, mut weights) = (Vec::new(), Vec::new());
    split_weights(
        true,
        &marginal,
        &mut scratch,
        &mut weights,
        &tick,
        dt,
        Some(3e-7),
    );
    assert!((weights[0] / weights[1] - 100.0).abs() < 1e-6);
}
