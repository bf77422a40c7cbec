//! `/v1/responses` streams: `event:` lines, text deltas counted as estimated progress, usage only in
//! the terminal `response.completed` (or `.incomplete` / `.failed`) event, with vLLM's per-request
//! `metrics` in its `response` when the server was started with `--enable-per-request-metrics`.

use std::sync::atomic::Ordering::Relaxed;

use super::{StreamObserver, MAX_FINISH_REASONS};
use crate::observe::RequestProgress;
use crate::openai::usage::{metrics_from_value, ResponsesEventView};

impl StreamObserver {
    pub(super) fn on_responses_event(
        &mut self,
        name: &[u8],
        data: &[u8],
        now_ns: u64,
        progress: &RequestProgress,
    ) {
        // Text deltas are by far the most frequent events: count them without parsing.
        if name == b"response.output_text.delta" || name == b"response.reasoning_text.delta" {
            self.count_delta(now_ns, progress);
            return;
        }
        let Ok(ev) = serde_json::from_slice::<ResponsesEventView<'_>>(data) else {
            self.totals.parse_errors += 1;
            return;
        };
        let kind = ev.kind.as_deref().unwrap_or("");
        let kind = if kind.is_empty() {
            std::str::from_utf8(name).unwrap_or("")
        } else {
            kind
        };
        match kind {
            "response.output_text.delta" | "response.reasoning_text.delta" => {
                self.count_delta(now_ns, progress)
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.totals.done = true;
                if kind == "response.failed" {
                    self.totals.saw_error = true;
                }
                if let Some(r) = ev.response {
                    if r.error.is_some() && kind == "response.failed" {
                        self.totals.saw_error = true;
                    }
                    if let Some(m) = &r.metrics {
                        self.on_metrics(metrics_from_value(m), progress);
                    }
                    let reason = r.incomplete_details.and_then(|d| d.reason).or(r.status);
                    if let Some(reason) = reason {
                        self.push_finish(&reason);
                    }
                    if let Some(u) = r.usage {
                        if let Some(p) = u.input_tokens {
                            progress.set_prompt_exact(p);
                            self.totals.prompt_tokens = Some(p);
                        }
                        if let Some(c) = u.output_tokens {
                            progress.observe_completion(c, now_ns);
                            progress.completion_tokens.store(c, Relaxed);
                            progress.completion_exact.store(true, Relaxed);
                            self.totals.completion_tokens = c;
                            self.totals.exact = true;
                        }
                    }
                }
            }
            "error" => self.totals.saw_error = true,
            _ => {}
        }
    }

    fn count_delta(&mut self, now_ns: u64, progress: &RequestProgress) {
        if self.totals.exact {
            return;
        }
        self.totals.completion_tokens += 1;
        progress.observe_completion(self.totals.completion_tokens, now_ns);
    }

    pub(super) fn push_finish(&mut self, reason: &str) {
        if self.totals.finish_reasons.len() < MAX_FINISH_REASONS {
            self.totals.finish_reasons.push(reason.to_owned());
        }
    }
}
