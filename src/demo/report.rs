//! What the demo found: one row per request (the proxy's record beside the engine's ground truth),
//! the ledger's books with the conservation check, error statistics, and their renderings (a
//! text table for people, JSON for scripts).
//!
//! Pure data and formatting: no I/O beyond writing into a `String`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::world::Sent;
use crate::ledger::{CalibrationReport, LedgerTotals, RequestRecord};
use crate::sim::engine::Totals;
use crate::sim::RequestTruth;

/// One request: what the client saw, the proxy's record and the engine's truth.
#[derive(Clone, Debug)]
pub struct DemoRow {
    /// What the client sent and got.
    pub sent: Sent,
    /// The proxy's finished-request record (`None`: the proxy gave no id or kept no record).
    pub record: Option<RequestRecord>,
    /// The engine's ground truth (`None`: the request never reached the engine).
    pub truth: Option<RequestTruth>,
}

impl DemoRow {
    /// Attributed energy, µJ (records carry joules with µJ resolution).
    pub fn energy_uj(&self) -> Option<u64> {
        self.record
            .as_ref()
            .map(|r| (r.energy_joules * 1e6).round() as u64)
    }

    /// Signed relative error of the proxy's energy against the truth, `(proxy - truth) / truth`.
    pub fn error(&self) -> Option<f64> {
        self.error_of(self.energy_uj()? as f64)
    }

    /// Signed relative error of the figure the response itself carried (`x-energy-joules`, or a
    /// stream's usage-chunk `energy`) against the truth; `None` where it carried none.
    pub fn response_error(&self) -> Option<f64> {
        self.error_of(self.sent.response_joules? * 1e6)
    }

    /// `(uj - truth) / truth`; `None` without a (non-zero) truth.
    fn error_of(&self, uj: f64) -> Option<f64> {
        let t = self.truth.as_ref()?.total_uj();
        (t > 0).then(|| (uj - t as f64) / t as f64)
    }

    /// The error of the figure a user reads: the response's own where it carried one, else the
    /// record's (a stream that asked for no usage: its client reads `/requests/{id}`).
    pub fn read_error(&self) -> Option<f64> {
        self.response_error().or_else(|| self.error())
    }
}

/// Median, 95th percentile and maximum of absolute errors.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    /// Requests with both a record and a truth.
    pub count: usize,
    /// Median of |error|.
    pub median: f64,
    /// 95th percentile (nearest rank) of |error|.
    pub p95: f64,
    /// Largest |error|.
    pub max: f64,
}

impl ErrorStats {
    /// Statistics of the absolute values of `errors`.
    pub fn of(errors: impl IntoIterator<Item = f64>) -> ErrorStats {
        let mut v: Vec<f64> = errors
            .into_iter()
            .map(f64::abs)
            .filter(|e| e.is_finite())
            .collect();
        if v.is_empty() {
            return ErrorStats::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        ErrorStats {
            count: v.len(),
            median,
            p95: rank(0.95),
            max: v[v.len() - 1],
        }
    }
}

/// Everything the demo measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// One row per request, in plan order.
    pub rows: Vec<DemoRow>,
    /// The ledger's books once nothing was pending.
    pub totals: LedgerTotals,
    /// P_idle the ledger used, mW.
    pub p_idle_mw: Option<u64>,
    /// The α/β calibration.
    pub calibration: CalibrationReport,
    /// The engine's own totals when the report was taken.
    pub engine: Option<Totals>,
    /// The ledger's prefill-rate estimate, tokens/s.
    pub prefill_tokens_per_s: f64,
    /// The ledger's per-request decode-rate estimate, tokens/s.
    pub decode_tokens_per_s: f64,
}

impl DemoReport {
    /// Whether `attributed + idle + unattributed == measured` holds exactly (and nothing pends).
    pub fn conserved(&self) -> bool {
        let t = &self.totals;
        t.pending_uj == 0
            && u128::from(t.attributed_uj) + u128::from(t.idle_uj) + u128::from(t.unattributed_uj)
                == u128::from(t.measured_uj)
    }

    /// Error statistics of the proxy's per-request energy against the truth.
    pub fn errors(&self) -> ErrorStats {
        ErrorStats::of(self.rows.iter().filter_map(DemoRow::error))
    }

