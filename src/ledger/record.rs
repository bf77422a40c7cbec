//! The finished-request record: what `/requests/{id}` serves and the JSONL log writes.
//!
//! Owns the record's shape (JSON field names fixed by DESIGN.md §3), its status vocabulary and the
//! carbon arithmetic. Pure: times arrive already formatted, nothing here reads a clock.

use serde::Serialize;

/// The status of a record's energy figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// Completed, fully measured.
    Ok,
    /// Completed, but part of its life was not measured: the figure is a lower bound.
    Estimated,
    /// No energy was measured for it at all.
    Unavailable,
    /// The client went away before the end.
    Aborted,
    /// The upstream failed.
    Error,
}

impl RecordStatus {
    /// Every status, in a fixed order (for counters).
    pub const ALL: [RecordStatus; 5] = [
        RecordStatus::Ok,
        RecordStatus::Estimated,
        RecordStatus::Unavailable,
        RecordStatus::Aborted,
        RecordStatus::Error,
    ];

    /// The label used in JSON, headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Ok => "ok",
            RecordStatus::Estimated => "estimated",
            RecordStatus::Unavailable => "unavailable",
            RecordStatus::Aborted => "aborted",
            RecordStatus::Error => "error",
        }
    }

    /// Chooses the status. `unavailable` wins (a zero figure must not read as measured), then how
    /// the request ended, then `estimated` for partial coverage.
    pub fn choose(outcome: crate::observe::Outcome, coverage: super::Coverage) -> RecordStatus {
        use crate::observe::Outcome;
        match (coverage, outcome) {
            (super::Coverage::None, _) => RecordStatus::Unavailable,
            (_, Outcome::Aborted) => RecordStatus::Aborted,
            (_, Outcome::Error) => RecordStatus::Error,
            (super::Coverage::Partial, _) => RecordStatus::Estimated,
            (super::Coverage::Full, _) => RecordStatus::Ok,
        }
    }
}

/// How a request's work was seen, so users know which figures to trust most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// Its tokens were seen as they came (a stream with continuous usage): work placed where the
    /// engine did it.
    Streamed,
    /// The engine's own timing of it (vLLM's per-request `metrics`: queue, prefill and
    /// generation times) placed its work.
    EngineMetrics,
    /// Neither: its work was placed from estimated rates (a non-streamed answer without
    /// `metrics`).
    #[default]
    Estimated,
}

impl Attribution {
    /// How a request was seen, from its final progress.
    pub fn of(p: &crate::observe::ProgressSnapshot) -> Attribution {
        if p.progress_visible {
            Attribution::Streamed
        } else if p.engine_timed {
            Attribution::EngineMetrics
        } else {
            Attribution::Estimated
        }
    }

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Streamed => "streamed",
            Attribution::EngineMetrics => "engine_metrics",
            Attribution::Estimated => "estimated",
        }
    }
}

/// One finished request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Public id (`jg-…`), as in `x-energy-request-id`.
    pub id: String,
    /// The request's `model`.
    pub model: Option<String>,
    /// API label (`chat.completions`, …).
    pub endpoint: String,
    /// Keyed hash of the API key.
    pub key_hash: Option<String>,
    /// The `x-energy-tag` header.
    pub tag: Option<String>,
    /// Whether the response streamed.
    pub stream: bool,
    /// Arrival, RFC 3339.
    pub arrival: String,
    /// First completion token, RFC 3339.
    pub first_token: Option<String>,
    /// End of the response, RFC 3339.
    pub end: Option<String>,
    /// Prompt tokens (server count when `tokens_exact`).
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Whether both counts came from the server's usage.
    pub tokens_exact: bool,
    /// Attributed energy, joules.
    pub energy_joules: f64,
    /// Of it, above the idle baseline.
    pub active_joules: f64,
    /// Of it, prefill.
    pub prefill_joules: f64,
    /// Of it, decode.
    pub decode_joules: f64,
    /// Carbon, grams CO2e, when an intensity is configured.
    pub co2_grams: Option<f64>,
    /// See [`RecordStatus`].
    pub status: RecordStatus,
    /// How its work was seen (see [`Attribution`]).
    pub attribution: Attribution,
    /// Numeric id (not serialised; `/requests/{id}` looks records up by it).
    #[serde(skip)]
    pub key: u64,
    /// Arrival, clock ns (not serialised; for throughput and mean power).
    #[serde(skip)]
    pub arrival_ns: u64,
    /// End, clock ns (not serialised).
    #[serde(skip)]
    pub end_ns: u64,
}

