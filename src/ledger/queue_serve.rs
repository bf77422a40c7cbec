//! The ledger's glue to the prefill conveyor ([`super::queue`]): the tick's conveyor events,
//! gathered while the ledger reads the tick's observations, and serving them: each request's place
//! on the conveyor, the first tokens that move it, the stretch the engine served in the tick and
//! each invisible request's part of it, and a stream's prefill start on the conveyor's line.
//!
//! Part of the [`Ledger`]'s implementation (split from `queue.rs` by concern).

use super::attribution::Ledger;
use super::queue::{ConveyorLine, Resizes, SAME_STEP_NS};
use super::window::{BeforeWindow, Item};
use crate::observe::ProgressSnapshot;

/// This tick's conveyor events, gathered while the ledger reads the tick's observations and
/// applied after them by [`Ledger::serve_prefill_queue`].
#[derive(Debug, Default)]
pub(super) struct QueueEvents {
    /// (arrival ns, id, slot, prompt tokens): requests new to the conveyor.
    pub(super) new: Vec<(u64, u64, u32, f64)>,
    /// (first token ns, slot): a first token seen.
    pub(super) reached: Vec<(u64, u32)>,
    /// Slots whose invisible request ended.
    pub(super) passed: Vec<u32>,
    /// (slot, exact prompt tokens): requests on the conveyor whose exact prompt count came.
    pub(super) sized: Vec<(u32, f64)>,
    /// Requests with no first token seen: (slot, snapshot).
    pub(super) waiting: Vec<(u32, ProgressSnapshot)>,
    /// Answers the engine's queue gauges show waiting (see `super::engine_queue`): the engine
    /// admits in arrival order, so the conveyor serves nothing from the start of their prompts
    /// on (it used to serve past them, and an answer released after a long wait then had its
    /// prefill estimated as done long before; accuracy bench, eight seeds, records: the mix 3.68
    /// / 15.62 -> 3.67 / 15.50 %, without streams 13.66 / 55.32 -> 13.45 / 55.18 %).
    pub(super) held: Vec<u32>,
    /// Streams whose first token came in the tick, their prefill to place once the conveyor
    /// knows every first token of the tick: (slot, snapshot).
    pub(super) prefills: Vec<(u32, ProgressSnapshot)>,
}

/// Where a prefill placed at its first token starts ([`Ledger::prefill_start`]), and the two
/// bounds [`Ledger::note_slot_wait`] compares.
#[derive(Clone, Copy, Debug)]
pub(super) struct PrefillStart {
    /// The start.
    pub(super) from: u64,
    /// Where the conveyor's line reached the prompt (the first of them, for prompts of one step).
    pub(super) on_line: Option<u64>,
    /// Where the run of long engine steps that ended at the first token began.
    pub(super) run: Option<u64>,
}

/// Share of recent first tokens whose prefill waited for a sequence slot above which streams
/// waiting for their first token get no estimate from the conveyor (0.1 to 0.6 gave the same
/// figures on the accuracy bench: the share is near 0 or near 1).
pub(super) const SLOT_GATED_SHARE: f64 = 0.3;

