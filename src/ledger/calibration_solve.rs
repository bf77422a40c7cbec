//! The calibration's linear algebra: running sums of the normal equations, the ridge-pulled
//! solve of a subset of the terms, the decode column folded into the prefill one, and the
//! condition number of a subset (split from `calibration.rs` by concern).

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

/// Solves the normal equations restricted to the terms in `mask` (column-scaled Gaussian
/// elimination with partial pivoting), with a ridge pull of each marginal term towards `prior`
/// of weight `ridge` relative to its column's: directions the data cannot tell apart settle near
/// the prior's proportions instead of swinging to 0 or to another term. `None` when singular.
pub(super) fn solve_subset(s: &Sums, mask: u32, prior: &[f64; K], ridge: f64) -> Option<[f64; K]> {
    let idx: Vec<usize> = (0..K).filter(|i| mask & (1 << i) != 0).collect();
    let n = idx.len();
    let scale: Vec<f64> = idx.iter().map(|&i| s.xx[i][i].sqrt()).collect();
    if scale.iter().any(|&d| !(d > 0.0 && d.is_finite())) {
        return None;
    }
    let mut a = vec![vec![0.0; n + 1]; n];
    for (r, &i) in idx.iter().enumerate() {
        for (c, &j) in idx.iter().enumerate() {
            a[r][c] = s.xx[i][j] / (scale[r] * scale[c]);
        }
        a[r][n] = s.xy[i] / scale[r];
        if i > 0 {
            // In scaled units the diagonal is 1: the pull is ridge × (prior × scale).
            a[r][r] += ridge;
            a[r][n] += ridge * prior[i] * scale[r];
        }
    }
    for col in 0..n {
        let piv = (col..n).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() < 1e-10 {
            return None;
        }
        a.swap(col, piv);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut out = [0.0; K];
    for (r, &i) in idx.iter().enumerate() {
        out[i] = a[r][n] / a[r][r] / scale[r];
    }
    out.iter().all(|v| v.is_finite()).then_some(out)
}

/// The ridge's penalty of coefficients `c` (every marginal term, in or out of the subset).
pub(super) fn ridge_cost(s: &Sums, c: &[f64; K], prior: &[f64; K], ridge: f64) -> f64 {
    (1..K)
        .map(|i| ridge * s.xx[i][i] * (c[i] - prior[i]).powi(2))
        .sum()
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
