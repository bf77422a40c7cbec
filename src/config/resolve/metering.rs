//! The metering keys: meters, sampling interval and meter period, and how usage and energy reach
//! responses (`meters` .. `response_energy_max_wait_ms`), and the upstream's queue gauges (`upstream_metrics`).

use super::layer::{invalid, Layer};
use crate::cli::ServeArgs;
use crate::config::{defaults, ConfigError, FileConfig, ResponseEnergy};
use crate::meter::spec::MeterSpec;

/// The metering keys, validated; durations still in milliseconds.
pub(super) struct Metering {
    pub(super) meters: Vec<MeterSpec>,
    pub(super) interval_ms: u64,
    pub(super) meter_period_ms: Option<u64>,
    pub(super) inject_usage: bool,
    pub(super) energy_in_usage: bool,
    pub(super) absent_include_usage: Option<bool>,
    pub(super) upstream_forces_usage: Option<bool>,
    pub(super) response_energy: ResponseEnergy,
    pub(super) max_wait_ms: u64,
    pub(super) upstream_metrics: bool,
    pub(super) upstream_metrics_interval_ms: u64,
}

/// Resolves and validates the meters, the sampling and how usage and energy reach responses, in the order [`crate::config::Config::resolve`] always did.
pub(super) fn resolve(
    l: &Layer<'_>,
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Metering, ConfigError> {
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
    let (metrics_text, metrics_origin) = l.pick(
        &args.upstream_metrics,
        &file.upstream_metrics,
        defaults::UPSTREAM_METRICS.into(),
        "upstream-metrics",
        "JOULEGATE_UPSTREAM_METRICS",
    );
    let upstream_metrics = match metrics_text.as_str() {
        "auto" => true,
        "off" => false,
        _ => {
            return Err(invalid(
                "upstream_metrics",
                &metrics_text,
                metrics_origin,
                "expected auto or off",
            ))
        }
    };
    let (upstream_metrics_interval_ms, interval_origin) = l.pick(
        &args.upstream_metrics_interval_ms,
        &file.upstream_metrics_interval_ms,
        defaults::UPSTREAM_METRICS_INTERVAL_MS,
        "upstream-metrics-interval-ms",
        "JOULEGATE_UPSTREAM_METRICS_INTERVAL_MS",
    );
    let (lo, hi) = defaults::UPSTREAM_METRICS_INTERVAL_MS_RANGE;
    if !(lo..=hi).contains(&upstream_metrics_interval_ms) {
        return Err(invalid(
            "upstream_metrics_interval_ms",
            upstream_metrics_interval_ms,
            interval_origin,
            format!("must be within {lo}..={hi} ms"),
        ));
    }
    Ok(Metering {
        meters,
        interval_ms,
        meter_period_ms,
        inject_usage,
        energy_in_usage,
        absent_include_usage,
        upstream_forces_usage,
        response_energy,
        max_wait_ms,
        upstream_metrics,
        upstream_metrics_interval_ms,
    })
}