/// The ledger's use of the conveyor.
impl Ledger {
    /// The earliest a request's prefill can have started, given its first token at `ft_ns`, as
    /// the prefill conveyor dates it: on the line through the latest first token before its
    /// prompt on the conveyor and its own first token ([`super::queue::PrefillQueue::line_start`]), but never
    /// so late that its prompt would have run faster than the conveyor's measured throughput.
    /// `None` when the conveyor cannot tell (no place yet, no earlier first token). At most
    /// `ft_ns`.
    ///
    /// And never later than the start of the engine step that ended with the first token, where
    /// the steps are known there: prompts that finish in one step (a burst's, or the tail of one
    /// prompt and the next) ran through the whole step, but the line, through first tokens of the
    /// same step or one just before it, crowded them into the step's last part and left its
    /// first part to the decodes beside them. Accuracy bench, eight seeds: records 7.4 / 28.4 ->
    /// 7.3 / 28.0 %, responses 7.7 / 33.9 -> 7.6 / 33.9 % (bursty 7.2 / 25.4 -> 6.3 / 23.6 %,
    /// mixed-long 14.5 / 50.3 -> 14.2 / 48.5 %); two seeds under the variants, records: own costs
    /// 5.6 / 21.1 -> 5.4 / 20.5 %, vLLM's `metrics` 6.9 / 25.2 -> 6.7 / 24.9 %, 33 and 200 ms
    /// counters 7.7 / 28.2 -> 7.6 / 27.8 %, jitter 8.6 / 30.8 -> 8.5 / 30.8 % (responses within
    /// 0.2 / 0.4). Where no stream showed the steps (under 90 % of the span from that boundary
    /// to the first token covered), the boundary is whichever step some stream saw last, seconds
    /// early on prefill-heavy traffic: without the coverage test, prefill-heavy records went
    /// 9.1 / 39.1 -> 9.9 / 42.7 % and a guard case past its bound (stop 29).
    ///
    /// Why: each prompt's prefill used to be spread over `prompt / prefill rate` before its first
    /// token, each on its own. The engine prefills prompts one after another (chunked, first come
    /// first served), so back to back those windows overlapped wherever the learned rate was
    /// below the engine's (it is an upper envelope of `prompt / time to first token`, which counts
    /// the queue wait), and the ticks where they overlapped held twice the engine's prefill: the
    /// prompts there were priced at half, those alone at full (70B prefill-heavy records 16 %
    /// median error, the JSON answers' own per-token figures 3 %). On the line, consecutive
    /// prompts share the time between first tokens by their sizes, as the engine did. Only a
    /// bound on the start: where the line is slower (idle or decode-only time between the first
    /// tokens), the window stays `prompt / prefill rate`. Applied to streams and to non-streamed
    /// answers alike: to either alone it made records worse (prefill-heavy 13.8 -> 18-20 %
    /// median), the two placements disagreeing more than before.
    pub(super) fn prefill_start_on_the_line(&self, slot: u32, ft_ns: u64) -> Option<u64> {
        let r = self.slots.get(slot as usize)?.as_ref()?;
        if r.queue_place <= 0.0 {
            return None;
        }
        let on_line = self
            .prefill_queue
            .line_start(r.queue_place, r.queue_prompt, ft_ns)?;
        let fastest_ns = r.queue_prompt / self.prefill_queue.rate() * 1e9;
        let latest = ft_ns.saturating_sub(fastest_ns.min(u64::MAX as f64) as u64);
        // Both are at most `ft_ns`: the line ends there.
        let start = on_line.min(latest);
        // The engine step that sampled the first token also ran the prompt's last chunk: the
        // prefill began no later than that step did, where streams showed its start (every
        // step since seen).
        let step_start = self
            .steps
            .nth_back(ft_ns.saturating_sub(SAME_STEP_NS), 1, 0)
            .filter(|&b| self.steps.all_seen(b, ft_ns));
        Some(step_start.map_or(start, |b| start.min(b)))
    }

    /// Notes whether a prefill placed at a first token started, as the steps showed, more than
    /// two short steps after the conveyor's line reached the request (`on_line`, at the earliest
    /// its arrival: the line may have crossed its place before it came): it waited for a sequence
    /// slot (vLLM's `max_num_seqs`), not for the prefill queue. Kept as a moving share over the
    /// recent first tokens (weight 1/5 each).
    pub(super) fn note_slot_wait(&mut self, on_line: Option<u64>, run: Option<u64>) {
        let short = self.steps.short_step_ns().unwrap_or(0);
        let waited =
            matches!((run, on_line), (Some(r), Some(l)) if r > l.saturating_add(2 * short));
        self.slot_gated += 0.2 * (f64::from(u8::from(waited)) - self.slot_gated);
    }

