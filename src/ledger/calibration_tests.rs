//! The calibration fit on synthetic ticks: recovery, trust rule, static estimate, blocks.

use super::*;

fn cfg() -> CalibrationConfig {
    CalibrationConfig {
        min_ticks: 20,
        window_ticks: 50,
        block_ticks: 1,
        ..CalibrationConfig::default()
    }
}

/// A fully busy 50 ms tick.
fn busy_tick(prefill: f64, decode: f64, context: f64) -> TickWork {
    TickWork {
        busy_s: 0.05,
        prefill,
        decode,
        context,
        span_s: 0.05,
    }
}

/// A tick busy for `busy_s` of twice that: never fully busy, so static power is fitted.
fn work(busy_s: f64, prefill: f64, decode: f64, context: f64) -> TickWork {
    TickWork {
        busy_s,
        prefill,
        decode,
        context,
        span_s: 2.0 * busy_s,
    }
}

/// `n` ticks of synthetic work whose energy is `static_w·busy + α·p + β·d + γ·ctx`.
fn feed(c: &mut Calibrator, n: u32, static_w: f64, alpha: f64, beta: f64, gamma: f64) {
    for k in 0..n {
        let busy = 0.02 + f64::from(k % 4) * 0.01;
        let p = f64::from((k * 37) % 400);
        let d = f64::from((k * 11) % 64 + 1);
        let ctx = d * f64::from((k * 13) % 900 + 50);
        let e = static_w * busy + alpha * p + beta * d + gamma * ctx;
        c.observe(work(busy, p, d, ctx), e);
    }
}

#[test]
fn recovers_known_weights_and_static_power_then_trusts_them() {
    let mut c = Calibrator::new(cfg());
    assert!(!c.report().trusted);
    // β at the defaults' ratio to α (1 : 1), as the fit assumes.
    feed(&mut c, 200, 230.0, 0.01, 0.01, 0.000_014);
    let r = c.report();
    assert!(r.trusted, "{r:?}");
    let close = |x: f64, truth: f64, tol: f64| (x / truth - 1.0).abs() < tol;
    assert!(close(r.alpha_j, 0.01, 0.01), "{r:?}");
    assert_eq!(r.beta_j, r.alpha_j, "β follows α at the defaults' ratio");
    // γ within 5 %: the prior (γ = α / 1000) still weighs as two blocks of the fifty.
    assert!(close(r.gamma_j, 0.000_014, 0.05), "{r:?}");
    assert!(close(r.fitted_static_w.unwrap(), 230.0, 0.01), "{r:?}");
    assert_eq!(r.ticks, 50);
}

#[test]
fn a_decode_cost_off_the_defaults_ratio_moves_alpha_and_gamma_a_little() {
    // β = 0.6 α, between the ratios the fit may choose (1/2 and 1): the decode's own cost is off,
    // and α and γ make up for it within 40 % (the price of the tie, which keeps γ from taking
    // or giving up the decode's energy when decode and context counts move together).
    let mut c = Calibrator::new(cfg());
    feed(&mut c, 200, 230.0, 0.01, 0.006, 0.000_014);
    let r = c.report();
    assert!(r.trusted, "{r:?}");
    let close = |x: f64, truth: f64, tol: f64| (x / truth - 1.0).abs() < tol;
    assert!(close(r.alpha_j, 0.01, 0.05), "{r:?}");
    assert!(close(r.gamma_j, 0.000_014, 0.4), "{r:?}");
    assert!(close(r.fitted_static_w.unwrap(), 230.0, 0.01), "{r:?}");
}

