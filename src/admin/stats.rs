//! `/stats`: one JSON document with the energy books, tokens and ratios, per device, model, key
//! hash and tag, P_idle, the calibration, meters and their health, admission (queue, in-flight
//! requests and tokens, rejections), uptime, versions and the effective configuration (secrets
//! are never serialised).
//!
//! Owns the document's shape and its derived figures (J/token, tokens/J, mean power, throughput,
//! carbon). It only reads copies that accounting and the sampler published.

use serde::Serialize;
use serde_json::{json, Value};

use super::AdminState;
use crate::accounting::{Aggregate, LabelTable};
use crate::clock::Clock;
use crate::ledger::record::{co2_grams, joules};

/// Figures of one group of finished requests (a model, a key hash, a tag): what a benchmark run
/// needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupStats {
    /// Finished requests.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Prompt + completion.
    pub tokens: u64,
    /// Attributed energy, joules.
    pub energy_joules: f64,
    /// Of it, above the idle baseline.
    pub active_joules: f64,
    /// Of it, prefill.
    pub prefill_joules: f64,
    /// Of it, decode.
    pub decode_joules: f64,
    /// Energy per token (prompt + completion); null without tokens.
    pub joules_per_token: Option<f64>,
    /// Energy per completion token; null without completion tokens.
    pub joules_per_completion_token: Option<f64>,
    /// Tokens per joule; null without energy.
    pub tokens_per_joule: Option<f64>,
    /// Energy per request.
    pub joules_per_request: Option<f64>,
    /// Energy over the group's span (first arrival to last end), watts.
    pub mean_power_w: Option<f64>,
    /// Completion tokens per second over the span.
    pub completion_tokens_per_s: Option<f64>,
    /// Span of the group, seconds.
    pub span_s: Option<f64>,
    /// First arrival, RFC 3339.
    pub first_arrival: Option<String>,
    /// Last end, RFC 3339.
    pub last_end: Option<String>,
    /// Carbon, grams CO2e, when an intensity is configured.
    pub co2_grams: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

impl GroupStats {
    /// The figures of `a`, with times on `clock` and carbon from the settings.
    pub fn of(a: &Aggregate, clock: &Clock, carbon: Option<f64>, pue: f64) -> Self {
        let energy = joules(a.energy_uj);
        let tokens = a.prompt_tokens.saturating_add(a.completion_tokens);
        let span_s = match (a.first_arrival_ns, a.last_end_ns) {
            (Some(s), Some(e)) if e > s => Some((e - s) as f64 / 1e9),
            _ => None,
        };
        GroupStats {
            requests: a.requests,
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            tokens,
            energy_joules: energy,
            active_joules: joules(a.active_uj),
            prefill_joules: joules(a.prefill_uj),
            decode_joules: joules(a.decode_uj),
            joules_per_token: ratio(energy, tokens as f64),
            joules_per_completion_token: ratio(energy, a.completion_tokens as f64),
            tokens_per_joule: ratio(tokens as f64, energy),
            joules_per_request: ratio(energy, a.requests as f64),
            mean_power_w: span_s.and_then(|s| ratio(energy, s)),
            completion_tokens_per_s: span_s.and_then(|s| ratio(a.completion_tokens as f64, s)),
            span_s,
            first_arrival: a.first_arrival_ns.map(|ns| clock.rfc3339(ns)),
            last_end: a.last_end_ns.map(|ns| clock.rfc3339(ns)),
            co2_grams: co2_grams(a.energy_uj, carbon, pue),
        }
    }
}

fn table(t: &LabelTable, s: &AdminState) -> Value {
    let c = &s.config;
    let rows: serde_json::Map<String, Value> = t
        .rows
        .iter()
        .map(|(k, a)| {
            let g = GroupStats::of(a, &s.clock, c.carbon_intensity_g_per_kwh, c.pue);
            (k.clone(), serde_json::to_value(g).unwrap_or(Value::Null))
        })
        .collect();
    Value::Object(rows)
}