    /// Places the prefill of the streams whose first token came in the tick, once the conveyor
    /// has every first token of the tick: those whose first tokens came in one engine step
    /// together from [`Ledger::prefill_start`].
    pub(super) fn place_tick_prefills(&mut self) {
        let mut prefills = std::mem::take(&mut self.queue_events.prefills);
        prefills.sort_by_key(|(_, p)| p.first_token_ns);
        let mut i = 0;
        while i < prefills.len() {
            let ft = prefills[i].1.first_token_ns;
            let same_step = prefills[i..]
                .iter()
                .take_while(|(_, p)| p.first_token_ns <= ft.saturating_add(SAME_STEP_NS))
                .count();
            let step = &prefills[i..i + same_step];
            let start = self.prefill_start(step, ft);
            for &(slot, p) in step {
                // Its true prefill replaces the estimate it held while it waited.
                self.drop_provisional(slot);
                let own = if same_step > 1 {
                    PrefillStart {
                        on_line: self.prefill_start_on_the_line(slot, ft),
                        ..start
                    }
                } else {
                    start
                };
                self.place_prefill(slot, &p, p.first_token_ns, own);
            }
            i += same_step;
        }
        prefills.clear();
        self.queue_events.prefills = prefills;
    }

    /// Where the prefill of the prompts whose first tokens came in one engine step at `ft_ns`
    /// started, at the earliest: their prefill durations before `ft_ns` together, but not before
    /// the first of them arrived, nor before the conveyor's line reached the first of them
    /// ([`Ledger::prefill_start_on_the_line`]) or the run of long engine steps that ended with
    /// them began ([`super::steps::StepHistory::prefill_run_start`]). Each is placed from there
    /// (or its own arrival) to its first token.
    ///
    /// Why together: the engine runs every chunk of a step over the whole step. Placed each on
    /// its own, `prompt / prefill rate` before the first token, three prompts that shared a
    /// 154 ms step on the 70B model were each put on its last ~65 ms, and the step's first part
    /// held only the decodes beside them, which took its energy: each prompt's record read half
    /// its prefill energy (traced with the model's own costs on steady traffic). Accuracy bench,
    /// four seeds: records 5.7 / 23.2 -> 5.5 / 22.7 %, responses 5.8 / 27.7 -> 5.6 / 27.5 %
    /// (bursty 6.3 / 23.0 and 6.7 / 24.8 -> 5.6 / 22.1 and 5.9 / 24.1 %, steady 4.6 / 17.2 ->
    /// 4.2 / 16.4 %, mixed-long 10.4 / 41.5 -> 9.9 / 40.6 %; no workload worse).
    pub(super) fn prefill_start(
        &self,
        step: &[(u32, ProgressSnapshot)],
        ft_ns: u64,
    ) -> PrefillStart {
        let together = step
            .iter()
            .map(|(_, p)| self.prefill_duration_ns(p))
            .fold(0u64, u64::saturating_add);
        let arrived = step
            .iter()
            .map(|(_, p)| Self::work_start_ns(p).min(ft_ns))
            .min()
            .unwrap_or(ft_ns);
        let mut from = ft_ns.saturating_sub(together).max(arrived);
        let on_line = step
            .iter()
            .filter_map(|&(slot, _)| self.prefill_start_on_the_line(slot, ft_ns))
            .min();
        if let Some(start) = on_line {
            from = from.max(start);
        }
        let run = self.steps.prefill_run_start(ft_ns, SAME_STEP_NS);
        if let Some(start) = run {
            from = from.max(start);
        }
        PrefillStart { from, on_line, run }
    }

