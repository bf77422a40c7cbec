//! Accuracy bench (DESIGN.md §7): every request's attributed energy against the simulated
//! engine's exact truth, beside the naive split by completion tokens.
//!
//! By default the deterministic matrix (`joulegate::accuracy`): 8 workloads × 3 engine cost models
//! × 3 counter periods in virtual time through the real accounting, reproducible to the digit, a
//! few seconds for the whole matrix. `ACCURACY_ONLY`, `ACCURACY_MODELS`, `ACCURACY_PERIODS`,
//! `ACCURACY_REQUESTS`, `ACCURACY_SEED` select (`ACCURACY_PERIODS` takes any counter periods in
//! ms, not only the matrix's: `ACCURACY_PERIODS=1` is a near-ideal counter; `ACCURACY_JITTER_MS`
//! moves each counter update off its lattice by up to that much); `ACCURACY_METRICS=1` gives responses vLLM's
//! per-request `metrics`; `ACCURACY_UPSTREAM_METRICS=0` runs a proxy that does not read the engine's queue gauges from its `/metrics` (`upstream_metrics = "off"`), `=500` reads them every 500 ms; `ACCURACY_STREAMS=none` (or `all`) answers every request as one JSON
//! body (or streams every one) instead of each workload's own mix; `ACCURACY_PROMPT_SPREAD=0.3` makes the proxy's estimate of each prompt
//! from its body's size off by up to 30 % more either way (besides its 10 % bias, which the
//! proxy learns); `ACCURACY_TRUE_WEIGHTS=1` splits with each model's own marginal costs
//! (what is left is placement error); `ACCURACY_SETTLE_TICKS=N` overrides the settlement lag in
//! ticks (default 60); `ACCURACY_SETTLED_MODE=1` runs the ledger as `response_energy =
//! "settled"` does (no hold for the calibration: the settled column's figures); `ACCURACY_HELD_OUT=1` runs the cost models kept out of the matrix
//! (`joulegate::accuracy::held_out_models`: what the ledger was never tuned on). `ACCURACY_MODE=realtime` runs the end-to-end set-up instead (mock vLLM
//! over HTTP, the proxy and its sampler in real time: about a minute and a half; its figures move
//! a little between runs with scheduling; `ACCURACY_COUNTER_MS`, `ACCURACY_MODEL` (a cost model of the matrix or a held-out one), `ACCURACY_STREAMS=none`, `ACCURACY_MAX_SEQS` (the engine's sequence limit), `ACCURACY_UPSTREAM_METRICS=0`, `ACCURACY_VERBOSE`,
//! `ACCURACY_JSON_DIR` help there). Without `--bench` (as `cargo test --benches` runs it) it does
//! a tiny run to check the harness. It prints figures and never fails on them.

use std::time::Duration;

use joulegate::demo::{DemoReport, ErrorStats, World, WorldOptions};
use joulegate::sim::workload::{plan, PlannedRequest, WorkloadKind};

struct Workload {
    name: &'static str,
    requests: Vec<PlannedRequest>,
}

/// Sets `n` on every body (a request with `n` choices: one prefill, `n` decodes in lockstep).
fn with_n(mut requests: Vec<PlannedRequest>, n: u32) -> Vec<PlannedRequest> {
    for r in &mut requests {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
            v["n"] = n.into();
            r.body = v.to_string().into_bytes();
        }
    }
    requests
}

/// Every request answered as one JSON body (as clients that never stream send them).
fn without_streams(requests: &mut [PlannedRequest]) {
    for r in requests {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
            v["stream"] = false.into();
            if let Some(o) = v.as_object_mut() {
                o.remove("stream_options");
            }
            r.body = v.to_string().into_bytes();
            r.stream = false;
        }
    }
}

