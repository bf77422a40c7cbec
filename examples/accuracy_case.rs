//! One case of the deterministic accuracy bench, request by request: what the ledger gave each
//! request (record and response figure) beside the simulated engine's truth, the calibration it
//! ended with and its rates. For investigating a cell of `cargo bench --bench accuracy`.
//!
//! ```sh
//! cargo run --release --example accuracy_case -- steady          # the 8B model, 50 ms counter
//! cargo run --release --example accuracy_case -- mixed-long --model 70b-4xh100 --counter-ms 100
//! cargo run --release --example accuracy_case -- prefill-heavy --requests 100 --metrics
//! cargo run --release --example accuracy_case -- steady --all-streams --true-weights
//! ```
//!
//! Options: `--model NAME` (`8b-h100`, `70b-4xh100`, `ctx-bound`; held out of the matrix:
//! `decode-dear`, `low-static`), `--counter-ms N`,
//! `--sample-ms N`, `--noise F` (relative, 0.01 = 1 %), `--jitter-ms J` (counter updates up to
//! ±J ms off their lattice), `--requests N`, `--seed N`, `--metrics`
//! (responses carry vLLM's per-request timing), `--prompt-spread F` (each prompt's estimate
//! from its body off by up to F more either way, besides its 10 % bias), `--all-streams` / `--no-streams` (override the
//! plan), `--true-weights` (the ledger splits with the engine's own marginal costs instead of
//! its fit: separates placement error from calibration error), `--weights α,β,γ` (fixed weights,
//! joules per token), `--plan "0:543:52:j,0:587:253:s,30:800:40:s:2"` (hand-made requests instead
//! of the workload's: `at_ms:prompt:max_tokens:s|j[:n]`, `s` a stream, `j` a JSON answer).

