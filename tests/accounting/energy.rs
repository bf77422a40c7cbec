//! Energy on the wire and request outcomes, with accounting fed tick by tick: headers on JSON
//! answers, trailers on streams (HTTP/2, and HTTP/1.1 only with `TE: trailers`), the `energy` object,
//! `unavailable` without a meter, `x-energy-*` from upstream dropped, and the record's status for
//! aborted streams, mid-stream errors and upstream 4xx. The books balance exactly after each.

use http::HeaderMap;
use joulegate::ledger::RecordStatus;
use serde_json::Value;

use super::common::{self, collect, guard, h1, h2, h2_request, Reply, ScriptedUpstream, TestProxy};
use super::rig::{engine_mock, Metering, Rig};
use super::wire::{client_request, event_json, events, strip_energy, MAX_TOKENS};

const CHAT: &str = "/v1/chat/completions";

fn chat_body(extra: &str) -> Vec<u8> {
    format!(
        r#"{{"model":"tiny","messages":[{{"role":"user","content":"say something short"}}],"max_tokens":{MAX_TOKENS}{extra}}}"#
    )
    .into_bytes()
}

fn text(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Checks the energy fields of a header or trailer map; returns the joules text.
fn check_fields(h: &HeaderMap, public_id: &str, prompt: u64, completion: u64, ctx: &str) -> String {
    assert_eq!(
        text(h, "x-energy-request-id").as_deref(),
        Some(public_id),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-prompt-tokens"),
        Some(prompt.to_string()),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-completion-tokens"),
        Some(completion.to_string()),
        "{ctx}"
    );
    let status = text(h, "x-energy-status").unwrap_or_default();
    assert!(
        status == "ok" || status == "estimated",
        "{ctx}: status {status}"
    );
    let joules = text(h, "x-energy-joules").unwrap_or_else(|| panic!("{ctx}: no joules"));
    // Exact decimal micro-joules: digits, a dot, six digits.
    let (int, frac) = joules
        .split_once('.')
        .unwrap_or_else(|| panic!("{ctx}: {joules}"));
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "{ctx}: {joules}"
    );
    assert!(
        frac.len() == 6 && frac.bytes().all(|b| b.is_ascii_digit()),
        "{ctx}: {joules}"
    );
    assert!(h.contains_key("x-energy-active-joules"), "{ctx}");
    assert_eq!(
        h.get_all("x-energy-joules").iter().count(),
        1,
        "{ctx}: one value"
    );
    joules
}

/// The response id the mock gave the latest request, and its final truth.
async fn latest_truth(rig: &Rig) -> (u64, u64) {
    let id = rig
        .mock
        .requests()
        .last()
        .and_then(|r| r.response_id.clone())
        .expect("a generation request");
    let t = guard("truth", rig.mock.wait_for_truth(&id))
        .await
        .expect("truth");
    (t.prompt_tokens, t.completion_tokens)
}