fn workloads(seed: u64, scale: usize) -> Vec<Workload> {
    let ms = Duration::from_millis;
    let w = |name, requests| Workload { name, requests };
    vec![
        w(
            "steady",
            plan(WorkloadKind::Steady, seed, 12 * scale, ms(150)),
        ),
        w(
            "bursty",
            plan(WorkloadKind::Bursty, seed, 8 * scale, ms(250)),
        ),
        w(
            "prefill-heavy",
            plan(WorkloadKind::PrefillHeavy, seed, 12 * scale, ms(120)),
        ),
        w(
            "decode-heavy",
            plan(WorkloadKind::DecodeHeavy, seed, 8 * scale, ms(250)),
        ),
        w(
            "mixed",
            plan(WorkloadKind::Mixed, seed, 12 * scale, ms(150)),
        ),
        w(
            "mixed-n3",
            with_n(plan(WorkloadKind::Mixed, seed + 1, 6 * scale, ms(300)), 3),
        ),
    ]
}

async fn run_one(
    w: &Workload,
    opts: &WorldOptions,
) -> Result<DemoReport, joulegate::demo::DemoError> {
    let world = World::start(opts).await?;
    let sent = world.drive(&w.requests, w.name).await;
    let report = world.collect(sent).await;
    world.stop().await;
    report
}

fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// `median/p95` in %.
fn pair(s: ErrorStats) -> String {
    format!("{}/{}", pct(s.median), pct(s.p95))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if std::env::var("ACCURACY_MODE").as_deref() == Ok("realtime") {
        realtime(full);
    } else {
        virtual_matrix(full);
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect())
}

