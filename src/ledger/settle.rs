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
use super::tick_split::split_weights;
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

    /// A request becoming final has its prompt repriced at the prefill pool's price then (see
    /// `prefill_pool`): it takes what it lacks of its tokens' worth from the balance (what ticks it
    /// was paid in held back when their own prefill parts fell short of the window's price;
    /// without it, that balance went to unattributed when traffic stopped: 0.18 % of the energy on
    /// average over the accuracy bench's cells, 2 % at most), or gives back what it was paid
    /// beyond it.
    fn reprice_from_pool(&mut self, req: &mut super::req::Req) {
        use super::prefill_pool::Repricing;
        let now = self.totals.settled_until_ns;
        let en = &mut req.energy;
        let repricing = self.prefill_pool.reprice(
            now,
            req.pool_tokens,
            req.pool_paid_uj,
            req.pool_parts_uj,
            en.prefill_uj,
        );
        req.pool_tokens = 0.0;
        let t = &mut self.totals;
        match repricing {
            Repricing::Kept => {}
            Repricing::TopUp(uj) => {
                en.energy_uj = en.energy_uj.saturating_add(uj);
                en.prefill_uj = en.prefill_uj.saturating_add(uj);
                t.pending_uj -= uj.min(t.pending_uj);
                t.attributed_uj = t.attributed_uj.saturating_add(uj);
            }
            Repricing::Refund(uj) => {
                // At most its prefill energy (the pool's cap), so within its energy. Its active
                // energy gives up the same fraction, and never stays above the rest.
                let fraction = uj as f64 / en.energy_uj.max(1) as f64;
                let active_back = ((en.active_uj as f64 * fraction) as u64)
                    .max(en.active_uj.saturating_sub(en.energy_uj - uj))
                    .min(en.active_uj);
                en.active_uj -= active_back;
                t.active_uj = t.active_uj.saturating_sub(active_back);
                en.energy_uj -= uj;
                en.prefill_uj -= uj;
                t.attributed_uj = t.attributed_uj.saturating_sub(uj);
                t.pending_uj = t.pending_uj.saturating_add(uj);
            }
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
                    req.pool_parts_uj = req.pool_parts_uj.saturating_add(tick_prefill);
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
                        self.reprice_from_pool(&mut req);
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