use joulegate::accounting::AccountingConfig;
use joulegate::accuracy::{
    drive, model_named, report, Case, MeterModel, VirtualRequest, VirtualWorkload,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let number = |name: &str, default: f64| {
        value(name)
            .map(|v| match v.parse::<f64>() {
                Ok(x) => x,
                Err(_) => fail(&format!("{name}: not a number: {v}")),
            })
            .unwrap_or(default)
    };
    let workload_name = args.first().map(String::as_str).unwrap_or("steady");
    let Some(workload) = VirtualWorkload::ALL
        .into_iter()
        .find(|w| w.name() == workload_name)
    else {
        let names: Vec<&str> = VirtualWorkload::ALL.iter().map(|w| w.name()).collect();
        fail(&format!("workload {workload_name:?}: one of {names:?}"));
    };
    let model_name = value("--model").unwrap_or_else(|| "8b-h100".into());
    let Some(model) = model_named(&model_name) else {
        fail(&format!("unknown model {model_name:?}"));
    };
    let ms = |x: f64| (x * 1e6) as u64;
    let case = Case {
        workload,
        model,
        meter: MeterModel {
            counter_period_ns: ms(number("--counter-ms", 50.0)),
            sample_interval_ns: ms(number("--sample-ms", 50.0)),
            noise: number("--noise", 0.01),
            jitter_ns: ms(number("--jitter-ms", 0.0)),
        },
        requests: number("--requests", 40.0) as usize,
        seed: number("--seed", 11.0) as u64,
        per_request_metrics: flag("--metrics"),
        prompt_estimate_spread: number("--prompt-spread", 0.0),
        streams: None,
        upstream_metrics: (!flag("--no-upstream-metrics"))
            .then(|| ms(number("--upstream-metrics-ms", 250.0))),
    };
    let mut config = AccountingConfig::default();
    if let Some(t) = value("--settle-ticks") {
        config.ledger.settle_ticks = t
            .parse()
            .unwrap_or_else(|_| fail("--settle-ticks: a count"));
    }
    if flag("--true-weights") {
        let c = &case.model.cost;
        let cal = &mut config.ledger.calibration;
        cal.fixed = true;
        cal.default_alpha_j = c.prefill_nj_per_token as f64 / 1e9;
        cal.default_beta_j = c.decode_nj_per_token as f64 / 1e9;
        cal.default_gamma_j = c.context_nj_per_token as f64 / 1e9;
    }
    if let Some(w) = value("--weights") {
        // Fixed α,β,γ (J per token), for experiments on calibration error.
        let v: Vec<f64> = w.split(',').filter_map(|x| x.parse().ok()).collect();
        if v.len() != 3 {
            fail("--weights: α,β,γ in joules per token");
        }
        let cal = &mut config.ledger.calibration;
        cal.fixed = true;
        (cal.default_alpha_j, cal.default_beta_j, cal.default_gamma_j) = (v[0], v[1], v[2]);
    }
    let mut scenario = case.scenario();
    if let Some(plan) = value("--plan") {
        scenario.requests = parse_plan(&plan);
    }
    for r in &mut scenario.requests {
        if flag("--all-streams") {
            r.stream = true;
        } else if flag("--no-streams") {
            r.stream = false;
        }
    }
    let result = match drive::run(&scenario, config) {
        Ok(r) => r,
        Err(e) => fail(&format!("cannot run: {e}")),
    };
    println!(
        "{:>7} {:>6} {:>5} {:>2} {:>6} {:>12} {:>12} {:>12} {:>8} {:>8} {:>10} {:>10}",
        "at_ms",
        "prompt",
        "out",
        "n",
        "stream",
        "truth_J",
        "record_J",
        "response_J",
        "rec_err",
        "resp_err",
        "truth_pf_J",
        "rec_pf_J"
    );
    for r in &result.rows {
        let j = |uj: Option<u64>| uj.map_or("-".to_owned(), |v| format!("{:.3}", v as f64 / 1e6));
        let err = |uj: Option<u64>| match uj {
            Some(v) if r.truth_uj > 0 => {
                format!("{:+.1}%", (v as f64 / r.truth_uj as f64 - 1.0) * 100.0)
            }
            _ => "-".into(),
        };
        println!(
            "{:>7} {:>6} {:>5} {:>2} {:>6} {:>12.3} {:>12} {:>12} {:>8} {:>8} {:>10.3} {:>10}",
            r.request.at_ns / 1_000_000,
            r.request.prompt,
            r.request.max_tokens,
            r.request.n,
            r.request.stream,
            r.truth_uj as f64 / 1e6,
            j(r.record_uj),
            j(r.provisional_uj),
            err(r.record_uj),
            err(r.provisional_uj),
            r.truth_prefill_uj as f64 / 1e6,
            j(r.record_prefill_uj),
        );
    }
    let rep = report(&result);
    let pct = |x: f64| x * 100.0;
    println!(
        "\nrecord |error| median {:.1} % p95 {:.1} %; response median {:.1} % p95 {:.1} %; books {}",
        pct(rep.record.median),
        pct(rep.record.p95),
        pct(rep.provisional.median),
        pct(rep.provisional.p95),
        if rep.books_exact { "exact" } else { "MISMATCH" }
    );
    if !rep.books_exact {
        println!("totals: {:?}", result.totals);
    }
    println!("calibration: {:?}", result.calibration);
    println!(
        "P_idle {:?} mW; prefill rate {:.0} tokens/s, per-request decode rate {:.1} tokens/s",
        result.p_idle_mw, result.rates.0, result.rates.1
    );
}

/// `at_ms:prompt:max_tokens:s|j[:n]`, comma-separated: a hand-made plan (`s` streams, `j` is a
/// JSON answer; `n` choices, 1 if left out).
fn parse_plan(plan: &str) -> Vec<VirtualRequest> {
    plan.split(',')
        .map(|r| {
            let bad = || -> ! {
                fail(&format!(
                    "--plan: {r:?}: want at_ms:prompt:max_tokens:s|j[:n]"
                ))
            };
            let f: Vec<&str> = r.split(':').collect();
            let num = |i: usize| -> u64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| bad())
            };
            let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            let (at_ms, prompt, max_tokens) = (num(0), num(1), num(2));
            let stream = match f.get(3) {
                Some(&"s") => true,
                Some(&"j") => false,
                _ => bad(),
            };
            let n = if f.len() > 4 { num(4) } else { 1 };
            VirtualRequest {
                at_ns: at_ms.saturating_mul(1_000_000),
                prompt: clamp(prompt),
                max_tokens: clamp(max_tokens).max(1),
                n: clamp(n).max(1),
                stream,
                abort_after_ns: None,
            }
        })
        .collect()
}

fn fail(message: &str) -> ! {
    eprintln!("accuracy_case: {message}");
    std::process::exit(2)
}
