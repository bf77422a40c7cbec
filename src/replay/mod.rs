//! `joulegate replay`: timed load from the proxy's own request log, a Mooncake/aiperf-style trace
//! or a synthetic spec, sent at a running joulegate (`--target`), at a proxy started in-process in
//! front of an upstream (`--upstream` with `--meter`), or at the simulated engine behind the proxy
//! (`--mock`, which also reports the error of the proxy's attribution against the engine's truth);
//! then an energy report per tag and overall.
//!
//! - [`dist`]: token-count distributions and the seeded generator;
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
pub mod report;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

pub use dist::{Dist, DistError};
pub use drive::{DriveOptions, Energy, Outcome};
pub use report::{Group, Percentiles, Report};
pub use source::{Api, Item, SourceError, Synthetic};

use crate::app::{App, Listeners, Running};
use crate::cli::ServeArgs;
use crate::config::{Config, FileConfig};
use crate::demo::{ErrorStats, Sent, World, WorldOptions};
use crate::observe::parse_public_id;

/// Flags of `joulegate replay`. `Default` gives the command line's defaults (no input, no target).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Replay a request log written by `serve` (`request_log`; JSONL as /requests/{id} serves).
    #[arg(long, value_name = "FILE", group = "input")]
    pub log: Option<PathBuf>,
    /// Replay a Mooncake/aiperf-style trace (JSONL: timestamp ms, input_length, output_length).
    #[arg(long, value_name = "FILE", group = "input")]
    pub trace: Option<PathBuf>,
    /// Synthetic load: mean requests per second (Poisson arrivals); needs --duration.
    #[arg(long, value_name = "R", group = "input", requires = "duration")]
    pub rate: Option<f64>,
    /// Synthetic load: seconds of arrivals.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Synthetic load: prompt tokens, fixed:N, uniform:A-B or lognormal:MEAN,SIGMA.
    #[arg(long, value_name = "DIST", default_value = "fixed:128")]
    pub prompt_tokens: String,
    /// Synthetic load: completion tokens, fixed:N, uniform:A-B or lognormal:MEAN,SIGMA.
    #[arg(long, value_name = "DIST", default_value = "fixed:64")]
    pub output_tokens: String,
    /// Seed of the synthetic load.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A running joulegate's proxy URL.
    #[arg(long, value_name = "URL", group = "to")]
    pub target: Option<String>,
    /// With --target: its admin URL, to read each request's settled record from /requests/{id}.
    #[arg(long, value_name = "URL", requires = "target")]
    pub admin: Option<String>,
    /// Bearer token of the admin listener.
    #[arg(
        long,
        env = "JOULEGATE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Start the proxy in this process in front of this upstream (needs --meter).
    #[arg(long, value_name = "URL", group = "to", requires = "meters")]
    pub upstream: Option<String>,
    /// With --upstream: energy meter specs, as `serve --meter` (repeatable).
    #[arg(long = "meter", value_name = "SPEC")]
    pub meters: Vec<String>,
    /// Start the simulated engine and the proxy in this process, and report the attribution's
    /// error against the engine's truth.
    #[arg(long, group = "to")]
    pub mock: bool,
    /// Divide arrival times by F (2 = twice as fast); with --mock the engine also runs F times
    /// faster than real time.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub speed: f64,
    /// Leave requests sent in the first S wall seconds out of the report.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub warmup: f64,
    /// Most requests in flight; later arrivals wait for a slot.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_inflight: usize,
    /// Model to ask for (log records keep theirs unless --force-model) [default: the mock's `tiny`].
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Use --model for every request, whatever the log recorded.
    #[arg(long)]
    pub force_model: bool,
    /// API of trace and synthetic requests: chat or completions.
    #[arg(long, value_name = "chat|completions", default_value = "chat")]
    pub endpoint: String,
    /// Trace and synthetic requests do not stream.
    #[arg(long)]
    pub no_stream: bool,
    /// `x-energy-tag` of trace and synthetic requests (log records keep their own).
    #[arg(long, value_name = "TAG", default_value = "replay")]
    pub tag: String,
    /// Characters of synthetic prompt per token (3: the mock's toy tokenizer).
    #[arg(long, value_name = "X", default_value_t = 3.0)]
    pub chars_per_token: f64,
    /// Longest wait for settled records after the last response, seconds.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub settle_timeout: f64,
    /// Grid carbon intensity for the in-process proxy (--upstream, --mock), g CO2 per kWh.
    #[arg(long, value_name = "G")]
    pub carbon_intensity_g_per_kwh: Option<f64>,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one CSV row per request to FILE.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for ReplayArgs {
    fn default() -> Self {
        ReplayArgs {
            log: None,
            trace: None,
            rate: None,
            duration: None,
            prompt_tokens: "fixed:128".into(),
            output_tokens: "fixed:64".into(),
            seed: 1,
            target: None,
            admin: None,
            admin_token: None,
            upstream: None,
            meters: Vec::new(),
            mock: false,
            speed: 1.0,
            warmup: 0.0,
            max_inflight: 256,
            model: None,
            force_model: false,
            endpoint: "chat".into(),
            no_stream: false,
            tag: "replay".into(),
            chars_per_token: 3.0,
            settle_timeout: 30.0,
            carbon_intensity_g_per_kwh: None,
            json: None,
            csv: None,
            quiet: false,
        }
    }
}

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

