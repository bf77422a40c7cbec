//! Admission control through the whole proxy: slow streams are held open by the scripted upstream's
//! gate (never by sleeps), so which requests are admitted, queued or refused is decided by the
//! limits alone. Checks the 429s (status, `Retry-After`, OpenAI error shape), what the upstream
//! sees, the queue timeout, a client leaving the queue, and the `/stats` and `/metrics` figures
//! (read by the real Prometheus parsers where available). Waits poll a condition under a hang
//! guard; nothing decides pass/fail on time.

mod common;
#[allow(dead_code)]
#[path = "admin/exposition.rs"]
mod exposition;
#[allow(dead_code)]
#[path = "admin/support.rs"]
mod support;

use std::net::SocketAddr;

use common::*;
use exposition::sum;
use serde_json::Value;
use support::{admin_json, metrics};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const SSE: &[(&str, &str)] = &[("content-type", "text/event-stream")];
const STREAM: &[u8] =
    br#"{"model":"tiny","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#;

/// An upstream whose every stream sends one event, then waits for one permit of the gate.
async fn gated_streams() -> ScriptedUpstream {
    ScriptedUpstream::start(|_| {
        Reply::chunked(
            200,
            SSE,
            vec![
                Step::Write(b"data: {\"choices\":[]}\n\n".to_vec()),
                Step::Gate,
                Step::Write(b"data: [DONE]\n\n".to_vec()),
            ],
        )
    })
    .await
}

/// Sends one streaming chat request on its own connection and reads the whole response.
async fn stream(proxy: SocketAddr) -> Got {
    send(
        proxy,
        request(
            "POST",
            proxy,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            STREAM,
        ),
    )
    .await
}

async fn admission(admin: SocketAddr) -> Value {
    admin_json(admin, "/stats").await["admission"].clone()
}

