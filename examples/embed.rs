//! Embedding joulegate's proxy in another tokio program through the library API: the host binds
//! the listeners (port 0 here), builds the [`App`] from a [`Config`], starts it beside its own
//! tasks, reads the books directly from the running app (no HTTP to its own admin port), and
//! drains it on its own shutdown signal.
//!
//! The upstream is the URL given, or, with none, the mock vLLM upstream started in this process;
//! the meter is `sim:250` (a synthetic 250 W device): use `nvml` or `nvml:0,1` on a GPU host.
//!
//! Run: `cargo run --example embed [-- http://127.0.0.1:8000 MODEL]`

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::{Config, FileConfig};
use joulegate::sim::{MockUpstream, RunnerConfig, Timing};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.get(1).cloned().unwrap_or_else(|| "tiny".into());
    let mock = match args.first() {
        Some(_) => None,
        // Engine timing: requests take the time a small model on one GPU would.
        None => Some(
            MockUpstream::builder()
                .timing(Timing::Engine(RunnerConfig::default()))
                .spawn(TcpListener::bind("127.0.0.1:0").await?)?,
        ),
    };
    let upstream = match (&mock, args.first()) {
        (Some(m), _) => m.url(),
        (None, Some(u)) => u.clone(),
        (None, None) => unreachable!("the mock runs when no URL is given"),
    };

    // The same keys as `joulegate serve` flags; a config file can be passed as the second
    // argument of `Config::resolve` (flags win over it, as on the command line).
    let flags = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream),
        meters: vec!["sim:250".into()],
        ..ServeArgs::default()
    };
    let config = Config::resolve(&flags, &FileConfig::default(), None)?;
    let listeners = Listeners::bind(&config).await?;
    let running = App::build(config)?.start(listeners)?;
    let proxy = running.proxy_addr.expect("bound above");
    println!("proxy on {proxy}, admin on {:?}", running.admin_addr);

    // The host program's own work: here, a few requests through the embedded proxy.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for i in 0..3 {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": format!("request {i}")}],
            "max_tokens": 8,
        });
        let request = http::Request::post(format!("http://{proxy}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = client.request(request).await?;
        let joules = response.headers().get("x-energy-joules").cloned();
        response.into_body().collect().await?;
        println!("request {i}: {joules:?} J (provisional)");
    }

    // The books, read from the running app's accounting, as /stats reads them. Records settle
    // shortly after the responses (the settlement lag); wait for all three, bounded.
    let accounting = running.admin.accounting.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let finished = |s: &joulegate::accounting::AccountingStats| {
        let r = s.requests;
        r.ok + r.estimated + r.unavailable + r.aborted + r.error
    };
    while (finished(&accounting.stats()) < 3 || accounting.stats().in_flight > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = accounting.stats();
    println!(
        "settled: {} requests, {} completion tokens, {:.3} J attributed, {:.3} J measured",
        stats.requests.ok + stats.requests.estimated,
        stats.completion_tokens,
        stats.totals.attributed_uj as f64 / 1e6,
        stats.totals.measured_uj as f64 / 1e6,
    );

    // Shut down on the host's terms: stop accepting, drain in-flight requests, stop the threads.
    running.shutdown();
    running.wait().await;
    if let Some(m) = mock {
        m.shutdown().await;
    }
    Ok(())
}
