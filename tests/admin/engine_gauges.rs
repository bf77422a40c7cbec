//! The upstream's queue gauges (`upstream_metrics`): read from its `/metrics` into the ledger and
//! shown in `/stats` and `/metrics`; an upstream without them is asked no more than once a minute.

use serde_json::Value;

use super::exposition::sum;
use super::support::*;
use crate::common::*;

/// vLLM 0.32's own `/metrics` (the project's copy of the fixture), with `waiting` requests
/// waiting and `running` running.
fn vllm_metrics(waiting: u32, running: u32) -> Vec<u8> {
    let text =
        std::fs::read_to_string(fixtures_dir("vllm-0.32-metrics").join("metrics-default.txt"))
            .expect("metrics fixture");
    let replaced = text
        .replace(
            "vllm:num_requests_waiting{engine=\"0\",model_name=\"tiny\"} 0.0",
            &format!("vllm:num_requests_waiting{{engine=\"0\",model_name=\"tiny\"}} {waiting}.0"),
        )
        .replace(
            "vllm:num_requests_running{engine=\"0\",model_name=\"tiny\"} 0.0",
            &format!("vllm:num_requests_running{{engine=\"0\",model_name=\"tiny\"}} {running}.0"),
        );
    assert_ne!(replaced, text, "the fixture has both gauges");
    replaced.into_bytes()
}

/// Polls `/stats` until `done` holds; returns the document.
async fn stats_when(
    admin: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    guard(what, async {
        loop {
            let v = admin_json(admin, "/stats").await;
            if done(&v) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

/// An upstream answering `GET /metrics` with `body` (anything else 404), and a metered proxy in
/// front of it reading its gauges every 50 ms.
async fn reading_every_50ms(body: Vec<u8>) -> (ScriptedUpstream, TestProxy) {
    let upstream = ScriptedUpstream::start(move |r| {
        if r.request_line().starts_with("GET /metrics ") {
            return Reply::fixed(200, &[("content-type", "text/plain; version=0.0.4")], &body);
        }
        Reply::fixed(404, &[], b"")
    })
    .await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        with_sim(a);
        a.upstream_metrics = Some("auto".into());
        a.upstream_metrics_interval_ms = Some(50);
    })
    .await;
    (upstream, proxy)
}

#[tokio::test]
async fn the_engines_queue_gauges_reach_the_ledger_stats_and_metrics() {
    let (_upstream, proxy) = reading_every_50ms(vllm_metrics(3, 2)).await;
    // Read, then taken in by the ledger at its next tick.
    let stats = stats_when(proxy.admin, "the gauges in the ledger", |v| {
        v["batch"]["effective"]["engine_queue_readings"].as_u64() >= Some(2)
    })
    .await;
    let gauges = &stats["upstream"]["queue_gauges"];
    assert_eq!(gauges["state"], "reading", "{gauges}");
    assert_eq!(gauges["interval_ms"], 50);
    assert!(gauges["readings"].as_u64() >= Some(2), "{gauges}");
    let batch = &stats["batch"]["effective"];
    assert_eq!(
        (
            batch["engine_waiting"].as_u64(),
            batch["engine_running"].as_u64()
        ),
        (Some(3), Some(2))
    );
    let m = metrics(proxy.admin, None).await;
    assert_eq!(sum(&m, "joulegate_engine_requests_waiting", &[]), 3.0);
    assert_eq!(sum(&m, "joulegate_engine_requests_running", &[]), 2.0);
}

#[tokio::test]
async fn an_upstream_without_the_gauges_is_left_alone() {
    // Some other server's metrics: none of vLLM's gauges.
    let (_upstream, proxy) =
        reading_every_50ms(b"# TYPE requests_total counter\nrequests_total 5\n".to_vec()).await;
    let stats = stats_when(proxy.admin, "the reader to give up", |v| {
        v["upstream"]["queue_gauges"]["state"] == "absent"
    })
    .await;
    let gauges = &stats["upstream"]["queue_gauges"];
    assert_eq!(gauges["readings"], 0, "{gauges}");
    assert_eq!(
        gauges["failed"], 3,
        "asked three times, then once a minute: {gauges}"
    );
    assert_eq!(stats["batch"]["effective"]["engine_queue_readings"], 0);
    // No series where nothing was read.
    let m = metrics(proxy.admin, None).await;
    assert!(m.iter().all(|s| s.0 != "joulegate_engine_requests_waiting"));
}
