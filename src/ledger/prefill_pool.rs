//! The prefill pool: prompt tokens' energy priced over a window of settled ticks instead of tick
//! by tick.
//!
//! Part of the [`Ledger`](super::Ledger)'s settlement. A tick's split gives each item a prefill
//! part (its share times the prefill's fraction of its marginal energy); those parts go into the
//! pool and each item takes back its prompt tokens times the pool's price: the prefill energy of
//! the last `window_ns` of settled ticks over their prefill tokens. Why: where a prompt ran is the
//! least certain of the ledger's placements (a non-streamed answer's prefill is placed before its
//! decode, a stream's somewhere between its arrival and its first token), while the energy of a
//! prompt token varies little from one tick to the next (prefill is compute-bound). Split tick by
//! tick, a prompt placed a little early or late took the energy of another's ticks, and the two
//! records missed by as much in opposite directions; priced over the window, each keeps its own
//! count's worth. Decode and context parts stay in their ticks (streams place them exactly).
//!
//! The books stay exact: what the pool takes in and has not paid out is its balance, counted as
//! pending. A tick never pays out more than its own parts plus the balance, so early in a window
//! (or where a tick's own parts fall short of the price) some prompts are paid less; the price
//! includes the balance, so it drains over the window's prompts. A request becoming final has its
//! prompt repriced at the price then (or by the line of parts against prompt size that the
//! window's final requests draw, where it fits clearly better: short prompts in light traffic):
//! it takes what it still lacks of its tokens' worth from the balance, or gives back to it what it
//! was paid beyond (a prompt paid while the window was young, or at a tick whose own price ran
//! high). What nobody can claim
//! (no prompt left in the window to price a claim with, or nothing in flight for ten settled ticks
//! in a row) goes to unattributed.
//!
//! Accuracy bench, eight seeds, records median / p95 |error| over the 72 cells: 4.96 / 21.24 % tick
//! by tick, 3.84 / 16.30 % with the default 8 s window (4 s 3.99 / 17.09 %, 16 s 3.89 / 16.79 %,
//! both with an earlier form of the top-ups), 3.67 / 15.32 % repriced both ways at finalization
//! (refunds too). What a flat price misses: in light traffic a short
//! prompt prefilled beside a decoding batch costs more per token than a long one (the step's static
//! power goes to fewer units of work), which the per-tick split saw where it placed the prompt
//! right; there (the demo, the real-time bench) records are level at best (see the README).

use std::collections::VecDeque;

/// Most settled ticks the window keeps, whatever their length (bounds its memory: 24 bytes each).
const MAX_ENTRIES: usize = 4096;

/// Settled ticks in a row with nothing in flight after which the balance is released (half a
/// second at the default 50 ms interval).
const IDLE_RELEASE_TICKS: u32 = 10;

/// What a final request's prompt comes to at the window's price (see [`PrefillPool::reprice`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Repricing {
    /// Paid its worth, or the balance holds nothing to pay more with.
    Kept,
    /// Paid less than its worth: this much more, already taken out of the balance, µJ.
    TopUp(u64),
    /// Paid more than its worth: this much, already put back into the balance, µJ.
    Refund(u64),
}

/// A window of settled prefill energy and the balance not yet paid out.
#[derive(Debug)]
pub(super) struct PrefillPool {
    /// Window length, ns (0: no pool, each tick keeps its own prefill parts).
    window_ns: u64,
    /// `(tick end, prefill parts, prefill tokens)` of settled ticks with prefill, oldest first.
    entries: VecDeque<(u64, u64, f64)>,
    sum_uj: u64,
    sum_tokens: f64,
    /// Taken in and not paid out yet, µJ.
    balance_uj: u64,
    /// Settled ticks in a row with no request in flight.
    idle_ticks: u32,
    /// Requests repriced in the window: what their prompts' size says of their prefill parts.
    sizes: SizeFit,
}

impl PrefillPool {
    pub(super) fn new(window_ns: u64) -> Self {
        PrefillPool {
            window_ns,
            entries: VecDeque::new(),
            sum_uj: 0,
            sum_tokens: 0.0,
            balance_uj: 0,
            idle_ticks: 0,
            sizes: SizeFit::default(),
        }
    }