    /// Error statistics of the figures users read ([`DemoRow::read_error`]).
    pub fn read_errors(&self) -> ErrorStats {
        ErrorStats::of(self.rows.iter().filter_map(DemoRow::read_error))
    }

    /// Error statistics of the figures responses carried, streams (`true`) or JSON (`false`).
    pub fn response_errors(&self, stream: bool) -> ErrorStats {
        ErrorStats::of(
            self.rows
                .iter()
                .filter(|r| r.sent.stream == stream)
                .filter_map(DemoRow::response_error),
        )
    }

    /// Errors of the naive method on the same requests: the same total energy (the truth's sum)
    /// split by completion tokens alone.
    pub fn naive_errors(&self) -> ErrorStats {
        let pairs: Vec<(u64, u64)> = self
            .rows
            .iter()
            .filter_map(|r| r.truth.as_ref())
            .map(|t| (t.total_uj(), t.completion_tokens))
            .collect();
        let total: u64 = pairs.iter().map(|p| p.0).sum();
        let tokens: u64 = pairs.iter().map(|p| p.1).sum();
        if tokens == 0 {
            return ErrorStats::default();
        }
        ErrorStats::of(pairs.iter().filter(|p| p.0 > 0).map(|&(t, c)| {
            let naive = total as f64 * c as f64 / tokens as f64;
            (naive - t as f64) / t as f64
        }))
    }

    /// The unattributed share of the measured energy.
    pub fn unattributed_share(&self) -> f64 {
        let t = &self.totals;
        if t.measured_uj == 0 {
            0.0
        } else {
            t.unattributed_uj as f64 / t.measured_uj as f64
        }
    }

    /// The per-request table, the totals and the conservation line, as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<19} {:<16} {:<6} {:<8} {:>6} {:>6} {:>9} {:>8} {:>9} {:>9} {:<9} {:>7}",
            "id",
            "endpoint",
            "stream",
            "tag",
            "prompt",
            "compl",
            "J",
            "J/token",
            "active J",
            "CO2 g",
            "status",
            "err %"
        );
        for row in &self.rows {
            let _ = writeln!(s, "{}", render_row(row));
        }
        let t = &self.totals;
        let j = |uj: u64| uj as f64 / 1e6;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "measured     {:>12.3} J  ({} uJ)",
            j(t.measured_uj),
            t.measured_uj
        );
        let _ = writeln!(
            s,
            "attributed   {:>12.3} J  ({} uJ; active {:.3} J)",
            j(t.attributed_uj),
            t.attributed_uj,
            j(t.active_uj)
        );
        let _ = writeln!(
            s,
            "idle         {:>12.3} J  ({} uJ)",
            j(t.idle_uj),
            t.idle_uj
        );
        let _ = writeln!(
            s,
            "unattributed {:>12.3} J  ({} uJ)",
            j(t.unattributed_uj),
            t.unattributed_uj
        );
        let _ = writeln!(
            s,
            "conservation: attributed + idle + unattributed = measured: {} + {} + {} = {} uJ (measured {} uJ, pending {} uJ) {}",
            t.attributed_uj,
            t.idle_uj,
            t.unattributed_uj,
            u128::from(t.attributed_uj) + u128::from(t.idle_uj) + u128::from(t.unattributed_uj),
            t.measured_uj,
            t.pending_uj,
            if self.conserved() { "OK" } else { "MISMATCH" }
        );
        if let Some(p) = self.p_idle_mw {
            let _ = writeln!(s, "P_idle {:.1} W", p as f64 / 1000.0);
        }
        let c = &self.calibration;
        let _ = writeln!(
            s,
            "calibration: alpha {:.4} J/prefill token, beta {:.4} J/decode token, gamma {:.7} J/context token ({}){}",
            c.alpha_j,
            c.beta_j,
            c.gamma_j,
            if c.trusted { "fitted" } else { "defaults" },
            c.fitted_static_w
                .map(|w| format!("; static {w:.0} W above idle"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "rates: prefill {:.0} tokens/s, decode {:.1} tokens/s per request",
            self.prefill_tokens_per_s, self.decode_tokens_per_s
        );
        let e = self.errors();
        let n = self.naive_errors();
        let _ = writeln!(
            s,
            "per-request error vs engine truth ({} requests): median {:.1} %, p95 {:.1} %, max {:.1} %  (naive split by completion tokens: median {:.1} %, p95 {:.1} %)",
            e.count,
            e.median * 100.0,
            e.p95 * 100.0,
            e.max * 100.0,
            n.median * 100.0,
            n.p95 * 100.0
        );
        let (json, stream) = (self.response_errors(false), self.response_errors(true));
        let _ = writeln!(
            s,
            "figures on the responses themselves (provisional): JSON headers {} responses, median {:.1} %, p95 {:.1} %; stream usage chunks {} responses, median {:.1} %, p95 {:.1} %",
            json.count,
            json.median * 100.0,
            json.p95 * 100.0,
            stream.count,
            stream.median * 100.0,
            stream.p95 * 100.0
        );
        s
    }

    /// The same content as JSON.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "index": r.sent.index,
                    "path": r.sent.path,
                    "tag": r.sent.tag,
                    "http_status": r.sent.http_status,
                    "response_id": r.sent.response_id,
                    "record": r.record,
                    "truth_joules": r.truth.as_ref().map(|t| t.total_uj() as f64 / 1e6),
                    "truth_prefill_joules": r.truth.as_ref().map(|t| t.prefill_uj as f64 / 1e6),
                    "truth_decode_joules": r.truth.as_ref().map(|t| t.decode_uj as f64 / 1e6),
                    "error": r.error(),
                    "response_joules": r.sent.response_joules,
                    "response_error": r.response_error(),
                })
            })
            .collect();
        let t = &self.totals;
        let e = self.errors();
        let n = self.naive_errors();
        json!({
            "requests": rows,
            "totals": {
                "measured_uj": t.measured_uj,
                "attributed_uj": t.attributed_uj,
                "idle_uj": t.idle_uj,
                "unattributed_uj": t.unattributed_uj,
                "pending_uj": t.pending_uj,
                "active_uj": t.active_uj,
                "conserved": self.conserved(),
            },
            "p_idle_mw": self.p_idle_mw,
            "calibration": self.calibration,
            "error": {"median": e.median, "p95": e.p95, "max": e.max, "count": e.count},
            "naive_error": {"median": n.median, "p95": n.p95, "max": n.max, "count": n.count},
        })
    }
}

