//! Online calibration of the work weights α (per prefill token) and β (per decode token).
//!
//! Owns the fit only: a bounded window of settled ticks `(prefill_k, decode_k, ΔE_k − P_idle·Δt)`
//! and a two-variable non-negative least-squares fit through the origin, solved in closed form from
//! running sums (the unconstrained solution if it is non-negative, else the better one-variable fit).
//! Until the fit is trustworthy (enough ticks, well conditioned, explains the data, both weights
//! positive) the configured defaults are used. A context (KV length) term is not fitted: the proxy
//! cannot see batch composition, and per-tick context sums are nearly collinear with decode counts,
//! so the extra term would mostly add variance. A busy-time (static power) term was tried too: it
//! recovers the marginal costs, but a proportional split inside a tick is more accurate with
//! weights that explain the tick's whole energy (static included), which the through-origin fit
//! gives (checked against the toy engine in `accuracy_tests`).

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

#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    s11: f64,
    s12: f64,
    s22: f64,
    b1: f64,
    b2: f64,
    yy: f64,
}

impl Sums {
    fn add(&mut self, (x1, x2, y): (f64, f64, f64), sign: f64) {
        self.s11 += sign * x1 * x1;
        self.s12 += sign * x1 * x2;
        self.s22 += sign * x2 * x2;
        self.b1 += sign * x1 * y;
        self.b2 += sign * x2 * y;
        self.yy += sign * y * y;
    }

    fn sse(&self, a: f64, b: f64) -> f64 {
        self.yy - 2.0 * (a * self.b1 + b * self.b2)
            + a * a * self.s11
            + 2.0 * a * b * self.s12
            + b * b * self.s22
    }
}

/// Windowed NNLS fit of ΔE − P_idle·Δt ≈ α·prefill + β·decode.
#[derive(Clone, Debug)]
pub struct Calibrator {
    config: CalibrationConfig,
    window: VecDeque<(f64, f64, f64)>,
    sums: Sums,
    since_recompute: usize,
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
            config,
            sums: Sums::default(),
            since_recompute: 0,
            report,
        }
    }

    /// Adds one settled tick: prefill and decode tokens placed in it and its energy above the idle
    /// baseline, in joules. Non-finite inputs are ignored.
    pub fn observe(&mut self, prefill_tokens: f64, decode_tokens: f64, active_j: f64) {
        let sample = (prefill_tokens, decode_tokens, active_j);
        if !(prefill_tokens.is_finite() && decode_tokens.is_finite() && active_j.is_finite()) {
            return;
        }
        if prefill_tokens <= 0.0 && decode_tokens <= 0.0 {
            return;
        }
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
        let mut candidates: [Option<(f64, f64)>; 3] = [None, None, None];
        let det = s.s11 * s.s22 - s.s12 * s.s12;
        if det > 1e-12 * (s.s11 * s.s22).max(1e-300) {
            let a = (s.s22 * s.b1 - s.s12 * s.b2) / det;
            let b = (s.s11 * s.b2 - s.s12 * s.b1) / det;
            if a >= 0.0 && b >= 0.0 {
                candidates[0] = Some((a, b));
            }
        }
        if s.s11 > 0.0 {
            candidates[1] = Some(((s.b1 / s.s11).max(0.0), 0.0));
        }
        if s.s22 > 0.0 {
            candidates[2] = Some((0.0, (s.b2 / s.s22).max(0.0)));
        }
        let best = candidates
            .iter()
            .flatten()
            .copied()
            .min_by(|x, y| s.sse(x.0, x.1).total_cmp(&s.sse(y.0, y.1)));
        let n = self.window.len();
        let condition = if s.s11 > 0.0 && s.s22 > 0.0 {
            let c = (s.s12 / (s.s11 * s.s22).sqrt()).abs().min(1.0);
            Some(if c >= 1.0 {
                f64::INFINITY
            } else {
                (1.0 + c) / (1.0 - c)
            })
        } else {
            None
        };
        let (fa, fb, r2) = match best {
            Some((a, b)) => {
                let r2 = if s.yy > 0.0 {
                    Some(1.0 - s.sse(a, b) / s.yy)
                } else {
                    None
                };
                (Some(a), Some(b), r2)
            }
            None => (None, None, None),
        };
        let trusted = n >= self.config.min_ticks
            && condition.is_some_and(|c| c <= self.config.max_condition)
            && r2.is_some_and(|r| r >= self.config.min_r2)
            && fa.is_some_and(|a| a > 0.0)
            && fb.is_some_and(|b| b > 0.0);
        self.report = CalibrationReport {
            alpha_j: if trusted {
                fa.unwrap_or(self.config.default_alpha_j)
            } else {
                self.config.default_alpha_j
            },
            beta_j: if trusted {
                fb.unwrap_or(self.config.default_beta_j)
            } else {
                self.config.default_beta_j
            },
            fitted_alpha_j: fa,
            fitted_beta_j: fb,
            r2,
            condition,
            ticks: n,
            trusted,
        };
    }

    /// The fit and its quality.
    pub fn report(&self) -> CalibrationReport {
        self.report
    }

    /// The weights in use: (α, β) in joules per token.
    pub fn weights(&self) -> (f64, f64) {
        (self.report.alpha_j, self.report.beta_j)
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
            c.observe(p, d, 0.03 * p + 0.25 * d);
        }
        let r = c.report();
        assert!(r.trusted, "{r:?}");
        assert!((r.alpha_j - 0.03).abs() < 1e-6);
        assert!((r.beta_j - 0.25).abs() < 1e-6);
        assert_eq!(r.ticks, 50);
    }

    #[test]
    fn negative_solution_is_clamped_and_untrusted() {
        let mut c = Calibrator::new(cfg());
        for k in 0..100u32 {
            let p = f64::from(k % 10);
            let d = f64::from(k % 7 + 1);
            // Energy that falls with prefill: the unconstrained α would be negative.
            c.observe(p, d, (0.5 * d - 0.2 * p).max(0.0));
        }
        let r = c.report();
        assert!(r.fitted_alpha_j.is_some_and(|a| a >= 0.0));
        assert!(r.fitted_beta_j.is_some_and(|b| b >= 0.0));
        assert!(!r.trusted);
        assert_eq!(c.weights(), (0.02, 0.3));
    }

    #[test]
    fn collinear_inputs_are_not_trusted() {
        let mut c = Calibrator::new(cfg());
        for k in 1..100u32 {
            let x = f64::from(k);
            c.observe(x, 2.0 * x, 0.3 * x);
        }
        assert!(!c.report().trusted);
        c.observe(f64::NAN, 1.0, 1.0);
        c.observe(0.0, 0.0, 1.0);
        assert_eq!(c.report().ticks, 50);
    }
}
