//! Where each request's work lands: prefill spans, decode points and provisional estimates for
//! requests whose progress is invisible (their reconciliation at completion is in
//! [`super::reconcile`]).
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern); owns no state
//! of its own and never touches energy, only token counts placed in the held window.

use super::attribution::Ledger;
use super::queue_serve::{PrefillStart, SLOT_GATED_SHARE};
use super::window::{BeforeWindow, Item};
use super::WorkKind;
use crate::observe::{Outcome, ProgressSnapshot};

use crate::observe::{decode_context, decode_context_between};

/// How many recent streams' prefill spans the ledger keeps (`Ledger::stream_prefills`): at 16 bytes
/// each, 4 KiB; a few seconds of first tokens at hundreds of streams a second, longer than the
/// settlement lag over which answers are placed.
pub(super) const STREAM_PREFILLS: usize = 256;

impl Ledger {
    /// The estimated prefill duration of `p`, ns.
    pub(super) fn prefill_duration_ns(&self, p: &ProgressSnapshot) -> u64 {
        if p.prefill_ns > 0 {
            return p.prefill_ns;
        }
        let secs = p.prompt_tokens as f64 / self.prefill_rate;
        (secs * 1e9).min(u64::MAX as f64) as u64
    }

    /// Where the engine started working on `p`: after its queue wait when vLLM reported it.
    pub(super) fn work_start_ns(p: &ProgressSnapshot) -> u64 {
        p.arrival_ns.saturating_add(p.queue_ns)
    }

    pub(super) fn place(
        &mut self,
        slot: u32,
        from: u64,
        to: u64,
        item: Item,
        before: BeforeWindow,
    ) {
        let provisional = item.provisional;
        // Frozen ticks count as settled here: their items can no longer change.
        let oldest_held = self.window.open_front().map_or(0, |t| t.seq);
        // The window and the request are disjoint fields: the references go straight into the
        // request's list, with no vector per call.
        let mut req = self.slots.get_mut(slot as usize).and_then(Option::as_mut);
        self.window.place_span(from, to, item, before, |r| {
            if let Some(req) = req.as_mut() {
                req.pending_items = req.pending_items.saturating_add(1);
                if provisional {
                    let refs = &mut req.provisional;
                    if refs.len() == refs.capacity() {
                        // References to settled ticks lead nowhere: drop them before the list
                        // grows, so it stays bounded by the held window, however long the
                        // request lives.
                        refs.retain(|&(seq, _)| seq >= oldest_held);
                    }
                    refs.push(r);
                }
            }
        });
    }

    /// Places `item` over `(from, to]` one equal part per engine step seen in it (continuous
    /// batching advances every running sequence once per step, whatever the step's length), or
    /// in proportion to time where the steps are unknown or too many to be worth it.
    pub(super) fn place_by_steps(
        &mut self,
        slot: u32,
        from: u64,
        to: u64,
        item: Item,
        before: BeforeWindow,
    ) {
        const MAX_STEPS: usize = 64;
        const MIN_PART_NS: u64 = super::tick_split::SPLIT_NS / 2;
        let mut ends = std::mem::take(&mut self.step_scratch);
        ends.clear();
        if self.steps.covers(from) {
            ends.extend(self.steps.within(from, to).take(MAX_STEPS + 1));
        }
        let m = ends.len();
        if !(2..=MAX_STEPS).contains(&m) {
            self.place(slot, from, to, item, before);
        } else {
            // Steps closer together than `MIN_PART_NS` share one item, with one part per step
            // in it: a tick's energy is split over parts of `SPLIT_NS`, so finer items tell it
            // nothing more, and streams that are not in lockstep (an upstream that balances
            // over several engines, the overhead bench's independently paced streams) showed
            // a step every ~2 ms: 256 such streams put ~6,000 items in every tick (with their
            // provisional splits, 14.8 MB of the accounting thread's peak heap).
            let mut prev = from;
            let mut steps_in = 0u32;
            for (j, &e) in ends.iter().enumerate() {
                steps_in += 1;
                let last = j + 1 == m;
                let hi = if last { to } else { e };
                if last || hi.saturating_sub(prev) >= MIN_PART_NS {
                    let f = steps_in as f32 / m as f32;
                    let part = Item {
                        prefill: item.prefill * f,
                        decode: item.decode * f,
                        context: item.context * f,
                        ..item
                    };
                    self.place(slot, prev, hi, part, before);
                    prev = hi;
                    steps_in = 0;
                }
            }
        }
        self.step_scratch = ends;
    }

