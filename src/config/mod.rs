//! Configuration in two layers (ripgrep's lowargs/hiargs): raw values from flags, environment and the
//! TOML file, then one validated, typed [`Config`]. Precedence: flag > environment > file > default
//! (clap reads flag and environment together; the file fills what both left unset).
//!
//! Every validation error names the key, the value and where it came from.

mod file;
mod log_format;
mod otel;
mod print;
mod resolve;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use file::FileConfig;
pub use log_format::resolve_log_format;
pub use otel::{parse_headers as parse_otel_headers, OtelConfig};
pub use upstream::UpstreamUrl;

use crate::logging::LogFormat;
use crate::meter::spec::MeterSpec;

/// Where a raw value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A flag or its environment variable.
    Flag {
        flag: &'static str,
        env: &'static str,
    },
    /// A key in the configuration file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag { flag, env } => write!(f, "flag --{flag} (or ${env})"),
            Origin::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Start-up configuration errors. Each names the key, the value and its origin.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for joulegate (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value failed validation.
    #[error("invalid value {value:?} for `{key}` from {origin}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Origin,
        reason: String,
    },
}

/// The validated configuration of `joulegate serve`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Proxy listener address.
    pub listen: SocketAddr,
    /// Where requests go.
    pub upstream: UpstreamUrl,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Hard cap on request bodies (413 beyond it); `None` (the default): no cap, as vLLM has none.
    pub max_body_bytes: Option<u64>,
    /// Largest model request read whole to be inspected (and possibly injected into); larger
    /// ones are forwarded as a stream, untouched, and accounted from their response.
    pub max_inspect_bytes: u64,
    /// Most bytes held for inspection across all requests at once; a request that would pass it
    /// is forwarded as a stream, uninspected, rather than refused.
    pub max_inspect_total_bytes: u64,
    /// Most client connections served at once; further accepts wait.
    pub max_connections: usize,
    /// Admission: most model requests in flight at once (0: no limit).
    pub max_inflight_requests: u64,
    /// Admission: most tokens (prompt estimate + completion bound) in flight at once (0: no limit).
    pub max_inflight_tokens: u64,
    /// Admission: most model requests waiting for a slot; beyond it 429 at once.
    pub max_queue: u64,
    /// Admission: longest wait in the queue before a 429.
    #[serde(with = "millis")]
    pub queue_timeout: Duration,
    /// Admission: the completion bound counted for a generating request that sets no `max_tokens`.
    pub admission_default_max_tokens: u64,
    /// Upstream TCP connect timeout.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers (a 504 after it).
    #[serde(with = "millis")]
    pub upstream_header_timeout: Duration,
    /// Longest silence between two reads of an upstream response body; after it the client's
    /// response ends in an error and the request's record says `error`.
    #[serde(with = "millis")]
    pub upstream_idle_timeout: Duration,
    /// Longest time a client may take to send a complete request head (slowloris bound).
    #[serde(with = "millis")]
    pub header_read_timeout: Duration,
    /// Let the admin listener bind a non-loopback address without `admin_token`.
    pub admin_allow_public: bool,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(with = "millis")]
    pub shutdown_grace: Duration,
    /// Largest non-streaming response read whole to carry energy headers.
    pub max_buffered_response_bytes: u64,
    /// Energy meters; empty means "NVML if it initialises, else none".
    #[serde(skip)]
    pub meters: Vec<MeterSpec>,
    /// Sampler interval.
    #[serde(with = "millis")]
    pub sample_interval: Duration,
    /// Every meter's counter update period, ms, unless its spec sets one (`None`: learned).
    pub meter_period_ms: Option<u64>,
    /// Whether to inject `stream_options` for exact streamed counts.
    pub inject_usage: bool,
    /// Whether the final usage chunk of a stream carries an `energy` object.
    pub energy_in_usage: bool,
    /// How the upstream reads an absent `include_usage`: `None` = detect from `/version`.
    pub absent_include_usage: Option<bool>,
    /// Whether the upstream forces usage on every stream (vLLM `--enable-force-include-usage`):
    /// `None` = ask it at start-up and watch streams.
    pub upstream_forces_usage: Option<bool>,
    /// Whether responses carry provisional figures or wait for settled ones.
    pub response_energy: ResponseEnergy,
    /// Settled mode: longest wait for the final figures.
    #[serde(with = "millis")]
    pub response_energy_max_wait: Duration,
    /// Whether the upstream's queue gauges are read from its `/metrics` (`upstream_metrics =
    /// "auto"`; reading stops where it has none).
    pub upstream_metrics: bool,
    /// How often they are read.
    #[serde(with = "millis")]
    pub upstream_metrics_interval: Duration,
    /// Bytes of prompt text per token, for arrival estimates.
    pub bytes_per_token: f64,
    /// Grid carbon intensity (g/kWh), if configured.
    pub carbon_intensity_g_per_kwh: Option<f64>,
    /// Power usage effectiveness.
    pub pue: f64,
    /// Configured salt of the API-key hash (`None`: random per process). Never printed.
    #[serde(skip)]
    pub key_salt: Option<String>,
    /// Configured idle power (`None`: learned).
    pub idle_watts: Option<f64>,
    /// Default prefill weight, J/token.
    pub prefill_joules_per_token: f64,
    /// Default decode weight, J/token.
    pub decode_joules_per_token: f64,
    /// Default context weight, J per context token read by a decode.
    pub context_joules_per_token: f64,
    /// Longest time a measured interval is held while work that belongs in it may still appear.
    pub settle_lag: Duration,
    /// How much longer an interval with work is held until the calibration is first trusted.
    pub calibration_hold: Duration,
    /// Records kept in the ring.
    pub record_capacity: usize,
    /// Label values kept per dimension.
    pub max_label_values: usize,
    /// Per-key-hash series in /metrics.
    pub metrics_per_key: bool,
    /// Per-tag series in /metrics.
    pub metrics_per_tag: bool,
    /// Admin bearer token. Never printed.
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// JSONL request log.
    pub request_log: Option<PathBuf>,
    /// Rotation size of the request log.
    pub request_log_max_bytes: u64,
    /// Rotated files kept.
    pub request_log_files: usize,
    /// OpenTelemetry export (`otel_*` keys; needs the `otel` feature), when `otel_endpoint` is set.
    pub otel: Option<OtelConfig>,
    /// Diagnostic log format on stderr.
    pub log_format: LogFormat,
}

