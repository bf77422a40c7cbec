//! The proxy changes nothing (linkerd's `tests/transparency.rs`): for every recorded vLLM exchange,
//! what a client receives through the proxy equals what it receives directly, status, headers and
//! body bytes, however the upstream's writes are cut.

mod common;

use common::*;

fn reply_for(f: &Fixture, cut: Option<usize>) -> Reply {
    let headers: Vec<(&str, &str)> = f
        .headers
        .iter()
        .filter(|(k, _)| k != "transfer-encoding")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let pieces: Vec<Step> = match cut {
        Some(at) if at <= f.body.len() => {
            vec![
                Step::Write(f.body[..at].to_vec()),
                Step::Write(f.body[at..].to_vec()),
            ]
        }
        _ => vec![Step::Write(f.body.clone())],
    };
    if f.is_chunked() {
        Reply::chunked(f.status, &headers, pieces)
    } else {
        let mut r = Reply::fixed(f.status, &headers, &f.body);
        r.steps = pieces;
        r
    }
}

fn request_for(
    f: &Fixture,
    addr: std::net::SocketAddr,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let body = f
        .request_body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut headers = vec![("host", "api.example.test"), ("x-request-id", "req-42")];
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    request(&f.method, addr, &f.path, &headers, &body)
}

/// Sends the fixture's request directly and through the proxy (upstream cut at `cut`) and compares.
async fn compare(
    f: &Fixture,
    cut: Option<usize>,
    upstream: &mut ScriptedUpstream,
    proxy: &TestProxy,
) {
    let direct = send(upstream.addr, request_for(f, upstream.addr)).await;
    let seen_direct = upstream.received.recv().await.unwrap();
    let proxied = send(proxy.addr, request_for(f, proxy.addr)).await;
    let seen_proxied = upstream.received.recv().await.unwrap();
    let ctx = format!("{} cut {:?}", f.name, cut);
    let accounted = f.method == "POST"
        && joulegate::openai::request::endpoint_of(&f.path) != joulegate::observe::Endpoint::Other
        && f.request_body.as_ref().is_some_and(|b| b.is_object());
    assert_eq!(
        proxied.headers.contains_key("x-energy-request-id"),
        accounted,
        "{ctx}"
    );
    assert_eq!(direct.status, proxied.status, "{ctx}");
    assert_same_headers(&direct, &proxied, &ctx);
    assert_same_bytes(&direct.body, &proxied.body, &ctx);
    assert_same_bytes(
        &direct.body,
        &f.body,
        &format!("{ctx}: scripted upstream must replay the fixture"),
    );
    // The upstream sees the same request either way (the client set Host itself).
    assert_eq!(
        seen_direct.request_line(),
        seen_proxied.request_line(),
        "{ctx}"
    );
    assert_same_bytes(
        &seen_direct.body,
        &seen_proxied.body,
        &format!("{ctx}: request body"),
    );
    let strip = |h: Vec<(String, String)>| -> Vec<(String, String)> {
        h.into_iter()
            .filter(|(k, _)| k != "content-length" && k != "transfer-encoding")
            .collect()
    };
    assert_eq!(
        strip(seen_direct.headers()),
        strip(seen_proxied.headers()),
        "{ctx}"
    );
}

/// The proxy's documented additions: `x-energy-*` headers on accounted requests.
fn without_energy(list: Vec<(String, String)>) -> Vec<(String, String)> {
    list.into_iter()
        .filter(|(k, _)| !k.starts_with("x-energy-"))
        .collect()
}

/// Same headers in the same order, apart from the proxy's `x-energy-*`. One known exception: hyper
/// writes `content-length: 0` of an empty body after the other headers, so that one header is compared by value, not position.
fn assert_same_headers(direct: &Got, proxied: &Got, ctx: &str) {
    let without_len = |g: &Got| -> Vec<(String, String)> {
        without_energy(g.header_list())
            .into_iter()
            .filter(|(k, _)| k != "content-length")
            .collect()
    };
    assert_eq!(without_len(direct), without_len(proxied), "{ctx}");
    assert_eq!(
        direct.headers.get("content-length"),
        proxied.headers.get("content-length"),
        "{ctx}"
    );
    if !direct.body.is_empty() {
        assert_eq!(
            direct.header_list(),
            without_energy(proxied.header_list()),
            "{ctx}"
        );
    }
}

/// This suite checks pure relaying; usage injection (a documented body edit) is tested against the
/// mock vLLM in `tests/accounting.rs`.
fn no_injection(args: &mut joulegate::cli::ServeArgs) {
    args.inject_usage = Some(false);
    args.energy_in_usage = Some(false);
}