    /// Whether prefill parts are pooled at all.
    pub(super) fn enabled(&self) -> bool {
        self.window_ns > 0
    }

    /// Drops ticks that ended more than the window before `now_ns`.
    pub(super) fn expire(&mut self, now_ns: u64) {
        let from = now_ns.saturating_sub(self.window_ns);
        while let Some(&(end, uj, tokens)) = self.entries.front() {
            if end > from && self.entries.len() <= MAX_ENTRIES {
                break;
            }
            self.entries.pop_front();
            self.sum_uj = self.sum_uj.saturating_sub(uj);
            self.sum_tokens -= tokens;
        }
        if self.entries.is_empty() {
            // No drift left behind by the subtractions.
            self.sum_uj = 0;
            self.sum_tokens = 0.0;
        }
        self.sizes.expire(from);
    }

    /// Called once per settled tick: the balance nobody can claim any more, taken out of the pool.
    /// All of it when no prompt is left in the window (a top-up needs the window's price), or
    /// when no request has been in flight for [`IDLE_RELEASE_TICKS`] settled ticks in a row;
    /// otherwise 0. Light traffic leaves the engine idle between requests, and releasing the
    /// balance at every such gap took it from the prompts after it (a request every 120 ms, 8B:
    /// records 7.4 / 22.9 % released at once, 7.0 / 20.4 % kept over the gaps).
    pub(super) fn unclaimed(&mut self, nobody_in_flight: bool) -> u64 {
        self.idle_ticks = if nobody_in_flight {
            self.idle_ticks.saturating_add(1)
        } else {
            0
        };
        if self.entries.is_empty() || self.idle_ticks >= IDLE_RELEASE_TICKS {
            std::mem::take(&mut self.balance_uj)
        } else {
            0
        }
    }

    /// All of the balance, taken out of the pool (nothing will settle any more).
    pub(super) fn take_all(&mut self) -> u64 {
        std::mem::take(&mut self.balance_uj)
    }

    /// Takes in a settled tick's prefill parts (`uj` over `tokens` prompt tokens) and returns the
    /// price per prompt token to pay them out at and the most the tick may pay out (its parts plus
    /// the balance). Call [`PrefillPool::paid`] with what was paid.
    pub(super) fn take_in(&mut self, end_ns: u64, uj: u64, tokens: f64) -> (f64, u64) {
        let carried = self.balance_uj;
        let available = uj.saturating_add(carried);
        self.balance_uj = available;
        if tokens <= 0.0 {
            return (0.0, available);
        }
        self.entries.push_back((end_ns, uj, tokens));
        self.sum_uj = self.sum_uj.saturating_add(uj);
        self.sum_tokens += tokens;
        // The window's price with the balance spread over its prompts, so that it drains.
        let price = self.sum_uj.saturating_add(carried) as f64 / self.sum_tokens.max(tokens);
        (price.min(available as f64 / tokens), available)
    }

    /// The window's price per prompt token now, µJ (its parts over its tokens: the balance is what
    /// earlier prompts are still owed), once its ticks span a quarter of the window; `None` before,
    /// when pooling is off or no prompt is in it. The first ticks to settle hold the prompts the
    /// prefill queue's first guess of the engine's speed placed late: at the end of the hold for
    /// the calibration, 8B prefill-heavy traffic's first price was 53 mJ a token against 20 mJ
    /// a second later (accuracy bench, eight seeds, figures read: 4.17 / 22.28 % from the first
    /// tick, 4.15 / 21.95 % from 2 s, 4.34 / 22.69 % from 4 s).
    pub(super) fn price(&self) -> Option<f64> {
        let span = match (self.entries.front(), self.entries.back()) {
            (Some(first), Some(last)) => last.0.saturating_sub(first.0),
            _ => 0,
        };
        (self.enabled() && self.sum_tokens > 0.0 && span >= self.window_ns / 4)
            .then(|| self.sum_uj as f64 / self.sum_tokens)
    }

