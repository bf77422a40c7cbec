//! State the accounting thread shares with readers (the admin listener): totals, P_idle, the
//! calibration, aggregates and the ring of finished-request records.
//!
//! Owns the ring and the snapshots. Every lock here is held for a copy or a push only, and the data
//! plane never takes any of them (it reads its own request's atomics).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::aggregate::Aggregates;
use super::history::{History, HistoryPoint};
use crate::ledger::{CalibrationReport, IdleSource, LedgerTotals, RecordStatus, RequestRecord};

/// Counts of finished model requests by how their work was seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttributionCounts {
    /// `streamed`
    pub streamed: u64,
    /// `engine_metrics`
    pub engine_metrics: u64,
    /// `estimated`
    pub estimated: u64,
}

impl AttributionCounts {
    /// Counts one more request seen as `a`.
    pub fn add(&mut self, a: crate::ledger::record::Attribution) {
        use crate::ledger::record::Attribution;
        let slot = match a {
            Attribution::Streamed => &mut self.streamed,
            Attribution::EngineMetrics => &mut self.engine_metrics,
            Attribution::Estimated => &mut self.estimated,
        };
        *slot = slot.saturating_add(1);
    }
}

/// Finished requests by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusCounts {
    /// `ok`
    pub ok: u64,
    /// `estimated`
    pub estimated: u64,
    /// `unavailable`
    pub unavailable: u64,
    /// `aborted`
    pub aborted: u64,
    /// `error`
    pub error: u64,
}

impl StatusCounts {
    /// Counts one request.
    pub fn add(&mut self, s: RecordStatus) {
        let c = match s {
            RecordStatus::Ok => &mut self.ok,
            RecordStatus::Estimated => &mut self.estimated,
            RecordStatus::Unavailable => &mut self.unavailable,
            RecordStatus::Aborted => &mut self.aborted,
            RecordStatus::Error => &mut self.error,
        };
        *c += 1;
    }
}

/// Upper bounds of the processing-time histogram, seconds.
pub const PROCESSING_BUCKETS_S: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How long finished model requests took, from arrival at the proxy to the end of the response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcessingStats {
    /// Requests per bucket (not cumulative; the last one is above 300 s).
    pub buckets: [u64; PROCESSING_BUCKETS_S.len() + 1],
    /// Sum of the durations, seconds.
    pub sum_seconds: f64,
    /// Requests counted.
    pub count: u64,
    /// Mean over the latest 1024 requests, seconds.
    pub recent_mean_seconds: f64,
}

impl ProcessingStats {
    /// Counts one request of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return;
        }
        let i = PROCESSING_BUCKETS_S.partition_point(|b| *b < seconds);
        if let Some(c) = self.buckets.get_mut(i) {
            *c += 1;
        }
        self.sum_seconds += seconds;
        self.count += 1;
        // An exponential window of about 1024 requests.
        let w = 1.0 / (self.count.min(1024) as f64);
        self.recent_mean_seconds += w * (seconds - self.recent_mean_seconds);
    }
}

/// A copy of the accounting figures, as `/stats` and `/metrics` read them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AccountingStats {
    /// Energy books and tick counts.
    pub totals: LedgerTotals,
    /// Prompt tokens of finished requests.
    pub prompt_tokens: u64,
    /// Completion tokens of finished requests.
    pub completion_tokens: u64,
    /// Finished requests by status.
    pub requests: StatusCounts,
    /// Finished model requests by how their work was seen.
    pub attribution: AttributionCounts,
    /// The effective batch: requests doing work in each settled busy tick.
    pub batch: crate::ledger::BatchStats,
    /// How long finished model requests took.
    pub processing: ProcessingStats,
    /// Requests registered and not retired yet.
    pub in_flight: u64,
    /// Idle power, milliwatts, when known.
    pub p_idle_mw: Option<u64>,
    /// Where P_idle comes from.
    pub p_idle_source: IdleSource,
    /// The α/β fit and its quality.
    pub calibration: CalibrationReport,
    /// Current prefill-rate estimate, tokens/s.
    pub prefill_tokens_per_s: f64,
    /// Current per-request decode-rate estimate, tokens/s.
    pub decode_tokens_per_s: f64,
    /// Records pushed out of the ring by newer ones.
    pub records_evicted: u64,
    /// Records the log channel could not take (full or closed).
    pub records_not_logged: u64,
    /// Records the export channel could not take (full or closed).
    pub records_not_exported: u64,
    /// Requests retired by someone else before accounting settled them.
    pub vanished: u64,
    /// End of the newest tick applied, clock ns.
    pub last_tick_end_ns: u64,
}

