//! The ledger: per tick, places each request's observed work in the held window, settles ticks
//! whose work is complete (or that reached the settlement lag bound) and keeps the books exact.
//!
//! Owns the per-request energy figures and the invariant
//! `attributed + idle + unattributed + pending == measured` (micro-joules, exact at every tick),
//! and, once nothing is pending, `attributed + idle + unattributed == measured`.
//! Rules (DESIGN.md §3):
//! - decode tokens land in the tick of their observation time; a prompt's prefill is spread over the
//!   interval ending at the first token and lasting the prefill time (vLLM's, else prompt / rate),
//!   never over the queue wait;
//! - a tick is held while a request in flight during it may still reveal work there (no first
//!   token yet, or progress invisible), at most `settle_ticks`; held energy with no work when it
//!   settles goes to *unattributed* if anything was in flight, else to *idle*;
//! - requests with invisible progress get provisional work at an estimated rate; at completion the
//!   provisional work still held is replaced by their true counts spread over their life.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::calibration::{CalibrationReport, Calibrator};
use super::idle::{IdleEstimator, IdleSource};
use super::split::split_uj;
use super::window::{HeldTick, Item, ItemRef, Window};
use super::{LedgerConfig, LedgerConfigError, Observation, TickSpan, WorkKind};
use crate::observe::{Outcome, ProgressSnapshot};

/// How much of a request's life had measured energy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every tick it overlapped was measured (or it overlapped none and no tick failed).
    Full,
    /// Some ticks it overlapped were unavailable.
    Partial,
    /// Every tick it overlapped was unavailable, or no tick was ever seen.
    None,
}

/// A request's energy figures so far, micro-joules, as published into its atomics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestEnergy {
    /// Energy attributed so far (settled ticks only).
    pub energy_uj: u64,
    /// Of it, above the idle baseline.
    pub active_uj: u64,
    /// Of it, prefill.
    pub prefill_uj: u64,
    /// Of it, decode.
    pub decode_uj: u64,
    /// The request's attributed power in the latest settled tick where it got energy, mW.
    pub recent_power_mw: u64,
    /// Measured ticks overlapping the request.
    pub available_ticks: u32,
    /// Unavailable ticks overlapping the request.
    pub unavailable_ticks: u32,
}

impl RequestEnergy {
    /// How much of the request's life was measured.
    pub fn coverage(&self) -> Coverage {
        match (self.available_ticks, self.unavailable_ticks) {
            (_, 0) if self.available_ticks > 0 => Coverage::Full,
            (0, _) => Coverage::None,
            _ => Coverage::Partial,
        }
    }
}

/// A request whose energy is final: it ended and no held tick carries its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalRequest {
    /// Request id.
    pub id: u64,
    /// Final figures.
    pub energy: RequestEnergy,
    /// Whether the ledger stopped seeing it before it ended (retired by someone else).
    pub vanished: bool,
}

/// Running totals, micro-joules and counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerTotals {
    /// Sum of measured tick energy.
    pub measured_uj: u64,
    /// Given to requests.
    pub attributed_uj: u64,
    /// Drawn with nothing in flight.
    pub idle_uj: u64,
    /// Drawn with requests in flight but no work to place it on.
    pub unattributed_uj: u64,
    /// Measured but held (not settled yet).
    pub pending_uj: u64,
    /// Of `attributed_uj`, above the idle baseline.
    pub active_uj: u64,
    /// Prompt tokens of settled prefill work (rounded per tick).
    pub prefill_tokens: u64,
    /// Completion tokens of settled decode work (rounded per tick).
    pub decode_tokens: u64,
    /// Ticks applied.
    pub ticks: u64,
    /// Of them, unavailable.
    pub unavailable_ticks: u64,
    /// Ticks currently held.
    pub held_ticks: u64,
    /// End of the newest settled tick, ns.
    pub settled_until_ns: u64,
}

/// What one [`Ledger::apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Ticks settled by this call.
    pub settled: u32,
    /// Requests that became final (take them with [`Ledger::drain_final`]).
    pub finalized: u32,
}

#[derive(Clone, Debug)]
pub(super) struct Req {
    pub(super) id: u64,
    pub(super) arrival_ns: u64,
    pub(super) end_ns: u64,
    pub(super) kind: WorkKind,
    pub(super) visible: bool,
    pub(super) prefill_placed: bool,
    pub(super) consumed_completion: u64,
    pub(super) ended: bool,
    pub(super) vanished: bool,
    pub(super) seen_seq: u64,
    pub(super) prov_from_ns: u64,
    pub(super) provisional: Vec<ItemRef>,
    pub(super) pending_items: u32,
    pub(super) recent_seq: u64,
    pub(super) recent_uj: u64,
    pub(super) energy: RequestEnergy,
}