/// The `/stats` document.
pub fn stats(s: &AdminState) -> Value {
    let st = s.accounting.stats();
    let agg = s.accounting.aggregates();
    let sampler = s.sampler.as_ref().map(|x| x.snapshot());
    let c = &s.config;
    let t = &st.totals;
    let now_ns = s.clock.now_ns();
    let tokens = st.prompt_tokens.saturating_add(st.completion_tokens);
    let measured = joules(t.measured_uj);
    let attributed = joules(t.attributed_uj);
    // Mean power over the span the books cover: the clock starts with the app, ticks end at
    // `last_tick_end_ns`.
    let books_s = st.last_tick_end_ns as f64 / 1e9;
    let energy_available = sampler.as_ref().is_some_and(|x| x.energy_available);
    json!({
        "version": {
            "joulegate": env!("CARGO_PKG_VERSION"),
            "upstream": s.upstream_version.get(),
        },
        "upstream": {
            "per_request_metrics": s.upstream_facts.per_request_metrics().as_str(),
            "forces_usage": s.upstream_semantics.get().force_include_usage,
            "forces_usage_known_from": s.upstream_semantics.force_source().as_str(),
            "queue_gauges": s.engine_gauges.to_json(c.upstream_metrics_interval),
        },
        "request_bodies": s.request_bodies.stats(),
        "admission": s.admission.stats(),
        "batch": {
            "effective": st.batch,
            "effective_buckets": crate::ledger::BATCH_BUCKETS,
            "processing_seconds": st.processing,
            "processing_buckets_seconds": crate::accounting::shared::PROCESSING_BUCKETS_S,
        },
        "started_at": s.clock.rfc3339(0),
        "uptime_s": now_ns as f64 / 1e9,
        "energy_available": energy_available,
        "totals": {
            "measured_joules": measured,
            "attributed_joules": attributed,
            "idle_joules": joules(t.idle_uj),
            "unattributed_joules": joules(t.unattributed_uj),
            "pending_joules": joules(t.pending_uj),
            "active_joules": joules(t.active_uj),
            "requests": st.requests.ok + st.requests.estimated + st.requests.unavailable
                + st.requests.aborted + st.requests.error,
            "requests_by_status": st.requests,
            "requests_by_attribution": st.attribution,
            "prompt_tokens": st.prompt_tokens,
            "completion_tokens": st.completion_tokens,
            "tokens": tokens,
            "joules_per_token": ratio(attributed, tokens as f64),
            "tokens_per_joule": ratio(tokens as f64, attributed),
            "mean_power_w": ratio(measured, books_s),
            "co2_grams": co2_grams(t.measured_uj, c.carbon_intensity_g_per_kwh, c.pue),
            "in_flight": st.in_flight,
            "ticks": t.ticks,
            "unavailable_ticks": t.unavailable_ticks,
            "held_ticks": t.held_ticks,
        },
        "idle": {
            "p_idle_w": st.p_idle_mw.map(|mw| mw as f64 / 1000.0),
            "source": st.p_idle_source,
        },
        "calibration": st.calibration,
        "rates": {
            "prefill_tokens_per_s": st.prefill_tokens_per_s,
            "decode_tokens_per_s": st.decode_tokens_per_s,
        },
        "meters": {
            "sampler": sampler.as_ref().map(|x| json!({
                "interval_ms": x.interval_ms,
                "energy_joules": joules(x.energy_uj),
                "power_w": x.power_w,
                "ticks": x.ticks,
                "merged_intervals": x.merged_intervals,
                "dropped_ticks": x.dropped_ticks,
            })),
            "unavailable": s.meters_unavailable,
        },
        "devices": sampler.as_ref().map_or(Vec::new(), |x| x.devices.clone()),
        "models": table(&agg.models, s),
        "keys": table(&agg.keys, s),
        "tags": table(&agg.tags, s),
        "label_overflow": {
            "models": agg.models.overflowed,
            "keys": agg.keys.overflowed,
            "tags": agg.tags.overflowed,
        },
        "records": {
            "capacity": c.record_capacity,
            "evicted": st.records_evicted,
            "not_logged": st.records_not_logged,
            "vanished": st.vanished,
        },
        "request_log": s.request_log.as_ref().map(|l| l.counts()),
        "otel": otel(s, &st),
        "config": c,
    })
}

/// The OpenTelemetry exporter's counters, with the records its queue could not take (null when
/// it is not configured).
#[cfg(feature = "otel")]
fn otel(s: &AdminState, st: &crate::accounting::AccountingStats) -> Value {
    match &s.otel {
        Some(o) => {
            let mut v = serde_json::to_value(o.counts()).unwrap_or(Value::Null);
            v["records_dropped"] = json!(st.records_not_exported);
            v
        }
        None => Value::Null,
    }
}

/// Built without the exporter: always null.
#[cfg(not(feature = "otel"))]
fn otel(_: &AdminState, _: &crate::accounting::AccountingStats) -> Value {
    Value::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_figures() {
        let clock = Clock::new();
        let a = Aggregate {
            requests: 2,
            prompt_tokens: 30,
            completion_tokens: 10,
            energy_uj: 8_000_000,
            active_uj: 6_000_000,
            prefill_uj: 2_000_000,
            decode_uj: 6_000_000,
            first_arrival_ns: Some(1_000_000_000),
            last_end_ns: Some(3_000_000_000),
        };
        let g = GroupStats::of(&a, &clock, Some(360.0), 1.0);
        assert_eq!(g.tokens, 40);
        assert_eq!(g.joules_per_token, Some(0.2));
        assert_eq!(g.tokens_per_joule, Some(5.0));
        assert_eq!(g.joules_per_request, Some(4.0));
        assert_eq!(g.span_s, Some(2.0));
        assert_eq!(g.mean_power_w, Some(4.0));
        assert_eq!(g.completion_tokens_per_s, Some(5.0));
        // 8 J = 8 / 3.6e6 kWh; x 360 g/kWh = 0.0008 g
        assert!((g.co2_grams.unwrap_or_default() - 0.0008).abs() < 1e-12);
        let empty = GroupStats::of(&Aggregate::default(), &clock, None, 1.0);
        assert_eq!(empty.joules_per_token, None);
        assert_eq!(empty.mean_power_w, None);
        assert_eq!(empty.co2_grams, None);
    }
}
