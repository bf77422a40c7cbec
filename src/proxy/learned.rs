//! What the proxy learns about its upstream from the upstream's own answers, for `/stats` and a
//! one-time notice: whether it sends vLLM's per-request `metrics`. Written by the data plane as
//! responses pass, read by admin; no I/O, no clock, no effect on forwarding. (Whether the upstream
//! forces usage is part of [`super::inspect::SharedSemantics`], because it changes the request plan.)

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use crate::openai::usage::MetricsField;

/// Whether the upstream sends per-request `metrics` (vLLM `--enable-per-request-metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PerRequestMetrics {
    /// No response has told yet (or the upstream is not vLLM 0.32+).
    Unknown = 0,
    /// A single-choice JSON response carried `"metrics": null`.
    Off = 1,
    /// A response carried a `metrics` object.
    On = 2,
}

impl PerRequestMetrics {
    /// The `/stats` form.
    pub fn as_str(self) -> &'static str {
        match self {
            PerRequestMetrics::Unknown => "unknown",
            PerRequestMetrics::Off => "off",
            PerRequestMetrics::On => "on",
        }
    }
}

/// Facts learned from responses.
#[derive(Debug, Default)]
pub struct UpstreamFacts {
    per_request_metrics: AtomicU8,
    notice_given: AtomicBool,
}

impl UpstreamFacts {
    /// What is known about per-request metrics.
    pub fn per_request_metrics(&self) -> PerRequestMetrics {
        match self.per_request_metrics.load(Relaxed) {
            1 => PerRequestMetrics::Off,
            2 => PerRequestMetrics::On,
            _ => PerRequestMetrics::Unknown,
        }
    }

    /// Records a response's `metrics` member. `single_choice`: the request asked for one choice of
    /// one prompt (vLLM 0.32 sends `"metrics": null` for `n > 1` even with the flag on, so only a
    /// single-choice `null` says the flag is off). Returns the state after the call; the first time
    /// it becomes `Off`, an info line says what the flag would give.
    pub fn observe(&self, field: MetricsField, single_choice: bool) -> PerRequestMetrics {
        let next = match field {
            MetricsField::Times(_) => PerRequestMetrics::On,
            MetricsField::Null if single_choice => PerRequestMetrics::Off,
            MetricsField::Null | MetricsField::Invalid => return self.per_request_metrics(),
        };
        self.per_request_metrics.store(next as u8, Relaxed);
        if next == PerRequestMetrics::Off && !self.notice_given.swap(true, Relaxed) {
            tracing::info!(
                "the upstream (vLLM) answers with \"metrics\": null; started with \
                 --enable-per-request-metrics it reports each request's queue, prefill and \
                 generation times, which let the proxy place non-streaming requests' work precisely"
            );
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::usage::EngineTimes;

    #[test]
    fn null_from_single_choices_only_and_latest_evidence_wins() {
        let f = UpstreamFacts::default();
        assert_eq!(f.per_request_metrics(), PerRequestMetrics::Unknown);
        // `n: 2` answers null even with the flag on.
        assert_eq!(
            f.observe(MetricsField::Null, false),
            PerRequestMetrics::Unknown
        );
        assert_eq!(
            f.observe(MetricsField::Invalid, true),
            PerRequestMetrics::Unknown
        );
        assert_eq!(f.observe(MetricsField::Null, true), PerRequestMetrics::Off);
        assert!(f.notice_given.load(Relaxed));
        let on = MetricsField::Times(EngineTimes::default());
        assert_eq!(f.observe(on, false), PerRequestMetrics::On);
        assert_eq!(f.observe(MetricsField::Null, false), PerRequestMetrics::On);
        assert_eq!(f.per_request_metrics().as_str(), "on");
    }
}
