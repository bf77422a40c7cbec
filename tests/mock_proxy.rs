//! The proxy in front of the mock upstream started like vLLM with its optional server flags:
//!
//! - `--enable-force-include-usage` with `upstream_forces_usage = "auto"`: the started app's
//!   start-up probe learns that the server forces usage, and from then on every stream reaches the
//!   client exactly as the server sends it directly, with or without `stream_options`.
//! - `--enable-per-request-metrics` in engine timing: the engine times the proxy reads from each
//!   response's `metrics` are the mock engine's true times of that request, to the nanosecond.
//!
//! Servers bind 127.0.0.1:0; nothing sleeps. The data plane of the second test runs without the
//! accounting thread (as `tests/accounting/rig.rs` does), so a request's in-flight entry stays to be
//! read after its response ended.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{collect, guard, h1, request, Got};
use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use joulegate::meter::MeterSet;
use joulegate::observe::parse_public_id;
use joulegate::proxy::listen::{serve_connections, ConnLimits};
use joulegate::proxy::service::ProxyService;
use joulegate::sim::{EngineConfig, MockBuilder, MockHandle, MockUpstream, RunnerConfig, Timing};
use tokio::net::TcpListener;

async fn spawn_mock(builder: MockBuilder) -> MockHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    builder.spawn(listener).expect("mock starts")
}

fn serve_args(mock: &MockHandle) -> ServeArgs {
    ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(mock.url()),
        absent_include_usage: Some("false".into()),
        ..ServeArgs::default()
    }
}

/// One POST with an `x-request-id` (the mock's response id follows it, so the same request gives
/// the same bytes directly and through the proxy).
async fn post(addr: SocketAddr, path: &str, body: &str, request_id: &str) -> Got {
    let mut sender = h1(addr).await;
    let req = request(
        "POST",
        addr,
        path,
        &[
            ("content-type", "application/json"),
            ("x-request-id", request_id),
        ],
        body.as_bytes(),
    );
    let response = guard("response head", sender.send_request(req))
        .await
        .expect("response");
    collect(response).await
}

