//! Reconciliation of a request whose progress was invisible (a non-streamed answer) when it ends:
//! its true counts replace the estimate its held ticks carry. Its decode is placed by counting its
//! tokens back from its end over the engine steps streams showed; its prefill just before that,
//! or, where that count misses steps, where the prefill conveyor put its estimate.
//!
//! Part of the [`Ledger`]'s implementation (split from `work.rs` by concern); like it, touches
//! only token counts placed in the held window.

use super::attribution::Ledger;
use super::queue::SAME_STEP_NS;
use super::window::{BeforeWindow, Item};
use crate::observe::{decode_context, Outcome, ProgressSnapshot};

impl Ledger {
    /// Replaces an ended invisible request's held estimate by its true counts (`choices` at
    /// least 1). The part of its life already settled keeps its provisional split.
    pub(super) fn reconcile_invisible(&mut self, slot: u32, p: &ProgressSnapshot, choices: u32) {
        if p.completion_tokens == 0 && p.outcome == Outcome::Error {
            self.drop_provisional(slot);
            return;
        }
        let mut counted = self.true_work_span(p, choices);
        if !p.engine_timed {
            // The engine runs prompts one after another (each step's chunks from the head of
            // its queue), and the streams' prefills, dated by their first tokens, are known: its
            // prefill lies in the time they left free, so its span starts where its prefill
            // duration of free time lies before its first token. Counted back over the streams'
            // prefills too, the two were placed in the same ticks and each got part of the
            // other's energy. Matrix, eight seeds: records 5.3 / 22.5 -> 5.2 / 22.1 % (four
            // seeds: bursty 5.7 / 22.0 -> 4.8 / 20.8, steady 4.1 / 16.1 -> 4.0 / 15.5, aborts
            // 4.6 / 20.6 -> 4.5 / 20.0 %; prefill-heavy 7.8 / 36.2 -> 7.8 / 36.7 %, where the
            // conveyor's placement is mostly kept instead).
            let pd = counted.1.saturating_sub(counted.0);
            let s0 = Self::work_start_ns(p).min(counted.1);
            counted.0 = counted
                .0
                .min(self.back_from_in_free_time(counted.1, pd, s0));
        }
        let mut span = self
            .conveyors_span_where_steps_went_unseen(slot, p, counted)
            .unwrap_or(counted);
        // Not before the engine could have got to it on the prefill conveyor (see
        // `Ledger::prefill_start_on_the_line`).
        if let Some(start) = self.prefill_start_on_the_line(slot, span.1) {
            span.0 = span.0.max(start);
        }
        // Nor before the run of prefill steps that ended at its first token, where the steps'
        // lengths show one (see `StepHistory::prefill_run_start`).
        if !p.engine_timed {
            if let Some(start) = self.steps.prefill_run_start(span.1, SAME_STEP_NS) {
                span.0 = span.0.max(start);
            }
        }
        let keep_prefill = self.no_steps_seen_over_it(slot, p)
            || self.conveyor_dated_it_later(slot, p, choices, span.1);
        if p.completion_tokens > 0 {
            // Its decode, counted back from its end, shows the engine's sequences then.
            self.seq_limit.note_answer(span.1, p.end_ns, choices.max(1));
        }
        let kept = self.reconcile_estimate(slot, p, keep_prefill);
        self.place_true_work(slot, p, choices, span, !kept);
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
        let left = (p.prompt_tokens as f64 - req.done_work()[0]).max(0.0);
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

    /// Whether no stream showed the engine's steps since the request's work could start (a run's
    /// first requests), so that counting its tokens back has nothing to count on, while its
    /// estimate's prefill lies where the conveyor put it in measured ticks. The count then fell
    /// back to the engine's average rates and placed the prompt later than the engine ran it,
    /// leaving the ticks it ran in with no work (context-bound prefill-heavy: all of the
    /// matrix's unattributed energy, the run's first ~400 ms). Unless vLLM timed it.
    fn no_steps_seen_over_it(&self, slot: u32, p: &ProgressSnapshot) -> bool {
        if p.engine_timed || self.steps.covers(Self::work_start_ns(p).min(p.end_ns)) {
            return false;
        }
        let Some(req) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return false;
        };
        let mut prefill_held = false;
        for &r in &req.provisional {
            match self.window.item_ref(r) {
                Some(item) if item.prefill > 0.0 => {
                    if !self.window.is_metered(r) {
                        return false;
                    }
                    prefill_held = true;
                }
                _ => {}
            }
        }
        prefill_held
    }

