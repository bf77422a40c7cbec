//! The output keys: the record ring, metric labels, admin access (token and public listener), the
//! request log, OpenTelemetry export and the log format (`record_capacity` .. `log_format`).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::layer::{invalid, positive, Layer};
use crate::cli::ServeArgs;
use crate::config::{defaults, ConfigError, FileConfig, Origin, OtelConfig};
use crate::logging::LogFormat;

/// The output keys, validated.
pub(super) struct Outputs {
    pub(super) record_capacity: u64,
    pub(super) max_label_values: u64,
    pub(super) metrics_per_key: bool,
    pub(super) metrics_per_tag: bool,
    pub(super) admin_token: Option<String>,
    pub(super) admin_allow_public: bool,
    pub(super) request_log: Option<PathBuf>,
    pub(super) request_log_max_bytes: u64,
    pub(super) request_log_files: u64,
    pub(super) otel: Option<OtelConfig>,
    pub(super) log_format: LogFormat,
}

/// Resolves and validates the records, metrics, admin access and the outputs, in the order [`crate::config::Config::resolve`] always did.
pub(super) fn resolve(
    l: &Layer<'_>,
    args: &ServeArgs,
    file: &FileConfig,
    file_path: Option<&PathBuf>,
    admin_listen: SocketAddr,
    admin_origin: Origin,
) -> Result<Outputs, ConfigError> {
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
    let otel = crate::config::otel::resolve(l, args, file)?;
    let log_format = crate::config::resolve_log_format(
        args.log_format.as_deref(),
        file.log_format.as_deref(),
        file_path,
    )?;
    Ok(Outputs {
        record_capacity,
        max_label_values,
        metrics_per_key,
        metrics_per_tag,
        admin_token,
        admin_allow_public,
        request_log,
        request_log_max_bytes,
        request_log_files,
        otel,
        log_format,
    })
}
