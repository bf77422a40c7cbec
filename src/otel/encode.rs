//! OTLP/HTTP JSON bodies (the protobuf JSON mapping of `ExportLogsServiceRequest` and
//! `ExportMetricsServiceRequest`, opentelemetry-proto v1): finished records as log records, the
//! energy books as metrics.
//!
//! Pure: times arrive as Unix nanoseconds, figures as plain snapshots; nothing here reads a clock
//! or does I/O. The mapping's rules that matter: 64-bit integers (`intValue`, `asInt`, every
//! `*UnixNano`) are JSON strings, enums are their numbers, field names are lowerCamelCase.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::accounting::{AccountingStats, Aggregate};
use crate::ledger::record::joules;
use crate::ledger::RequestRecord;

/// The `service.name` resource attribute of everything exported.
pub const SERVICE_NAME: &str = "joulegate";

/// `SEVERITY_NUMBER_INFO`.
const SEVERITY_INFO: u8 = 9;

/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u8 = 2;

/// The resource shared by logs and metrics.
fn resource() -> Value {
    json!({
        "attributes": [
            attr("service.name", json!({ "stringValue": SERVICE_NAME })),
            attr("service.version", json!({ "stringValue": env!("CARGO_PKG_VERSION") })),
        ]
    })
}

fn scope() -> Value {
    json!({ "name": "joulegate", "version": env!("CARGO_PKG_VERSION") })
}

fn attr(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

fn string_attr(key: &str, value: &str) -> Value {
    attr(key, json!({ "stringValue": value }))
}

/// An OTLP `AnyValue` of a JSON scalar; `None` for null (an absent attribute, not an empty one)
/// and for what a record never holds (arrays, objects).
fn any_value(v: &Value) -> Option<Value> {
    Some(match v {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Bool(b) => json!({ "boolValue": b }),
        // Integers stay integers (`intValue`, a string in the JSON mapping); floats are doubles.
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => json!({ "intValue": u.to_string() }),
            (None, Some(i), _) => json!({ "intValue": i.to_string() }),
            (None, None, Some(f)) => json!({ "doubleValue": f }),
            _ => return None,
        },
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    })
}

/// One record as a log record: every field `/requests/{id}` serves, under the same name, as an
/// attribute (null fields left out); the time is the request's end (its arrival if it has none).
fn log_record(r: &RequestRecord, time_unix_ns: u64, observed_unix_ns: u64) -> Value {
    let fields = match serde_json::to_value(r) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let attributes: Vec<Value> = fields
        .iter()
        .filter_map(|(k, v)| any_value(v).map(|v| attr(k, v)))
        .collect();
    json!({
        "timeUnixNano": time_unix_ns.to_string(),
        "observedTimeUnixNano": observed_unix_ns.to_string(),
        "severityNumber": SEVERITY_INFO,
        "severityText": "INFO",
        "body": { "stringValue": "request finished" },
        "attributes": attributes,
    })
}

