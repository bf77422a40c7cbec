//! What settled ticks teach, and the hold for the calibration: a tick's work and energy go to the
//! calibration's fit and its energy per kind of work to the recent prices when it settles, or,
//! while the fit has never been trusted, when it passes the settlement lag: then it is frozen (its
//! work final, as if settled) and held up to `calibration_hold_ticks` more, so that its energy is
//! split with the first trusted weights rather than the defaults. Until the first tick settles or
//! freezes, the prices published for responses come from the held ticks' splits instead.
//!
//! Part of the [`Ledger`]'s implementation (split from `settle.rs` by concern); touches no
//! energy of the books.

use super::attribution::{Ledger, PriceEntry};
use super::calibration::TickWork;
use super::idle::IdleSource;

/// Nothing in flight for this long releases the ticks held for the calibration
/// (`Ledger::calibration_hold`), ns.
pub const HOLD_IDLE_RELEASE_NS: u64 = 1_000_000_000;

/// The share of a tick's work (marginal energy at the weights in use) that must be observed,
/// not estimated, for the calibration to learn from the tick. At 90 %, as until stop 33, traffic
/// of long non-streamed answers (their decode estimated for seconds) left the fit a few
/// unrepresentative ticks (27 blocks of 10 in a 100-request mixed-long run) and the decode-to-
/// prefill ratio chosen among them on a 5 % difference in squared error. Accuracy bench, eight
/// seeds: records 6.8 / 25.2 -> 6.6 / 25.1 %, responses 7.0 / 30.8 -> 6.8 / 30.2 %; default seed
/// 7.0 / 23.9 -> 6.2 / 23.2 and 7.2 / 29.5 -> 6.6 / 27.9 %, and flat around it (80, 75, 65,
/// 60 %: 6.6 / 23.4, 6.4 / 23.8, 6.4 / 23.7, 6.4 / 23.6 %; 50 % 6.4 / 23.3, everything 6.6 /
/// 24.5 %).
pub(super) const OBSERVED_WORK_SHARE: f64 = 0.7;

/// Most work items the held ticks are priced over per tick before the first tick settles
/// ([`Ledger::published_token_prices`]): about what settling one tick of a few thousand
/// requests in flight walks.
const EARLY_PRICE_ITEMS: usize = 20_000;

impl Ledger {
    /// What held tick `i` would add to the recent prices if it settled now with `weights` (its
    /// energy per kind of work, in floating point: a price, not the books).
    fn price_of_tick(&mut self, i: usize, weights: (f64, f64, f64)) -> Option<PriceEntry> {
        let (split, total) = self.weigh_held_tick(i, weights, None)?;
        if !(total > 0.0 && total.is_finite()) {
            return None;
        }
        let tick = self.window.get(i)?;
        let rest = split.rest_uj as f64;
        let active_ratio = if split.rest_uj > 0 {
            (split.rest_uj - split.baseline_uj) as f64 / rest
        } else {
            0.0
        };
        let mut priced = PriceEntry::default();
        for ((item, w), &m) in tick.items.iter().zip(&self.weights).zip(&self.marginal) {
            for (t, n) in priced.tokens.iter_mut().zip(item.tokens()) {
                *t += n;
            }
            let share = rest * w / total;
            priced.add_item(item, weights, m, (share, share * active_ratio));
        }
        Some(priced)
    }

    /// One settled busy tick's energy and tokens per kind of work into the window of recent
    /// prices (`Ledger::token_prices`).
    pub(super) fn learn_prices(&mut self, priced: PriceEntry) {
        // 24 s of busy ticks at the default interval: long enough not to price a burst at the
        // cost of the lone request that ended the previous one (the accuracy bench, bursty:
        // response median 83 % with 2 s, 30-35 % with 6 s), and, priced per kind of work, long
        // enough to have seen prompts of all sizes (responses, matrix four seeds / real time 8B
        // 50 ms figures read: 3 s 9.2 / 42.9 and 5.1 / 30.5 %, 6 s 9.0 / 41.0 and 5.0-5.1 /
        // 30.5-31.8, 12 s 8.8 / 40.4 and 4.6 / 30.4, 24 s 8.8 / 40.3 and 4.6 / 28.0 %; 70B 4.5 /
        // 22.7 -> 4.8 / 22.2, context-bound 9.9 / 34.6 -> 9.5 / 34.5 %). 480 entries of 72 bytes.
        const PRICE_TICKS: usize = 480;
        if self.price_window.len() == PRICE_TICKS {
            if let Some(old) = self.price_window.pop_front() {
                self.price_sums.add(&old, -1.0);
            }
        }
        self.price_window.push_back(priced);
        self.price_sums.add(&priced, 1.0);
    }

    /// The prices accounting publishes for responses ([`Ledger::token_prices_with`]), and, before
    /// any tick has settled or frozen (the first settlement lag of a run, three seconds by
    /// default), the same prices from the held ticks whose energy is in, split at the weights in
    /// use as settlement would split them (again at each tick, with the work placed since).
    /// Without them a response in a run's first seconds read its provisional share of the held
    /// ticks as it stood (a non-streamed answer's estimate placed where other prompts ran: 8B
    /// prefill-heavy, the first answers 2-3 times their truth) and could not be repriced.
    /// Accuracy bench, figures read, p95: eight seeds 21.96 -> 21.82 %, held-out models (four
    /// seeds) 22.37 -> 22.26 % (medians unchanged).
    pub fn published_token_prices(
        &mut self,
        prefill_prior_cap: Option<f64>,
    ) -> Option<([f64; 3], [f64; 3])> {
        if self.price_window.is_empty() {
            let early = self.price_held_ticks();
            if early.tokens[0] + early.tokens[1] > 0.0 {
                let weights = self.calibrator.weights();
                return Self::prices_of(&early, weights, prefill_prior_cap);
            }
        }
        self.token_prices_with(prefill_prior_cap)
    }

