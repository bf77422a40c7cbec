//! Where each request's work lands: prefill spans, decode points, provisional estimates for
//! requests whose progress is invisible, and their reconciliation at completion.
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern); owns no state
//! of its own and never touches energy, only token counts placed in the held window.

use super::attribution::Ledger;
use super::window::{BeforeWindow, Item};
use super::WorkKind;
use crate::observe::{Outcome, ProgressSnapshot};

use crate::observe::decode_context;

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
        let oldest_held = self.window.front().map_or(0, |t| t.seq);
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
        let mut ends = std::mem::take(&mut self.step_scratch);
        ends.clear();
        if self.steps.covers(from) {
            ends.extend(self.steps.within(from, to).take(MAX_STEPS + 1));
        }
        let m = ends.len();
        if !(2..=MAX_STEPS).contains(&m) {
            self.place(slot, from, to, item, before);
        } else {
            let f = 1.0 / m as f32;
            let part = Item {
                prefill: item.prefill * f,
                decode: item.decode * f,
                context: item.context * f,
                ..item
            };
            let mut prev = from;
            for (j, &e) in ends.iter().enumerate() {
                let hi = if j + 1 == m { to } else { e };
                self.place(slot, prev, hi, part, before);
                prev = hi;
            }
        }
        self.step_scratch = ends;
    }

    pub(super) fn place_prefill(&mut self, slot: u32, p: &ProgressSnapshot, first_token_ns: u64) {
        let pd = self.prefill_duration_ns(p);
        let lower = Self::work_start_ns(p).min(first_token_ns);
        let from = first_token_ns.saturating_sub(pd).max(lower);
        let item = Item {
            prefill: p.prompt_tokens as f32,
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

    /// Takes an invisible request's estimate out of the held ticks at its end. With
    /// `keep_prefill`, the estimate's prefill stays where the conveyor put it, scaled so that the
    /// request's prefill (settled and held) is its true prompt: returns whether it did (it needs
    /// some estimated prefill held, or none left to place). Everything else is zeroed, for the
    /// true counts to replace.
    fn reconcile_estimate(&mut self, slot: u32, p: &ProgressSnapshot, keep_prefill: bool) -> bool {
        let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        let refs = std::mem::take(&mut req.provisional);
        let left = (p.prompt_tokens as f64 - req.settled_work[0]).max(0.0);
        let held: f64 = refs
            .iter()
            .filter_map(|&r| self.window.item_ref(r))
            .map(|item| f64::from(item.prefill))
            .sum();
        let kept = keep_prefill && (left <= 0.0 || held > 0.0);
        // As in `place_true_work`: never to nothing, at most 4×.
        let k = if kept && held > 0.0 {
            (left / held).clamp(0.001, 4.0) as f32
        } else {
            0.0
        };
        for r in refs {
            if let Some(item) = self.window.item_mut(r) {
                // All three terms: a context left behind would still weigh γ per token.
                item.prefill *= k;
                item.decode = 0.0;
                item.context = 0.0;
                item.provisional = false;
            }
        }
        kept
    }

    /// Whether the prefill conveyor dated an invisible request's first token clearly later (by
    /// more than four median steps) than counting its tokens back over the steps streams showed
    /// did, with the count's steps longer than the engine's (more than 1.2 median steps each on
    /// average). The count runs on the steps some stream saw: where few streams decode
    /// (prefill-heavy traffic), steps none saw are missing, and the count lands seconds early,
    /// while the conveyor, moved up by every first token, dates a prefill within a step or two.
    /// Otherwise the count wins: the conveyor does not see a request wait for a sequence slot.
    /// Accuracy bench, 8 seeds (576 cells): records 10.3 / 39.8 -> 10.0 / 38.6 % (median / p95),
    /// responses 10.0 / 38.8 -> 9.6 / 37.9 %.
    fn conveyor_dated_it_later(&self, slot: u32, p: &ProgressSnapshot, choices: u32) -> bool {
        if p.engine_timed {
            return false;
        }
        let conveyor_ft = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map_or(0, |r| r.prov_decode_from_ns);
        if conveyor_ft == 0 {
            return false;
        }
        let (_, counted_ft) = self.true_work_span(p, choices);
        let mut steps: Vec<u64> = self.steps.durations_before(p.end_ns, 256).collect();
        let step = if steps.is_empty() {
            0
        } else {
            let mid = steps.len() / 2;
            *steps.select_nth_unstable(mid).1
        };
        let tokens = (p.completion_tokens / u64::from(choices.max(1))).max(1);
        let counted_step = p.end_ns.saturating_sub(counted_ft) / tokens;
        conveyor_ft > counted_ft.saturating_add(4 * step) && 5 * counted_step > 6 * step
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
            if p.arrival_ns > self.oldest_unstarted_ns {
                // Queued behind a request that has not started: no work yet.
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
                self.place_prefill(slot, p, p.first_token_ns);
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
        let (from_ns, queued_until, kind, choices, decode_start) = (
            req.prov_from_ns,
            req.queued_until_ns,
            req.kind,
            req.choices,
            req.prov_decode_from_ns,
        );
        let s0 = Self::work_start_ns(p).max(queued_until);
        let a = from_ns.max(s0);
        if end_ns <= a {
            return;
        }
        let overlap = |lo: u64, hi: u64| end_ns.min(hi).saturating_sub(a.max(lo));
        let (decode, context) = if kind == WorkKind::Generate && decode_start != 0 {
            // Every choice decodes at the per-sequence rate.
            let per_ns = self.decode_rate * f64::from(choices) / 1e9;
            let before = per_ns * a.saturating_sub(decode_start) as f64;
            let decode = per_ns * overlap(decode_start, u64::MAX) as f64;
            let ctx = decode_context(
                p.prompt_tokens,
                choices,
                before as u64,
                (before + decode) as u64,
            );
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
                self.place_prefill(slot, p, ft);
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
            // Reconcile: replace the provisional estimate still held by the true counts, spread
            // over the request's life (its prefill kept where the conveyor put it when that date
            // is the better one). The part of its life already settled keeps its provisional split.
            self.queue_events.passed.push(slot);
            let no_work = p.completion_tokens == 0 && p.outcome == Outcome::Error;
            if no_work {
                self.drop_provisional(slot);
            } else {
                let keep_prefill = self.conveyor_dated_it_later(slot, p, choices);
                let kept = self.reconcile_estimate(slot, p, keep_prefill);
                self.place_true_work(slot, p, !kept);
            }
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

    /// Where an invisible request's true work ran, anchored at its end: `(prefill start, first
    /// token)`; its decode runs from the first token to the end.
    fn true_work_span(&self, p: &ProgressSnapshot, choices: u32) -> (u64, u64) {
        let end = p.end_ns;
        let s0 = Self::work_start_ns(p).min(end);
        let pd = self.prefill_duration_ns(p);
        if p.engine_timed && p.generation_ns.saturating_add(p.prefill_ns) > 0 {
            // vLLM's own times, anchored at the end (the answer leaves right after its last
            // token): no clock skew between the engine and the proxy to bound.
            let ft = end
                .saturating_sub(p.generation_ns)
                .max(p.arrival_ns.min(end));
            (
                ft.saturating_sub(p.prefill_ns).max(p.arrival_ns.min(ft)),
                ft,
            )
        } else {
            // Every choice decodes one token per step, at the per-sequence rate.
            let per_s = self.decode_rate * f64::from(choices.max(1));
            let decode_ns = (p.completion_tokens as f64 / per_s * 1e9).min(u64::MAX as f64) as u64;
            let mut ft = end.saturating_sub(decode_ns).max(s0);
            if self.steps.covers(s0) {
                // Better: the engine steps streams showed. One token per choice per step, the
                // last one at the end, so the first came `k` step boundaries back.
                let k = (p.completion_tokens / u64::from(choices.max(1))).max(1) as usize;
                if let Some(b) = self.steps.nth_back(end, k, s0) {
                    ft = b;
                }
            }
            (ft.saturating_sub(pd).max(s0), ft)
        }
    }

    /// Places the true work of a request whose progress was invisible, anchored at its end (a
    /// non-streamed answer leaves right after its last token): decode over vLLM's generation time
    /// when its `metrics` said, else at the per-sequence rate the streams show; prefill just before
    /// that, over vLLM's prefill time or the estimated one; never before the arrival.
    /// With `prefill` false its prefill is left out (the conveyor's placement was kept).
    fn place_true_work(&mut self, slot: u32, p: &ProgressSnapshot, prefill: bool) {
        let choices = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map_or(1, |r| r.choices);
        let end = p.end_ns;
        let (from, ft) = self.true_work_span(p, choices);
        // What already settled on the provisional estimate stays; the held part of the true
        // placement is scaled to the rest of the true work, so that the request's total is its
        // true count however the estimate was timed (at most 4×: an estimate far too low leaves
        // some of the work to the settled part's split). Bench: record p95 45.0 -> 43.2 % and
        // 51.7 -> 50.2 % (two seeds; medians 10.8 -> 10.7, 12.9 -> 12.7).
        let ws = self.window.front().map_or(end, |t| t.start_ns);
        let settled = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map_or([0.0; 3], |r| r.settled_work);
        let held = |lo: u64, hi: u64| {
            if hi <= lo {
                1.0
            } else {
                hi.saturating_sub(lo.max(ws)) as f64 / (hi - lo) as f64
            }
        };
        const MIN_SCALE: f64 = 0.001;
        let scale = |truth: f64, done: f64, frac: f64| -> f32 {
            if frac <= 0.0 || truth <= 0.0 {
                return 1.0;
            }
            // Never to nothing: a tick where only this request ran would lose its energy to
            // unattributed (at 0, 2.7 % of the energy of 70B prefill-heavy went there).
            (((truth - done).max(0.0) / (truth * frac)).clamp(MIN_SCALE, 4.0)) as f32
        };
        if prefill && p.prompt_tokens > 0 {
            let k = scale(p.prompt_tokens as f64, settled[0], held(from, ft));
            let item = Item {
                prefill: p.prompt_tokens as f32 * k,
                ..Item::empty(slot)
            };
            self.place(slot, from, ft, item, BeforeWindow::Drop);
        }
        if p.completion_tokens > 0 {
            let ctx = decode_context(p.prompt_tokens, choices, 0, p.completion_tokens);
            let fr = held(ft, end);
            let kd = scale(p.completion_tokens as f64, settled[1], fr);
            let kc = scale(ctx, settled[2], fr);
            let item = Item {
                decode: p.completion_tokens as f32 * kd,
                context: ctx as f32 * kc,
                ..Item::empty(slot)
            };
            self.place_by_steps(slot, ft, end, item, BeforeWindow::Drop);
        }
    }
}
