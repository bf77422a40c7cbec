//! The admin listener over real sockets: `/metrics` checked by a real Prometheus parser (Python's
//! `prometheus_client`, both its Prometheus-text and its strict OpenMetrics parser) and in Rust;
//! `/metrics`, `/stats`, `/requests` and the response headers agree; auth on and off; bounded
//! labels; the request log written and rotated; `/readyz`; in-flight requests.
//! Nothing here decides pass/fail on time: waits poll a condition under a hang guard.
//!
//! - here: `/metrics`, `/stats`, `/requests` and the headers agree; bounded labels.
//! - `access`: auth on and off, errors in the OpenAI shape, `/healthz` and `/readyz`.
//! - `records`: the request log written and rotated; in-flight requests.
//! - `exposition`: the `/metrics` readers; `support`: the upstream, requests and waits.
//! - `engine_gauges`: the upstream's queue gauges read from its `/metrics` (`upstream_metrics`).

#[path = "admin/access.rs"]
mod access;
mod common;
#[path = "admin/engine_gauges.rs"]
mod engine_gauges;
#[path = "admin/exposition.rs"]
mod exposition;
#[path = "admin/records.rs"]
mod records;
#[path = "admin/support.rs"]
mod support;

use common::*;
use exposition::{close, sum};
use support::*;

