//! Helpers of the admin tests: a vLLM-like scripted upstream, chat requests through the proxy and
//! admin GETs, waits on accounting (polling a condition under the hang guard), `/metrics` read by
//! both the Rust reader and the real parsers.

use std::net::SocketAddr;

use joulegate::cli::ServeArgs;
use serde_json::Value;

use super::exposition::{parse_samples, python_parse, Sample};
use crate::common::*;

/// An upstream answering chat completions with the recorded vLLM JSON and `/health` with 200.
pub async fn vllm() -> ScriptedUpstream {
    let chat = fixtures("vllm-0.32")
        .into_iter()
        .find(|f| f.name == "chat-json")
        .expect("chat-json fixture");
    ScriptedUpstream::start(move |r| {
        if r.request_line().starts_with("GET /health") {
            return Reply::fixed(200, &[], b"");
        }
        let headers: Vec<(&str, &str)> = chat
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Reply::fixed(chat.status, &headers, &chat.body)
    })
    .await
}

pub fn with_sim(args: &mut ServeArgs) {
    args.meters = vec!["sim:100".into()];
    // Short ticks settle requests sooner; correctness never depends on it.
    args.sample_interval_ms = Some(5);
}

pub const CHAT: &[u8] = br#"{"model":"tiny","messages":[{"role":"user","content":"say something short"}],"max_tokens":8}"#;

/// Sends one chat request with optional tag and key; returns the response.
pub async fn chat(proxy: SocketAddr, tag: Option<&str>, key: Option<&str>) -> Got {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(t) = tag {
        headers.push(("x-energy-tag", t));
    }
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let got = send(
        proxy,
        request("POST", proxy, "/v1/chat/completions", &headers, CHAT),
    )
    .await;
    assert_eq!(got.status, 200);
    got
}

pub fn header(got: &Got, name: &str) -> String {
    got.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_owned()
}

pub async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> Got {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    send(admin, request("GET", admin, path, &headers, b"")).await
}

pub async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let got = admin_get(admin, path, None).await;
    assert_eq!(
        got.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&got.body)
    );
    serde_json::from_slice(&got.body).expect("JSON")
}

/// Polls `/requests/{id}` until accounting has retired the request; returns its record.
pub async fn finished(admin: SocketAddr, id: &str) -> Value {
    guard("the request to be retired", async {
        loop {
            let v = admin_json(admin, &format!("/requests/{id}")).await;
            if v.get("state").is_none() {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

/// GETs `/metrics` and reads it in Rust and, where available, with both real parsers, which must
/// see exactly the same series.
pub async fn metrics(admin: SocketAddr, token: Option<&str>) -> Vec<Sample> {
    let got = admin_get(admin, "/metrics", token).await;
    assert_eq!(got.status, 200);
    assert!(header(&got, "content-type").starts_with("application/openmetrics-text"));
    let text = String::from_utf8(got.body).expect("UTF-8");
    let ours = parse_samples(&text);
    if let Some([prometheus, openmetrics]) = python_parse(&text) {
        // Both real parsers read exactly the samples we read (OpenMetrics drops nothing; the
        // Prometheus parser names counters with their `_total` sample name, as we do).
        for theirs in [prometheus, openmetrics] {
            let mut a: Vec<String> = theirs.iter().map(|s| format!("{}{:?}", s.0, s.1)).collect();
            let mut b: Vec<String> = ours.iter().map(|s| format!("{}{:?}", s.0, s.1)).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "parsers disagree on the series");
        }
    }
    ours
}

/// Waits until accounting has applied the meter's first tick.
pub async fn first_tick(admin: SocketAddr, token: Option<&str>) {
    guard("the first tick", async {
        loop {
            let got = admin_get(admin, "/stats", token).await;
            let v: Value = serde_json::from_slice(&got.body).expect("JSON");
            if v["totals"]["ticks"].as_u64().is_some_and(|t| t > 0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}
