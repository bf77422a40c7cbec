//! The live page against the demo set-up: the simulated engine and its meter behind the proxy,
//! with waves of the demo's mixed workload, so the admin listener's page (`GET /`) has something
//! to draw.
//!
//! ```text
//! cargo run --example live_page                         # prints the page's URL, runs until Ctrl-C
//! cargo run --example live_page -- --screenshot live.png  # waits for data, writes a PNG, exits
//! cargo run --example live_page -- --token s3cret         # with an admin token (URL has ?token=)
//! ```
//! `--warmup-s N` (default 20) is how long traffic runs before the screenshot; `--size WxH`
//! (default 1280x900) the window. The screenshot needs Chromium (`chromium`, or the binary named
//! by `$JOULEGATE_CHROMIUM`).

#[path = "../tests/browser/mod.rs"]
mod browser;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use joulegate::demo::{World, WorldOptions};
use joulegate::sim::workload::{plan, WorkloadKind};

struct Args {
    screenshot: Option<PathBuf>,
    token: Option<String>,
    warmup: Duration,
    size: (u32, u32),
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        screenshot: None,
        token: None,
        warmup: Duration::from_secs(20),
        size: (1280, 900),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--screenshot" => a.screenshot = Some(PathBuf::from(value()?)),
            "--token" => a.token = Some(value()?),
            "--warmup-s" => {
                let v = value()?;
                let s: f64 = v.parse().map_err(|_| format!("--warmup-s: {v:?}"))?;
                a.warmup =
                    Duration::try_from_secs_f64(s).map_err(|e| format!("--warmup-s: {e}"))?;
            }
            "--size" => {
                let v = value()?;
                let (w, h) = v
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                    .ok_or_else(|| format!("--size wants WxH, got {v:?}"))?;
                a.size = (w, h);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: live_page [--screenshot FILE] [--token T] [--warmup-s N] \
                            [--size WxH]"
                        .into(),
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let world = Arc::new(
        World::start(&WorldOptions {
            time_scale: 2.0,
            admin_token: args.token.clone(),
            ..WorldOptions::default()
        })
        .await?,
    );
    let admin = world
        .admin_addr()
        .ok_or("the admin listener has no address")?;
    let url = match &args.token {
        Some(t) => format!("http://{admin}/?token={}", encode(t)),
        None => format!("http://{admin}/"),
    };
    // Waves of the demo's mixed workload, one after the other, until the end.
    let traffic = {
        let world = world.clone();
        tokio::spawn(async move {
            for wave in 0u64.. {
                let p = plan(WorkloadKind::Mixed, wave, 16, Duration::from_millis(250));
                world.drive(&p, &format!("live-{wave}")).await;
            }
        })
    };
    match &args.screenshot {
        None => {
            println!("live page: {url}");
            println!("(demo traffic runs until Ctrl-C)");
            tokio::signal::ctrl_c().await?;
        }
        Some(file) => {
            let bin = browser::find().ok_or("chromium not found (set JOULEGATE_CHROMIUM)")?;
            tokio::time::sleep(args.warmup).await;
            let (file, size) = (file.clone(), args.size);
            let u = url.clone();
            tokio::task::spawn_blocking(move || browser::screenshot(&bin, &u, &file, size, 3000))
                .await?
                .map_err(|e| e.to_string())?;
            println!(
                "screenshot of {url} written to {}",
                args.screenshot
                    .as_ref()
                    .map_or(String::new(), |f| f.display().to_string())
            );
        }
    }
    traffic.abort();
    let _ = traffic.await;
    if let Ok(world) = Arc::try_unwrap(world) {
        world.stop().await;
    }
    Ok(())
}

/// Percent-encodes a token for the query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