    /// A request paid `paid_uj` for `tokens` prompt tokens, whose ticks' splits gave it `parts_uj`
    /// for them and which holds `held_uj` of prefill energy, became final at `now_ns`: its prompt is repriced at the window's price now (the
    /// balance spread over the window's prompts, as in [`PrefillPool::take_in`]), or by the
    /// window's final requests' line of parts against prompt size where that explains them
    /// clearly better ([`SizeFit`]). What it lacks of its tokens' worth comes out of the balance;
    /// what it was paid beyond their worth goes back into it, for the prompts after it. Early in a
    /// run the window holds few ticks and a prompt placed where another's energy was took a price
    /// of its own, which only the refund corrects (accuracy bench, eight seeds: records 3.84 /
    /// 16.30 -> 3.67 / 15.32 %; with the line 3.63 / 15.39 %, held-out models 4.47 / 16.49 -> 4.19 /
    /// 15.73 %).
    pub(super) fn reprice(
        &mut self,
        now_ns: u64,
        tokens: f64,
        paid_uj: u64,
        parts_uj: u64,
        held_uj: u64,
    ) -> Repricing {
        if tokens <= 0.0 || self.sum_tokens <= 0.0 {
            return Repricing::Kept;
        }
        self.sizes.add(now_ns, tokens, parts_uj as f64);
        let worth = match self.sizes.line() {
            // The balance spread over the line as the flat price spreads it over the window.
            Some((c0, c1)) if self.sum_uj > 0 => {
                let spread =
                    self.sum_uj.saturating_add(self.balance_uj) as f64 / self.sum_uj as f64;
                spread * (c0 + c1 * tokens)
            }
            _ => self.sum_uj.saturating_add(self.balance_uj) as f64 / self.sum_tokens * tokens,
        };
        let worth = worth.min(u64::MAX as f64) as u64;
        if paid_uj > worth {
            // Never more than the request still holds as prefill energy.
            let back = (paid_uj - worth).min(held_uj);
            self.balance_uj = self.balance_uj.saturating_add(back);
            return if back > 0 {
                Repricing::Refund(back)
            } else {
                Repricing::Kept
            };
        }
        match (worth - paid_uj).min(self.balance_uj) {
            0 => Repricing::Kept,
            part => {
                self.balance_uj -= part;
                Repricing::TopUp(part)
            }
        }
    }

    /// Records what a tick paid out of what [`PrefillPool::take_in`] made available.
    pub(super) fn paid(&mut self, uj: u64) {
        self.balance_uj = self.balance_uj.saturating_sub(uj);
    }
}

/// Final requests of the window as points `(prompt tokens, prefill parts)`, and the line through
/// them where it explains them clearly better than a flat price per token. In light traffic a
/// short prompt prefilled beside a decoding batch costs more per token than a long one (the
/// step's static power goes to fewer units of work; 8B steady traffic: 24.9 mJ a token under 405
/// tokens, 20.6 mJ over 929), which a flat price misses; under load prompts overlap and the price
/// is flat. The line is used only where the Bayesian information criterion prefers it (one more
/// parameter: `n · ln(SSE_flat / SSE_line) > ln n`), with both coefficients non-negative.
#[derive(Debug, Default)]
struct SizeFit {
    /// `(final at, prompt tokens, prefill parts)`, oldest first.
    points: VecDeque<(u64, f64, f64)>,
    /// Sums over `points`: count, x, y, x², x·y, y².
    sums: [f64; 6],
}

impl SizeFit {
    /// Fewest points a line is fitted through.
    const MIN_POINTS: f64 = 8.0;

    fn add(&mut self, at_ns: u64, tokens: f64, parts_uj: f64) {
        self.points.push_back((at_ns, tokens, parts_uj));
        self.accumulate(tokens, parts_uj, 1.0);
    }

    fn accumulate(&mut self, x: f64, y: f64, sign: f64) {
        let s = &mut self.sums;
        s[0] += sign;
        s[1] += sign * x;
        s[2] += sign * y;
        s[3] += sign * x * x;
        s[4] += sign * x * y;
        s[5] += sign * y * y;
    }

