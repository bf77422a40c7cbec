//! OpenTelemetry export (cargo feature `otel`) against an in-test OTLP/HTTP receiver on
//! 127.0.0.1:0 that decodes every JSON body it gets: records of requests sent through the proxy
//! arrive as log records carrying the record's fields (compared with `/requests/{id}`), the energy
//! counters arrive as metrics (compared with `/stats`), the final flush happens at shutdown, and a
//! failing receiver costs counted records, never a request.
//! Run with `cargo test --features otel --test otel`. Nothing decides pass/fail on time: waits
//! await the receiver's next body (or poll `/stats`) under the hang guard.
#![cfg(feature = "otel")]

mod common;
#[allow(dead_code)]
#[path = "admin/exposition.rs"]
mod exposition;
#[path = "otel/receiver.rs"]
mod receiver;
#[allow(dead_code)]
#[path = "admin/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use exposition::sum;
use receiver::*;
use serde_json::Value;
use support::*;

/// Stops the proxy gracefully, while the receiver still answers: the exporter's final flush
/// then completes instead of waiting out its timeout against a runtime being torn down.
async fn stop(mut proxy: TestProxy) {
    proxy.shutdown();
    guard("the proxy to stop", &mut proxy.join)
        .await
        .expect("proxy task");
}

async fn proxy(
    upstream: SocketAddr,
    receiver: SocketAddr,
    interval_ms: u64,
    headers: Option<&str>,
) -> TestProxy {
    let headers = headers.map(str::to_owned);
    TestProxy::start_with(upstream, move |a| {
        with_sim(a);
        a.otel_endpoint = Some(format!("http://{receiver}"));
        a.otel_interval_ms = Some(interval_ms);
        a.otel_headers = headers;
    })
    .await
}

