//! The flags of `joulegate replay` ([`ReplayArgs`]) and their validation into [`ReplayOptions`]:
//! the plan read or drawn, the target, and the bounds. Reads the input file; starts nothing.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::source::{self, Api, Item, Synthetic};
use super::{DriveOptions, ReplayError};
use crate::demo::WorldOptions;

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

pub(super) fn flag(name: &'static str, why: String) -> ReplayError {
    ReplayError::Flag { name, why }
}

pub(super) fn url(name: &'static str, s: &str) -> Result<Uri, ReplayError> {
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

    pub(super) fn drive_options(
        &self,
        target: Uri,
        request_id_prefix: Option<String>,
    ) -> DriveOptions {
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
