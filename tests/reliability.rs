//! Reliability and security at the socket (issue #9): request smuggling attempts written as raw
//! bytes are refused with 400 and the connection closed, and nothing of them reaches the upstream;
//! slow, oversized, HTTP/1.0 and pipelined clients; upstream faults the scripted upstream produces
//! (truncated bodies, garbage streams, stalls, an upstream that never reads the request body). After
//! each, the proxy keeps serving.
//!
//! "Nothing reached the upstream" is checked by order, not by waiting: after the refused exchange a
//! well-formed request follows on a fresh connection, and it must be the first request the upstream
//! records. Time never decides pass/fail: `guard` only bounds hangs, and the tiny timeouts configured
//! here (a stalled client or upstream) only decide when an outcome that cannot change happens.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that answers every request with its request line as the body.
async fn echo_upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|r| Reply::fixed(200, &[], r.request_line().as_bytes())).await
}

/// Writes `bytes` on a fresh connection and reads until the proxy closes it.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    // The proxy must close the connection itself: reading to EOF would hang otherwise.
    let _ = guard("the proxy to close the connection", s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// Status, lowercased head and body of the single response in `text`.
fn single_response(text: &str) -> (u16, String, String) {
    let status_lines = text
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.") && l.as_bytes().get(8) == Some(&b' '))
        .count();
    assert_eq!(status_lines, 1, "exactly one response: {text:?}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Asserts the OpenAI error shape with `code`; returns the message.
fn openai_error(body: &str, code: u16) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("error JSON");
    assert_eq!(v["error"]["code"], code, "{body}");
    assert!(v["error"]["type"].is_string() && v["error"].get("param").is_some());
    v["error"]["message"].as_str().unwrap().to_string()
}

/// A well-formed request on a fresh connection succeeds, and it is the first request the upstream
/// records since the last call (so nothing before it was forwarded).
async fn follow_up_is_first(proxy: SocketAddr, upstream: &mut ScriptedUpstream, path: &str) {
    let got = send(proxy, request("GET", proxy, path, &[("host", "x")], b"")).await;
    assert_eq!(got.status, 200);
    let seen = guard("follow-up at the upstream", upstream.received.recv())
        .await
        .expect("received");
    assert_eq!(seen.request_line(), format!("GET {path} HTTP/1.1"));
}

#[tokio::test]
async fn smuggling_attempts_are_refused_closed_and_never_forwarded() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start(upstream.addr).await;
    let second = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: &[(&str, String)] = &[
        (
            "the reported case: CL and TE, then a pipelined request",
            format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{second}"),
        ),
        (
            "TE before CL",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{second}"),
        ),
        (
            "duplicate equal CL",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd{second}"),
        ),
        (
            "conflicting CL",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd{second}"),
        ),
        (
            "TE chunked, identity",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{second}"),
        ),
        (
            "TE xchunked",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{second}"),
        ),
        (
            "TE with a leading space, and CL",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding:  chunked\r\n\r\n0\r\n\r\n{second}"),
        ),
        (
            "TE with a vertical tab",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{second}"),
        ),
        (
            "bare LF line endings",
            format!("GET /bare HTTP/1.1\nHost: x\n\n{second}"),
        ),
        (
            "a header name with a space",
            format!("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd{second}"),
        ),
        (
            "obsolete line folding",
            format!("GET /fold HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n{second}"),
        ),
    ];
    for (what, bytes) in cases {
        let text = raw_exchange(proxy.addr, bytes.as_bytes()).await;
        let (status, head, body) = single_response(&text);
        assert_eq!(status, 400, "{what}: {text}");
        assert!(head.contains("\r\nconnection: close"), "{what}: {head}");
        let message = openai_error(&body, 400);
        assert!(message.starts_with("joulegate: "), "{what}: {message}");
        follow_up_is_first(proxy.addr, &mut upstream, "/after").await;
    }
}

#[tokio::test]
async fn a_well_formed_chunked_request_still_goes_through() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start(upstream.addr).await;
    // Optional whitespace around the value is legal; the body is re-framed for the upstream.
    let text = raw_exchange(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  chunked \r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    )
    .await;
    let (status, _, body) = single_response(&text);
    assert_eq!((status, body.as_str()), (200, "POST /upload HTTP/1.1"));
    let seen = upstream.received.recv().await.unwrap();
    assert_eq!(seen.body, b"abcd");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start(upstream.addr).await;
    let text = raw_exchange(
        proxy.addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        bodies,
        [
            "GET /one HTTP/1.1",
            "POST /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ],
        "{text}"
    );
    for path in ["/one", "/two", "/three"] {
        let seen = upstream.received.recv().await.unwrap();
        assert!(seen.request_line().contains(path));
    }
}

#[tokio::test]
async fn http_1_0_without_host_is_forwarded_and_closed() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start(upstream.addr).await;
    let text = raw_exchange(proxy.addr, b"GET /v1/models HTTP/1.0\r\n\r\n").await;
    let (status, _, body) = single_response(&text);
    assert_eq!((status, body.as_str()), (200, "GET /v1/models HTTP/1.1"));
    // The upstream gets a Host (its own authority), as HTTP/1.1 requires.
    let seen = upstream.received.recv().await.unwrap();
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string()),
        "{}",
        seen.head
    );
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_by_the_header_read_timeout() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| a.header_read_timeout_ms = Some(50)).await;
    // Half a request line, then nothing: the proxy closes the connection (no answer is owed).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /v1/mod").await.unwrap();
    let mut out = Vec::new();
    guard("the proxy to close a slow client", s.read_to_end(&mut out))
        .await
        .ok();
    assert!(!String::from_utf8_lossy(&out).contains("200"), "{out:?}");
    follow_up_is_first(proxy.addr, &mut upstream, "/after").await;
}