/// Request ids are process-unique integers chosen by us, not by clients, so a multiplicative hash
/// is enough and much cheaper than SipHash at 10,000 lookups per tick.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Length of the union of `(lo, hi]` intervals, ns (sorts `spans`).
fn union_ns(spans: &mut [(u64, u64)]) -> u64 {
    spans.sort_unstable();
    let (mut total, mut cur) = (0u64, None::<(u64, u64)>);
    for &(lo, hi) in spans.iter() {
        match cur {
            Some((a, b)) if lo <= b => cur = Some((a, b.max(hi))),
            _ => {
                if let Some((a, b)) = cur {
                    total += b.saturating_sub(a);
                }
                cur = Some((lo, hi));
            }
        }
    }
    total + cur.map_or(0, |(a, b)| b.saturating_sub(a))
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
    pub(super) ready: Vec<FinalRequest>,
    pub(super) totals: LedgerTotals,
    pub(super) idle: IdleEstimator,
    pub(super) calibrator: Calibrator,
    pub(super) seq: u64,
    pub(super) newest_end_ns: u64,
    pub(super) prefill_rate: f64,
    pub(super) decode_rate: f64,
    pub(super) weights: Vec<f64>,
    pub(super) shares: Vec<u64>,
    pub(super) scratch: Vec<(f64, usize)>,
}

impl Ledger {
    /// A ledger with validated settings.
    pub fn new(config: LedgerConfig) -> Result<Self, LedgerConfigError> {
        config.validate()?;
        Ok(Ledger {
            idle: IdleEstimator::new(
                config.p_idle_mw,
                config.idle_window,
                config.idle_quantile,
                config.idle_min_samples,
            ),
            calibrator: Calibrator::new(config.calibration.clone()),
            prefill_rate: config.prefill_tokens_per_s,
            decode_rate: config.decode_tokens_per_s,
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
            ready: Vec::new(),
            totals: LedgerTotals::default(),
            seq: 0,
            newest_end_ns: 0,
            weights: Vec::new(),
            shares: Vec::new(),
            scratch: Vec::new(),
        })
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
        match tick.delta_uj {
            Some(e) => {
                self.totals.measured_uj = self.totals.measured_uj.saturating_add(e);
                self.totals.pending_uj = self.totals.pending_uj.saturating_add(e);
            }
            None => self.totals.unavailable_ticks += 1,
        }
        self.window.push(HeldTick {
            seq,
            start_ns,
            end_ns,
            delta_uj: tick.delta_uj,
            busy: false,
            busy_ns: 0,
            items: self.spare_items.pop().unwrap_or_default(),
        });
        std::mem::swap(&mut self.observed, &mut self.prev_observed);
        self.observed.clear();
        let mut cursor = 0usize;
        let mut busy = false;
        let mut covered = false;
        self.partial.clear();
        let mut min_unresolved = u64::MAX;
        let mut finalized = 0u32;
        for obs in observations {
            let slot = self.find_slot(&mut cursor, &obs.progress, obs.kind);
            self.observed.push(slot);
            let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            req.seen_seq = seq;
            let p = obs.progress;
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
                if tick.delta_uj.is_some() {
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
                self.progress(slot, &p, end_ns);
                if let Some(r) = self.slots.get(slot as usize).and_then(Option::as_ref) {
                    if !r.visible || !r.prefill_placed {
                        min_unresolved = min_unresolved.min(r.arrival_ns);
                    }
                }
            }
        }
        if let Some(t) = self.window.back_mut() {
            t.busy = busy;
            t.busy_ns = if covered {
                end_ns - start_ns
            } else {
                union_ns(&mut self.partial)
            };
        }
        if self.observed.len() != self.index.len() {
            finalized += self.finish_vanished(seq);
        }
        let mut settled = 0u32;
        while let Some(front) = self.window.front() {
            let forced = self.window.len() > self.config.settle_ticks;
            let complete = front.end_ns < min_unresolved && (self.window.len() > 1 || !front.busy);
            if !(forced || complete) {
                break;
            }
            self.settle_front();
            settled += 1;
        }
        self.collect_final();
        TickSummary { settled, finalized }
    }

