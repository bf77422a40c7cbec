//! The ledger: per tick, places each request's observed work in the held window, settles ticks
//! whose work is complete (or that reached the settlement lag bound) and keeps the books exact.
//!
//! Owns the per-request energy figures and the invariant
//! `attributed + idle + unattributed + pending == measured` (micro-joules, exact at every tick),
//! and, once nothing is pending, `attributed + idle + unattributed == measured`.
//! Rules (DESIGN.md §3):
//! - a stream's decode tokens land one per engine step between its observed tokens (the steps
//!   token arrivals showed, see `steps`), evenly in time where no steps were seen; a prompt's
//!   prefill is spread over the interval ending at the first token and lasting the prefill time
//!   (vLLM's, else prompt / rate), never over the queue wait;
//! - a tick is held while a request in flight during it may still reveal work there (no first
//!   token yet, or progress invisible), at most `settle_ticks`; held energy with no work when it
//!   settles goes to *unattributed* if anything was in flight, else to *idle*;
//! - requests with invisible progress get provisional work at an estimated rate (the per-sequence
//!   decode rate follows the median rate of the streams that decoded through each tick, since
//!   continuous batching advances every running sequence once per step; the prefill rate follows
//!   vLLM's prefill times or, without them, the upper envelope of `prompt / time to first token`);
//!   at completion the provisional work still held is replaced by their true counts spread over
//!   their life (from vLLM's queue and prefill times when known, else anchored at the end: one
//!   decode token per step counted back over the steps seen, or at the learned rate, and the
//!   prefill just before that);
//! - a busy tick's time outside every request's life (before the first arrival, after the last
//!   end) is idle: its P_idle share goes to *idle*; the rest is split by work over ~10 ms
//!   sub-intervals (`settle`);
//! - a tick settles early once no request that was in flight during it can still reveal work
//!   there, but the newest busy tick always waits one tick for tokens observed just after it;
//!   held ticks whose work is in are split provisionally for the figures responses carry;
//! - unavailable ticks settle nothing (their energy is unknown) and count against the coverage of
//!   the requests overlapping them (`Partial`, `None`: the record's `estimated` / `unavailable`).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::calibration::Calibrator;
use super::idle::IdleEstimator;
use super::req::Req;
use super::settle::union_ns;
use super::types::{FinalRequest, LedgerTotals, TickSummary};
use super::window::{HeldTick, Item, Window};
use super::{LedgerConfig, LedgerConfigError, Observation, TickSpan, WorkKind};
use crate::observe::{IdHasher, Outcome};

/// Ticks a window may hold past the lag bound while an interval waits for a slow meter's energy
/// (the sampler releases held intervals within 10 s: 200 ticks at the default interval).
pub const MAX_UNFILLED_EXTRA: usize = 256;

/// What settled busy ticks gave each kind of work (prefill, decode, context tokens): energy and
/// active energy (µJ, the items' shares divided by their marginal terms) and the tokens, from
/// which [`Ledger::token_prices`] prices work not settled yet.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PriceEntry {
    pub(super) energy: [f64; 3],
    pub(super) active: [f64; 3],
    pub(super) tokens: [f64; 3],
}

impl PriceEntry {
    /// Adds an item's `energy` and `active` energy (its share of a tick), divided among its kinds
    /// of work in proportion to their marginal energy at `weights`; `m` is the item's marginal
    /// energy (nothing is added when it is not positive).
    pub(super) fn add_item(
        &mut self,
        item: &Item,
        weights: (f64, f64, f64),
        m: f64,
        (energy, active): (f64, f64),
    ) {
        if m <= 0.0 {
            return;
        }
        let t = item.tokens();
        let parts = [weights.0 * t[0], weights.1 * t[1], weights.2 * t[2]];
        for (kind, part) in parts.iter().enumerate() {
            self.energy[kind] += energy * part / m;
            self.active[kind] += active * part / m;
        }
    }