#[test]
fn a_weak_prior_gives_way_to_the_data() {
    // The defaults say γ = α / 1000; the data, γ = α / 50. The prior weighs as two blocks
    // whatever the window holds, so a window of 400 follows the data within 2 % (a pull of a
    // fixed 5 % of each column's weight left it 10 % short, and in the bench near its default).
    let mut c = Calibrator::new(CalibrationConfig {
        window_ticks: 400,
        ..cfg()
    });
    feed(&mut c, 400, 230.0, 0.01, 0.01, 0.000_2);
    let r = c.report();
    assert!(r.trusted, "{r:?}");
    assert!((r.gamma_j / 0.000_2 - 1.0).abs() < 0.02, "{r:?}");
}

#[test]
fn negative_solution_is_clamped_and_untrusted() {
    let mut c = Calibrator::new(cfg());
    for k in 0..100u32 {
        let p = f64::from(k % 10);
        let d = f64::from(k % 7 + 1);
        // Energy that falls with decode: the unconstrained decode cost would be negative, and
        // without context there is no γ to fit.
        c.observe(work(0.0, p, d, 0.0), (0.5 * p - 0.2 * d).max(0.0));
    }
    let r = c.report();
    assert!(r.fitted_alpha_j.is_some_and(|a| a >= 0.0));
    assert!(r.fitted_beta_j.is_some_and(|b| b >= 0.0));
    assert!(!r.trusted, "{r:?}");
    assert_eq!(c.weights(), (0.01, 0.01, 0.00001));
}

#[test]
fn collinear_inputs_are_not_trusted_and_bad_samples_ignored() {
    let mut c = Calibrator::new(cfg());
    for k in 1..100u32 {
        // Decode and context in a fixed ratio, no prefill: α and γ cannot be told apart.
        let x = f64::from(k);
        c.observe(work(0.0, 0.0, x, 500.0 * x), 0.3 * x);
    }
    assert!(!c.report().trusted, "{:?}", c.report());
    c.observe(work(0.0, f64::NAN, 1.0, 0.0), 1.0);
    c.observe(work(0.0, 0.0, 0.0, 0.0), 1.0);
    c.observe(work(-1.0, 1.0, 1.0, 0.0), 1.0);
    assert_eq!(c.report().ticks, 50);
}

#[test]
fn fixed_weights_are_trusted_and_never_fitted_over() {
    let mut c = Calibrator::new(CalibrationConfig {
        fixed: true,
        default_alpha_j: 0.02,
        ..cfg()
    });
    assert!(c.report().trusted);
    for k in 0..100u32 {
        c.observe(work(0.05, f64::from(k), 10.0, 0.0), 1.0);
    }
    assert_eq!(c.weights(), (0.02, 0.01, 0.00001));
    assert!(c.report().trusted);
}

#[test]
fn static_power_comes_from_the_lightest_busy_ticks_and_blocks_sum_ticks() {
    let mut c = Calibrator::new(CalibrationConfig {
        block_ticks: 5,
        ..cfg()
    });
    for k in 0..600u32 {
        // Fully busy ticks whose prefill always comes with busy time: a joint fit could give
        // prefill's energy to the static term; the lightest ticks pin static at 200 W.
        let p = f64::from((k * 37) % 400);
        let d = f64::from((k * 11) % 64 + 1);
        c.observe(busy_tick(p, d, 0.0), 200.0 * 0.05 + 0.02 * p + 0.001 * d);
    }
    let r = c.report();
    assert_eq!(r.ticks, 50, "600 ticks in blocks of 5, window of 50");
    let st = r.fitted_static_w.unwrap();
    // A low quantile of the ticks' power bounds it within 5 % above the true 200 W; the fit may
    // lower it a little (its decode, at a twentieth of α, is fitted at a quarter, the least β/α
    // it allows). The marginal cost of prefill within 25 % of 0.02 J.
    assert!((190.0..210.0).contains(&st), "{r:?}");
    let alpha = r.fitted_alpha_j.unwrap();
    assert!((alpha / 0.02 - 1.0).abs() < 0.25, "{r:?}");
}

