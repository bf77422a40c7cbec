//! `--print-config`: the effective configuration written back as TOML, in the file's own keys,
//! with secrets (salt, admin token, OTLP header values) replaced by a placeholder.

use super::{Config, FileConfig};

impl Config {
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
            upstream_metrics: Some(if self.upstream_metrics { "auto" } else { "off" }.into()),
            upstream_metrics_interval_ms: Some(self.upstream_metrics_interval.as_millis() as u64),
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
            calibration_hold_ms: Some(self.calibration_hold.as_millis() as u64),
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