    /// Forgets points from before `from_ns` (and the oldest beyond [`MAX_ENTRIES`]).
    fn expire(&mut self, from_ns: u64) {
        while let Some(&(at, x, y)) = self.points.front() {
            if at > from_ns && self.points.len() <= MAX_ENTRIES {
                break;
            }
            self.points.pop_front();
            self.accumulate(x, y, -1.0);
        }
        if self.points.is_empty() {
            // No drift left behind by the subtractions.
            self.sums = [0.0; 6];
        }
    }

    /// `(c0, c1)`: a prompt of `x` tokens is worth `c0 + c1 · x`; `None` where a flat price does
    /// as well (see the type's doc).
    fn line(&self) -> Option<(f64, f64)> {
        let [n, sx, sy, sxx, sxy, syy] = self.sums;
        if n < Self::MIN_POINTS || sy <= 0.0 || sxx <= 0.0 {
            return None;
        }
        let var = sxx - sx * sx / n;
        if var <= 1e-9 * sxx {
            return None;
        }
        let c1 = (sxy - sx * sy / n) / var;
        let c0 = (sy - c1 * sx) / n;
        if c0 < 0.0 || c1 < 0.0 {
            return None;
        }
        let sse_flat = syy - sxy * sxy / sxx;
        let sse_line =
            syy - 2.0 * (c0 * sy + c1 * sxy) + n * c0 * c0 + 2.0 * c0 * c1 * sx + c1 * c1 * sxx;
        // Relative floor: both are differences of large sums.
        let floor = 1e-12 * syy;
        let gain = n * (sse_flat.max(floor) / sse_line.max(floor)).ln();
        (gain > n.ln()).then_some((c0, c1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn pays_the_window_price_within_what_the_tick_and_the_balance_hold() {
        let mut pool = PrefillPool::new(8 * S);
        // The first tick sets the price: its own.
        let (price, available) = pool.take_in(S, 100, 10.0);
        assert_eq!((price, available), (10.0, 100));
        pool.paid(100);
        // A dearer tick pays the window's price (400 / 20) and keeps the rest.
        let (price, available) = pool.take_in(2 * S, 300, 10.0);
        assert_eq!((price, available), (20.0, 300));
        pool.paid(200);
        assert_eq!(pool.balance_uj, 100);
        // A cheaper one is paid more than its own parts, out of the balance, at the window's price
        // with the balance in it: (100 + 300 + 100 + 100) / 30.
        let (price, available) = pool.take_in(3 * S, 100, 10.0);
        assert_eq!(available, 200);
        assert_eq!(price, 20.0);
        pool.paid(200);
        assert_eq!(pool.balance_uj, 0);
        // Never more than the tick and the balance hold.
        let (price, available) = pool.take_in(4 * S, 0, 10.0);
        assert_eq!((price, available), (0.0, 0));
    }

    #[test]
    fn a_final_request_is_repriced_at_the_window_price() {
        let mut pool = PrefillPool::new(8 * S);
        pool.take_in(S, 100, 10.0);
        pool.paid(100);
        pool.take_in(2 * S, 300, 10.0);
        pool.paid(200);
        // Price now (400 + 100) / 20 = 25: the first request's ten tokens are worth 250, it was
        // paid 100, and the balance holds 100 of it.
        assert_eq!(pool.reprice(0, 10.0, 100, 0, 100), Repricing::TopUp(100));
        assert_eq!(pool.balance_uj, 0);
        // Paid exactly their worth: kept.
        pool.take_in(3 * S, 300, 10.0);
        pool.paid(100);
        // Price (700 + 200) / 30 = 30.
        assert_eq!(pool.reprice(0, 10.0, 300, 0, 300), Repricing::Kept);
        assert_eq!(pool.balance_uj, 200);
        // Paid more: the excess is to go back, and the next request's top-up can draw on it.
        assert_eq!(
            pool.reprice(0, 10.0, 1_000, 0, 1_000),
            Repricing::Refund(700)
        );
        assert_eq!(pool.balance_uj, 900);
        // Price (700 + 900) / 30 = 53.3: ten tokens paid 100 lack 433.
        assert_eq!(pool.reprice(0, 10.0, 100, 0, 100), Repricing::TopUp(433));
        assert_eq!(pool.balance_uj, 467);
    }

    #[test]
    fn a_line_of_parts_against_prompt_size_is_used_only_where_it_fits_clearly_better() {
        // Parts 5,000 µJ per request plus 20 µJ a token, exactly: the line.
        let mut fit = SizeFit::default();
        for (i, x) in [100.0, 300.0, 500.0, 900.0, 1500.0, 2000.0, 250.0, 700.0]
            .into_iter()
            .enumerate()
        {
            fit.add(i as u64 * S, x, 5_000.0 + 20.0 * x);
        }
        let (c0, c1) = fit.line().expect("a line");
        assert!(
            (c0 - 5_000.0).abs() < 1e-6 && (c1 - 20.0).abs() < 1e-9,
            "{c0} {c1}"
        );
        // A flat 25 µJ a token, with a little noise that a line would fit as well as anything:
        // the flat price.
        let mut flat = SizeFit::default();
        for (i, x) in [100.0, 300.0, 500.0, 900.0, 1500.0, 2000.0, 250.0, 700.0]
            .into_iter()
            .enumerate()
        {
            let noise = if i % 2 == 0 { 1.01 } else { 0.99 };
            flat.add(i as u64 * S, x, 25.0 * x * noise);
        }
        assert_eq!(flat.line(), None);
        // Fewer than eight points: none. Points past the window are forgotten.
        fit.expire(3 * S);
        assert_eq!(fit.points.len(), 4);
        assert_eq!(fit.line(), None);
    }

    #[test]
    fn short_prompts_are_repriced_dearer_per_token_where_the_line_fits() {
        let mut pool = PrefillPool::new(8 * S);
        pool.take_in(S, 1_000_000, 40_000.0);
        pool.paid(1_000_000);
        // Eight requests before it whose parts were 5 mJ each plus 20 µJ a token.
        for (i, x) in [100.0, 300.0, 500.0, 900.0, 1500.0, 2000.0, 250.0, 700.0]
            .into_iter()
            .enumerate()
        {
            let parts = 5_000.0 + 20.0 * x;
            // Holding nothing to give back, so the balance stays empty.
            pool.reprice(S + i as u64, x, parts as u64, parts as u64, 0);
        }
        // A 100-token prompt paid at the flat 25 µJ a token lacks 5,000 + 2,000 − 2,500 µJ, and
        // the balance is empty: kept. One paid 20 mJ gives back 13 mJ.
        assert_eq!(
            pool.reprice(2 * S, 100.0, 2_500, 7_000, 2_500),
            Repricing::Kept
        );
        assert_eq!(
            pool.reprice(2 * S, 100.0, 20_000, 7_000, 20_000),
            Repricing::Refund(13_000)
        );
    }

    #[test]
    fn the_window_forgets_old_ticks_and_releases_what_nobody_can_claim() {
        let mut pool = PrefillPool::new(2 * S);
        pool.take_in(S, 100, 10.0);
        pool.paid(50);
        pool.expire(2 * S);
        // Requests in flight and a price to claim at: kept.
        assert_eq!(pool.unclaimed(false), 0);
        // Nobody in flight for a few ticks (a gap in light traffic): kept for the next prompts.
        for _ in 1..IDLE_RELEASE_TICKS {
            assert_eq!(pool.unclaimed(true), 0);
        }
        // Nobody in flight for ten ticks in a row: released.
        assert_eq!(pool.unclaimed(true), 50);
        pool.take_in(2 * S, 100, 10.0);
        pool.paid(50);
        // Past the window, no price to claim at: released even with requests in flight, and the
        // next tick's price is its own again.
        pool.expire(5 * S);
        assert_eq!(pool.unclaimed(false), 50);
        let (price, _) = pool.take_in(6 * S, 300, 10.0);
        assert_eq!(price, 30.0);
    }
}
