//! What `response_energy = "settled"` costs: the time it adds to the energy-bearing part of a
//! response, at several sampler periods.
//!
//! The simulated vLLM (engine timing, writing its energy counter to a file) behind the real proxy,
//! which meters it with `counter-file:` at `sample_interval_ms` = 20, 50 and 100. For each period,
//! the same workload runs in provisional and in settled mode (8 concurrent clients, each pausing a
//! pseudo-random fraction of a period before each request so that ends fall at every phase):
//! - streams asking for usage: the gap between the chunk that ends generation (`finish_reason`)
//!   and the end of the final usage chunk (the one carrying `energy`), as the client sees it;
//! - JSON answers: the time to the response head (where the energy headers are).
//!
//! Run: `cargo run --release --example settled_latency [requests per kind, default 160]`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use joulegate::sim::{MockUpstream, RunnerConfig, Timing};
use tokio::net::{TcpListener, TcpStream};

const CLIENTS: usize = 8;
const CHAT: &str = "/v1/chat/completions";

fn body(stream: bool, i: usize) -> Vec<u8> {
    let stream = if stream {
        r#","stream":true,"stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    format!(
        r#"{{"model":"tiny","messages":[{{"role":"user","content":"request {i}: say something short"}}],"max_tokens":8{stream}}}"#
    )
    .into_bytes()
}

/// One request on a fresh HTTP/1.1 connection. Returns (time to the response head, the gap from
/// the frame with `finish_reason` to the end of the usage chunk for streams).
async fn one(proxy: SocketAddr, stream: bool, i: usize) -> (Duration, Option<Duration>) {
    let tcp = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::post(CHAT)
        .header("host", proxy.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body(stream, i))))
        .expect("request");
    let start = Instant::now();
    let resp = sender.send_request(req).await.expect("response");
    let head = start.elapsed();
    let mut body = resp.into_body();
    let mut seen = String::new();
    let mut finish_at = None;
    let mut usage_at = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("frame").into_data() else {
            continue;
        };
        seen.push_str(&String::from_utf8_lossy(&data));
        let now = Instant::now();
        if finish_at.is_none() && seen.contains("\"finish_reason\":\"") {
            finish_at = Some(now);
        }
        if usage_at.is_none() && seen.contains("\"energy\":{") && seen.ends_with("\n\n") {
            usage_at = Some(now);
        }
    }
    let gap = match (finish_at, usage_at) {
        (Some(f), Some(u)) => Some(u.saturating_duration_since(f)),
        _ => None,
    };
    (head, gap)
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.99), at(1.0))
}

async fn run(period_ms: u64, settled: bool, n: usize, counter: &std::path::Path, upstream: &str) {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.to_owned()),
        absent_include_usage: Some("false".into()),
        upstream_forces_usage: Some("false".into()),
        meters: vec![format!("counter-file:{},unit=uj", counter.display())],
        sample_interval_ms: Some(period_ms),
        response_energy: Some(if settled { "settled" } else { "provisional" }.into()),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &Default::default(), None).expect("config");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let proxy = listeners.proxy.local_addr().expect("addr");
    let running = App::build(config)
        .expect("app")
        .start(listeners)
        .expect("start");
    // Warm up: the idle baseline and the calibration see a few requests first.
    for i in 0..CLIENTS {
        one(proxy, i % 2 == 0, i).await;
    }
    let mut heads = Vec::new();
    let mut gaps = Vec::new();
    let mut estimated = 0usize;
    for stream in [true, false] {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for k in (c..n).step_by(CLIENTS) {
                    // Spread the requests' ends over the sampler's phase (a fixed pseudo-random
                    // pause, up to one period).
                    let pause = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                    tokio::time::sleep(Duration::from_micros(pause % (period_ms * 1000))).await;
                    out.push(one(proxy, stream, k).await);
                }
                out
            }));
        }
        for t in tasks {
            for (head, gap) in t.await.expect("client") {
                match gap {
                    Some(g) => gaps.push(g),
                    None if stream => estimated += 1,
                    None => heads.push(head),
                }
            }
        }
    }
    let (g50, g99, gmax) = percentiles(gaps);
    let (h50, h99, hmax) = percentiles(heads);
    println!(
        "{period_ms:>4} ms  {:<11}  usage chunk gap p50 {g50:>7.2} p99 {g99:>7.2} max {gmax:>7.2}   \
         JSON head p50 {h50:>7.2} p99 {h99:>7.2} max {hmax:>7.2}{}",
        if settled { "settled" } else { "provisional" },
        if estimated > 0 { format!("  ({estimated} streams without a usage chunk)") } else { String::new() }
    );
    running.shutdown();
    running.wait().await;
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(160);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = dir.path().join("energy_uj");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let mock = MockUpstream::builder()
            .timing(Timing::Engine(RunnerConfig {
                counter_period: Duration::from_millis(5),
                ..RunnerConfig::default()
            }))
            .energy_counter_file(&counter)
            .spawn(listener)
            .expect("mock");
        let upstream = mock.url();
        println!(
            "{n} streams and {n} JSON answers per row, {CLIENTS} concurrent clients, times in ms"
        );
        for period in [20, 50, 100] {
            for settled in [false, true] {
                run(period, settled, n, &counter, &upstream).await;
            }
        }
        mock.shutdown().await;
    });
}
