//! Aggregates of finished requests per label (model, key hash, tag), with bounded cardinality.
//!
//! Owns the label tables only: the first `max_labels` distinct values of a dimension get their own
//! row, later ones are folded into `other` and counted, so memory and `/metrics` series stay bounded
//! whatever clients send.

use std::collections::BTreeMap;

use serde::Serialize;

use super::series::RequestSeriesTable;
use crate::ledger::RequestRecord;

/// Sums over the finished requests of one label value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Aggregate {
    /// Finished requests.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Attributed energy, micro-joules.
    pub energy_uj: u64,
    /// Of it, above the idle baseline.
    pub active_uj: u64,
    /// Of it, prefill.
    pub prefill_uj: u64,
    /// Of it, decode.
    pub decode_uj: u64,
    /// Earliest arrival, clock ns (for throughput and mean power over the span).
    pub first_arrival_ns: Option<u64>,
    /// Latest end, clock ns.
    pub last_end_ns: Option<u64>,
}

/// The micro-joule figures of one record (records carry joules; the books keep integers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordEnergy {
    /// Energy, µJ.
    pub energy_uj: u64,
    /// Active, µJ.
    pub active_uj: u64,
    /// Prefill, µJ.
    pub prefill_uj: u64,
    /// Decode, µJ.
    pub decode_uj: u64,
}

impl Aggregate {
    /// Adds one finished request.
    pub fn add(&mut self, r: &RequestRecord, e: RecordEnergy) {
        self.requests += 1;
        self.prompt_tokens = self.prompt_tokens.saturating_add(r.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(r.completion_tokens);
        self.energy_uj = self.energy_uj.saturating_add(e.energy_uj);
        self.active_uj = self.active_uj.saturating_add(e.active_uj);
        self.prefill_uj = self.prefill_uj.saturating_add(e.prefill_uj);
        self.decode_uj = self.decode_uj.saturating_add(e.decode_uj);
        self.first_arrival_ns = Some(
            self.first_arrival_ns
                .map_or(r.arrival_ns, |a| a.min(r.arrival_ns)),
        );
        if r.end_ns != 0 {
            self.last_end_ns = Some(self.last_end_ns.map_or(r.end_ns, |a| a.max(r.end_ns)));
        }
    }
}

/// One dimension's rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LabelTable {
    /// Rows by label value (the overflow row is `other`).
    pub rows: BTreeMap<String, Aggregate>,
    /// Requests whose label was folded into `other` because the table was full.
    pub overflowed: u64,
    #[serde(skip)]
    max_labels: usize,
}

/// The label used for values beyond the bound.
pub const OVERFLOW_LABEL: &str = "other";

impl LabelTable {
    /// A table holding at most `max_labels` distinct values besides `other`.
    pub fn new(max_labels: usize) -> Self {
        LabelTable {
            rows: BTreeMap::new(),
            overflowed: 0,
            max_labels,
        }
    }

    /// Adds a record under `label`.
    pub fn add(&mut self, label: &str, r: &RequestRecord, e: RecordEnergy) {
        if let Some(row) = self.rows.get_mut(label) {
            row.add(r, e);
            return;
        }
        let distinct = self.rows.len() - usize::from(self.rows.contains_key(OVERFLOW_LABEL));
        let key = if distinct < self.max_labels {
            label
        } else {
            self.overflowed += 1;
            OVERFLOW_LABEL
        };
        self.rows.entry(key.to_owned()).or_default().add(r, e);
    }
}

/// Per-model, per-key and per-tag tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Aggregates {
    /// By `model` (`unknown` when the request named none).
    pub models: LabelTable,
    /// By key hash (requests without a key are not counted here).
    pub keys: LabelTable,
    /// By `x-energy-tag` (untagged requests are not counted here).
    pub tags: LabelTable,
    /// Request counters and histograms for `/metrics` (model folded like `models`).
    #[serde(skip)]
    pub series: RequestSeriesTable,
}

impl Aggregates {
    /// Empty tables bounded to `max_labels` values each.
    pub fn new(max_labels: usize) -> Self {
        Aggregates {
            models: LabelTable::new(max_labels),
            keys: LabelTable::new(max_labels),
            tags: LabelTable::new(max_labels),
            series: RequestSeriesTable::default(),
        }
    }

    /// Adds one finished request to every dimension it has a label in.
    pub fn add(&mut self, r: &RequestRecord, e: RecordEnergy) {
        let model = r.model.as_deref().unwrap_or("unknown");
        self.models.add(model, r, e);
        // The row the bounded table chose: the model itself, or `other` once the table is full.
        let row = if self.models.rows.contains_key(model) {
            model
        } else {
            OVERFLOW_LABEL
        };
        self.series.add(row, r);
        if let Some(k) = &r.key_hash {
            self.keys.add(k, r, e);
        }
        if let Some(t) = &r.tag {
            self.tags.add(t, r, e);
        }
    }
}
