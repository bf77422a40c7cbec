//! Resolution: flag/env over file over default for every key, each validated, with errors that
//! name the key, the value and where it came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{defaults, Config, ConfigError, FileConfig, Origin, ResponseEnergy, UpstreamUrl};
use crate::cli::ServeArgs;
use crate::meter::spec::MeterSpec;

/// Picks the flag/env value, else the file value, else the default, remembering where it came from.
pub(super) struct Layer<'a> {
    file_path: Option<&'a PathBuf>,
}

impl Layer<'_> {
    pub(super) fn pick<T: Clone>(
        &self,
        flag_value: &Option<T>,
        file_value: &Option<T>,
        default: T,
        flag: &'static str,
        env: &'static str,
    ) -> (T, Origin) {
        if let Some(v) = flag_value {
            return (v.clone(), Origin::Flag { flag, env });
        }
        if let (Some(v), Some(path)) = (file_value, self.file_path) {
            return (v.clone(), Origin::File(path.clone()));
        }
        (default, Origin::Flag { flag, env })
    }
}

pub(super) fn invalid(
    key: &'static str,
    value: impl ToString,
    origin: Origin,
    reason: impl ToString,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        origin,
        reason: reason.to_string(),
    }
}

fn parse_addr(
    key: &'static str,
    (value, origin): (String, Origin),
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e: std::net::AddrParseError| {
        invalid(
            key,
            &value,
            origin,
            format!("{e} (expected IP:PORT; port 0 picks a free port)"),
        )
    })
}

fn non_negative(key: &'static str, (value, origin): (f64, Origin)) -> Result<f64, ConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(invalid(key, value, origin, "must be a finite number >= 0"));
    }
    Ok(value)
}

fn positive(key: &'static str, (value, origin): (u64, Origin)) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(invalid(key, value, origin, "must be greater than 0"));
    }
    Ok(value)
}

