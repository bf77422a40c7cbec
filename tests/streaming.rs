//! Streams through the proxy: each upstream event reaches the client at once, a client disconnect
//! closes the upstream request, errors the proxy produces, and graceful shutdown.
//! Time never decides pass/fail: the upstream is gated by the test, and `guard` only bounds hangs.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;

const SSE: &[(&str, &str)] = &[("content-type", "text/event-stream; charset=utf-8")];

fn event(i: usize) -> Vec<u8> {
    format!("data: {{\"i\":{i}}}\n\n").into_bytes()
}

/// Reads the next data frame of a body.
/// Opens an HTTP/1 connection to the proxy and posts a chat completion; the sender comes back
/// too, so the connection lives as long as the test holds it.
async fn post_chat(
    proxy: std::net::SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    hyper::Response<hyper::body::Incoming>,
) {
    let mut sender = h1(proxy).await;
    let request = request("POST", proxy, "/v1/chat/completions", &[], b"{}");
    let response = guard("head", sender.send_request(request)).await.unwrap();
    (sender, response)
}

async fn next_data(body: &mut hyper::body::Incoming) -> Option<Bytes> {
    loop {
        let frame = guard("next frame", body.frame()).await?.ok()?;
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

#[tokio::test]
async fn each_event_reaches_the_client_before_the_upstream_writes_the_next() {
    let upstream = ScriptedUpstream::start(|_| {
        let mut steps = Vec::new();
        for i in 0..5 {
            steps.push(Step::Write(event(i)));
            steps.push(Step::Gate);
        }
        Reply::chunked(200, SSE, steps)
    })
    .await;
    let proxy = TestProxy::start(upstream.addr).await;
    let (_sender, response) = post_chat(proxy.addr).await;
    let mut body = response.into_body();
    for i in 0..5 {
        // The upstream is blocked on its gate: this event can only arrive if the proxy flushed it.
        let mut got = Vec::new();
        while got.len() < event(i).len() {
            got.extend_from_slice(&next_data(&mut body).await.expect("event"));
        }
        assert_eq!(got, event(i));
        upstream.open_gate();
    }
    assert!(next_data(&mut body).await.is_none());
}

#[tokio::test]
async fn client_disconnect_closes_the_upstream_request() {
    let mut upstream = ScriptedUpstream::start(|_| {
        Reply::chunked(200, SSE, vec![Step::Write(event(0)), Step::Hold])
    })
    .await;
    let proxy = TestProxy::start(upstream.addr).await;
    let (sender, response) = post_chat(proxy.addr).await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), Bytes::from(event(0)));
    // The client goes away mid-stream while the upstream is idle.
    drop(body);
    drop(sender);
    guard(
        "upstream to see the disconnect",
        upstream.peer_closed.recv(),
    )
    .await
    .expect("closed");
}

#[tokio::test]
async fn client_disconnect_over_h2_cancels_the_upstream_too() {
    let mut upstream = ScriptedUpstream::start(|_| {
        Reply::chunked(200, SSE, vec![Step::Write(event(0)), Step::Hold])
    })
    .await;
    let proxy = TestProxy::start(upstream.addr).await;
    let mut sender = h2(proxy.addr).await;
    let req = h2_request(
        request("POST", proxy.addr, "/v1/chat/completions", &[], b"{}"),
        proxy.addr,
    );
    let response = guard("head", sender.send_request(req)).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), Bytes::from(event(0)));
    // Resetting the stream (not the connection) must cancel the upstream request.
    drop(body);
    guard("upstream to see the cancel", upstream.peer_closed.recv())
        .await
        .expect("closed");
}

fn error_of(got: &Got) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&got.body).expect("error body is JSON");
    assert_eq!(got.headers.get("content-type").unwrap(), "application/json");
    let e = v["error"].clone();
    assert!(e["message"].is_string() && e["type"].is_string());
    assert!(e.get("param").is_some());
    e
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let proxy = TestProxy::start(addr).await;
    let got = send(
        proxy.addr,
        request("GET", proxy.addr, "/v1/models", &[], b""),
    )
    .await;
    assert_eq!(got.status, 502);
    assert_eq!(error_of(&got)["code"], 502);
}

#[tokio::test]
async fn upstream_header_timeout_is_a_504() {
    // Accepts and reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = TestProxy::start_with(addr, |a| a.upstream_header_timeout_ms = Some(100)).await;
    let got = send(
        proxy.addr,
        request("POST", proxy.addr, "/v1/completions", &[], b"{}"),
    )
    .await;
    assert_eq!(got.status, 504);
    assert_eq!(error_of(&got)["code"], 504);
}

