//! The configuration file mirror: every key optional, unknown keys rejected, nothing validated here
//! beyond TOML types. Validation and defaults live in [`super::Config::resolve`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `config.toml` as written by the user. Each key is also a flag and an environment variable.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_inspect_bytes: Option<u64>,
    pub max_inspect_total_bytes: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_inflight_requests: Option<u64>,
    pub max_inflight_tokens: Option<u64>,
    pub max_queue: Option<u64>,
    pub queue_timeout_ms: Option<u64>,
    pub admission_default_max_tokens: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub upstream_header_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_ms: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub admin_allow_public: Option<bool>,
    pub shutdown_grace_ms: Option<u64>,
    pub max_buffered_response_bytes: Option<u64>,
    pub meters: Option<Vec<String>>,
    pub sample_interval_ms: Option<u64>,
    pub meter_period_ms: Option<u64>,
    pub inject_usage: Option<bool>,
    pub energy_in_usage: Option<bool>,
    pub absent_include_usage: Option<String>,
    pub upstream_forces_usage: Option<String>,
    pub response_energy: Option<String>,
    pub response_energy_max_wait_ms: Option<u64>,
    pub upstream_metrics: Option<String>,
    pub upstream_metrics_interval_ms: Option<u64>,
    pub bytes_per_token: Option<f64>,
    pub carbon_intensity_g_per_kwh: Option<f64>,
    pub pue: Option<f64>,
    pub key_salt: Option<String>,
    pub idle_watts: Option<f64>,
    pub prefill_joules_per_token: Option<f64>,
    pub decode_joules_per_token: Option<f64>,
    pub context_joules_per_token: Option<f64>,
    pub settle_lag_ms: Option<u64>,
    pub calibration_hold_ms: Option<u64>,
    pub record_capacity: Option<u64>,
    pub max_label_values: Option<u64>,
    pub metrics_per_key: Option<bool>,
    pub metrics_per_tag: Option<bool>,
    pub admin_token: Option<String>,
    pub request_log: Option<PathBuf>,
    pub request_log_max_bytes: Option<u64>,
    pub request_log_files: Option<u64>,
    pub otel_endpoint: Option<String>,
    pub otel_interval_ms: Option<u64>,
    pub otel_queue: Option<u64>,
    pub otel_headers: Option<String>,
    pub log_format: Option<String>,
}

impl FileConfig {
    /// Reads and parses a TOML file; errors name the file (and, for parse errors, the key and line).
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text attributed to `path` in error messages. The message names the line but
    /// never quotes the file (the offending line may hold a secret), and says nothing of a value
    /// given to a secret key.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from(path),
            message: describe(&source, text),
        })
    }
}

/// Keys whose values are never repeated in an error.
const SECRET_KEYS: [&str; 2] = ["admin_token", "key_salt"];

/// A parse error without the file's text: toml's message and the line, or, on a line that sets a
/// secret key, only the key.
fn describe(err: &toml::de::Error, text: &str) -> String {
    let Some(span) = err.span() else {
        return err.message().to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    if let Some(secret) = SECRET_KEYS.iter().find(|k| **k == key) {
        return format!("line {line_no}: invalid value for `{secret}` (not shown: it is a secret)");
    }
    format!("line {line_no}: {}", err.message().trim_end())
}