impl Default for AccountingStats {
    fn default() -> Self {
        AccountingStats {
            totals: LedgerTotals::default(),
            prompt_tokens: 0,
            completion_tokens: 0,
            requests: StatusCounts::default(),
            attribution: AttributionCounts::default(),
            batch: crate::ledger::BatchStats::default(),
            processing: ProcessingStats::default(),
            in_flight: 0,
            p_idle_mw: None,
            p_idle_source: IdleSource::Unknown,
            calibration: CalibrationReport {
                alpha_j: 0.0,
                beta_j: 0.0,
                gamma_j: 0.0,
                fitted_alpha_j: None,
                fitted_beta_j: None,
                fitted_gamma_j: None,
                fitted_static_w: None,
                r2: None,
                condition: None,
                ticks: 0,
                trusted: false,
            },
            prefill_tokens_per_s: 0.0,
            decode_tokens_per_s: 0.0,
            records_evicted: 0,
            records_not_logged: 0,
            records_not_exported: 0,
            vanished: 0,
            last_tick_end_ns: 0,
        }
    }
}

/// The bounded ring of finished-request records, newest last, with lookup by id.
#[derive(Debug)]
pub struct RecordRing {
    capacity: usize,
    order: VecDeque<u64>,
    by_id: HashMap<u64, Arc<RequestRecord>>,
}

impl RecordRing {
    /// A ring keeping the newest `capacity` records (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        RecordRing {
            capacity,
            order: VecDeque::new(),
            by_id: HashMap::new(),
        }
    }

    /// Adds a record; returns how many old ones were dropped to make room.
    pub fn push(&mut self, r: Arc<RequestRecord>) -> u64 {
        if self.capacity == 0 {
            return 1;
        }
        let mut evicted = 0;
        if self.by_id.insert(r.key, r.clone()).is_none() {
            self.order.push_back(r.key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
                evicted += 1;
            }
        }
        evicted
    }

    /// The record of request `id`, if still held.
    pub fn get(&self, id: u64) -> Option<Arc<RequestRecord>> {
        self.by_id.get(&id).cloned()
    }

    /// Up to `limit` newest records, newest first, optionally only those with tag `tag`.
    pub fn recent(&self, limit: usize, tag: Option<&str>) -> Vec<Arc<RequestRecord>> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.by_id.get(id))
            .filter(|r| tag.map_or(true, |t| r.tag.as_deref() == Some(t)))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Everything readers may look at; cloned out under short locks.
#[derive(Debug)]
pub struct AccountingShared {
    stats: Mutex<AccountingStats>,
    aggregates: Mutex<Aggregates>,
    ring: Mutex<RecordRing>,
    history: Mutex<History>,
}

/// A poisoned lock only means a reader panicked mid-copy; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AccountingShared {
    /// Empty state with a ring of `ring_capacity` and `max_labels` values per dimension.
    pub fn new(ring_capacity: usize, max_labels: usize) -> Self {
        AccountingShared {
            stats: Mutex::new(AccountingStats::default()),
            aggregates: Mutex::new(Aggregates::new(max_labels)),
            ring: Mutex::new(RecordRing::new(ring_capacity)),
            history: Mutex::new(History::default()),
        }
    }

    /// A copy of the current figures.
    pub fn stats(&self) -> AccountingStats {
        *lock(&self.stats)
    }

    /// A copy of the per-label aggregates.
    pub fn aggregates(&self) -> Aggregates {
        lock(&self.aggregates).clone()
    }

    /// The record of a finished request still in the ring.
    pub fn record(&self, id: u64) -> Option<Arc<RequestRecord>> {
        lock(&self.ring).get(id)
    }

    /// Up to `limit` newest records, newest first, optionally filtered by tag.
    pub fn recent(&self, limit: usize, tag: Option<&str>) -> Vec<Arc<RequestRecord>> {
        lock(&self.ring).recent(limit, tag)
    }

    /// The device list and the history points after `after` (all with 0), oldest first.
    pub fn history_since(&self, after: u64) -> History {
        lock(&self.history).since(after)
    }

    pub(super) fn push_history(&self, point: HistoryPoint, devices: Vec<String>) {
        let mut h = lock(&self.history);
        h.devices = devices;
        h.push(point);
    }

    pub(super) fn update_stats(&self, f: impl FnOnce(&mut AccountingStats)) {
        f(&mut lock(&self.stats));
    }

    pub(super) fn with_aggregates(&self, f: impl FnOnce(&mut Aggregates)) {
        f(&mut lock(&self.aggregates));
    }

    pub(super) fn push_record(&self, r: Arc<RequestRecord>) -> u64 {
        lock(&self.ring).push(r)
    }
}