#[test]
fn an_engine_that_never_ran_light_has_its_static_bound_below_its_busy_power() {
    // Every busy span is a full prefill load (230 W running, 10 mJ per prompt token at 30,000
    // tokens/s: 530 W above idle), a few decodes beside: the lightest spans still carry the
    // prefill, and their power bounded the static term at 530 W.
    let heavy = |c: &mut Calibrator, decode: f64| {
        for k in 0..400u32 {
            let p = 1_500.0 + f64::from(k % 7) * 10.0;
            c.observe(
                busy_tick(p, decode, decode * 5_000.0),
                230.0 * 0.05 + 0.01 * p,
            );
        }
    };
    let mut c = Calibrator::new(cfg());
    heavy(&mut c, 2.0);
    let bound = c.static_estimate().unwrap();
    let median_w = (230.0 * 0.05 + 0.01 * 1_530.0) / 0.05;
    assert!(bound <= HEAVY_ONLY_STATIC_SHARE * median_w + 1.0, "{bound}");
    assert!(bound > 0.5 * median_w, "{bound}");
    // With light spans beside (decode led, 250 W), the lightest spans set it as before.
    let mut c = Calibrator::new(cfg());
    for k in 0..200u32 {
        let d = 40.0 + f64::from(k % 5);
        c.observe(busy_tick(0.0, d, d * 500.0), 250.0 * 0.05);
    }
    heavy(&mut c, 2.0);
    let bound = c.static_estimate().unwrap();
    assert!((bound - 250.0).abs() < 1.0, "{bound}");
}

/// Fully busy tick `k`'s prompt, decode and context tokens: every fourth run of five ticks (a
/// busy-power span) nearly idle work, which pins the static estimate.
fn pinned_tick(k: u32) -> (f64, f64, f64) {
    if (k / 5) % 4 == 0 {
        return (0.0, 1.0, 1.0);
    }
    let d = f64::from((k * 11) % 64 + 1);
    (
        f64::from((k * 37) % 400),
        d,
        d * f64::from((k * 13) % 900 + 50),
    )
}

/// Energy of tick `k` that follows the defaults' proportions (1 : 1 : 0.001) with 5 % noise.
fn defaults_energy(k: u32, (p, d, ctx): (f64, f64, f64)) -> f64 {
    let noise = 0.05 * (f64::from((k * 7919) % 201) / 100.0 - 1.0);
    (100.0 * 0.05 + 0.03 * (p + d + 0.001 * ctx)) * (1.0 + noise)
}

#[test]
fn a_fit_no_better_than_the_defaults_proportions_is_not_used() {
    let mut c = Calibrator::new(cfg());
    for k in 0..600u32 {
        // A fit can explain a little of the noise (and of the light ticks' work, which the
        // static estimate carries), never beat the defaults by the margin.
        let (p, d, ctx) = pinned_tick(k);
        c.observe(busy_tick(p, d, ctx), defaults_energy(k, (p, d, ctx)));
    }
    let r = c.report();
    assert!(!r.trusted, "{r:?}");
    // Once a fit was trusted (the noise let one beat the margin for a moment), its weights stay
    // in use while later fits are not trusted; here they keep the defaults' proportions within
    // the noise (only the proportions decide a split).
    let (a, b, g) = c.weights();
    assert_eq!(b / a, 1.0, "{r:?}");
    assert!((g / a / 0.001 - 1.0).abs() < 0.35, "{r:?}");
}

#[test]
fn a_fit_never_trusted_leaves_the_defaults_in_use() {
    let mut c = Calibrator::new(cfg());
    // Too few ticks for any fit to be trusted.
    for k in 0..10u32 {
        let p = f64::from((k * 37) % 400);
        c.observe(busy_tick(p, 4.0, 400.0), 100.0 * 0.05 + 0.03 * p);
    }
    assert!(!c.report().trusted);
    assert_eq!(c.weights(), (0.01, 0.01, 0.00001));
}

