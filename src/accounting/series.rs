//! Counters and histograms of finished requests that `/metrics` exposes: requests by (model,
//! endpoint, status) and fixed-bucket histograms of request energy and energy per token.
//!
//! Owns only these monotone tallies. They are fed by the accounting thread when it retires a
//! request (through [`super::Aggregates::add`]), so the admin listener derives its series from
//! what accounting publishes and never needs the data plane. Label sets are bounded: the model is
//! the row the bounded model table chose (`other` beyond the bound), endpoint and status are fixed
//! vocabularies.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::{RecordStatus, RequestRecord};

/// Upper bounds (joules) of the request-energy histogram: from a tiny embedding to a long
/// generation on a multi-GPU server.
pub const ENERGY_BUCKETS_J: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];

/// Upper bounds (joules per token) of the energy-per-token histogram.
pub const JOULES_PER_TOKEN_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
];

/// A fixed-bucket histogram: per-bucket (not cumulative) counts, the last bucket is `+Inf`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FixedHistogram {
    /// Finite upper bounds, ascending.
    pub bounds: Vec<f64>,
    /// Observations per bucket; one more entry than `bounds` (the `+Inf` bucket).
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl FixedHistogram {
    /// An empty histogram over `bounds` (ascending, finite).
    pub fn new(bounds: &[f64]) -> Self {
        FixedHistogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one value; non-finite or negative values are ignored (they would poison the sum).
    pub fn observe(&mut self, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `(upper bound, per-bucket count)` pairs ending with `+Inf`, as Prometheus encoders take them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// The labels of one request counter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestSeries {
    /// The model row (a model name, `unknown`, or `other` beyond the bound).
    pub model: String,
    /// The API label (fixed vocabulary).
    pub endpoint: String,
    /// The record status (fixed vocabulary).
    pub status: &'static str,
}

/// Tallies of finished requests for `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSeriesTable {
    /// Finished requests per (model, endpoint, status).
    pub requests: BTreeMap<RequestSeries, u64>,
    /// Energy of each request whose energy was measured (status not `unavailable`), joules.
    pub energy_joules: FixedHistogram,
    /// Energy per token (prompt + completion) of each measured request with tokens.
    pub joules_per_token: FixedHistogram,
}

impl Default for RequestSeriesTable {
    fn default() -> Self {
        RequestSeriesTable {
            requests: BTreeMap::new(),
            energy_joules: FixedHistogram::new(&ENERGY_BUCKETS_J),
            joules_per_token: FixedHistogram::new(&JOULES_PER_TOKEN_BUCKETS),
        }
    }
}

impl RequestSeriesTable {
    /// Counts one finished request under the model row `model`.
    pub fn add(&mut self, model: &str, r: &RequestRecord) {
        let key = RequestSeries {
            model: model.to_owned(),
            endpoint: r.endpoint.clone(),
            status: r.status.as_str(),
        };
        *self.requests.entry(key).or_default() += 1;
        if r.status == RecordStatus::Unavailable {
            return;
        }
        self.energy_joules.observe(r.energy_joules);
        let tokens = r.prompt_tokens.saturating_add(r.completion_tokens);
        if tokens > 0 {
            self.joules_per_token
                .observe(r.energy_joules / tokens as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{Aggregates, RecordEnergy};

    fn record(model: &str, status: RecordStatus, joules: f64, tokens: u64) -> RequestRecord {
        RequestRecord {
            id: String::new(),
            model: Some(model.into()),
            endpoint: "completions".into(),
            key_hash: None,
            tag: None,
            stream: false,
            arrival: String::new(),
            first_token: None,
            end: None,
            prompt_tokens: tokens,
            completion_tokens: 0,
            tokens_exact: true,
            energy_joules: joules,
            active_joules: 0.0,
            prefill_joules: 0.0,
            decode_joules: 0.0,
            co2_grams: None,
            status,
            attribution: Default::default(),
            key: 0,
            arrival_ns: 0,
            end_ns: 0,
        }
    }

    #[test]
    fn request_series_fold_models_like_the_model_table() {
        let mut a = Aggregates::new(1);
        for (m, st, j, t) in [
            ("a", RecordStatus::Ok, 2.0, 4),
            ("b", RecordStatus::Ok, 1.0, 0),
            ("c", RecordStatus::Unavailable, 0.0, 5),
        ] {
            a.add(&record(m, st, j, t), RecordEnergy::default());
        }
        let rows: Vec<(&str, &str, u64)> = a
            .series
            .requests
            .iter()
            .map(|(k, n)| (k.model.as_str(), k.status, *n))
            .collect();
        assert_eq!(
            rows,
            [
                ("a", "ok", 1),
                ("other", "ok", 1),
                ("other", "unavailable", 1)
            ]
        );
        // Unmeasured requests stay out of the histograms; J/token needs tokens.
        assert_eq!(a.series.energy_joules.count, 2);
        assert_eq!(a.series.energy_joules.sum, 3.0);
        assert_eq!(a.series.joules_per_token.count, 1);
        assert_eq!(a.series.joules_per_token.sum, 0.5);
    }

    #[test]
    fn buckets_are_per_bucket_and_end_with_inf() {
        let mut h = FixedHistogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0, f64::NAN, -1.0] {
            h.observe(v);
        }
        // `le` is inclusive: 1.0 falls in the first bucket.
        assert_eq!(h.buckets(), [(1.0, 2), (2.0, 1), (f64::INFINITY, 1)]);
        assert_eq!(h.count, 4);
        assert_eq!(h.sum, 6.0);
    }
}