fn flag(name: &'static str, why: String) -> ReplayError {
    ReplayError::Flag { name, why }
}

fn url(name: &'static str, s: &str) -> Result<Uri, ReplayError> {
    let uri: Uri = s
        .parse()
        .map_err(|e| flag(name, format!("{s:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(flag(name, format!("{s:?} must be an http://host:port URL")));
    }
    Ok(uri)
}

/// Where the load goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A running proxy, optionally with its admin listener.
    Remote {
        /// Proxy URL.
        proxy: Uri,
        /// Admin URL.
        admin: Option<Uri>,
    },
    /// A proxy started here, in front of `upstream`, reading `meters`.
    InProcess {
        /// Upstream URL.
        upstream: String,
        /// Meter specs.
        meters: Vec<String>,
    },
    /// The simulated engine behind the proxy, both started here.
    Mock,
}

/// The validated command.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The plan, in arrival order.
    pub plan: Vec<Item>,
    /// Log records left out (APIs replay does not drive).
    pub skipped: usize,
    /// Where the load goes.
    pub target: Target,
    /// Arrival compression.
    pub speed: f64,
    /// Left out of the report.
    pub warmup: Duration,
    /// In-flight bound.
    pub max_inflight: usize,
    /// Default model.
    pub model: String,
    /// Whether `model` overrides recorded models.
    pub force_model: bool,
    /// Characters per synthetic token.
    pub chars_per_token: f64,
    /// Wait for settled records.
    pub settle_timeout: Duration,
    /// Carbon intensity of an in-process proxy.
    pub carbon: Option<f64>,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Progress line on stderr.
    pub progress: bool,
    /// `--mock`: before sending, wait at most this long for the proxy to learn P_idle from idle
    /// ticks (as on a server idle before its first request); zero skips it.
    pub mock_idle_warmup: Duration,
}

fn seconds(name: &'static str, x: f64, max: f64) -> Result<Duration, ReplayError> {
    if x.is_finite() && (0.0..=max).contains(&x) {
        Ok(Duration::from_secs_f64(x))
    } else {
        Err(flag(
            name,
            format!("must be between 0 and {max} seconds, got {x}"),
        ))
    }
}

