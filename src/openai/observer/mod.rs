//! The per-response stream observer and rewriter: one state machine per streaming response, fed the
//! upstream's body frames as they arrive. It reads token progress into the request's
//! [`RequestProgress`] atomics and, when the proxy injected usage options, removes what it added so the
//! client receives what vLLM would have sent it; it also places the `energy` object in the final usage
//! chunk the client sees. No I/O and no clock: bytes and `now_ns` come in as arguments.
//!
//! Two modes, fixed at construction:
//! - observe only (nothing to remove, no energy to add): `feed` returns the input `Bytes` itself;
//! - rewrite: `feed` returns only complete events (a partial tail is held until its event completes).

use bytes::Bytes;

use super::inject::{InjectionPlan, StripPolicy};
use super::json_scan::{splice, ObjectLayout};
use super::request::RequestView;
use super::sse::{lines, Line, LineKind, Piece, Splitter, DEFAULT_MAX_EVENT_BYTES, KEEP_CAPACITY};

mod chat;
mod edit;
mod fast;
mod responses;

use crate::observe::{Endpoint, RequestProgress};
use crate::openai::usage::{EngineTimes, MetricsField};
use chat::ChunkEdit;
use edit::{rebuild_event, rebuild_event_at};

/// Choice indices tracked per response; higher indices are folded into the last slot (a bound on
/// memory for absurd `n`).
pub const MAX_TRACKED_CHOICES: usize = 1024;
/// Finish reasons kept per response.
pub const MAX_FINISH_REASONS: usize = 16;

/// How to observe one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// Which API produced the stream.
    pub endpoint: Endpoint,
    /// What to remove (from the injection plan).
    pub strip: StripPolicy,
    /// Add the relay's `energy` object to the final usage chunk the client sees (chat/completions).
    pub add_energy: bool,
    /// Choices per prompt (`n`): continuous usage counts are per choice and prompt index is
    /// `choice index / n`.
    pub n: u32,
    /// Choices expected in all (`n` x prompts); 0 when unknown.
    pub expected_choices: u64,
    /// Bound on one buffered event.
    pub max_event_bytes: usize,
    /// The request asked for no usage at all (no `stream_options`, which every vLLM version reads
    /// as "no usage") and the proxy injected nothing: usage in this stream means the upstream forces
    /// it ([`StreamTotals::unasked_usage`]).
    pub detect_forcing: bool,
    /// Leave the `energy` object's value out of the final usage chunk and report where it belongs
    /// ([`StreamObserver::take_energy_split`]) instead of calling `energy`: the relay fills it in
    /// once the request's figures have settled (`response_energy = "settled"`).
    pub defer_energy: bool,
}

impl ObserverConfig {
    /// The configuration for a request's stream. `add_energy` is honoured only when the client will
    /// see a final usage chunk.
    pub fn for_request(view: &RequestView, plan: &InjectionPlan, add_energy: bool) -> Self {
        let usage_api = matches!(
            view.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        );
        ObserverConfig {
            endpoint: view.endpoint,
            strip: plan.strip,
            add_energy: add_energy && usage_api && plan.client_wants_usage,
            n: view.n.max(1),
            expected_choices: if view.accountable {
                view.expected_choices()
            } else {
                0
            },
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            detect_forcing: usage_api
                && view.stream
                && !plan.injected
                && !plan.client_wants_usage
                && !view.stream_options.effective(),
            defer_energy: false,
        }
    }

    /// Observe-only configuration (no injection, no energy).
    pub fn observe_only(endpoint: Endpoint) -> Self {
        ObserverConfig {
            endpoint,
            strip: StripPolicy::Nothing,
            add_energy: false,
            n: 1,
            expected_choices: 0,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            detect_forcing: false,
            defer_energy: false,
        }
    }

    fn rewrites(&self) -> bool {
        self.strip != StripPolicy::Nothing || self.add_energy
    }
}

/// Where the deferred `energy` object goes, as offsets into the output of one `feed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnergySplit {
    /// The final usage chunk's event starts here (everything before it may go out at once).
    pub event_at: usize,
    /// The `energy` value belongs here (`event_at <= value_at`).
    pub value_at: usize,
}

/// What a finished (or in-progress) stream amounted to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamTotals {
    /// Prompt tokens reported by the server (`None`: never reported).
    pub prompt_tokens: Option<u64>,
    /// Completion tokens: the server's when `exact`, else counted from chunks.
    pub completion_tokens: u64,
    /// Whether `completion_tokens` is the server's final usage.
    pub exact: bool,
    /// A mid-stream error event was seen (`data: {"error": ...}` or a `response.failed`).
    pub saw_error: bool,
    /// `data: [DONE]` (or a terminal `/v1/responses` event) was seen.
    pub done: bool,
    /// Finish reasons in arrival order (bounded).
    pub finish_reasons: Vec<String>,
    /// Complete events seen.
    pub events: u64,
    /// Events whose JSON could not be read (forwarded unchanged).
    pub parse_errors: u64,
    /// Events over the size bound (forwarded raw, not parsed, not rewritten).
    pub oversized_events: u64,
    /// vLLM's per-request `metrics` as read from the stream (the final usage chunk, or the
    /// `response` of `response.completed`); `None` when the stream carried none.
    pub engine_times: Option<EngineTimes>,
    /// With [`ObserverConfig::detect_forcing`]: a `usage` arrived that nobody asked for (the
    /// upstream forces usage, vLLM `--enable-force-include-usage`).
    pub unasked_usage: bool,
}

