//! Settlement: when a held tick's work is complete (or it reached the lag bound), its energy is
//! split among the work placed in it, its idle time goes to idle, and requests that ended with no
//! held work left become final.
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern). Owns the
//! arithmetic that keeps the books exact: every micro-joule of a settled tick goes to exactly one of
//! attributed, idle or unattributed.

use super::attribution::{Ledger, PriceEntry};
use super::idle::TickEnergy;
use super::split::split_uj;
use super::types::FinalRequest;
use super::window::HeldTick;

/// Length of the sub-intervals a tick's energy is split over (see `split_weights`): a little
/// longer than a decode step of a large batch, so that most hold some work.
pub const SPLIT_NS: u64 = 10_000_000;

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
    /// Weighs held tick `i` for a split with `weights` as settlement would: each item's marginal
    /// energy into `self.marginal`, its split weight into `self.weights`. Returns the tick's
    /// energy as P_idle divides it and the weights' sum; `None` while its energy is not in.
    pub(super) fn weigh_held_tick(
        &mut self,
        i: usize,
        weights: (f64, f64, f64),
        energy_uj: Option<u64>,
    ) -> Option<(TickEnergy, f64)> {
        let tick = self.window.get(i)?;
        let e = energy_uj.or(tick.delta_uj)?;
        let dt = tick.end_ns - tick.start_ns;
        self.marginal.clear();
        self.marginal
            .extend(tick.items.iter().map(|item| item.marginal(weights)));
        let split = self.idle.split_tick(e, dt, tick.busy_ns);
        let busy = self.busy_j_per_ns();
        split_weights(
            self.config.split_by_steps,
            &self.marginal,
            &mut self.step_work,
            &mut self.weights,
            tick,
            dt,
            busy,
        );
        Some((split, self.weights.iter().sum()))
    }

    /// The engine's power while it runs, before any work's marginal energy (idle power plus the
    /// calibration's static power above it), in joules per nanosecond; `None` until both are
    /// known (then a tick's parts hold equal energy).
    pub(super) fn busy_j_per_ns(&self) -> Option<f64> {
        let idle_w = self.idle.power_mw()? as f64 / 1e3;
        let static_w = self.calibrator.report().fitted_static_w?;
        Some((idle_w + static_w.max(0.0)) * 1e-9)
    }

    pub(super) fn settle_front(&mut self) {
        let frozen = self.window.frozen_len() > 0;
        let Some(mut tick) = self.window.pop() else {
            return;
        };
        self.totals.settled_until_ns = tick.end_ns;
        let dt = tick.end_ns - tick.start_ns;
        // Its provisional split gives way to the real one.
        self.take_back_tentative(tick.tentative.take());
        // When the energy was split, that pass already released each item (one visit per
        // request: at 10,000 requests the visits are cache misses).
        if !self.settle_energy(&tick, dt, frozen) {
            self.release_items(&tick);
        }
        self.prefill_pool.expire(tick.end_ns);
        let unclaimed = self.prefill_pool.unclaimed(self.index.is_empty());
        self.release_pool(unclaimed);
        let mut items = tick.items;
        items.clear();
        if self.spare_items.len() < 4 {
            self.spare_items.push(items);
        }
    }

    /// The prefill parts of a split tick's items (their shares in `self.shares`, marginal energies
    /// in `self.marginal`, weights in `self.weights`) whose request is still tracked, and their
    /// prompt tokens: what the tick brings into the prefill pool.
    fn prefill_parts(&self, tick: &HeldTick, alpha: f64) -> (u64, f64) {
        let (mut parts_uj, mut tokens) = (0u64, 0.0);
        for (k, (item, (share, w))) in tick
            .items
            .iter()
            .zip(self.shares.iter().zip(&self.weights))
            .enumerate()
        {
            let m = self.marginal.get(k).copied().unwrap_or(0.0);
            let tracked = matches!(self.slots.get(item.slot as usize), Some(Some(_)));
            if tracked && item.prefill > 0.0 && m > 0.0 && *w > 0.0 {
                parts_uj += prefill_part(*share, alpha * f64::from(item.prefill) / m);
                tokens += f64::from(item.prefill);
            }
        }
        (parts_uj, tokens)
    }

    /// A request becoming final takes its part of the prefill pool's balance (see
    /// `prefill_pool`): what ticks it was paid in held back when their own prefill parts fell
    /// short of the window's price (without it, that balance went to unattributed when traffic
    /// stopped: 0.18 % of the energy on average over the accuracy bench's cells, 2 % at most).
    fn top_up_from_pool(&mut self, req: &mut super::req::Req) {
        let top = self.prefill_pool.top_up(req.pool_tokens, req.pool_paid_uj);
        req.pool_tokens = 0.0;
        if top > 0 {
            req.energy.energy_uj = req.energy.energy_uj.saturating_add(top);
            req.energy.prefill_uj = req.energy.prefill_uj.saturating_add(top);
            self.totals.pending_uj -= top.min(self.totals.pending_uj);
            self.totals.attributed_uj = self.totals.attributed_uj.saturating_add(top);
        }
    }

    /// The prefill pool's balance once nobody can claim it (see `PrefillPool::unclaimed`):
    /// unattributed.
    fn release_pool(&mut self, uj: u64) {
        self.totals.pending_uj -= uj.min(self.totals.pending_uj);
        self.totals.unattributed_uj = self.totals.unattributed_uj.saturating_add(uj);
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

    /// Splits the tick's energy; returns whether its items were released on the way. A `frozen`
    /// tick's work already counts as settled, and the calibration learned from it.
    fn settle_energy(&mut self, tick: &HeldTick, dt: u64, frozen: bool) -> bool {
        let Some(e) = tick.delta_uj else {
            return false;
        };
        self.totals.pending_uj -= e.min(self.totals.pending_uj);
        let weights = self.calibrator.weights();
        let alpha = weights.0;
        self.marginal.clear();
        let (mut prefill_tokens, mut decode_tokens, mut context_tokens) = (0.0, 0.0, 0.0);
        let mut provisional_work = 0.0;
        for item in &tick.items {
            let m = item.marginal(weights);
            self.marginal.push(m);
            prefill_tokens += f64::from(item.prefill);
            decode_tokens += f64::from(item.decode);
            context_tokens += f64::from(item.context);
            if item.provisional {
                provisional_work += m;
            }
        }
        // Idle time inside a busy tick (before the first arrival, after the last end) is idle.
        let split = self.idle.split_tick(e, dt, tick.busy_ns);
        self.totals.idle_uj = self.totals.idle_uj.saturating_add(split.idle_uj);
        let full_e = e;
        let (e, baseline) = (split.rest_uj, split.baseline_uj);
        let busy = self.busy_j_per_ns();
        split_weights(
            self.config.split_by_steps,
            &self.marginal,
            &mut self.step_work,
            &mut self.weights,
            tick,
            dt,
            busy,
        );
        if !split_uj(e, &self.weights, &mut self.shares) {
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
        let mut priced = PriceEntry {
            tokens: [prefill_tokens, decode_tokens, context_tokens],
            ..PriceEntry::default()
        };
        let mut working = 0u32;
        // Prefill parts go through the pool (see `prefill_pool`): each item's part of its share,
        // then the price its prompt tokens are paid at.
        let (pool_price, mut pool_left) = if self.prefill_pool.enabled() {
            let (parts_uj, tokens) = self.prefill_parts(tick, alpha);
            let (price, available) = self.prefill_pool.take_in(tick.end_ns, parts_uj, tokens);
            (Some(price), available)
        } else {
            (None, 0)
        };
        let pool_before = pool_left;
        let mut credited = 0u64;
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
                credited = credited.saturating_add(*share);
                continue;
            };
            req.pending_items = req.pending_items.saturating_sub(1);
            let tick_share = *share;
            let m = self.marginal.get(k).copied().unwrap_or(0.0);
            let has_prefill = item.prefill > 0.0 && m > 0.0 && *w > 0.0;
            let tick_prefill = if has_prefill {
                prefill_part(tick_share, alpha * f64::from(item.prefill) / m)
            } else {
                0
            };
            // With the pool, the prefill part is replaced by the prompt tokens' pooled worth.
            let (share, prefill) = match pool_price {
                Some(price) if has_prefill => {
                    let paid = ((price * f64::from(item.prefill)).max(0.0) as u64).min(pool_left);
                    pool_left -= paid;
                    req.pool_tokens += f64::from(item.prefill);
                    req.pool_paid_uj = req.pool_paid_uj.saturating_add(paid);
                    (tick_share - tick_prefill + paid, paid)
                }
                _ => (tick_share, tick_prefill),
            };
            credited = credited.saturating_add(share);
            let sf = share as f64;
            // Rounded (x + 0.5, non-negative): a figure, not part of the exact books.
            let active = ((sf * active_ratio + 0.5) as u64).min(share);
            priced.add_item(item, weights, m, (sf, active as f64));
            req.settle_work(item, frozen);
            let en = &mut req.energy;
            en.energy_uj = en.energy_uj.saturating_add(share);
            en.prefill_uj = en.prefill_uj.saturating_add(prefill);
            en.decode_uj = en.decode_uj.saturating_add(share - prefill);
            en.active_uj = en.active_uj.saturating_add(active);
            active_total = active_total.saturating_add(active);
            if req.recent_seq != tick.seq {
                req.recent_seq = tick.seq;
                req.recent_uj = 0;
                if share > 0 {
                    working += 1;
                }
            }
            req.recent_uj = req.recent_uj.saturating_add(share);
            en.recent_power_mw = (req.recent_uj as f64 * mw_per_uj) as u64;
        }
        if pool_price.is_some() {
            let paid = pool_before - pool_left;
            self.prefill_pool.paid(paid);
            // The tick's energy less what the pool kept, or plus what it paid from its balance.
            let t = &mut self.totals;
            t.attributed_uj = t.attributed_uj.saturating_sub(e).saturating_add(credited);
            t.pending_uj = t.pending_uj.saturating_add(e).saturating_sub(credited);
        }
        self.totals.active_uj = self.totals.active_uj.saturating_add(active_total);
        if working > 0 {
            self.observe_batch(working);
        }
        if prefill_tokens + decode_tokens > 0.0 && !frozen {
            self.learn_prices(priced);
        }
        if !frozen {
            let total_work: f64 = self.marginal.iter().sum();
            let tokens = [prefill_tokens, decode_tokens, context_tokens];
            let times = (dt, tick.busy_ns);
            self.learn_from_tick(times, full_e, tokens, provisional_work, total_work);
        }
        true
    }

    /// One settled busy tick's effective batch into the window and histogram.
    fn observe_batch(&mut self, n: u32) {
        use super::types::BATCH_BUCKETS;
        // A minute of ticks at the default interval.
        const WINDOW: usize = 1200;
        if self.batch_window.len() == WINDOW {
            self.batch_window.pop_front();
        }
        self.batch_window.push_back(n);
        let b = &mut self.batch;
        let i = BATCH_BUCKETS.partition_point(|x| *x < f64::from(n));
        if let Some(c) = b.buckets.get_mut(i) {
            *c += 1;
        }
        b.sum = b.sum.saturating_add(u64::from(n));
        b.count += 1;
        b.last = u64::from(n);
        b.window_ticks = self.batch_window.len() as u64;
        let sum: u64 = self.batch_window.iter().map(|&x| u64::from(x)).sum();
        b.mean = sum as f64 / self.batch_window.len() as f64;
        b.max = self.batch_window.iter().copied().max().map_or(0, u64::from);
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
                    if let Some(mut req) = self.slots.get_mut(slot as usize).and_then(Option::take)
                    {
                        self.top_up_from_pool(&mut req);
                        self.index.remove(&req.id);
                        self.free.push(slot);
                        self.ready.push(FinalRequest {
                            id: req.id,
                            energy: req.settled_energy(),
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
        let left = self.prefill_pool.take_all();
        self.release_pool(left);
    }
}

/// The prefill part of an item's `share`: `fraction` (α·prefill over its marginal energy) of it,
/// rounded down, never above the share.
fn prefill_part(share: u64, fraction: f64) -> u64 {
    let sf = share as f64;
    // Non-negative, so the truncating cast is the floor (and cheaper than `floor`); at most the
    // share, which `sf` may round above past 2^53.
    ((sf * fraction).clamp(0.0, sf) as u64).min(share)
}

/// The weights that split a tick's energy (idle part removed). The tick is cut into
/// sub-intervals of about [`SPLIT_NS`]; a meter cannot say how energy varied inside a tick, so
/// each sub-interval holds the part the cost model expects of it, the engine's busy power
/// (`busy_j_per_ns`, J/ns) over its length plus its work's marginal energy (an equal part per
/// nanosecond while that power is unknown), and that part goes to the work placed in the
/// sub-interval in proportion to its marginal energy (α·prefill + β·decode + γ·context). A part
/// with a prefill chunk thus holds more than one that only decoded, as in the engine, where a
/// step's energy (static power included) goes to the work in that step: with equal parts a
/// decode beside a long prefill in the same tick got the prefill's energy per nanosecond
/// (accuracy bench, eight seeds: records 7.6 / 28.7 -> 7.5 / 28.4 %, responses 7.7 / 33.6 ->
/// 7.7 / 33.7 %; with each model's own marginal costs 5.9 / 22.7 -> 5.7 / 22.0 %). Static power
/// follows time this way: a request decoding beside a long prefill gets little of the prefill's
/// time, and all of a decode-only stretch's. A sub-interval with no work placed in it shares
/// its part among the tick's work as a whole.
///
/// `marginal` holds each item's marginal energy; the result, one weight per item, goes to
/// `weights` (`step_work` is scratch).
// `j` numbers both a sub-interval's work and its edges (`edge(j)`): an index reads best.
#[allow(clippy::needless_range_loop)]
pub(super) fn split_weights(
    split_by_steps: bool,
    marginal: &[f64],
    step_work: &mut Vec<f64>,
    weights: &mut Vec<f64>,
    tick: &HeldTick,
    dt: u64,
    busy_j_per_ns: Option<f64>,
) {
    weights.clear();
    let parts = if split_by_steps {
        (dt + SPLIT_NS / 2) / SPLIT_NS
    } else {
        1
    }
    .clamp(1, 64) as usize;
    if parts == 1 {
        weights.extend_from_slice(marginal);
        return;
    }
    // Parts have equal length `plen` (the last one absorbs the rounding); a part index is a
    // multiplication, not a division, per item: this runs for every item of every tick.
    let dt32 = u32::try_from(dt).unwrap_or(u32::MAX).max(1);
    let plen = (dt32 / parts as u32).max(1);
    let inv_plen = 1.0 / f64::from(plen);
    let last = parts - 1;
    // Items that start at the tick's start or run into its last part (a span since a token in
    // an earlier tick, or on into the next one: most of them) skip the conversions.
    let last_edge = plen * last as u32;
    let part_of = |t: u32| {
        if t == 0 {
            0
        } else if t >= last_edge {
            last
        } else {
            ((f64::from(t) * inv_plen) as usize).min(last)
        }
    };
    let edge = |j: usize| if j > last { dt32 } else { plen * j as u32 };
    // A span over several parts adds its density to the parts it covers whole through a
    // difference array (`inner`), so each item costs the same however many parts it spans
    // (provisional estimates span the whole tick).
    step_work.clear();
    step_work.resize(2 * parts, 0.0);
    let (work, inner) = step_work.split_at_mut(parts);
    let plen_f = f64::from(plen);
    // Each item's first and last part, found once: `weights` keeps them (as bits) between the
    // two passes, the second overwriting them with the item's weight.
    for (item, &m) in tick.items.iter().zip(marginal) {
        let (j0, j1) = if item.lo >= item.hi {
            let j = part_of(item.hi.saturating_sub(1));
            (j, j)
        } else {
            (part_of(item.lo), part_of(item.hi - 1))
        };
        weights.push(f64::from_bits((j0 as u64) << 32 | j1 as u64));
        if m <= 0.0 {
            continue;
        }
        if j0 == j1 {
            work[j0] += m;
            continue;
        }
        let per_ns = m / f64::from(item.hi - item.lo);
        work[j0] += per_ns * f64::from(edge(j0 + 1) - item.lo);
        work[j1] += per_ns * f64::from(item.hi - edge(j1));
        if j1 > j0 + 1 {
            // Parts j0+1..j1 are whole and before the last one: `plen` long each.
            inner[j0 + 1] += per_ns * plen_f;
            inner[j1] -= per_ns * plen_f;
        }
    }
    let mut run = 0.0;
    for j in 0..parts {
        run += inner[j];
        work[j] += run;
    }
    step_work.truncate(parts);
    let total: f64 = marginal.iter().sum();
    // Each part's energy relative to an equal share per part: with the engine's busy power,
    // what the cost model expects of it (that power over its length plus its work's marginal
    // energy), so a part with a prefill chunk holds more than one that only decoded.
    let mut rel = [1.0f64; 64];
    if let Some(p) = busy_j_per_ns.filter(|p| *p > 0.0 && p.is_finite()) {
        let expected = |j: usize| p * f64::from(edge(j + 1) - edge(j)) + step_work[j];
        let sum: f64 = (0..parts).map(expected).sum();
        if sum > 0.0 && sum.is_finite() {
            for j in 0..parts {
                rel[j] = parts as f64 * expected(j) / sum;
            }
        }
    }
    let mut empty = 0.0;
    // Each part holds rel/parts of the energy, shared by its work; empty parts go to everyone
    // by marginal. Inverses once per part, not once per item.
    for (j, w) in step_work.iter_mut().enumerate() {
        if *w > 0.0 {
            *w = rel[j] / *w;
        } else {
            empty += rel[j];
            *w = 0.0;
        }
    }
    // Prefix sums of the inverses: a span's whole parts in one subtraction.
    let mut inv_before = [0.0f64; 65];
    for (j, &x) in step_work.iter().enumerate() {
        inv_before[j + 1] = inv_before[j] + x;
    }
    let everyone = if total > 0.0 { empty / total } else { 0.0 };
    for ((item, &m), slot) in tick.items.iter().zip(marginal).zip(weights.iter_mut()) {
        let bits = slot.to_bits();
        let (j0, j1) = ((bits >> 32) as usize, (bits & u64::from(u32::MAX)) as usize);
        let mut w = everyone * m;
        if m > 0.0 {
            if j0 == j1 {
                w += m * step_work[j0];
            } else {
                let per_ns = m / f64::from(item.hi - item.lo);
                w += per_ns
                    * (f64::from(edge(j0 + 1) - item.lo) * step_work[j0]
                        + f64::from(item.hi - edge(j1)) * step_work[j1]);
                if j1 > j0 + 1 {
                    w += per_ns * plen_f * (inv_before[j1] - inv_before[j0 + 1]);
                }
            }
        }
        *slot = w;
    }
}

#[cfg(test)]
#[path = "settle_tests.rs"]
mod split_tests;