#[tokio::test]
async fn oversized_request_heads_are_a_431() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start(upstream.addr).await;
    let big = "a".repeat(70 * 1024);
    let text = raw_exchange(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    let (status, head, body) = single_response(&text);
    assert_eq!(status, 431, "{text}");
    assert!(head.contains("connection: close"));
    assert!(openai_error(&body, 431).contains("65536 bytes"));
    follow_up_is_first(proxy.addr, &mut upstream, "/after").await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_forwards_nothing_it_did_not_finish() {
    let mut upstream = echo_upstream().await;
    let proxy = TestProxy::start(upstream.addr).await;
    for path in ["/v1/chat/completions", "/upload"] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{\"model\"")
                .as_bytes(),
        )
        .await
        .unwrap();
        drop(s);
        // A model request is read whole before forwarding, so nothing reaches the upstream; any
        // other body streams, and the upstream sees its connection end before the body did (the
        // scripted upstream records only complete requests).
        follow_up_is_first(proxy.addr, &mut upstream, "/after").await;
    }
}

const SSE: &[(&str, &str)] = &[("content-type", "text/event-stream")];

#[tokio::test]
async fn truncated_and_garbage_upstream_bodies() {
    let mut upstream = ScriptedUpstream::start(|r| match r.request_line() {
        // Announces more than it sends, then resets: the body is cut short.
        l if l.contains("/truncated") => {
            let mut reply = Reply::fixed(
                200,
                &[
                    ("content-type", "application/json"),
                    ("content-length", "100"),
                ],
                b"{\"id\":\"cmpl-1\",\"choi",
            );
            reply.steps.push(Step::Reset);
            reply
        }
        // Complete by its framing, broken as JSON: relayed as it is.
        l if l.contains("/broken-json") => Reply::fixed(
            200,
            &[("content-type", "application/json")],
            b"{\"id\":\"cmpl-1\",\"usage\":{\"prompt_tok",
        ),
        // Not SSE at all under an event-stream content type.
        l if l.contains("/garbage") => Reply::chunked(
            200,
            SSE,
            vec![
                Step::Write(b"\x00\xff\xfe garbage\n\n".to_vec()),
                Step::Write(b"data: {not json\n\ndata: [DONE]\n\n".to_vec()),
            ],
        ),
        _ => Reply::fixed(200, &[], b"ok"),
    })
    .await;
    let proxy = TestProxy::start(upstream.addr).await;
    let chat = |path: &str, stream: bool| {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
        );
        request(
            "POST",
            proxy.addr,
            &format!("/v1/chat/completions{path}"),
            &[("host", "x"), ("content-type", "application/json")],
            body.as_bytes(),
        )
    };
    // A JSON answer cut short is read whole before answering, so the client gets a 502.
    let got = send(proxy.addr, chat("?/truncated", false)).await;
    assert_eq!(got.status, 502);
    let _ = upstream.received.recv().await;
    let got = send(proxy.addr, chat("?/broken-json", false)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"{\"id\":\"cmpl-1\",\"usage\":{\"prompt_tok");
    assert!(got.headers.contains_key("x-energy-request-id"));
    let _ = upstream.received.recv().await;
    let got = send(proxy.addr, chat("?/garbage", true)).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body,
        b"\x00\xff\xfe garbage\n\ndata: {not json\n\ndata: [DONE]\n\n"
    );
    let _ = upstream.received.recv().await;
    follow_up_is_first(proxy.addr, &mut upstream, "/after").await;
}

#[tokio::test]
async fn a_stream_that_stalls_ends_in_an_error_after_the_idle_timeout() {
    let mut upstream = ScriptedUpstream::start(|r| {
        if r.request_line().contains("/after") {
            return Reply::fixed(200, &[], b"ok");
        }
        Reply::chunked(
            200,
            SSE,
            vec![Step::Write(b"data: {}\n\n".to_vec()), Step::Hold],
        )
    })
    .await;
    let proxy =
        TestProxy::start_with(upstream.addr, |a| a.upstream_idle_timeout_ms = Some(50)).await;
    for path in ["/v1/chat/completions", "/other"] {
        let mut sender = h1(proxy.addr).await;
        let response = guard(
            "head",
            sender.send_request(request("POST", proxy.addr, path, &[("host", "x")], b"{}")),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = guard("first event", body.frame()).await.unwrap().unwrap();
        assert_eq!(
            first.into_data().unwrap(),
            Bytes::from_static(b"data: {}\n\n")
        );
        // The upstream goes silent: the client's body ends in an error, not a clean end.
        let end = guard("end of body", body.frame()).await;
        assert!(matches!(end, Some(Err(_))), "{path}: {end:?}");
        // And the upstream request is dropped (its connection closed).
        guard("upstream to see the close", upstream.peer_closed.recv())
            .await
            .unwrap();
        let _ = upstream.received.recv().await;
    }
    follow_up_is_first(proxy.addr, &mut upstream, "/after").await;
}

#[tokio::test]
async fn an_upstream_that_never_reads_the_body_still_answers() {
    // Reads the head only, answers at once and keeps the connection open without reading more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno")
                    .await;
                // Hold the connection open without reading another byte.
                std::future::pending::<()>().await;
                drop(s);
            });
        }
    });
    let proxy = TestProxy::start(addr).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    // The client gets the upstream's early answer while its upload is unfinished.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\nno") {
        let n = guard("the early answer", s.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 413"), "{got:?}");
}