/// The per-response state machine.
#[derive(Debug)]
pub struct StreamObserver {
    cfg: ObserverConfig,
    splitter: Splitter,
    totals: StreamTotals,
    /// Per choice index: highest continuous-usage completion count seen.
    usage_per_choice: Vec<u64>,
    /// Per choice index: output-bearing chunks seen (fallback count).
    chunks_per_choice: Vec<u64>,
    /// Per prompt index: prompt tokens from continuous usage.
    prompt_per_prompt: Vec<u64>,
    continuous_seen: bool,
    finished_choices: u64,
    energy_done: bool,
    /// Rewrite mode: a finish chunk held until we know whether the dropped usage chunk's
    /// `system_fingerprint` belongs on it.
    held: Option<Vec<u8>>,
    /// Deferred energy: where, in the bytes the latest `feed` returned, the final usage chunk starts
    /// and its `energy` value belongs.
    energy_split: Option<EnergySplit>,
    line_buf: Vec<Line>,
    data_buf: Vec<u8>,
    layout: ObjectLayout,
}

/// What to do with one complete event in rewrite mode.
enum Action {
    Forward,
    Replace(Vec<u8>),
    Drop,
    Hold(Option<Vec<u8>>),
    /// Replace, with the deferred energy value belonging at the offset in the new event.
    Split(Vec<u8>, usize),
}

impl StreamObserver {
    /// A fresh observer.
    pub fn new(cfg: ObserverConfig) -> StreamObserver {
        StreamObserver {
            splitter: Splitter::new(cfg.max_event_bytes),
            cfg,
            totals: StreamTotals::default(),
            usage_per_choice: Vec::new(),
            chunks_per_choice: Vec::new(),
            prompt_per_prompt: Vec::new(),
            continuous_seen: false,
            finished_choices: 0,
            energy_done: false,
            held: None,
            energy_split: None,
            line_buf: Vec::new(),
            data_buf: Vec::new(),
            layout: ObjectLayout::default(),
        }
    }

    /// Whether this observer rewrites (otherwise `feed` returns its input unchanged).
    pub fn rewrites(&self) -> bool {
        self.cfg.rewrites()
    }

    /// Observes one upstream frame and returns the bytes to forward to the client now.
    ///
    /// `energy` is called at most once, when the final usage chunk the client will see passes; if it
    /// returns a JSON object's text, `,"energy":<text>` becomes that chunk's last member.
    pub fn feed(
        &mut self,
        chunk: Bytes,
        now_ns: u64,
        progress: &RequestProgress,
        energy: &mut dyn FnMut() -> Option<String>,
    ) -> Bytes {
        let mut splitter = std::mem::replace(&mut self.splitter, Splitter::new(0));
        if !self.cfg.rewrites() {
            splitter.feed(&chunk, &mut |piece| {
                if let Piece::Event(raw) = piece {
                    self.on_event(raw, now_ns, progress, energy);
                }
            });
            self.totals.oversized_events = splitter.oversized_events();
            self.splitter = splitter;
            return chunk;
        }
        let pending_before = splitter.pending();
        let mut out: Vec<u8> = Vec::new();
        let mut pristine = pending_before == 0 && self.held.is_none();
        splitter.feed(&chunk, &mut |piece| match piece {
            Piece::Oversized(raw) => {
                self.flush_held(&mut out);
                out.extend_from_slice(raw);
            }
            Piece::Event(raw) => match self.on_event(raw, now_ns, progress, energy) {
                Action::Forward => {
                    self.flush_held(&mut out);
                    out.extend_from_slice(raw);
                }
                Action::Replace(new) => {
                    pristine = false;
                    self.flush_held(&mut out);
                    out.extend_from_slice(&new);
                }
                Action::Drop => pristine = false,
                Action::Split(new, at) => {
                    pristine = false;
                    self.flush_held(&mut out);
                    self.energy_split = Some(EnergySplit {
                        event_at: out.len(),
                        value_at: out.len() + at,
                    });
                    out.extend_from_slice(&new);
                }
                Action::Hold(new) => {
                    pristine = false;
                    self.flush_held(&mut out);
                    self.held = Some(new.unwrap_or_else(|| raw.to_vec()));
                }
            },
        });
        self.totals.oversized_events = splitter.oversized_events();
        let complete = splitter.pending() == 0;
        self.splitter = splitter;
        if pristine && complete && out.len() == chunk.len() {
            // Every event passed unchanged and the frame ended on an event boundary.
            return chunk;
        }
        Bytes::from(out)
    }