    /// The registry's iteration order is stable between ticks apart from insertions and removals,
    /// so the previous tick's order predicts the slot without hashing (a lookup per request was
    /// the largest cost of a tick at 10,000 requests).
    fn find_slot(&mut self, cursor: &mut usize, p: &ProgressSnapshot, kind: WorkKind) -> u32 {
        for k in 0..4 {
            let Some(&s) = self.prev_observed.get(*cursor + k) else {
                break;
            };
            if self
                .slots
                .get(s as usize)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.id == p.id)
            {
                *cursor += k + 1;
                return s;
            }
        }
        self.slot_for(p, kind)
    }

    fn slot_for(&mut self, p: &ProgressSnapshot, kind: WorkKind) -> u32 {
        if let Some(s) = self.index.get(&p.id) {
            return *s;
        }
        let req = Req {
            id: p.id,
            arrival_ns: p.arrival_ns,
            end_ns: 0,
            kind,
            visible: p.progress_visible,
            prefill_placed: false,
            consumed_completion: 0,
            ended: false,
            vanished: false,
            seen_seq: 0,
            prov_from_ns: p.arrival_ns,
            provisional: Vec::new(),
            pending_items: 0,
            recent_seq: 0,
            recent_uj: 0,
            energy: RequestEnergy::default(),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(req);
                s
            }
            None => {
                self.slots.push(Some(req));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(p.id, slot);
        slot
    }

    /// Requests no longer registered (someone else retired them): nothing more will be seen.
    fn finish_vanished(&mut self, seq: u64) -> u32 {
        let mut n = 0;
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some(req) = entry else { continue };
            if req.seen_seq != seq && !req.ended {
                self.ended.push(slot as u32);
                req.ended = true;
                req.vanished = true;
                req.end_ns = req.end_ns.max(req.arrival_ns);
                n += 1;
            }
        }
        n
    }

    fn settle_front(&mut self) {
        let Some(tick) = self.window.pop() else {
            return;
        };
        self.totals.settled_until_ns = tick.end_ns;
        let dt = tick.end_ns - tick.start_ns;
        self.settle_energy(&tick, dt);
        for item in &tick.items {
            if let Some(req) = self
                .slots
                .get_mut(item.slot as usize)
                .and_then(Option::as_mut)
            {
                req.pending_items = req.pending_items.saturating_sub(1);
            }
        }
        let mut items = tick.items;
        items.clear();
        if self.spare_items.len() < 4 {
            self.spare_items.push(items);
        }
    }

    fn settle_energy(&mut self, tick: &HeldTick, dt: u64) {
        let Some(e) = tick.delta_uj else {
            return;
        };
        self.totals.pending_uj -= e.min(self.totals.pending_uj);
        let (alpha, beta) = self.calibrator.weights();
        self.weights.clear();
        let (mut prefill_tokens, mut decode_tokens, mut provisional) = (0.0, 0.0, false);
        for item in &tick.items {
            let (ip, id) = (f64::from(item.prefill), f64::from(item.decode));
            self.weights.push(alpha * ip + beta * id);
            prefill_tokens += ip;
            decode_tokens += id;
            provisional |= item.provisional && (item.prefill > 0.0 || item.decode > 0.0);
        }
        // Idle time inside a busy tick (before the first arrival, after the last end) is idle.
        let idle_part = self
            .idle
            .baseline_uj(dt.saturating_sub(tick.busy_ns))
            .min(e);
        self.totals.idle_uj += idle_part;
        let full_e = e;
        let e = e - idle_part;
        let baseline = self.idle.baseline_uj(tick.busy_ns.min(dt)).min(e);
        if !split_uj(e, &self.weights, &mut self.shares, &mut self.scratch) {
            if tick.busy || !tick.items.is_empty() {
                self.totals.unattributed_uj += e;
            } else {
                self.totals.idle_uj += e;
                self.idle.observe(full_e, dt);
            }
            return;
        }
        self.totals.attributed_uj += e;
        self.totals.prefill_tokens += prefill_tokens.round() as u64;
        self.totals.decode_tokens += decode_tokens.round() as u64;
        // Floating point here is only for the sub-splits (active, prefill/decode), each clamped to
        // the integer share, so the books stay exact.
        let active_ratio = if e > 0 {
            (e - baseline) as f64 / e as f64
        } else {
            0.0
        };
        let mw_per_uj = 1e6 / dt.max(1) as f64;
        let mut active_total = 0u64;
        for (item, (share, w)) in tick.items.iter().zip(self.shares.iter().zip(&self.weights)) {
            let Some(req) = self
                .slots
                .get_mut(item.slot as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            let share = *share;
            let sf = share as f64;
            let prefill = if *w > 0.0 {
                (sf * (alpha * f64::from(item.prefill) / w))
                    .floor()
                    .clamp(0.0, sf) as u64
            } else {
                0
            };
            let active = ((sf * active_ratio).floor() as u64).min(share);
            let en = &mut req.energy;
            en.energy_uj += share;
            en.prefill_uj += prefill;
            en.decode_uj += share - prefill;
            en.active_uj += active;
            active_total += active;
            if req.recent_seq != tick.seq {
                req.recent_seq = tick.seq;
                req.recent_uj = 0;
            }
            req.recent_uj += share;
            en.recent_power_mw = (req.recent_uj as f64 * mw_per_uj) as u64;
        }
        self.totals.active_uj += active_total;
        if !provisional && self.idle.source() != IdleSource::Unknown {
            let active_j = full_e.saturating_sub(self.idle.baseline_uj(dt)) as f64 / 1e6;
            self.calibrator
                .observe(prefill_tokens, decode_tokens, active_j);
        }
    }

    /// Moves requests that ended and have no held work into the ready list.
    fn collect_final(&mut self) {
        let newest = self.newest_end_ns;
        let mut i = 0;
        while i < self.ended.len() {
            let slot = self.ended[i];
            let state = match self.slots.get(slot as usize).and_then(Option::as_ref) {
                None => None,
                Some(r) if !r.ended => None,
                Some(r) => Some(r.pending_items == 0 && r.end_ns <= newest),
            };
            match state {
                // Freed (forced) or reused by a live request: no longer waiting.
                None => {
                    self.ended.swap_remove(i);
                }
                Some(false) => i += 1,
                Some(true) => {
                    self.ended.swap_remove(i);
                    if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                        self.index.remove(&req.id);
                        self.free.push(slot);
                        self.ready.push(FinalRequest {
                            id: req.id,
                            energy: req.energy,
                            vanished: req.vanished,
                        });
                    }
                }
            }
        }
    }

    /// Settles every held tick now, whatever may still appear (the sampler is gone: nothing will
    /// come to settle them later). Requests that ended by the newest tick become final.
    pub fn flush(&mut self) {
        while !self.window.is_empty() {
            self.settle_front();
        }
        self.collect_final();
    }

    /// Takes the requests whose energy became final, in no particular order.
    pub fn drain_final(&mut self, out: &mut Vec<FinalRequest>) {
        out.append(&mut self.ready);
    }

    /// Forgets a request at once (no meter, no ticks): its held work is removed so that its energy
    /// is final as it stands. The energy of held ticks it had work in goes to the others there or,
    /// if none, to unattributed when they settle.
    pub fn force_final(&mut self, id: u64) -> Option<FinalRequest> {
        let slot = self.index.remove(&id)?;
        // Tombstone its items rather than removing them: other requests hold indices into them.
        for tick in self.window.iter_mut() {
            for item in tick.items.iter_mut().filter(|i| i.slot == slot) {
                *item = Item {
                    slot: u32::MAX,
                    prefill: 0.0,
                    decode: 0.0,
                    provisional: false,
                };
            }
        }
        let req = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(FinalRequest {
            id,
            energy: req.energy,
            vanished: req.vanished,
        })
    }

    /// The figures of a request the ledger knows (in flight or awaiting settlement).
    pub fn energy(&self, id: u64) -> Option<RequestEnergy> {
        let slot = *self.index.get(&id)?;
        self.slots.get(slot as usize)?.as_ref().map(|r| r.energy)
    }

    /// The figures of the requests observed by the latest [`Ledger::apply`], in the order of its
    /// observations (`None` for those that became final in it: see [`Ledger::drain_final`]).
    /// Cheaper than [`Ledger::energy`] per id: no hashing.
    pub fn observed_energy(&self) -> impl Iterator<Item = Option<RequestEnergy>> + '_ {
        self.observed.iter().map(|s| {
            self.slots
                .get(*s as usize)
                .and_then(Option::as_ref)
                .map(|r| r.energy)
        })
    }

    /// Running totals.
    pub fn totals(&self) -> LedgerTotals {
        LedgerTotals {
            held_ticks: self.window.len() as u64,
            ..self.totals
        }
    }

    /// Idle power in mW, if known, and where it comes from.
    pub fn p_idle(&self) -> (Option<u64>, IdleSource) {
        (self.idle.power_mw(), self.idle.source())
    }

    /// The calibration fit and its quality.
    pub fn calibration(&self) -> CalibrationReport {
        self.calibrator.report()
    }

    /// The current prefill-rate and per-request decode-rate estimates, tokens per second.
    pub fn rates(&self) -> (f64, f64) {
        (self.prefill_rate, self.decode_rate)
    }

    /// Number of requests the ledger tracks (not yet drained).
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// End of the newest settled tick, ns.
    pub fn settled_until_ns(&self) -> u64 {
        self.totals.settled_until_ns
    }
}
