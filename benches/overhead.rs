//! End-to-end cost of the proxy against nginx, on loopback, in the same run (DESIGN §7).
//!
//! `cargo bench --bench overhead` starts the built `joulegate serve` binary and, when installed,
//! nginx 1.22+ as a plain streaming reverse proxy (`proxy_buffering off`, upstream keep-alive),
//! each pinned to CPU 0 with `taskset`; the load generator (a raw-socket client and a vLLM-shaped
//! upstream, `overhead/wire.rs`) runs in this process on the other CPUs. Every workload runs
//! direct (the baseline), through joulegate (accounting in full: a meter, usage injected into
//! streams and removed, the ledger ticking, energy on every response: headers on JSON, trailers on
//! streams) and through nginx. Per target it prints throughput, the proxy process's CPU (utime +
//! stime from `/proc`, all its processes and threads) per request and per event, p50/p99 time to
//! first byte and to last byte, and the proxy's peak RSS. Every joulegate response is checked for
//! its energy (headers or trailers).
//!
//! Workloads: (a) 16-token JSON completions on 64 connections, back to back (saturating);
//! (b) 64 streams of 131 events written by the upstream in one write; (c) 256 streams at 20 ms
//! between events, one write per event; (c') the same with 2,048 streams (memory per stream);
//! (d) 64 streams at full speed, one write per event.
//!
//! `JOULEGATE_BENCH_SCALE` (default 1) multiplies the request counts; `JOULEGATE_BENCH_ONLY=a,b`
//! picks workloads; `JOULEGATE_BENCH_BIN=PATH` runs that joulegate binary instead of the one just
//! built (to interleave runs of two builds). `cargo test --benches` runs a tiny version without nginx.

#[path = "overhead/wire.rs"]
mod wire;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use wire::{Shape, Timing, EVENTS};

const PACE: Duration = Duration::from_millis(20);

