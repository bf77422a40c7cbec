//! vLLM 0.32's per-request `metrics` object (a server started with `--enable-per-request-metrics`):
//! the values from a request's timing and their bytes, as in
//! `tests/fixtures/vllm-0.32-per-request-metrics/`.
//!
//! Pure: the timing comes in as an argument (the runner's [`RequestTiming`], or fixed values).
//! Where the object goes is the caller's business: JSON bodies and the `response` of `/v1/responses`
//! write it with `"speculative_decoding":null`, the final usage chunk of a stream without it.

use std::fmt::Write as _;
use std::time::Duration;

use super::runner::RequestTiming;
use super::wire::py_float;

/// The values of one response's `metrics`, milliseconds as vLLM reports them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestMetrics {
    /// `time_to_first_token_ms`: scheduled → first token (vLLM 0.32 leaves the queue out).
    pub ttft_ms: f64,
    /// `generation_time_ms`: first token → last token.
    pub generation_ms: f64,
    /// `queue_time_ms`: arrival → scheduled.
    pub queue_ms: f64,
    /// `mean_itl_ms`: generation time / (tokens − 1); 0 for a single token.
    pub mean_itl_ms: f64,
    /// `tokens_per_second`: completion tokens / (time to first token + generation time), as the
    /// captures compute it (8 tokens, 2.21 + 13.05 ms → 524.2).
    pub tokens_per_second: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

impl RequestMetrics {
    /// The metrics of a request with this timing that produced `completion_tokens` in all.
    pub fn from_timing(t: &RequestTiming, completion_tokens: u64) -> Self {
        let ttft_ms = ms(t.prefill);
        let generation_ms = ms(t.generation);
        let busy_ms = ttft_ms + generation_ms;
        RequestMetrics {
            ttft_ms,
            generation_ms,
            queue_ms: ms(t.queue),
            mean_itl_ms: if t.tokens > 1 {
                generation_ms / f64::from(t.tokens - 1)
            } else {
                0.0
            },
            tokens_per_second: if busy_ms > 0.0 {
                completion_tokens as f64 / (busy_ms / 1000.0)
            } else {
                0.0
            },
        }
    }

    /// Appends the object; `speculative` adds vLLM's trailing `"speculative_decoding":null` (JSON
    /// bodies and `/v1/responses`, not stream chunks).
    pub fn push_json(&self, out: &mut String, speculative: bool) {
        let _ = write!(
            out,
            "{{\"time_to_first_token_ms\":{},\"generation_time_ms\":{},\"queue_time_ms\":{},\"mean_itl_ms\":{},\"tokens_per_second\":{}",
            py_float(self.ttft_ms),
            py_float(self.generation_ms),
            py_float(self.queue_ms),
            py_float(self.mean_itl_ms),
            py_float(self.tokens_per_second),
        );
        out.push_str(if speculative {
            ",\"speculative_decoding\":null}"
        } else {
            "}"
        });
    }
}

/// The timing the mock reports without an engine: the configured delays (`Timing::Fixed`), or, for
/// immediate timing, values like those of the captures (a 14 µs queue, a 2.2 ms prefill, 1.75 ms
/// between tokens).
pub fn fixed_timing(ttft: Duration, itl: Duration, tokens: u32) -> RequestTiming {
    let (queue, ttft, itl) = if ttft.is_zero() && itl.is_zero() {
        (
            Duration::from_micros(14),
            Duration::from_micros(2_200),
            Duration::from_micros(1_750),
        )
    } else {
        (Duration::ZERO, ttft, itl)
    };
    RequestTiming {
        queue,
        prefill: ttft,
        generation: itl * tokens.saturating_sub(1),
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capture's values, written back byte for byte (`chat-json` of the metrics folder).
    #[test]
    fn writes_the_capture_bytes() {
        let m = RequestMetrics {
            ttft_ms: 2.211785000326927,
            generation_ms: 13.049016999502783,
            queue_ms: 0.013845000466972124,
            mean_itl_ms: 1.8641452856432548,
            tokens_per_second: 524.2188451229017,
        };
        let mut s = String::new();
        m.push_json(&mut s, true);
        assert_eq!(
            s,
            r#"{"time_to_first_token_ms":2.211785000326927,"generation_time_ms":13.049016999502783,"queue_time_ms":0.013845000466972124,"mean_itl_ms":1.8641452856432548,"tokens_per_second":524.2188451229017,"speculative_decoding":null}"#
        );
        let mut s = String::new();
        m.push_json(&mut s, false);
        assert!(s.ends_with(",\"tokens_per_second\":524.2188451229017}"));
    }

    /// vLLM's derived values follow from its three times, as the captures show: mean ITL over
    /// tokens − 1, throughput over time to first token plus generation.
    #[test]
    fn derived_values_match_the_captures() {
        let t = RequestTiming {
            queue: Duration::from_nanos(13_845),
            prefill: Duration::from_nanos(2_211_785),
            generation: Duration::from_nanos(13_049_017),
            tokens: 8,
        };
        let m = RequestMetrics::from_timing(&t, 8);
        assert!((m.mean_itl_ms - 1.8641452856432548).abs() < 1e-6);
        assert!((m.tokens_per_second - 524.2188451229017).abs() < 1e-3);
        assert!((m.queue_ms - 0.013845).abs() < 1e-12);
        let one = RequestTiming {
            generation: Duration::ZERO,
            tokens: 1,
            ..t
        };
        let m = RequestMetrics::from_timing(&one, 1);
        assert_eq!((m.generation_ms, m.mean_itl_ms), (0.0, 0.0));
        let none = RequestTiming {
            prefill: Duration::ZERO,
            generation: Duration::ZERO,
            ..one
        };
        assert_eq!(RequestMetrics::from_timing(&none, 1).tokens_per_second, 0.0);
    }

    #[test]
    fn fixed_timings_are_plausible() {
        let t = fixed_timing(Duration::ZERO, Duration::ZERO, 8);
        assert_eq!(t.generation, Duration::from_micros(1_750 * 7));
        assert!(t.queue > Duration::ZERO && t.prefill > Duration::ZERO);
        let t = fixed_timing(Duration::from_millis(5), Duration::from_millis(2), 3);
        assert_eq!(
            (t.queue, t.prefill, t.generation),
            (
                Duration::ZERO,
                Duration::from_millis(5),
                Duration::from_millis(4)
            )
        );
    }
}
