//! The OpenTelemetry export settings (`otel_*` keys): resolved from the layers like every key, but
//! only usable in a binary built with the `otel` cargo feature. Without it, setting any of them is
//! a start-up error that says so, rather than a silently ignored key.
//!
//! Owns the typed [`OtelConfig`] and the validation of its raw values; the exporter itself lives in
//! `crate::otel` (compiled only with the feature).

use std::time::Duration;

use serde::Serialize;

use super::resolve::{invalid, Layer};
use super::{defaults, ConfigError, FileConfig, Origin, UpstreamUrl};
use crate::cli::ServeArgs;

/// Where and how finished records and energy counters are exported over OTLP/HTTP (JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtelConfig {
    /// Base URL of the OTLP/HTTP receiver; records go to `{endpoint}/v1/logs`, counters to
    /// `{endpoint}/v1/metrics`.
    #[serde(serialize_with = "base_url")]
    pub endpoint: UpstreamUrl,
    /// How often counters are exported and queued records flushed.
    #[serde(rename = "interval_ms", serialize_with = "super::millis::serialize")]
    pub interval: Duration,
    /// Records waiting for export at most; more are dropped and counted.
    pub queue: usize,
    /// Extra request headers (an API key of a hosted backend). Never printed.
    #[serde(skip)]
    pub headers: Vec<(String, String)>,
}

fn base_url<S: serde::Serializer>(u: &UpstreamUrl, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&u.base())
}

/// What the error says when the binary cannot export.
const NOT_BUILT: &str = "this joulegate was built without the `otel` feature; rebuild with \
                         `cargo build --release --features otel` to export to OpenTelemetry";

/// Resolves the `otel_*` keys: `None` when `otel_endpoint` is unset.
pub(super) fn resolve(
    l: &Layer<'_>,
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Option<OtelConfig>, ConfigError> {
    let (endpoint, endpoint_origin) = l.pick(
        &args.otel_endpoint.clone().map(Some),
        &file.otel_endpoint.clone().map(Some),
        None,
        "otel-endpoint",
        "JOULEGATE_OTEL_ENDPOINT",
    );
    let (interval_ms, interval_origin) = l.pick(
        &args.otel_interval_ms.map(Some),
        &file.otel_interval_ms.map(Some),
        None,
        "otel-interval-ms",
        "JOULEGATE_OTEL_INTERVAL_MS",
    );
    let (queue, queue_origin) = l.pick(
        &args.otel_queue.map(Some),
        &file.otel_queue.map(Some),
        None,
        "otel-queue",
        "JOULEGATE_OTEL_QUEUE",
    );
    let (headers, headers_origin) = l.pick(
        &args.otel_headers.clone().map(Some),
        &file.otel_headers.clone().map(Some),
        None,
        "otel-headers",
        "JOULEGATE_OTEL_HEADERS",
    );
    // The first key that is set names the error.
    let set: Option<(&'static str, String, Origin)> = [
        ("otel_endpoint", endpoint.clone(), endpoint_origin.clone()),
        (
            "otel_interval_ms",
            interval_ms.map(|v| v.to_string()),
            interval_origin.clone(),
        ),
        (
            "otel_queue",
            queue.map(|v| v.to_string()),
            queue_origin.clone(),
        ),
        (
            "otel_headers",
            headers.as_ref().map(|_| "<redacted>".to_owned()),
            headers_origin.clone(),
        ),
    ]
    .into_iter()
    .find_map(|(k, v, o)| v.map(|v| (k, v, o)));
    let Some((first_key, first_value, first_origin)) = set else {
        return Ok(None);
    };
    if !cfg!(feature = "otel") {
        return Err(invalid(first_key, first_value, first_origin, NOT_BUILT));
    }
    let Some(endpoint_raw) = endpoint else {
        return Err(invalid(
            first_key,
            first_value,
            first_origin,
            "has no effect without `otel_endpoint`",
        ));
    };
    let endpoint = UpstreamUrl::parse(&endpoint_raw).map_err(|reason| {
        invalid(
            "otel_endpoint",
            &endpoint_raw,
            endpoint_origin,
            format!("{reason} (the OTLP/HTTP base URL, e.g. http://127.0.0.1:4318)"),
        )
    })?;
    let interval_ms = interval_ms.unwrap_or(defaults::OTEL_INTERVAL_MS);
    let (lo, hi) = defaults::OTEL_INTERVAL_MS_RANGE;
    if !(lo..=hi).contains(&interval_ms) {
        return Err(invalid(
            "otel_interval_ms",
            interval_ms,
            interval_origin,
            format!("must be between {lo} and {hi}"),
        ));
    }
    let queue = queue.unwrap_or(defaults::OTEL_QUEUE);
    if queue == 0 || queue > defaults::OTEL_QUEUE_LIMIT {
        return Err(invalid(
            "otel_queue",
            queue,
            queue_origin,
            format!("must be between 1 and {}", defaults::OTEL_QUEUE_LIMIT),
        ));
    }
    let headers = match headers {
        Some(text) => parse_headers(&text)
            .map_err(|reason| invalid("otel_headers", "<redacted>", headers_origin, reason))?,
        None => Vec::new(),
    };
    Ok(Some(OtelConfig {
        endpoint,
        interval: Duration::from_millis(interval_ms),
        queue: usize::try_from(queue).unwrap_or(usize::MAX),
        headers,
    }))
}

/// Parses `name=value,name=value` (the form of `OTEL_EXPORTER_OTLP_HEADERS`). Errors never
/// repeat a value: header values are often credentials.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("entry {} is not `name=value`", i + 1));
        };
        let name = name.trim();
        let value = value.trim();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("entry {}: {name:?} is not a header name", i + 1));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "entry {} ({name}): the value is not a header value",
                i + 1
            ));
        }
        out.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_errors_hide_values() {
        assert_eq!(
            parse_headers("api-key=abc, X-Team = ml ,").expect("valid"),
            [
                ("api-key".to_owned(), "abc".to_owned()),
                ("x-team".to_owned(), "ml".to_owned())
            ]
        );
        assert_eq!(parse_headers("").expect("empty"), []);
        for bad in ["novalue", "bad name=s3cret", "k=s3cret\u{7f}"] {
            let err = parse_headers(bad).unwrap_err();
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
    }
}
