//! The admission series of `/metrics`: queue length, admitted in-flight requests and tokens,
//! admitted and rejected counts (by reason: `queue_full`, `timeout`), clients that left the queue,
//! and the queue-wait histogram. Published whether or not admission is on. Owns these names.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::encode::{counter, family, gauge, histogram, labels};
use crate::accounting::series::FixedHistogram;
use crate::proxy::admission::{AdmissionStats, RejectReason, QUEUE_WAIT_BUCKETS_S};

pub(super) fn admission(a: &AdmissionStats, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "joulegate_queue_length",
        "Model requests waiting for admission.",
        None,
        a.queue_length,
    )?;
    gauge(
        enc,
        "joulegate_admission_inflight_requests",
        "Admitted model requests whose response has not ended.",
        None,
        a.inflight_requests,
    )?;
    gauge(
        enc,
        "joulegate_inflight_tokens",
        "Tokens of the admitted model requests in flight (prompt estimate + completion bound).",
        None,
        a.inflight_tokens,
    )?;
    counter(
        enc,
        "joulegate_admission_admitted",
        "Model requests admitted (at once or after waiting).",
        None,
        a.admitted,
    )?;
    family(
        enc,
        "joulegate_admission_rejected",
        "Model requests refused with 429, by reason (queue_full, timeout).",
        None,
        MetricType::Counter,
        [
            (RejectReason::QueueFull, a.rejected.queue_full),
            (RejectReason::Timeout, a.rejected.timeout),
        ]
        .into_iter()
        .map(|(r, n)| (labels([("reason", r.as_str())]), n)),
    )?;
    counter(
        enc,
        "joulegate_admission_left_queue",
        "Model requests whose client left while they waited for admission.",
        None,
        a.left_queue,
    )?;
    let w = &a.queue_wait;
    let mut counts = w.bucket_counts.clone();
    counts.resize(QUEUE_WAIT_BUCKETS_S.len() + 1, 0);
    let h = FixedHistogram {
        bounds: QUEUE_WAIT_BUCKETS_S.to_vec(),
        // The buckets are counted one by one without a lock: the count is their sum, so the
        // exposition stays consistent even mid-update.
        count: counts.iter().sum(),
        counts,
        sum: w.sum_seconds,
    };
    histogram(
        enc,
        "joulegate_queue_wait",
        "Time admitted model requests waited for admission (0 when admitted at once; admission on only).",
        Some(Unit::Seconds),
        &h,
    )
}

/// The effective batch (requests doing work in each settled busy tick) and how long finished
/// model requests took: published whether or not admission is on.
pub(super) fn batch(
    enc: &mut DescriptorEncoder,
    st: &crate::accounting::AccountingStats,
) -> fmt::Result {
    let b = &st.batch;
    let h = FixedHistogram {
        bounds: crate::ledger::BATCH_BUCKETS.to_vec(),
        counts: b.buckets.to_vec(),
        sum: b.sum as f64,
        count: b.count,
    };
    histogram(
        enc,
        "joulegate_batch_size",
        "Requests that did work in each settled busy tick (the effective batch).",
        None,
        &h,
    )?;
    gauge(
        enc,
        "joulegate_batch_size_mean",
        "Mean effective batch over the last minute of busy ticks.",
        None,
        b.mean,
    )?;
    gauge(
        enc,
        "joulegate_batch_size_max",
        "Largest effective batch over the last minute of busy ticks.",
        None,
        b.max,
    )?;
    gauge(
        enc,
        "joulegate_engine_sequences_max",
        "Most sequences seen running at once (the engine's sequence limit where it holds prompts back).",
        None,
        u64::from(b.sequences_max),
    )?;
    gauge(
        enc,
        "joulegate_engine_held_for_slots",
        "1 while recent prompts waited for sequence slots (the engine at its sequence limit).",
        None,
        u64::from(b.held_for_slots),
    )?;
    if b.engine_queue_readings > 0 {
        // Only where the upstream's queue gauges are read (`upstream_metrics`).
        gauge(
            enc,
            "joulegate_engine_requests_waiting",
            "Requests waiting in the engine's queue at the newest reading of its own gauges.",
            None,
            u64::from(b.engine_waiting),
        )?;
        gauge(
            enc,
            "joulegate_engine_requests_running",
            "Requests in the engine's running batch at the newest reading of its own gauges.",
            None,
            u64::from(b.engine_running),
        )?;
        gauge(
            enc,
            "joulegate_engine_at_limit",
            "1 while the engine's gauges show it running at the most requests it has shown (non-streamed answers waiting in its queue then get no estimated work).",
            None,
            u64::from(b.engine_at_limit),
        )?;
    }
    let p = &st.processing;
    let h = FixedHistogram {
        bounds: crate::accounting::shared::PROCESSING_BUCKETS_S.to_vec(),
        counts: p.buckets.to_vec(),
        sum: p.sum_seconds,
        count: p.count,
    };
    histogram(
        enc,
        "joulegate_request_duration",
        "Time from a model request's arrival at the proxy to the end of its response.",
        Some(Unit::Seconds),
        &h,
    )
}