impl Config {
    /// Loads the file named by `--config` (if any) and resolves every key.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, &file, args.config.as_ref())
    }

    /// Resolves flags/env over a parsed file over defaults and validates the result.
    pub fn resolve(
        args: &ServeArgs,
        file: &FileConfig,
        file_path: Option<&PathBuf>,
    ) -> Result<Config, ConfigError> {
        let l = Layer { file_path };
        let listen = parse_addr(
            "listen",
            l.pick(
                &args.listen,
                &file.listen,
                defaults::LISTEN.into(),
                "listen",
                "JOULEGATE_LISTEN",
            ),
        )?;
        let (admin_raw, admin_origin) = l.pick(
            &args.admin_listen,
            &file.admin_listen,
            defaults::ADMIN_LISTEN.into(),
            "admin-listen",
            "JOULEGATE_ADMIN_LISTEN",
        );
        let admin_listen = parse_addr("admin_listen", (admin_raw, admin_origin.clone()))?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(invalid(
                "admin_listen",
                admin_listen,
                Origin::Flag { flag: "admin-listen", env: "JOULEGATE_ADMIN_LISTEN" },
                "must differ from `listen` (the upstream's own /metrics stays reachable through the proxy port)",
            ));
        }
        let (upstream_raw, upstream_origin) = l.pick(
            &args.upstream,
            &file.upstream,
            defaults::UPSTREAM.into(),
            "upstream",
            "JOULEGATE_UPSTREAM",
        );
        let upstream = UpstreamUrl::parse(&upstream_raw)
            .map_err(|reason| invalid("upstream", &upstream_raw, upstream_origin, reason))?;
        // 0 turns the cap off (so that a flag or variable can undo a file's value).
        let max_body_bytes = l
            .pick(
                &args.max_body_bytes.map(Some),
                &file.max_body_bytes.map(Some),
                None,
                "max-body-bytes",
                "JOULEGATE_MAX_BODY_BYTES",
            )
            .0
            .filter(|&n| n > 0);
        let (max_inspect_bytes, inspect_origin) = l.pick(
            &args.max_inspect_bytes,
            &file.max_inspect_bytes,
            defaults::MAX_INSPECT_BYTES,
            "max-inspect-bytes",
            "JOULEGATE_MAX_INSPECT_BYTES",
        );
        if !(1..=defaults::MAX_INSPECT_BYTES_LIMIT).contains(&max_inspect_bytes) {
            return Err(invalid(
                "max_inspect_bytes",
                max_inspect_bytes,
                inspect_origin,
                format!("must be within 1..={}", defaults::MAX_INSPECT_BYTES_LIMIT),
            ));
        }
        let (max_inspect_total_bytes, total_origin) = l.pick(
            &args.max_inspect_total_bytes,
            &file.max_inspect_total_bytes,
            defaults::MAX_INSPECT_TOTAL_BYTES,
            "max-inspect-total-bytes",
            "JOULEGATE_MAX_INSPECT_TOTAL_BYTES",
        );
        if max_inspect_total_bytes < max_inspect_bytes {
            return Err(invalid(
                "max_inspect_total_bytes",
                max_inspect_total_bytes,
                total_origin,
                format!("must be at least max_inspect_bytes ({max_inspect_bytes})"),
            ));
        }
        let max_connections = positive(
            "max_connections",
            l.pick(
                &args.max_connections,
                &file.max_connections,
                defaults::MAX_CONNECTIONS,
                "max-connections",
                "JOULEGATE_MAX_CONNECTIONS",
            ),
        )?;
        let max_inflight_requests = l
            .pick(
                &args.max_inflight_requests,
                &file.max_inflight_requests,
                defaults::MAX_INFLIGHT_REQUESTS,
                "max-inflight-requests",
                "JOULEGATE_MAX_INFLIGHT_REQUESTS",
            )
            .0;
        let max_inflight_tokens = l
            .pick(
                &args.max_inflight_tokens,
                &file.max_inflight_tokens,
                defaults::MAX_INFLIGHT_TOKENS,
                "max-inflight-tokens",
                "JOULEGATE_MAX_INFLIGHT_TOKENS",
            )
            .0;
        let (max_queue, queue_origin) = l.pick(
            &args.max_queue,
            &file.max_queue,
            defaults::MAX_QUEUE,
            "max-queue",
            "JOULEGATE_MAX_QUEUE",
        );
        if max_queue > defaults::MAX_QUEUE_LIMIT {
            return Err(invalid(
                "max_queue",
                max_queue,
                queue_origin,
                format!("must be within 0..={}", defaults::MAX_QUEUE_LIMIT),
            ));
        }
        let (queue_timeout_ms, timeout_origin) = l.pick(
            &args.queue_timeout_ms,
            &file.queue_timeout_ms,
            defaults::QUEUE_TIMEOUT_MS,
            "queue-timeout-ms",
            "JOULEGATE_QUEUE_TIMEOUT_MS",
        );
        if !(1..=defaults::QUEUE_TIMEOUT_MS_LIMIT).contains(&queue_timeout_ms) {
            return Err(invalid(
                "queue_timeout_ms",
                queue_timeout_ms,
                timeout_origin,
                format!("must be within 1..={}", defaults::QUEUE_TIMEOUT_MS_LIMIT),
            ));
        }
        let admission_default_max_tokens = l
            .pick(
                &args.admission_default_max_tokens,
                &file.admission_default_max_tokens,
                defaults::ADMISSION_DEFAULT_MAX_TOKENS,
                "admission-default-max-tokens",
                "JOULEGATE_ADMISSION_DEFAULT_MAX_TOKENS",
            )
            .0;
        let connect_timeout_ms = positive(
            "connect_timeout_ms",
            l.pick(
                &args.connect_timeout_ms,
                &file.connect_timeout_ms,
                defaults::CONNECT_TIMEOUT_MS,
                "connect-timeout-ms",
                "JOULEGATE_CONNECT_TIMEOUT_MS",
            ),
        )?;
        let header_timeout_ms = positive(
            "upstream_header_timeout_ms",
            l.pick(
                &args.upstream_header_timeout_ms,
                &file.upstream_header_timeout_ms,
                defaults::UPSTREAM_HEADER_TIMEOUT_MS,
                "upstream-header-timeout-ms",
                "JOULEGATE_UPSTREAM_HEADER_TIMEOUT_MS",
            ),
        )?;
        let upstream_idle_timeout_ms = positive(
            "upstream_idle_timeout_ms",
            l.pick(
                &args.upstream_idle_timeout_ms,
                &file.upstream_idle_timeout_ms,
                defaults::UPSTREAM_IDLE_TIMEOUT_MS,
                "upstream-idle-timeout-ms",
                "JOULEGATE_UPSTREAM_IDLE_TIMEOUT_MS",
            ),
        )?;
        let header_read_timeout_ms = positive(
            "header_read_timeout_ms",
            l.pick(
                &args.header_read_timeout_ms,
                &file.header_read_timeout_ms,
                defaults::HEADER_READ_TIMEOUT_MS,
                "header-read-timeout-ms",
                "JOULEGATE_HEADER_READ_TIMEOUT_MS",
            ),
        )?;
        let (shutdown_grace_ms, _) = l.pick(
            &args.shutdown_grace_ms,
            &file.shutdown_grace_ms,
            defaults::SHUTDOWN_GRACE_MS,
            "shutdown-grace-ms",
            "JOULEGATE_SHUTDOWN_GRACE_MS",
        );
        let max_buffered_response_bytes = l
            .pick(
                &args.max_buffered_response_bytes,
                &file.max_buffered_response_bytes,
                defaults::MAX_BUFFERED_RESPONSE_BYTES,
                "max-buffered-response-bytes",
                "JOULEGATE_MAX_BUFFERED_RESPONSE_BYTES",
            )
            .0;
        let flag_meters = (!args.meters.is_empty()).then(|| args.meters.clone());
        let (meter_texts, meter_origin) = l.pick(
            &flag_meters,
            &file.meters,
            Vec::new(),
            "meter",
            "JOULEGATE_METERS",
        );
        let meters = meter_texts
            .iter()
            .map(|text| {
                text.parse::<MeterSpec>()
                    .map_err(|e| invalid("meters", text, meter_origin.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (interval_ms, interval_origin) = l.pick(
            &args.sample_interval_ms,
            &file.sample_interval_ms,
            defaults::SAMPLE_INTERVAL_MS,
            "sample-interval-ms",
            "JOULEGATE_SAMPLE_INTERVAL_MS",
        );
        if !(1..=200).contains(&interval_ms) {
            return Err(invalid(
                "sample_interval_ms",
                interval_ms,
                interval_origin,
                "must be within 1..=200 (at least 5 samples a second)",
            ));
        }
        let meter_period_ms = match l.pick(
            &args.meter_period_ms.map(Some),
            &file.meter_period_ms.map(Some),
            None,
            "meter-period-ms",
            "JOULEGATE_METER_PERIOD_MS",
        ) {
            (Some(ms), origin) if !(1..=crate::meter::spec::MAX_PERIOD_MS).contains(&ms) => {
                return Err(invalid(
                    "meter_period_ms",
                    ms,
                    origin,
                    "must be within 1..=60000",
                ));
            }
            (ms, _) => ms,
        };
        let (inject_usage, _) = l.pick(
            &args.inject_usage,
            &file.inject_usage,
            defaults::INJECT_USAGE,
            "inject-usage",
            "JOULEGATE_INJECT_USAGE",
        );
        let (energy_in_usage, _) = l.pick(
            &args.energy_in_usage,
            &file.energy_in_usage,
            true,
            "energy-in-usage",
            "JOULEGATE_ENERGY_IN_USAGE",
        );
        let (absent_text, absent_origin) = l.pick(
            &args.absent_include_usage,
            &file.absent_include_usage,
            defaults::ABSENT_INCLUDE_USAGE.into(),
            "absent-include-usage",
            "JOULEGATE_ABSENT_INCLUDE_USAGE",
        );
        let absent_include_usage = match absent_text.as_str() {
            "auto" => None,
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                return Err(invalid(
                    "absent_include_usage",
                    &absent_text,
                    absent_origin,
                    "expected auto, true or false",
                ))
            }
        };
        let (forces_text, forces_origin) = l.pick(
            &args.upstream_forces_usage,
            &file.upstream_forces_usage,
            defaults::UPSTREAM_FORCES_USAGE.into(),
            "upstream-forces-usage",
            "JOULEGATE_UPSTREAM_FORCES_USAGE",
        );
        let upstream_forces_usage = match forces_text.as_str() {
            "auto" => None,
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                return Err(invalid(
                    "upstream_forces_usage",
                    &forces_text,
                    forces_origin,
                    "expected auto, true or false",
                ))
            }
        };
        let (response_text, response_origin) = l.pick(
            &args.response_energy,
            &file.response_energy,
            defaults::RESPONSE_ENERGY.into(),
            "response-energy",
            "JOULEGATE_RESPONSE_ENERGY",
        );
        let response_energy = match response_text.as_str() {
            "provisional" => ResponseEnergy::Provisional,
            "settled" => ResponseEnergy::Settled,
            _ => {
                return Err(invalid(
                    "response_energy",
                    &response_text,
                    response_origin,
                    "expected provisional or settled",
                ))
            }
        };
        let (max_wait_ms, max_wait_origin) = l.pick(
            &args.response_energy_max_wait_ms,
            &file.response_energy_max_wait_ms,
            defaults::RESPONSE_ENERGY_MAX_WAIT_MS,
            "response-energy-max-wait-ms",
            "JOULEGATE_RESPONSE_ENERGY_MAX_WAIT_MS",
        );
        if !(1..=defaults::RESPONSE_ENERGY_MAX_WAIT_MS_LIMIT).contains(&max_wait_ms) {
            return Err(invalid(
                "response_energy_max_wait_ms",
                max_wait_ms,
                max_wait_origin,
                format!(
                    "must be within 1..={} ms",
                    defaults::RESPONSE_ENERGY_MAX_WAIT_MS_LIMIT
                ),
            ));
        }
        let (bytes_per_token, bpt_origin) = l.pick(
            &args.bytes_per_token,
            &file.bytes_per_token,
            defaults::BYTES_PER_TOKEN,
            "bytes-per-token",
            "JOULEGATE_BYTES_PER_TOKEN",
        );
        if !(bytes_per_token.is_finite() && bytes_per_token > 0.0) {
            return Err(invalid(
                "bytes_per_token",
                bytes_per_token,
                bpt_origin,
                "must be a positive number",
            ));
        }
        let carbon_flag = args.carbon_intensity_g_per_kwh.map(Some);
        let carbon_file = file.carbon_intensity_g_per_kwh.map(Some);
        let (carbon_intensity_g_per_kwh, carbon_origin) = l.pick(
            &carbon_flag,
            &carbon_file,
            None,
            "carbon-intensity-g-per-kwh",
            "JOULEGATE_CARBON_INTENSITY_G_PER_KWH",
        );
        if let Some(c) = carbon_intensity_g_per_kwh {
            if !(c.is_finite() && c >= 0.0) {
                return Err(invalid(
                    "carbon_intensity_g_per_kwh",
                    c,
                    carbon_origin,
                    "must be a number >= 0",
                ));
            }
        }
        let (pue, pue_origin) = l.pick(&args.pue, &file.pue, defaults::PUE, "pue", "JOULEGATE_PUE");
        if !(pue.is_finite() && pue >= 1.0) {
            return Err(invalid("pue", pue, pue_origin, "must be a number >= 1.0"));
        }
        let (key_salt, _) = l.pick(
            &args.key_salt.clone().map(Some),
            &file.key_salt.clone().map(Some),
            None,
            "key-salt",
            "JOULEGATE_KEY_SALT",
        );
        let idle_watts = match l.pick(
            &args.idle_watts.map(Some),
            &file.idle_watts.map(Some),
            None,
            "idle-watts",
            "JOULEGATE_IDLE_WATTS",
        ) {
            (Some(w), origin) => Some(non_negative("idle_watts", (w, origin))?),
            (None, _) => None,
        };
        let prefill_joules_per_token = non_negative(
            "prefill_joules_per_token",
            l.pick(
                &args.prefill_joules_per_token,
                &file.prefill_joules_per_token,
                defaults::PREFILL_JOULES_PER_TOKEN,
                "prefill-joules-per-token",
                "JOULEGATE_PREFILL_JOULES_PER_TOKEN",
            ),
        )?;
        let decode_joules_per_token = non_negative(
            "decode_joules_per_token",
            l.pick(
                &args.decode_joules_per_token,
                &file.decode_joules_per_token,
                defaults::DECODE_JOULES_PER_TOKEN,
                "decode-joules-per-token",
                "JOULEGATE_DECODE_JOULES_PER_TOKEN",
            ),
        )?;
        let context_joules_per_token = non_negative(
            "context_joules_per_token",
            l.pick(
                &args.context_joules_per_token,
                &file.context_joules_per_token,
                defaults::CONTEXT_JOULES_PER_TOKEN,
                "context-joules-per-token",
                "JOULEGATE_CONTEXT_JOULES_PER_TOKEN",
            ),
        )?;
        let (lag_lo, lag_hi) = defaults::SETTLE_LAG_MS_RANGE;
        let (settle_lag_ms, lag_origin) = l.pick(
            &args.settle_lag_ms,
            &file.settle_lag_ms,
            defaults::SETTLE_LAG_MS,
            "settle-lag-ms",
            "JOULEGATE_SETTLE_LAG_MS",
        );
        if !(lag_lo..=lag_hi).contains(&settle_lag_ms) {
            return Err(invalid(
                "settle_lag_ms",
                settle_lag_ms,
                lag_origin,
                "must be between 100 and 60000 (ms)",
            ));
        }
        if prefill_joules_per_token + decode_joules_per_token <= 0.0 {
            return Err(invalid(
                "decode_joules_per_token",
                decode_joules_per_token,
                Origin::Flag {
                    flag: "decode-joules-per-token",
                    env: "JOULEGATE_DECODE_JOULES_PER_TOKEN",
                },
                "prefill and decode weights cannot both be 0",
            ));
        }
        let record_capacity = positive(
            "record_capacity",
            l.pick(
                &args.record_capacity,
                &file.record_capacity,
                defaults::RECORD_CAPACITY,
                "record-capacity",
                "JOULEGATE_RECORD_CAPACITY",
            ),
        )?;
        let max_label_values = positive(
            "max_label_values",
            l.pick(
                &args.max_label_values,
                &file.max_label_values,
                defaults::MAX_LABEL_VALUES,
                "max-label-values",
                "JOULEGATE_MAX_LABEL_VALUES",
            ),
        )?;
        let (metrics_per_key, _) = l.pick(
            &args.metrics_per_key,
            &file.metrics_per_key,
            false,
            "metrics-per-key",
            "JOULEGATE_METRICS_PER_KEY",
        );
        let (metrics_per_tag, _) = l.pick(
            &args.metrics_per_tag,
            &file.metrics_per_tag,
            true,
            "metrics-per-tag",
            "JOULEGATE_METRICS_PER_TAG",
        );
        let (admin_token, token_origin) = l.pick(
            &args.admin_token.clone().map(Some),
            &file.admin_token.clone().map(Some),
            None,
            "admin-token",
            "JOULEGATE_ADMIN_TOKEN",
        );
        if admin_token
            .as_ref()
            .is_some_and(|t| t.trim().is_empty() || t.chars().any(|c| c.is_whitespace()))
        {
            return Err(invalid(
                "admin_token",
                "<redacted>",
                token_origin,
                "must be non-empty without whitespace",
            ));
        }
        let (admin_allow_public, _) = l.pick(
            &args.admin_allow_public,
            &file.admin_allow_public,
            false,
            "admin-allow-public",
            "JOULEGATE_ADMIN_ALLOW_PUBLIC",
        );
        if admin_token.is_none() && !admin_allow_public && !admin_listen.ip().is_loopback() {
            return Err(invalid(
                "admin_listen",
                admin_listen,
                admin_origin,
                "a non-loopback admin listener needs `admin_token` (or `admin_allow_public = true` to serve /stats, /metrics and /requests to anyone who can reach it)",
            ));
        }
        let (request_log, _) = l.pick(
            &args.request_log.clone().map(Some),
            &file.request_log.clone().map(Some),
            None,
            "request-log",
            "JOULEGATE_REQUEST_LOG",
        );
        let request_log_max_bytes = positive(
            "request_log_max_bytes",
            l.pick(
                &args.request_log_max_bytes,
                &file.request_log_max_bytes,
                defaults::REQUEST_LOG_MAX_BYTES,
                "request-log-max-bytes",
                "JOULEGATE_REQUEST_LOG_MAX_BYTES",
            ),
        )?;
        let request_log_files = positive(
            "request_log_files",
            l.pick(
                &args.request_log_files,
                &file.request_log_files,
                defaults::REQUEST_LOG_FILES,
                "request-log-files",
                "JOULEGATE_REQUEST_LOG_FILES",
            ),
        )?;
        let otel = super::otel::resolve(&l, args, file)?;
        let log_format = super::resolve_log_format(
            args.log_format.as_deref(),
            file.log_format.as_deref(),
            file_path,
        )?;
        Ok(Config {
            log_format,
            idle_watts,
            prefill_joules_per_token,
            decode_joules_per_token,
            context_joules_per_token,
            settle_lag: Duration::from_millis(settle_lag_ms),
            record_capacity: usize::try_from(record_capacity).unwrap_or(usize::MAX),
            max_label_values: usize::try_from(max_label_values).unwrap_or(usize::MAX),
            metrics_per_key,
            metrics_per_tag,
            admin_token,
            request_log,
            request_log_max_bytes,
            request_log_files: usize::try_from(request_log_files).unwrap_or(usize::MAX),
            otel,
            max_buffered_response_bytes,
            meters,
            sample_interval: Duration::from_millis(interval_ms),
            meter_period_ms,
            inject_usage,
            energy_in_usage,
            absent_include_usage,
            upstream_forces_usage,
            response_energy,
            response_energy_max_wait: Duration::from_millis(max_wait_ms),
            bytes_per_token,
            carbon_intensity_g_per_kwh,
            pue,
            key_salt,
            listen,
            upstream,
            admin_listen,
            max_body_bytes,
            max_inspect_bytes,
            max_inspect_total_bytes,
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            max_inflight_requests,
            max_inflight_tokens,
            max_queue,
            queue_timeout: Duration::from_millis(queue_timeout_ms),
            admission_default_max_tokens,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            upstream_header_timeout: Duration::from_millis(header_timeout_ms),
            upstream_idle_timeout: Duration::from_millis(upstream_idle_timeout_ms),
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            admin_allow_public,
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
        })
    }

    /// The effective configuration as TOML, for `--print-config`.
    pub fn to_toml(&self) -> String {
        let mirror = FileConfig {
            listen: Some(self.listen.to_string()),
            upstream: Some(self.upstream.base()),
            admin_listen: Some(self.admin_listen.to_string()),
            max_body_bytes: self.max_body_bytes,
            max_inspect_bytes: Some(self.max_inspect_bytes),
            max_inspect_total_bytes: Some(self.max_inspect_total_bytes),
            max_connections: Some(self.max_connections as u64),
            max_inflight_requests: Some(self.max_inflight_requests),
            max_inflight_tokens: Some(self.max_inflight_tokens),
            max_queue: Some(self.max_queue),
            queue_timeout_ms: Some(self.queue_timeout.as_millis() as u64),
            admission_default_max_tokens: Some(self.admission_default_max_tokens),
            connect_timeout_ms: Some(self.connect_timeout.as_millis() as u64),
            upstream_header_timeout_ms: Some(self.upstream_header_timeout.as_millis() as u64),
            upstream_idle_timeout_ms: Some(self.upstream_idle_timeout.as_millis() as u64),
            header_read_timeout_ms: Some(self.header_read_timeout.as_millis() as u64),
            admin_allow_public: Some(self.admin_allow_public),
            shutdown_grace_ms: Some(self.shutdown_grace.as_millis() as u64),
            max_buffered_response_bytes: Some(self.max_buffered_response_bytes),
            meters: Some(self.meters.iter().map(|m| m.to_string()).collect()),
            sample_interval_ms: Some(self.sample_interval.as_millis() as u64),
            meter_period_ms: self.meter_period_ms,
            inject_usage: Some(self.inject_usage),
            energy_in_usage: Some(self.energy_in_usage),
            absent_include_usage: Some(
                match self.absent_include_usage {
                    None => "auto",
                    Some(true) => "true",
                    Some(false) => "false",
                }
                .into(),
            ),
            upstream_forces_usage: Some(
                match self.upstream_forces_usage {
                    None => "auto",
                    Some(true) => "true",
                    Some(false) => "false",
                }
                .into(),
            ),
            response_energy: Some(self.response_energy.as_str().into()),
            response_energy_max_wait_ms: Some(self.response_energy_max_wait.as_millis() as u64),
            bytes_per_token: Some(self.bytes_per_token),
            carbon_intensity_g_per_kwh: self.carbon_intensity_g_per_kwh,
            pue: Some(self.pue),
            // A secret: shown as a placeholder, never printed.
            key_salt: self.key_salt.as_ref().map(|_| "<redacted>".into()),
            idle_watts: self.idle_watts,
            prefill_joules_per_token: Some(self.prefill_joules_per_token),
            decode_joules_per_token: Some(self.decode_joules_per_token),
            context_joules_per_token: Some(self.context_joules_per_token),
            settle_lag_ms: Some(self.settle_lag.as_millis() as u64),
            record_capacity: Some(self.record_capacity as u64),
            max_label_values: Some(self.max_label_values as u64),
            metrics_per_key: Some(self.metrics_per_key),
            metrics_per_tag: Some(self.metrics_per_tag),
            admin_token: self.admin_token.as_ref().map(|_| "<redacted>".into()),
            request_log: self.request_log.clone(),
            request_log_max_bytes: Some(self.request_log_max_bytes),
            request_log_files: Some(self.request_log_files as u64),
            otel_endpoint: self.otel.as_ref().map(|o| o.endpoint.base()),
            otel_interval_ms: self.otel.as_ref().map(|o| o.interval.as_millis() as u64),
            otel_queue: self.otel.as_ref().map(|o| o.queue as u64),
            // Header values are often credentials: names shown, values never printed.
            otel_headers: self
                .otel
                .as_ref()
                .filter(|o| !o.headers.is_empty())
                .map(|o| {
                    o.headers
                        .iter()
                        .map(|(name, _)| format!("{name}=<redacted>"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            log_format: Some(self.log_format.as_str().into()),
        };
        toml::to_string(&mirror).unwrap_or_default()
    }
}
