//! The calibration's linear algebra: running sums of the normal equations, the fit on a grid of
//! γ/α, the decode column folded into the prefill one, and the condition number of a subset
//! (split from `calibration.rs` by concern).

use super::K;

/// Running sums over the fit's samples: `Σ x xᵀ`, `Σ x y` and `Σ y²`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sums {
    pub(super) xx: [[f64; K]; K],
    pub(super) xy: [f64; K],
    pub(super) yy: f64,
}

impl Sums {
    pub(super) fn add(&mut self, x: &[f64; K], y: f64, sign: f64) {
        for i in 0..K {
            for j in 0..K {
                self.xx[i][j] += sign * x[i] * x[j];
            }
            self.xy[i] += sign * x[i] * y;
        }
        self.yy += sign * y * y;
    }

    #[cfg(test)]
    pub(super) fn sse(&self, c: &[f64; K]) -> f64 {
        let mut q = self.yy;
        for i in 0..K {
            q -= 2.0 * c[i] * self.xy[i];
            for j in 0..K {
                q += c[i] * c[j] * self.xx[i][j];
            }
        }
        q
    }
}

/// One candidate of the fit: the coefficients `[static, α, β, γ]`, its squared error, and
/// whether the static term was fitted (`true`) or fixed at the estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Candidate {
    pub(super) c: [f64; K],
    pub(super) sse: f64,
    pub(super) joint: bool,
    /// `ln(ρ / ρ₀)`: how far γ/α lies from the defaults' ratio.
    pub(super) log_ratio: f64,
}

/// Steps of the grid of γ/α per decade, and decades searched either side of the defaults'
/// ratio: 12 % steps from 10⁻⁴ to 10⁴ times it, finer than the fit can tell ratios apart.
const RATIO_STEPS_PER_DECADE: i32 = 20;
const RATIO_DECADES: i32 = 4;

/// The least-squares fit with `β = kappa·α` and `γ = ρ₀·e^log_ratio·α`: α with the static term
/// fixed at `static_w` (at 0 without an estimate), or α fitted with the static term where that
/// lands in `[0, static_w]` (any non-negative static term without an estimate), whichever leaves
/// less squared error. The estimate, the power of the lightest busy ticks, is only an upper bound:
/// those ticks still carry work, most of all where context reads cost much (bench, four seeds,
/// with the ridge this replaced: records 10.4 / 40.5 -> 10.2 / 39.6 %, context-bound queueing
/// 10.0 -> 7.6 % median). Closed forms on the sums (one or two unknowns). `None` without a
/// positive α.
fn fit_at_ratio(
    s: &Sums,
    static_w: Option<f64>,
    kappa: f64,
    rho0: f64,
    log_ratio: f64,
) -> Option<Candidate> {
    let rho = rho0 * log_ratio.exp();
    // The work column z = prefill + κ·decode + ρ·context, as sums against busy, itself and y.
    let v = [0.0, 1.0, kappa, rho];
    let (mut zz, mut zy, mut zb) = (0.0, 0.0, 0.0);
    for i in 1..K {
        zy += v[i] * s.xy[i];
        zb += v[i] * s.xx[0][i];
        for k in 1..K {
            zz += v[i] * v[k] * s.xx[i][k];
        }
    }
    if zz.is_nan() || zz <= 0.0 {
        return None;
    }
    let candidate = |st: f64, a: f64, sse: f64, joint: bool| Candidate {
        c: [st, a, kappa * a, rho * a],
        sse,
        joint,
        log_ratio,
    };
    // y − static·busy ≈ α·z.
    let st = static_w.unwrap_or(0.0);
    let zy_left = zy - st * zb;
    let a = zy_left / zz;
    let fixed = (a > 0.0).then(|| {
        let yy = s.yy - 2.0 * st * s.xy[0] + st * st * s.xx[0][0];
        candidate(st, a, yy - a * zy_left, false)
    });
    let det = s.xx[0][0] * zz - zb * zb;
    let joint = (det > 1e-12 * s.xx[0][0] * zz)
        .then(|| {
            let st = (s.xy[0] * zz - zb * zy) / det;
            let a = (s.xx[0][0] * zy - zb * s.xy[0]) / det;
            (a > 0.0 && st >= 0.0 && static_w.map_or(true, |w| st <= w))
                .then(|| candidate(st, a, s.yy - st * s.xy[0] - a * zy, true))
        })
        .flatten();
    match (fixed, joint) {
        (Some(f), Some(j)) => Some(if j.sse < f.sse { j } else { f }),
        (f, j) => f.or(j),
    }
}

