//! The proxy's memory under large uploads: 64 concurrent 20 MiB chat requests (past
//! `max_inspect_bytes`, so they stream through uninspected), then 64 concurrent 12 MiB ones (under
//! it, so each would be read whole, but `max_inspect_total_bytes` bounds what is held across them:
//! the rest stream uninspected). Reports the process's peak RSS (`VmHWM`, reset between runs
//! through `/proc/self/clear_refs`) above what it held before each run.
//!
//! Everything runs in this process: the proxy (started as `joulegate serve` starts it, no meter),
//! an upstream that drains each body without keeping it and answers a small chat completion, and
//! clients that all send the same shared buffer (so neither adds per-request copies of its own).
//!
//! Run: `cargo run --release --example large_uploads [concurrency, default 64]`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use joulegate::meter::MeterSet;
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;
const ANSWER: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":"a cat"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1200,"completion_tokens":2,"total_tokens":1202}}"#;

/// A request body of `size` bytes: one image as a base64 data URL.
fn image_request(size: usize) -> Bytes {
    let head = br#"{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,"#;
    let tail = br#""}}]}],"max_tokens":2}"#;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head);
    body.resize(size - tail.len(), b'A');
    body.extend_from_slice(tail);
    Bytes::from(body)
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process, KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` value 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The upstream: reads each body frame by frame and drops it, then answers.
async fn sink(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut body = req.into_body();
                let mut n = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    n += frame.data_ref().map_or(0, |d| d.len());
                }
                let _ = n;
                let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER)));
                resp.headers_mut()
                    .insert("content-type", "application/json".parse().expect("static"));
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn upload(proxy: SocketAddr, body: Bytes) -> u16 {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::post("/v1/chat/completions")
        .header("host", "proxy")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::main]
async fn main() {
    let concurrency: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    tokio::spawn(sink(upstream));
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(format!("http://{upstream_addr}")),
        absent_include_usage: Some("false".into()),
        upstream_forces_usage: Some("false".into()),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &Default::default(), None).expect("config");
    println!(
        "max_inspect_bytes = {} MiB, max_inspect_total_bytes = {} MiB, {concurrency} concurrent uploads",
        config.max_inspect_bytes / MIB as u64,
        config.max_inspect_total_bytes / MIB as u64
    );
    let listeners = Listeners::bind(&config).await.expect("bind proxy");
    let running = App::build_with_meters(config, MeterSet::default())
        .start(listeners)
        .expect("start");
    let proxy = running.proxy_addr.expect("proxy addr");
    for size_mib in [20usize, 12] {
        let body = image_request(size_mib * MIB);
        // A warm-up request, so that one-time allocations are not counted.
        assert_eq!(upload(proxy, body.clone()).await, 200);
        reset_peak();
        let (_, before) = memory_kib();
        let before_stats = running.state.bodies.stats();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(upload(proxy, body.clone())))
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), 200);
        }
        let (peak, _) = memory_kib();
        let stats = running.state.bodies.stats();
        println!(
            "{concurrency} x {size_mib} MiB: peak RSS {:.1} MiB above the {:.1} MiB before \
             ({:.1} MiB of uploads in flight); inspected {}, streamed too large {}, streamed \
             budget full {}",
            (peak.saturating_sub(before)) as f64 / 1024.0,
            before as f64 / 1024.0,
            (concurrency * size_mib) as f64,
            stats.inspected - before_stats.inspected,
            stats.streamed_too_large - before_stats.streamed_too_large,
            stats.streamed_budget_full - before_stats.streamed_budget_full,
        );
    }
    running.shutdown();
    running.wait().await;
}