/// Byte equality with a readable failure: the first differing offset and the text around it.
fn assert_same_bytes(a: &[u8], b: &[u8], ctx: &str) {
    if a == b {
        return;
    }
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let show = |v: &[u8]| {
        String::from_utf8_lossy(&v[at.saturating_sub(40)..(at + 80).min(v.len())]).to_string()
    };
    panic!(
        "{ctx}: bodies differ at byte {at} (lengths {} vs {}):\n  {:?}\n  {:?}",
        a.len(),
        b.len(),
        show(a),
        show(b)
    );
}

#[tokio::test]
async fn every_fixture_is_relayed_unchanged() {
    for folder in [
        "vllm-0.32",
        "vllm-0.32-prompt-details",
        "vllm-0.32-per-request-metrics",
        "vllm-0.32-force-usage",
    ] {
        for f in fixtures(folder) {
            let fx = f.clone();
            let mut upstream = ScriptedUpstream::start(move |_| reply_for(&fx, None)).await;
            let proxy = TestProxy::start_with(upstream.addr, no_injection).await;
            compare(&f, None, &mut upstream, &proxy).await;
        }
    }
}

#[tokio::test]
async fn upstream_writes_cut_at_every_offset_change_nothing() {
    let all = fixtures("vllm-0.32");
    let stream = all
        .iter()
        .find(|f| f.name == "chat-stream-usage-continuous")
        .unwrap();
    let json = all.iter().find(|f| f.name == "chat-json").unwrap();
    for f in [stream, json] {
        let step = if f.body.len() > 1200 { 3 } else { 1 };
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (fx, c) = (f.clone(), cut.clone());
        let mut upstream = ScriptedUpstream::start(move |_| {
            reply_for(&fx, Some(c.load(std::sync::atomic::Ordering::SeqCst)))
        })
        .await;
        let proxy = TestProxy::start_with(upstream.addr, no_injection).await;
        for at in (0..=f.body.len()).step_by(step) {
            cut.store(at, std::sync::atomic::Ordering::SeqCst);
            compare(f, Some(at), &mut upstream, &proxy).await;
        }
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_request_id_kept() {
    let mut upstream = ScriptedUpstream::start(|_| {
        Reply::fixed(
            200,
            &[
                ("content-type", "application/json"),
                ("connection", "x-upstream-private"),
                ("x-upstream-private", "1"),
                ("x-energy-joules", "999"),
                ("keep-alive", "timeout=5"),
                ("x-request-id", "from-upstream"),
            ],
            b"{}",
        )
    })
    .await;
    let proxy = TestProxy::start_with(upstream.addr, no_injection).await;
    let got = send(
        proxy.addr,
        request(
            "POST",
            proxy.addr,
            "/v1/anything?x=1",
            &[
                ("connection", "x-client-private"),
                ("x-client-private", "1"),
                ("x-request-id", "abc-1"),
                ("te", "gzip"),
            ],
            b"{}",
        ),
    )
    .await;
    let seen = upstream.received.recv().await.unwrap();
    assert_eq!(seen.request_line(), "POST /v1/anything?x=1 HTTP/1.1");
    assert_eq!(seen.header("x-request-id").as_deref(), Some("abc-1"));
    assert_eq!(seen.header("x-client-private"), None);
    assert_eq!(seen.header("te"), None);
    assert_eq!(got.status, 200);
    assert!(got.headers.get("x-upstream-private").is_none());
    assert!(got.headers.get("keep-alive").is_none());
    assert!(
        got.headers.get("x-energy-joules").is_none(),
        "upstream energy headers are never passed on"
    );
    assert_eq!(got.headers.get("x-request-id").unwrap(), "from-upstream");
    assert_eq!(got.body, b"{}");
}

#[tokio::test]
async fn every_method_and_path_is_forwarded() {
    let mut upstream = ScriptedUpstream::start(|r| {
        let line = r.request_line().to_string();
        Reply::fixed(207, &[("x-echo", &line)], r.body.as_slice())
    })
    .await;
    let proxy = TestProxy::start_with(upstream.addr, no_injection).await;
    for (method, path) in [
        ("GET", "/metrics"),
        ("DELETE", "/v1/files/x"),
        ("PUT", "/a/b%20c?q=%2F"),
        ("PATCH", "/"),
        ("OPTIONS", "/v1/models"),
    ] {
        let got = send(
            proxy.addr,
            request(method, proxy.addr, path, &[], b"payload"),
        )
        .await;
        let seen = upstream.received.recv().await.unwrap();
        assert_eq!(seen.request_line(), format!("{method} {path} HTTP/1.1"));
        assert_eq!(got.status, 207);
        assert_eq!(
            got.headers.get("x-echo").unwrap().to_str().unwrap(),
            format!("{method} {path} HTTP/1.1")
        );
        assert_eq!(got.body, b"payload");
    }
}

#[tokio::test]
async fn h2c_clients_get_the_same_response() {
    let f = fixtures("vllm-0.32")
        .into_iter()
        .find(|f| f.name == "chat-stream-usage")
        .unwrap();
    let fx = f.clone();
    let mut upstream = ScriptedUpstream::start(move |_| reply_for(&fx, Some(100))).await;
    let proxy = TestProxy::start_with(upstream.addr, no_injection).await;
    let direct = send(upstream.addr, request_for(&f, upstream.addr)).await;
    let _ = upstream.received.recv().await;
    let mut sender = h2(proxy.addr).await;
    let response = guard(
        "h2 response",
        sender.send_request(h2_request(request_for(&f, proxy.addr), proxy.addr)),
    )
    .await
    .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let proxied = collect(response).await;
    assert_eq!(direct.status, proxied.status);
    assert_same_headers(&direct, &proxied, "h2c");
    assert_same_bytes(&direct.body, &proxied.body, "h2c");
    let seen = upstream.received.recv().await.unwrap();
    assert_eq!(seen.request_line(), "POST /v1/chat/completions HTTP/1.1");
}

/// A server started with `--enable-force-include-usage` sends usage on every stream whatever the
/// request says, so a client of it gets usage directly: with injection on (the default), the proxy
/// known to face such a server adds nothing and removes nothing, and every stream reaches the client
/// byte for byte (the `energy` object, a documented addition, is off here).
#[tokio::test]
async fn a_forcing_upstreams_streams_reach_the_client_unchanged_with_injection_on() {
    for f in fixtures("vllm-0.32-force-usage") {
        let fx = f.clone();
        let mut upstream = ScriptedUpstream::start(move |_| reply_for(&fx, None)).await;
        let proxy = TestProxy::start_with(upstream.addr, |args| {
            args.upstream_forces_usage = Some("true".into());
            args.energy_in_usage = Some(false);
        })
        .await;
        compare(&f, None, &mut upstream, &proxy).await;
    }
}

/// The start-up question of `upstream_forces_usage = "auto"`: a one-token stream without
/// `stream_options` to the upstream's first model. A forcing server answers with usage (as its
/// captures show), a default one without.
#[tokio::test]
async fn the_force_probe_tells_the_two_servers_apart() {
    for (folder, forced) in [("vllm-0.32-force-usage", true), ("vllm-0.32", false)] {
        let models = fixtures("vllm-0.32")
            .into_iter()
            .find(|f| f.name == "models")
            .unwrap();
        // What each server streams to a request without `stream_options`.
        let stream = fixtures(folder)
            .into_iter()
            .find(|f| f.name == "chat-stream-plain")
            .unwrap();
        let mut upstream = ScriptedUpstream::start(move |r| {
            if r.request_line().starts_with("GET /v1/models") {
                reply_for(&models, None)
            } else {
                reply_for(&stream, None)
            }
        })
        .await;
        let url =
            joulegate::config::UpstreamUrl::parse(&format!("http://{}", upstream.addr)).unwrap();
        let pool = joulegate::proxy::upstream::Upstream::new(
            url,
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(5),
            Some(1 << 20),
        );
        let answer = joulegate::proxy::probe::upstream_forces_usage(&pool).await;
        assert_eq!(answer, Some(forced), "{folder}");
        let first = upstream.received.recv().await.unwrap();
        assert!(first.request_line().starts_with("GET /v1/models"));
        let probe = upstream.received.recv().await.unwrap();
        assert!(probe.request_line().starts_with("POST /v1/completions"));
        let body: serde_json::Value = serde_json::from_slice(&probe.body).unwrap();
        assert_eq!(body["model"], "tiny");
        assert_eq!(body["max_tokens"], 1);
        assert!(body.get("stream_options").is_none());
    }
}

#[tokio::test]
async fn upstream_heads_within_the_bound_pass_and_longer_ones_are_a_502() {
    let bound = joulegate::proxy::upstream::MAX_RESPONSE_HEAD_BYTES;
    for (value_len, within) in [(bound - 1024, true), (bound + 1024, false)] {
        let value = "v".repeat(value_len);
        let upstream = ScriptedUpstream::start(move |_| {
            Reply::fixed(
                200,
                &[("content-type", "application/json"), ("x-long", &value)],
                b"{}",
            )
        })
        .await;
        let proxy = TestProxy::start_with(upstream.addr, no_injection).await;
        let got = send(
            proxy.addr,
            request("POST", proxy.addr, "/v1/anything", &[], b"{}"),
        )
        .await;
        if within {
            assert_eq!(
                got.status, 200,
                "a {value_len}-byte header within the bound"
            );
            assert_eq!(got.headers["x-long"].len(), value_len);
            assert_eq!(got.body, b"{}");
        } else {
            assert_eq!(
                got.status, 502,
                "a head over the bound is the upstream's fault"
            );
        }
    }
}