    /// With [`ObserverConfig::defer_energy`]: once, after the `feed` whose output holds the final
    /// usage chunk, where in that output the chunk's event starts and where the `energy` object's
    /// JSON text belongs (the chunk there reads `"energy":` followed by the rest of the chunk).
    pub fn take_energy_split(&mut self) -> Option<EnergySplit> {
        self.energy_split.take()
    }

    /// Ends the stream: returns what is still held (a held finish chunk, then the bytes of an
    /// incomplete last event, forwarded raw as received).
    pub fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        self.flush_held(&mut out);
        let tail = self.splitter.finish();
        if self.cfg.rewrites() {
            out.extend_from_slice(&tail);
        }
        Bytes::from(out)
    }

    /// Counts so far (final after [`StreamObserver::finish`]).
    pub fn totals(&self) -> &StreamTotals {
        &self.totals
    }

    /// Whether a mid-stream error was seen (the relay marks the outcome `Error`).
    pub fn saw_error(&self) -> bool {
        self.totals.saw_error
    }

    /// A `metrics` value seen in the stream: its times go to the request's atomics.
    fn on_metrics(&mut self, field: MetricsField, progress: &RequestProgress) {
        if let MetricsField::Times(t) = field {
            progress.set_engine_times(t.queue_ns, t.prefill_ns, t.generation_ns);
            self.totals.engine_times = Some(t);
        }
    }

    fn flush_held(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.held.take() {
            out.extend_from_slice(&h);
        }
    }

    fn on_event(
        &mut self,
        raw: &[u8],
        now_ns: u64,
        progress: &RequestProgress,
        energy: &mut dyn FnMut() -> Option<String>,
    ) -> Action {
        let mut line_buf = std::mem::take(&mut self.line_buf);
        lines(raw, &mut line_buf);
        let mut event_name: &[u8] = b"";
        let mut data_lines = 0usize;
        let mut first_data: &[u8] = &[];
        let mut first_data_at = 0usize;
        for l in &line_buf {
            match l.kind {
                LineKind::Event => event_name = raw.get(l.value_start..l.end).unwrap_or(&[]),
                LineKind::Data => {
                    if data_lines == 0 {
                        first_data = raw.get(l.value_start..l.end).unwrap_or(&[]);
                        first_data_at = l.value_start;
                    }
                    data_lines += 1;
                }
                _ => {}
            }
        }
        // One data line (every vLLM event) is read where it lies; several are joined with `\n`.
        let joined = (data_lines > 1).then(|| {
            let mut buf = std::mem::take(&mut self.data_buf);
            buf.clear();
            for (k, l) in line_buf
                .iter()
                .filter(|l| l.kind == LineKind::Data)
                .enumerate()
            {
                if k > 0 {
                    buf.push(b'\n');
                }
                buf.extend_from_slice(raw.get(l.value_start..l.end).unwrap_or(&[]));
            }
            buf
        });
        let action = if data_lines == 0 {
            Action::Forward
        } else {
            self.totals.events += 1;
            let data: &[u8] = joined.as_deref().unwrap_or(first_data);
            let act = if self.cfg.endpoint == Endpoint::Responses {
                self.on_responses_event(event_name, data, now_ns, progress);
                Action::Forward
            } else {
                match self.on_chunk(data, now_ns, progress, energy) {
                    ChunkEdit::None => Action::Forward,
                    ChunkEdit::Drop => Action::Drop,
                    ChunkEdit::Json(json, hold) => {
                        let ev = rebuild_event(raw, &line_buf, &json);
                        if hold {
                            Action::Hold(Some(ev))
                        } else {
                            Action::Replace(ev)
                        }
                    }
                    ChunkEdit::Remove((a, b), hold) => {
                        // One data line: the data lies in the event, so the range is cut from the
                        // event directly (the same bytes as rebuilding it around the cut data).
                        let ev = if joined.is_none() {
                            splice(raw, (first_data_at + a, first_data_at + b), b"")
                        } else {
                            rebuild_event(raw, &line_buf, &splice(data, (a, b), b""))
                        };
                        if hold {
                            Action::Hold(Some(ev))
                        } else {
                            Action::Replace(ev)
                        }
                    }
                    ChunkEdit::HoldUnchanged => Action::Hold(None),
                    ChunkEdit::Deferred(json, value_at) => {
                        let (ev, json_at) = rebuild_event_at(raw, &line_buf, &json);
                        Action::Split(ev, json_at + value_at)
                    }
                }
            };
            // Keep the buffer for the next event unless one huge event inflated it.
            if let Some(buf) = joined.filter(|b| b.capacity() <= KEEP_CAPACITY) {
                self.data_buf = buf;
            }
            act
        };
        self.line_buf = line_buf;
        action
    }
}
