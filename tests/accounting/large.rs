//! Request bodies past `max_inspect_bytes` (a multimodal chat request with an inline base64 image):
//! forwarded byte for byte as a stream, answered exactly as the upstream answers directly, and still
//! accounted (exact counts where the response carries usage, estimated ones otherwise). The
//! optional hard cap `max_body_bytes` gives 413; the bytes held across requests stay within
//! `max_inspect_total_bytes`, past which requests stream uninspected instead of being refused.

use bytes::Bytes;
use http_body_util::BodyExt;
use joulegate::proxy::bodies::BodyStats;

use super::common::{self, guard, Got};
use super::energy::{latest_truth, text, CHAT};
use super::rig::{engine_mock, spawn_mock, Metering, Rig};
use super::wire::{client_request, comparable_headers, direct_builder, normalise_created};

/// 40 MiB: past the default `max_inspect_bytes` (16 MiB), as an image or a few video frames are.
const LARGE: usize = 40 * 1024 * 1024;

/// A chat request whose image is a base64 data URL making it `size` bytes long.
fn image_request(size: usize, extra: &str) -> Vec<u8> {
    let head = r#"{"model":"tiny","messages":[{"role":"user","content":[{"type":"text","text":"what is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#;
    let tail = format!(r#""}}}}]}}],"max_tokens":5{extra}}}"#);
    let fill = size.saturating_sub(head.len() + tail.len());
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.extend((0..fill).map(|i| B64[(i * 7 + i / 64) % 64]));
    body.extend_from_slice(tail.as_bytes());
    body
}

/// The same request sent straight to a fresh mock like the rig's (the forwarded bytes are the
/// client's, so the mock generates the same text).
async fn direct(body: &[u8], request_id: &str) -> Got {
    let mock = spawn_mock(direct_builder()).await;
    let got = common::send(
        mock.addr(),
        client_request(mock.addr(), CHAT, request_id, body, &[]),
    )
    .await;
    mock.shutdown().await;
    got
}

#[tokio::test]
async fn a_request_past_the_inspection_bound_is_forwarded_untouched_and_accounted() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    for (label, extra, exact) in [
        ("json", "", true),
        (
            "stream with usage",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
            true,
        ),
        ("stream", r#","stream":true"#, false),
    ] {
        let body = image_request(LARGE, extra);
        let request_id = format!("large-{}", label.replace(' ', "-"));
        let before = rig.mock.requests().len();
        let proxied = common::send(
            rig.proxy,
            client_request(rig.proxy, CHAT, &request_id, &body, &[]),
        )
        .await;
        assert_eq!(proxied.status, 200, "{label}");
        let forwarded = rig.mock.requests();
        assert_eq!(
            forwarded.len(),
            before + 1,
            "{label}: one request forwarded"
        );
        let forwarded = forwarded.last().expect("forwarded");
        assert!(
            forwarded.body[..] == body[..],
            "{label}: the upstream received the client's bytes exactly"
        );
        assert_eq!(
            forwarded.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{label}"
        );
        let (prompt, completion) = latest_truth(&rig).await;
        let direct = direct(&body, &request_id).await;
        assert_eq!(direct.status, proxied.status, "{label}");
        assert_eq!(
            normalise_created(std::str::from_utf8(&direct.body).expect("utf-8")),
            normalise_created(std::str::from_utf8(&proxied.body).expect("utf-8")),
            "{label}: the client gets what the upstream sends directly"
        );
        assert_eq!(
            comparable_headers(&direct),
            comparable_headers(&proxied),
            "{label}"
        );
        let public_id = text(&proxied.headers, "x-energy-request-id").expect("accounted");
        let record = rig.settle(&public_id);
        assert_eq!(record.endpoint, "chat.completions", "{label}: {record:?}");
        assert_eq!(record.completion_tokens, completion, "{label}: {record:?}");
        assert_eq!(record.tokens_exact, exact, "{label}: {record:?}");
        if exact {
            assert_eq!(record.prompt_tokens, prompt, "{label}: {record:?}");
        }
        assert!(record.energy_joules > 0.0, "{label}: {record:?}");
    }
    let stats = rig.state.bodies.stats();
    assert_eq!(stats.streamed_too_large, 3, "{stats:?}");
    assert_eq!(stats.inspect_bytes_held, 0, "{stats:?}");
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn the_hard_cap_gives_413_in_the_openai_shape() {
    let rig = Rig::start(engine_mock(), Metering::Measured, |a| {
        a.max_body_bytes = Some(16 * 1024 * 1024);
    })
    .await;
    let body = image_request(LARGE, "");
    let got = common::send(
        rig.proxy,
        client_request(rig.proxy, CHAT, "capped", &body, &[]),
    )
    .await;
    assert_eq!(got.status, 413);
    let error: serde_json::Value = serde_json::from_slice(&got.body).expect("JSON error");
    assert_eq!(error["error"]["code"], 413);
    assert_eq!(error["error"]["type"], "RequestTooLargeError");
    assert!(
        rig.mock.requests().is_empty(),
        "nothing reached the upstream"
    );
    assert!(rig.state.in_flight.is_empty(), "nothing was accounted");
    rig.stop().await;
}

/// A request without a content-length whose first bytes hold the whole budget: the next request
/// finds none left and streams uninspected (still answered, still accounted); once the first is
/// sent, the budget is free again.
#[tokio::test]
async fn past_the_total_bound_requests_stream_uninspected_instead_of_waiting() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |a| {
        a.max_inspect_bytes = Some(4096);
        a.max_inspect_total_bytes = Some(4096);
    })
    .await;
    let small = image_request(2048, "");
    // The first request: chunked, its first 3000 bytes sent, the rest held back.
    let (mut tx, channel) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let req = http::Request::post(CHAT)
        .header("host", "x")
        .header("content-type", "application/json")
        .body(channel)
        .expect("request");
    let mut first_sender = {
        let stream = tokio::net::TcpStream::connect(rig.proxy)
            .await
            .expect("connect");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        sender
    };
    let first = tokio::spawn(async move { first_sender.send_request(req).await });
    let first_body = image_request(3500, "");
    guard(
        "first part",
        tx.send_data(Bytes::copy_from_slice(&first_body[..3000])),
    )
    .await
    .expect("sent");
    // Held: read once the proxy has taken the budget for those bytes.
    guard("budget taken", async {
        while rig.state.bodies.held() < 3000 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    let got = common::send(
        rig.proxy,
        client_request(rig.proxy, CHAT, "second", &small, &[]),
    )
    .await;
    assert_eq!(got.status, 200);
    let second_id = text(&got.headers, "x-energy-request-id").expect("accounted");
    let forwarded = rig.mock.requests();
    assert_eq!(forwarded.last().expect("second").body[..], small[..]);
    let stats: BodyStats = rig.state.bodies.stats();
    assert_eq!(
        (stats.streamed_budget_full, stats.inspect_bytes_held),
        (1, 3000),
        "{stats:?}"
    );
    // The first request completes, inspected, and gives its bytes back.
    guard(
        "rest",
        tx.send_data(Bytes::copy_from_slice(&first_body[3000..])),
    )
    .await
    .expect("sent");
    drop(tx);
    let response = guard("first response", first)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(response.status(), 200);
    let first_id = text(response.headers(), "x-energy-request-id").expect("accounted");
    let _ = guard("first body", response.into_body().collect()).await;
    assert_eq!(
        rig.mock.requests().last().expect("first").body[..],
        first_body[..]
    );
    let stats = rig.state.bodies.stats();
    assert_eq!(
        (stats.inspected, stats.inspect_bytes_held),
        (1, 0),
        "{stats:?}"
    );
    rig.settle(&second_id);
    rig.settle(&first_id);
    rig.assert_conservation();
    rig.stop().await;
}