#[tokio::test]
async fn stream_energy_rides_in_trailers_over_h2_and_h1_with_te() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    for (label, usage) in [
        ("plain", ""),
        ("usage", r#","stream_options":{"include_usage":true}"#),
    ] {
        let body = chat_body(&format!(r#","stream":true{usage}"#));
        // HTTP/2: trailers always.
        let req = client_request(rig.proxy, CHAT, "tr-h2", &body, &[]);
        let mut sender = h2(rig.proxy).await;
        let resp = guard(
            "h2 response",
            sender.send_request(h2_request(req, rig.proxy)),
        )
        .await
        .expect("h2 response");
        let got = collect(resp).await;
        let (prompt, completion) = latest_truth(&rig).await;
        let public_id = text(&got.headers, "x-energy-request-id").expect("id at the start");
        let ctx = format!("h2 {label}");
        let trailers = got
            .trailers
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: trailers"));
        check_fields(trailers, &public_id, prompt, completion, &ctx);
        let stripped = strip_energy(&got.body);
        assert_eq!(
            stripped.energy.len(),
            usize::from(!usage.is_empty()),
            "{ctx}"
        );
        let record = rig.settle(&public_id);
        assert!(
            record.energy_joules > 0.0,
            "{ctx}: energy attributed: {record:?}"
        );
        // HTTP/1.1 with `TE: trailers`.
        let req = client_request(rig.proxy, CHAT, "tr-h1", &body, &[("te", "trailers")]);
        let got = common::send(rig.proxy, req).await;
        let (prompt, completion) = latest_truth(&rig).await;
        let public_id = text(&got.headers, "x-energy-request-id").expect("id at the start");
        let ctx = format!("h1+TE {label}");
        let trailers = got
            .trailers
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: trailers"));
        check_fields(trailers, &public_id, prompt, completion, &ctx);
        rig.settle(&public_id);
        // HTTP/1.1 without it: no trailers (a client that did not ask would choke on them).
        let req = client_request(rig.proxy, CHAT, "tr-h1-plain", &body, &[]);
        let got = common::send(rig.proxy, req).await;
        assert!(got.trailers.is_none(), "h1 {label}: no trailers without TE");
        let public_id = text(&got.headers, "x-energy-request-id").expect("id at the start");
        rig.settle(&public_id);
    }
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn json_answers_carry_energy_headers_and_records_balance() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    let mut attributed = 0.0;
    for (i, path, body) in [
        (0, CHAT, chat_body("")),
        (
            1,
            "/v1/completions",
            br#"{"model":"tiny","prompt":"once upon a time","max_tokens":3}"#.to_vec(),
        ),
        (
            2,
            "/v1/embeddings",
            br#"{"model":"tiny","input":"the quick brown fox"}"#.to_vec(),
        ),
    ] {
        let got = common::send(
            rig.proxy,
            client_request(rig.proxy, path, &format!("json-{i}"), &body, &[]),
        )
        .await;
        assert_eq!(got.status, 200, "{path}");
        let (prompt, completion) = latest_truth(&rig).await;
        let public_id = text(&got.headers, "x-energy-request-id").expect("id");
        check_fields(&got.headers, &public_id, prompt, completion, path);
        assert_eq!(
            text(&got.headers, "x-energy-status").as_deref(),
            Some("ok"),
            "{path}"
        );
        let record = rig.settle(&public_id);
        assert_eq!(record.status, RecordStatus::Ok, "{path}");
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (prompt, completion),
            "{path}"
        );
        attributed += record.energy_joules;
    }
    let stats = rig.assert_conservation();
    assert!(attributed > 0.0, "energy was attributed to the requests");
    assert_eq!(stats.requests.ok, 3);
    rig.stop().await;
}

#[tokio::test]
async fn without_a_meter_energy_is_unavailable_and_counts_still_exact() {
    let mut rig = Rig::start(engine_mock(), Metering::None, |_| {}).await;
    // JSON: the status says why, no joules; counts are there.
    let got = common::send(
        rig.proxy,
        client_request(rig.proxy, CHAT, "nm-json", &chat_body(""), &[]),
    )
    .await;
    let (prompt, completion) = latest_truth(&rig).await;
    let h = &got.headers;
    assert_eq!(text(h, "x-energy-status").as_deref(), Some("unavailable"));
    assert!(h.get("x-energy-joules").is_none() && h.get("x-energy-active-joules").is_none());
    assert_eq!(text(h, "x-energy-prompt-tokens"), Some(prompt.to_string()));
    assert_eq!(
        text(h, "x-energy-completion-tokens"),
        Some(completion.to_string())
    );
    let record = rig.settle_without_ticks(&text(h, "x-energy-request-id").expect("id"));
    assert_eq!(record.status, RecordStatus::Unavailable);
    assert!(record.tokens_exact);
    assert_eq!(
        (record.prompt_tokens, record.completion_tokens),
        (prompt, completion)
    );
    // A stream asking for usage: trailers and the `energy` object say unavailable too.
    let body = chat_body(r#","stream":true,"stream_options":{"include_usage":true}"#);
    let req = client_request(rig.proxy, CHAT, "nm-stream", &body, &[]);
    let mut sender = h2(rig.proxy).await;
    let resp = guard("h2", sender.send_request(h2_request(req, rig.proxy)))
        .await
        .expect("h2");
    let got = collect(resp).await;
    let trailers = got.trailers.expect("trailers");
    assert_eq!(
        text(&trailers, "x-energy-status").as_deref(),
        Some("unavailable")
    );
    assert!(trailers.get("x-energy-joules").is_none());
    let stripped = strip_energy(&got.body);
    assert_eq!(stripped.energy.len(), 1);
    let energy = &stripped.energy[0].1;
    assert_eq!(energy["status"], "unavailable");
    assert!(energy["joules"].is_null());
    let record = rig.settle_without_ticks(&text(&got.headers, "x-energy-request-id").expect("id"));
    assert_eq!(record.status, RecordStatus::Unavailable);
    assert_eq!(rig.stats().totals.measured_uj, 0);
    rig.stop().await;
}

#[tokio::test]
async fn a_client_disconnect_mid_stream_is_recorded_as_aborted() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    // The mock stops after two token chunks and holds the stream open until the client leaves.
    let body = chat_body(r#","stream":true"#);
    let req = client_request(
        rig.proxy,
        CHAT,
        "abort",
        &body,
        &[("x-mock-fault", "stall-after=2")],
    );
    let mut sender = h1(rig.proxy).await;
    let resp = guard("response", sender.send_request(req))
        .await
        .expect("response");
    let public_id = text(resp.headers(), "x-energy-request-id").expect("id");
    let mut body = resp.into_body();
    // Read until both token chunks arrived (the role chunk's empty content is not a token), then
    // hang up.
    let mut seen = Vec::new();
    while events(&String::from_utf8_lossy(&seen))
        .iter()
        .filter_map(|e| event_json(e))
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count()
        < 2
    {
        let frame = guard("frame", http_body_util::BodyExt::frame(&mut body))
            .await
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    drop(body);
    drop(sender);
    guard(
        "upstream sees the disconnect",
        rig.mock.wait_for_client_gone(1),
    )
    .await;
    let record = rig.settle(&public_id);
    assert_eq!(record.status, RecordStatus::Aborted, "{record:?}");
    // The engine may have run ahead of the stalled stream (or even finished): the record holds
    // what the client was sent, exactly the two token chunks.
    assert_eq!(
        record.completion_tokens, 2,
        "tokens relayed before the abort"
    );
    let (prompt, engine_completion) = latest_truth(&rig).await;
    assert!(engine_completion >= 2);
    assert_eq!(record.prompt_tokens, prompt);
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn mid_stream_errors_and_upstream_4xx_are_recorded_as_errors() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    // `data: {"error": ...}` under status 200.
    let body = chat_body(r#","stream":true"#);
    let req = client_request(
        rig.proxy,
        CHAT,
        "err-mid",
        &body,
        &[("x-mock-fault", "error-after=2")],
    );
    let got = common::send(rig.proxy, req).await;
    assert_eq!(got.status, 200);
    let body_text = String::from_utf8_lossy(&got.body).to_string();
    assert!(
        events(&body_text)
            .iter()
            .filter_map(|e| event_json(e))
            .any(|v| v.get("error").is_some()),
        "the error event reaches the client"
    );
    let record = rig.settle(&text(&got.headers, "x-energy-request-id").expect("id"));
    assert_eq!(record.status, RecordStatus::Error, "{record:?}");
    // A 4xx from upstream before anything was generated (unknown model), JSON and stream.
    for (label, stream) in [("json", ""), ("stream", r#","stream":true"#)] {
        let body = format!(
            r#"{{"model":"nope","messages":[{{"role":"user","content":"hi"}}],"max_tokens":2{stream}}}"#
        );
        let got = common::send(
            rig.proxy,
            client_request(rig.proxy, CHAT, "err-4xx", body.as_bytes(), &[]),
        )
        .await;
        assert_eq!(got.status, 404, "{label}");
        let error: Value = serde_json::from_slice(&got.body).expect("error JSON");
        assert!(
            error.get("error").is_some(),
            "{label}: vLLM's error body passes through"
        );
        let record = rig.settle(&text(&got.headers, "x-energy-request-id").expect("id"));
        assert_eq!(record.status, RecordStatus::Error, "{label}: {record:?}");
    }
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn energy_headers_from_upstream_are_dropped() {
    let chat = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"total_tokens":9,"completion_tokens":2}}"#;
    let upstream = ScriptedUpstream::start(move |_| {
        Reply::fixed(
            200,
            &[
                ("content-type", "application/json"),
                ("x-energy-joules", "999.000000"),
                ("x-energy-status", "forged"),
                ("x-energy-request-id", "jg-forged"),
            ],
            chat.as_bytes(),
        )
    })
    .await;
    let mut proxy = TestProxy::start_with(upstream.addr, |args| {
        args.meters = vec!["sim:100".into()];
    })
    .await;
    let got = common::send(
        proxy.addr,
        client_request(proxy.addr, CHAT, "forged", &chat_body(""), &[]),
    )
    .await;
    let h = &got.headers;
    let public_id = text(h, "x-energy-request-id").expect("id");
    assert!(public_id.starts_with("jg-") && public_id != "jg-forged");
    let joules = check_fields(h, &public_id, 7, 2, "scripted");
    assert_ne!(joules, "999.000000");
    assert_eq!(text(h, "x-energy-status").as_deref(), Some("ok"));
    assert_eq!(h.get_all("x-energy-status").iter().count(), 1);
    proxy.shutdown();
    guard("proxy stops", &mut proxy.join)
        .await
        .expect("proxy task");
}

#[tokio::test]
async fn json_answers_too_large_to_buffer_keep_exact_counts_and_end_with_trailers() {
    // Every answer is "too large" here: it streams through, its energy in trailers.
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |args| {
        args.max_buffered_response_bytes = Some(16);
    })
    .await;
    for (path, body) in [
        (CHAT, chat_body("")),
        (
            "/v1/embeddings",
            br#"{"model":"tiny","input":["the quick brown fox","jumps over"]}"#.to_vec(),
        ),
    ] {
        // HTTP/2: trailers need no chunked framing (an HTTP/1.1 answer keeps its content-length).
        let req = client_request(rig.proxy, path, "large", &body, &[]);
        let mut sender = h2(rig.proxy).await;
        let resp = guard("h2", sender.send_request(h2_request(req, rig.proxy)))
            .await
            .expect("h2");
        let got = collect(resp).await;
        assert_eq!(got.status, 200, "{path}");
        let (prompt, completion) = latest_truth(&rig).await;
        let public_id = text(&got.headers, "x-energy-request-id").expect("id");
        let trailers = got.trailers.as_ref().expect("energy trailers");
        check_fields(trailers, &public_id, prompt, completion, path);
        let record = rig.settle(&public_id);
        assert!(record.tokens_exact, "{path}: {record:?}");
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (prompt, completion),
            "{path}"
        );
    }
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn energy_trailers_from_upstream_are_dropped_and_others_kept() {
    let event = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":"length"}]}"#;
    let stream = format!("{event}\n\ndata: [DONE]\n\n");
    // A hand-framed chunked body whose trailer section forges energy fields.
    let body = format!(
        "{:x}\r\n{stream}\r\n0\r\nx-energy-joules: 999.000000\r\nx-energy-status: forged\r\nx-upstream-note: kept\r\n\r\n",
        stream.len()
    );
    let upstream = ScriptedUpstream::start(move |_| Reply {
        status: 200,
        headers: vec![
            (
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            ),
            ("transfer-encoding".into(), "chunked".into()),
            (
                "trailer".into(),
                "x-energy-joules, x-energy-status, x-upstream-note".into(),
            ),
        ],
        steps: vec![common::Step::Write(body.clone().into_bytes())],
        chunked: false,
    })
    .await;
    let mut proxy = TestProxy::start_with(upstream.addr, |args| {
        args.meters = vec!["sim:100".into()];
    })
    .await;
    let req = client_request(
        proxy.addr,
        CHAT,
        "forged-trailers",
        &chat_body(r#","stream":true"#),
        &[],
    );
    let mut sender = h2(proxy.addr).await;
    let resp = guard("h2", sender.send_request(h2_request(req, proxy.addr)))
        .await
        .expect("h2");
    let got = collect(resp).await;
    assert_eq!(got.body, stream.as_bytes(), "the stream passes unchanged");
    let trailers = got.trailers.expect("trailers");
    let public_id = text(&got.headers, "x-energy-request-id").expect("id");
    // Counted from the chunks (no usage in this stream): one token, prompt estimated.
    assert_eq!(
        text(&trailers, "x-energy-completion-tokens").as_deref(),
        Some("1")
    );
    assert_eq!(text(&trailers, "x-energy-request-id"), Some(public_id));
    assert_ne!(
        text(&trailers, "x-energy-joules").as_deref(),
        Some("999.000000")
    );
    assert_eq!(trailers.get_all("x-energy-joules").iter().count(), 1);
    assert_eq!(
        text(&trailers, "x-energy-status").as_deref(),
        Some("estimated")
    );
    assert_eq!(text(&trailers, "x-upstream-note").as_deref(), Some("kept"));
    proxy.shutdown();
    guard("proxy stops", &mut proxy.join)
        .await
        .expect("proxy task");
}
