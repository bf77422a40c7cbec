//! Online calibration of the work weights α (per prefill token) and β (per decode token).
//!
//! Owns the fit only: a bounded window of settled ticks `(prefill_k, steps_k, decode_k,
//! ΔE_k − P_idle·Δt)` and a three-variable non-negative least-squares fit through the origin,
//! solved from running sums (the best non-negative solution over every subset of regressors).
//! `steps_k` is the number of engine steps in the tick, estimated by the largest decode count of
//! one item (continuous batching advances every running sequence once per step): a step's fixed
//! cost (weights read once, static power over its floor time) is shared by its batch, so the
//! full cost of a decode token falls as the batch grows. One β for every batch size, as fitted
//! before, overcharged decodes in large batches against prefills (mixed workload: long prompts
//! under-attributed by 25-57 %).
//! Until the fit is trustworthy (enough ticks, well conditioned, explains the data, both weights
//! positive) the configured defaults are used. A context (KV length) term is not fitted: the proxy
//! cannot see batch composition, and per-tick context sums are nearly collinear with decode counts,
//! so the extra term would mostly add variance. A busy-time (static power) term was tried by the
//! first author: it recovers the marginal costs, but a proportional split inside a tick is more
//! accurate with weights that explain the tick's whole energy (static included), which the
//! through-origin fit gives; the step term keeps that property.

use std::collections::VecDeque;

/// Thresholds and defaults for [`Calibrator`].
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationConfig {
    /// Default α, joules per prefill token, used until the fit is trusted. The defaults are rough
    /// full-cost figures (static power included) for an 8B model on one H100: what matters for
    /// the split is the ratio β/α (about 15).
    pub default_alpha_j: f64,
    /// Default β, joules per decode token.
    pub default_beta_j: f64,
    /// Number of recent ticks in the fitting window.
    pub window_ticks: usize,
    /// Ticks needed before the fit can be trusted.
    pub min_ticks: usize,
    /// Largest acceptable condition number of the normalised normal matrix.
    pub max_condition: f64,
    /// Smallest acceptable coefficient of determination (through the origin).
    pub min_r2: f64,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        CalibrationConfig {
            default_alpha_j: 0.02,
            default_beta_j: 0.3,
            window_ticks: 1200,
            min_ticks: 40,
            max_condition: 1e4,
            min_r2: 0.5,
        }
    }
}

/// The current fit and its quality, as `/stats` shows it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CalibrationReport {
    /// α in use (fitted when `trusted`, else the default), joules per prefill token.
    pub alpha_j: f64,
    /// β in use, joules per decode token.
    pub beta_j: f64,
    /// The latest fitted α (None before any fit).
    pub fitted_alpha_j: Option<f64>,
    /// The latest fitted β.
    pub fitted_beta_j: Option<f64>,
    /// R² of the fit (through the origin).
    pub r2: Option<f64>,
    /// Condition number of the normalised normal matrix.
    pub condition: Option<f64>,
    /// Ticks in the window.
    pub ticks: usize,
    /// Whether the fitted values are in use.
    pub trusted: bool,
}

/// Regressors of the fit: prefill tokens, engine steps, decode tokens.
const K: usize = 3;

#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    xx: [[f64; K]; K],
    xy: [f64; K],
    yy: f64,
    sx: [f64; K],
}

impl Sums {
    fn add(&mut self, (x, y): ([f64; K], f64), sign: f64) {
        for i in 0..K {
            for j in 0..K {
                self.xx[i][j] += sign * x[i] * x[j];
            }
            self.xy[i] += sign * x[i] * y;
            self.sx[i] += sign * x[i];
        }
        self.yy += sign * y * y;
    }

    fn sse(&self, c: &[f64; K]) -> f64 {
        let mut s = self.yy;
        for i in 0..K {
            s -= 2.0 * c[i] * self.xy[i];
            for j in 0..K {
                s += c[i] * c[j] * self.xx[i][j];
            }
        }
        s
    }

    /// Least squares restricted to the regressors in `mask` (the others fixed at 0), by Gaussian
    /// elimination on the normal equations; `None` when they are (nearly) singular.
    fn solve(&self, mask: usize) -> Option<[f64; K]> {
        let idx: Vec<usize> = (0..K).filter(|i| mask & (1 << i) != 0).collect();
        let n = idx.len();
        let mut m = [[0.0f64; K + 1]; K];
        for (r, &i) in idx.iter().enumerate() {
            if self.xx[i][i] <= 0.0 {
                return None;
            }
            for (c, &j) in idx.iter().enumerate() {
                // Normalised (a correlation matrix), so one threshold fits every scale.
                m[r][c] = self.xx[i][j] / (self.xx[i][i] * self.xx[j][j]).sqrt();
            }
            m[r][n] = self.xy[i] / self.xx[i][i].sqrt();
        }
        for col in 0..n {
            let piv = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
            m.swap(col, piv);
            if m[col][col].abs() < 1e-9 {
                return None;
            }
            for r in 0..n {
                if r != col {
                    let f = m[r][col] / m[col][col];
                    for c in col..=n {
                        m[r][c] -= f * m[col][c];
                    }
                }
            }
        }
        let mut out = [0.0; K];
        for (r, &i) in idx.iter().enumerate() {
            out[i] = m[r][n] / m[r][r] / self.xx[i][i].sqrt();
        }
        out.iter().all(|v| v.is_finite()).then_some(out)
    }
}

