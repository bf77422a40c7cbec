//! Soak: a million mixed requests through the proxy, its memory and file descriptors sampled as
//! they go, and the books checked at the end.
//!
//! The release binary runs twice as separate processes, so that what is sampled is the proxy's
//! own: `joulegate mock-upstream` (immediate timing) and `joulegate serve --meter sim:300` in front
//! of it. `--concurrency` workers, each on one keep-alive HTTP/1.1 connection, send requests in a
//! fixed mix of twenty: 9 JSON answers (chat and completions alternately), 4 chat streams asking
//! for usage, 5 completions streams not asking (the proxy injects usage and removes it again), and
//! 2 client aborts (a chat stream the mock stalls after two tokens, dropped with its connection
//! once the first token chunk has arrived). Every answer is checked: status 200 and
//! `x-energy-status` on JSON answers, a `[DONE]` ending on streams.
//!
//! Every `--sample-s` seconds the proxy's and the mock's `VmRSS` (`/proc/PID/status`) and open
//! descriptors (entries of `/proc/PID/fd`) are sampled. The verdict "flat" compares the second
//! half of the run with the first: the highest RSS of the second half may exceed the highest of
//! the first by at most 5 % or 2 MiB, and likewise the descriptors by at most `concurrency`
//! (sockets of aborted connections that are still closing).
//!
//! At the end, after nothing is in flight or pending, one `/stats` snapshot must balance exactly
//! in micro-joules (measured = attributed + idle + unattributed; `/stats` prints joules as µJ/10⁶,
//! so rounding ×10⁶ recovers the integers), its request count must equal what was sent, and its
//! `ok` and `aborted` counts must equal the answers and the aborts.
//!
//! `--slow-readers K` then opens K streams of `--slow-max-tokens` tokens through sockets with a
//! 4 KiB receive buffer and reads one byte a second from each for `--slow-seconds`: backpressure
//! must hold the proxy's memory (sampled each second) while the mock could send far more. They
//! are dropped (aborted) before the books are checked.
//!
//! The load (the mix and its workers) is in `soak/load.rs`, the two processes and their samples
//! in `soak/procs.rs`.
//!
//! Run: `cargo build --release && nice -n 10 cargo run --release --example soak --
//! [--requests 1000000] [--concurrency 64] [--slow-readers 256] [--json]`.

#[path = "soak/load.rs"]
mod load;
#[path = "soak/procs.rs"]
mod procs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use load::{worker, Counts};
use procs::{print_table, rss_fds, Proc, Sample};