    /// What the held ticks whose energy is in would give each kind of work if they settled now,
    /// newest first, up to [`EARLY_PRICE_ITEMS`] work items (a bound on the cost per tick: these
    /// prices serve only until the first tick settles).
    fn price_held_ticks(&mut self) -> PriceEntry {
        let weights = self.calibrator.weights();
        let mut sums = PriceEntry::default();
        let mut items = 0usize;
        for i in (self.window.frozen_len()..self.window.len()).rev() {
            let Some(tick) = self.window.get(i) else {
                continue;
            };
            if tick.delta_uj.is_none() || tick.unfilled_ns > 0 {
                continue;
            }
            items += tick.items.len();
            if items > EARLY_PRICE_ITEMS {
                break;
            }
            if let Some(priced) = self.price_of_tick(i, weights) {
                sums.add(&priced, 1.0);
            }
        }
        sums
    }

    /// Teaches the calibration one tick: its length and busy time (`times`, ns), its work
    /// (`tokens`: prefill, decode, context) and its energy `e`. A tick whose work is mostly
    /// estimated would teach the fit its own guesses: at least [`OBSERVED_WORK_SHARE`] of the
    /// tick's work (marginal energy) must be observed.
    pub(super) fn learn_from_tick(
        &mut self,
        (dt, busy_ns): (u64, u64),
        e: u64,
        tokens: [f64; 3],
        provisional_work: f64,
        total_work: f64,
    ) {
        let observed = provisional_work <= (1.0 - OBSERVED_WORK_SHARE) * total_work;
        if observed && self.idle.source() != IdleSource::Unknown {
            let active_j = e.saturating_sub(self.idle.baseline_uj(dt)) as f64 / 1e6;
            let work = TickWork {
                busy_s: busy_ns.min(dt) as f64 / 1e9,
                prefill: tokens[0],
                decode: tokens[1],
                context: tokens[2],
                span_s: dt as f64 / 1e9,
            };
            self.calibrator.observe(work, active_j);
        }
    }

    /// How many ticks with work are held past the settlement lag now: while the calibration has
    /// never been trusted (and can learn: P_idle known), `calibration_hold_ticks`, else none.
    /// A fit still not trusted after three times as many ticks of work as that (a meter that
    /// does not follow the load, an engine the terms do not fit) is not waited for any more; nor
    /// is it while nothing has been in flight for [`HOLD_IDLE_RELEASE_NS`] (traffic paused, or
    /// one request tried by hand: its record need not wait for traffic that may not come), nor
    /// once the ledger held more requests than `calibration_hold_max_requests` or its held ticks
    /// more items than `calibration_hold_max_items` (memory: a held request keeps its slot and
    /// items).
    pub(super) fn calibration_hold(&self) -> usize {
        let hold = self.config.calibration_hold_ticks;
        if hold == 0
            || self.hold_given_up
            || self.calibrator.has_been_trusted()
            || self.calibrator.ticks_seen() >= 3 * hold as u64
            || self.idle.source() == IdleSource::Unknown
            || self.newest_end_ns.saturating_sub(self.busy_until_ns) >= HOLD_IDLE_RELEASE_NS
        {
            0
        } else {
            hold
        }
    }

    /// While ticks are held for the calibration: freezes every held tick that passed the
    /// settlement lag (or whose work is complete), oldest first, as settling it would have done
    /// to its work: the calibration learns from it, its work counts as its requests' settled
    /// work, and nothing is placed or changed in it any more. Only its energy waits, to be split
    /// with the first trusted weights. Stops at a tick whose energy is not in.
    pub(super) fn freeze_ticks_past_lag(&mut self) {
        let n = self.window.len();
        let weights = self.calibrator.weights();
        for i in self.window.frozen_len()..n {
            let Some(tick) = self.window.get(i) else {
                break;
            };
            let past_lag = i + self.config.settle_ticks < n;
            let complete = tick.end_ns < self.min_unresolved && i + 1 < n;
            let (true, Some(e), 0) = (past_lag || complete, tick.delta_uj, tick.unfilled_ns) else {
                break;
            };
            let (mut tokens, mut provisional, mut total) = ([0.0; 3], 0.0, 0.0);
            for item in &tick.items {
                let m = item.marginal(weights);
                total += m;
                if item.provisional {
                    provisional += m;
                }
                for (t, n) in tokens.iter_mut().zip(item.tokens()) {
                    *t += n;
                }
                if let Some(req) = self
                    .slots
                    .get_mut(item.slot as usize)
                    .and_then(Option::as_mut)
                {
                    req.freeze_work(item);
                }
            }
            if total > 0.0 {
                let times = (tick.end_ns - tick.start_ns, tick.busy_ns);
                self.learn_from_tick(times, e, tokens, provisional, total);
                if let Some(priced) = self.price_of_tick(i, weights) {
                    self.learn_prices(priced);
                }
            }
            self.window.freeze_next();
        }
    }
}
