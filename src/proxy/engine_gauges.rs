//! The upstream engine's queue gauges, read from its Prometheus `/metrics` (`upstream_metrics =
//! "auto"`): vLLM's `vllm:num_requests_waiting` and `vllm:num_requests_running`, every
//! `upstream_metrics_interval_ms`, handed to accounting through
//! [`crate::observe::EngineQueueInbox`]. The ledger uses them to tell which non-streamed answers
//! wait in the engine's queue (see `ledger::engine_queue`).
//!
//! Owns the reading loop, the parser of the two series and the reader's state for `/stats`. Never
//! on the data plane; a reading that fails is counted and skipped, never retried at once. Where the
//! upstream's `/metrics` has no such series (not vLLM, or an error status) for
//! [`ABSENT_AFTER`] answers in a row, it is asked again only every [`ABSENT_RETRY`] (a vLLM started
//! later behind the same address is picked up).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use super::probe::{get_within, GetFailure};
use super::upstream::Upstream;
use crate::clock::Clock;
use crate::observe::EngineQueueReading;

/// The waiting gauge's name.
pub const WAITING: &str = "vllm:num_requests_waiting";
/// The running gauge's name.
pub const RUNNING: &str = "vllm:num_requests_running";

/// Largest `/metrics` body read: vLLM's is about 50 KiB with its default series, more with
/// histograms per LoRA adapter or engine.
pub const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;

/// Answers without the gauges, in a row, after which the upstream is taken to have none.
pub const ABSENT_AFTER: u32 = 3;

/// How often an upstream without the gauges is asked again.
pub const ABSENT_RETRY: Duration = Duration::from_secs(60);

/// The reader's state, for `/stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReaderState {
    /// `upstream_metrics = "off"`.
    Off = 0,
    /// No answer with the gauges yet.
    Starting = 1,
    /// The newest answer had them.
    Reading = 2,
    /// The upstream's `/metrics` has none (asked again every minute).
    Absent = 3,
    /// The newest reading got no answer (connection refused, timeout); readings go on.
    Unreachable = 4,
}

impl ReaderState {
    /// The `/stats` form.
    pub fn as_str(self) -> &'static str {
        match self {
            ReaderState::Off => "off",
            ReaderState::Starting => "starting",
            ReaderState::Reading => "reading",
            ReaderState::Absent => "absent",
            ReaderState::Unreachable => "unreachable",
        }
    }
}

/// What the reader did, for `/stats` (written by the reader, read by admin).
#[derive(Debug, Default)]
pub struct ReaderStatus {
    state: AtomicU8,
    readings: AtomicU64,
    failed: AtomicU64,
}

impl ReaderStatus {
    /// The current state.
    pub fn state(&self) -> ReaderState {
        match self.state.load(Relaxed) {
            1 => ReaderState::Starting,
            2 => ReaderState::Reading,
            3 => ReaderState::Absent,
            4 => ReaderState::Unreachable,
            _ => ReaderState::Off,
        }
    }

    /// Readings handed to accounting.
    pub fn readings(&self) -> u64 {
        self.readings.load(Relaxed)
    }

    /// Reads that brought no gauges (no answer, an error status, no such series).
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }

    fn set(&self, state: ReaderState) {
        self.state.store(state as u8, Relaxed);
    }

    /// The `/stats` object.
    pub fn to_json(&self, interval: Duration) -> serde_json::Value {
        serde_json::json!({
            "state": self.state().as_str(),
            "interval_ms": interval.as_millis() as u64,
            "readings": self.readings(),
            "failed": self.failed(),
        })
    }
}