/// The weights the split uses: a prefill token weighs `alpha_j`; a decode token weighs
/// `delta_j + gamma_j · steps / decode_tokens` of its tick, i.e. its own marginal cost plus its
/// share of the engine steps it rode in (a step's fixed cost is shared by the batch: a decode
/// token in a batch of 4 carries 16 times the step share of one in a batch of 64).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// Joules per prefill token.
    pub alpha_j: f64,
    /// Joules per engine step (shared by the decode tokens of the step).
    pub gamma_j: f64,
    /// Joules per decode token, beyond its step share.
    pub delta_j: f64,
}

impl Weights {
    /// Weight of one decode token in a tick with `steps` engine steps and `decode` decode tokens.
    pub fn decode_token_j(&self, steps: f64, decode: f64) -> f64 {
        if decode > 0.0 {
            self.delta_j + self.gamma_j * steps / decode
        } else {
            self.delta_j + self.gamma_j
        }
    }
}

/// Windowed NNLS fit of ΔE − P_idle·Δt ≈ α·prefill + γ·steps + δ·decode.
#[derive(Clone, Debug)]
pub struct Calibrator {
    config: CalibrationConfig,
    window: VecDeque<([f64; K], f64)>,
    sums: Sums,
    since_recompute: usize,
    weights: Weights,
    report: CalibrationReport,
}

impl Calibrator {
    /// A calibrator starting from the configured defaults.
    pub fn new(config: CalibrationConfig) -> Self {
        let report = CalibrationReport {
            alpha_j: config.default_alpha_j,
            beta_j: config.default_beta_j,
            fitted_alpha_j: None,
            fitted_beta_j: None,
            r2: None,
            condition: None,
            ticks: 0,
            trusted: false,
        };
        Calibrator {
            window: VecDeque::with_capacity(config.window_ticks.max(1)),
            weights: Self::default_weights(&config),
            config,
            sums: Sums::default(),
            since_recompute: 0,
            report,
        }
    }

    fn default_weights(config: &CalibrationConfig) -> Weights {
        Weights {
            alpha_j: config.default_alpha_j,
            gamma_j: 0.0,
            delta_j: config.default_beta_j,
        }
    }

    /// Adds one settled tick: prefill tokens, engine steps (estimated) and decode tokens placed in
    /// it, and its energy above the idle baseline, in joules. Non-finite inputs are ignored.
    pub fn observe(&mut self, prefill_tokens: f64, steps: f64, decode_tokens: f64, active_j: f64) {
        let x = [prefill_tokens, steps.max(0.0), decode_tokens];
        if !(x.iter().all(|v| v.is_finite()) && active_j.is_finite()) {
            return;
        }
        if prefill_tokens <= 0.0 && decode_tokens <= 0.0 {
            return;
        }
        let sample = (x, active_j);
        let cap = self.config.window_ticks.max(1);
        if self.window.len() == cap {
            if let Some(old) = self.window.pop_front() {
                self.sums.add(old, -1.0);
            }
        }
        self.window.push_back(sample);
        self.sums.add(sample, 1.0);
        self.since_recompute += 1;
        // Subtracting old samples accumulates rounding error; rebuild the sums once per window.
        if self.since_recompute >= cap {
            self.sums = Sums::default();
            for s in &self.window {
                self.sums.add(*s, 1.0);
            }
            self.since_recompute = 0;
        }
        self.refit();
    }