    pub(super) fn add(&mut self, o: &PriceEntry, sign: f64) {
        for k in 0..3 {
            self.energy[k] = (self.energy[k] + sign * o.energy[k]).max(0.0);
            self.active[k] = (self.active[k] + sign * o.active[k]).max(0.0);
            self.tokens[k] = (self.tokens[k] + sign * o.tokens[k]).max(0.0);
        }
    }
}

/// The attribution ledger. See the module documentation for the rules.
#[derive(Debug)]
pub struct Ledger {
    pub(super) config: LedgerConfig,
    pub(super) window: Window,
    pub(super) slots: Vec<Option<Req>>,
    pub(super) free: Vec<u32>,
    pub(super) index: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    pub(super) ended: Vec<u32>,
    pub(super) observed: Vec<u32>,
    pub(super) partial: Vec<(u64, u64)>,
    pub(super) prev_observed: Vec<u32>,
    pub(super) spare_items: Vec<Vec<Item>>,
    /// Provisional-split vectors of settled ticks, for reuse (like `spare_items`).
    pub(super) spare_tentative: Vec<Vec<super::window::Tentative>>,
    pub(super) ready: Vec<FinalRequest>,
    pub(super) totals: LedgerTotals,
    pub(super) idle: IdleEstimator,
    pub(super) calibrator: Calibrator,
    pub(super) seq: u64,
    pub(super) newest_end_ns: u64,
    /// End of the latest tick with a model request in flight (0: none yet).
    pub(super) busy_until_ns: u64,
    /// Whether the hold for the calibration ended for good: the ledger held more requests than
    /// `calibration_hold_max_requests` or more items than `calibration_hold_max_items`
    /// ([`Ledger::calibration_hold`]).
    pub(super) hold_given_up: bool,
    pub(super) prefill_rate: f64,
    pub(super) decode_rate: f64,
    /// Completion tokens each visible stream that decoded through the whole current tick produced
    /// in it (the engine advances every running sequence once per step, so these agree).
    pub(super) tick_decodes: Vec<u64>,
    /// Those decodes pooled over recent ticks (see [`Ledger::learn_tick_decode_rate`]).
    pub(super) recent_decodes: super::rates::RecentDecodes,
    /// End of the latest tick in which a stream decoded (0: none yet): where streams show the
    /// engine's rates, finished answers do not teach them (`Ledger::learn_answer_rates`).
    pub(super) streams_decoded_at_ns: u64,
    /// The median decode rate of the streams in each tick, moving average (see
    /// [`Ledger::learn_tick_decode_rate`]).
    pub(super) typical_decode_rate: f64,
    pub(super) weights: Vec<f64>,
    /// Marginal energy (J) of each item of the tick being settled.
    pub(super) marginal: Vec<f64>,
    /// Marginal work per sub-interval of the tick being settled.
    pub(super) step_work: Vec<f64>,
    /// Recent settled busy ticks: what their split gave each kind of work, and its tokens.
    pub(super) price_window: std::collections::VecDeque<PriceEntry>,
    /// Sums over `price_window`.
    pub(super) price_sums: PriceEntry,
    /// Arrival of the oldest request whose work may still appear in held ticks (latest tick).
    pub(super) min_unresolved: u64,
    /// Requests that did work in each recent settled busy tick, and the running figures.
    pub(super) batch_window: std::collections::VecDeque<u32>,
    pub(super) batch: super::types::BatchStats,
    /// Arrival of the oldest visible request in flight with no first token yet (latest tick):
    /// engines admit waiting requests in arrival order, so anything that arrived after it waits
    /// too.
    pub(super) oldest_unstarted_ns: u64,
    /// The engine's sequence limit as estimated, and the answers it holds back this tick.
    pub(super) seq_limit: super::seq_limit::SeqLimit,
    /// The engine's own queue gauges, where the proxy reads them.
    pub(super) engine_queue: super::engine_queue::EngineQueue,
    pub(super) shares: Vec<u64>,
    /// The engine's recent step boundaries.
    pub(super) steps: super::steps::StepHistory,
    /// Scratch for [`Ledger::place_by_steps`].
    pub(super) step_scratch: Vec<u64>,
    /// The engine's prefill conveyor (first come, first served).
    pub(super) prefill_queue: super::queue::PrefillQueue,
    /// This tick's conveyor events, applied after its observations (see
    /// [`Ledger::serve_prefill_queue`]): requests new to it, first tokens and ends seen, and the
    /// requests still waiting for a first token the proxy would see.
    pub(super) queue_events: super::queue_serve::QueueEvents,
    /// Share of recent streams whose prefill the steps showed starting well after the conveyor
    /// reached them (`Ledger::note_slot_wait`): the engine holds prompts back for sequence slots.
    pub(super) slot_gated: f64,
    /// The latest complete tick's energy per nanosecond, µJ (0 until one came).
    pub(super) recent_uj_per_ns: f64,
    /// Recent streams' prefill spans `(from, first token)`, oldest first: the time a non-streamed
    /// answer's prefill did not run in (`Ledger::back_from_in_free_time`). At most
    /// [`super::work::STREAM_PREFILLS`]; the oldest goes first.
    pub(super) stream_prefills: std::collections::VecDeque<(u64, u64)>,
    /// Prefill energy priced over a window of settled ticks (see `prefill_pool`).
    pub(super) prefill_pool: super::prefill_pool::PrefillPool,
}

