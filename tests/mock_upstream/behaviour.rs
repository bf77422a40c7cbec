//! Behaviour beyond the fixtures: ids, determinism, recording, usage semantics and other
//! endpoints (faults, client disconnects and the engine's ground truth are in `engine`).

use super::*;

pub(super) fn events(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .unwrap()
        .split_terminator("\n\n")
        .map(str::to_owned)
        .collect()
}

fn data(ev: &str) -> Value {
    serde_json::from_str(ev.strip_prefix("data: ").unwrap()).unwrap()
}

pub(super) fn engine_timing(scale: f64) -> Timing {
    Timing::Engine(RunnerConfig {
        engine: EngineConfig::default(),
        time_scale: scale,
        ..RunnerConfig::default()
    })
}

#[tokio::test]
async fn x_request_id_is_the_base_of_the_response_id() {
    let h = mock(MockUpstream::builder()).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":2"#)),
        &[("x-request-id", "abc-1")],
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["id"],
        "chatcmpl-abc-1"
    );
    let r = call(
        h.addr(),
        "POST",
        "/v1/completions",
        Some(br#"{"prompt":"hi","max_tokens":1}"#.to_vec()),
        &[("x-request-id", "q")],
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["id"],
        "cmpl-q"
    );
    let r = call(
        h.addr(),
        "POST",
        "/v1/completions",
        Some(br#"{"prompt":"hi","max_tokens":1}"#.to_vec()),
        &[],
    )
    .await;
    let id = serde_json::from_slice::<Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        id.starts_with("cmpl-")
            && id.len() == 5 + 16
            && id[5..].chars().all(|c| c.is_ascii_hexdigit())
    );
    assert_eq!(h.requests()[2].response_id.as_deref(), Some(id.as_str()));
    h.shutdown().await;
}

#[tokio::test]
async fn output_is_deterministic_given_the_seed() {
    let run = |seed| async move {
        let h = mock(MockUpstream::builder().seed(seed)).await;
        let mut out = Vec::new();
        for extra in [
            r#","max_tokens":5,"stream":true"#,
            r#","max_tokens":3,"n":2"#,
        ] {
            let r = call(
                h.addr(),
                "POST",
                "/v1/chat/completions",
                Some(chat_body(extra)),
                &[],
            )
            .await;
            let mut v = String::from_utf8(r.body).unwrap();
            // `created` is the clock's, everything else is the seed's.
            while let Some(i) = v.find("\"created\":") {
                let end = v[i + 10..].find(|c: char| !c.is_ascii_digit()).unwrap() + i + 10;
                v.replace_range(i..end, "\"C\":0");
            }
            out.push(v);
        }
        h.shutdown().await;
        out
    };
    let a = run(5).await;
    assert_eq!(a, run(5).await);
    assert_ne!(a, run(6).await);
}