/// Polls `/stats` until `check` holds on its `admission` object.
async fn until(admin: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    guard(what, async {
        loop {
            let a = admission(admin).await;
            if check(&a) {
                return a;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

fn assert_rejected(got: &Got, reason: &str) {
    assert_eq!(got.status, 429, "{}", String::from_utf8_lossy(&got.body));
    let retry: u64 = got.headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1);
    let v: Value = serde_json::from_slice(&got.body).expect("JSON error");
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["type"], "RateLimitError");
    assert!(v["error"]["param"].is_null());
    let message = v["error"]["message"].as_str().expect("message");
    let expected = if reason == "queue_full" {
        "queue full"
    } else {
        "queue timeout"
    };
    assert!(message.contains(expected), "{message}");
}

#[tokio::test]
async fn twenty_slow_streams_with_four_slots_and_four_places_in_the_queue() {
    let mut upstream = gated_streams().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        a.max_inflight_requests = Some(4);
        a.max_queue = Some(4);
    })
    .await;
    let (tx, mut done) = mpsc::unbounded_channel();
    for _ in 0..20 {
        let tx = tx.clone();
        let addr = proxy.addr;
        tokio::spawn(async move {
            let _ = tx.send(stream(addr).await);
        });
    }
    // No slot frees while the gate is shut: the first twelve answers can only be refusals, and a
    // refusal means four are queued behind four admitted.
    for _ in 0..12 {
        let got = guard("a refusal", done.recv()).await.expect("answer");
        assert_rejected(&got, "queue_full");
    }
    for _ in 0..4 {
        guard("an admitted stream upstream", upstream.received.recv()).await;
    }
    let a = admission(proxy.admin).await;
    assert_eq!(a["enabled"], true);
    assert_eq!(a["queue_length"], 4);
    assert_eq!(a["inflight_requests"], 4);
    assert_eq!(a["rejected"]["queue_full"], 12);
    assert!(upstream.received.try_recv().is_err(), "only four upstream");
    // Free one slot at a time: each finished stream lets exactly one queued request through, so
    // the upstream never holds more than four.
    for i in 0..8 {
        upstream.open_gate();
        let got = guard("a completed stream", done.recv())
            .await
            .expect("answer");
        assert_eq!(got.status, 200);
        assert!(got.body.ends_with(b"data: [DONE]\n\n"));
        if i < 4 {
            guard("a queued stream upstream", upstream.received.recv()).await;
        }
        assert!(
            upstream.received.try_recv().is_err(),
            "at most four streams upstream at once"
        );
    }
    let a = until(proxy.admin, "every permit given back", |a| {
        a["inflight_requests"] == 0
    })
    .await;
    assert_eq!(a["queue_length"], 0);
    assert_eq!(a["inflight_tokens"], 0);
    assert_eq!(a["admitted"], 8);
    assert_eq!(a["queued"], 4);
    assert_eq!(a["rejected"]["timeout"], 0);
    assert_eq!(a["queue_wait"]["count"], 8);
    assert_eq!(a["limits"]["max_inflight_requests"], 4);
    let m = metrics(proxy.admin, None).await;
    assert_eq!(
        sum(
            &m,
            "joulegate_admission_rejected_total",
            &[("reason", "queue_full")]
        ),
        12.0
    );
    assert_eq!(
        sum(
            &m,
            "joulegate_admission_rejected_total",
            &[("reason", "timeout")]
        ),
        0.0
    );
    assert_eq!(sum(&m, "joulegate_admission_admitted_total", &[]), 8.0);
    assert_eq!(sum(&m, "joulegate_queue_length", &[]), 0.0);
    assert_eq!(sum(&m, "joulegate_inflight_tokens", &[]), 0.0);
    assert_eq!(sum(&m, "joulegate_queue_wait_seconds_count", &[]), 8.0);
    assert_eq!(
        sum(&m, "joulegate_queue_wait_seconds_bucket", &[("le", "+Inf")]),
        8.0
    );
}

#[tokio::test]
async fn a_queue_timeout_is_a_429_and_the_queued_request_never_reaches_the_upstream() {
    let mut upstream = gated_streams().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        a.max_inflight_requests = Some(1);
        a.queue_timeout_ms = Some(1);
    })
    .await;
    let addr = proxy.addr;
    let held = tokio::spawn(async move { stream(addr).await });
    guard("the held stream upstream", upstream.received.recv()).await;
    // The only slot is held behind the shut gate: the wait can only end by the timeout.
    let got = stream(proxy.addr).await;
    assert_rejected(&got, "timeout");
    assert!(upstream.received.try_recv().is_err());
    let a = admission(proxy.admin).await;
    assert_eq!(a["rejected"]["timeout"], 1);
    assert_eq!(a["queue_length"], 0);
    assert_eq!(a["left_queue"], 0);
    upstream.open_gate();
    assert_eq!(
        guard("the held stream", held).await.expect("task").status,
        200
    );
    let m = metrics(proxy.admin, None).await;
    assert_eq!(
        sum(
            &m,
            "joulegate_admission_rejected_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_is_removed_at_once() {
    let mut upstream = gated_streams().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        a.max_inflight_requests = Some(1);
    })
    .await;
    let addr = proxy.addr;
    let held = tokio::spawn(async move { stream(addr).await });
    guard("the held stream upstream", upstream.received.recv()).await;
    // A raw client: it sends its whole request, then closes the socket while queued.
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        STREAM.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(STREAM).await.unwrap();
    until(proxy.admin, "the request to queue", |a| {
        a["queue_length"] == 1
    })
    .await;
    drop(client);
    let a = until(proxy.admin, "the queue to empty", |a| {
        a["queue_length"] == 0
    })
    .await;
    assert_eq!(a["left_queue"], 1);
    assert_eq!(a["rejected"]["timeout"], 0);
    // It never reached the upstream, and the slot it waited for is still the held stream's.
    assert!(upstream.received.try_recv().is_err());
    upstream.open_gate();
    assert_eq!(
        guard("the held stream", held).await.expect("task").status,
        200
    );
    let a = until(proxy.admin, "the slot to free", |a| {
        a["inflight_requests"] == 0
    })
    .await;
    assert_eq!(a["admitted"], 1);
}

#[tokio::test]
async fn admission_off_still_publishes_in_flight_figures() {
    let mut upstream = gated_streams().await;
    let proxy = TestProxy::start(upstream.addr).await;
    let addr = proxy.addr;
    let held = tokio::spawn(async move { stream(addr).await });
    guard("the stream upstream", upstream.received.recv()).await;
    let a = admission(proxy.admin).await;
    assert_eq!(a["enabled"], false);
    assert_eq!(a["inflight_requests"], 1);
    // The prompt estimate plus max_tokens 4.
    assert!(a["inflight_tokens"].as_u64().is_some_and(|t| t > 4), "{a}");
    let m = metrics(proxy.admin, None).await;
    assert_eq!(sum(&m, "joulegate_admission_inflight_requests", &[]), 1.0);
    upstream.open_gate();
    assert_eq!(guard("the stream", held).await.expect("task").status, 200);
    let a = until(proxy.admin, "the slot to free", |a| {
        a["inflight_requests"] == 0
    })
    .await;
    assert_eq!(
        (a["admitted"].as_u64(), a["inflight_tokens"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(a["queue_wait"]["count"], 0);
}