/// The `/v1/logs` body of a batch of records. `time_of` maps a record to its Unix time, ns.
pub fn logs_body(
    records: &[Arc<RequestRecord>],
    time_of: impl Fn(&RequestRecord) -> u64,
    observed_unix_ns: u64,
) -> Vec<u8> {
    let log_records: Vec<Value> = records
        .iter()
        .map(|r| log_record(r, time_of(r), observed_unix_ns))
        .collect();
    let body = json!({
        "resourceLogs": [{
            "resource": resource(),
            "scopeLogs": [{ "scope": scope(), "logRecords": log_records }],
        }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// What one metrics export reads: copies published by accounting and the sampler.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    /// Accounting's books.
    pub stats: AccountingStats,
    /// Per-model aggregates (bounded by `max_label_values`; the overflow row is `other`).
    pub models: Vec<(String, Aggregate)>,
    /// The meters' summed power, watts, when known.
    pub power_w: Option<f64>,
    /// When the counters started (the app's start), Unix ns.
    pub start_unix_ns: u64,
    /// Now, Unix ns.
    pub now_unix_ns: u64,
}

/// A point of a cumulative Sum or a Gauge.
enum Num {
    Double(f64),
    Int(u64),
}

struct Metrics<'a> {
    snap: &'a MetricsSnapshot,
    out: Vec<Value>,
}

impl Metrics<'_> {
    fn point(&self, attributes: Vec<Value>, v: Num, cumulative: bool) -> Value {
        let mut p = json!({
            "attributes": attributes,
            "timeUnixNano": self.snap.now_unix_ns.to_string(),
        });
        if cumulative {
            p["startTimeUnixNano"] = json!(self.snap.start_unix_ns.to_string());
        }
        match v {
            Num::Double(d) => p["asDouble"] = json!(d),
            Num::Int(i) => p["asInt"] = json!(i.to_string()),
        }
        p
    }

    /// A monotonic cumulative Sum.
    fn sum(&mut self, name: &str, unit: &str, description: &str, points: Vec<(Vec<Value>, Num)>) {
        let data_points: Vec<Value> = points
            .into_iter()
            .map(|(a, v)| self.point(a, v, true))
            .collect();
        self.out.push(json!({
            "name": name,
            "unit": unit,
            "description": description,
            "sum": {
                "aggregationTemporality": CUMULATIVE,
                "isMonotonic": true,
                "dataPoints": data_points,
            },
        }));
    }

    fn gauge(&mut self, name: &str, unit: &str, description: &str, v: Num) {
        let p = self.point(Vec::new(), v, false);
        self.out.push(json!({
            "name": name,
            "unit": unit,
            "description": description,
            "gauge": { "dataPoints": [p] },
        }));
    }
}

/// The `/v1/metrics` body: energy books (measured, attributed, idle, unattributed, active),
/// requests by status, tokens, per-model energy, tokens and requests as cumulative Sums since
/// start; power and requests in flight as Gauges.
pub fn metrics_body(snap: &MetricsSnapshot) -> Vec<u8> {
    let mut m = Metrics {
        snap,
        out: Vec::new(),
    };
    let st = &snap.stats;
    let t = &st.totals;
    for (name, description, uj) in [
        (
            "joulegate.energy.measured",
            "Energy measured by the meters.",
            t.measured_uj,
        ),
        (
            "joulegate.energy.attributed",
            "Measured energy attributed to requests.",
            t.attributed_uj,
        ),
        (
            "joulegate.energy.idle",
            "Measured energy drawn while no request was in flight.",
            t.idle_uj,
        ),
        (
            "joulegate.energy.unattributed",
            "Measured energy that could not be placed on a request.",
            t.unattributed_uj,
        ),
        (
            "joulegate.energy.active",
            "Attributed energy above the idle baseline.",
            t.active_uj,
        ),
    ] {
        m.sum(
            name,
            "J",
            description,
            vec![(Vec::new(), Num::Double(joules(uj)))],
        );
    }
    let r = &st.requests;
    let by_status: Vec<(Vec<Value>, Num)> = [
        ("ok", r.ok),
        ("estimated", r.estimated),
        ("unavailable", r.unavailable),
        ("aborted", r.aborted),
        ("error", r.error),
    ]
    .into_iter()
    .map(|(s, n)| (vec![string_attr("status", s)], Num::Int(n)))
    .collect();
    m.sum(
        "joulegate.requests",
        "{request}",
        "Finished requests, by the status of their energy figure.",
        by_status,
    );
    m.sum(
        "joulegate.tokens",
        "{token}",
        "Tokens of finished requests.",
        vec![
            (
                vec![string_attr("token.type", "prompt")],
                Num::Int(st.prompt_tokens),
            ),
            (
                vec![string_attr("token.type", "completion")],
                Num::Int(st.completion_tokens),
            ),
        ],
    );
    let model = |name: &str| string_attr("model", name);
    m.sum(
        "joulegate.model.energy",
        "J",
        "Energy attributed to finished requests, by model.",
        snap.models
            .iter()
            .map(|(k, a)| (vec![model(k)], Num::Double(joules(a.energy_uj))))
            .collect(),
    );
    m.sum(
        "joulegate.model.requests",
        "{request}",
        "Finished requests, by model.",
        snap.models
            .iter()
            .map(|(k, a)| (vec![model(k)], Num::Int(a.requests)))
            .collect(),
    );
    m.sum(
        "joulegate.model.tokens",
        "{token}",
        "Tokens of finished requests, by model.",
        snap.models
            .iter()
            .flat_map(|(k, a)| {
                [
                    (
                        vec![model(k), string_attr("token.type", "prompt")],
                        Num::Int(a.prompt_tokens),
                    ),
                    (
                        vec![model(k), string_attr("token.type", "completion")],
                        Num::Int(a.completion_tokens),
                    ),
                ]
            })
            .collect(),
    );
    m.sum(
        "joulegate.otel.records.dropped",
        "{record}",
        "Finished records not exported because the export queue was full.",
        vec![(Vec::new(), Num::Int(st.records_not_exported))],
    );
    if let Some(w) = snap.power_w {
        m.gauge(
            "joulegate.power",
            "W",
            "Summed power of the metered devices.",
            Num::Double(w),
        );
    }
    m.gauge(
        "joulegate.requests.in_flight",
        "{request}",
        "Requests in flight or awaiting settlement.",
        Num::Int(st.in_flight),
    );
    let body = json!({
        "resourceMetrics": [{
            "resource": resource(),
            "scopeMetrics": [{ "scope": scope(), "metrics": m.out }],
        }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::RecordStatus;

    fn record() -> RequestRecord {
        RequestRecord {
            id: "jg-0000000000000007".into(),
            model: Some("llama".into()),
            endpoint: "chat.completions".into(),
            key_hash: None,
            tag: Some("run-a".into()),
            stream: true,
            arrival: "2026-01-01T00:00:00.000000Z".into(),
            first_token: None,
            end: Some("2026-01-01T00:00:01.000000Z".into()),
            prompt_tokens: 12,
            completion_tokens: 3,
            tokens_exact: true,
            energy_joules: 2.0,
            active_joules: 1.5,
            prefill_joules: 0.5,
            decode_joules: 1.5,
            co2_grams: None,
            status: RecordStatus::Ok,
            attribution: Default::default(),
            key: 7,
            arrival_ns: 0,
            end_ns: 0,
        }
    }

    fn attrs(v: &Value) -> Map<String, Value> {
        v["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .map(|a| {
                (
                    a["key"].as_str().expect("key").to_owned(),
                    a["value"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_record_becomes_a_log_record_with_typed_attributes() {
        let body = logs_body(&[Arc::new(record())], |_| 1_700_000_000_000_000_123, 42);
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        let rl = &v["resourceLogs"][0];
        assert_eq!(
            attrs(&rl["resource"])["service.name"],
            json!({ "stringValue": "joulegate" })
        );
        let lr = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(lr["timeUnixNano"], "1700000000000000123");
        assert_eq!(lr["observedTimeUnixNano"], "42");
        assert_eq!(lr["severityNumber"], 9);
        let a = attrs(lr);
        assert_eq!(a["id"], json!({ "stringValue": "jg-0000000000000007" }));
        assert_eq!(a["model"], json!({ "stringValue": "llama" }));
        assert_eq!(a["prompt_tokens"], json!({ "intValue": "12" }));
        assert_eq!(a["energy_joules"], json!({ "doubleValue": 2.0 }));
        assert_eq!(a["stream"], json!({ "boolValue": true }));
        assert_eq!(a["status"], json!({ "stringValue": "ok" }));
        assert_eq!(a["attribution"], json!({ "stringValue": "estimated" }));
        // Null fields are absent, and fields the record does not serialise never appear.
        for absent in ["key_hash", "first_token", "co2_grams", "key", "arrival_ns"] {
            assert!(!a.contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn counters_become_cumulative_sums_and_gauges() {
        let mut stats = AccountingStats::default();
        stats.totals.measured_uj = 3_000_000;
        stats.totals.attributed_uj = 2_000_000;
        stats.requests.ok = 4;
        stats.prompt_tokens = 10;
        stats.records_not_exported = 1;
        let a = Aggregate {
            requests: 4,
            energy_uj: 2_000_000,
            completion_tokens: 8,
            ..Aggregate::default()
        };
        let snap = MetricsSnapshot {
            stats,
            models: vec![("llama".into(), a)],
            power_w: Some(250.5),
            start_unix_ns: 100,
            now_unix_ns: 200,
        };
        let v: Value = serde_json::from_slice(&metrics_body(&snap)).expect("JSON");
        let metrics = v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .expect("metrics")
            .clone();
        let named = |n: &str| {
            metrics
                .iter()
                .find(|m| m["name"] == n)
                .unwrap_or_else(|| panic!("{n}"))
                .clone()
        };
        let measured = named("joulegate.energy.measured");
        assert_eq!(measured["unit"], "J");
        assert_eq!(measured["sum"]["aggregationTemporality"], 2);
        assert_eq!(measured["sum"]["isMonotonic"], true);
        let p = &measured["sum"]["dataPoints"][0];
        assert_eq!(p["asDouble"], 3.0);
        assert_eq!(p["startTimeUnixNano"], "100");
        assert_eq!(p["timeUnixNano"], "200");
        let ok = named("joulegate.requests")["sum"]["dataPoints"]
            .as_array()
            .expect("points")
            .iter()
            .find(|p| attrs(p)["status"] == json!({ "stringValue": "ok" }))
            .expect("ok point")["asInt"]
            .clone();
        assert_eq!(ok, "4");
        let me = &named("joulegate.model.energy")["sum"]["dataPoints"][0];
        assert_eq!(attrs(me)["model"], json!({ "stringValue": "llama" }));
        assert_eq!(me["asDouble"], 2.0);
        assert_eq!(
            named("joulegate.model.tokens")["sum"]["dataPoints"][1]["asInt"],
            "8"
        );
        assert_eq!(
            named("joulegate.otel.records.dropped")["sum"]["dataPoints"][0]["asInt"],
            "1"
        );
        let power = named("joulegate.power");
        assert_eq!(power["gauge"]["dataPoints"][0]["asDouble"], 250.5);
        assert!(power["gauge"]["dataPoints"][0]
            .get("startTimeUnixNano")
            .is_none());
    }
}
