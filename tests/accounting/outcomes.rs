//! Request outcomes in the record, with accounting fed tick by tick: a client that hangs up
//! mid-stream gives `aborted`, a mid-stream `{"error": ...}` event and an upstream 4xx give `error`.
//! The books balance exactly after each.

use joulegate::ledger::RecordStatus;
use serde_json::Value;

use super::common::{self, guard, h1};
use super::energy::{chat_body, latest_truth, text, CHAT};
use super::rig::{engine_mock, Metering, Rig};
use super::wire::{client_request, event_json, events};

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