/// Options of the soak run.
#[derive(Parser, Debug)]
struct Args {
    /// Requests to send.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Workers, each with one connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds between samples of RSS and descriptors.
    #[arg(long, default_value_t = 10)]
    sample_s: u64,
    /// Slow readers opened after the load (0: none).
    #[arg(long, default_value_t = 0)]
    slow_readers: usize,
    /// How long the slow readers read, one byte a second, seconds.
    #[arg(long, default_value_t = 30)]
    slow_seconds: u64,
    /// Tokens asked by each slow reader's stream.
    #[arg(long, default_value_t = 30_000)]
    slow_max_tokens: u32,
    /// The joulegate binary.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/joulegate"))]
    bin: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// GET `path` from the admin listener, as JSON.
async fn admin_get(admin: SocketAddr, path: &str) -> Result<Value> {
    let tcp = TcpStream::connect(admin).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "admin")
        .body(Empty::<Bytes>::new())?;
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

/// Joules as `/stats` prints them back to integer micro-joules.
fn uj(v: &Value) -> Result<u64> {
    let j = v.as_f64().context("not a number")?;
    Ok((j * 1e6).round() as u64)
}

/// Waits until nothing is in flight or pending, then returns that `/stats` snapshot.
async fn settled_stats(admin: SocketAddr) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = admin_get(admin, "/stats").await?;
        let t = &s["totals"];
        if t["in_flight"] == 0 && uj(&t["pending_joules"])? == 0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("still in flight or pending after 60 s: {t}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the slow readers saw.
struct Slow {
    /// Proxy RSS before they connect, KiB.
    before: u64,
    /// Proxy RSS after each second of reading, KiB.
    during: Vec<u64>,
    /// Proxy RSS once they are gone, KiB.
    after: u64,
    /// Bytes read by all of them.
    read: u64,
}

/// Slow readers: each reads one byte a second of a long stream.
async fn slow_readers(args: &Args, proxy: SocketAddr, pid: u32) -> Result<Slow> {
    let body = format!(
        r#"{{"model":"tiny","messages":[{{"role":"user","content":"slow"}}],"max_tokens":{},"stream":true}}"#,
        args.slow_max_tokens
    );
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let before = rss_fds(pid).0;
    let mut socks = Vec::with_capacity(args.slow_readers);
    for _ in 0..args.slow_readers {
        let s = TcpSocket::new_v4()?;
        s.set_recv_buffer_size(4096)?;
        let mut tcp = s.connect(proxy).await?;
        tcp.write_all(head.as_bytes()).await?;
        socks.push(tcp);
    }
    let mut during = Vec::new();
    let mut read = 0u64;
    let mut byte = [0u8; 1];
    for _ in 0..args.slow_seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for s in &mut socks {
            read += s.read(&mut byte).await? as u64;
        }
        during.push(rss_fds(pid).0);
    }
    drop(socks);
    // Give the proxy a moment to see the disconnects before sampling again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Slow {
        before,
        during,
        after: rss_fds(pid).0,
        read,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (mock, m) = Proc::start(
        &args.bin,
        &[
            "mock-upstream",
            "--listen",
            "127.0.0.1:0",
            "--max-model-len",
            "65536",
        ],
        "soak-mock.log",
        &["mock-upstream"],
    )?;
    let upstream = format!("http://{}", m[0]);
    let (proxy, p) = Proc::start(
        &args.bin,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--meter",
            "sim:300",
        ],
        "soak-proxy.log",
        &["proxy", "admin"],
    )?;
    let (addr, admin) = (p[0], p[1]);

    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let sample = |counts: &Counts| {
        let (proxy_rss_kib, proxy_fds) = rss_fds(proxy.pid());
        let (mock_rss_kib, mock_fds) = rss_fds(mock.pid());
        Sample {
            t_s: start.elapsed().as_secs_f64(),
            done: counts.done.load(Ordering::Relaxed),
            proxy_rss_kib,
            proxy_fds,
            mock_rss_kib,
            mock_fds,
        }
    };
    let mut samples = vec![sample(&counts)];
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(addr, next.clone(), args.requests, counts.clone())))
        .collect();
    let mut all = tokio::spawn(async move {
        for w in workers {
            let _ = w.await;
        }
    });
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(args.sample_s),
        Duration::from_secs(args.sample_s),
    );
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tick.tick() => {
                let s = sample(&counts);
                if !args.json {
                    eprintln!("{s:?}");
                }
                samples.push(s);
            }
        }
    }
    let duration = start.elapsed().as_secs_f64();
    let end = sample(&counts);
    samples.push(end);

    let slow = if args.slow_readers > 0 {
        Some(slow_readers(&args, addr, proxy.pid()).await?)
    } else {
        None
    };
    let stats = settled_stats(admin).await?;
    let idle = sample(&counts);
    let t = &stats["totals"];
    let (measured, attributed, idle_uj, unattributed) = (
        uj(&t["measured_joules"])?,
        uj(&t["attributed_joules"])?,
        uj(&t["idle_joules"])?,
        uj(&t["unattributed_joules"])?,
    );
    let balanced = measured == attributed + idle_uj + unattributed;
    let slow_n = args.slow_readers as u64;
    let answered = counts.answered.load(Ordering::Relaxed);
    let aborted = counts.aborted.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let counts_match = t["requests"] == args.requests + slow_n
        && t["requests_by_status"]["ok"] == answered
        && t["requests_by_status"]["aborted"] == aborted + slow_n;

    // The verdict: the second half's highs against the first half's.
    let during: Vec<&Sample> = samples[1..samples.len() - 1].iter().collect();
    let half = during.len() / 2;
    let high = |s: &[&Sample], f: fn(&Sample) -> u64| s.iter().map(|x| f(x)).max().unwrap_or(0);
    let (rss1, rss2) = (
        high(&during[..half], |s| s.proxy_rss_kib),
        high(&during[half..], |s| s.proxy_rss_kib),
    );
    let (fd1, fd2) = (
        high(&during[..half], |s| s.proxy_fds),
        high(&during[half..], |s| s.proxy_fds),
    );
    // Flatness needs two samples under load (`--sample-s` apart): a shorter run is not judged.
    let judged = during.len() >= 2;
    let rss_flat = judged.then(|| rss2 <= rss1 + (rss1 / 20).max(2048));
    let fds_flat = judged.then(|| fd2 <= fd1 + args.concurrency as u64);

    let report = json!({
        "requests": args.requests,
        "concurrency": args.concurrency,
        "duration_s": duration,
        "requests_per_s": args.requests as f64 / duration,
        "answered": answered,
        "aborted": aborted,
        "failed": failed,
        "samples": samples.iter().map(|s| json!({
            "t_s": s.t_s, "done": s.done, "proxy_rss_kib": s.proxy_rss_kib, "proxy_fds": s.proxy_fds,
            "mock_rss_kib": s.mock_rss_kib, "mock_fds": s.mock_fds,
        })).collect::<Vec<_>>(),
        "after_settle": { "proxy_rss_kib": idle.proxy_rss_kib, "proxy_fds": idle.proxy_fds },
        "proxy_rss_high_kib": [rss1, rss2],
        "proxy_fds_high": [fd1, fd2],
        "rss_flat": rss_flat,
        "fds_flat": fds_flat,
        "slow_readers": slow.map(|s| json!({
            "readers": slow_n, "seconds": args.slow_seconds, "max_tokens": args.slow_max_tokens,
            "proxy_rss_before_kib": s.before, "proxy_rss_each_second_kib": s.during,
            "proxy_rss_peak_kib": s.during.iter().max(), "proxy_rss_after_kib": s.after,
            "bytes_read": s.read,
        })),
        "books": {
            "measured_uj": measured, "attributed_uj": attributed, "idle_uj": idle_uj,
            "unattributed_uj": unattributed, "balanced": balanced,
            "requests": t["requests"], "by_status": t["requests_by_status"], "counts_match": counts_match,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        print_table(&samples);
        let r = &report;
        println!(
            "\n{} requests in {:.1} s ({:.0}/s), {answered} answered, {aborted} aborted, {failed} failed",
            args.requests, duration, r["requests_per_s"].as_f64().unwrap_or(0.0)
        );
        let verdict = |v: Option<bool>| {
            v.map_or("not judged: run shorter than two samples".to_owned(), |f| {
                f.to_string()
            })
        };
        println!(
            "proxy RSS high, first/second half: {rss1}/{rss2} KiB (flat: {}); fds {fd1}/{fd2} (flat: {})",
            verdict(rss_flat),
            verdict(fds_flat)
        );
        println!(
            "after settling: proxy {} KiB, {} fds",
            idle.proxy_rss_kib, idle.proxy_fds
        );
        if let Some(s) = &r["slow_readers"].as_object() {
            println!("slow readers: {}", Value::Object((*s).clone()));
        }
        println!("books: {}", r["books"]);
    }
    if !(balanced
        && counts_match
        && failed == 0
        && rss_flat != Some(false)
        && fds_flat != Some(false))
    {
        bail!("soak failed: balanced {balanced}, counts {counts_match}, failed {failed}, rss flat {rss_flat:?}, fds flat {fds_flat:?}");
    }
    Ok(())
}