    /// Places a stream's prefill from `start.from` ([`Ledger::prefill_start`], for the prompts
    /// whose first tokens came in the same engine step; never before the request's own arrival)
    /// to its first token.
    pub(super) fn place_prefill(
        &mut self,
        slot: u32,
        p: &ProgressSnapshot,
        first_token_ns: u64,
        start: PrefillStart,
    ) {
        let lower = Self::work_start_ns(p).min(first_token_ns);
        let from = start.from.max(lower).min(first_token_ns);
        if self.stream_prefills.len() == STREAM_PREFILLS {
            self.stream_prefills.pop_front();
        }
        self.stream_prefills.push_back((from, first_token_ns));
        self.note_slot_wait(start.on_line.map(|l| l.max(lower)), start.run);
        // What settled of its estimate while it waited for its first token (see
        // `Ledger::serve_prefill_queue`) is prefill already counted.
        let settled = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map_or(0.0, |r| r.done_work()[0]);
        let item = Item {
            prefill: (p.prompt_tokens as f64 - settled).max(0.0) as f32,
            ..Item::empty(slot)
        };
        self.place(slot, from, first_token_ns, item, BeforeWindow::Compress);
    }

    /// Places completion tokens `from..to` (cumulative over choices), the latest of them seen at
    /// `at_ns`. A snapshot only tells how many tokens came since the last one and when the latest
    /// did, so they are spread evenly since the previous latest token (one per engine step, at
    /// the step cadence); the first token is a point at `first_token_ns`, and the tokens that
    /// came after it in the same snapshot are spread from it.
    pub(super) fn place_decode(
        &mut self,
        slot: u32,
        at_ns: u64,
        first_token_ns: u64,
        prompt: u64,
        from: u64,
        to: u64,
    ) {
        if to <= from {
            return;
        }
        let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let choices = req.choices;
        let since = req.last_token_seen_ns;
        if since == 0 && from == 0 && first_token_ns != 0 && first_token_ns < at_ns {
            // The first token (one per choice) came with the prefill; the ones after it were
            // decoded step by step until the latest.
            let first = u64::from(choices.max(1)).min(to);
            req.last_token_seen_ns = first_token_ns;
            self.place_decode(slot, first_token_ns, 0, prompt, 0, first);
            self.place_decode(slot, at_ns, 0, prompt, first, to);
            return;
        }
        req.last_token_seen_ns = at_ns.max(since);
        let item = Item {
            decode: (to - from) as f32,
            context: decode_context(prompt, choices, from, to) as f32,
            ..Item::empty(slot)
        };
        if since == 0 || since >= at_ns {
            if self.window.place_point(at_ns, item).is_some() {
                if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                    req.pending_items = req.pending_items.saturating_add(1);
                }
            }
        } else {
            // The stream decoded a token in every step since its previous one: none went unseen.
            self.steps.cover(since, at_ns);
            self.place_by_steps(slot, since, at_ns, item, BeforeWindow::Compress);
        }
    }

    /// Zeroes the provisional work still held for `slot` (its energy there will follow the true
    /// counts instead).
    pub(super) fn drop_provisional(&mut self, slot: u32) {
        let refs = match self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            Some(req) => std::mem::take(&mut req.provisional),
            None => return,
        };
        for r in refs {
            if let Some(item) = self.window.item_mut(r) {
                // All three terms: a context left behind would still weigh γ per token.
                item.prefill = 0.0;
                item.decode = 0.0;
                item.context = 0.0;
            }
        }
    }

    /// Work observed while the request is in flight.
    pub(super) fn progress(&mut self, slot: u32, p: &ProgressSnapshot, start_ns: u64, end_ns: u64) {
        let Some(req) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let (visible, prefill_placed, consumed, choices) = (
            req.visible,
            req.prefill_placed,
            req.consumed_completion,
            req.choices.max(1),
        );
        if !visible && p.progress_visible {
            // Progress became visible: from now on, observed work replaces the estimate.
            self.drop_provisional(slot);
            if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                req.visible = true;
            }
        } else if !visible {
            // Queued behind a request that has not started (engines admit in arrival order), or,
            // where the engine holds prompts back for sequence slots, beyond the slots the
            // streams leave (see `super::seq_limit`; queueing, four seeds: records 4.8 / 18.2 ->
            // 4.3 / 18.0 %, figures read 7.7 / 28.1 -> 6.0 / 25.9 %, streams' 8.9 / 27.5 -> 6.4 /
            // 24.8 %, answers' 5.9 / 29.7 -> 5.8 / 29.1 %; eight seeds: records 4.4 / 17.2 ->
            // 4.0 / 16.8, figures read 7.0 / 26.3 -> 5.6 / 24.6 %): no work yet.
            // Or, where the proxy reads the engine's queue gauges, among the waiting at the
            // two newest readings (see `super::engine_queue`); not where the streams already
            // show slot waits, which the sequence limit handles.
            let by_gauges = self.slot_gated <= SLOT_GATED_SHARE
                && p.end_ns == 0
                && self.engine_queue.holds(p.arrival_ns, end_ns);
            let waits = p.arrival_ns > self.oldest_unstarted_ns
                || (self.slot_gated > SLOT_GATED_SHARE
                    && p.end_ns == 0
                    && !self.seq_limit.admit(choices))
                || by_gauges;
            if by_gauges {
                // Nothing behind it is admitted either: the conveyor stops at its prompt.
                self.queue_events.held.push(slot);
            }
            if waits {
                if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                    req.queued_until_ns = end_ns;
                    req.prov_from_ns = end_ns;
                }
                return;
            }
            // Estimated once the tick's conveyor is served (`serve_prefill_queue`).
            self.queue_events.waiting.push((slot, *p));
            return;
        }
        if p.first_token_ns == 0 {
            // Not started: it holds the engine's estimated progress below its place.
            self.queue_events.waiting.push((slot, *p));
        } else {
            self.report_first_token(slot, p.first_token_ns);
        }
        if !prefill_placed && p.first_token_ns != 0 {
            // The server's prompt count usually comes with the first usage chunk; if this
            // snapshot caught the first token before it, wait one tick for the exact count.
            let waited = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.waited_for_prompt);
            if p.prompt_exact || waited {
                self.learn_prefill_rate(p);
                // Placed once the conveyor has every first token of the tick.
                self.queue_events.prefills.push((slot, *p));
            }
            if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                req.prefill_placed = p.prompt_exact || waited;
                req.waited_for_prompt = true;
            }
        }
        if p.completion_tokens > consumed {
            self.place_decode(
                slot,
                p.last_token_ns,
                p.first_token_ns,
                p.prompt_tokens,
                consumed,
                p.completion_tokens,
            );
            if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                req.consumed_completion = p.completion_tokens;
            }
        }
        // A stream that was decoding before the tick began and is still in flight shows the
        // engine's current per-sequence decode rate (its previous count was read a tick ago).
        if consumed > 0 && p.first_token_ns != 0 && p.first_token_ns <= start_ns {
            // Per sequence: a stream's count sums its choices, which all advance each step.
            self.tick_decodes
                .push(p.completion_tokens.saturating_sub(consumed) / u64::from(choices));
        }
    }

    /// Estimated work of an invisible request from where its estimate reached so far to `end_ns`:
    /// `prefill` prompt tokens (its part of the conveyor's stretch), then decode at the
    /// per-request decode rate from when its estimated prefill ended (`done_at_ns`, 0 if it has
    /// not yet; the first such time sticks).
    pub(super) fn provisional_work(
        &mut self,
        slot: u32,
        p: &ProgressSnapshot,
        end_ns: u64,
        prefill: f64,
        done_at_ns: u64,
    ) {
        let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if req.prov_decode_from_ns == 0 {
            req.prov_decode_from_ns = done_at_ns;
        }
        let (from_ns, queued_until, kind, choices, decode_start, decoded) = (
            req.prov_from_ns,
            req.queued_until_ns,
            req.kind,
            req.choices,
            req.prov_decode_from_ns,
            req.prov_decoded,
        );
        let s0 = Self::work_start_ns(p).max(queued_until);
        let a = from_ns.max(s0);
        if end_ns <= a {
            return;
        }
        let overlap = |lo: u64, hi: u64| end_ns.min(hi).saturating_sub(a.max(lo));
        let (decode, context) = if kind == WorkKind::Generate && decode_start != 0 {
            // Every choice decodes one token per engine step: as many as streams showed steps
            // over the span, where they saw them all, else at the per-sequence rate. Steps are
            // as long as the work they ran (a long prefill step among 25 ms decode steps lasts
            // 170 ms on the 70B model), so a rate in time put several tokens in ticks where
            // the engine stepped once (accuracy bench, eight seeds: responses 5.9 / 27.5 ->
            // 5.7 / 27.1 %, records 5.7 / 23.1 -> 5.6 / 23.2 %).
            let lo = a.max(decode_start);
            let decode = match self.steps.seen_count(lo, end_ns) {
                Some(steps) => steps as f64 * f64::from(choices),
                None => {
                    self.decode_rate * f64::from(choices) * overlap(decode_start, u64::MAX) as f64
                        / 1e9
                }
            };
            // Fractional: at a third of a token per tick, whole counts gave most ticks no
            // context and every third one a whole token's.
            let ctx = decode_context_between(p.prompt_tokens, choices, decoded, decoded + decode);
            (decode, ctx)
        } else {
            (0.0, 0.0)
        };
        let item = Item {
            prefill: prefill as f32,
            decode: decode as f32,
            context: context as f32,
            provisional: true,
            ..Item::empty(slot)
        };
        // The estimate covers the newest tick from `a` on.
        self.place(slot, a, end_ns, item, BeforeWindow::Compress);
        if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            req.prov_from_ns = end_ns;
            req.prov_decoded += decode;
        }
    }

    /// The request ended (at or before the newest tick's end): place whatever work is left.
    pub(super) fn finish(&mut self, slot: u32, p: &ProgressSnapshot) {
        let Some(req) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let (visible, prefill_placed, consumed, choices) = (
            req.visible || p.progress_visible,
            req.prefill_placed,
            req.consumed_completion,
            req.choices.max(1),
        );
        if visible {
            self.drop_provisional(slot);
            if p.first_token_ns != 0 {
                self.report_first_token(slot, p.first_token_ns);
            }
            let no_work = p.completion_tokens == 0 && p.outcome == Outcome::Error;
            if !prefill_placed && !no_work && p.prompt_tokens > 0 {
                // No first token seen: an abort during prefill (or a stream whose tokens were not
                // counted). Its prefill ran, at the latest, just before the end.
                let ft = if p.first_token_ns != 0 {
                    p.first_token_ns
                } else {
                    p.end_ns
                };
                let start = self.prefill_start(&[(slot, *p)], ft);
                self.place_prefill(slot, p, ft, start);
            }
            if p.completion_tokens > consumed {
                let at = if p.last_token_ns != 0 {
                    p.last_token_ns
                } else {
                    p.end_ns
                };
                self.place_decode(
                    slot,
                    at,
                    p.first_token_ns,
                    p.prompt_tokens,
                    consumed,
                    p.completion_tokens,
                );
            }
            self.learn_rates(p, choices);
        } else if p.outcome == Outcome::Aborted && p.completion_tokens == 0 {
            // The client left before an answer whose progress was invisible: its true counts
            // will never come, but the engine worked on it until the abort. The estimate, carried
            // to the end, is the best account of that work (dropping it kept only the prefill:
            // aborted non-streamed records were 40-90 % low).
            // An engine drops a request that is still queued: no more prefill from the conveyor.
            self.provisional_work(slot, p, p.end_ns, 0.0, 0);
        } else {
            // Reconcile: the true counts replace the estimate still held (`super::reconcile`).
            self.learn_answer_rates(p, choices);
            self.queue_events.passed.push(slot);
            self.reconcile_invisible(slot, p, choices);
        }
        self.ended.push(slot);
        if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            req.ended = true;
            req.end_ns = p.end_ns;
            req.visible = visible;
            req.prefill_placed = true;
            req.consumed_completion = p.completion_tokens;
        }
    }
}
