//! Chat and completions chunks: per-choice counting (continuous usage cumulative per choice, or one
//! token per output chunk as a fallback), the authoritative final usage chunk, mid-stream errors,
//! vLLM's per-request `metrics`, and the edits that remove injected usage or add the `energy` object.

use std::sync::atomic::Ordering::Relaxed;

use super::edit::{add_fingerprint, append_member, append_member_at, bump};
use super::fast::{self, Choices, Counts};
use super::{StreamObserver, MAX_TRACKED_CHOICES};
use crate::observe::RequestProgress;
use crate::openai::inject::StripPolicy;
use crate::openai::json_scan::{scan_object_with, ObjectLayout};
use crate::openai::usage::{parse_metrics, ChoiceView, UsageView};

impl StreamObserver {
    pub(super) fn on_chunk(
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
        // `choices` and `usage` are read by the fast path as the scan reaches them (their bytes
        // are walked once); a value it declines is skipped by the scan and parsed by serde later.
        let mut read = Read::default();
        let scanned = scan_object_with(data, &mut layout, &mut |idx, key, at| match key {
            b"choices" => {
                let (c, end) = fast::choices_at(data, at)?;
                read.choices = Some((idx, c));
                Some(end)
            }
            b"usage" => {
                let (u, end) = fast::usage_at(data, at)?;
                read.usage = Some((idx, u));
                Some(end)
            }
            _ => None,
        });
        let edit = match scanned {
            Ok(()) => self.on_chunk_members(data, &layout, read, now_ns, progress, energy),
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
        read: Read<'_>,
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
                // vLLM's per-request timing, in the final usage chunk (n == 1 only).
                b"metrics" => self.on_metrics(parse_metrics(value), progress),
                _ => {}
            }
        }
        if usage_at.is_some() && self.cfg.detect_forcing {
            self.totals.unasked_usage = true;
        }
        if self.totals.saw_error && choices_at.is_none() && usage_at.is_none() {
            return ChunkEdit::None;
        }
        let member = |i: Option<usize>| i.and_then(|i| layout.members.get(i));
        // The byte-level reading first; serde when the chunk is anything but the plain shape (it
        // then decides, and reports a parse error where the chunk is not what the views expect).
        let choices: Choices<'_> = match member(choices_at) {
            Some(m) => match read.choices.filter(|(i, _)| Some(*i) == choices_at) {
                Some((_, c)) => c,
                None => match serde_json::from_slice::<Vec<ChoiceView<'_>>>(m.value(data)) {
                    Ok(c) => Choices::from_views(c),
                    Err(_) => {
                        self.totals.parse_errors += 1;
                        return ChunkEdit::None;
                    }
                },
            },
            None => Choices::default(),
        };
        let usage: Option<Counts> = match member(usage_at) {
            Some(m) => match read.usage.filter(|(i, _)| Some(*i) == usage_at) {
                Some((_, u)) => Some(u),
                None => match serde_json::from_slice::<UsageView>(m.value(data)) {
                    Ok(u) => Some(Counts::from(u)),
                    Err(_) => {
                        self.totals.parse_errors += 1;
                        return ChunkEdit::None;
                    }
                },
            },
            None => None,
        };
        let choices = choices.as_slice();
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
        for c in choices {
            let slot = (c.index as usize).min(MAX_TRACKED_CHOICES - 1);
            if let Some(fr) = c.finish_reason.as_deref() {
                self.push_finish(fr);
                self.finished_choices += 1;
                finished_here = true;
            }
            if c.output {
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
            Some(range) => ChunkEdit::Remove(range, hold),
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
        if self.cfg.defer_energy {
            // The relay inserts the object itself once the request has settled: here only its
            // place is marked (the member's value is left empty).
            let (json, value_at) = append_member_at(data, layout, "energy", b"");
            return ChunkEdit::Deferred(json, value_at);
        }
        let Some(text) = energy() else {
            return ChunkEdit::None;
        };
        ChunkEdit::Json(
            append_member(data, layout, "energy", text.as_bytes()),
            false,
        )
    }
}

/// How one chunk's data changes in rewrite mode.
pub(super) enum ChunkEdit {
    /// Unchanged.
    None,
    /// Dropped (the usage-only chunk the client did not ask for).
    Drop,
    /// New data JSON; `true` when the event must be held (last finish chunk, see `held`).
    Json(Vec<u8>, bool),
    /// The data with this byte range removed (injected usage); `true`: held, as for `Json`.
    Remove((usize, usize), bool),
    /// Held as received.
    HoldUnchanged,
    /// New data JSON missing the `energy` member's value, which belongs at the offset (deferred
    /// energy, [`super::ObserverConfig::defer_energy`]).
    Deferred(Vec<u8>, usize),
}

/// What the fast path read during the scan: the member's index and its reading (the last member
/// of that name it could read).
#[derive(Default)]
pub(super) struct Read<'a> {
    choices: Option<(usize, Choices<'a>)>,
    usage: Option<(usize, Counts)>,
}