/// A proxy under test: its address and its processes.
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Proxy {
    /// This process and its direct children (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                if stat_field(&stat, 1) == Some(master as u64) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// utime + stime of all its processes, nanoseconds.
    fn cpu_ns(&self, tick_ns: u64) -> u64 {
        self.pids()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .map(|s| (stat_field(&s, 11).unwrap_or(0) + stat_field(&s, 12).unwrap_or(0)) * tick_ns)
            .sum()
    }

    /// Resident memory of all its processes, bytes.
    fn rss(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum::<u64>()
            * 1024
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master stop its workers and joulegate drain.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Field `n` (0-based) after the command name of a `/proc/PID/stat` line.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

/// `taskset -c CPU` before `program`, when pinning is possible.
fn pinned(cpu: Option<&str>, program: &str) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn start_joulegate(upstream: SocketAddr, cpu: Option<&str>) -> Proxy {
    // `JOULEGATE_BENCH_BIN` runs another build (an earlier commit's, kept aside) in the same
    // harness, so that binaries can be compared in interleaved runs.
    let binary = std::env::var("JOULEGATE_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_joulegate").to_string());
    let mut child = pinned(cpu, &binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--upstream")
        .arg(format!("http://{upstream}"))
        .args(["--meter", "sim:300", "--absent-include-usage", "false"])
        .args(["--upstream-forces-usage", "false"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start joulegate");
    let out = child.stdout.take().expect("stdout");
    let mut addr = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.expect("joulegate stdout");
        if let Some(a) = line.strip_prefix("listening proxy=") {
            addr = Some(a.parse().expect("proxy address"));
        }
        if line.starts_with("listening admin=") {
            break;
        }
    }
    Proxy {
        name: "joulegate",
        addr: addr.expect("joulegate printed its address"),
        child,
        _dir: None,
    }
}

fn start_nginx(upstream: SocketAddr, cpu: Option<&str>) -> Option<Proxy> {
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
        "worker_processes 1;\nworker_rlimit_nofile 20000;\ndaemon off;\nmaster_process on;\n\
         error_log {d}/error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 10000; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 4096; keepalive_requests 10000000; }}\n keepalive_requests 10000000;\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off; }} }}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let child = pinned(cpu, binary)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some(Proxy {
                name: "nginx",
                addr,
                child,
                _dir: Some(dir),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// One workload: how the upstream answers, connections, requests per connection.
#[derive(Clone, Copy)]
struct Workload {
    key: &'static str,
    label: &'static str,
    shape: Shape,
    conns: usize,
    per_conn: usize,
}

/// One target's run of a workload.
struct Run {
    name: &'static str,
    timings: Vec<Timing>,
    wall: Duration,
    cpu_ns: Option<u64>,
    rss_idle: Option<u64>,
    rss_peak: Option<u64>,
}

async fn run(w: Workload, name: &'static str, addr: SocketAddr, proxy: Option<&Proxy>) -> Run {
    let tick_ns = tick_ns();
    let cpu0 = proxy.map(|p| p.cpu_ns(tick_ns));
    let rss_idle = proxy.map(|p| p.rss());
    let t0 = Instant::now();
    let clients: Vec<_> = (0..w.conns)
        .map(|_| tokio::spawn(wire::client(addr, w.shape, w.per_conn, name == "joulegate")))
        .collect();
    // Peak RSS, sampled while the clients run.
    let mut rss_peak = rss_idle;
    let mut timings = Vec::with_capacity(w.conns * w.per_conn);
    for c in clients {
        while !c.is_finished() {
            if let (Some(p), Some(peak)) = (proxy, rss_peak.as_mut()) {
                *peak = (*peak).max(p.rss());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match c.await.expect("client task") {
            Ok(t) => timings.extend(t),
            Err(e) => panic!("{name}: client failed: {e}"),
        }
    }
    let wall = t0.elapsed();
    let cpu_ns = proxy.map(|p| p.cpu_ns(tick_ns) - cpu0.unwrap_or(0));
    Run {
        name,
        timings,
        wall,
        cpu_ns,
        rss_idle,
        rss_peak,
    }
}

/// Nanoseconds per clock tick of `/proc/PID/stat`.
fn tick_ns() -> u64 {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    1_000_000_000 / hz.max(1)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn report(w: &Workload, runs: &mut [Run]) {
    let requests = w.conns * w.per_conn;
    let events = if w.shape == Shape::Json { 0 } else { EVENTS };
    println!("({}) {}: {requests} requests", w.key, w.label);
    println!(
        "  {:10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "target",
        "req/s",
        "µs/req",
        "µs/event",
        "ttfb p50",
        "ttfb p99",
        "last p50",
        "last p99",
        "RSS MB",
        "KiB/stream"
    );
    let direct_ttfb = runs.first().map(|r| {
        pct(
            &mut r.timings.iter().map(|t| t.ttfb).collect::<Vec<_>>(),
            0.5,
        )
    });
    for r in runs.iter_mut() {
        let mut ttfb: Vec<_> = r.timings.iter().map(|t| t.ttfb).collect();
        let mut last: Vec<_> = r.timings.iter().map(|t| t.last).collect();
        let per_req = r.cpu_ns.map(|c| c as f64 / requests as f64 / 1e3);
        let per_event = per_req.filter(|_| events > 0).map(|c| c / events as f64);
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let per_stream = match (r.rss_idle, r.rss_peak) {
            (Some(idle), Some(peak)) if events > 0 => {
                Some(peak.saturating_sub(idle) as f64 / w.conns as f64 / 1024.0)
            }
            _ => None,
        };
        println!(
            "  {:10} {:>9.0} {:>9} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>10}",
            r.name,
            requests as f64 / r.wall.as_secs_f64(),
            opt(per_req, 2),
            opt(per_event, 2),
            pct(&mut ttfb, 0.5),
            pct(&mut ttfb, 0.99),
            pct(&mut last, 0.5),
            pct(&mut last, 0.99),
            opt(r.rss_peak.map(|b| b as f64 / 1048576.0), 1),
            opt(per_stream, 2),
        );
    }
    if let Some(base) = direct_ttfb {
        for r in runs.iter_mut().skip(1) {
            let mut ttfb: Vec<_> = r.timings.iter().map(|t| t.ttfb).collect();
            print!(
                "  {} added ttfb p50 {:.3} ms;",
                r.name,
                pct(&mut ttfb, 0.5) - base
            );
        }
        println!();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The proxies on CPU 0, the load generator on the others.
    let (proxy_cpu, load_cpus) = if cpus >= 2 && !quick {
        (Some("0".to_string()), Some(format!("1-{}", cpus - 1)))
    } else {
        (None, None)
    };
    if let Some(load) = &load_cpus {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", load])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cpus - 1).max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let scale: f64 = std::env::var("JOULEGATE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let only = std::env::var("JOULEGATE_BENCH_ONLY").ok();
    let n = |full: usize| {
        if quick {
            1
        } else {
            ((full as f64 * scale) as usize).max(1)
        }
    };
    let workloads = [
        Workload {
            key: "a",
            label: "16-token JSON, 64 connections, back to back",
            shape: Shape::Json,
            conns: if quick { 4 } else { 64 },
            per_conn: n(1000),
        },
        Workload {
            key: "b",
            label: "64 streams x 131 events, upstream writes coalesced",
            shape: Shape::Burst,
            conns: if quick { 4 } else { 64 },
            per_conn: n(40),
        },
        Workload {
            key: "c",
            label: "256 streams, 20 ms between events, one write per event",
            shape: Shape::Paced,
            conns: if quick { 4 } else { 256 },
            per_conn: n(2),
        },
        Workload {
            key: "c'",
            label: "2,048 streams, 20 ms between events (memory)",
            shape: Shape::Paced,
            conns: if quick { 4 } else { 2048 },
            per_conn: 1,
        },
        Workload {
            key: "d",
            label: "64 streams x 131 events at full speed, one write per event",
            shape: Shape::Each,
            conns: if quick { 4 } else { 64 },
            per_conn: n(40),
        },
    ];
    runtime.block_on(async move {
        let up = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let up_addr = up.local_addr().expect("upstream address");
        tokio::spawn(wire::upstream(
            up,
            if quick {
                Duration::from_millis(1)
            } else {
                PACE
            },
        ));
        let joulegate = start_joulegate(up_addr, proxy_cpu.as_deref());
        let nginx = if quick {
            None
        } else {
            start_nginx(up_addr, proxy_cpu.as_deref())
        };
        if nginx.is_none() && !quick {
            println!(
                "(nginx not found: no reference rows; `apt-get install nginx-light` adds them)"
            );
        }
        if !quick {
            println!(
                "proxies pinned to CPU {}, load generator on CPUs {}; times in ms",
                proxy_cpu.as_deref().unwrap_or("-"),
                load_cpus.as_deref().unwrap_or("-")
            );
        }
        let proxies: Vec<&Proxy> = std::iter::once(&joulegate).chain(nginx.as_ref()).collect();
        // Warm every path (connection pools, allocators).
        let warm = Workload {
            key: "w",
            label: "warm-up",
            shape: Shape::Json,
            conns: 8,
            per_conn: n(200),
        };
        for p in &proxies {
            run(warm, p.name, p.addr, Some(p)).await;
        }
        for w in workloads {
            if only
                .as_deref()
                .is_some_and(|o| !o.split(',').any(|k| k == w.key))
            {
                continue;
            }
            let mut runs = vec![run(w, "direct", up_addr, None).await];
            for p in &proxies {
                runs.push(run(w, p.name, p.addr, Some(p)).await);
            }
            report(&w, &mut runs);
        }
    });
}