/// The deterministic matrix: every workload under every cost model and counter period, in virtual
/// time through the real accounting.
fn virtual_matrix(full: bool) {
    use joulegate::accuracy::{matrix, run_case_with, CaseReport};
    let seed = std::env::var("ACCURACY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let requests = std::env::var("ACCURACY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 120 } else { 12 });
    let mut cases = if std::env::var_os("ACCURACY_HELD_OUT").is_some() {
        joulegate::accuracy::matrix_of(joulegate::accuracy::held_out_models(), requests, seed)
    } else {
        matrix(requests, seed)
    };
    if let Some(only) = env_list("ACCURACY_ONLY") {
        cases.retain(|c| only.iter().any(|o| o == c.workload.name()));
    }
    if let Some(models) = env_list("ACCURACY_MODELS") {
        cases.retain(|c| models.iter().any(|o| o == c.model.name));
    }
    if let Some(periods) = env_list("ACCURACY_PERIODS") {
        // Any periods, not only the matrix's: each (model, workload) once per period listed.
        let periods: Vec<u64> = periods.iter().filter_map(|p| p.parse().ok()).collect();
        let first = cases[0].meter.counter_period_ns;
        cases.retain(|c| c.meter.counter_period_ns == first);
        cases = periods
            .iter()
            .flat_map(|&ms| {
                cases.iter().map(move |c| {
                    let mut c = c.clone();
                    c.meter.counter_period_ns = ms * 1_000_000;
                    c
                })
            })
            .collect();
    }
    if let Some(ms) = std::env::var("ACCURACY_JITTER_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        // Counter updates off their lattice by up to this much (real counters jitter).
        for c in &mut cases {
            c.meter.jitter_ns = (ms * 1e6) as u64;
        }
    }
    let metrics = std::env::var("ACCURACY_METRICS").as_deref() == Ok("1");
    // The proxy reads the engine's queue gauges (`upstream_metrics`, on by default as in front
    // of vLLM); `0` for a proxy that does not.
    // `ACCURACY_UPSTREAM_METRICS=500` reads them every 500 ms instead of the default.
    let upstream_metrics = match std::env::var("ACCURACY_UPSTREAM_METRICS").as_deref() {
        Ok("0") => None,
        Ok(ms) => Some(
            ms.parse::<u64>()
                .map_or(joulegate::accuracy::UPSTREAM_METRICS_INTERVAL_NS, |ms| {
                    ms * 1_000_000
                }),
        ),
        Err(_) => Some(joulegate::accuracy::UPSTREAM_METRICS_INTERVAL_NS),
    };
    // Every request streamed, or none (clients that never stream: the openai SDK's default).
    let streams = match std::env::var("ACCURACY_STREAMS").as_deref() {
        Ok("all") => Some(true),
        Ok("none") => Some(false),
        _ => None,
    };
    // Each request's prompt estimate (from its body's size) off by up to this fraction more.
    let prompt_spread = std::env::var("ACCURACY_PROMPT_SPREAD")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    // The ledger splits with each model's own marginal costs instead of its fit: what is left is
    // placement error, so the difference is what the calibration costs.
    let true_weights = std::env::var("ACCURACY_TRUE_WEIGHTS").as_deref() == Ok("1");
    let settled_mode = std::env::var("ACCURACY_SETTLED_MODE").as_deref() == Ok("1");
    if !full {
        println!("accuracy: harness check only ({requests} requests per case, two cases)");
        cases.truncate(2);
    }
    let cell = |s: joulegate::demo::ErrorStats| format!("{:>5}/{:<5}", pct(s.median), pct(s.p95));
    println!(
        "{:<10} {:>3} {:<13} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>6} {:>6} {:>6}",
        "model",
        "ms",
        "workload",
        "record",
        "active",
        "settled",
        "wait ms",
        "resp",
        "resp-strm",
        "resp-json",
        "naive",
        "bias%",
        "unat%",
        "books"
    );
    let mut worst = CaseReport::default();
    for mut case in cases {
        case.per_request_metrics = metrics;
        case.streams = streams;
        case.upstream_metrics = upstream_metrics;
        case.prompt_estimate_spread = prompt_spread;
        let mut config = joulegate::accounting::AccountingConfig::default();
        if let Some(t) = std::env::var("ACCURACY_SETTLE_TICKS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.ledger.settle_ticks = t;
        }
        if settled_mode {
            // As `response_energy = "settled"` runs: no hold for the calibration.
            config.ledger.calibration_hold_ticks = 0;
        }
        if true_weights {
            let (c, cal) = (&case.model.cost, &mut config.ledger.calibration);
            cal.fixed = true;
            cal.default_alpha_j = c.prefill_nj_per_token as f64 / 1e9;
            cal.default_beta_j = c.decode_nj_per_token as f64 / 1e9;
            cal.default_gamma_j = c.context_nj_per_token as f64 / 1e9;
        }
        let r = run_case_with(&case, config);
        for (w, x) in [
            (&mut worst.record, r.record),
            (&mut worst.record_active, r.record_active),
            (&mut worst.provisional, r.provisional),
            (&mut worst.settled, r.settled),
        ] {
            w.median = w.median.max(x.median);
            w.p95 = w.p95.max(x.p95);
        }
        println!(
            "{:<10} {:>3} {:<13} {} {} {} {:>5.0}/{:<5.0} {} {} {} {} {:>6} {:>6} {:>6}",
            case.model.name,
            case.meter.counter_period_ns / 1_000_000,
            case.workload.name(),
            cell(r.record),
            cell(r.record_active),
            cell(r.settled),
            r.settled_wait_ms.0,
            r.settled_wait_ms.1,
            cell(r.provisional),
            cell(r.provisional_stream),
            cell(r.provisional_json),
            cell(r.naive),
            format!("{:+.1}", r.record_bias * 100.0),
            format!("{:.2}", r.unattributed_share * 100.0),
            if r.books_exact && r.missing_records == 0 {
                "exact"
            } else {
                "MISS"
            },
        );
    }
    println!(
        "worst cell: record {}  active {}  settled {}  response {}   (median/p95 %; targets: record and settled 3/10, response 5/15)",
        cell(worst.record),
        cell(worst.record_active),
        cell(worst.settled),
        cell(worst.provisional)
    );
}