impl ReplayOptions {
    /// Validates the flags and reads or draws the plan.
    pub fn from_args(a: &ReplayArgs) -> Result<ReplayOptions, ReplayError> {
        let api = match a.endpoint.as_str() {
            "chat" => Api::Chat,
            "completions" => Api::Completions,
            other => {
                return Err(flag(
                    "endpoint",
                    format!("must be chat or completions, got {other:?}"),
                ))
            }
        };
        let stream = !a.no_stream;
        let tag = Some(a.tag.as_str()).filter(|t| !t.is_empty());
        let open = |p: &PathBuf| {
            std::fs::File::open(p)
                .map(std::io::BufReader::new)
                .map_err(|e| ReplayError::Io {
                    what: format!("cannot open {}", p.display()),
                    source: e,
                })
        };
        let source_err = |p: &PathBuf| {
            let path = p.clone();
            move |source| ReplayError::Source { path, source }
        };
        let (plan, skipped) = if let Some(p) = &a.log {
            source::read_request_log(open(p)?, &p.display().to_string()).map_err(source_err(p))?
        } else if let Some(p) = &a.trace {
            let items = source::read_trace(open(p)?, &p.display().to_string(), api, stream, tag)
                .map_err(source_err(p))?;
            (items, 0)
        } else if let Some(rate) = a.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
                return Err(flag(
                    "rate",
                    format!("must be above 0 and at most 100000, got {rate}"),
                ));
            }
            let duration = seconds("duration", a.duration.unwrap_or(0.0), 86_400.0)?;
            let spec = Synthetic {
                rate,
                duration,
                prompt: a.prompt_tokens.parse()?,
                output: a.output_tokens.parse()?,
                seed: a.seed,
            };
            (source::synthetic(&spec, api, stream, tag), 0)
        } else {
            return Err(flag(
                "log",
                "one of --log, --trace or --rate (with --duration) is needed".into(),
            ));
        };
        let target = if a.mock {
            Target::Mock
        } else if let Some(t) = &a.target {
            Target::Remote {
                proxy: url("target", t)?,
                admin: a.admin.as_deref().map(|s| url("admin", s)).transpose()?,
            }
        } else if let Some(u) = &a.upstream {
            url("upstream", u)?;
            if a.meters.is_empty() {
                return Err(flag(
                    "meter",
                    "--upstream needs at least one --meter".into(),
                ));
            }
            Target::InProcess {
                upstream: u.clone(),
                meters: a.meters.clone(),
            }
        } else {
            return Err(flag(
                "target",
                "one of --target, --upstream or --mock is needed".into(),
            ));
        };
        if !(a.speed.is_finite() && a.speed > 0.0 && a.speed <= 1000.0) {
            return Err(flag(
                "speed",
                format!("must be above 0 and at most 1000, got {}", a.speed),
            ));
        }
        if a.max_inflight == 0 || a.max_inflight > 100_000 {
            return Err(flag(
                "max-inflight",
                format!("must be between 1 and 100000, got {}", a.max_inflight),
            ));
        }
        if !(a.chars_per_token.is_finite() && (0.5..=32.0).contains(&a.chars_per_token)) {
            return Err(flag(
                "chars-per-token",
                format!("must be between 0.5 and 32, got {}", a.chars_per_token),
            ));
        }
        if let Some(ci) = a.carbon_intensity_g_per_kwh {
            if !(ci.is_finite() && ci >= 0.0) {
                return Err(flag(
                    "carbon-intensity-g-per-kwh",
                    format!("must be a non-negative number, got {ci}"),
                ));
            }
        }
        let mock = target == Target::Mock;
        Ok(ReplayOptions {
            plan,
            skipped,
            target,
            speed: a.speed,
            warmup: seconds("warmup", a.warmup, 86_400.0)?,
            max_inflight: a.max_inflight,
            // The mock serves one model, `tiny`: recorded names would only get 404s there.
            model: if mock {
                "tiny".into()
            } else {
                a.model.clone().unwrap_or_else(|| "tiny".into())
            },
            force_model: a.force_model || mock,
            chars_per_token: a.chars_per_token,
            settle_timeout: seconds("settle-timeout", a.settle_timeout, 3600.0)?,
            carbon: a.carbon_intensity_g_per_kwh,
            admin_token: a.admin_token.clone(),
            progress: !a.quiet,
            mock_idle_warmup: WorldOptions::default().idle_warmup,
        })
    }

    fn drive_options(&self, target: Uri, request_id_prefix: Option<String>) -> DriveOptions {
        DriveOptions {
            target,
            speed: self.speed,
            max_inflight: self.max_inflight,
            model: self.model.clone(),
            force_model: self.force_model,
            chars_per_token: self.chars_per_token,
            request_id_prefix,
            progress: self.progress,
        }
    }
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