    /// Where an invisible request's work ran when counting its tokens back from its end ran over
    /// time in which no stream decoded (less than 90 % of `(counted first token, end]` covered by
    /// streams' spans from one token to the next, `StepHistory::coverage`):
    /// engine steps went unseen there, and the count lands anywhere (seconds early on prefill-heavy
    /// traffic, where few requests stream), while the prefill conveyor dates first tokens within
    /// a step or two (context-bound prefill-heavy: mean error 1.4 s against 0.14 s; on queueing
    /// traffic, streams see every step and the count is exact, the conveyor 0.17 s off). Its first
    /// token is then the conveyor's, its decode after it; its prompt is spread from the earlier
    /// of the two prefill starts to that first token, so that if the conveyor is wrong the ticks
    /// the engine prefilled it in are not left without work (with the conveyor's start alone, in
    /// real time 0.4-0.8 % of prefill-heavy runs' energy went unattributed). `counted` is the
    /// count's `(prefill start, first token)`. Accuracy bench, four seeds: records 8.9 / 32.5 ->
    /// 8.7 / 31.7 % (prefill-heavy on all three models), eight seeds 9.1 / 34.3 -> 9.0 / 33.5 %;
    /// 0.5 or 0.99 as the bound, 8.9 / 32.0 and 8.8 / 31.7 % (with the conveyor's start alone).
    /// Coverage kept per tick (a stream decoding through the whole tick) missed the steps of
    /// streams that start or end inside a tick: neutral in real time where this is slightly
    /// better (README, "Demo and accuracy").
    fn conveyors_span_where_steps_went_unseen(
        &self,
        slot: u32,
        p: &ProgressSnapshot,
        counted: (u64, u64),
    ) -> Option<(u64, u64)> {
        // Nothing counted (no decode, or vLLM's own times): nothing missed.
        if p.engine_timed || counted.1 >= p.end_ns || self.steps.all_seen(counted.1, p.end_ns) {
            return None;
        }
        let ft = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|r| r.prov_decode_from_ns)
            .filter(|&t| t != 0)?
            .min(p.end_ns);
        let s0 = Self::work_start_ns(p).min(ft);
        let from = ft.saturating_sub(self.prefill_duration_ns(p)).max(s0);
        Some((from.min(counted.0), ft))
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
    fn conveyor_dated_it_later(
        &self,
        slot: u32,
        p: &ProgressSnapshot,
        choices: u32,
        counted_ft: u64,
    ) -> bool {
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

    /// The time from which `need_ns` of time not covered by the recent streams' prefills
    /// ([`Ledger::stream_prefills`]) lies before `to_ns`; not before `floor_ns`.
    pub(super) fn back_from_in_free_time(&self, to_ns: u64, need_ns: u64, floor_ns: u64) -> u64 {
        let mut spans: Vec<(u64, u64)> = self
            .stream_prefills
            .iter()
            .filter(|&&(a, b)| a < to_ns && b > floor_ns && b > a)
            .map(|&(a, b)| (a, b.min(to_ns)))
            .collect();
        spans.sort_unstable_by_key(|s| std::cmp::Reverse(s.1));
        let (mut t, mut need) = (to_ns, need_ns);
        for (a, b) in spans {
            if b < t {
                let free = t - b;
                if free >= need {
                    return (t - need).max(floor_ns);
                }
                need -= free;
            }
            t = t.min(a);
            if t <= floor_ns {
                return floor_ns;
            }
        }
        t.saturating_sub(need).max(floor_ns)
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
    fn place_true_work(
        &mut self,
        slot: u32,
        p: &ProgressSnapshot,
        choices: u32,
        (from, ft): (u64, u64),
        prefill: bool,
    ) {
        let end = p.end_ns;
        // What already settled on the provisional estimate stays; the held part of the true
        // placement is scaled to the rest of the true work, so that the request's total is its
        // true count however the estimate was timed (at most 4×: an estimate far too low leaves
        // some of the work to the settled part's split). Bench: record p95 45.0 -> 43.2 % and
        // 51.7 -> 50.2 % (two seeds; medians 10.8 -> 10.7, 12.9 -> 12.7).
        let ws = self.window.open_front().map_or(end, |t| t.start_ns);
        let settled = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map_or([0.0; 3], |r| r.done_work());
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
            // A prompt no estimate ever placed (none of it settled), counted back to before the
            // held window: dropped, the request kept no prefill at all and its prompt's energy
            // went to the others (an answer held back all its wait, then decoding for seconds).
            // Squeezed into the window instead, it is counted near where it ran. Accuracy bench,
            // eight seeds, records: the mix 3.67 / 15.50 -> 3.65 / 15.35 %, without streams
            // 13.45 / 55.18 -> 12.95 / 53.29 %, held-out models (four seeds) 4.19 / 15.77 ->
            // 4.17 / 15.67 %; figures read unchanged.
            let before = if settled[0] <= 0.0 && held(from, ft) <= 0.0 {
                BeforeWindow::Compress
            } else {
                BeforeWindow::Drop
            };
            self.place(slot, from, ft, item, before);
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