/// The body with the creation times (unix seconds: the two calls may straddle a second) zeroed.
fn without_times(body: &[u8]) -> String {
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["\"created\":", "\"created_at\":"]
        .iter()
        .filter_map(|k| rest.find(k).map(|i| (i, k.len())))
        .min()
    {
        let (i, len) = at;
        out.push_str(&rest[..i + len]);
        out.push('0');
        rest = rest[i + len..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

const CHAT: &str = r#""model":"tiny","messages":[{"role":"user","content":"say something short"}],"max_tokens":5,"stream":true"#;
const COMPLETION: &str =
    r#""model":"tiny","prompt":"once upon a time","max_tokens":5,"stream":true"#;

/// The streams of the force-usage captures' requests, and a few more.
fn forced_cases() -> Vec<(&'static str, String)> {
    let chat = "/v1/chat/completions";
    let completions = "/v1/completions";
    vec![
        (chat, format!("{{{CHAT}}}")),
        (chat, format!(r#"{{{CHAT},"stream_options":{{}}}}"#)),
        (
            chat,
            format!(r#"{{{CHAT},"stream_options":{{"include_usage":true}}}}"#),
        ),
        (
            chat,
            format!(
                r#"{{{CHAT},"stream_options":{{"include_usage":false,"continuous_usage_stats":true}}}}"#
            ),
        ),
        (
            chat,
            format!(
                r#"{{{CHAT},"n":2,"stream_options":{{"include_usage":true,"continuous_usage_stats":true}}}}"#
            ),
        ),
        (completions, format!("{{{COMPLETION}}}")),
        (
            completions,
            format!(r#"{{{COMPLETION},"stream_options":{{"include_usage":true}}}}"#),
        ),
        (
            completions,
            r#"{"model":"tiny","prompt":["one two","three four five"],"max_tokens":4,"stream":true}"#
                .to_owned(),
        ),
        (
            "/v1/responses",
            r#"{"model":"tiny","input":"say something short","max_output_tokens":5,"stream":true}"#
                .to_owned(),
        ),
        // Not a stream: answered with the same 400 either way.
        (
            chat,
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream_options":{"include_usage":true}}"#
                .to_owned(),
        ),
    ]
}

/// `upstream_forces_usage = "auto"` in front of `mock-upstream --enable-force-include-usage`: the
/// probe finds the server forcing, so the proxy injects nothing and removes nothing, and the client
/// receives exactly what the mock sends directly, for streams with and without `stream_options`.
#[tokio::test]
async fn a_forcing_mock_reaches_the_client_unchanged_after_the_probe() {
    let mock = spawn_mock(
        MockUpstream::builder()
            .seed(3)
            .enable_force_include_usage(true),
    )
    .await;
    let args = ServeArgs {
        upstream_forces_usage: Some("auto".into()),
        // The `energy` object is the documented addition to a usage chunk; off here.
        energy_in_usage: Some(false),
        ..serve_args(&mock)
    };
    let config = Config::resolve(&args, &Default::default(), None).expect("config");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let running = App::build_with_meters(config, MeterSet::default())
        .start(listeners)
        .expect("app starts");
    let semantics = running.state.inspect.semantics.clone();
    guard("the force probe", semantics.force_known()).await;
    assert!(semantics.get().force_include_usage, "the probe saw usage");
    let proxy = running.proxy_addr.expect("proxy address");
    for (i, (path, body)) in forced_cases().into_iter().enumerate() {
        let id = format!("f{i}");
        let direct = post(mock.addr(), path, &body, &id).await;
        let proxied = post(proxy, path, &body, &id).await;
        assert_eq!(direct.status, proxied.status, "{path} {body}");
        assert_eq!(
            direct.headers.get("content-type"),
            proxied.headers.get("content-type"),
            "{path} {body}"
        );
        assert_eq!(
            without_times(&proxied.body),
            without_times(&direct.body),
            "{path} {body}"
        );
        if direct.status == 200 && path != "/v1/responses" {
            // Usage on every stream, as forced, whatever was asked.
            let text = String::from_utf8(proxied.body.clone()).unwrap();
            assert!(text.contains("\"choices\":[],\"usage\":"), "{path} {body}");
        }
    }
    // What the mock received from the proxy is what the client sent: nothing injected.
    let received = mock.requests();
    for (i, (_, body)) in forced_cases().into_iter().enumerate() {
        let id = format!("f{i}");
        let sent: Vec<_> = received
            .iter()
            .filter(|r| r.header("x-request-id") == Some(id.as_str()))
            .collect();
        assert_eq!(sent.len(), 2, "{id}: directly and through the proxy");
        assert!(sent.iter().all(|r| r.body == body.as_bytes()), "{id}");
    }
    running.shutdown();
    running.wait().await;
    mock.shutdown().await;
}

/// `mock-upstream --engine --enable-per-request-metrics` behind the proxy: for streams (with and
/// without `stream_options`, the proxy injecting usage for the latter), JSON bodies and
/// `/v1/responses`, the request's queue, prefill and generation times are the engine's true times.
#[tokio::test]
async fn engine_times_from_metrics_are_the_mocks_true_times() {
    let mock = spawn_mock(
        MockUpstream::builder()
            .timing(Timing::Engine(RunnerConfig {
                // One running sequence: concurrent requests queue behind each other.
                engine: EngineConfig {
                    max_running_seqs: 1,
                    ..EngineConfig::default()
                },
                time_scale: 50.0,
                ..RunnerConfig::default()
            }))
            .enable_per_request_metrics(true),
    )
    .await;
    let args = ServeArgs {
        upstream_forces_usage: Some("false".into()),
        ..serve_args(&mock)
    };
    let config = Config::resolve(&args, &Default::default(), None).expect("config");
    let app = App::build_with_meters(config, MeterSet::default());
    let state = app.state().clone();
    drop(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy = listener.local_addr().expect("proxy addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve_connections(
        listener,
        ProxyService::new(state.clone()),
        ConnLimits {
            max_connections: 64,
            grace: Duration::from_secs(1),
        },
        async {
            let _ = stopped.await;
        },
    ));
    let cases = [
        ("/v1/chat/completions", format!("{{{CHAT}}}"), "chatcmpl-"),
        (
            "/v1/chat/completions",
            format!(r#"{{{CHAT},"stream_options":{{"include_usage":true}}}}"#),
            "chatcmpl-",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#
                .to_owned(),
            "chatcmpl-",
        ),
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"once upon a time","max_tokens":3}"#.to_owned(),
            "cmpl-",
        ),
        (
            "/v1/responses",
            r#"{"model":"tiny","input":"say something short","max_output_tokens":4,"stream":true}"#
                .to_owned(),
            "resp_",
        ),
    ];
    let calls: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (path, body, _))| {
            let (path, body) = (path.to_string(), body.clone());
            tokio::spawn(async move { post(proxy, &path, &body, &format!("t{i}")).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let got = call.await.expect("request task");
        let (path, body, prefix) = &cases[i];
        let ctx = format!("{path} {body}");
        assert_eq!(got.status, 200, "{ctx}");
        let public_id = got
            .headers
            .get("x-energy-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-energy-request-id");
        let progress = state
            .in_flight
            .get(parse_public_id(public_id).expect("jg- id"))
            .expect("nothing retires without the accounting thread")
            .snapshot();
        let truth = mock
            .timing(&format!("{prefix}t{i}"))
            .expect("the mock timed it");
        assert!(progress.engine_timed, "{ctx}");
        // Milliseconds as f64 and back: equal to the nanosecond (±1 for the rounding).
        for (name, read, true_ns) in [
            ("queue", progress.queue_ns, truth.queue.as_nanos()),
            ("prefill", progress.prefill_ns, truth.prefill.as_nanos()),
            (
                "generation",
                progress.generation_ns,
                truth.generation.as_nanos(),
            ),
        ] {
            assert!(
                u128::from(read).abs_diff(true_ns) <= 1,
                "{ctx}: {name} read {read} ns, true {true_ns} ns"
            );
        }
        assert!(truth.prefill > Duration::ZERO && truth.generation > Duration::ZERO);
    }
    let _ = stop.send(());
    let _ = served.await;
    mock.shutdown().await;
}
