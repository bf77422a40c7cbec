//! `/history?since=SEQ`: the last ten minutes as one point per second (power per device, the
//! energy books, P_idle, requests in flight), which the live page draws.
//!
//! Owns the document's shape and its query. Points come from what accounting published
//! ([`crate::accounting::History`]); the books are cumulative, so a reader takes differences
//! between points for energy per second.

use serde::Serialize;

use super::AdminState;
use crate::accounting::history::{HISTORY_BUCKET_NS, HISTORY_POINTS};
use crate::accounting::HistoryPoint;
use crate::ledger::record::joules;

/// Why a `/history` query was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryQueryError {
    /// `since` is not a non-negative integer.
    #[error("`since` must be a non-negative integer (a point's seq), got {0:?}")]
    Since(String),
}

/// Parses `since` (default 0: every point) from a query string; other parameters are ignored.
pub fn parse_since(query: Option<&str>) -> Result<u64, HistoryQueryError> {
    let mut since = 0;
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("since=") {
            since = v
                .parse()
                .map_err(|_| HistoryQueryError::Since(v.to_owned()))?;
        }
    }
    Ok(since)
}

/// One point as served.
#[derive(Debug, Serialize, PartialEq)]
pub struct PointView {
    /// Sequence number (ask `?since=` it for the points after it).
    pub seq: u64,
    /// End of the point, seconds since the proxy started.
    pub t_s: f64,
    /// Mean power per device over the point, watts, in the order of `devices` (null: no reading).
    pub power_w: Vec<Option<f64>>,
    /// Measured energy so far, joules.
    pub measured_joules: f64,
    /// Attributed to requests so far.
    pub attributed_joules: f64,
    /// Idle so far.
    pub idle_joules: f64,
    /// Unattributed so far.
    pub unattributed_joules: f64,
    /// Measured but not settled yet.
    pub pending_joules: f64,
    /// Idle power (all devices), watts, when known.
    pub p_idle_w: Option<f64>,
    /// Requests registered.
    pub in_flight: u64,
}

impl PointView {
    fn of(p: &HistoryPoint) -> Self {
        let t = &p.totals;
        PointView {
            seq: p.seq,
            t_s: p.end_ns as f64 / 1e9,
            power_w: p.device_power_w.clone(),
            measured_joules: joules(t.measured_uj),
            attributed_joules: joules(t.attributed_uj),
            idle_joules: joules(t.idle_uj),
            unattributed_joules: joules(t.unattributed_uj),
            pending_joules: joules(t.pending_uj),
            p_idle_w: p.p_idle_mw.map(|mw| mw as f64 / 1000.0),
            in_flight: p.in_flight,
        }
    }
}

/// The `/history` document.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Width of a point, seconds.
    pub bucket_s: f64,
    /// Points kept at most.
    pub capacity: usize,
    /// Now, seconds since the proxy started.
    pub now_s: f64,
    /// Device labels, the order of each point's `power_w`.
    pub devices: Vec<String>,
    /// Points after `since`, oldest first.
    pub points: Vec<PointView>,
}

/// The history after point `since`.
pub fn history(state: &AdminState, since: u64) -> HistoryView {
    let h = state.accounting.history_since(since);
    HistoryView {
        bucket_s: HISTORY_BUCKET_NS as f64 / 1e9,
        capacity: HISTORY_POINTS,
        now_s: state.clock.now_ns() as f64 / 1e9,
        devices: h.devices,
        points: h.points.iter().map(PointView::of).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parsing() {
        assert_eq!(parse_since(None), Ok(0));
        assert_eq!(parse_since(Some("since=42&x=1")), Ok(42));
        assert_eq!(
            parse_since(Some("since=-1")),
            Err(HistoryQueryError::Since("-1".into()))
        );
        assert_eq!(
            parse_since(Some("since=")),
            Err(HistoryQueryError::Since(String::new()))
        );
    }
}
