//! The per-response stream observer and rewriter: one state machine per streaming response, fed the
//! upstream's body frames as they arrive. It reads token progress into the request's
//! [`RequestProgress`] atomics and, when the proxy injected usage options, removes what it added so the
//! client receives what vLLM would have sent it; it also places the `energy` object in the final usage
//! chunk the client sees. No I/O and no clock: bytes and `now_ns` come in as arguments.
//!
//! Two modes, fixed at construction:
//! - observe only (nothing to remove, no energy to add): `feed` returns the input `Bytes` itself;
//! - rewrite: `feed` returns only complete events (a partial tail is held until its event completes).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use super::inject::{InjectionPlan, StripPolicy};
use super::json_scan::{scan_object, scan_object_into, splice, ObjectLayout};
use super::request::RequestView;
use super::sse::{lines, Line, LineKind, Piece, Splitter, DEFAULT_MAX_EVENT_BYTES, KEEP_CAPACITY};
use super::usage::{metrics_times, ChoiceView, ResponsesEventView, UsageView};
use crate::observe::{Endpoint, RequestProgress};

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
        }
    }

    fn rewrites(&self) -> bool {
        self.strip != StripPolicy::Nothing || self.add_energy
    }
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
        let mut first_data: Option<Line> = None;
        self.data_buf.clear();
        for l in &line_buf {
            match l.kind {
                LineKind::Event => event_name = raw.get(l.value_start..l.end).unwrap_or(&[]),
                LineKind::Data => {
                    if data_lines > 0 {
                        self.data_buf.push(b'\n');
                    }
                    data_lines += 1;
                    first_data.get_or_insert(*l);
                    self.data_buf
                        .extend_from_slice(raw.get(l.value_start..l.end).unwrap_or(&[]));
                }
                _ => {}
            }
        }
        let action = if data_lines == 0 {
            Action::Forward
        } else {
            self.totals.events += 1;
            let data = std::mem::take(&mut self.data_buf);
            let act = if self.cfg.endpoint == Endpoint::Responses {
                self.on_responses_event(event_name, &data, now_ns, progress);
                Action::Forward
            } else {
                match self.on_chunk(&data, now_ns, progress, energy) {
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
                    ChunkEdit::HoldUnchanged => Action::Hold(None),
                }
            };
            // Keep the buffer for the next event unless one huge event inflated it.
            if data.capacity() <= KEEP_CAPACITY {
                self.data_buf = data;
            }
            act
        };
        self.line_buf = line_buf;
        action
    }

    fn on_responses_event(
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

    fn push_finish(&mut self, reason: &str) {
        if self.totals.finish_reasons.len() < MAX_FINISH_REASONS {
            self.totals.finish_reasons.push(reason.to_owned());
        }
    }

    fn on_chunk(
        &mut self,
        data: &[u8],
        now_ns: u64,
        progress: &RequestProgress,
        energy: &mut dyn FnMut() -> Option<String>,
    ) -> ChunkEdit {
        if data.trim_ascii() == b"[DONE]" {
            self.totals.done = true;
            return ChunkEdit::None;
        }
        // Locate the few members that matter, then parse only those: ids, model names and
        // vLLM's extra keys are never decoded.
        let mut layout = std::mem::take(&mut self.layout);
        let edit = match scan_object_into(data, &mut layout) {
            Ok(()) => self.on_chunk_members(data, &layout, now_ns, progress, energy),
            Err(_) => {
                self.totals.parse_errors += 1;
                ChunkEdit::None
            }
        };
        self.layout = layout;
        edit
    }

    fn on_chunk_members(
        &mut self,
        data: &[u8],
        layout: &ObjectLayout,
        now_ns: u64,
        progress: &RequestProgress,
        energy: &mut dyn FnMut() -> Option<String>,
    ) -> ChunkEdit {
        let mut choices_at = None;
        let mut usage_at = None;
        for (i, m) in layout.members.iter().enumerate() {
            let value = m.value(data);
            if value == b"null" {
                continue;
            }
            match m.raw_key(data) {
                b"choices" => choices_at = Some(i),
                b"usage" => usage_at = Some(i),
                // A mid-stream error: `{"error": {...}}`, or the older `{"object": "error"}`.
                b"error" => self.totals.saw_error = true,
                b"object" if value == b"\"error\"" => self.totals.saw_error = true,
                b"metrics" => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) {
                        let (queue, prefill) = metrics_times(&v);
                        if let Some(q) = queue {
                            progress.queue_ns.store(q, Relaxed);
                        }
                        if let Some(p) = prefill {
                            progress.prefill_ns.store(p, Relaxed);
                        }
                    }
                }
                _ => {}
            }
        }
        if self.totals.saw_error && choices_at.is_none() && usage_at.is_none() {
            return ChunkEdit::None;
        }
        let member = |i: Option<usize>| i.and_then(|i| layout.members.get(i));
        let choices: Vec<ChoiceView<'_>> = match member(choices_at) {
            Some(m) => match serde_json::from_slice(m.value(data)) {
                Ok(c) => c,
                Err(_) => {
                    self.totals.parse_errors += 1;
                    return ChunkEdit::None;
                }
            },
            None => Vec::new(),
        };
        let usage: Option<UsageView> = match member(usage_at) {
            Some(m) => match serde_json::from_slice(m.value(data)) {
                Ok(u) => Some(u),
                Err(_) => {
                    self.totals.parse_errors += 1;
                    return ChunkEdit::None;
                }
            },
            None => None,
        };
        if choices.is_empty() {
            let Some(u) = usage else {
                return ChunkEdit::None;
            };
            // The final usage chunk: authoritative.
            if let Some(p) = u.prompt_tokens {
                progress.set_prompt_exact(p);
                self.totals.prompt_tokens = Some(p);
            }
            if let Some(c) = u.completion_tokens {
                progress.observe_completion(c, now_ns);
                // The final count is the truth even if a chunk count overshot it.
                progress.completion_tokens.store(c, Relaxed);
                progress.completion_exact.store(true, Relaxed);
                self.totals.completion_tokens = c;
                self.totals.exact = true;
            }
            return self.edit_final_usage(data, layout, energy);
        }
        let mut finished_here = false;
        for c in &choices {
            let slot = (c.index as usize).min(MAX_TRACKED_CHOICES - 1);
            if let Some(fr) = c.finish_reason.as_deref() {
                self.push_finish(fr);
                self.finished_choices += 1;
                finished_here = true;
            }
            let output = match &c.delta {
                Some(d) => d.carries_output(),
                None => c.text.is_some(),
            };
            if output {
                bump(&mut self.chunks_per_choice, slot, |v| *v += 1);
            }
        }
        if let Some(u) = &usage {
            // Continuous usage: cumulative per choice (one choice per chunk in vLLM).
            self.continuous_seen = true;
            progress.progress_visible.store(true, Relaxed);
            let first = choices.first().map_or(0, |c| c.index as usize);
            if let Some(c) = u.completion_tokens {
                bump(
                    &mut self.usage_per_choice,
                    first.min(MAX_TRACKED_CHOICES - 1),
                    |v| *v = (*v).max(c),
                );
            }
            if let Some(p) = u.prompt_tokens {
                let prompt_idx = (first / self.cfg.n.max(1) as usize).min(MAX_TRACKED_CHOICES - 1);
                bump(&mut self.prompt_per_prompt, prompt_idx, |v| *v = p);
                let prompt: u64 = self.prompt_per_prompt.iter().sum();
                if !self.totals.exact {
                    progress.set_prompt_exact(prompt);
                    self.totals.prompt_tokens = Some(prompt);
                }
            }
        }
        if !self.totals.exact {
            let counted: u64 = if self.continuous_seen {
                self.usage_per_choice.iter().sum()
            } else {
                self.chunks_per_choice.iter().sum()
            };
            self.totals.completion_tokens = counted;
            progress.observe_completion(counted, now_ns);
        }
        // Rewriting.
        let hold = self.cfg.strip == StripPolicy::AllUsage
            && finished_here
            && (self.cfg.expected_choices == 0
                || self.finished_choices >= self.cfg.expected_choices);
        let removal = match usage_at {
            Some(i) if self.cfg.strip != StripPolicy::Nothing => layout.removal_range(i),
            _ => None,
        };
        match removal {
            Some(range) => ChunkEdit::Json(splice(data, range, b""), hold),
            None if hold => ChunkEdit::HoldUnchanged,
            None => ChunkEdit::None,
        }
    }

    fn edit_final_usage(
        &mut self,
        data: &[u8],
        layout: &ObjectLayout,
        energy: &mut dyn FnMut() -> Option<String>,
    ) -> ChunkEdit {
        if self.cfg.strip == StripPolicy::AllUsage {
            // The client did not ask for usage: vLLM would have put the fingerprint on the last
            // finish chunk instead.
            if let Some(held) = self.held.take() {
                self.held = Some(add_fingerprint(held, data));
            }
            return ChunkEdit::Drop;
        }
        if !self.cfg.add_energy || self.energy_done {
            return ChunkEdit::None;
        }
        self.energy_done = true;
        let Some(text) = energy() else {
            return ChunkEdit::None;
        };
        ChunkEdit::Json(
            append_member(data, layout, "energy", text.as_bytes()),
            false,
        )
    }
}

