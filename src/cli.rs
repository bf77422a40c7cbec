//! The command line: `serve`, `demo`, `log-power`, `mock-upstream`, `batch`, `replay`.
//!
//! Flags of `serve` are all optional here: unset ones fall back to the environment (clap `env`), then
//! the `--config` file, then defaults, in [`crate::config::Config::resolve`].
//!
//! `--log-format` and `-v` are global: accepted before or after any subcommand. `--log-format` is
//! kept raw here and validated like every config key (by [`crate::config::resolve_log_format`]);
//! `serve` also reads it from its config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// joulegate: energy per LLM request, measured at the proxy.
#[derive(Debug, Parser)]
#[command(name = "joulegate", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Diagnostic log flags, accepted by every subcommand.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Global flags of the diagnostic logs (stderr). `RUST_LOG`, when set, overrides the level.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log format on stderr: text (coloured only on a terminal without NO_COLOR) or json (one
    /// object per line); `serve` also reads `log_format` from its config file [default: text].
    #[arg(
        long,
        env = "JOULEGATE_LOG_FORMAT",
        value_name = "text|json",
        global = true
    )]
    pub log_format: Option<String>,
    /// More logs: -v info, -vv debug, -vvv trace (demo, log-power and replay log warnings only by
    /// default, servers info).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Command {
    /// Whether the command's own output (a table, CSV, progress) is for the terminal, so that its
    /// logs default to warnings and nothing cuts the output.
    pub fn quiet_logs(&self) -> bool {
        matches!(
            self,
            Command::Demo(_) | Command::LogPower(_) | Command::Batch(_) | Command::Replay(_)
        )
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of an OpenAI-compatible server (vLLM).
    Serve(Box<ServeArgs>),
    /// Run a simulated engine, its meter and the proxy in one process, send a short mixed workload
    /// through it and print the energy of every request (no GPU or vLLM needed).
    Demo(crate::demo::DemoArgs),
    /// Run a power and energy logger writing CSV.
    LogPower(crate::meter::log_power::LogPowerArgs),
    /// Run the mock vLLM upstream (vLLM's wire format, simulated engine).
    MockUpstream(crate::sim::MockUpstreamArgs),
    /// Run an OpenAI batch file (JSONL) through joulegate and write OpenAI's batch output shape
    /// with an energy object per line, then a summary of the job (resumable).
    Batch(crate::batch::BatchArgs),
    /// Send timed load (a request log, a trace or a synthetic spec) at a proxy, an upstream with
    /// an in-process proxy, or the simulated engine, and report its energy per tag.
    Replay(Box<crate::replay::ReplayArgs>),
}

