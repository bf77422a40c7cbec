//! The admin listener over real sockets: `/metrics` checked by a real Prometheus parser (Python's
//! `prometheus_client`, both its Prometheus-text and its strict OpenMetrics parser) and in Rust;
//! `/metrics`, `/stats`, `/requests` and the response headers agree; auth on and off; bounded
//! labels; the request log written and rotated; `/readyz`; in-flight requests.
//! Nothing here decides pass/fail on time: waits poll a condition under a hang guard.

mod common;
#[path = "admin/exposition.rs"]
mod exposition;
#[path = "admin/support.rs"]
mod support;

use common::*;
use exposition::{close, sum};
use http_body_util::BodyExt;
use serde_json::Value;
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
async fn auth_errors_and_health() {
    let upstream = vllm().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        with_sim(a);
        a.admin_token = Some("t0ken-of-admin".into());
        a.metrics_per_tag = Some(false);
    })
    .await;
    first_tick(proxy.admin, Some("t0ken-of-admin")).await;
    let got = chat(proxy.addr, Some("hidden-tag"), None).await;
    let id = header(&got, "x-energy-request-id");
    for token in [None, Some("wrong"), Some("t0ken-of-admi")] {
        let got = admin_get(proxy.admin, "/stats", token).await;
        assert_eq!(got.status, 401);
        assert_eq!(header(&got, "www-authenticate"), "Bearer");
        let e: Value = serde_json::from_slice(&got.body).expect("error JSON");
        assert_eq!(e["error"]["code"], 401);
        assert!(e["error"]["message"].is_string() && e["error"]["type"].is_string());
    }
    for path in ["/stats", "/requests", "/metrics"] {
        assert_eq!(
            admin_get(proxy.admin, path, Some("t0ken-of-admin"))
                .await
                .status,
            200,
            "{path}"
        );
    }
    guard("the tagged request to be retired", async {
        loop {
            let got = admin_get(
                proxy.admin,
                &format!("/requests/{id}"),
                Some("t0ken-of-admin"),
            )
            .await;
            let v: Value = serde_json::from_slice(&got.body).expect("JSON");
            if v.get("state").is_none() && got.status == 200 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let m = metrics(proxy.admin, Some("t0ken-of-admin")).await;
    assert_eq!(sum(&m, "joulegate_requests_total", &[]), 1.0);
    assert!(
        m.iter().all(|s| !s.0.starts_with("joulegate_tag_")),
        "per-tag series off when metrics_per_tag = false"
    );
    assert_eq!(sum(&m, "joulegate_energy_available", &[]), 1.0);
    let stats = admin_get(proxy.admin, "/stats", Some("t0ken-of-admin")).await;
    assert!(
        !String::from_utf8_lossy(&stats.body).contains("t0ken-of-admin"),
        "the token is never shown"
    );
    // Liveness stays open; readiness (it names upstream errors) is protected.
    assert_eq!(admin_get(proxy.admin, "/healthz", None).await.status, 200);
    assert_eq!(admin_get(proxy.admin, "/readyz", None).await.status, 401);
    let ready = admin_get(proxy.admin, "/readyz", Some("t0ken-of-admin")).await;
    assert_eq!(ready.status, 200);
    let r: Value = serde_json::from_slice(&ready.body).expect("JSON");
    assert_eq!(
        (r["ready"].as_bool(), r["meters"].as_str()),
        (Some(true), Some("initialised"))
    );
    // Errors in the OpenAI shape.
    let t = Some("t0ken-of-admin");
    for (path, status) in [
        ("/nope", 404),
        ("/requests/jg-zz", 400),
        ("/requests/jg-00000000000000ff", 404),
        ("/requests?limit=x", 400),
    ] {
        let got = admin_get(proxy.admin, path, t).await;
        assert_eq!(got.status, status, "{path}");
        let e: Value = serde_json::from_slice(&got.body).expect("error JSON");
        assert_eq!(e["error"]["code"], status);
    }
    let post = send(
        proxy.admin,
        request("POST", proxy.admin, "/stats", &[], b""),
    )
    .await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn readyz_fails_fast_when_the_upstream_is_down() {
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = gone.local_addr().expect("addr");
    drop(gone);
    let proxy = TestProxy::start(addr).await;
    let got = admin_get(proxy.admin, "/readyz", None).await;
    assert_eq!(got.status, 503);
    let r: Value = serde_json::from_slice(&got.body).expect("JSON");
    assert_eq!(r["ready"], false);
    assert_ne!(r["upstream"], "ok");
    // No meter at all does not block readiness by itself.
    assert_eq!(r["meters"], "unavailable");
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

#[tokio::test]
async fn request_log_lines_are_written_and_rotated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("requests.jsonl");
    let upstream = vllm().await;
    let log = path.clone();
    let proxy = TestProxy::start_with(upstream.addr, move |a| {
        with_sim(a);
        a.request_log = Some(log);
        // Smaller than one line: every line starts a new file.
        a.request_log_max_bytes = Some(100);
        a.request_log_files = Some(2);
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let got = chat(proxy.addr, Some("logged"), None).await;
        ids.push(header(&got, "x-energy-request-id"));
    }
    let stats = guard("the log lines", async {
        loop {
            let s = admin_json(proxy.admin, "/stats").await;
            if s["request_log"]["written"] == 3 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(stats["request_log"]["rotations"], 2);
    assert_eq!(stats["records"]["not_logged"], 0);
    let mut logged = Vec::new();
    for p in [
        joulegate::request_log::rotated(&path, 2),
        joulegate::request_log::rotated(&path, 1),
        path.clone(),
    ] {
        let text = std::fs::read_to_string(&p).expect("log file");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", p.display());
        logged.extend(lines);
    }
    assert!(!joulegate::request_log::rotated(&path, 3).exists());
    // Lines come in retirement order (requests settled by one tick retire in any order).
    let mut logged_ids: Vec<&str> = logged.iter().filter_map(|l| l["id"].as_str()).collect();
    logged_ids.sort_unstable();
    assert_eq!(logged_ids, ids);
    for line in &logged {
        // The log line is the record `/requests/{id}` serves.
        let id = line["id"].as_str().expect("id");
        assert_eq!(line, &finished(proxy.admin, id).await);
    }
    let m = metrics(proxy.admin, None).await;
    assert_eq!(sum(&m, "joulegate_request_log_lines_total", &[]), 3.0);
}

#[tokio::test]
async fn in_flight_requests_show_their_energy_so_far() {
    let stream = fixtures("vllm-0.32")
        .into_iter()
        .find(|f| f.name == "chat-stream-usage-continuous")
        .expect("fixture");
    let cut = stream.body.len() / 2;
    let (first, rest) = (stream.body[..cut].to_vec(), stream.body[cut..].to_vec());
    let upstream = ScriptedUpstream::start(move |_| {
        Reply::chunked(
            200,
            &[("content-type", "text/event-stream; charset=utf-8")],
            vec![
                Step::Write(first.clone()),
                Step::Gate,
                Step::Write(rest.clone()),
            ],
        )
    })
    .await;
    let proxy = TestProxy::start_with(upstream.addr, with_sim).await;
    let body = serde_json::to_vec(&stream.request_body).expect("body");
    let mut sender = h1(proxy.addr).await;
    let response = guard(
        "head",
        sender.send_request(request(
            "POST",
            proxy.addr,
            "/v1/chat/completions",
            &[("x-energy-tag", "live")],
            &body,
        )),
    )
    .await
    .expect("response");
    let id = header(
        &Got {
            status: response.status(),
            headers: response.headers().clone(),
            body: Vec::new(),
            trailers: None,
        },
        "x-energy-request-id",
    );
    let live = admin_json(proxy.admin, &format!("/requests/{id}")).await;
    assert_eq!(live["state"], "in_flight");
    assert_eq!(live["tag"], "live");
    assert!(live["energy_joules"].is_number());
    let list = admin_json(proxy.admin, "/requests?tag=live").await;
    assert_eq!(list["in_flight"][0]["id"], id.as_str());
    assert_eq!(list["in_flight_total"], 1);
    let m = metrics(proxy.admin, None).await;
    assert_eq!(sum(&m, "joulegate_requests_in_flight", &[]), 1.0);
    upstream.open_gate();
    guard("body", response.into_body().collect())
        .await
        .expect("body");
    let r = finished(proxy.admin, &id).await;
    assert_eq!(r["stream"], true);
    assert_eq!(r["tag"], "live");
}
