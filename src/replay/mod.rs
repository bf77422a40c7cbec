//! `joulegate replay`: timed load from the proxy's own request log, a Mooncake/aiperf-style trace
//! or a synthetic spec, sent at a running joulegate (`--target`), at a proxy started in-process in
//! front of an upstream (`--upstream` with `--meter`), or at the simulated engine behind the proxy
//! (`--mock`, which also reports the error of the proxy's attribution against the engine's truth);
//! then an energy report per tag and overall.
//!
//! - [`dist`]: token-count distributions and the seeded generator;
//! - [`options`]: the flags and their validation into a plan and a target;
//! - [`source`]: reading logs and traces, drawing synthetic plans, building request bodies;
//! - [`drive`]: the client: arrival timing, the in-flight bound, TTFT/ITL, energy from responses,
//!   settled records from an admin listener;
//! - [`report`]: the figures and their text, JSON and CSV renderings.
//!
//! Owns the command's orchestration. It starts the proxy only through the library API
//! ([`crate::app::App`]) and the mock only through [`crate::demo::World`], and reads energy as an
//! operator would: responses, `/requests/{id}`, published stats. It must not touch the ledger.

pub mod dist;
pub mod drive;
pub mod options;
pub mod report;
pub mod source;

use std::path::PathBuf;

use http::Uri;
use tokio::time::Instant;

pub use dist::{Dist, DistError};
pub use drive::{DriveOptions, Energy, Outcome};
pub use options::{ReplayArgs, ReplayOptions, Target};
pub use report::{Group, Percentiles, Report};
pub use source::{Api, Item, SourceError, Synthetic};

use crate::app::{App, Listeners, Running};
use crate::cli::ServeArgs;
use crate::config::{Config, FileConfig};
use crate::demo::{ErrorStats, Sent, World, WorldOptions};
use crate::observe::parse_public_id;
use options::{flag, url};