#[tokio::test]
async fn oversized_bodies_are_a_413_declared_or_streamed() {
    let mut upstream = ScriptedUpstream::start(|_| Reply::fixed(200, &[], b"ok")).await;
    let proxy = TestProxy::start_with(upstream.addr, |a| a.max_body_bytes = Some(16)).await;
    // Declared too large: refused before the upstream is contacted.
    let got = send(
        proxy.addr,
        request("POST", proxy.addr, "/v1/completions", &[], &[b'x'; 17]),
    )
    .await;
    assert_eq!(got.status, 413);
    assert_eq!(error_of(&got)["code"], 413);
    // Streamed without a length: cut off at the limit.
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let req = http::Request::post("/v1/completions")
        .header("host", "x")
        .body(body)
        .unwrap();
    let mut sender = {
        let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    };
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    for _ in 0..4 {
        if tx
            .send_data(Bytes::from_static(b"0123456789"))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let response = guard("413", pending).await.unwrap().unwrap();
    let got = collect(response).await;
    assert_eq!(got.status, 413);
    // A body within the limit still goes through.
    let ok = send(
        proxy.addr,
        request("POST", proxy.addr, "/v1/completions", &[], b"small"),
    )
    .await;
    assert_eq!(ok.status, 200);
    let seen = upstream.received.recv().await.unwrap();
    assert_eq!(seen.body, b"small");
}

#[tokio::test]
async fn graceful_shutdown_lets_a_stream_in_flight_finish() {
    let upstream = ScriptedUpstream::start(|_| {
        Reply::chunked(
            200,
            SSE,
            vec![Step::Write(event(0)), Step::Gate, Step::Write(event(1))],
        )
    })
    .await;
    let mut proxy = TestProxy::start(upstream.addr).await;
    let (_sender, response) = post_chat(proxy.addr).await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), Bytes::from(event(0)));
    proxy.shutdown();
    // New connections are refused once the listener is closed. Wait for that by retrying connects
    // until one fails: bounded by the guard, not a timing assertion.
    guard("listener to close", async {
        loop {
            if tokio::net::TcpStream::connect(proxy.addr).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    upstream.open_gate();
    let mut rest = Vec::new();
    while let Some(d) = next_data(&mut body).await {
        rest.extend_from_slice(&d);
    }
    assert_eq!(rest, event(1));
    guard("server to finish draining", &mut proxy.join)
        .await
        .unwrap();
}

#[tokio::test]
async fn events_the_proxy_read_at_once_leave_in_one_write() {
    // Twenty chunks in one upstream write: hyper's client hands them over one at a time, and the
    // relay must still send them to the client together (nginx forwards whole read buffers).
    const N: usize = 20;
    let mut raw = Vec::new();
    for i in 0..N {
        let e = event(i);
        raw.extend_from_slice(format!("{:x}\r\n", e.len()).as_bytes());
        raw.extend_from_slice(&e);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let upstream = ScriptedUpstream::start(move |_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("transfer-encoding".into(), "chunked".into()),
        ],
        steps: vec![Step::Gate, Step::Write(raw.clone())],
        chunked: false,
    })
    .await;
    let proxy = TestProxy::start(upstream.addr).await;
    let (_sender, response) = post_chat(proxy.addr).await;
    let mut body = response.into_body();
    upstream.open_gate();
    let mut frames = 0;
    let mut got = Vec::new();
    while let Some(d) = next_data(&mut body).await {
        frames += 1;
        got.extend_from_slice(&d);
    }
    let want: Vec<u8> = (0..N).flat_map(event).collect();
    assert_eq!(got, want);
    // One chunk from the proxy (two if a read of the client cut it): never one per event.
    assert!(frames <= 2, "{frames} frames for {N} events read at once");
}

#[tokio::test]
async fn upstream_reset_mid_stream_is_not_turned_into_a_clean_end() {
    let upstream = ScriptedUpstream::start(|_| {
        Reply::chunked(200, SSE, vec![Step::Write(event(0)), Step::Reset])
    })
    .await;
    let proxy = TestProxy::start(upstream.addr).await;
    let (_sender, response) = post_chat(proxy.addr).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), Bytes::from(event(0)));
    // The truncation must be visible to the client as an error, as it would be directly.
    let end = guard("end of body", body.frame()).await;
    assert!(
        matches!(end, Some(Err(_))),
        "expected a body error, got {end:?}"
    );
}

#[tokio::test]
async fn client_leaving_before_a_non_streaming_answer_closes_the_upstream_request() {
    // An upstream that reads the request and never answers (a long non-streaming generation). It
    // reports when the request arrived and when the proxy closed the connection.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            let (arrived, closed) = (arrived_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = arrived.send(());
                }
                let _ = closed.send(());
            });
        }
    });
    let proxy = TestProxy::start(addr).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let pending = tokio::spawn(async move {
        let _ = sender
            .send_request(request(
                "POST",
                proxy.addr,
                "/v1/chat/completions",
                &[],
                body,
            ))
            .await;
    });
    guard("the request to reach the upstream", arrived_rx.recv())
        .await
        .expect("arrived");
    // The client goes away while the upstream is still working on the answer.
    pending.abort();
    conn_task.abort();
    guard("upstream to see the client leave", closed_rx.recv())
        .await
        .expect("closed");
}
