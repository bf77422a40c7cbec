//! The request series of `/metrics`: requests by model, endpoint and status, tokens, energy by
//! model (and by tag or key hash when configured), the request-energy and J/token histograms,
//! in-flight gauges, label overflow, record and log housekeeping, build info. Owns these names.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::fmt;

use super::encode::{counter, energy_rows, family, gauge, histogram, labels, token_rows};
use super::Scrape;
use crate::accounting::Aggregates;
use crate::admin::AdminState;

pub(super) fn requests(enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
    let a = &x.aggregates;
    family(
        enc,
        "joulegate_requests",
        "Finished requests by model, endpoint and status.",
        None,
        MetricType::Counter,
        a.series.requests.iter().map(|(k, n)| {
            (
                labels([
                    ("model", &k.model),
                    ("endpoint", &k.endpoint),
                    ("status", k.status),
                ]),
                *n,
            )
        }),
    )?;
    family(
        enc,
        "joulegate_tokens",
        "Tokens of finished requests by model and kind (prompt, completion).",
        None,
        MetricType::Counter,
        token_rows("model", &a.models),
    )?;
    family(
        enc,
        "joulegate_model_energy",
        "Energy attributed to finished requests, by model.",
        Some(Unit::Joules),
        MetricType::Counter,
        energy_rows("model", &a.models, |r| r.energy_uj),
    )?;
    family(
        enc,
        "joulegate_model_active_energy",
        "Active energy of finished requests, by model.",
        Some(Unit::Joules),
        MetricType::Counter,
        energy_rows("model", &a.models, |r| r.active_uj),
    )?;
    histogram(
        enc,
        "joulegate_request_energy",
        "Energy per finished request (measured requests only).",
        Some(Unit::Joules),
        &a.series.energy_joules,
    )?;
    histogram(
        enc,
        "joulegate_request_joules_per_token",
        "Energy per token (prompt + completion) of each measured finished request.",
        None,
        &a.series.joules_per_token,
    )?;
    gauge(
        enc,
        "joulegate_requests_in_flight",
        "Requests in flight (the response is not finished).",
        None,
        x.in_flight,
    )?;
    gauge(
        enc,
        "joulegate_requests_settling",
        "Finished requests whose last intervals are not settled yet.",
        None,
        x.settling,
    )
}

/// Per-tag and per-key series, each only when configured.
pub(super) fn labelled(s: &AdminState, enc: &mut DescriptorEncoder, a: &Aggregates) -> fmt::Result {
    let c = &s.config;
    let dims = [
        (c.metrics_per_tag, "tag", &a.tags),
        (c.metrics_per_key, "key_hash", &a.keys),
    ];
    for (enabled, label, table) in dims {
        if !enabled {
            continue;
        }
        let prefix = if label == "tag" {
            "joulegate_tag"
        } else {
            "joulegate_key"
        };
        family(
            enc,
            &format!("{prefix}_requests"),
            &format!("Finished requests by {label}."),
            None,
            MetricType::Counter,
            table
                .rows
                .iter()
                .map(|(v, r)| (labels([(label, v)]), r.requests)),
        )?;
        family(
            enc,
            &format!("{prefix}_tokens"),
            &format!("Tokens of finished requests by {label} and kind."),
            None,
            MetricType::Counter,
            token_rows(label, table),
        )?;
        family(
            enc,
            &format!("{prefix}_energy"),
            &format!("Energy attributed to finished requests, by {label}."),
            Some(Unit::Joules),
            MetricType::Counter,
            energy_rows(label, table, |r| r.energy_uj),
        )?;
        family(
            enc,
            &format!("{prefix}_active_energy"),
            &format!("Active energy of finished requests, by {label}."),
            Some(Unit::Joules),
            MetricType::Counter,
            energy_rows(label, table, |r| r.active_uj),
        )?;
    }
    family(
        enc,
        "joulegate_label_overflow",
        "Requests whose label value was folded into `other` (max_label_values reached).",
        None,
        MetricType::Counter,
        [
            ("model", &a.models),
            ("key_hash", &a.keys),
            ("tag", &a.tags),
        ]
        .into_iter()
        .map(|(d, t)| (labels([("dimension", d)]), t.overflowed)),
    )
}

pub(super) fn housekeeping(s: &AdminState, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
    let st = &x.stats;
    counter(
        enc,
        "joulegate_records_evicted",
        "Finished-request records pushed out of the /requests ring.",
        None,
        st.records_evicted,
    )?;
    counter(
        enc,
        "joulegate_request_log_dropped",
        "Records the request log could not take (its queue was full): never written.",
        None,
        st.records_not_logged,
    )?;
    if let Some(log) = &s.request_log {
        let c = log.counts();
        counter(
            enc,
            "joulegate_request_log_lines",
            "Lines written to the request log.",
            None,
            c.written,
        )?;
        counter(
            enc,
            "joulegate_request_log_errors",
            "Request-log lines lost to write errors.",
            None,
            c.write_errors,
        )?;
    }
    #[cfg(feature = "otel")]
    if let Some(otel) = &s.otel {
        let c = otel.counts();
        for (name, help, v) in [
            (
                "joulegate_otel_records_dropped",
                "Finished records the OpenTelemetry export queue could not take (it was full).",
                st.records_not_exported,
            ),
            (
                "joulegate_otel_records_exported",
                "Finished records the OTLP receiver accepted.",
                c.records_exported,
            ),
            (
                "joulegate_otel_records_failed",
                "Finished records lost with a failed OTLP logs export.",
                c.records_failed,
            ),
            (
                "joulegate_otel_metric_exports",
                "OTLP metrics exports the receiver accepted.",
                c.metric_exports,
            ),
            (
                "joulegate_otel_metric_exports_failed",
                "Failed OTLP metrics exports.",
                c.metric_exports_failed,
            ),
        ] {
            counter(enc, name, help, None, v)?;
        }
    }
    family(
        enc,
        "joulegate_build_info",
        "joulegate build information (always 1).",
        None,
        MetricType::Gauge,
        [(labels([("version", env!("CARGO_PKG_VERSION"))]), 1u64)],
    )?;
    let start = s
        .clock
        .wall(0)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge(
        enc,
        "joulegate_start_time",
        "Start time of the process since the Unix epoch.",
        Some(Unit::Seconds),
        start,
    )
}