/// Joules from micro-joules.
pub fn joules(uj: u64) -> f64 {
    uj as f64 / 1e6
}

/// `co2_g = kWh × intensity × PUE`, or `None` without an intensity.
pub fn co2_grams(energy_uj: u64, intensity_g_per_kwh: Option<f64>, pue: f64) -> Option<f64> {
    intensity_g_per_kwh.map(|ci| joules(energy_uj) / 3.6e6 * ci * pue)
}

#[cfg(test)]
impl RequestRecord {
    /// A finished `ok` record with round figures (prompt tokens `i`, 1 J), for the tests of what
    /// consumes records (the log writer, the exporter).
    pub(crate) fn sample(i: u64) -> RequestRecord {
        RequestRecord {
            id: crate::observe::format_public_id(i),
            model: Some("m".into()),
            endpoint: "chat.completions".into(),
            key_hash: None,
            tag: None,
            stream: false,
            arrival: "2026-01-01T00:00:00.000000Z".into(),
            first_token: None,
            end: None,
            prompt_tokens: i,
            completion_tokens: 1,
            tokens_exact: true,
            energy_joules: 1.0,
            active_joules: 0.5,
            prefill_joules: 0.25,
            decode_joules: 0.75,
            co2_grams: None,
            status: RecordStatus::Ok,
            attribution: Default::default(),
            key: i,
            arrival_ns: 0,
            end_ns: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Coverage;
    use crate::observe::Outcome;

    #[test]
    fn status_precedence() {
        assert_eq!(
            RecordStatus::choose(Outcome::Ok, Coverage::Full),
            RecordStatus::Ok
        );
        assert_eq!(
            RecordStatus::choose(Outcome::Ok, Coverage::Partial),
            RecordStatus::Estimated
        );
        assert_eq!(
            RecordStatus::choose(Outcome::Aborted, Coverage::None),
            RecordStatus::Unavailable
        );
        assert_eq!(
            RecordStatus::choose(Outcome::Aborted, Coverage::Partial),
            RecordStatus::Aborted
        );
        assert_eq!(
            RecordStatus::choose(Outcome::Error, Coverage::Full),
            RecordStatus::Error
        );
    }

    #[test]
    fn carbon_and_field_names() {
        assert_eq!(co2_grams(3_600_000_000_000, Some(400.0), 1.5), Some(600.0));
        assert_eq!(co2_grams(1, None, 1.0), None);
        let r = RequestRecord {
            id: "jg-0000000000000001".into(),
            model: Some("m".into()),
            endpoint: "chat.completions".into(),
            key_hash: None,
            tag: Some("t".into()),
            stream: true,
            arrival: "a".into(),
            first_token: None,
            end: Some("e".into()),
            prompt_tokens: 1,
            completion_tokens: 2,
            tokens_exact: true,
            energy_joules: 1.5,
            active_joules: 1.0,
            prefill_joules: 0.5,
            decode_joules: 1.0,
            co2_grams: None,
            status: RecordStatus::Estimated,
            attribution: Default::default(),
            key: 1,
            arrival_ns: 0,
            end_ns: 0,
        };
        let v = serde_json::to_value(&r).expect("serialises");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "id",
                "model",
                "endpoint",
                "key_hash",
                "tag",
                "stream",
                "arrival",
                "first_token",
                "end",
                "prompt_tokens",
                "completion_tokens",
                "tokens_exact",
                "energy_joules",
                "active_joules",
                "prefill_joules",
                "decode_joules",
                "co2_grams",
                "status",
                "attribution"
            ]
        );
        assert_eq!(v["status"], "estimated");
        assert_eq!(v["attribution"], "estimated");
    }
}
