//! Resolution: flag/env over file over default for every key, each validated, with errors that
//! name the key, the value and where it came from.
//!
//! Parts, each resolving its keys in the order they were always checked (the first invalid key is
//! the one reported): `layer` (the layering and shared checks), `network`, `metering`, `weights` and
//! `outputs` (all private), each returning its validated values for [`Config::resolve`] to assemble.

mod layer;
mod metering;
mod network;
mod outputs;
mod weights;

use std::path::PathBuf;
use std::time::Duration;

pub(super) use layer::{invalid, Layer};

use super::{Config, ConfigError, FileConfig};
use crate::cli::ServeArgs;

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
        let net = network::resolve(&l, args, file)?;
        let met = metering::resolve(&l, args, file)?;
        let w = weights::resolve(&l, args, file)?;
        let out = outputs::resolve(
            &l,
            args,
            file,
            file_path,
            net.admin_listen,
            net.admin_origin,
        )?;
        Ok(Config {
            log_format: out.log_format,
            idle_watts: w.idle_watts,
            prefill_joules_per_token: w.prefill_joules_per_token,
            decode_joules_per_token: w.decode_joules_per_token,
            context_joules_per_token: w.context_joules_per_token,
            settle_lag: Duration::from_millis(w.settle_lag_ms),
            calibration_hold: Duration::from_millis(w.calibration_hold_ms),
            record_capacity: usize::try_from(out.record_capacity).unwrap_or(usize::MAX),
            max_label_values: usize::try_from(out.max_label_values).unwrap_or(usize::MAX),
            metrics_per_key: out.metrics_per_key,
            metrics_per_tag: out.metrics_per_tag,
            admin_token: out.admin_token,
            request_log: out.request_log,
            request_log_max_bytes: out.request_log_max_bytes,
            request_log_files: usize::try_from(out.request_log_files).unwrap_or(usize::MAX),
            otel: out.otel,
            max_buffered_response_bytes: net.max_buffered_response_bytes,
            meters: met.meters,
            sample_interval: Duration::from_millis(met.interval_ms),
            meter_period_ms: met.meter_period_ms,
            inject_usage: met.inject_usage,
            energy_in_usage: met.energy_in_usage,
            absent_include_usage: met.absent_include_usage,
            upstream_forces_usage: met.upstream_forces_usage,
            response_energy: met.response_energy,
            response_energy_max_wait: Duration::from_millis(met.max_wait_ms),
            upstream_metrics: met.upstream_metrics,
            upstream_metrics_interval: Duration::from_millis(met.upstream_metrics_interval_ms),
            bytes_per_token: w.bytes_per_token,
            carbon_intensity_g_per_kwh: w.carbon_intensity_g_per_kwh,
            pue: w.pue,
            key_salt: w.key_salt,
            listen: net.listen,
            upstream: net.upstream,
            admin_listen: net.admin_listen,
            max_body_bytes: net.max_body_bytes,
            max_inspect_bytes: net.max_inspect_bytes,
            max_inspect_total_bytes: net.max_inspect_total_bytes,
            max_connections: usize::try_from(net.max_connections).unwrap_or(usize::MAX),
            max_inflight_requests: net.max_inflight_requests,
            max_inflight_tokens: net.max_inflight_tokens,
            max_queue: net.max_queue,
            queue_timeout: Duration::from_millis(net.queue_timeout_ms),
            admission_default_max_tokens: net.admission_default_max_tokens,
            connect_timeout: Duration::from_millis(net.connect_timeout_ms),
            upstream_header_timeout: Duration::from_millis(net.header_timeout_ms),
            upstream_idle_timeout: Duration::from_millis(net.upstream_idle_timeout_ms),
            header_read_timeout: Duration::from_millis(net.header_read_timeout_ms),
            admin_allow_public: out.admin_allow_public,
            shutdown_grace: Duration::from_millis(net.shutdown_grace_ms),
        })
    }
}
