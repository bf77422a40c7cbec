//! The proxy is the only source of `x-energy-*` toward clients: such headers and trailers from
//! upstream are dropped (a scripted upstream forges them), other trailers pass.

use super::common::{self, collect, guard, h2, h2_request, Reply, ScriptedUpstream, TestProxy};
use super::energy::{chat_body, check_fields, text, CHAT};
use super::wire::client_request;

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