#[test]
fn the_fit_lowers_a_static_estimate_that_the_lightest_ticks_still_carry_work_in() {
    // Every busy tick decodes at least 20 sequences with 500+ tokens of context each, so even
    // the lightest draw ~16 W above the true 190 W static power: the quantile alone overstates
    // it, and α and γ would lose that energy. The joint fit finds 190 W within 2 % and γ within
    // 10 % (the prior, two blocks of the 400, pulls it towards α / 1000).
    let mut c = Calibrator::new(CalibrationConfig {
        block_ticks: 5,
        window_ticks: 400,
        ..cfg()
    });
    for k in 0..2000u32 {
        let p = f64::from((k * 37) % 400);
        let d = f64::from((k * 11) % 44 + 20);
        let ctx = d * f64::from((k * 13) % 900 + 500);
        c.observe(
            busy_tick(p, d, ctx),
            190.0 * 0.05 + 0.01 * (p + d) + 0.000_06 * ctx,
        );
    }
    let r = c.report();
    assert!(r.trusted, "{r:?}");
    let close = |x: f64, truth: f64, tol: f64| (x / truth - 1.0).abs() < tol;
    assert!(close(r.fitted_static_w.unwrap(), 190.0, 0.02), "{r:?}");
    assert!(close(r.alpha_j, 0.01, 0.05), "{r:?}");
    assert!(close(r.gamma_j, 0.000_06, 0.1), "{r:?}");
}

#[test]
fn a_lumpy_meter_does_not_pull_the_static_bound_down() {
    // A 20 ms counter read every 50 ms: ticks get two or three of its increments, so a tick's
    // energy is 0.8× or 1.2× what the engine drew in it. The engine draws 200 W above idle while
    // it runs and little per token; the bound is a low quantile of busy power averaged over
    // spans of ticks, so it stays near 200 W, not at the 160 W of the light ticks.
    let mut c = Calibrator::new(cfg());
    for k in 0..400u32 {
        let p = f64::from((k * 37) % 40);
        let d = f64::from((k * 11) % 8 + 1);
        let lump = [0.8, 1.2, 1.2, 0.8, 1.0][(k % 5) as usize];
        c.observe(busy_tick(p, d, 0.0), lump * (200.0 * 0.05 + 0.01 * (p + d)));
    }
    let st = c.static_estimate().expect("enough busy spans");
    assert!((190.0..215.0).contains(&st), "static bound {st} W");
}

#[test]
fn the_decode_to_prefill_ratio_is_chosen_from_its_steps() {
    // β at half α, and at a quarter: the fit picks that ratio among [`KAPPA_STEPS`] and finds
    // α and γ as if it knew it. At the defaults' ratio it keeps it.
    let close = |x: f64, truth: f64, tol: f64| (x / truth - 1.0).abs() < tol;
    for (beta, kappa) in [(0.005, 0.5), (0.0025, 0.25), (0.01, 1.0)] {
        let mut c = Calibrator::new(cfg());
        feed(&mut c, 200, 230.0, 0.01, beta, 0.000_014);
        let r = c.report();
        assert!(r.trusted, "{r:?}");
        assert!(
            close(r.beta_j / r.alpha_j, kappa, 1e-9),
            "β/α {kappa}: {r:?}"
        );
        assert!(close(r.alpha_j, 0.01, 0.01), "{r:?}");
        assert!(close(r.gamma_j, 0.000_014, 0.05), "{r:?}");
    }
}

/// `feed`'s ticks with their energy off by a deterministic ±`noise` (relative).
fn feed_noisy(c: &mut Calibrator, n: u32, (alpha, gamma): (f64, f64), noise: f64) {
    for k in 0..n {
        let busy = 0.02 + f64::from(k % 4) * 0.01;
        let p = f64::from((k * 37) % 400);
        let d = f64::from((k * 11) % 64 + 1);
        let ctx = d * f64::from((k * 13) % 900 + 50);
        let e = 230.0 * busy + alpha * (p + d) + gamma * ctx;
        let wobble = f64::from((k * 7919) % 201) / 100.0 - 1.0;
        c.observe(work(busy, p, d, ctx), e * (1.0 + noise * wobble));
    }
}