    /// Notes, once per request, that its first token came at `at_ns` (for the prefill conveyor).
    pub(super) fn report_first_token(&mut self, slot: u32, at_ns: u64) {
        if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            if !req.queue_reported {
                req.queue_reported = true;
                self.queue_events.reached.push((at_ns, slot));
            }
        }
    }

    /// Re-sizes the prompts whose exact counts came this tick ([`Resizes`]): every place after
    /// each moves by its difference, on the conveyor and in the places of the requests that
    /// still use theirs (not yet past their prefill, or reported past it in this tick). A stream
    /// reported past its prefill in an earlier tick keeps its place, which nothing reads any more:
    /// at 10,000 requests in flight, re-placing every one cost 7 % of a tick with 100 exact counts
    /// per tick (callgrind).
    fn resize_prompts(&mut self, ev: &QueueEvents) {
        if ev.sized.is_empty() {
            return;
        }
        let resizes = Resizes::new(ev.sized.iter().filter_map(|&(slot, exact)| {
            let r = self.slots.get(slot as usize)?.as_ref()?;
            Some((r.queue_place, r.queue_prompt, exact))
        }));
        if resizes.is_empty() {
            return;
        }
        self.prefill_queue.resize(&resizes);
        for r in self.slots.iter_mut().flatten() {
            if !r.queue_reported && r.queue_place > 0.0 {
                r.queue_place = resizes.map(r.queue_place);
                r.queue_served_at = resizes.map(r.queue_served_at);
            }
        }
        // Reported this tick: their places still date their first tokens.
        let mut reported: Vec<u32> = ev
            .reached
            .iter()
            .map(|&(_, slot)| slot)
            .chain(ev.sized.iter().map(|&(slot, _)| slot))
            .collect();
        reported.sort_unstable();
        reported.dedup();
        for slot in reported {
            if let Some(r) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                if r.queue_reported && r.queue_place > 0.0 {
                    r.queue_place = resizes.map(r.queue_place);
                    r.queue_served_at = resizes.map(r.queue_served_at);
                }
            }
        }
        for &(slot, exact) in &ev.sized {
            if let Some(r) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                r.queue_prompt = exact.max(1.0);
            }
        }
    }

    /// Runs the engine's prefill conveyor over the tick `(start_ns, end_ns]` (see
    /// [`super::queue`]): places the tick's new requests on it in arrival order, moves it up to
    /// the first tokens and ends seen, advances it at the saturated throughput (never past a
    /// visible request still waiting for its first token, never past what arrived), and gives
    /// each request waiting for its prefill (invisible, or a stream before its first token
    /// unless the engine holds prompts for sequence slots) its part of the stretch served as
    /// estimated prefill (in the tick, or, for a jump larger than the tick could hold, on the
    /// line between the first tokens that bound it: [`ConveyorLine`]), then, if invisible, its
    /// estimated decode.
    pub(super) fn serve_prefill_queue(&mut self, start_ns: u64, end_ns: u64) {
        let mut ev = std::mem::take(&mut self.queue_events);
        self.resize_prompts(&ev);
        ev.new.sort_unstable_by_key(|e| (e.0, e.1));
        // An engine with nothing to prefill starts on a new prompt when it arrives, not at the
        // tick's start.
        let idle_until = match ev.new.first() {
            Some(&(arrival, ..)) if self.prefill_queue.is_drained() => {
                arrival.clamp(start_ns, end_ns)
            }
            _ => start_ns,
        };
        // Where the engine is estimated to be before this tick's first tokens move it: the new
        // requests' position at arrival, and the start of the stretch served in the tick.
        let from = self.prefill_queue.served();
        for &(_, _, slot, prompt) in &ev.new {
            let place = self.prefill_queue.enqueue(prompt.max(1.0));
            if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                req.queue_place = place;
                req.queue_prompt = prompt.max(1.0);
                req.queue_served_at = from;
            }
        }
        self.prefill_queue.set_rate_floor(self.prefill_rate);
        let anchor_before = self.prefill_queue.anchor();
        ev.reached.sort_unstable();
        for &(at, slot) in &ev.reached {
            if let Some(r) = self.slots.get(slot as usize).and_then(Option::as_ref) {
                if r.queue_place > 0.0 {
                    self.prefill_queue.reached(
                        r.queue_place,
                        at,
                        (r.arrival_ns, r.queue_served_at),
                    );
                    self.prefill_queue.note_first_token(r.queue_place, at);
                }
            }
        }
        // A first token that shows the engine further on than the estimate, by more than it
        // could prefill in this tick: the stretch jumped over ran between the previous first
        // token and this one, on the line through them, not in this tick (see `ConveyorLine`).
        let jump = match (anchor_before, self.prefill_queue.anchor()) {
            (Some((p0, t0)), Some((p1, t1)))
                if t1 > t0
                    && p1 > p0
                    && from >= p0
                    && p1 - from
                        > self.prefill_queue.rate() * end_ns.saturating_sub(start_ns) as f64
                            / 1e9 =>
            {
                Some(ConveyorLine { p0, t0, p1, t1 })
            }
            _ => None,
        };
        for &slot in &ev.passed {
            if let Some(r) = self.slots.get(slot as usize).and_then(Option::as_ref) {
                if r.queue_place > 0.0 {
                    self.prefill_queue.passed(r.queue_place);
                }
            }
        }
        // No sort needed: each request's part follows from its place and the stretch served.
        let limit = ev
            .waiting
            .iter()
            .filter_map(|(slot, _)| self.slots.get(*slot as usize)?.as_ref())
            .filter(|r| r.visible && r.queue_place > 0.0)
            .map(|r| r.queue_place)
            .fold(f64::INFINITY, f64::min);
        let limit = ev
            .held
            .iter()
            .filter_map(|slot| self.slots.get(*slot as usize)?.as_ref())
            .filter(|r| r.queue_place > 0.0)
            .map(|r| r.queue_place - r.queue_prompt)
            .fold(limit, f64::min);
        // The engine prefilled over (idle_until, end_ns].
        let busy_ns = end_ns.saturating_sub(idle_until);
        let to = if ev.waiting.is_empty() && ev.held.is_empty() {
            self.prefill_queue.drained();
            self.prefill_queue.served()
        } else {
            self.prefill_queue.serve(busy_ns, limit).1
        };
        for &(slot, ref p) in &ev.waiting {
            let Some(req) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            // A stream waiting for its first token holds its part of the stretch too, until
            // the first token places its true prefill: left out, the ticks it ran in split
            // among the others, and the responses of streams ending meanwhile carried its
            // energy (accuracy bench, eight seeds: responses 6.1 / 28.8 -> 5.9 / 27.9 %;
            // mixed-long and prefill-heavy p95 3 points lower). Not while the engine holds
            // prompts back for sequence slots: the conveyor does not see that wait, and
            // queueing responses went 7.0 / 26.4 -> 12.4 / 36.5 %.
            if req.visible && self.slot_gated > SLOT_GATED_SHARE {
                continue;
            }
            // Every request waiting here was put on the conveyor above or in an earlier tick.
            let (place, prompt) = (req.queue_place, req.queue_prompt);
            let prefill = (place.min(to) - (place - prompt).max(from)).max(0.0);
            // A stream's decode is seen, never estimated.
            let done_at = if req.visible || place > to {
                0
            } else if place <= from || to <= from {
                start_ns.max(1)
            } else {
                let f = (place - from) / (to - from);
                idle_until + (f * busy_ns as f64) as u64
            };
            let mut prefill = prefill;
            if let Some(line) = jump {
                // Its part of the jump, where the line says the engine ran it.
                let (lo, hi) = ((place - prompt).max(from), place.min(line.p1));
                if hi > lo {
                    let item = Item {
                        prefill: (hi - lo) as f32,
                        provisional: true,
                        ..Item::empty(slot)
                    };
                    let span = (line.at(lo), line.at(hi));
                    self.place(slot, span.0, span.1, item, BeforeWindow::Compress);
                    prefill = (prefill - (hi - lo)).max(0.0);
                }
            }
            self.provisional_work(slot, p, end_ns, prefill, done_at);
        }
        ev.new.clear();
        ev.sized.clear();
        ev.reached.clear();
        ev.passed.clear();
        ev.waiting.clear();
        ev.held.clear();
        self.queue_events = ev;
    }
}
