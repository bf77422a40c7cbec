//! End-to-end overhead of the proxy on loopback, measured against a direct baseline in the same run.
//!
//! `cargo bench --bench overhead` prints, for small JSON requests and for SSE streams:
//! - time to first byte (response head) direct vs through the proxy: p50/p90/p99 and the added p50;
//! - CPU per request and per streamed event attributable to the proxy: the process's CPU time
//!   (user+sys from /proc/self/stat) for the proxied run minus the direct run, divided by the
//!   count. Client and upstream are the same code in both runs, so the difference is the proxy's.
//!
//! Upstream: a minimal hyper server answering a fixed vLLM-shaped JSON body or an SSE stream of
//! `EVENTS` continuous-usage chunks, as fast as possible.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use tokio::net::{TcpListener, TcpStream};

const JSON: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":"hello there"},"finish_reason":"length"}],"usage":{"prompt_tokens":22,"total_tokens":30,"completion_tokens":8}}"#;
const EVENT: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":{"prompt_tokens":22,"total_tokens":23,"completion_tokens":1,"completion_tokens_details":null}}"#;
const EVENTS: usize = 200;

async fn upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let stream = req.uri().path() == "/stream";
                let _ = req.into_body().collect().await;
                let response: Response<
                    http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>,
                > = if stream {
                    let frames = (0..EVENTS)
                        .map(|_| {
                            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{EVENT}\n\n"))))
                        })
                        .chain(std::iter::once(Ok(Frame::data(Bytes::from_static(
                            b"data: [DONE]\n\n",
                        )))));
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Response::builder()
                        .header("content-type", "text/event-stream; charset=utf-8")
                        .body(body.boxed_unsync())
                        .unwrap()
                } else {
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(JSON)).boxed_unsync())
                        .unwrap()
                };
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; after the ')' they are at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

struct Run {
    ttfb: Vec<Duration>,
    cpu_s: f64,
    wall: Duration,
}

async fn run(addr: SocketAddr, path: &str, n: usize) -> Run {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ttfb = Vec::with_capacity(n);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    for _ in 0..n {
        let req = Request::post(path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}]}"#,
            )))
            .unwrap();
        sender.ready().await.unwrap();
        let t0 = Instant::now();
        let response = sender.send_request(req).await.unwrap();
        ttfb.push(t0.elapsed());
        let _ = response.into_body().collect().await.unwrap();
    }
    let wall = start.elapsed();
    ttfb.sort();
    Run {
        ttfb,
        cpu_s: cpu_seconds() - cpu0,
        wall,
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn report(label: &str, direct: &Run, proxied: &Run, n: usize, events: usize) {
    println!("{label}: {n} requests");
    for (name, r) in [("direct", direct), ("proxied", proxied)] {
        println!(
            "  {name:8} ttfb p50 {:7.1} us  p90 {:7.1} us  p99 {:7.1} us  wall {:6.2} s  cpu {:6.2} s",
            pct(&r.ttfb, 0.5),
            pct(&r.ttfb, 0.9),
            pct(&r.ttfb, 0.99),
            r.wall.as_secs_f64(),
            r.cpu_s
        );
    }
    println!(
        "  added ttfb p50 {:.1} us",
        pct(&proxied.ttfb, 0.5) - pct(&direct.ttfb, 0.5)
    );
    let extra_cpu = proxied.cpu_s - direct.cpu_s;
    println!(
        "  proxy cpu per request {:.1} us",
        extra_cpu / n as f64 * 1e6
    );
    if events > 0 {
        println!(
            "  proxy cpu per event   {:.2} us",
            extra_cpu / (n * events) as f64 * 1e6
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(upstream(up));
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{up_addr}")),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args, &Default::default(), None).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let proxy_addr = listeners.proxy.local_addr().unwrap();
        let app = App::build(config).unwrap();
        tokio::spawn(app.serve(listeners, std::future::pending()));

        let (n_json, n_stream) = if quick { (50, 5) } else { (20_000, 500) };
        // Warm both paths (connection pool, allocator).
        run(up_addr, "/v1/chat/completions", n_json / 10 + 1).await;
        run(proxy_addr, "/v1/chat/completions", n_json / 10 + 1).await;
        let direct = run(up_addr, "/v1/chat/completions", n_json).await;
        let proxied = run(proxy_addr, "/v1/chat/completions", n_json).await;
        report("small JSON", &direct, &proxied, n_json, 0);
        let direct = run(up_addr, "/stream", n_stream).await;
        let proxied = run(proxy_addr, "/stream", n_stream).await;
        report(
            &format!("SSE stream of {EVENTS} events"),
            &direct,
            &proxied,
            n_stream,
            EVENTS + 1,
        );
    });
}