impl Ledger {
    /// A ledger with validated settings.
    pub fn new(config: LedgerConfig) -> Result<Self, LedgerConfigError> {
        config.validate()?;
        let prefill_rate = config.prefill_tokens_per_s;
        Ok(Ledger {
            idle: IdleEstimator::new(
                config.p_idle_mw,
                config.idle_window,
                config.idle_quantile,
                config.idle_min_samples,
            ),
            calibrator: Calibrator::new(config.calibration.clone()),
            prefill_pool: super::prefill_pool::PrefillPool::new(config.prefill_pool_ns),
            prefill_rate: config.prefill_tokens_per_s,
            decode_rate: config.decode_tokens_per_s,
            tick_decodes: Vec::new(),
            recent_decodes: super::rates::RecentDecodes::default(),
            streams_decoded_at_ns: 0,
            typical_decode_rate: config.decode_tokens_per_s,
            config,
            window: Window::default(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            ended: Vec::new(),
            observed: Vec::new(),
            partial: Vec::new(),
            prev_observed: Vec::new(),
            spare_items: Vec::new(),
            spare_tentative: Vec::new(),
            ready: Vec::new(),
            totals: LedgerTotals::default(),
            seq: 0,
            newest_end_ns: 0,
            busy_until_ns: 0,
            hold_given_up: false,
            weights: Vec::new(),
            marginal: Vec::new(),
            step_work: Vec::new(),
            price_window: std::collections::VecDeque::new(),
            price_sums: PriceEntry::default(),
            min_unresolved: u64::MAX,
            batch_window: std::collections::VecDeque::new(),
            batch: super::types::BatchStats::default(),
            oldest_unstarted_ns: u64::MAX,
            seq_limit: super::seq_limit::SeqLimit::default(),
            engine_queue: super::engine_queue::EngineQueue::default(),
            shares: Vec::new(),
            steps: super::steps::StepHistory::default(),
            step_scratch: Vec::new(),
            prefill_queue: super::queue::PrefillQueue::new(prefill_rate),
            queue_events: super::queue_serve::QueueEvents::default(),
            slot_gated: 0.0,
            recent_uj_per_ns: 0.0,
            stream_prefills: std::collections::VecDeque::new(),
        })
    }

    /// Notes engine step boundaries seen since the last call (token arrival times, increasing):
    /// call before [`Ledger::apply`] with the boundaries up to the tick's end.
    pub fn note_steps(&mut self, ends: &[u64]) {
        self.steps.extend(ends);
    }

    /// Takes in the engine's queue gauges read since the last tick (oldest first): call before
    /// [`Ledger::apply`] with the same `observations`, which say which requests were in flight
    /// at each reading.
    pub fn note_engine_queue(
        &mut self,
        readings: &[crate::observe::EngineQueueReading],
        observations: &[Observation],
    ) {
        for &r in readings {
            self.engine_queue.note(
                r,
                observations
                    .iter()
                    .filter(|o| o.kind != WorkKind::None)
                    .map(|o| (o.progress.arrival_ns, o.progress.end_ns)),
            );
        }
    }

    /// Applies one tick: `observations` are every registered request's progress, read after the
    /// tick ended. Ticks must come in time order; one ending before the previous one is treated
    /// as empty (its energy still counts as measured, and is settled like any other).
    pub fn apply(&mut self, tick: TickSpan, observations: &[Observation]) -> TickSummary {
        self.seq += 1;
        let seq = self.seq;
        let end_ns = tick.end_ns.max(self.newest_end_ns);
        let start_ns = tick
            .start_ns
            .min(end_ns)
            .max(self.newest_end_ns.min(end_ns));
        self.newest_end_ns = end_ns;
        self.totals.ticks += 1;
        let delta_uj = if tick.energy_later {
            Some(0)
        } else {
            tick.delta_uj
        };
        match delta_uj {
            Some(e) => {
                self.totals.measured_uj = self.totals.measured_uj.saturating_add(e);
                self.totals.pending_uj = self.totals.pending_uj.saturating_add(e);
                if !tick.energy_later && end_ns > start_ns {
                    self.recent_uj_per_ns = e as f64 / (end_ns - start_ns) as f64;
                }
            }
            None => self.totals.unavailable_ticks += 1,
        }
        self.window.push(HeldTick {
            seq,
            start_ns,
            end_ns,
            delta_uj,
            unfilled_ns: if tick.energy_later {
                end_ns - start_ns
            } else {
                0
            },
            estimate_uj: tick.delta_uj.filter(|_| tick.energy_later),
            busy: false,
            busy_ns: 0,
            items: self.spare_items.pop().unwrap_or_default(),
            tentative: None,
            stale: false,
        });
        std::mem::swap(&mut self.observed, &mut self.prev_observed);
        self.observed.clear();
        let mut cursor = 0usize;
        let mut busy = false;
        let mut covered = false;
        self.partial.clear();
        let mut min_unresolved = u64::MAX;
        let mut finalized = 0u32;
        self.tick_decodes.clear();
        // One pass over the visible model requests in flight: the oldest with no first token
        // yet, and the sequences of those decoding.
        let mut oldest_unstarted = u64::MAX;
        let mut streams_decoding = 0u32;
        for o in observations {
            let p = &o.progress;
            if o.kind == WorkKind::None || !p.progress_visible || p.end_ns != 0 {
                continue;
            }
            if p.first_token_ns == 0 {
                oldest_unstarted = oldest_unstarted.min(p.arrival_ns);
            } else {
                streams_decoding = streams_decoding.saturating_add(o.choices.max(1));
            }
        }
        self.oldest_unstarted_ns = oldest_unstarted;
        self.seq_limit.start_tick(end_ns, streams_decoding);
        for obs in observations {
            let slot = self.find_slot(&mut cursor, obs);
            self.observed.push(slot);
            let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            req.seen_seq = seq;
            let p = obs.progress;
            if req.queue_place == 0.0 && req.kind != WorkKind::None && !req.ended {
                // Put on the conveyor after the tick's observations, in arrival order.
                self.queue_events
                    .new
                    .push((p.arrival_ns, p.id, slot, p.prompt_tokens as f64));
                req.queue_sized = p.prompt_exact;
            } else if req.queue_place > 0.0 && !req.queue_sized && p.prompt_exact {
                // Its exact count came: re-sized on the conveyor before it is served.
                self.queue_events.sized.push((slot, p.prompt_tokens as f64));
                req.queue_sized = true;
            }
            let overlaps = p.arrival_ns <= end_ns && (p.end_ns == 0 || p.end_ns > start_ns);
            if req.kind != WorkKind::None && overlaps {
                busy = true;
                let lo = p.arrival_ns.max(start_ns);
                let hi = if p.end_ns == 0 {
                    end_ns
                } else {
                    p.end_ns.min(end_ns)
                };
                if lo <= start_ns && hi >= end_ns {
                    covered = true;
                } else if !covered {
                    self.partial.push((lo, hi));
                }
                if delta_uj.is_some() {
                    req.energy.available_ticks = req.energy.available_ticks.saturating_add(1);
                } else {
                    req.energy.unavailable_ticks = req.energy.unavailable_ticks.saturating_add(1);
                }
            }
            if req.ended {
                continue;
            }
            let finished = p.outcome != Outcome::InFlight && p.end_ns != 0 && p.end_ns <= end_ns;
            if req.kind == WorkKind::None {
                if finished {
                    req.ended = true;
                    req.end_ns = p.end_ns;
                    self.ended.push(slot);
                    finalized += 1;
                }
                continue;
            }
            if finished {
                self.finish(slot, &p);
                finalized += 1;
            } else {
                self.progress(slot, &p, start_ns, end_ns);
                if let Some(r) = self.slots.get(slot as usize).and_then(Option::as_ref) {
                    if !r.visible || !r.prefill_placed {
                        min_unresolved = min_unresolved.min(r.arrival_ns);
                    }
                }
            }
        }
        if busy {
            self.busy_until_ns = self.busy_until_ns.max(end_ns);
        }
        if let Some(t) = self.window.back_mut() {
            t.busy = busy;
            t.busy_ns = if covered {
                end_ns - start_ns
            } else {
                union_ns(&mut self.partial)
            };
        }
        self.serve_prefill_queue(start_ns, end_ns);
        self.place_tick_prefills();
        if !self.tick_decodes.is_empty() {
            self.streams_decoded_at_ns = end_ns;
        }
        self.learn_tick_decode_rate(end_ns - start_ns);
        if self.observed.len() != self.index.len() {
            finalized += self.finish_vanished(seq);
        }
        self.min_unresolved = min_unresolved;
        let settled = self.settle_ready();
        if self.config.tentative_split {
            self.split_tentatively();
        }
        TickSummary { settled, finalized }
    }

    /// Settles the held ticks that are complete (or forced by the lag bound), oldest first, and
    /// collects the requests that became final. A tick still waiting for its energy stops
    /// settlement, unless the window grew [`MAX_UNFILLED_EXTRA`] ticks past the lag bound: its
    /// energy is then given up for (unavailable; a late fill goes to *unattributed*).
    pub(super) fn settle_ready(&mut self) -> u32 {
        let mut settled = 0u32;
        if self.calibration_hold() > 0
            && (self.index.len() > self.config.calibration_hold_max_requests
                || self.window.iter().map(|t| t.items.len()).sum::<usize>()
                    > self.config.calibration_hold_max_items)
        {
            self.hold_given_up = true;
        }
        if self.calibration_hold() > 0 {
            self.freeze_ticks_past_lag();
        }
        // Until the calibration is first trusted, ticks with work wait longer (unless complete
        // and empty): split with the default weights, they would keep the defaults' error.
        let hold = self.calibration_hold();
        let lag = self.config.settle_ticks + hold;
        while let Some(front) = self.window.front() {
            let forced = self.window.len() > lag;
            let complete = front.end_ns < self.min_unresolved
                && (self.window.len() > 1 || !front.busy)
                && (hold == 0 || front.items.is_empty());
            if front.unfilled_ns > 0 {
                if self.window.len() <= lag + MAX_UNFILLED_EXTRA {
                    break;
                }
                if let Some(t) = self.window.front_mut() {
                    t.unfilled_ns = 0;
                    if let Some(e) = t.delta_uj.take() {
                        self.totals.measured_uj -= e.min(self.totals.measured_uj);
                        self.totals.pending_uj -= e.min(self.totals.pending_uj);
                    }
                    self.totals.unavailable_ticks += 1;
                }
            } else if !(forced || complete) {
                break;
            }
            self.settle_front();
            settled += 1;
        }
        self.collect_final();
        settled
    }
}
