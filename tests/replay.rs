//! `joulegate replay` end to end: the binary against the simulated engine with a tiny synthetic
//! spec, and a request log written by `serve` replayed at a fresh proxy, whose report must agree
//! with that proxy's `/stats`. Waits are on conditions (records settled, log lines written),
//! bounded by a guard; nothing asserts on timing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use joulegate::app::{App, Listeners, Running};
use joulegate::cli::ServeArgs;
use joulegate::config::{Config, FileConfig};
use joulegate::replay::{run, ReplayArgs, ReplayOptions, Report};
use joulegate::sim::{MockHandle, MockUpstream};
use serde_json::Value;
use tokio::net::TcpListener;

const GUARD: Duration = Duration::from_secs(60);

#[test]
fn replay_help_lists_inputs_and_targets() {
    let o = Command::new(env!("CARGO_BIN_EXE_joulegate"))
        .args(["replay", "--help"])
        .output()
        .expect("run joulegate");
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for flag in [
        "--log",
        "--trace",
        "--rate",
        "--target",
        "--admin",
        "--upstream",
        "--meter",
        "--mock",
        "--speed",
        "--warmup",
        "--max-inflight",
        "--json",
        "--csv",
    ] {
        assert!(help.contains(flag), "replay --help lists {flag}");
    }
}

#[test]
fn replay_mock_with_a_tiny_synthetic_spec_runs_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, csv) = (dir.path().join("r.json"), dir.path().join("r.csv"));
    let o = Command::new(env!("CARGO_BIN_EXE_joulegate"))
        .args([
            "replay",
            "--mock",
            "--quiet",
            "--rate",
            "20",
            "--duration",
            "0.4",
        ])
        .args([
            "--prompt-tokens",
            "uniform:30-60",
            "--output-tokens",
            "fixed:6",
        ])
        .args(["--speed", "4", "--carbon-intensity-g-per-kwh", "400"])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .output()
        .expect("run joulegate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("JSON report");
    let planned = v["planned"].as_u64().expect("planned");
    assert!(planned > 0, "{v:#}");
    let all = &v["overall"];
    assert_eq!(all["requests"].as_u64(), Some(planned), "{v:#}");
    assert_eq!(all["failed"], 0, "{v:#}");
    assert_eq!(all["without_energy"], 0, "{v:#}");
    assert_eq!(
        all["completion_tokens"].as_u64(),
        Some(6 * planned),
        "{v:#}"
    );
    assert!(all["joules"].as_f64().expect("joules") > 0.0, "{v:#}");
    assert!(all["co2_grams"].as_f64().is_some(), "{v:#}");
    assert_eq!(
        all["ttft"]["count"].as_u64(),
        Some(planned),
        "every request streamed"
    );
    assert_eq!(v["tags"]["replay"]["requests"].as_u64(), Some(planned));
    assert_eq!(v["truth_errors"]["count"].as_u64(), Some(planned), "{v:#}");
    let rows = std::fs::read_to_string(&csv).expect("csv written");
    assert_eq!(rows.lines().count() as u64, planned + 1);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("attribution error"), "{stdout}");
}

async fn mock() -> MockHandle {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    MockUpstream::builder().seed(5).spawn(l).expect("mock")
}

async fn proxy(upstream: &MockHandle, log: Option<&Path>) -> Running {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.url()),
        absent_include_usage: Some("false".into()),
        upstream_forces_usage: Some("false".into()),
        meters: vec!["sim:300".into()],
        request_log: log.map(Path::to_path_buf),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &FileConfig::default(), None).expect("config");
    let listeners = Listeners::bind(&config).await.expect("bind");
    App::build(config)
        .expect("app")
        .start(listeners)
        .expect("start")
}

fn at(running: &Running, tag: &str, endpoint: &str, stream: bool) -> ReplayArgs {
    ReplayArgs {
        rate: Some(40.0),
        duration: Some(0.2),
        prompt_tokens: "uniform:20-80".into(),
        output_tokens: "uniform:2-8".into(),
        seed: tag.len() as u64,
        target: Some(format!("http://{}", running.proxy_addr.expect("proxy"))),
        admin: Some(format!("http://{}", running.admin_addr.expect("admin"))),
        speed: 2.0,
        max_inflight: 4,
        endpoint: endpoint.into(),
        no_stream: !stream,
        tag: tag.into(),
        chars_per_token: 3.0,
        settle_timeout: 30.0,
        quiet: true,
        ..ReplayArgs::default()
    }
}

async fn replay(args: &ReplayArgs) -> Report {
    let opts = ReplayOptions::from_args(args).expect("valid flags");
    tokio::time::timeout(GUARD, run(&opts, std::future::pending()))
        .await
        .expect("guard")
        .expect("replay runs")
}