#[test]
fn the_prior_on_the_context_ratio_weighs_as_the_ticks_noise() {
    // γ/α fifteen times the defaults' (a context-bound engine). Ticks that pin it overrule the
    // prior, within 10 % at 1 % noise; noisier ticks of the same work tell it apart less well,
    // and the fit stays nearer the defaults' ratio, never beyond the truth.
    let ratio = |noise: f64| {
        let mut c = Calibrator::new(cfg());
        feed_noisy(&mut c, 200, (0.01, 0.000_15), noise);
        let r = c.report();
        (r.fitted_gamma_j.unwrap() / r.fitted_alpha_j.unwrap(), r)
    };
    let (precise, r) = ratio(0.01);
    assert!((precise / 0.015 - 1.0).abs() < 0.1, "{r:?}");
    assert!(r.trusted, "{r:?}");
    let (noisy, r) = ratio(0.3);
    assert!(
        noisy < precise && noisy > 0.001,
        "{noisy} against {precise}: {r:?}"
    );
}

#[test]
fn the_fit_on_the_ratio_grid_is_exact_least_squares() {
    // The closed forms' squared error is the sums' own at the coefficients found, the fit at the
    // refined ratio is no worse than at any grid point, and without a penalty an exact model is
    // found to the digit between grid points (γ/α = 0.00137, not on the grid).
    let mut c = Calibrator::new(cfg());
    feed(&mut c, 200, 230.0, 0.01, 0.01, 0.000_013_7);
    let s = c.sums;
    for static_w in [None, Some(230.0), Some(200.0)] {
        let best = solve::best_on_ratio_grid(&s, static_w, 1.0, 0.001, &|_| 0.0).unwrap();
        assert!((best.sse - s.sse(&best.c)).abs() <= 1e-9 * s.yy, "{best:?}");
        if static_w != Some(200.0) {
            assert!(
                (best.c[3] / best.c[1] / 0.001_37 - 1.0).abs() < 1e-6,
                "{best:?}"
            );
            assert!((best.c[0] - 230.0).abs() < 1e-6, "{best:?}");
        } else {
            // Static bounded below the truth: the fit at the bound, the rest left to α and γ.
            assert!(best.c[0] <= 200.0, "{best:?}");
        }
    }
}

#[test]
fn a_fit_trusted_once_stays_in_use_while_later_fits_are_not_trusted() {
    let mut c = Calibrator::new(cfg());
    // Ticks as in `a_fit_no_better_than_the_defaults_proportions_is_not_used`, first from an
    // engine with β at a quarter of α: trusted.
    for k in 0..600u32 {
        let (p, d, ctx) = pinned_tick(k);
        c.observe(
            busy_tick(p, d, ctx),
            100.0 * 0.05 + 0.04 * p + 0.01 * d + 0.000_04 * ctx,
        );
    }
    let r = c.report();
    assert!(r.trusted, "{r:?}");
    assert!((r.beta_j / r.alpha_j - 0.25).abs() < 1e-9, "{r:?}");
    // Then energy that follows the defaults' proportions with 5 % noise: once the window holds
    // only that, no fit beats them by the margin and none is trusted; the weights of the last
    // trusted fit stay in use, not the defaults.
    let mut last_trusted = c.weights();
    for k in 600..1200u32 {
        let (p, d, ctx) = pinned_tick(k);
        c.observe(busy_tick(p, d, ctx), defaults_energy(k, (p, d, ctx)));
        if c.report().trusted {
            last_trusted = c.weights();
        }
    }
    let r = c.report();
    assert!(!r.trusted, "{r:?}");
    assert_eq!(c.weights(), last_trusted);
    assert_ne!(c.weights(), (0.01, 0.01, 0.000_01));
}
