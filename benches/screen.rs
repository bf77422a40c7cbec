//! Cost of the request-head screen (`proxy::screen`) per request head, the work it adds to every
//! HTTP/1.x request: a small chat-completion POST head with its body, and a head of 30 header
//! fields (a browser-like or SDK-heavy client) without a body. Each is fed whole, as one read
//! brings it, into a screen reused across requests (a keep-alive connection) and into a fresh one
//! (a new connection: the screen's buffers are allocated again).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use joulegate::proxy::screen::Screen;

const BODY: &str = r#"{"model":"tiny","messages":[{"role":"user","content":"Say something short."}],"max_tokens":64,"stream":true}"#;

/// A small chat completion as the OpenAI Python SDK sends it: head and body.
fn chat_request() -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nAccept-Encoding: gzip, deflate\r\n\
         Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
         User-Agent: OpenAI/Python 1.52.0\r\nAuthorization: Bearer sk-0123456789abcdef\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// A GET head with 30 header fields of realistic sizes.
fn head_30_fields() -> Vec<u8> {
    let mut head =
        String::from("GET /v1/models?limit=100 HTTP/1.1\r\nHost: inference.example.com\r\n");
    let names = [
        "User-Agent",
        "Accept",
        "Accept-Language",
        "Accept-Encoding",
        "Authorization",
        "Cache-Control",
        "Connection",
        "Cookie",
        "Origin",
        "Referer",
        "Sec-Fetch-Dest",
        "Sec-Fetch-Mode",
        "Sec-Fetch-Site",
        "X-Request-Id",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Real-Ip",
        "Traceparent",
        "Tracestate",
        "Baggage",
        "X-Energy-Tag",
        "X-Stainless-Lang",
        "X-Stainless-Package-Version",
        "X-Stainless-Os",
        "X-Stainless-Arch",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Retry-Count",
    ];
    for (i, name) in names.iter().enumerate() {
        head.push_str(&format!(
            "{name}: value-{i}-{}\r\n",
            "x".repeat(8 + (i * 7) % 40)
        ));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("screen");
    for (name, bytes) in [
        ("chat_post", chat_request()),
        ("head_30_fields", head_30_fields()),
    ] {
        group.throughput(Throughput::Elements(1));
        let mut screen = Screen::default();
        let mut out = Vec::with_capacity(bytes.len());
        group.bench_function(format!("{name}/keep_alive"), |b| {
            b.iter(|| {
                out.clear();
                screen
                    .feed(black_box(&bytes), &mut out)
                    .expect("valid head");
                black_box(out.len())
            })
        });
        assert_eq!(out, bytes, "the screen passes a valid request unchanged");
        group.bench_function(format!("{name}/new_connection"), |b| {
            b.iter(|| {
                let mut screen = Screen::default();
                let mut out = Vec::new();
                screen
                    .feed(black_box(&bytes), &mut out)
                    .expect("valid head");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
