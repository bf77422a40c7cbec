//! Exact integer splitting of a micro-joule amount by real-valued weights (largest remainder).
//!
//! Owns only arithmetic: every split hands out exactly the amount it was given, so conservation
//! never depends on floating-point rounding. Knows nothing of requests or ticks.

use std::cmp::Ordering;

/// Splits `total` micro-joules into `out` (cleared first, one entry per weight) in proportion to
/// `weights`, using largest-remainder rounding so that `out` sums to exactly `total`.
///
/// Negative, NaN or infinite weights count as zero. If every weight is zero, `out` is all zeros and
/// the function returns `false` (nothing could be placed); otherwise it returns `true`.
pub fn split_uj(
    total: u64,
    weights: &[f64],
    out: &mut Vec<u64>,
    scratch: &mut Vec<(f64, usize)>,
) -> bool {
    out.clear();
    out.resize(weights.len(), 0);
    let sum: f64 = weights.iter().copied().map(clean).sum();
    if !sum.is_finite() || sum <= 0.0 {
        return false;
    }
    let total_f = total as f64;
    let mut given: u64 = 0;
    scratch.clear();
    for (i, w) in weights.iter().copied().map(clean).enumerate() {
        if w <= 0.0 {
            continue;
        }
        let share = total_f * (w / sum);
        // `as` truncates (the floor, as `share` is non-negative), saturates on overflow and maps
        // NaN to 0: never panics.
        let floor = (share as u64).min(total - given);
        out[i] = floor;
        given += floor;
        scratch.push((share - floor as f64, i));
    }
    let rest = total - given;
    if rest == 0 || scratch.is_empty() {
        return true;
    }
    // Largest fractional parts first; `rest` is below the number of positive weights unless float
    // error accumulated, in which case every kept entry gets an equal extra share first.
    let k = usize::try_from(rest)
        .unwrap_or(usize::MAX)
        .min(scratch.len());
    if k < scratch.len() {
        // The k largest fractions each get one more: which they are matters, not their order.
        scratch.select_nth_unstable_by(k - 1, by_fraction_desc);
        scratch.truncate(k);
    } else {
        scratch.sort_unstable_by(by_fraction_desc);
    }
    let n = scratch.len() as u64;
    let (each, extra) = (rest / n, rest % n);
    for (j, (_, i)) in scratch.iter().enumerate() {
        out[*i] += each + u64::from((j as u64) < extra);
    }
    true
}

fn clean(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 {
        w
    } else {
        0.0
    }
}

fn by_fraction_desc(a: &(f64, usize), b: &(f64, usize)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// `value * num / den` in integer arithmetic, rounded down; `0` when `den` is zero.
pub fn mul_div(value: u64, num: u64, den: u64) -> u64 {
    if den == 0 {
        return 0;
    }
    let r = u128::from(value) * u128::from(num) / u128::from(den);
    u64::try_from(r).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_exactly_with_largest_remainder() {
        let mut out = Vec::new();
        let mut s = Vec::new();
        assert!(split_uj(10, &[1.0, 1.0, 1.0], &mut out, &mut s));
        assert_eq!(out.iter().sum::<u64>(), 10);
        assert_eq!(out, vec![4, 3, 3]);
        assert!(!split_uj(10, &[0.0, -1.0, f64::NAN], &mut out, &mut s));
        assert_eq!(out, vec![0, 0, 0]);
        assert!(split_uj(u64::MAX, &[1.0, 2.0], &mut out, &mut s));
        assert_eq!(out.iter().fold(0u64, |a, b| a.wrapping_add(*b)), u64::MAX);
    }

    #[test]
    fn mul_div_is_exact_and_total() {
        assert_eq!(mul_div(u64::MAX, 3, 3), u64::MAX);
        assert_eq!(mul_div(7, 1, 0), 0);
        assert_eq!(mul_div(10, 1, 3), 3);
    }

    proptest! {
        #[test]
        fn split_conserves(total in 0u64..u64::MAX / 2,
                           weights in proptest::collection::vec(0.0f64..1e9, 1..50)) {
            let mut out = Vec::new();
            let mut s = Vec::new();
            let placed = split_uj(total, &weights, &mut out, &mut s);
            let sum: u128 = out.iter().map(|v| u128::from(*v)).sum();
            if placed { prop_assert_eq!(sum, u128::from(total)); } else { prop_assert_eq!(sum, 0); }
            for (w, o) in weights.iter().zip(&out) {
                if *w == 0.0 { prop_assert_eq!(*o, 0); }
            }
        }
    }
}
