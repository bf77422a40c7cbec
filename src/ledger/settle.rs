//! Settlement: when a held tick's work is complete (or it reached the lag bound), its energy is
//! split among the work placed in it, its idle time goes to idle, and requests that ended with no
//! held work left become final.
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern). Owns the
//! arithmetic that keeps the books exact: every micro-joule of a settled tick goes to exactly one of
//! attributed, idle or unattributed.

use super::attribution::Ledger;
use super::calibration::TickWork;
use super::idle::IdleSource;
use super::split::split_uj;
use super::types::FinalRequest;
use super::window::HeldTick;

/// Length of the union of `(lo, hi]` intervals, ns (sorts `spans`).
pub(super) fn union_ns(spans: &mut [(u64, u64)]) -> u64 {
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

impl Ledger {
    pub(super) fn settle_front(&mut self) {
        let Some(tick) = self.window.pop() else {
            return;
        };
        self.totals.settled_until_ns = tick.end_ns;
        let dt = tick.end_ns - tick.start_ns;
        // When the energy was split, that pass already released each item (one visit per
        // request: at 10,000 requests the visits are cache misses).
        if !self.settle_energy(&tick, dt) {
            self.release_items(&tick);
        }
        let mut items = tick.items;
        items.clear();
        if self.spare_items.len() < 4 {
            self.spare_items.push(items);
        }
    }

    fn release_items(&mut self, tick: &HeldTick) {
        for item in &tick.items {
            if let Some(req) = self
                .slots
                .get_mut(item.slot as usize)
                .and_then(Option::as_mut)
            {
                req.pending_items = req.pending_items.saturating_sub(1);
            }
        }
    }

    /// The weights that split a tick's energy `e` (µJ, idle part removed): each item's marginal
    /// energy (α·prefill + β·decode + γ·context, from the fit) plus its share of the rest, the
    /// static energy the engine draws for running at all. Static energy follows time: the ticks's
    /// steps are recovered from the streams' token times (every running sequence's token leaves at
    /// the end of the same engine step), each step's duration is shared by the work in that step
    /// in proportion to its marginal energy, as an engine step's energy belongs to its work. A
    /// request decoding beside a long prefill step thus gets little of that step's time, and all
    /// of a decode-only step's. Without step marks, or with untrusted weights (their absolute size
    /// is then meaningless), the whole energy follows the marginal weights.
    fn split_weights(&mut self, tick: &HeldTick, dt: u64, e: u64) {
        self.weights.clear();
        let marginal_uj: f64 = self.marginal.iter().sum::<f64>() * 1e6;
        let static_uj = e as f64 - marginal_uj;
        self.bounds.clear();
        self.bounds.extend(
            tick.items
                .iter()
                .filter(|i| i.step_end && i.decode > 0.0)
                .map(|i| i.hi),
        );
        if !self.config.split_by_steps
            || !self.calibrator.report().trusted
            || static_uj <= 0.0
            || self.bounds.is_empty()
        {
            self.weights.extend_from_slice(&self.marginal);
            return;
        }
        // Step ends: stream chunks within a millisecond of each other left the same step.
        const SAME_STEP_NS: u32 = 1_000_000;
        self.bounds.sort_unstable();
        let mut merged = 0usize;
        for k in 0..self.bounds.len() {
            let b = self.bounds[k];
            if merged > 0 && b - self.bounds[merged - 1] <= SAME_STEP_NS {
                self.bounds[merged - 1] = b;
            } else {
                self.bounds[merged] = b;
                merged += 1;
            }
        }
        self.bounds.truncate(merged);
        let dt32 = u32::try_from(dt).unwrap_or(u32::MAX);
        let steps = self.bounds.len();
        // The time after the last step end belongs to a step whose tokens come in the next
        // tick; its work is most like that of the last step seen, which takes it.
        let step_of = |bounds: &[u32], t: u32| {
            bounds
                .partition_point(|&b| b + SAME_STEP_NS < t)
                .min(steps - 1)
        };
        let step_span = |bounds: &[u32], j: usize| {
            let lo = if j == 0 { 0 } else { bounds[j - 1] };
            let hi = if j + 1 == steps {
                dt32.max(bounds[j])
            } else {
                bounds[j]
            };
            (lo, hi)
        };
        // Marginal work per step.
        self.step_work.clear();
        self.step_work.resize(steps, 0.0);
        for (item, &m) in tick.items.iter().zip(&self.marginal) {
            if m <= 0.0 {
                continue;
            }
            if item.step_end || item.lo >= item.hi {
                self.step_work[step_of(&self.bounds, item.hi)] += m;
            } else {
                let len = f64::from(item.hi - item.lo);
                for j in step_of(&self.bounds, item.lo)..=step_of(&self.bounds, item.hi) {
                    let (lo, hi) = step_span(&self.bounds, j);
                    let ov = item.hi.min(hi).saturating_sub(item.lo.max(lo));
                    self.step_work[j] += m * f64::from(ov) / len;
                }
            }
        }
        // Each item's share of the static time: Σ over its steps of duration × its part of the
        // step's work. Steps with no work seen spread their time over everyone by marginal.
        let mut orphan_ns = 0.0;
        for j in 0..steps {
            if self.step_work[j] <= 0.0 {
                let (lo, hi) = step_span(&self.bounds, j);
                orphan_ns += f64::from(hi - lo);
            }
        }
        let total_marginal: f64 = self.marginal.iter().sum();
        let mut static_weights_sum = 0.0;
        for (item, &m) in tick.items.iter().zip(&self.marginal) {
            let mut sw = if total_marginal > 0.0 {
                orphan_ns * m / total_marginal
            } else {
                0.0
            };
            if m > 0.0 {
                if item.step_end || item.lo >= item.hi {
                    let j = step_of(&self.bounds, item.hi);
                    let (lo, hi) = step_span(&self.bounds, j);
                    sw += f64::from(hi - lo) * m / self.step_work[j];
                } else {
                    let len = f64::from(item.hi - item.lo);
                    for j in step_of(&self.bounds, item.lo)..=step_of(&self.bounds, item.hi) {
                        let (lo, hi) = step_span(&self.bounds, j);
                        let ov = item.hi.min(hi).saturating_sub(item.lo.max(lo));
                        if self.step_work[j] > 0.0 {
                            sw +=
                                f64::from(hi - lo) * (m * f64::from(ov) / len) / self.step_work[j];
                        }
                    }
                }
            }
            self.weights.push(sw);
            static_weights_sum += sw;
        }
        if static_weights_sum <= 0.0 {
            self.weights.clear();
            self.weights.extend_from_slice(&self.marginal);
            return;
        }
        let per = static_uj / static_weights_sum;
        for (w, &m) in self.weights.iter_mut().zip(&self.marginal) {
            *w = m * 1e6 + *w * per;
        }
    }

    // Sums saturate rather than wrap: exactness holds up to 2^64 uJ (about 5 GWh) of measured
    // energy, and garbage input can never panic.
    /// Splits the tick's energy; returns whether its items were released on the way.
    fn settle_energy(&mut self, tick: &HeldTick, dt: u64) -> bool {
        let Some(e) = tick.delta_uj else {
            return false;
        };
        self.totals.pending_uj -= e.min(self.totals.pending_uj);
        let (alpha, beta, gamma) = self.calibrator.weights();
        self.marginal.clear();
        let (mut prefill_tokens, mut decode_tokens, mut context_tokens) = (0.0, 0.0, 0.0);
        let mut provisional_work = 0.0;
        for item in &tick.items {
            let (ip, id, ic) = (
                f64::from(item.prefill),
                f64::from(item.decode),
                f64::from(item.context),
            );
            self.marginal.push(alpha * ip + beta * id + gamma * ic);
            prefill_tokens += ip;
            decode_tokens += id;
            context_tokens += ic;
            if item.provisional {
                provisional_work += alpha * ip + beta * id + gamma * ic;
            }
        }
        // Idle time inside a busy tick (before the first arrival, after the last end) is idle.
        let idle_part = self
            .idle
            .baseline_uj(dt.saturating_sub(tick.busy_ns))
            .min(e);
        self.totals.idle_uj = self.totals.idle_uj.saturating_add(idle_part);
        let full_e = e;
        let e = e - idle_part;
        let baseline = self.idle.baseline_uj(tick.busy_ns.min(dt)).min(e);
        self.split_weights(tick, dt, e);
        if !split_uj(e, &self.weights, &mut self.shares, &mut self.scratch) {
            if tick.busy || !tick.items.is_empty() {
                self.totals.unattributed_uj = self.totals.unattributed_uj.saturating_add(e);
            } else {
                self.totals.idle_uj = self.totals.idle_uj.saturating_add(e);
                self.idle.observe(full_e, dt);
            }
            return false;
        }
        self.totals.attributed_uj = self.totals.attributed_uj.saturating_add(e);
        self.totals.prefill_tokens = self
            .totals
            .prefill_tokens
            .saturating_add(prefill_tokens.round() as u64);
        self.totals.decode_tokens = self
            .totals
            .decode_tokens
            .saturating_add(decode_tokens.round() as u64);
        // Floating point here is only for the sub-splits (active, prefill/decode), each clamped to
        // the integer share, so the books stay exact.
        let active_ratio = if e > 0 {
            (e - baseline) as f64 / e as f64
        } else {
            0.0
        };
        let mw_per_uj = 1e6 / dt.max(1) as f64;
        let mut active_total = 0u64;
        for (k, (item, (share, w))) in tick
            .items
            .iter()
            .zip(self.shares.iter().zip(&self.weights))
            .enumerate()
        {
            let Some(req) = self
                .slots
                .get_mut(item.slot as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            req.pending_items = req.pending_items.saturating_sub(1);
            let share = *share;
            let sf = share as f64;
            let m = self.marginal.get(k).copied().unwrap_or(0.0);
            let prefill = if m > 0.0 && *w > 0.0 {
                // Non-negative, so the truncating cast is the floor (and cheaper than `floor`).
                (sf * (alpha * f64::from(item.prefill) / m)).clamp(0.0, sf) as u64
            } else {
                0
            };
            // Rounded (x + 0.5, non-negative): a figure, not part of the exact books.
            let active = ((sf * active_ratio + 0.5) as u64).min(share);
            let en = &mut req.energy;
            en.work_uj = en.work_uj.saturating_add((m * 1e6) as u64);
            en.energy_uj = en.energy_uj.saturating_add(share);
            en.prefill_uj = en.prefill_uj.saturating_add(prefill);
            en.decode_uj = en.decode_uj.saturating_add(share - prefill);
            en.active_uj = en.active_uj.saturating_add(active);
            active_total = active_total.saturating_add(active);
            if req.recent_seq != tick.seq {
                req.recent_seq = tick.seq;
                req.recent_uj = 0;
            }
            req.recent_uj = req.recent_uj.saturating_add(share);
            en.recent_power_mw = (req.recent_uj as f64 * mw_per_uj) as u64;
        }
        self.totals.active_uj = self.totals.active_uj.saturating_add(active_total);
        let work_uj = self.marginal.iter().sum::<f64>() * 1e6;
        if work_uj > 0.0 {
            // About two seconds of ticks at the default interval: recent enough to follow load.
            const PRICE_TICKS: usize = 40;
            if self.price_window.len() == PRICE_TICKS {
                if let Some((oe, oa, ow)) = self.price_window.pop_front() {
                    self.price_sums.0 -= oe;
                    self.price_sums.1 -= oa;
                    self.price_sums.2 = (self.price_sums.2 - ow).max(0.0);
                }
            }
            self.price_window.push_back((e, active_total, work_uj));
            self.price_sums.0 += e;
            self.price_sums.1 += active_total;
            self.price_sums.2 += work_uj;
        }
        // A tick whose work is mostly estimated would teach the fit its own guesses: it needs
        // at least 90 % of the tick's work observed.
        let total_work: f64 = self.marginal.iter().sum();
        let observed = provisional_work <= 0.1 * total_work;
        if observed && self.idle.source() != IdleSource::Unknown {
            let active_j = full_e.saturating_sub(self.idle.baseline_uj(dt)) as f64 / 1e6;
            let work = TickWork {
                busy_s: tick.busy_ns.min(dt) as f64 / 1e9,
                prefill: prefill_tokens,
                decode: decode_tokens,
                context: context_tokens,
            };
            if std::env::var_os("JG_DUMP").is_some() {
                eprintln!(
                    "DUMP {} {} {} {} {} {}",
                    tick.start_ns, work.busy_s, work.prefill, work.decode, work.context, active_j
                );
            }
            self.calibrator.observe(work, active_j);
        }
        true
    }

    /// Moves requests that ended and have no held work into the ready list.
    pub(super) fn collect_final(&mut self) {
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
}