fn render_row(row: &DemoRow) -> String {
    let err = row
        .error()
        .map_or_else(|| "-".to_owned(), |e| format!("{:+.1}", e * 100.0));
    let stream = if row.sent.stream { "yes" } else { "no" };
    match &row.record {
        Some(r) => {
            let tokens = r.prompt_tokens + r.completion_tokens;
            let per_token = if tokens > 0 {
                format!("{:.5}", r.energy_joules / tokens as f64)
            } else {
                "-".to_owned()
            };
            let co2 = r
                .co2_grams
                .map_or_else(|| "-".to_owned(), |g| format!("{g:.5}"));
            format!(
                "{:<19} {:<16} {:<6} {:<8} {:>6} {:>6} {:>9.3} {:>8} {:>9.3} {:>9} {:<9} {:>7}",
                r.id,
                r.endpoint,
                stream,
                row.sent.tag,
                r.prompt_tokens,
                r.completion_tokens,
                r.energy_joules,
                per_token,
                r.active_joules,
                co2,
                r.status.as_str(),
                err
            )
        }
        None => format!(
            "{:<19} {:<16} {:<6} {:<8} no record (HTTP {})",
            row.sent.response_id, row.sent.path, stream, row.sent.tag, row.sent.http_status
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stats_are_of_absolute_values() {
        let s = ErrorStats::of([0.1, -0.2, 0.3, -0.4]);
        assert_eq!(s.count, 4);
        assert!((s.median - 0.25).abs() < 1e-12);
        assert!((s.p95 - 0.4).abs() < 1e-12);
        assert!((s.max - 0.4).abs() < 1e-12);
        let odd = ErrorStats::of([0.5, 0.1, f64::NAN, 0.2]);
        assert_eq!((odd.count, odd.median), (3, 0.2));
        assert_eq!(ErrorStats::of([]), ErrorStats::default());
        let many = ErrorStats::of((1..=100).map(|i| i as f64 / 100.0));
        assert!((many.p95 - 0.95).abs() < 1e-12);
    }
}