enum ChunkEdit {
    None,
    Drop,
    Json(Vec<u8>, bool),
    HoldUnchanged,
}

fn bump(v: &mut Vec<u64>, slot: usize, f: impl FnOnce(&mut u64)) {
    if v.len() <= slot {
        v.resize(slot + 1, 0);
    }
    if let Some(x) = v.get_mut(slot) {
        f(x);
    }
}

/// `json` (scanned as `layout`) with `"name":value` appended as its last member.
fn append_member(json: &[u8], layout: &ObjectLayout, name: &str, value: &[u8]) -> Vec<u8> {
    let (at, comma) = layout.append_point();
    let mut ins = Vec::with_capacity(name.len() + value.len() + 4);
    if comma {
        ins.push(b',');
    }
    ins.push(b'"');
    ins.extend_from_slice(name.as_bytes());
    ins.extend_from_slice(b"\":");
    ins.extend_from_slice(value);
    splice(json, (at, at), &ins)
}

/// The held finish event with the usage chunk's `system_fingerprint` appended to its data (when the
/// usage chunk has one and the held chunk does not).
fn add_fingerprint(held: Vec<u8>, usage_chunk: &[u8]) -> Vec<u8> {
    let Ok(layout) = scan_object(usage_chunk) else {
        return held;
    };
    let Some(fp) = layout.find(usage_chunk, "system_fingerprint") else {
        return held;
    };
    let value = fp.value(usage_chunk);
    let mut ls = Vec::new();
    lines(&held, &mut ls);
    let data: Vec<&Line> = ls.iter().filter(|l| l.kind == LineKind::Data).collect();
    let [d] = data.as_slice() else {
        return held;
    };
    let json = held.get(d.value_start..d.end).unwrap_or(&[]);
    match scan_object(json) {
        Ok(l) if l.find(json, "system_fingerprint").is_none() => {
            let new = append_member(json, &l, "system_fingerprint", value);
            splice(&held, (d.value_start, d.end), &new)
        }
        _ => held,
    }
}

/// The raw event with its data replaced by `json`: in place when the event has one data line;
/// otherwise the data lines collapse into one at the first one's position (the client's parser joins
/// data lines, so it reads the same text).
fn rebuild_event(raw: &[u8], ls: &[Line], json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut wrote = false;
    for l in ls {
        let whole = raw.get(l.start..l.next).unwrap_or(&[]);
        if l.kind != LineKind::Data {
            out.extend_from_slice(whole);
            continue;
        }
        if wrote {
            continue;
        }
        wrote = true;
        out.extend_from_slice(raw.get(l.start..l.value_start).unwrap_or(&[]));
        out.extend_from_slice(json);
        out.extend_from_slice(raw.get(l.end..l.next).unwrap_or(&[]));
    }
    out
}