/// The end-to-end run in real time: the mock upstream over HTTP, the real proxy and sampler.
fn realtime(full: bool) {
    let (scale, opts) = if full {
        let mut opts = WorldOptions::default();
        // Experiments: another counter period (ms) than the simulated NVML-like 20 ms.
        if let Some(ms) = std::env::var("ACCURACY_COUNTER_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            opts.counter_period = Duration::from_millis(ms.max(1));
        }
        // Another of the matrix's cost models than the default 8B on one H100.
        if let Ok(name) = std::env::var("ACCURACY_MODEL") {
            match joulegate::accuracy::model_named(&name) {
                Some(m) => opts.engine.cost = m.cost,
                None => {
                    let names: Vec<&str> = joulegate::accuracy::cost_models()
                        .iter()
                        .chain(&joulegate::accuracy::held_out_models())
                        .map(|m| m.name)
                        .collect();
                    eprintln!("accuracy: ACCURACY_MODEL={name:?}: one of {names:?}");
                    std::process::exit(2);
                }
            }
        }
        // A proxy that does not read the engine's queue gauges.
        opts.upstream_metrics = std::env::var("ACCURACY_UPSTREAM_METRICS").as_deref() != Ok("0");
        // An engine that runs at most this many sequences at once (vLLM `max_num_seqs`), so
        // that requests queue for sequence slots.
        if let Some(n) = std::env::var("ACCURACY_MAX_SEQS")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
        {
            opts.engine.max_running_seqs = n.max(1);
        }
        (5, opts)
    } else {
        // Harness check only: a handful of requests at 20x speed.
        let opts = WorldOptions {
            time_scale: 20.0,
            idle_warmup: Duration::from_millis(200),
            ..WorldOptions::default()
        };
        (1, opts)
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("accuracy: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut list = workloads(11, scale);
    if let Ok(only) = std::env::var("ACCURACY_ONLY") {
        list.retain(|w| only.split(',').any(|o| o == w.name));
    }
    if std::env::var("ACCURACY_STREAMS").as_deref() == Ok("none") {
        for w in &mut list {
            without_streams(&mut w.requests);
        }
    }
    if !full {
        println!("accuracy: harness check only (4 requests at 20x speed; figures not meaningful)");
        list.truncate(2);
        for w in &mut list {
            w.requests.truncate(4);
        }
    }
    println!(
        "{:<14} {:>4} {:>8} {:>8} {:>8} {:>13} {:>13} {:>13} {:>9} {:>10} {:>9} {:>9}  target",
        "workload",
        "reqs",
        "med %",
        "p95 %",
        "max %",
        "read med/p95",
        "json med/p95",
        "strm med/p95",
        "unattr %",
        "naive med",
        "naive p95",
        "books"
    );
    let mut all = Vec::new();
    let mut all_read = Vec::new();
    for w in &list {
        match runtime.block_on(run_one(w, &opts)) {
            Ok(r) => {
                let e = r.errors();
                let n = r.naive_errors();
                all.extend(r.rows.iter().filter_map(|x| x.error()));
                all_read.extend(r.rows.iter().filter_map(|x| x.read_error()));
                let met = e.median <= 0.05 && e.p95 <= 0.15;
                println!(
                    "{:<14} {:>4} {:>8} {:>8} {:>8} {:>13} {:>13} {:>13} {:>9} {:>10} {:>9} {:>9}  {}",
                    w.name,
                    e.count,
                    pct(e.median),
                    pct(e.p95),
                    pct(e.max),
                    pair(r.read_errors()),
                    pair(r.response_errors(false)),
                    pair(r.response_errors(true)),
                    format!("{:.2}", r.unattributed_share() * 100.0),
                    pct(n.median),
                    pct(n.p95),
                    if r.conserved() { "exact" } else { "MISMATCH" },
                    if met { "met" } else { "MISSED" }
                );
                if std::env::var_os("ACCURACY_VERBOSE").is_some() {
                    print!("{}", r.render());
                }
                if let Some(dir) = std::env::var_os("ACCURACY_JSON_DIR") {
                    let path = std::path::Path::new(&dir).join(format!("{}.json", w.name));
                    if let Err(e) = std::fs::write(&path, r.to_json().to_string()) {
                        eprintln!("cannot write {}: {e}", path.display());
                    }
                }
            }
            Err(e) => println!("{:<14} failed: {e}", w.name),
        }
    }
    let e = ErrorStats::of(all);
    let read = ErrorStats::of(all_read);
    println!(
        "all            {:>4} {:>8} {:>8} {:>8} {:>13}",
        e.count,
        pct(e.median),
        pct(e.p95),
        pct(e.max),
        pair(read)
    );
}
