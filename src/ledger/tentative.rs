//! The provisional split of held ticks: the figures a response carries for the part of its life
//! that has not settled yet are its share of each held tick, split the way settlement will split
//! it with the work placed so far; made again where that work changed, and taken back when the
//! tick settles.
//!
//! Part of the [`Ledger`]'s implementation (split from `settle.rs` by concern).

use super::attribution::Ledger;
use super::split::mul_div;
use super::window::Tentative;

/// Held ticks whose provisional split is made again per tick when their work changed after it
/// (newest first). Each costs one tick's split. The bench (four seeds, looking 8 ticks back) took
/// response figures from 9.9 / 43.4 % to 9.7 / 40.7 % (median / p95) with one, 9.8 / 40.4 with
/// two, 9.8 / 40.1 with eight, so one; looking over the whole window, 9.7 / 40.3 %.
const RESPLITS_PER_TICK: usize = 1;

impl Ledger {
    /// Splits the held ticks whose energy is in (or estimated, for an announced tick: see
    /// `split_tick_tentatively`) provisionally, once each, the way settlement
    /// will with the work placed so far, the newest too: a stream's tokens read at the next tick
    /// may still land in it, and then it is split again (it turns stale). Leaving the newest
    /// out left every response's last ~50-100 ms in no figure, priced per token instead, which
    /// misses how a request's share depends on who else ran (real-time run, 50 ms counter,
    /// figures read: 8B 5.9 / 33.2 -> 5.0 / 30.5 and 5.1 / 31.8 %, streams of n = 3 19 / 76 ->
    /// 7-8 / 31-33 %; context-bound 10.1 / 43.6 -> 9.9 / 34.6 %; 70B 4.6 / 21.3 -> 4.5 / 22.7 %;
    /// the deterministic matrix's responses 9.0 / 40.4 -> 9.0 / 41.0 %). A response that ends while its ticks are
    /// held (up to the settlement lag) then carries its share of their measured energy rather
    /// than its tokens priced at the recent average, which misses whatever made its own ticks
    /// dearer or cheaper. Makes first splits at most 8 ticks back, so the cost per tick stays one
    /// tick's split, plus [`RESPLITS_PER_TICK`] splits made again, newest first anywhere in the
    /// window, where work changed since (four seeds: responses 9.7 / 40.7 % looking 8 ticks back
    /// for them, 9.7 / 40.3 % looking over the whole window).
    pub(super) fn split_tentatively(&mut self) {
        let n = self.window.len();
        // Ticks held past the settlement lag for the calibration (`calibration_hold_ticks`):
        // their work changes no more than a settled tick's, but a stream's prefill placed at its
        // first token, or an answer's true counts, may have made their split stale after the
        // lag; settled, the request would have had its share. Split again, every one that is.
        for i in 0..n.saturating_sub(self.config.settle_ticks) {
            if self
                .window
                .get(i)
                .is_some_and(|t| t.stale && t.tentative.is_some())
            {
                self.split_tick_tentatively(i, true);
            }
        }
        let mut resplits = RESPLITS_PER_TICK;
        for i in (0..n).rev() {
            let stale = self
                .window
                .get(i)
                .is_some_and(|t| t.stale && t.tentative.is_some());
            // First splits for the 8 newest ticks only; splits made again anywhere in the
            // window (an answer's true counts land over its whole life).
            if i + 8 < n && !(stale && resplits > 0) {
                if resplits == 0 {
                    break;
                }
                continue;
            }
            if stale && resplits > 0 {
                resplits -= 1;
            } else if stale {
                continue;
            }
            self.split_tick_tentatively(i, stale);
        }
    }

