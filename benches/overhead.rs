//! End-to-end overhead of the proxy on loopback, measured against a direct baseline in the same run.
//!
//! `cargo bench --bench overhead` prints, per scenario, direct and proxied:
//! - time to first byte (response head): p50/p90/p99 and the added p50;
//! - time to last byte (end of body, trailers included): p50/p99 and the added p99;
//! - CPU attributable to the proxy per request and per streamed event: the process's CPU time (sum of
//!   its threads' `/proc/self/task/*/schedstat`, nanosecond resolution) for the proxied run minus the
//!   direct run. Client and upstream run the same code in both, so the difference is the proxy's.
//!
//! Scenarios (all accounted requests: POST /v1/chat/completions with a JSON body, so the proxy reads,
//! registers and observes them): small JSON responses; SSE streams of 200 continuous-usage events
//! written as fast as possible (the proxy injected usage options the client did not ask for, so it
//! also strips usage from every chunk: its most expensive path); and SSE streams paced at 20 ms per
//! event, 16 at a time (a realistic decode cadence).

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
const EVENTS: usize = 200;
const PACED_EVENTS: usize = 25;
const PACE: Duration = Duration::from_millis(20);

type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn event(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"tiny\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}}],\"usage\":{{\"prompt_tokens\":22,\"total_tokens\":{},\"completion_tokens\":{},\"completion_tokens_details\":null}}}}\n\n",
        22 + i + 1,
        i + 1
    ))
}

fn sse(body: UpBody) -> Response<UpBody> {
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(body)
        .unwrap()
}

async fn upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let paced = req.headers().contains_key("x-pace");
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let stream = body.windows(13).any(|w| w == b"\"stream\":true");
                let response = if paced {
                    let frames = futures_util::stream::unfold(0usize, |i| async move {
                        if i > PACED_EVENTS {
                            return None;
                        }
                        tokio::time::sleep(PACE).await;
                        let data = if i == PACED_EVENTS {
                            Bytes::from_static(b"data: [DONE]\n\n")
                        } else {
                            event(i)
                        };
                        Some((Ok::<_, Infallible>(Frame::data(data)), i + 1))
                    });
                    sse(StreamBody::new(frames).boxed_unsync())
                } else if stream {
                    let frames = (0..EVENTS)
                        .map(|i| Ok::<_, Infallible>(Frame::data(event(i))))
                        .chain(std::iter::once(Ok(Frame::data(Bytes::from_static(
                            b"data: [DONE]\n\n",
                        )))));
                    sse(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync())
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

/// CPU time of the whole process (all threads), nanoseconds.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

#[derive(Default)]
struct Samples {
    ttfb: Vec<Duration>,
    last: Vec<Duration>,
}

/// One client connection sending `n` requests one after another.
async fn client(addr: SocketAddr, stream: bool, paced: bool, n: usize) -> Samples {
    client_on(addr, "/v1/chat/completions", stream, paced, n).await
}

async fn client_on(
    addr: SocketAddr,
    path: &'static str,
    stream: bool,
    paced: bool,
    n: usize,
) -> Samples {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body: &'static [u8] = if stream {
        br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true}"#
    } else {
        br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}]}"#
    };
    let mut s = Samples::default();
    for _ in 0..n {
        let mut req = Request::post(path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("te", "trailers");
        if paced {
            req = req.header("x-pace", "1");
        }
        let req = req.body(Full::new(Bytes::from_static(body))).unwrap();
        sender.ready().await.unwrap();
        let t0 = Instant::now();
        let response = sender.send_request(req).await.unwrap();
        s.ttfb.push(t0.elapsed());
        let _ = response.into_body().collect().await.unwrap();
        s.last.push(t0.elapsed());
    }
    s
}

struct Run {
    s: Samples,
    cpu_ns: u64,
}

