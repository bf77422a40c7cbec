//! The weights that split a tick's energy among the work placed in it: the tick cut into
//! sub-intervals of about [`SPLIT_NS`], each holding what the cost model expects of it.
//!
//! Part of the [`Ledger`](super::Ledger)'s settlement (split from `settle.rs` by concern): pure
//! arithmetic over a held tick's items, used by settlement and by the provisional splits.

use super::window::HeldTick;

/// Length of the sub-intervals a tick's energy is split over (see `split_weights`): a little
/// longer than a decode step of a large batch, so that most hold some work.
pub const SPLIT_NS: u64 = 10_000_000;

/// The weights that split a tick's energy (idle part removed). The tick is cut into
/// sub-intervals of about [`SPLIT_NS`]; a meter cannot say how energy varied inside a tick, so
/// each sub-interval holds the part the cost model expects of it, the engine's busy power
/// (`busy_j_per_ns`, J/ns) over its length plus its work's marginal energy (an equal part per
/// nanosecond while that power is unknown), and that part goes to the work placed in the
/// sub-interval in proportion to its marginal energy (α·prefill + β·decode + γ·context). A part
/// with a prefill chunk thus holds more than one that only decoded, as in the engine, where a
/// step's energy (static power included) goes to the work in that step: with equal parts a
/// decode beside a long prefill in the same tick got the prefill's energy per nanosecond
/// (accuracy bench, eight seeds: records 7.6 / 28.7 -> 7.5 / 28.4 %, responses 7.7 / 33.6 ->
/// 7.7 / 33.7 %; with each model's own marginal costs 5.9 / 22.7 -> 5.7 / 22.0 %). Static power
/// follows time this way: a request decoding beside a long prefill gets little of the prefill's
/// time, and all of a decode-only stretch's. A sub-interval with no work placed in it shares
/// its part among the tick's work as a whole.
///
/// `marginal` holds each item's marginal energy; the result, one weight per item, goes to
/// `weights` (`step_work` is scratch).
// `j` numbers both a sub-interval's work and its edges (`edge(j)`): an index reads best.
#[allow(clippy::needless_range_loop)]
pub(super) fn split_weights(
    split_by_steps: bool,
    marginal: &[f64],
    step_work: &mut Vec<f64>,
    weights: &mut Vec<f64>,
    tick: &HeldTick,
    dt: u64,
    busy_j_per_ns: Option<f64>,
) {
    weights.clear();
    let parts = if split_by_steps {
        (dt + SPLIT_NS / 2) / SPLIT_NS
    } else {
        1
    }
    .clamp(1, 64) as usize;
    if parts == 1 {
        weights.extend_from_slice(marginal);
        return;
    }
    // Parts have equal length `plen` (the last one absorbs the rounding); a part index is a
    // multiplication, not a division, per item: this runs for every item of every tick.
    let dt32 = u32::try_from(dt).unwrap_or(u32::MAX).max(1);
    let plen = (dt32 / parts as u32).max(1);
    let inv_plen = 1.0 / f64::from(plen);
    let last = parts - 1;
    // Items that start at the tick's start or run into its last part (a span since a token in
    // an earlier tick, or on into the next one: most of them) skip the conversions.
    let last_edge = plen * last as u32;
    let part_of = |t: u32| {
        if t == 0 {
            0
        } else if t >= last_edge {
            last
        } else {
            ((f64::from(t) * inv_plen) as usize).min(last)
        }
    };
    let edge = |j: usize| if j > last { dt32 } else { plen * j as u32 };
    // A span over several parts adds its density to the parts it covers whole through a
    // difference array (`inner`), so each item costs the same however many parts it spans
    // (provisional estimates span the whole tick).
    step_work.clear();
    step_work.resize(2 * parts, 0.0);
    let (work, inner) = step_work.split_at_mut(parts);
    let plen_f = f64::from(plen);
    // Each item's first and last part, found once: `weights` keeps them (as bits) between the
    // two passes, the second overwriting them with the item's weight.
    for (item, &m) in tick.items.iter().zip(marginal) {
        let (j0, j1) = if item.lo >= item.hi {
            let j = part_of(item.hi.saturating_sub(1));
            (j, j)
        } else {
            (part_of(item.lo), part_of(item.hi - 1))
        };
        weights.push(f64::from_bits((j0 as u64) << 32 | j1 as u64));
        if m <= 0.0 {
            continue;
        }
        if j0 == j1 {
            work[j0] += m;
            continue;
        }
        let per_ns = m / f64::from(item.hi - item.lo);
        work[j0] += per_ns * f64::from(edge(j0 + 1) - item.lo);
        work[j1] += per_ns * f64::from(item.hi - edge(j1));
        if j1 > j0 + 1 {
            // Parts j0+1..j1 are whole and before the last one: `plen` long each.
            inner[j0 + 1] += per_ns * plen_f;
            inner[j1] -= per_ns * plen_f;
        }
    }
    let mut run = 0.0;
    for j in 0..parts {
        run += inner[j];
        work[j] += run;
    }
    step_work.truncate(parts);
    let total: f64 = marginal.iter().sum();
    // Each part's energy relative to an equal share per part: with the engine's busy power,
    // what the cost model expects of it (that power over its length plus its work's marginal
    // energy), so a part with a prefill chunk holds more than one that only decoded.
    let mut rel = [1.0f64; 64];
    if let Some(p) = busy_j_per_ns.filter(|p| *p > 0.0 && p.is_finite()) {
        let expected = |j: usize| p * f64::from(edge(j + 1) - edge(j)) + step_work[j];
        let sum: f64 = (0..parts).map(expected).sum();
        if sum > 0.0 && sum.is_finite() {
            for j in 0..parts {
                rel[j] = parts as f64 * expected(j) / sum;
            }
        }
    }
    let mut empty = 0.0;
    // Each part holds rel/parts of the energy, shared by its work; empty parts go to everyone
    // by marginal. Inverses once per part, not once per item.
    for (j, w) in step_work.iter_mut().enumerate() {
        if *w > 0.0 {
            *w = rel[j] / *w;
        } else {
            empty += rel[j];
            *w = 0.0;
        }
    }
    // Prefix sums of the inverses: a span's whole parts in one subtraction.
    let mut inv_before = [0.0f64; 65];
    for (j, &x) in step_work.iter().enumerate() {
        inv_before[j + 1] = inv_before[j] + x;
    }
    let everyone = if total > 0.0 { empty / total } else { 0.0 };
    for ((item, &m), slot) in tick.items.iter().zip(marginal).zip(weights.iter_mut()) {
        let bits = slot.to_bits();
        let (j0, j1) = ((bits >> 32) as usize, (bits & u64::from(u32::MAX)) as usize);
        let mut w = everyone * m;
        if m > 0.0 {
            if j0 == j1 {
                w += m * step_work[j0];
            } else {
                let per_ns = m / f64::from(item.hi - item.lo);
                w += per_ns
                    * (f64::from(edge(j0 + 1) - item.lo) * step_work[j0]
                        + f64::from(item.hi - edge(j1)) * step_work[j1]);
                if j1 > j0 + 1 {
                    w += per_ns * plen_f * (inv_before[j1] - inv_before[j0 + 1]);
                }
            }
        }
        *slot = w;
    }
}

#[cfg(test)]
#[path = "tick_split_tests.rs"]
mod tests;
