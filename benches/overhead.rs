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

/// Runs `conns` clients; CPU is this process's plus, for nginx, that of its processes.
async fn run_on(
    addr: SocketAddr,
    path: &'static str,
    stream: bool,
    paced: bool,
    conns: usize,
    per_conn: usize,
    nginx: Option<&Nginx>,
) -> Run {
    let outside0 = nginx.map(|n| n.cpu_ns()).unwrap_or(0);
    let cpu0 = cpu_ns();
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(client_on(addr, path, stream, paced, per_conn)))
        .collect();
    let mut s = Samples::default();
    for t in tasks {
        let part = t.await.unwrap();
        s.ttfb.extend(part.ttfb);
        s.last.extend(part.last);
    }
    s.ttfb.sort();
    s.last.sort();
    let outside = nginx.map(|n| n.cpu_ns()).unwrap_or(0) - outside0;
    Run {
        s,
        cpu_ns: cpu_ns() - cpu0 + outside,
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn report(label: &str, direct: &Run, proxies: &[(&str, &Run)], requests: usize, events: usize) {
    println!("{label}: {requests} requests");
    for (name, r) in std::iter::once(("direct", direct)).chain(proxies.iter().copied()) {
        println!(
            "  {name:9} ttfb p50 {:8.1} us p90 {:8.1} us p99 {:8.1} us | last byte p50 {:9.1} us p99 {:9.1} us | cpu {:7.1} ms",
            pct(&r.s.ttfb, 0.5),
            pct(&r.s.ttfb, 0.9),
            pct(&r.s.ttfb, 0.99),
            pct(&r.s.last, 0.5),
            pct(&r.s.last, 0.99),
            r.cpu_ns as f64 / 1e6
        );
    }
    for (name, r) in proxies {
        let extra = r.cpu_ns.saturating_sub(direct.cpu_ns) as f64;
        print!(
            "  {name:9} added ttfb p50 {:7.1} us, last byte p50 {:8.1} us p99 {:8.1} us; cpu per request {:6.1} us",
            pct(&r.s.ttfb, 0.5) - pct(&direct.s.ttfb, 0.5),
            pct(&r.s.last, 0.5) - pct(&direct.s.last, 0.5),
            pct(&r.s.last, 0.99) - pct(&direct.s.last, 0.99),
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
}

/// nginx configured as a plain streaming reverse proxy (no buffering, upstream keep-alive), the
/// reference DESIGN §7 compares against. Started only if an `nginx` binary is installed.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().ok()?;
        // A free port: bind, read, release (a bench, not a test: the tiny race is acceptable).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process on;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             upstream up {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n keepalive_requests 10000000;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off; }} }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).ok()?;
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Nginx {
                    addr,
                    child,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// CPU time of the nginx master and its workers, nanoseconds.
    fn cpu_ns(&self) -> u64 {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids.iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
            .flat_map(|tasks| tasks.flatten())
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers (SIGKILL would orphan them).
        let stopped = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
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
            absent_include_usage: Some("false".into()),
            upstream_forces_usage: Some("false".into()),
            meters: vec!["sim:300".into()],
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args, &Default::default(), None).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let proxy_addr = listeners.proxy.local_addr().unwrap();
        let app = App::build(config).unwrap();
        let running = app.start(listeners).unwrap();
        let nginx = if quick { None } else { Nginx::start(up_addr) };
        if nginx.is_none() && !quick {
            println!(
                "(nginx not installed: no reference column; `apt-get install nginx-light` adds it)"
            );
        }

        let (n_json, n_stream, paced_rounds) = if quick { (20, 2, 1) } else { (20_000, 500, 6) };
        type Scenario = (&'static str, &'static str, bool, bool, usize, usize, usize);
        let scenarios: [Scenario; 4] = [
            (
                "small JSON, accounted, sequential",
                "/v1/chat/completions",
                false,
                false,
                1,
                n_json,
                0,
            ),
            (
                "small JSON on a relayed-only path, sequential",
                "/v1/not-accounted",
                false,
                false,
                1,
                n_json,
                0,
            ),
            (
                "SSE burst of 200 events, usage stripped",
                "/v1/chat/completions",
                true,
                false,
                1,
                n_stream,
                EVENTS + 1,
            ),
            (
                "SSE paced 20 ms x 25 events, 16 concurrent",
                "/v1/chat/completions",
                true,
                true,
                16,
                paced_rounds,
                PACED_EVENTS + 1,
            ),
        ];
        // Warm every path (connection pools, allocator).
        for addr in [
            Some(up_addr),
            Some(proxy_addr),
            nginx.as_ref().map(|n| n.addr),
        ]
        .into_iter()
        .flatten()
        {
            run_on(
                addr,
                "/v1/chat/completions",
                false,
                false,
                1,
                n_json / 10 + 1,
                None,
            )
            .await;
        }
        for (label, path, stream, paced, conns, per_conn, events) in scenarios {
            let direct = run_on(up_addr, path, stream, paced, conns, per_conn, None).await;
            let ours = run_on(proxy_addr, path, stream, paced, conns, per_conn, None).await;
            let mut proxies = vec![("joulegate", &ours)];
            let theirs = match &nginx {
                Some(n) => {
                    Some(run_on(n.addr, path, stream, paced, conns, per_conn, Some(n)).await)
                }
                None => None,
            };
            if let Some(t) = &theirs {
                proxies.push(("nginx", t));
            }
            report(label, &direct, &proxies, conns * per_conn, events);
        }
        running.shutdown();
        running.wait().await;
    });
}
