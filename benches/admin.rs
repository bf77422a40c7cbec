//! Admin scrape cost: `/metrics` rendering, the `/stats` document, a `/requests` page and one poll
//! of the live page (`/stats`, `/requests?limit=200`, `/history` whole), with every label table
//! full (100 models, 100 key hashes, 100 tags plus `other`), 10,000 finished records in the ring,
//! 10,000 requests in flight and ten minutes of history. A scrape copies what accounting published and encodes
//! it; this shows what that costs the admin listener (never the data plane). Also the proxy's
//! own read of the upstream's `/metrics` (`upstream_metrics`): parsing vLLM's queue gauges.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use joulegate::accounting::{Accounting, AccountingConfig};
use joulegate::admin::{history, metrics, requests, stats, AdminState};
use joulegate::clock::Clock;
use joulegate::config::Config;
use joulegate::observe::{Endpoint, InFlight, Outcome, RequestMeta};
use joulegate::proxy::upstream::Upstream;
use joulegate::tick::Tick;

const TICK: u64 = 50_000_000;

fn meta(id: u64, live: bool) -> RequestMeta {
    RequestMeta {
        id,
        model: Some(format!("model-{}", id % 110)),
        endpoint: Endpoint::ChatCompletions,
        key_hash: Some(format!("{:016x}", id % 120)),
        tag: Some(format!(
            "{}-{}",
            if live { "live" } else { "run" },
            id % 130
        )),
        stream: true,
        arrival_ns: 1,
        estimated_prompt_tokens: 500,
        choices: 1,
        max_tokens: None,
    }
}

fn tick(k: u64) -> Tick {
    Tick {
        seq: k,
        start_ns: (k - 1) * TICK,
        end_ns: k * TICK,
        delta_uj: Some(35_000_000),
        devices: Vec::new(),
        phase: joulegate::tick::TickPhase::Whole,
    }
}

/// Accounting with 10,000 retired records (full label tables) and 10,000 live streams.
fn state() -> (
    Arc<AdminState>,
    Accounting,
    Vec<joulegate::observe::InFlightGuard>,
) {
    let reg = Arc::new(InFlight::new());
    let clock = Clock::new();
    // No hold for the calibration: the setup's requests must settle within its ticks (with the
    // hold, the first ten seconds of work stayed held and no record was written).
    let mut config = AccountingConfig::default();
    config.ledger.calibration_hold_ticks = 0;
    let mut acc = Accounting::new(config, reg.clone(), clock).expect("config");
    // Ten idle minutes first, one tick a second on one device: a full `/history`.
    for s in 1..=600u64 {
        acc.process_tick(&Tick {
            seq: s,
            start_ns: (s - 1) * 1_000_000_000,
            end_ns: s * 1_000_000_000,
            delta_uj: Some(300_000_000),
            devices: vec![joulegate::tick::DeviceDelta {
                device: "gpu0".into(),
                delta_uj: Some(300_000_000),
            }],
            phase: joulegate::tick::TickPhase::Whole,
        });
    }
    const START: u64 = 600_000_000_000 / TICK;
    let mut k = START + 1;
    let mut id = 1;
    for _ in 0..10 {
        let batch: Vec<_> = (0..1000)
            .map(|_| {
                id += 1;
                reg.register(meta(id, false), clock)
            })
            .collect();
        for g in &batch {
            let p = g.progress();
            p.progress_visible.store(true, Relaxed);
            p.set_prompt_exact(500);
            p.observe_completion(1, k * TICK);
        }
        acc.process_tick(&tick(k));
        k += 1;
        for g in &batch {
            g.progress().completion_exact.store(true, Relaxed);
            g.progress().finish(Outcome::Ok, k * TICK);
        }
        drop(batch);
        for _ in 0..8 {
            acc.process_tick(&tick(k));
            k += 1;
        }
    }
    let live: Vec<_> = (0..10_000)
        .map(|_| {
            id += 1;
            reg.register(meta(id, true), clock)
        })
        .collect();
    let args = joulegate::cli::ServeArgs::default();
    let config = Config::resolve(&args, &Default::default(), None).expect("default config");
    let upstream = Upstream::new(
        config.upstream.clone(),
        config.connect_timeout,
        config.upstream_header_timeout,
        config.max_body_bytes,
    );
    let request_bodies = Arc::new(joulegate::proxy::bodies::InspectBudget::new(
        config.max_inspect_bytes,
        config.max_inspect_total_bytes,
    ));
    let state = Arc::new(AdminState {
        accounting: acc.shared(),
        sampler: None,
        meters_unavailable: Vec::new(),
        in_flight: reg,
        clock,
        config: Config {
            metrics_per_key: true,
            ..config
        },
        upstream,
        request_log: None,
        #[cfg(feature = "otel")]
        otel: None,
        upstream_version: Default::default(),
        upstream_facts: Default::default(),
        upstream_semantics: Arc::new(joulegate::proxy::inspect::SharedSemantics::new(
            Default::default(),
            true,
        )),
        request_bodies,
        admission: Arc::new(joulegate::proxy::admission::Admission::new(
            joulegate::proxy::admission::AdmissionConfig::off(),
        )),
        engine_gauges: Default::default(),
    });
    (state, acc, live)
}