    fn refit(&mut self) {
        let s = self.sums;
        // Exact NNLS in three variables: the best non-negative least-squares solution over every
        // subset of regressors (the active-set answer, by enumeration: 7 tiny solves).
        let best = (1..(1usize << K))
            .filter_map(|mask| s.solve(mask))
            .filter(|c| c.iter().all(|v| *v >= 0.0))
            .min_by(|x, y| s.sse(x).total_cmp(&s.sse(y)));
        let n = self.window.len();
        // Whether prefill and decode work can be told apart at all (their tick counts are not
        // collinear): the condition number of their 2x2 correlation matrix.
        let (s11, s22, s12) = (s.xx[0][0], s.xx[2][2], s.xx[0][2]);
        let condition = if s11 > 0.0 && s22 > 0.0 {
            let c = (s12 / (s11 * s22).sqrt()).abs().min(1.0);
            Some(if c >= 1.0 {
                f64::INFINITY
            } else {
                (1.0 + c) / (1.0 - c)
            })
        } else {
            None
        };
        // The effective decode weight at the window's mean steps per decode token, for /stats.
        let steps_per_decode = if s.sx[2] > 0.0 {
            s.sx[1].max(0.0) / s.sx[2]
        } else {
            0.0
        };
        let (fitted, r2) = match best {
            Some(c) => {
                let r2 = (s.yy > 0.0).then(|| 1.0 - s.sse(&c) / s.yy);
                (
                    Some(Weights {
                        alpha_j: c[0],
                        gamma_j: c[1],
                        delta_j: c[2],
                    }),
                    r2,
                )
            }
            None => (None, None),
        };
        let effective_beta = |w: &Weights| w.delta_j + w.gamma_j * steps_per_decode;
        let trusted = n >= self.config.min_ticks
            && condition.is_some_and(|c| c <= self.config.max_condition)
            && r2.is_some_and(|r| r >= self.config.min_r2)
            && fitted.is_some_and(|w| w.alpha_j > 0.0 && effective_beta(&w) > 0.0);
        self.weights = match fitted {
            Some(w) if trusted => w,
            _ => Self::default_weights(&self.config),
        };
        self.report = CalibrationReport {
            alpha_j: self.weights.alpha_j,
            beta_j: effective_beta(&self.weights),
            fitted_alpha_j: fitted.map(|w| w.alpha_j),
            fitted_beta_j: fitted.map(|w| effective_beta(&w)),
            r2,
            condition,
            ticks: n,
            trusted,
        };
    }

    /// The fit and its quality (`beta_j`: the effective decode-token weight at the window's mean
    /// batch, `delta + gamma · steps / decode tokens`).
    pub fn report(&self) -> CalibrationReport {
        self.report
    }

    /// The weights in use.
    pub fn weights(&self) -> Weights {
        self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CalibrationConfig {
        CalibrationConfig {
            min_ticks: 20,
            window_ticks: 50,
            ..CalibrationConfig::default()
        }
    }

    #[test]
    fn recovers_known_weights_and_then_trusts_them() {
        let mut c = Calibrator::new(cfg());
        assert!(!c.report().trusted);
        for k in 0..200u32 {
            let p = f64::from((k * 37) % 400);
            let d = f64::from((k * 11) % 64 + 1);
            c.observe(p, 0.0, d, 0.03 * p + 0.25 * d);
        }
        let r = c.report();
        assert!(r.trusted, "{r:?}");
        assert!((r.alpha_j - 0.03).abs() < 1e-6);
        assert!((r.beta_j - 0.25).abs() < 1e-6);
        assert_eq!(r.ticks, 50);
    }

    #[test]
    fn recovers_the_step_term_from_varying_batches() {
        let mut c = Calibrator::new(cfg());
        for k in 0..200u32 {
            let p = f64::from((k * 37) % 400);
            let steps = f64::from(k % 5 + 3);
            let batch = f64::from((k * 7) % 40 + 1);
            let d = steps * batch;
            c.observe(p, steps, d, 0.02 * p + 1.8 * steps + 0.012 * d);
        }
        let r = c.report();
        assert!(r.trusted, "{r:?}");
        let w = c.weights();
        assert!((w.alpha_j - 0.02).abs() < 1e-6, "{w:?}");
        assert!((w.gamma_j - 1.8).abs() < 1e-6, "{w:?}");
        assert!((w.delta_j - 0.012).abs() < 1e-6, "{w:?}");
        // A decode token in a batch of 4 weighs more than one in a batch of 40.
        assert!(w.decode_token_j(5.0, 20.0) > 5.0 * w.decode_token_j(5.0, 200.0));
    }

    #[test]
    fn negative_solution_is_clamped_and_untrusted() {
        let mut c = Calibrator::new(cfg());
        for k in 0..100u32 {
            let p = f64::from(k % 10);
            let d = f64::from(k % 7 + 1);
            // Energy that falls with prefill: the unconstrained α would be negative.
            c.observe(p, 0.0, d, (0.5 * d - 0.2 * p).max(0.0));
        }
        let r = c.report();
        assert!(r.fitted_alpha_j.is_some_and(|a| a >= 0.0));
        assert!(r.fitted_beta_j.is_some_and(|b| b >= 0.0));
        assert!(!r.trusted);
        assert_eq!(
            c.weights(),
            Weights {
                alpha_j: 0.02,
                gamma_j: 0.0,
                delta_j: 0.3
            }
        );
    }

    #[test]
    fn collinear_inputs_are_not_trusted() {
        let mut c = Calibrator::new(cfg());
        for k in 1..100u32 {
            let x = f64::from(k);
            c.observe(x, 0.0, 2.0 * x, 0.3 * x);
        }
        assert!(!c.report().trusted);
        c.observe(f64::NAN, 0.0, 1.0, 1.0);
        c.observe(0.0, 0.0, 0.0, 1.0);
        assert_eq!(c.report().ticks, 50);
    }
}
