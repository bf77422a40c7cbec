//! The mock's faults and client disconnects, and its engine's ground truth: energy conserved
//! against the counter, the per-request metrics it reports, HTTP/2.

use super::behaviour::{engine_timing, events};
use super::*;

#[tokio::test]
async fn fault_status_answers_vllm_error_shape() {
    let h = mock(MockUpstream::builder()).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body("")),
        &[("x-mock-fault", "status=500")],
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}"#
    );
    h.shutdown().await;
}

#[tokio::test]
async fn fault_error_after_sends_the_error_event_then_done_under_200() {
    let h = mock(MockUpstream::builder()).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":8,"stream":true"#)),
        &[("x-mock-fault", "error-after=2")],
    )
    .await;
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert_eq!(ev.len(), 1 + 2 + 2);
    assert_eq!(
        ev[3],
        r#"data: {"error": {"message": "Internal server error", "type": "InternalServerError", "param": null, "code": 500}}"#
    );
    assert_eq!(ev[4], "data: [DONE]");
    h.shutdown().await;
}

#[tokio::test]
async fn fault_reset_truncates_the_body() {
    let h = mock(MockUpstream::builder()).await;
    let (resp, _t) = open(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":8,"stream":true"#)),
        &[("x-mock-fault", "reset-after=1")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.into_body().collect().await.is_err());
    // Non-streaming: the connection closes without a response.
    let stream = TcpStream::connect(h.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/chat/completions")
        .header("x-mock-fault", "reset-after=0")
        .body(Full::new(Bytes::from(chat_body(r#","max_tokens":2"#))))
        .unwrap();
    assert!(sender.send_request(req).await.is_err());
    h.shutdown().await;
}

#[tokio::test]
async fn stalled_stream_reports_the_client_leaving() {
    let h = mock(MockUpstream::builder().fault(joulegate::sim::Fault {
        stall_after: Some(1),
        ..Default::default()
    }))
    .await;
    let (resp, task) = open(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":8,"stream":true"#)),
        &[],
    )
    .await;
    let mut body = resp.into_body();
    let mut seen = String::new();
    // The role chunk and the one token chunk the fault lets through.
    while seen.matches("\n\n").count() < 2 {
        let frame = body.frame().await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    assert_eq!(h.client_gone(), 0);
    drop(body);
    task.abort();
    h.wait_for_client_gone(1).await;
    h.shutdown().await;
}

#[tokio::test]
async fn engine_aborts_the_request_of_a_departed_client() {
    // 1,000,000 tokens would take over an hour at this scale, so the request cannot finish on its
    // own before the departure is noticed, however slow the machine: no timing margin involved.
    let h = mock(
        MockUpstream::builder()
            .max_model_len(2_000_000)
            .timing(engine_timing(1.0)),
    )
    .await;
    let (resp, task) = open(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        Some(chat_body(r#","max_tokens":1000000,"stream":true"#)),
        &[("x-request-id", "gone")],
    )
    .await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().unwrap().starts_with(b"data: "));
    drop(body);
    task.abort();
    h.wait_for_client_gone(1).await;
    let t = h.wait_for_truth("chatcmpl-gone").await.unwrap();
    assert_eq!(t.phase, Phase::Aborted);
    assert!(t.completion_tokens < 1_000_000 && t.prefill_uj > 0);
    h.shutdown().await;
}

#[tokio::test]
async fn engine_ground_truth_conserves_the_counter_exactly() {
    let h = mock(MockUpstream::builder().timing(engine_timing(50.0))).await;
    let addr = h.addr();
    let reqs: Vec<(&str, Vec<u8>)> = vec![
        (
            "/v1/chat/completions",
            chat_body(
                r#","max_tokens":12,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}"#,
            ),
        ),
        (
            "/v1/chat/completions",
            chat_body(r#","max_tokens":6,"n":2"#),
        ),
        (
            "/v1/completions",
            br#"{"prompt":["one two","three four five"],"max_tokens":5,"stream":true}"#.to_vec(),
        ),
        ("/v1/embeddings", br#"{"input":"embed me please"}"#.to_vec()),
        (
            "/v1/responses",
            br#"{"input":"say something short","max_output_tokens":4}"#.to_vec(),
        ),
    ];
    let resps = post_all(addr, reqs, "r").await;
    assert!(resps.iter().all(|r| r.status == 200));
    h.wait_for_completed(5).await;
    let totals = h.settle_energy().unwrap();
    let truths = h.truths();
    assert_eq!(truths.len(), 5);
    let sum: u64 = truths.iter().map(|(_, t)| t.total_uj()).sum();
    assert_eq!(sum, totals.step_uj);
    assert_eq!(sum + totals.idle_uj, totals.total_uj);
    assert_eq!(h.energy_counter_uj(), totals.total_uj);
    let t = h.truth("chatcmpl-r1").unwrap();
    assert_eq!(
        (t.prompt_tokens, t.completion_tokens, t.phase),
        (22, 12, Phase::Finished)
    );
    let t = h.truth("cmpl-r2").unwrap();
    assert_eq!((t.prompt_tokens, t.completion_tokens), (8, 10));
    let t = h.truth("embd-r3").unwrap();
    assert!(t.prefill_uj > 0 && t.decode_uj == 0 && t.completion_tokens == 0);
    assert!(truths.iter().all(|(_, t)| t.prefill_uj > 0));
    h.shutdown().await;
}

/// Posts every `(path, body)` at once, each with `x-request-id` `{id_prefix}{index}`, and returns
/// the responses in order.
async fn post_all(
    addr: SocketAddr,
    reqs: Vec<(&'static str, Vec<u8>)>,
    id_prefix: &str,
) -> Vec<Resp> {
    let handles: Vec<_> = reqs
        .into_iter()
        .enumerate()
        .map(|(i, (path, body))| {
            let id = format!("{id_prefix}{i}");
            tokio::spawn(async move {
                call(
                    addr,
                    "POST",
                    path,
                    Some(body),
                    &[("x-request-id", id.as_str())],
                )
                .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn serves_http2_too() {
    let h = mock(MockUpstream::builder()).await;
    let stream = TcpStream::connect(h.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/v1/chat/completions", h.addr()))
        .body(Full::new(Bytes::from(chat_body(
            r#","max_tokens":3,"stream":true"#,
        ))))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("transfer-encoding").is_none());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(events(&body).len(), 5);
    h.shutdown().await;
}

/// Milliseconds as vLLM writes them → nanoseconds, as the proxy reads them.
fn ms_ns(v: &Value) -> u128 {
    (v.as_f64().unwrap() * 1e6).round() as u128
}

/// In engine timing, `--enable-per-request-metrics` reports the runner's true timing of each
/// response (one prompt, one choice): queue, prefill and generation to the nanosecond, mean ITL over
/// tokens − 1, throughput over prefill plus generation (concurrent requests on one running sequence
/// may queue; the runner's own tests pin the queue time exactly). `n > 1` is not timed; a stream
/// reports `metrics` only in its final usage chunk.
#[tokio::test]
async fn engine_metrics_are_the_true_timing_of_each_response() {
    let h = mock(
        MockUpstream::builder()
            .timing(Timing::Engine(RunnerConfig {
                engine: EngineConfig {
                    max_running_seqs: 1,
                    ..EngineConfig::default()
                },
                time_scale: 50.0,
                ..RunnerConfig::default()
            }))
            .enable_per_request_metrics(true),
    )
    .await;
    let addr = h.addr();
    let reqs: Vec<(&str, Vec<u8>)> = vec![
        (
            "/v1/chat/completions",
            chat_body(r#","max_tokens":6,"stream":true,"stream_options":{"include_usage":true}"#),
        ),
        ("/v1/chat/completions", chat_body(r#","max_tokens":5"#)),
        (
            "/v1/completions",
            br#"{"prompt":"once upon a time","max_tokens":4}"#.to_vec(),
        ),
        (
            "/v1/responses",
            br#"{"input":"say something short","max_output_tokens":3,"stream":true}"#.to_vec(),
        ),
        ("/v1/chat/completions", chat_body(r#","max_tokens":1"#)),
        (
            "/v1/chat/completions",
            chat_body(r#","max_tokens":3,"n":2"#),
        ),
        (
            "/v1/chat/completions",
            chat_body(r#","max_tokens":3,"stream":true"#),
        ),
    ];
    let resps = post_all(addr, reqs, "m").await;
    assert!(resps.iter().all(|r| r.status == 200));
    let metrics_of = |i: usize| -> Value {
        let body = &resps[i].body;
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v["metrics"].clone(),
            Err(_) => {
                let evs = events(body);
                let with: Vec<Value> = evs
                    .iter()
                    .filter_map(|e| e.split_once("data: ").map(|(_, d)| d))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .filter_map(|v| {
                        v.get("metrics")
                            .or_else(|| v.pointer("/response/metrics"))
                            .cloned()
                    })
                    .collect();
                assert!(with.len() <= 1, "metrics once, at the end");
                with.into_iter().next().unwrap_or(Value::Null)
            }
        }
    };
    let ids = [
        "chatcmpl-m0",
        "chatcmpl-m1",
        "cmpl-m2",
        "resp_m3",
        "chatcmpl-m4",
    ];
    for (i, id) in ids.iter().enumerate() {
        let m = metrics_of(i);
        let t = h
            .timing(id)
            .expect("a finished engine response has a timing");
        assert_eq!(ms_ns(&m["queue_time_ms"]), t.queue.as_nanos(), "{id}");
        assert_eq!(
            ms_ns(&m["time_to_first_token_ms"]),
            t.prefill.as_nanos(),
            "{id}"
        );
        assert_eq!(
            ms_ns(&m["generation_time_ms"]),
            t.generation.as_nanos(),
            "{id}"
        );
        assert!(t.prefill > std::time::Duration::ZERO, "{id}");
        let tokens = f64::from(t.tokens);
        let gen_ms = m["generation_time_ms"].as_f64().unwrap();
        let busy_ms = m["time_to_first_token_ms"].as_f64().unwrap() + gen_ms;
        let itl = m["mean_itl_ms"].as_f64().unwrap();
        if t.tokens > 1 {
            assert!((itl - gen_ms / (tokens - 1.0)).abs() < 1e-9, "{id}");
        } else {
            assert_eq!((gen_ms, itl), (0.0, 0.0), "{id}");
        }
        let tps = m["tokens_per_second"].as_f64().unwrap();
        assert!((tps - tokens / (busy_ms / 1000.0)).abs() < 1e-6, "{id}");
        // JSON bodies and responses end the object with speculative_decoding; chunks do not.
        assert_eq!(m.get("speculative_decoding").is_some(), i != 0, "{id}");
    }
    assert_eq!(metrics_of(5), Value::Null, "n = 2 is not timed");
    assert_eq!(metrics_of(6), Value::Null, "no usage, no metrics");
    h.shutdown().await;
}