#[tokio::test]
async fn records_headers_and_exact_body_bytes() {
    let h = mock(MockUpstream::builder()).await;
    let body = b"{\"model\": \"tiny\",   \"prompt\": \"x\", \"max_tokens\": 1}".to_vec();
    call(
        h.addr(),
        "POST",
        "/v1/completions?a=1",
        Some(body.clone()),
        &[("x-custom", "v1"), ("authorization", "Bearer k")],
    )
    .await;
    let reqs = h.wait_for_requests(1).await;
    assert_eq!(reqs[0].body.as_ref(), body.as_slice());
    assert_eq!(reqs[0].uri, "/v1/completions?a=1");
    assert_eq!(reqs[0].header("x-custom"), Some("v1"));
    assert_eq!(reqs[0].header("authorization"), Some("Bearer k"));
    let names: Vec<&str> = reqs[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    let (hi, ci) = (
        names.iter().position(|n| *n == "host"),
        names.iter().position(|n| *n == "x-custom"),
    );
    assert!(hi < ci, "order kept: {names:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn include_usage_default_follows_the_version_option() {
    let body = chat_body(r#","max_tokens":2,"stream":true,"stream_options":{}"#);
    let h = mock(MockUpstream::builder()).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(body.clone()),
        &[],
    )
    .await;
    assert!(!String::from_utf8_lossy(&r.body).contains("\"usage\""));
    h.shutdown().await;
    let h = mock(
        MockUpstream::builder()
            .vllm_version("0.8.5")
            .absent_include_usage_is_true(true),
    )
    .await;
    let r = call(h.addr(), "POST", "/v1/chat/completions", Some(body), &[]).await;
    let ev = events(&r.body);
    assert_eq!(data(&ev[ev.len() - 2])["usage"]["completion_tokens"], 2);
    let v = call(h.addr(), "GET", "/version", None, &[]).await;
    assert_eq!(v.body, b"{\"version\":\"0.8.5\"}");
    h.shutdown().await;
}

#[tokio::test]
async fn embeddings_responses_and_unknown_routes() {
    let h = mock(MockUpstream::builder()).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/embeddings",
        Some(br#"{"model":"tiny","input":["abcdef","x"]}"#.to_vec()),
        &[],
    )
    .await;
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert!(v["id"].as_str().unwrap().starts_with("embd-"));
    let r = call(
        h.addr(),
        "POST",
        "/v1/responses",
        Some(br#"{"input":"hello","max_output_tokens":3,"stream":true}"#.to_vec()),
        &[],
    )
    .await;
    let ev = events(&r.body);
    assert!(ev
        .last()
        .unwrap()
        .starts_with("event: response.completed\n"));
    assert!(!String::from_utf8_lossy(&r.body).contains("[DONE]"));
    assert_eq!(
        ev.iter()
            .filter(|e| e.starts_with("event: response.output_text.delta"))
            .count(),
        3
    );
    assert_eq!(call(h.addr(), "GET", "/nope", None, &[]).await.status, 404);
    assert_eq!(
        call(h.addr(), "GET", "/v1/chat/completions", None, &[])
            .await
            .status,
        405
    );
    let m = call(h.addr(), "GET", "/metrics", None, &[]).await;
    assert!(String::from_utf8_lossy(&m.body)
        .contains("vllm:prompt_tokens_total{engine=\"0\",model_name=\"tiny\"} 20.0"));
    // A scrape is monitoring, not traffic: not among the requests received.
    assert!(h.requests().iter().all(|r| r.uri != "/metrics"));
    h.shutdown().await;
}

#[tokio::test]
async fn fixed_timing_streams_every_token() {
    let h = mock(MockUpstream::builder().timing(Timing::Fixed {
        ttft: std::time::Duration::from_millis(2),
        itl: std::time::Duration::from_millis(1),
    }))
    .await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":4,"stream":true"#)),
        &[],
    )
    .await;
    assert_eq!(events(&r.body).len(), 1 + 4 + 1);
    h.wait_for_completed(1).await;
    h.shutdown().await;
}

/// `--enable-force-include-usage`: usage on every chunk and a final usage chunk, whatever the
/// request said; a request that asked for it gets the same stream as one that did not.
#[tokio::test]
async fn forced_usage_ignores_stream_options() {
    let h = mock(MockUpstream::builder().enable_force_include_usage(true)).await;
    let mut bodies = Vec::new();
    for extra in [
        r#","max_tokens":3,"stream":true"#,
        r#","max_tokens":3,"stream":true,"stream_options":{"include_usage":false}"#,
        r#","max_tokens":3,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}"#,
    ] {
        let r = call(
            h.addr(),
            "POST",
            "/v1/chat/completions",
            Some(chat_body(extra)),
            &[("x-request-id", "same")],
        )
        .await;
        let evs = events(&r.body);
        // Role chunk, 3 tokens, usage chunk, [DONE].
        assert_eq!(evs.len(), 6);
        for (k, ev) in evs[..5].iter().enumerate() {
            let v = data(ev);
            let want = if k < 4 { k } else { 3 };
            assert_eq!(v["usage"]["completion_tokens"], want, "{extra}: {ev}");
        }
        // The text follows the request bytes; everything else is the same.
        bodies.push(structure(&r.body, true, false));
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // Not streamed: unchanged (no usage forcing outside streams).
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":3"#)),
        &[],
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["usage"]["completion_tokens"],
        3
    );
    h.shutdown().await;
}