/// For `β = kappa·α`, the fit ([`fit_at_ratio`]) at the γ/α that minimises
/// `sse + penalty(ln(ρ/ρ₀))`: searched on a logarithmic grid around `rho0`, then refined
/// between the best point's neighbours.
pub(super) fn best_on_ratio_grid(
    s: &Sums,
    static_w: Option<f64>,
    kappa: f64,
    rho0: f64,
    penalty: &dyn Fn(f64) -> f64,
) -> Option<Candidate> {
    let step = std::f64::consts::LN_10 / f64::from(RATIO_STEPS_PER_DECADE);
    let steps = RATIO_STEPS_PER_DECADE * RATIO_DECADES;
    let objective = |c: &Candidate| c.sse + penalty(c.log_ratio);
    let grid = (-steps..=steps)
        .filter_map(|j| fit_at_ratio(s, static_w, kappa, rho0, f64::from(j) * step));
    let best = grid.min_by(|a, b| objective(a).total_cmp(&objective(b)))?;
    // Golden-section search between the neighbours (the objective is smooth in the ratio):
    // 30 steps narrow the bracket a million-fold.
    let at_ratio = |l: f64| {
        fit_at_ratio(s, static_w, kappa, rho0, l)
            .map_or((f64::INFINITY, None), |c| (objective(&c), Some(c)))
    };
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = (best.log_ratio - step, best.log_ratio + step);
    let (mut x1, mut x2) = (hi - phi * (hi - lo), lo + phi * (hi - lo));
    let (mut f1, mut f2) = (at_ratio(x1), at_ratio(x2));
    for _ in 0..30 {
        if f1.0 <= f2.0 {
            hi = x2;
            (x2, f2) = (x1, f1);
            x1 = hi - phi * (hi - lo);
            f1 = at_ratio(x1);
        } else {
            lo = x1;
            (x1, f1) = (x2, f2);
            x2 = lo + phi * (hi - lo);
            f2 = at_ratio(x2);
        }
    }
    let refined = if f1.0 <= f2.0 { f1 } else { f2 };
    if let (f, Some(c)) = refined {
        if f < objective(&best) {
            return Some(c);
        }
    }
    Some(best)
}

/// The sums with the decode column folded into the prefill column at `β = kappa × α`: column 1
/// becomes `prefill + kappa·decode` and column 2 is emptied (no subset with it solves).
pub(super) fn tie_decode_to_prefill(s: &Sums, kappa: f64) -> Sums {
    let mut t = *s;
    t.xx[1][1] = s.xx[1][1] + 2.0 * kappa * s.xx[1][2] + kappa * kappa * s.xx[2][2];
    for j in [0, 3] {
        t.xx[1][j] = s.xx[1][j] + kappa * s.xx[2][j];
        t.xx[j][1] = t.xx[1][j];
    }
    t.xy[1] = s.xy[1] + kappa * s.xy[2];
    for j in 0..K {
        t.xx[2][j] = 0.0;
        t.xx[j][2] = 0.0;
    }
    t.xy[2] = 0.0;
    t
}

/// Condition number of the scaled normal matrix of the terms in `mask` (Jacobi eigenvalues).
pub(super) fn condition(s: &Sums, mask: u32) -> Option<f64> {
    let idx: Vec<usize> = (0..K).filter(|i| mask & (1 << i) != 0).collect();
    let n = idx.len();
    if n == 0 {
        return None;
    }
    let d: Vec<f64> = idx.iter().map(|&i| s.xx[i][i].sqrt()).collect();
    let mut a = vec![vec![0.0; n]; n];
    for (r, &i) in idx.iter().enumerate() {
        for (c, &j) in idx.iter().enumerate() {
            a[r][c] = s.xx[i][j] / (d[r] * d[c]);
        }
    }
    for _ in 0..50 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p][q] * a[p][q];
                if a[p][q].abs() < 1e-15 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - sn * akq;
                    row[q] = sn * akp + c * akq;
                }
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for (k, (apk, aqk)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][k] = c * apk - sn * aqk;
                    a[q][k] = sn * apk + c * aqk;
                }
            }
        }
        if off < 1e-24 {
            break;
        }
    }
    let eig: Vec<f64> = (0..n).map(|i| a[i][i]).collect();
    let max = eig.iter().copied().fold(f64::MIN, f64::max);
    let min = eig.iter().copied().fold(f64::MAX, f64::min);
    Some(if min <= 0.0 { f64::INFINITY } else { max / min })
}
