//! Energy on the wire, with accounting fed tick by tick: headers on JSON answers, trailers on streams
//! (HTTP/2, and HTTP/1.1 only with `TE: trailers`), the `energy` object, `unavailable` without a
//! meter, answers too large to buffer. The books balance exactly after each. Also the helpers the
//! outcome and forged-header tests share.

use http::HeaderMap;
use joulegate::ledger::RecordStatus;

use super::common::{self, collect, guard, h2, h2_request};
use super::rig::{engine_mock, Metering, Rig};
use super::wire::{client_request, strip_energy, MAX_TOKENS};

pub const CHAT: &str = "/v1/chat/completions";

pub fn chat_body(extra: &str) -> Vec<u8> {
    format!(
        r#"{{"model":"tiny","messages":[{{"role":"user","content":"say something short"}}],"max_tokens":{MAX_TOKENS}{extra}}}"#
    )
    .into_bytes()
}

pub fn text(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Checks the energy fields of a header or trailer map; returns the joules text.
pub fn check_fields(
    h: &HeaderMap,
    public_id: &str,
    prompt: u64,
    completion: u64,
    ctx: &str,
) -> String {
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
pub async fn latest_truth(rig: &Rig) -> (u64, u64) {
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
