use joulegate::accuracy::*;
fn main() {
    let w = match std::env::args().nth(1).as_deref() {
        Some("prefill") => VirtualWorkload::PrefillHeavy,
        Some("mixed") => VirtualWorkload::MixedLong,
        Some("queue") => VirtualWorkload::Queueing,
        _ => VirtualWorkload::Steady,
    };
    let case = Case {
        workload: w,
        model: cost_models().remove(
            std::env::var("M")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        meter: MeterModel {
            counter_period_ns: std::env::var("P")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(50_000_000),
            sample_interval_ns: std::env::var("S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(50_000_000),
            noise: std::env::var("N")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.01),
        },
        requests: std::env::var("R")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40),
        seed: 11,
        per_request_metrics: false,
    };
    let mut cfg = joulegate::accounting::AccountingConfig::default();
    if std::env::var("FIX").is_ok() {
        let c = &case.model.cost;
        cfg.ledger.calibration.fixed = true;
        cfg.ledger.calibration.default_alpha_j = c.prefill_nj_per_token as f64 / 1e9;
        cfg.ledger.calibration.default_beta_j = c.decode_nj_per_token as f64 / 1e9;
        cfg.ledger.calibration.default_gamma_j = c.context_nj_per_token as f64 / 1e9;
    }
    let mut sc = case.scenario();
    if let Ok(v) = std::env::var("STREAM") {
        for q in &mut sc.requests {
            q.stream = v == "1";
        }
    }
    if std::env::var("MET").is_ok() {
        sc.per_request_metrics = true;
    }
    let r = drive::run(&sc, cfg).unwrap();
    println!(
        "{:?}\n{:?} idle {:?}\nengine_total {}",
        r.totals, r.calibration, r.p_idle_mw, r.engine_total_uj
    );
    let st: u64 = r.rows.iter().map(|x| x.truth_uj).sum();
    let sr: u64 = r.rows.iter().filter_map(|x| x.record_uj).sum();
    println!("rates {:?}", r.rates);
    println!("sum truth {st} sum record {sr}");
    for x in &r.rows {
        println!("at {:>6}ms p {:>5} o {:>4} n {} s {:>5} truth {:>10} rec {:>10?} prov {:>10?} err {:+.1}%", x.request.at_ns/1_000_000, x.request.prompt, x.request.max_tokens, x.request.n, x.request.stream, x.truth_uj, x.record_uj, x.provisional_uj, (x.record_uj.unwrap_or(0) as f64/x.truth_uj as f64-1.0)*100.0);
    }
}