/// What energy figure a response carries (`response_energy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseEnergy {
    /// Never wait for the sampler: the figure is the settled energy so far plus an estimate of the
    /// unsettled rest; the record is exact.
    Provisional,
    /// The energy-bearing part of a response (JSON headers; a stream's final usage chunk and
    /// trailers) waits, bounded, until the request's figures are final.
    Settled,
}

impl ResponseEnergy {
    /// The configuration text.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseEnergy::Provisional => "provisional",
            ResponseEnergy::Settled => "settled",
        }
    }
}

pub(crate) mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Defaults, in one place (also written in `config.example.toml`).
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:9000";
    pub const UPSTREAM: &str = "http://127.0.0.1:8000";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9101";
    pub const MAX_INSPECT_BYTES: u64 = 16 * 1024 * 1024;
    pub const MAX_INSPECT_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
    /// `max_inspect_bytes` is taken from a semaphore in one piece of at most `u32::MAX` permits.
    pub const MAX_INSPECT_BYTES_LIMIT: u64 = u32::MAX as u64;
    pub const MAX_CONNECTIONS: u64 = 10_000;
    /// Admission is off by default: no in-flight limit.
    pub const MAX_INFLIGHT_REQUESTS: u64 = 0;
    pub const MAX_INFLIGHT_TOKENS: u64 = 0;
    pub const MAX_QUEUE: u64 = 1_024;
    /// Upper bound of `max_queue` (each waiter holds its request body).
    pub const MAX_QUEUE_LIMIT: u64 = 1_000_000;
    pub const QUEUE_TIMEOUT_MS: u64 = 30_000;
    /// Upper bound of `queue_timeout_ms`: an hour.
    pub const QUEUE_TIMEOUT_MS_LIMIT: u64 = 3_600_000;
    pub const ADMISSION_DEFAULT_MAX_TOKENS: u64 = 1_024;
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// vLLM may queue a request for a long time before answering headers of a non-streaming call.
    pub const UPSTREAM_HEADER_TIMEOUT_MS: u64 = 600_000;
    /// A stream's tokens may be seconds apart under load; five minutes of silence is a stall.
    pub const UPSTREAM_IDLE_TIMEOUT_MS: u64 = 300_000;
    /// hyper's own default.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 30_000;
    pub const SHUTDOWN_GRACE_MS: u64 = 30_000;
    pub const MAX_BUFFERED_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;
    pub const SAMPLE_INTERVAL_MS: u64 = 50;
    pub const INJECT_USAGE: bool = true;
    pub const ABSENT_INCLUDE_USAGE: &str = "auto";
    pub const UPSTREAM_FORCES_USAGE: &str = "auto";
    pub const RESPONSE_ENERGY: &str = "provisional";
    /// Settled figures wait for the request's last interval to settle: with non-streamed
    /// requests in flight that is up to the settlement lag (`settle_lag_ms`) after it ended.
    pub const RESPONSE_ENERGY_MAX_WAIT_MS: u64 = 4_000;
    /// Upper bound of `response_energy_max_wait_ms`: settlement takes a few sampler periods (at
    /// most 200 ms each); a minute only ever hides a stalled sampler.
    pub const RESPONSE_ENERGY_MAX_WAIT_MS_LIMIT: u64 = 60_000;
    pub const UPSTREAM_METRICS: &str = "auto";
    /// How often the upstream's queue gauges are read: the ledger holds an answer back once it
    /// waited at two readings in a row, so this bounds how late that comes.
    pub const UPSTREAM_METRICS_INTERVAL_MS: u64 = 250;
    /// Bounds of `upstream_metrics_interval_ms`.
    pub const UPSTREAM_METRICS_INTERVAL_MS_RANGE: (u64, u64) = (50, 60_000);
    pub const BYTES_PER_TOKEN: f64 = 4.0;
    pub const PUE: f64 = 1.0;
    pub const PREFILL_JOULES_PER_TOKEN: f64 = 0.01;
    pub const DECODE_JOULES_PER_TOKEN: f64 = 0.01;
    pub const CONTEXT_JOULES_PER_TOKEN: f64 = 0.000_01;
    pub const SETTLE_LAG_MS: u64 = 3_000;
    /// Bounds of `settle_lag_ms`.
    pub const SETTLE_LAG_MS_RANGE: (u64, u64) = (100, 60_000);
    /// Until the calibration is first trusted (README, "Calibration"): ten seconds at most.
    pub const CALIBRATION_HOLD_MS: u64 = 10_000;
    /// Upper bound of `calibration_hold_ms`.
    pub const CALIBRATION_HOLD_MS_LIMIT: u64 = 60_000;
    pub const RECORD_CAPACITY: u64 = 10_000;
    pub const MAX_LABEL_VALUES: u64 = 100;
    pub const REQUEST_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;
    pub const REQUEST_LOG_FILES: u64 = 5;
    pub const OTEL_INTERVAL_MS: u64 = 5_000;
    /// Bounds of `otel_interval_ms`: from 10 ms (tests) to an hour.
    pub const OTEL_INTERVAL_MS_RANGE: (u64, u64) = (10, 3_600_000);
    pub const OTEL_QUEUE: u64 = 4_096;
    /// Upper bound of `otel_queue` (each queued record is a few hundred bytes).
    pub const OTEL_QUEUE_LIMIT: u64 = 1_000_000;
}

#[cfg(test)]
mod tests;