/// Flags of `joulegate serve`. Each is also an environment variable and a key in the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see config.example.toml).
    #[arg(long, env = "JOULEGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Proxy listen address [default: 127.0.0.1:9000].
    #[arg(long, env = "JOULEGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Upstream base URL [default: http://127.0.0.1:8000].
    #[arg(long, env = "JOULEGATE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Admin listen address [default: 127.0.0.1:9101].
    #[arg(long, env = "JOULEGATE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Hard cap on request bodies, bytes; larger ones get 413. 0 or unset: no cap, as vLLM has
    /// none [default: none].
    #[arg(long, env = "JOULEGATE_MAX_BODY_BYTES", value_name = "N")]
    pub max_body_bytes: Option<u64>,
    /// Largest model request read whole to be inspected (and usage injected), bytes; larger ones
    /// are forwarded as a stream, untouched, and accounted from their response [default: 16777216].
    #[arg(long, env = "JOULEGATE_MAX_INSPECT_BYTES", value_name = "N")]
    pub max_inspect_bytes: Option<u64>,
    /// Most bytes held for inspection across concurrent requests; beyond it requests are streamed
    /// uninspected, never refused [default: 268435456].
    #[arg(long, env = "JOULEGATE_MAX_INSPECT_TOTAL_BYTES", value_name = "N")]
    pub max_inspect_total_bytes: Option<u64>,
    /// Most client connections served at once; further ones wait to be accepted [default: 10000].
    #[arg(long, env = "JOULEGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,
    /// Admission: most model requests in flight at once; more wait in the queue. 0: no limit
    /// [default: 0].
    #[arg(long, env = "JOULEGATE_MAX_INFLIGHT_REQUESTS", value_name = "N")]
    pub max_inflight_requests: Option<u64>,
    /// Admission: most tokens in flight at once (prompt estimate + max_tokens of every admitted
    /// model request); more wait in the queue. 0: no limit [default: 0].
    #[arg(long, env = "JOULEGATE_MAX_INFLIGHT_TOKENS", value_name = "N")]
    pub max_inflight_tokens: Option<u64>,
    /// Admission: most model requests waiting for a slot; beyond it 429 with Retry-After
    /// (0..=1000000) [default: 1024].
    #[arg(long, env = "JOULEGATE_MAX_QUEUE", value_name = "N")]
    pub max_queue: Option<u64>,
    /// Admission: longest wait in the queue, ms; after it 429 with Retry-After (1..=3600000)
    /// [default: 30000].
    #[arg(long, env = "JOULEGATE_QUEUE_TIMEOUT_MS", value_name = "MS")]
    pub queue_timeout_ms: Option<u64>,
    /// Admission: completion tokens counted for a request that sets no max_tokens
    /// [default: 1024].
    #[arg(long, env = "JOULEGATE_ADMISSION_DEFAULT_MAX_TOKENS", value_name = "N")]
    pub admission_default_max_tokens: Option<u64>,
    /// Upstream connect timeout, ms (502 after it) [default: 5000].
    #[arg(long, env = "JOULEGATE_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for the upstream's response headers, ms (504 after it) [default: 600000].
    #[arg(long, env = "JOULEGATE_UPSTREAM_HEADER_TIMEOUT_MS", value_name = "MS")]
    pub upstream_header_timeout_ms: Option<u64>,
    /// Longest silence between two reads of an upstream response body, ms; after it the client's
    /// response ends in an error [default: 300000].
    #[arg(long, env = "JOULEGATE_UPSTREAM_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub upstream_idle_timeout_ms: Option<u64>,
    /// Longest time a client may take to send a request head, ms; the connection is closed after
    /// it [default: 30000].
    #[arg(long, env = "JOULEGATE_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Allow the admin listener on a non-loopback address without an admin token [default: false].
    #[arg(long, env = "JOULEGATE_ADMIN_ALLOW_PUBLIC", value_name = "BOOL")]
    pub admin_allow_public: Option<bool>,
    /// Grace period for in-flight requests after SIGINT/SIGTERM, ms [default: 30000].
    #[arg(long, env = "JOULEGATE_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Largest non-streaming response read whole to carry energy headers, bytes [default: 8388608].
    #[arg(long, env = "JOULEGATE_MAX_BUFFERED_RESPONSE_BYTES", value_name = "N")]
    pub max_buffered_response_bytes: Option<u64>,
    /// Energy meter (repeatable): nvml, nvml:0,1[,counter_ms=N], counter-file:PATH[,unit=..][,wrap=..], rapl, sim[:W],
    /// replay:PATH; any may end with ,period_ms=N (its counter's update period). The environment
    /// variable separates specs with ';' [default: nvml if it works].
    #[arg(
        long = "meter",
        env = "JOULEGATE_METERS",
        value_name = "SPEC",
        value_delimiter = ';'
    )]
    pub meters: Vec<String>,
    /// Meter sampling interval, ms (1..=200) [default: 50].
    #[arg(long, env = "JOULEGATE_SAMPLE_INTERVAL_MS", value_name = "MS")]
    pub sample_interval_ms: Option<u64>,
    /// How often the meters' counters update, ms (1..=60000), for meters whose spec sets no
    /// period_ms; slower than the sampling interval spreads each update over the intervals it
    /// covers [default: learned per device].
    #[arg(long, env = "JOULEGATE_METER_PERIOD_MS", value_name = "MS")]
    pub meter_period_ms: Option<u64>,
    /// Add stream_options to streaming requests for exact token counts (removed again before the
    /// client sees the response) [default: true].
    #[arg(long, env = "JOULEGATE_INJECT_USAGE", value_name = "BOOL")]
    pub inject_usage: Option<bool>,
    /// Add an `energy` object to the final usage chunk of streams whose client asked for usage
    /// [default: true].
    #[arg(long, env = "JOULEGATE_ENERGY_IN_USAGE", value_name = "BOOL")]
    pub energy_in_usage: Option<bool>,
    /// How the upstream reads an absent stream_options.include_usage: auto (from its /version),
    /// true or false [default: auto].
    #[arg(
        long,
        env = "JOULEGATE_ABSENT_INCLUDE_USAGE",
        value_name = "auto|true|false"
    )]
    pub absent_include_usage: Option<String>,
    /// Whether the upstream forces usage on every stream (vLLM --enable-force-include-usage): auto
    /// (ask it once at start-up with a one-token stream, and watch streams), true or false
    /// [default: auto].
    #[arg(
        long,
        env = "JOULEGATE_UPSTREAM_FORCES_USAGE",
        value_name = "auto|true|false"
    )]
    pub upstream_forces_usage: Option<String>,
    /// Energy on responses: provisional (never wait for the sampler; the record under
    /// /requests/{id} holds the exact figure about a second later) or settled (the energy-bearing
    /// part of a response waits until the request's figures are final, so they equal the record)
    /// [default: provisional].
    #[arg(
        long,
        env = "JOULEGATE_RESPONSE_ENERGY",
        value_name = "provisional|settled"
    )]
    pub response_energy: Option<String>,
    /// Settled mode: longest wait for the final figures, ms; after it the provisional figure goes
    /// out with status `estimated` (1..=60000) [default: 4000].
    #[arg(long, env = "JOULEGATE_RESPONSE_ENERGY_MAX_WAIT_MS", value_name = "MS")]
    pub response_energy_max_wait_ms: Option<u64>,
    /// Read the upstream's queue gauges (vLLM's vllm:num_requests_waiting and _running) from its
    /// Prometheus /metrics: auto (read them; stop where the upstream has none) or off
    /// [default: auto].
    #[arg(long, env = "JOULEGATE_UPSTREAM_METRICS", value_name = "auto|off")]
    pub upstream_metrics: Option<String>,
    /// How often the upstream's queue gauges are read, ms [default: 250].
    #[arg(
        long,
        env = "JOULEGATE_UPSTREAM_METRICS_INTERVAL_MS",
        value_name = "MS"
    )]
    pub upstream_metrics_interval_ms: Option<u64>,
    /// Bytes of prompt text per token for the arrival estimate [default: 4].
    #[arg(long, env = "JOULEGATE_BYTES_PER_TOKEN", value_name = "X")]
    pub bytes_per_token: Option<f64>,
    /// Grid carbon intensity, g CO2 per kWh; enables CO2 figures [default: none].
    #[arg(long, env = "JOULEGATE_CARBON_INTENSITY_G_PER_KWH", value_name = "G")]
    pub carbon_intensity_g_per_kwh: Option<f64>,
    /// Power usage effectiveness multiplied into CO2 figures [default: 1.0].
    #[arg(long, env = "JOULEGATE_PUE", value_name = "X")]
    pub pue: Option<f64>,
    /// Idle power of the metered devices, W; learned from idle intervals when unset.
    #[arg(long, env = "JOULEGATE_IDLE_WATTS", value_name = "W")]
    pub idle_watts: Option<f64>,
    /// Marginal energy of one prefill token until calibration is trusted, J [default: 0.01].
    #[arg(long, env = "JOULEGATE_PREFILL_JOULES_PER_TOKEN", value_name = "J")]
    pub prefill_joules_per_token: Option<f64>,
    /// Marginal energy of one decode token until calibration is trusted, J [default: 0.01].
    #[arg(long, env = "JOULEGATE_DECODE_JOULES_PER_TOKEN", value_name = "J")]
    pub decode_joules_per_token: Option<f64>,
    /// Marginal energy of one context token a decode reads, until calibration is trusted, J
    /// [default: 0.00001].
    #[arg(long, env = "JOULEGATE_CONTEXT_JOULES_PER_TOKEN", value_name = "J")]
    pub context_joules_per_token: Option<f64>,
    /// Longest time a measured interval is held for work that may still appear in it (prefills
    /// before a stream's first token, non-streamed answers), ms [default: 3000].
    #[arg(long, env = "JOULEGATE_SETTLE_LAG_MS", value_name = "MS")]
    pub settle_lag_ms: Option<u64>,
    /// How much longer than the settlement lag an interval with work is held until the
    /// calibration of the energy weights is first trusted, so that it is split with fitted
    /// weights rather than the defaults; 0: never; off with `--response-energy settled`, ms
    /// [default: 10000].
    #[arg(long, env = "JOULEGATE_CALIBRATION_HOLD_MS", value_name = "MS")]
    pub calibration_hold_ms: Option<u64>,
    /// Finished request records kept for /requests (oldest dropped first) [default: 10000].
    #[arg(long, env = "JOULEGATE_RECORD_CAPACITY", value_name = "N")]
    pub record_capacity: Option<u64>,
    /// Most distinct values per label (model, key hash, tag) in /stats and /metrics; the rest are
    /// folded into `other` [default: 100].
    #[arg(long, env = "JOULEGATE_MAX_LABEL_VALUES", value_name = "N")]
    pub max_label_values: Option<u64>,
    /// Export per-API-key-hash series in /metrics [default: false].
    #[arg(long, env = "JOULEGATE_METRICS_PER_KEY", value_name = "BOOL")]
    pub metrics_per_key: Option<bool>,
    /// Export per-tag series in /metrics [default: true].
    #[arg(long, env = "JOULEGATE_METRICS_PER_TAG", value_name = "BOOL")]
    pub metrics_per_tag: Option<bool>,
    /// Bearer token required by the admin listener (except /healthz) [default: none].
    #[arg(
        long,
        env = "JOULEGATE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// JSONL file receiving one line per finished request [default: none].
    #[arg(long, env = "JOULEGATE_REQUEST_LOG", value_name = "PATH")]
    pub request_log: Option<PathBuf>,
    /// Size at which the request log is rotated, bytes [default: 67108864].
    #[arg(long, env = "JOULEGATE_REQUEST_LOG_MAX_BYTES", value_name = "N")]
    pub request_log_max_bytes: Option<u64>,
    /// Rotated request-log files kept (PATH.1 .. PATH.N) [default: 5].
    #[arg(long, env = "JOULEGATE_REQUEST_LOG_FILES", value_name = "N")]
    pub request_log_files: Option<u64>,
    /// OTLP/HTTP base URL receiving finished records (/v1/logs) and energy counters (/v1/metrics);
    /// needs a binary built with `--features otel` [default: none].
    #[arg(long, env = "JOULEGATE_OTEL_ENDPOINT", value_name = "URL")]
    pub otel_endpoint: Option<String>,
    /// Interval of the OpenTelemetry counter export and record flush, ms [default: 5000].
    #[arg(long, env = "JOULEGATE_OTEL_INTERVAL_MS", value_name = "MS")]
    pub otel_interval_ms: Option<u64>,
    /// Finished records waiting for OpenTelemetry export at most; more are dropped and counted
    /// [default: 4096].
    #[arg(long, env = "JOULEGATE_OTEL_QUEUE", value_name = "N")]
    pub otel_queue: Option<u64>,
    /// Extra headers of the OTLP requests, `name=value,name=value` [default: none].
    #[arg(
        long,
        env = "JOULEGATE_OTEL_HEADERS",
        value_name = "LIST",
        hide_env_values = true
    )]
    pub otel_headers: Option<String>,
    /// Salt of the API-key hash; set it to keep key hashes stable across restarts [default: random].
    #[arg(
        long,
        env = "JOULEGATE_KEY_SALT",
        value_name = "TEXT",
        hide_env_values = true
    )]
    pub key_salt: Option<String>,
    /// The global `--log-format` (or `$JOULEGATE_LOG_FORMAT`), copied here by the binary so that it
    /// takes precedence over the file's `log_format`; not a flag of `serve` itself.
    #[arg(skip)]
    pub log_format: Option<String>,
}
