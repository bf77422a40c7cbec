//! The started application (`App::start`): its own sampler thread reading the mock engine's energy
//! counter, its own accounting thread, and the upstream `/version` probe deciding the
//! `include_usage` semantics ("auto"). These run on their own threads, with no event to await, so
//! this file alone waits by re-checking at a short interval, always under a hang guard; nothing
//! passes or fails on timing.

use std::future::Future;
use std::time::Duration;

use joulegate::app::{App, Listeners, Running};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use joulegate::ledger::{RecordStatus, RequestRecord};
use joulegate::meter::sim::SimMeter;
use joulegate::meter::MeterSet;
use joulegate::observe::parse_public_id;
use joulegate::sim::{MockBuilder, MockHandle, MockUpstream, RunnerConfig, Timing};

use super::common::guard;
use super::rig::spawn_mock;
use super::shapes::check_exchange;
use super::wire::{exchange_via, Api, Shape};

/// Real time: a sampler tick (5 ms) is then short against a request, as it is in production, and
/// the figures printed compare with the engine's truth.
const LIVE_TIME_SCALE: f64 = 1.0;

/// An engine-timed mock whose energy counter is published every millisecond (the default 20 ms
/// period is longer than these requests last, so their energy would reach the meter after they
/// were settled).
fn engine_mock() -> MockBuilder {
    MockUpstream::builder().timing(Timing::Engine(RunnerConfig {
        time_scale: LIVE_TIME_SCALE,
        counter_period: Duration::from_millis(1),
        ..RunnerConfig::default()
    }))
}

/// Re-checks `probe` until it yields, under the hang guard.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    guard(what, async {
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// The app in front of `mock`, metered by the mock engine's own energy counter.
async fn start_app(mock: &MockHandle, absent: &str) -> Running {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(mock.url()),
        absent_include_usage: Some(absent.into()),
        sample_interval_ms: Some(5),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &Default::default(), None).expect("config");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let counter = mock.energy_counter().expect("engine timing has a counter");
    let meters = MeterSet {
        meters: vec![Box::new(SimMeter::from_shared_counter("engine", counter))],
        unavailable: Vec::new(),
    };
    App::build_with_meters(config, meters)
        .start(listeners)
        .expect("app starts")
}

async fn record_of(running: &Running, public_id: &str) -> std::sync::Arc<RequestRecord> {
    let key = parse_public_id(public_id).expect("jg- id");
    let accounting = running.admin.accounting.clone();
    eventually("the record", || {
        let r = accounting.record(key);
        async move { r }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_semantics_from_version_and_the_real_threads_account_every_request() {
    // An upstream older than 0.32: `stream_options: {}` means "usage please".
    let mock = spawn_mock(
        engine_mock()
            .vllm_version("0.31.0")
            .absent_include_usage_is_true(true),
    )
    .await;
    let running = start_app(&mock, "auto").await;
    let semantics = &running.state.inspect.semantics;
    eventually("the /version probe", || {
        let read = semantics.get().absent_include_usage;
        async move { read.then_some(()) }
    })
    .await;
    // The version is kept for /stats (set before the semantics, so it is there now).
    assert_eq!(
        running.admin.upstream_version.get().map(String::as_str),
        Some("0.31.0")
    );
    let proxy = running.proxy_addr.expect("proxy address");
    let direct = || {
        engine_mock()
            .vllm_version("0.31.0")
            .absent_include_usage_is_true(true)
    };
    let shapes = [
        Shape::new(Api::Chat, true, Some(None), false),
        Shape::new(Api::Completions, true, Some(None), false),
        Shape::new(Api::Chat, true, None, false),
        Shape::new(Api::Chat, false, None, false),
    ];
    let mut attributed_uj = 0u64;
    for shape in &shapes {
        let ex = exchange_via(proxy, &mock, shape, direct()).await;
        let truth = check_exchange(&ex, &mock, true).await;
        let record = record_of(&running, &ex.public_id).await;
        let ctx = &shape.name;
        assert_eq!(record.prompt_tokens, truth.prompt_tokens, "{ctx}");
        assert_eq!(record.completion_tokens, truth.completion_tokens, "{ctx}");
        assert!(record.tokens_exact, "{ctx}");
        assert!(
            matches!(record.status, RecordStatus::Ok | RecordStatus::Estimated),
            "{ctx}: {record:?}"
        );
        attributed_uj += (record.energy_joules * 1e6).round() as u64;
        eprintln!(
            "{ctx}: attributed {:.6} J, engine truth {:.6} J",
            record.energy_joules,
            truth.total_uj() as f64 / 1e6
        );
    }
    // Books: exact once nothing is in flight or held.
    let accounting = running.admin.accounting.clone();
    let stats = eventually("settled books", || {
        let s = accounting.stats();
        async move { (s.in_flight == 0 && s.totals.pending_uj == 0).then_some(s) }
    })
    .await;
    let t = stats.totals;
    assert_eq!(
        t.attributed_uj + t.idle_uj + t.unattributed_uj,
        t.measured_uj,
        "{t:?}"
    );
    assert!(t.measured_uj > 0 && t.attributed_uj > 0, "{t:?}");
    eprintln!("books: {t:?}");
    assert!(attributed_uj > 0);
    running.shutdown();
    guard("app drains", running.wait()).await;
    mock.shutdown().await;
}