#[tokio::test]
async fn records_arrive_as_log_records_and_counters_as_metrics() {
    let upstream = vllm().await;
    let mut receiver = Receiver::start(200).await;
    let proxy = proxy(upstream.addr, receiver.addr, 20, Some("x-test=otel-1")).await;
    first_tick(proxy.admin, None).await;
    let mut ids = Vec::new();
    for tag in ["a", "b", "a"] {
        let got = chat(proxy.addr, Some(tag), None).await;
        assert_eq!(got.status, 200);
        ids.push(header(&got, "x-energy-request-id"));
    }
    let mut records = BTreeMap::new();
    for id in &ids {
        records.insert(id.clone(), finished(proxy.admin, id).await);
    }
    let logs = receiver
        .until("the three log records", |got| {
            let logs = log_records(got);
            ids.iter().all(|id| logs.contains_key(id)).then_some(logs)
        })
        .await;
    assert_eq!(logs.len(), 3, "only the requests sent");
    for (id, record) in &records {
        let lr = &logs[id];
        assert_eq!(lr["severityText"], "INFO");
        assert!(lr["timeUnixNano"]
            .as_str()
            .is_some_and(|t| t.parse::<u64>().is_ok()));
        // Every non-null field of the record, under its name, with its value and JSON type.
        let a: BTreeMap<String, Value> = attrs(lr)
            .iter()
            .map(|(k, v)| (k.clone(), plain(v)))
            .collect();
        let fields: BTreeMap<String, Value> = record
            .as_object()
            .expect("record")
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(a, fields, "{id}");
        for key in [
            "id",
            "model",
            "energy_joules",
            "prompt_tokens",
            "completion_tokens",
            "status",
        ] {
            assert!(a.contains_key(key), "{key}");
        }
        assert_eq!(a["model"], "tiny");
        assert!(a["energy_joules"].as_f64().is_some_and(|j| j > 0.0));
        assert_eq!(a["status"], "ok");
    }
    // Counters: a metrics export taken after the three records were final shows them.
    let stats = admin_json(proxy.admin, "/stats").await;
    let model_energy = stats["models"]["tiny"]["energy_joules"]
        .as_f64()
        .expect("model energy");
    let seen = receiver.all().len();
    let m = receiver
        .until("a metrics export with the three requests", |got| {
            got[seen..]
                .iter()
                .filter(|e| e.path == "/v1/metrics")
                .map(metrics_of)
                .last()
        })
        .await;
    assert_eq!(
        point(&m["joulegate.model.requests"], &[("model", "tiny")]),
        Some(3.0)
    );
    assert_eq!(
        point(&m["joulegate.model.energy"], &[("model", "tiny")]),
        Some(model_energy)
    );
    let tokens: f64 = records
        .values()
        .map(|r| r["completion_tokens"].as_f64().expect("tokens"))
        .sum();
    assert_eq!(
        point(&m["joulegate.tokens"], &[("token.type", "completion")]),
        Some(tokens)
    );
    assert_eq!(
        point(&m["joulegate.requests"], &[("status", "ok")]),
        Some(3.0)
    );
    let measured = &m["joulegate.energy.measured"];
    assert_eq!(measured["unit"], "J");
    assert_eq!(measured["sum"]["aggregationTemporality"], 2, "cumulative");
    assert_eq!(measured["sum"]["isMonotonic"], true);
    let measured = point(measured, &[]).expect("measured");
    let attributed = point(&m["joulegate.energy.attributed"], &[]).expect("attributed");
    assert!(measured > 0.0 && attributed >= model_energy - 1e-9 && attributed <= measured);
    for name in ["joulegate.energy.idle", "joulegate.energy.unattributed"] {
        assert!(point(&m[name], &[]).is_some(), "{name}");
    }
    // sim:100 draws 100 W; its integer micro-joule counter rounds the mean power a little.
    let power = point(&m["joulegate.power"], &[]).expect("power");
    assert!((power - 100.0).abs() < 0.1, "{power}");
    assert_eq!(point(&m["joulegate.otel.records.dropped"], &[]), Some(0.0));
    // The official protobuf JSON parser reads every body as we do.
    let all = receiver.all();
    if let Some(counts) = proto_counts(&all) {
        let ours: Vec<u64> = all
            .iter()
            .map(|e| match e.path.as_str() {
                "/v1/logs" => e.body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
                    .as_array()
                    .map_or(0, |a| a.len() as u64),
                _ => metrics_of(e).len() as u64,
            })
            .collect();
        assert_eq!(counts, ours);
    }
    // Every request said it was JSON and carried the configured header.
    for e in receiver.all() {
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        assert_eq!(e.test_header.as_deref(), Some("otel-1"));
        assert!(
            e.path == "/v1/logs" || e.path == "/v1/metrics",
            "{}",
            e.path
        );
    }
    // The exporter's counters in /stats and /metrics.
    let stats = admin_json(proxy.admin, "/stats").await;
    assert_eq!(stats["otel"]["records_exported"], 3);
    assert_eq!(stats["otel"]["records_dropped"], 0);
    assert_eq!(stats["otel"]["records_failed"], 0);
    assert!(stats["otel"]["metric_exports"]
        .as_u64()
        .is_some_and(|n| n > 0));
    assert_eq!(stats["config"]["otel"]["interval_ms"], 20);
    assert!(
        stats["config"]["otel"].get("headers").is_none(),
        "never shown"
    );
    let samples = metrics(proxy.admin, None).await;
    assert_eq!(
        sum(&samples, "joulegate_otel_records_exported_total", &[]),
        3.0
    );
    assert_eq!(
        sum(&samples, "joulegate_otel_records_dropped_total", &[]),
        0.0
    );
    stop(proxy).await;
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let upstream = vllm().await;
    let receiver = Receiver::start(200).await;
    // An interval far longer than the test: only the shutdown flush can send the record.
    let proxy = proxy(upstream.addr, receiver.addr, 3_600_000, None).await;
    let got = chat(proxy.addr, None, None).await;
    let id = header(&got, "x-energy-request-id");
    let record = finished(proxy.admin, &id).await;
    assert!(log_records(&receiver.all()).is_empty());
    stop(proxy).await;
    let all = receiver.all();
    let logs = log_records(&all);
    assert_eq!(logs.keys().collect::<Vec<_>>(), [&id]);
    assert_eq!(
        plain(&attrs(&logs[&id])["energy_joules"]),
        record["energy_joules"]
    );
    let last = all
        .iter()
        .rfind(|e| e.path == "/v1/metrics")
        .expect("a final metrics export");
    assert_eq!(
        point(
            &metrics_of(last)["joulegate.model.requests"],
            &[("model", "tiny")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_failing_receiver_costs_counted_records_not_requests() {
    let upstream = vllm().await;
    let mut receiver = Receiver::start(503).await;
    let proxy = proxy(upstream.addr, receiver.addr, 20, None).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let got = chat(proxy.addr, None, None).await;
        assert_eq!(got.status, 200, "the proxy serves on");
        ids.push(header(&got, "x-energy-request-id"));
    }
    for id in &ids {
        finished(proxy.admin, id).await;
    }
    receiver
        .until("the records to be offered", |got| {
            let logs = log_records(got);
            ids.iter().all(|id| logs.contains_key(id)).then_some(())
        })
        .await;
    let stats = guard("the failures to be counted", async {
        loop {
            let s = admin_json(proxy.admin, "/stats").await;
            let metrics_failed = s["otel"]["metric_exports_failed"].as_u64().unwrap_or(0);
            if s["otel"]["records_failed"] == 2 && metrics_failed > 0 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(stats["otel"]["records_exported"], 0);
    assert!(stats["otel"]["log_exports_failed"]
        .as_u64()
        .is_some_and(|n| n >= 1));
    assert_eq!(stats["otel"]["metric_exports"], 0);
    stop(proxy).await;
}