#[tokio::test]
async fn metrics_stats_requests_and_headers_agree() {
    let upstream = vllm().await;
    let proxy = TestProxy::start_with(upstream.addr, with_sim).await;
    // A request that arrives before the meter's first interval is (rightly) not fully measured:
    // wait for the first tick so that every request below is.
    first_tick(proxy.admin, None).await;
    let mut sent = Vec::new();
    for (tag, key) in [
        (Some("run-a"), Some("sk-one")),
        (Some("run-a"), None),
        (Some("run-b"), None),
        (None, None),
    ] {
        let got = chat(proxy.addr, tag, key).await;
        sent.push((header(&got, "x-energy-request-id"), tag, got));
    }
    let mut records = Vec::new();
    for (id, tag, got) in &sent {
        let r = finished(proxy.admin, id).await;
        assert_eq!(r["id"], id.as_str());
        assert_eq!(r["tag"].as_str(), *tag);
        // Tokens are final in both: the server's usage.
        assert_eq!(
            r["prompt_tokens"].to_string(),
            header(got, "x-energy-prompt-tokens")
        );
        assert_eq!(
            r["completion_tokens"].to_string(),
            header(got, "x-energy-completion-tokens")
        );
        assert_eq!(
            (r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()),
            (Some(22), Some(8))
        );
        assert_eq!(r["tokens_exact"], true);
        assert_eq!(r["model"], "tiny");
        assert!(
            r["energy_joules"].as_f64().is_some_and(|e| e > 0.0),
            "sim meter measured: {r}"
        );
        assert!(
            ["ok", "estimated"].contains(&r["status"].as_str().unwrap_or("")),
            "{r}"
        );
        records.push(r);
    }
    let key_hash = records[0]["key_hash"]
        .as_str()
        .expect("key hashed")
        .to_owned();
    assert!(!key_hash.contains("sk-one"), "keys are never stored");

    // /requests: most recent first, bounded by limit, filtered by tag.
    let list = admin_json(proxy.admin, "/requests?limit=10").await;
    let ids: Vec<&str> = list["requests"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 4);
    let mut expected: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
    expected.reverse();
    assert_eq!(ids, expected, "most recent first");
    let one = admin_json(proxy.admin, "/requests?limit=1").await;
    assert_eq!(one["requests"].as_array().map(Vec::len), Some(1));
    let run_a = admin_json(proxy.admin, "/requests?tag=run-a").await;
    let a_ids: Vec<&str> = run_a["requests"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(a_ids, [sent[1].0.as_str(), sent[0].0.as_str()]);

    // /stats: totals and groups are the sums of the records.
    let stats = admin_json(proxy.admin, "/stats").await;
    let t = &stats["totals"];
    assert_eq!(t["requests"], 4);
    assert_eq!(t["prompt_tokens"], 88);
    assert_eq!(t["completion_tokens"], 32);
    assert_eq!(stats["energy_available"], true);
    let books = [
        "attributed_joules",
        "idle_joules",
        "unattributed_joules",
        "pending_joules",
    ]
    .iter()
    .map(|k| t[k].as_f64().expect("number"))
    .sum::<f64>();
    assert!(
        close(books, t["measured_joules"].as_f64().expect("measured")),
        "books balance: {t}"
    );
    let energy_of = |tag: Option<&str>| -> f64 {
        records
            .iter()
            .filter(|r| tag.map_or(true, |t| r["tag"] == t))
            .map(|r| r["energy_joules"].as_f64().unwrap_or(0.0))
            .sum()
    };
    for (tag, n) in [("run-a", 2), ("run-b", 1)] {
        let g = &stats["tags"][tag];
        assert_eq!(g["requests"], n);
        assert_eq!(g["completion_tokens"], 8 * n);
        assert!(
            close(
                g["energy_joules"].as_f64().expect("energy"),
                energy_of(Some(tag))
            ),
            "{g}"
        );
    }
    assert!(close(
        stats["models"]["tiny"]["energy_joules"]
            .as_f64()
            .expect("model energy"),
        energy_of(None)
    ));
    assert_eq!(stats["keys"][&key_hash]["requests"], 1);
    assert_eq!(stats["devices"][0]["method"], "simulated");
    assert!(stats["config"].get("admin_token").is_none());
    assert!(stats["calibration"]["alpha_j"].is_number());

    // /metrics: the same figures.
    let m = metrics(proxy.admin, None).await;
    assert_eq!(
        sum(
            &m,
            "joulegate_requests_total",
            &[("model", "tiny"), ("endpoint", "chat.completions")]
        ),
        4.0
    );
    assert_eq!(
        sum(&m, "joulegate_tokens_total", &[("kind", "prompt")]),
        88.0
    );
    assert_eq!(
        sum(&m, "joulegate_tokens_total", &[("kind", "completion")]),
        32.0
    );
    assert_eq!(
        sum(&m, "joulegate_tag_requests_total", &[("tag", "run-a")]),
        2.0
    );
    assert!(close(
        sum(&m, "joulegate_tag_energy_joules_total", &[("tag", "run-a")]),
        energy_of(Some("run-a"))
    ));
    assert!(close(
        sum(
            &m,
            "joulegate_model_energy_joules_total",
            &[("model", "tiny")]
        ),
        energy_of(None)
    ));
    assert_eq!(sum(&m, "joulegate_request_energy_joules_count", &[]), 4.0);
    assert!(close(
        sum(&m, "joulegate_request_energy_joules_sum", &[]),
        energy_of(None)
    ));
    assert_eq!(
        sum(
            &m,
            "joulegate_request_energy_joules_bucket",
            &[("le", "+Inf")]
        ),
        4.0
    );
    assert_eq!(
        sum(&m, "joulegate_request_joules_per_token_count", &[]),
        4.0
    );
    assert!(
        m.iter().all(|s| !s.0.starts_with("joulegate_key_")),
        "per-key series are off by default"
    );
    let books_m = ["attributed", "idle", "unattributed"]
        .iter()
        .map(|k| sum(&m, &format!("joulegate_{k}_energy_joules_total"), &[]))
        .sum::<f64>()
        + sum(&m, "joulegate_pending_energy_joules", &[]);
    assert!(close(
        books_m,
        sum(&m, "joulegate_measured_energy_joules_total", &[])
    ));
    assert_eq!(
        sum(&m, "joulegate_power_watts", &[("device", "sim")]).round(),
        100.0
    );
    assert_eq!(sum(&m, "joulegate_meter_up", &[("device", "sim")]), 1.0);
    assert_eq!(sum(&m, "joulegate_energy_available", &[]), 1.0);
    assert!(m
        .iter()
        .any(|s| s.0 == "joulegate_calibration_decode_joules_per_token"));
    assert!(m
        .iter()
        .any(|s| s.0 == "joulegate_calibration_context_joules_per_token"));
    // Every finished model request has a duration; the effective batch agrees with /stats.
    assert_eq!(
        sum(&m, "joulegate_request_duration_seconds_count", &[]),
        4.0
    );
    let batch = &stats["batch"];
    assert_eq!(batch["processing_seconds"]["count"], 4);
    // The engine's sequences as seen, in both.
    assert_eq!(
        sum(&m, "joulegate_engine_sequences_max", &[]),
        batch["effective"]["sequences_max"]
            .as_f64()
            .expect("sequences_max")
    );
    assert_eq!(batch["effective"]["held_for_slots"], false);
    assert_eq!(sum(&m, "joulegate_engine_held_for_slots", &[]), 0.0);
    assert_eq!(
        sum(&m, "joulegate_batch_size_count", &[]),
        batch["effective"]["count"].as_f64().expect("count")
    );
    let by = &stats["totals"]["requests_by_attribution"];
    assert_eq!(
        by["streamed"].as_u64().unwrap_or(0)
            + by["engine_metrics"].as_u64().unwrap_or(0)
            + by["estimated"].as_u64().unwrap_or(0),
        4
    );
}

#[tokio::test]
async fn extra_tags_and_keys_fold_into_other() {
    let upstream = vllm().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        with_sim(a);
        a.max_label_values = Some(2);
        a.metrics_per_key = Some(true);
    })
    .await;
    // One tag needs escaping in the exposition; both real parsers must read it back.
    let tags = ["t0", r#"q"uo\te"#, "t2", "t3", "t4"];
    for (i, tag) in tags.iter().enumerate() {
        let got = chat(proxy.addr, Some(tag), Some(&format!("sk-{i}"))).await;
        finished(proxy.admin, &header(&got, "x-energy-request-id")).await;
    }
    let stats = admin_json(proxy.admin, "/stats").await;
    for dim in ["tags", "keys"] {
        let rows = stats[dim].as_object().expect("object");
        assert_eq!(rows.len(), 3, "{dim}: two values and `other`");
        assert_eq!(rows["other"]["requests"], 3);
        assert_eq!(stats["label_overflow"][dim], 3);
    }
    let m = metrics(proxy.admin, None).await;
    for (name, label) in [
        ("joulegate_tag_requests_total", "tag"),
        ("joulegate_key_requests_total", "key_hash"),
    ] {
        let values: Vec<&str> = m
            .iter()
            .filter(|s| s.0 == name)
            .filter_map(|s| s.1.get(label).map(String::as_str))
            .collect();
        assert_eq!(values.len(), 3, "{name}: {values:?}");
        assert!(values.contains(&"other"));
        if label == "tag" {
            // Each request was retired before the next was sent: the first two keep their rows.
            let mut sorted = values.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, ["other", tags[1], "t0"]);
        }
        assert_eq!(sum(&m, name, &[]), 5.0);
    }
    assert_eq!(
        sum(
            &m,
            "joulegate_label_overflow_total",
            &[("dimension", "tag")]
        ),
        3.0
    );
}