async fn stats(running: &Running) -> Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{}/stats", running.admin_addr.expect("admin"));
    let r = client
        .get(uri.parse().expect("uri"))
        .await
        .expect("GET /stats");
    let body = r.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("stats JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_served_request_log_matches_the_proxys_stats() {
    let upstream = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("requests.jsonl");

    // A request log written by `serve`: two kinds of traffic through a proxy that logs.
    let first = proxy(&upstream, Some(&log)).await;
    let a = replay(&at(&first, "chat-a", "chat", true)).await;
    let b = replay(&at(&first, "batch-b", "completions", false)).await;
    let written = a.overall.requests + b.overall.requests;
    assert!(a.overall.requests > 0 && b.overall.requests > 0);
    assert_eq!(a.unsettled + b.unsettled, 0);
    // The writer thread drains its channel on its own; wait for every line (bounded).
    let lines = tokio::time::timeout(GUARD, async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= written {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every record logged");
    first.shutdown();
    first.wait().await;

    // Replay it at a fresh proxy: the report must agree with that proxy's /stats.
    let second = proxy(&upstream, None).await;
    let mut args = at(&second, "", "chat", true);
    args.rate = None;
    args.log = Some(log.clone());
    let r = replay(&args).await;
    assert_eq!(r.planned, written);
    assert_eq!(r.overall.requests, written);
    assert_eq!((r.overall.failed, r.unsettled, r.skipped), (0, 0, 0));
    let recorded: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let want_completion: u64 = recorded
        .iter()
        .map(|v| v["completion_tokens"].as_u64().expect("tokens"))
        .sum();
    let want_prompt: u64 = recorded
        .iter()
        .map(|v| v["prompt_tokens"].as_u64().expect("tokens"))
        .sum();
    assert_eq!(r.overall.completion_tokens, want_completion);
    assert_eq!(r.overall.prompt_tokens, want_prompt);
    assert_eq!(r.tags["chat-a"].requests, a.overall.requests);
    assert_eq!(r.tags["batch-b"].requests, b.overall.requests);

    let s = stats(&second).await;
    let t = &s["totals"];
    assert_eq!(t["requests"].as_u64(), Some(written as u64), "{t:#}");
    assert_eq!(t["prompt_tokens"].as_u64(), Some(r.overall.prompt_tokens));
    assert_eq!(
        t["completion_tokens"].as_u64(),
        Some(r.overall.completion_tokens)
    );
    let attributed = t["attributed_joules"].as_f64().expect("attributed");
    assert!(attributed > 0.0);
    // Records carry joules at µJ resolution: the sums agree to a µJ per request.
    let tolerance = 1e-6 * written as f64 + 1e-9;
    assert!(
        (r.overall.joules - attributed).abs() <= tolerance,
        "report {} J, /stats {attributed} J",
        r.overall.joules
    );
    for (tag, g) in &r.tags {
        let row = &s["tags"][tag];
        assert_eq!(
            row["requests"].as_u64(),
            Some(g.requests as u64),
            "{tag}: {row:#}"
        );
        let j = row["energy_joules"].as_f64().expect("tag joules");
        assert!(
            (g.joules - j).abs() <= tolerance,
            "{tag}: {} vs {j}",
            g.joules
        );
    }
    second.shutdown();
    second.wait().await;
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_starts_the_proxy_in_process_in_front_of_an_upstream() {
    let upstream = mock().await;
    let args = ReplayArgs {
        rate: Some(40.0),
        duration: Some(0.2),
        prompt_tokens: "fixed:40".into(),
        output_tokens: "fixed:4".into(),
        seed: 2,
        upstream: Some(upstream.url()),
        meters: vec!["sim:300".into()],
        carbon_intensity_g_per_kwh: Some(400.0),
        speed: 2.0,
        max_inflight: 4,
        endpoint: "chat".into(),
        tag: "in-process".into(),
        chars_per_token: 3.0,
        settle_timeout: 30.0,
        quiet: true,
        ..ReplayArgs::default()
    };
    let r = replay(&args).await;
    assert!(r.planned > 0);
    assert_eq!(r.overall.requests, r.planned);
    assert_eq!((r.overall.failed, r.unsettled), (0, 0));
    assert_eq!(r.overall.completion_tokens, 4 * r.planned as u64);
    assert!(r.outcomes.iter().all(|o| o.settled.is_some()));
    assert!(
        r.overall.co2_grams.is_some(),
        "carbon configured in-process"
    );
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_before_the_end_reports_what_finished() {
    let upstream = mock().await;
    let running = proxy(&upstream, None).await;
    let mut args = at(&running, "stopped", "chat", true);
    args.duration = Some(60.0);
    let opts = ReplayOptions::from_args(&args).expect("valid flags");
    // The stop is already due: nothing waits for the minute of arrivals.
    let r = tokio::time::timeout(GUARD, run(&opts, std::future::ready(())))
        .await
        .expect("guard")
        .expect("replay runs");
    assert!(r.interrupted);
    assert!(
        r.planned > 100 && r.overall.requests < r.planned,
        "{}",
        r.overall.requests
    );
    assert!(r.render().contains("interrupted"));
    running.shutdown();
    running.wait().await;
    upstream.shutdown().await;
}