async fn run(addr: SocketAddr, stream: bool, paced: bool, conns: usize, per_conn: usize) -> Run {
    let cpu0 = cpu_ns();
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(client(addr, stream, paced, per_conn)))
        .collect();
    let mut s = Samples::default();
    for t in tasks {
        let part = t.await.unwrap();
        s.ttfb.extend(part.ttfb);
        s.last.extend(part.last);
    }
    s.ttfb.sort();
    s.last.sort();
    Run {
        s,
        cpu_ns: cpu_ns() - cpu0,
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn report(label: &str, direct: &Run, proxied: &Run, requests: usize, events: usize) {
    println!("{label}: {requests} requests");
    for (name, r) in [("direct", direct), ("proxied", proxied)] {
        println!(
            "  {name:8} ttfb p50 {:8.1} us p90 {:8.1} us p99 {:8.1} us | last byte p50 {:9.1} us p99 {:9.1} us | cpu {:7.1} ms",
            pct(&r.s.ttfb, 0.5),
            pct(&r.s.ttfb, 0.9),
            pct(&r.s.ttfb, 0.99),
            pct(&r.s.last, 0.5),
            pct(&r.s.last, 0.99),
            r.cpu_ns as f64 / 1e6
        );
    }
    println!(
        "  added: ttfb p50 {:.1} us, last byte p50 {:.1} us, p99 {:.1} us",
        pct(&proxied.s.ttfb, 0.5) - pct(&direct.s.ttfb, 0.5),
        pct(&proxied.s.last, 0.5) - pct(&direct.s.last, 0.5),
        pct(&proxied.s.last, 0.99) - pct(&direct.s.last, 0.99)
    );
    let extra = proxied.cpu_ns.saturating_sub(direct.cpu_ns) as f64;
    print!(
        "  proxy cpu per request {:.1} us",
        extra / requests as f64 / 1e3
    );
    if events > 0 {
        print!(
            ", per event {:.2} us",
            extra / (requests * events) as f64 / 1e3
        );
    }
    println!();
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
            absent_include_usage: Some("false".into()),
            meters: vec!["sim:300".into()],
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args, &Default::default(), None).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let proxy_addr = listeners.proxy.local_addr().unwrap();
        let app = App::build(config).unwrap();
        let running = app.start(listeners).unwrap();

        let (n_json, n_stream, paced_rounds) = if quick { (20, 2, 1) } else { (20_000, 500, 6) };
        // Warm both paths (connection pool, allocator).
        run(up_addr, false, false, 1, n_json / 10 + 1).await;
        run(proxy_addr, false, false, 1, n_json / 10 + 1).await;
        let direct = run(up_addr, false, false, 1, n_json).await;
        let proxied = run(proxy_addr, false, false, 1, n_json).await;
        report("small JSON, sequential", &direct, &proxied, n_json, 0);
        // The same exchange on a path the proxy only relays (no inspection, no accounting): the
        // cost of proxying itself, for comparison.
        let relay = |addr| async move {
            let cpu0 = cpu_ns();
            let mut s = client_on(addr, "/v1/not-accounted", false, false, n_json).await;
            s.ttfb.sort();
            s.last.sort();
            Run {
                s,
                cpu_ns: cpu_ns() - cpu0,
            }
        };
        let direct = relay(up_addr).await;
        let proxied = relay(proxy_addr).await;
        report(
            "small JSON on a relayed-only path, sequential",
            &direct,
            &proxied,
            n_json,
            0,
        );
        let direct = run(up_addr, true, false, 1, n_stream).await;
        let proxied = run(proxy_addr, true, false, 1, n_stream).await;
        report(
            &format!("SSE burst of {EVENTS} events, usage stripped"),
            &direct,
            &proxied,
            n_stream,
            EVENTS + 1,
        );
        let direct = run(up_addr, true, true, 16, paced_rounds).await;
        let proxied = run(proxy_addr, true, true, 16, paced_rounds).await;
        report(
            &format!("SSE paced {PACE:?} x {PACED_EVENTS} events, 16 concurrent"),
            &direct,
            &proxied,
            16 * paced_rounds,
            PACED_EVENTS + 1,
        );
        running.shutdown();
        running.wait().await;
    });
}