/// The two gauges in a Prometheus text exposition, each summed over its label sets (engines of a
/// data-parallel server, models): `(waiting, running)`, or `None` unless both are there.
pub fn parse(text: &[u8]) -> Option<(u32, u32)> {
    let (mut waiting, mut running) = (None::<f64>, None::<f64>);
    for line in text.split(|&b| b == b'\n') {
        let (sum, name_len) = if line.starts_with(WAITING.as_bytes()) {
            (&mut waiting, WAITING.len())
        } else if line.starts_with(RUNNING.as_bytes()) {
            (&mut running, RUNNING.len())
        } else {
            continue;
        };
        if let Some(v) = sample_value(&line[name_len..]) {
            *sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    let count = |v: f64| v.round().clamp(0.0, f64::from(u32::MAX)) as u32;
    Some((count(waiting?), count(running?)))
}

/// The value of a sample line after its metric name: `{labels} value [timestamp]` or
/// ` value [timestamp]`; `None` for another series sharing the prefix
/// (`vllm:num_requests_waiting_by_reason`) or a value that is not a finite number.
fn sample_value(rest: &[u8]) -> Option<f64> {
    let rest = match rest.first()? {
        b'{' => {
            // Skip the label set; label values are quoted and may hold `}` or escaped quotes.
            let (mut quoted, mut escaped) = (false, false);
            let end = rest.iter().position(|&b| {
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                } else if !quoted && b == b'}' {
                    return true;
                }
                false
            })?;
            &rest[end + 1..]
        }
        b' ' | b'\t' => rest,
        _ => return None,
    };
    let text = std::str::from_utf8(rest).ok()?;
    let v: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Reads the gauges every `interval` until `stop`, pushing each reading into the registry's inbox
/// ([`crate::observe::InFlight::engine_queue`]), timed by
/// `clock` when it was asked for (the engine's state a moment before the answer).
pub async fn read_periodically(
    upstream: Upstream,
    in_flight: std::sync::Arc<crate::observe::InFlight>,
    clock: Clock,
    interval: Duration,
    status: std::sync::Arc<ReaderStatus>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // The reader's own state, published to `status` for `/stats` as it changes.
    let mut state = ReaderState::Starting;
    status.set(state);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // An answer may take up to four intervals (a busy server); later ones are skipped.
    let timeout = interval.saturating_mul(4).max(Duration::from_secs(1));
    let mut absent_in_a_row = 0u32;
    let mut next_absent_try = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stop => return,
        }
        if state == ReaderState::Absent {
            if tokio::time::Instant::now() < next_absent_try {
                continue;
            }
            next_absent_try = tokio::time::Instant::now() + ABSENT_RETRY;
        }
        let at_ns = clock.now_ns();
        let answer = tokio::select! {
            a = get_within(&upstream, "/metrics", MAX_METRICS_BYTES, timeout) => a,
            () = &mut stop => return,
        };
        let gauges = match answer {
            Ok(body) => parse(&body).ok_or(None),
            Err(GetFailure::Status(code)) => Err(Some(code)),
            Err(GetFailure::NoAnswer) => {
                status.failed.fetch_add(1, Relaxed);
                if state != ReaderState::Absent {
                    state = ReaderState::Unreachable;
                    status.set(state);
                }
                continue;
            }
        };
        match gauges {
            Ok((waiting, running)) => {
                if state != ReaderState::Reading {
                    tracing::info!(
                        interval_ms = interval.as_millis() as u64,
                        "reading the upstream's queue gauges ({WAITING}, {RUNNING}) from its \
                         /metrics"
                    );
                    state = ReaderState::Reading;
                    status.set(state);
                }
                absent_in_a_row = 0;
                status.readings.fetch_add(1, Relaxed);
                in_flight.engine_queue.push(EngineQueueReading {
                    at_ns,
                    waiting,
                    running,
                });
            }
            Err(code) => {
                status.failed.fetch_add(1, Relaxed);
                absent_in_a_row = absent_in_a_row.saturating_add(1);
                if absent_in_a_row >= ABSENT_AFTER && state != ReaderState::Absent {
                    let why = code.map_or_else(
                        || format!("has no {WAITING} / {RUNNING}"),
                        |c| format!("answered {c}"),
                    );
                    tracing::info!(
                        "the upstream's /metrics {why}: its queue gauges are not read (asked \
                         again every {} s; upstream_metrics = \"off\" stops asking)",
                        ABSENT_RETRY.as_secs()
                    );
                    state = ReaderState::Absent;
                    status.set(state);
                    next_absent_try = tokio::time::Instant::now() + ABSENT_RETRY;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllms_own_exposition() {
        // vLLM 0.32's /metrics at rest (a copy of the shared fixture).
        let text = include_bytes!("../../tests/fixtures/vllm-0.32-metrics/metrics-default.txt");
        assert_eq!(parse(text), Some((0, 0)));
    }

    #[test]
    fn sums_label_sets_and_skips_look_alikes() {
        let text = b"# HELP vllm:num_requests_waiting Number of requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"a}b \\\"q\\\"\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"x\"} 2.0 1700000000000\n\
            vllm:num_requests_waiting_by_reason{engine=\"0\",reason=\"capacity\"} 40.0\n\
            vllm:num_requests_running 7\n\
            vllm:num_requests_running{engine=\"1\"} NaN\n";
        assert_eq!(parse(text), Some((5, 7)));
    }

    #[test]
    fn either_gauge_missing_or_garbage_reads_nothing() {
        assert_eq!(parse(b"vllm:num_requests_waiting 1\n"), None);
        assert_eq!(parse(b"vllm:num_requests_running 1\n"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"<html>not found</html>"), None);
        assert_eq!(
            parse(b"vllm:num_requests_waiting{x=\"unterminated 1\nvllm:num_requests_running 2\n"),
            None
        );
        assert_eq!(
            parse(b"vllm:num_requests_waiting -1\nvllm:num_requests_running 2\n"),
            None
        );
    }
}