    /// Splits held tick `i` provisionally (once its energy is in), taking back its previous
    /// split first with `again` (work changed after it: an answer's usage came and its estimate
    /// gave way to its true counts, a stream's tokens since its previous one).
    fn split_tick_tentatively(&mut self, i: usize, again: bool) {
        if again {
            let parts = self.window.get_mut(i).and_then(|t| {
                t.stale = false;
                t.tentative.take()
            });
            self.take_back_tentative(parts);
        }
        let weights = self.calibrator.weights();
        let Some(tick) = self.window.get(i) else {
            return;
        };
        let (Some(filled), None) = (tick.delta_uj, &tick.tentative) else {
            return;
        };
        // A tick whose energy is still to come from a meter slower than the reads (or one spread
        // up to its updates): split on an estimate, taken back when a fill adds to it. With the
        // update lag every tick of a counter that moves at every read is announced; left
        // unsplit, a response's last ~100 ms were priced per token (figures read in real time,
        // 8B: p95 26.7-26.8 -> 32.6-34.3 %); split on its part so far and the rest at the latest
        // complete tick's power, 21.2-23.5 % against stop 35's 23.7-28.2 % (three interleaved
        // pairs). That power is a tick late where the load changes (a prompt's first tick read
        // 26 J, the next was estimated at 26 J and measured 15 J); the sampler's estimate (what
        // the meter showed of the tick before its latest update, scaled to it) is used where it
        // has one: read p95 (8B, two pairs) 20 ms counter 29.7-39.4 -> 21.6-26.5 %, 50 ms
        // 21.8-24.7 -> 21.7-22.5 %.
        let dt = tick.end_ns.saturating_sub(tick.start_ns);
        let estimate = match (tick.unfilled_ns, tick.estimate_uj) {
            (0, _) => None,
            // The sampler's own estimate (what its meter has shown of the tick, scaled to it).
            (unfilled, Some(whole)) if dt > 0 => {
                Some(filled.saturating_add(mul_div(whole, unfilled.min(dt), dt)))
            }
            (unfilled, _) if self.recent_uj_per_ns > 0.0 => {
                Some(filled.saturating_add((unfilled as f64 * self.recent_uj_per_ns) as u64))
            }
            _ => return,
        };
        let Some((split, total)) = self.weigh_held_tick(i, weights, estimate) else {
            return;
        };
        let (e, baseline) = (split.rest_uj, split.baseline_uj);
        let Some(tick) = self.window.get(i) else {
            return;
        };
        let mut parts = self.spare_tentative.pop().unwrap_or_default();
        if total > 0.0 && total.is_finite() {
            let active_ratio = if e > 0 {
                (e - baseline) as f64 / e as f64
            } else {
                0.0
            };
            parts.reserve(tick.items.len());
            // Prefill parts as settlement will pay them: the prompt tokens at the pool's price.
            let pool_price = self.prefill_pool.price();
            for (k, (item, w)) in tick.items.iter().zip(&self.weights).enumerate() {
                let mut share = e as f64 * (w / total);
                let m = self.marginal.get(k).copied().unwrap_or(0.0);
                if let Some(price) = pool_price.filter(|_| item.prefill > 0.0 && m > 0.0) {
                    let tokens = f64::from(item.prefill);
                    share += tokens * price - share * (weights.0 * tokens / m).min(1.0);
                }
                parts.push(Tentative {
                    slot: item.slot,
                    energy_uj: share as u64,
                    active_uj: (share * active_ratio) as u64,
                    tokens: [item.prefill, item.decode, item.context],
                    own_uj: share * (w / total),
                });
            }
        }
        for t in &parts {
            if let Some(req) = self.slots.get_mut(t.slot as usize).and_then(Option::as_mut) {
                req.tentative_own += t.own_uj;
                let (e, a, w) = &mut req.tentative;
                *e = e.saturating_add(t.energy_uj);
                *a = a.saturating_add(t.active_uj);
                for (x, n) in w.iter_mut().zip(t.tokens) {
                    *x += f64::from(n);
                }
            }
        }
        if let Some(tick) = self.window.get_mut(i) {
            tick.tentative = Some(parts);
        }
    }

    // Sums saturate rather than wrap: exactness holds up to 2^64 uJ (about 5 GWh) of measured
    // energy, and garbage input can never panic.

    /// Takes a tick's provisional split back from the requests' published figures (the tick
    /// settles, or is split again), keeping its vector for reuse.
    pub(super) fn take_back_tentative(&mut self, parts: Option<Vec<Tentative>>) {
        let Some(mut parts) = parts else {
            return;
        };
        for t in &parts {
            if let Some(req) = self.slots.get_mut(t.slot as usize).and_then(Option::as_mut) {
                req.tentative_own = (req.tentative_own - t.own_uj).max(0.0);
                let (e, a, w) = &mut req.tentative;
                *e = e.saturating_sub(t.energy_uj);
                *a = a.saturating_sub(t.active_uj);
                for (x, n) in w.iter_mut().zip(t.tokens) {
                    *x = (*x - f64::from(n)).max(0.0);
                }
            }
        }
        parts.clear();
        if self.spare_tentative.len() < 4 {
            self.spare_tentative.push(parts);
        }
    }
}