/// Why replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A flag is out of range or missing.
    #[error("--{name}: {why}")]
    Flag {
        /// The flag.
        name: &'static str,
        /// What is wrong, with the value.
        why: String,
    },
    /// A distribution spec was refused.
    #[error("{0}")]
    Dist(#[from] DistError),
    /// The log or trace could not be read.
    #[error("{path}: {source}")]
    Source {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: SourceError,
    },
    /// The in-process proxy's configuration was refused.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The in-process proxy could not start.
    #[error("proxy: {0}")]
    App(#[from] crate::app::AppError),
    /// The simulated world could not start or settle.
    #[error("mock: {0}")]
    Mock(#[from] crate::demo::DemoError),
    /// Binding or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn proxy_uri(addr: std::net::SocketAddr) -> Result<Uri, ReplayError> {
    url("target", &format!("http://{addr}"))
}

/// Runs the replay on the current tokio runtime until the plan is done or `stop` resolves, and
/// returns the report (of what finished, when stopped).
pub async fn run(
    opts: &ReplayOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Report, ReplayError> {
    let client = drive::client();
    match &opts.target {
        Target::Remote { proxy, admin } => {
            let d = opts.drive_options(proxy.clone(), None);
            let (mut outcomes, interrupted) = drive::drive(&client, &opts.plan, &d, stop).await;
            let unsettled = match admin {
                Some(admin) => {
                    let deadline = Instant::now() + opts.settle_timeout;
                    drive::read_settled(
                        &client,
                        admin,
                        opts.admin_token.as_deref(),
                        &mut outcomes,
                        deadline,
                    )
                    .await
                }
                None => 0,
            };
            let mut r = finish(opts, proxy.to_string(), outcomes, interrupted);
            r.unsettled = unsettled;
            Ok(r)
        }
        Target::InProcess { upstream, meters } => {
            let running = start_proxy(upstream, meters, opts.carbon).await?;
            let result = async {
                let proxy = proxy_uri(
                    running
                        .proxy_addr
                        .ok_or_else(|| flag("target", "no proxy address".into()))?,
                )?;
                let admin = proxy_uri(
                    running
                        .admin_addr
                        .ok_or_else(|| flag("admin", "no admin address".into()))?,
                )?;
                let d = opts.drive_options(proxy, None);
                let (mut outcomes, interrupted) = drive::drive(&client, &opts.plan, &d, stop).await;
                let deadline = Instant::now() + opts.settle_timeout;
                let unsettled =
                    drive::read_settled(&client, &admin, None, &mut outcomes, deadline).await;
                let mut r = finish(
                    opts,
                    format!("{upstream} (proxy in-process)"),
                    outcomes,
                    interrupted,
                );
                r.unsettled = unsettled;
                Ok(r)
            }
            .await;
            running.shutdown();
            running.wait().await;
            result
        }
        Target::Mock => run_mock(opts, &client, stop).await,
    }
}

fn finish(
    opts: &ReplayOptions,
    target: String,
    outcomes: Vec<Outcome>,
    interrupted: bool,
) -> Report {
    let mut r = Report::build(target, opts.plan.len(), outcomes, opts.warmup);
    r.skipped = opts.skipped;
    r.interrupted = interrupted;
    r
}

/// Starts the proxy in this process, as `serve` would with these flags, on loopback port 0.
async fn start_proxy(
    upstream: &str,
    meters: &[String],
    carbon: Option<f64>,
) -> Result<Running, ReplayError> {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.to_string()),
        meters: meters.to_vec(),
        carbon_intensity_g_per_kwh: carbon,
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &FileConfig::default(), None)?;
    let listeners = Listeners::bind(&config)
        .await
        .map_err(|source| ReplayError::Io {
            what: "cannot bind the proxy".into(),
            source,
        })?;
    Ok(App::build(config)?.start(listeners)?)
}

/// `--mock`: the demo's world (engine, meter, proxy) with the engine running `speed` times faster;
/// our client drives it (for TTFT, ITL and the in-flight bound) and the world matches each record
/// with the engine's truth.
async fn run_mock(
    opts: &ReplayOptions,
    client: &drive::HttpClient,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Report, ReplayError> {
    let world = World::start(&WorldOptions {
        time_scale: opts.speed,
        carbon_g_per_kwh: opts.carbon,
        settle_timeout: opts.settle_timeout,
        idle_warmup: opts.mock_idle_warmup,
        ..WorldOptions::default()
    })
    .await?;
    let result = async {
        let d = opts.drive_options(proxy_uri(world.proxy_addr())?, Some("replay".into()));
        let (outcomes, interrupted) = drive::drive(client, &opts.plan, &d, stop).await;
        // The world's truth matching works on what the demo's client records; give it ours.
        let sent: Vec<Sent> = outcomes
            .iter()
            .map(|o| {
                let path = opts.plan[o.index].api.path();
                Sent {
                    index: o.index,
                    path,
                    stream: o.stream,
                    tag: "replay",
                    http_status: o.http_status,
                    record_key: o.request_id.as_deref().and_then(parse_public_id),
                    response_joules: o.response.joules,
                    response_id: match opts.plan[o.index].api {
                        Api::Chat => format!("chatcmpl-replay-{}", o.index),
                        Api::Completions => format!("cmpl-replay-{}", o.index),
                    },
                }
            })
            .collect();
        let demo = world.collect(sent).await?;
        let mut outcomes = outcomes;
        let mut errors = std::collections::BTreeMap::new();
        for (o, row) in outcomes.iter_mut().zip(&demo.rows) {
            if let Some(rec) = &row.record {
                o.settled = Some(Energy {
                    joules: Some(rec.energy_joules),
                    active_joules: Some(rec.active_joules),
                    prompt_tokens: Some(rec.prompt_tokens),
                    completion_tokens: Some(rec.completion_tokens),
                    status: Some(rec.status.as_str().to_string()),
                    co2_grams: rec.co2_grams,
                });
            }
            if let Some(e) = row.error() {
                errors.insert(o.index, e);
            }
        }
        let mut r = finish(
            opts,
            "simulated engine (proxy and engine in-process)".into(),
            outcomes,
            interrupted,
        );
        let kept: Vec<f64> = r
            .outcomes
            .iter()
            .filter_map(|o| errors.get(&o.index).copied())
            .collect();
        r.truth_errors = Some(ErrorStats::of(kept));
        r.truth_by_index = errors;
        Ok(r)
    }
    .await;
    world.stop().await;
    result
}

/// `joulegate replay`: runs it (Ctrl-C stops sending and reports what finished), prints the
/// report on stdout and writes `--json` and `--csv`.
pub async fn run_cli(args: ReplayArgs) -> Result<Report, ReplayError> {
    let opts = ReplayOptions::from_args(&args)?;
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = run(&opts, ctrl_c).await?;
    print!("{}", report.render());
    write_outputs(&report, args.json.as_deref(), args.csv.as_deref())?;
    Ok(report)
}

/// Writes the JSON report and the CSV rows where asked.
pub fn write_outputs(
    report: &Report,
    json: Option<&std::path::Path>,
    csv: Option<&std::path::Path>,
) -> Result<(), ReplayError> {
    let write = |p: &std::path::Path, text: String| {
        std::fs::write(p, text).map_err(|source| ReplayError::Io {
            what: format!("cannot write {}", p.display()),
            source,
        })
    };
    if let Some(p) = json {
        write(p, format!("{:#}\n", report.to_json()))?;
    }
    if let Some(p) = csv {
        write(p, report.to_csv())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