fn bench(c: &mut Criterion) {
    let (state, _acc, _live) = state();
    let st = state.accounting.stats();
    assert_eq!(st.requests.ok + st.requests.estimated, 10_000, "{st:?}");
    let registry = metrics::registry(state.clone());
    let text = metrics::render(&registry).expect("renders");
    eprintln!(
        "/metrics: {} bytes, {} series",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    c.bench_function("admin_metrics_full_tables_10k_in_flight", |b| {
        b.iter(|| metrics::render(&registry).expect("renders"))
    });
    c.bench_function("admin_stats_full_tables", |b| {
        b.iter(|| serde_json::to_vec(&stats::stats(&state)).expect("serialises"))
    });
    let q = requests::ListQuery {
        limit: Some(100),
        tag: Some("run-7".into()),
    };
    c.bench_function("admin_requests_100_by_tag_10k_in_flight", |b| {
        b.iter(|| serde_json::to_vec(&requests::list(&state, &q)).expect("serialises"))
    });
    // What one refresh of the live page costs the admin listener: its three documents.
    let page = requests::ListQuery {
        limit: Some(joulegate::admin::live::RECENT_ROWS),
        tag: None,
    };
    let poll = || {
        [
            serde_json::to_vec(&stats::stats(&state)).expect("serialises"),
            serde_json::to_vec(&requests::list(&state, &page)).expect("serialises"),
            serde_json::to_vec(&history::history(&state, 0)).expect("serialises"),
        ]
    };
    let [s, r, h] = poll();
    assert_eq!(history::history(&state, 0).points.len(), 600);
    eprintln!(
        "live page poll: /stats {} bytes, /requests?limit=200 {} bytes, /history {} bytes",
        s.len(),
        r.len(),
        h.len()
    );
    c.bench_function("admin_live_page_poll_10k_in_flight", |b| b.iter(poll));
}

/// Reading the upstream's queue gauges (`upstream_metrics`): parsing vLLM 0.32's own `/metrics`
/// (the project's copy of the fixture, ~50 KB), as the reader does every 250 ms.
fn upstream_gauges(c: &mut Criterion) {
    let text = include_bytes!("../tests/fixtures/vllm-0.32-metrics/metrics-default.txt");
    assert_eq!(joulegate::proxy::engine_gauges::parse(text), Some((0, 0)));
    c.bench_function("upstream_gauges_parse_vllm_metrics", |b| {
        b.iter(|| joulegate::proxy::engine_gauges::parse(std::hint::black_box(text)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench, upstream_gauges
}
criterion_main!(benches);
