//! The held window: ticks whose energy is measured but not yet settled, and the work placed in them.
//!
//! Owns where work lands in time. Work is stored as token counts (not weights) so that the α and β
//! in force when a tick settles decide its split. Spans of work are spread over the held ticks in
//! proportion to their overlap; what falls before the window is either compressed into it (a
//! request's prefill first seen late) or dropped (the part of a reconciled request whose energy was
//! already settled on its provisional estimate). Knows nothing of energy splitting or requests'
//! totals.

use std::collections::VecDeque;

/// Work of one request placed in one held tick, in tokens, and where in the tick it ran. `f32`
/// counts and `u32` offsets keep an item at 24 bytes: the window holds one per active request per
/// tick, and token counts need no more precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Item {
    /// The request's slot in the ledger.
    pub slot: u32,
    /// Prompt tokens whose prefill ran in the tick.
    pub prefill: f32,
    /// Completion tokens produced in the tick.
    pub decode: f32,
    /// Context tokens those decodes read (each decode reads its sequence's prompt and the tokens
    /// generated before it).
    pub context: f32,
    /// Where the work ran in the tick: `(lo, hi]` in ns after the tick's start (set by the
    /// window when the item is placed; a point has `lo == hi`).
    pub lo: u32,
    /// See `lo`.
    pub hi: u32,
    /// Whether this is an estimate for a request whose progress is invisible.
    pub provisional: bool,
}

impl Item {
    /// The item's marginal energy at weights `(α, β, γ)`, joules.
    pub fn marginal(&self, (alpha, beta, gamma): (f64, f64, f64)) -> f64 {
        alpha * f64::from(self.prefill)
            + beta * f64::from(self.decode)
            + gamma * f64::from(self.context)
    }

    /// Its prompt, decode and context tokens.
    pub fn tokens(&self) -> [f64; 3] {
        [self.prefill, self.decode, self.context].map(f64::from)
    }

    /// Work of `slot` with no tokens yet, placed nowhere.
    pub fn empty(slot: u32) -> Item {
        Item {
            slot,
            prefill: 0.0,
            decode: 0.0,
            context: 0.0,
            lo: 0,
            hi: 0,
            provisional: false,
        }
    }
}

/// `ns - base` as a tick offset (saturating at both ends).
fn offset(ns: u64, base: u64) -> u32 {
    u32::try_from(ns.saturating_sub(base)).unwrap_or(u32::MAX)
}

/// A measured interval waiting to be settled.
#[derive(Clone, Debug)]
pub struct HeldTick {
    /// Ledger-internal sequence (contiguous within the window).
    pub seq: u64,
    /// Interval start (exclusive), ns.
    pub start_ns: u64,
    /// Interval end (inclusive), ns.
    pub end_ns: u64,
    /// Energy, `None` when unavailable.
    pub delta_uj: Option<u64>,
    /// How much of the interval still waits for its energy, ns (a slow meter's ticks are
    /// announced first and filled later); 0 once the energy is final.
    pub unfilled_ns: u64,
    /// For an announced tick, the sampler's estimate of its whole energy from what its meter has
    /// shown of it so far (the part before the counter's latest update, scaled to the interval):
    /// for its provisional split only, never booked.
    pub estimate_uj: Option<u64>,
    /// Whether any model request was in flight during the interval.
    pub busy: bool,
    /// How much of the interval had a model request in flight, ns (the rest is idle time even
    /// in a busy tick: its P_idle share belongs to nobody).
    pub busy_ns: u64,
    /// Work placed so far.
    pub items: Vec<Item>,
    /// The tick's provisional split, once made (see `Ledger::split_tentatively`): per request
    /// slot, its energy, active energy and the tokens of its items at the time, µJ; taken back
    /// when the tick settles.
    pub tentative: Option<Vec<Tentative>>,
    /// Whether its work changed after its provisional split was made (the split is then made
    /// again, see `Ledger::split_tentatively`).
    pub stale: bool,
}

/// One request's part of a held tick's provisional split.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tentative {
    /// The request's slot.
    pub slot: u32,
    /// Energy, µJ.
    pub energy_uj: u64,
    /// Of it, above the idle baseline, µJ.
    pub active_uj: u64,
    /// Prompt, decode and context tokens of the items split.
    pub tokens: [f32; 3],
    /// Its energy times its items' fraction of the tick's weight, µJ (see `Req::tentative_own`).
    pub own_uj: f64,
}

/// What to do with the part of a span that lies before the oldest held tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeWindow {
    /// Squeeze the whole span into the window (its work must be counted somewhere).
    Compress,
    /// Keep only the fraction that overlaps the window.
    Drop,
}

/// The held ticks, oldest first.
///
/// The oldest `frozen` of them are final in their work, as if settled, and wait only for their
/// energy to be split (see `LedgerConfig::calibration_hold_ticks`): nothing is placed in them or
/// changed there any more; to placement they are before the window.
#[derive(Debug, Default)]
pub struct Window {
    ticks: VecDeque<HeldTick>,
    frozen: usize,
}

/// Where an item was stored, to find it again (reconciliation).
pub type ItemRef = (u64, u32);

impl Window {
    /// Appends the newest tick.
    pub fn push(&mut self, tick: HeldTick) {
        self.ticks.push_back(tick);
    }

    /// Removes and returns the oldest tick.
    pub fn pop(&mut self) -> Option<HeldTick> {
        self.frozen = self.frozen.saturating_sub(1);
        self.ticks.pop_front()
    }

    /// How many of the oldest ticks are frozen.
    pub fn frozen_len(&self) -> usize {
        self.frozen
    }

    /// Freezes the oldest tick not yet frozen (if any): its work is final from now on.
    pub fn freeze_next(&mut self) {
        self.frozen = (self.frozen + 1).min(self.ticks.len());
    }

    /// The oldest tick work can still be placed in.
    pub fn open_front(&self) -> Option<&HeldTick> {
        self.ticks.get(self.frozen)
    }

    /// The oldest held tick.
    pub fn front(&self) -> Option<&HeldTick> {
        self.ticks.front()
    }

    /// The oldest held tick, mutable.
    pub fn front_mut(&mut self) -> Option<&mut HeldTick> {
        self.ticks.front_mut()
    }

    /// The `i`-th held tick (oldest first).
    pub fn get(&self, i: usize) -> Option<&HeldTick> {
        self.ticks.get(i)
    }

    /// The `i`-th held tick (oldest first), mutable.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut HeldTick> {
        self.ticks.get_mut(i)
    }

    /// The newest held tick.
    pub fn back_mut(&mut self) -> Option<&mut HeldTick> {
        self.ticks.back_mut()
    }

    /// Number of held ticks.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// Iterates the held ticks, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &HeldTick> {
        self.ticks.iter()
    }

    /// Mutable access to every held tick (rare paths: forced retirement).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut HeldTick> {
        self.ticks.iter_mut()
    }

    /// The item stored at `r`, if its tick is still held and not frozen (a frozen tick's work
    /// is final, as a settled one's).
    pub fn item_ref(&self, r: ItemRef) -> Option<&Item> {
        let idx = self.tick_index(r).filter(|&i| i >= self.frozen)?;
        self.ticks.get(idx)?.items.get(r.1 as usize)
    }

    /// Whether `r`'s tick is held and its energy measured (or still to be filled), not
    /// unavailable.
    pub fn is_metered(&self, r: ItemRef) -> bool {
        self.tick_index(r)
            .and_then(|i| self.ticks.get(i))
            .is_some_and(|t| t.delta_uj.is_some())
    }

    /// Where `r`'s tick is in the window, if still held.
    fn tick_index(&self, r: ItemRef) -> Option<usize> {
        let front = self.ticks.front()?.seq;
        usize::try_from(r.0.checked_sub(front)?).ok()
    }

    /// The item `r` refers to, for changing it, if its tick is still held.
    pub fn item_mut(&mut self, r: ItemRef) -> Option<&mut Item> {
        let idx = self.tick_index(r).filter(|&i| i >= self.frozen)?;
        let tick = self.ticks.get_mut(idx)?;
        tick.stale |= tick.tentative.is_some();
        tick.items.get_mut(r.1 as usize)
    }

    /// Places `item` in the tick containing `at_ns` (clamped to the window). Returns where it went,
    /// or `None` if nothing is held.
    pub fn place_point(&mut self, at_ns: u64, item: Item) -> Option<ItemRef> {
        let last = self.ticks.len().checked_sub(1)?;
        // Nearly every point is in the newest tick: skip the search then.
        let idx = if self.ticks.get(last).is_some_and(|t| t.start_ns < at_ns) {
            last
        } else {
            self.ticks
                .partition_point(|t| t.end_ns < at_ns)
                .max(self.frozen)
                .min(last)
        };
        let tick = self.ticks.get_mut(idx)?;
        tick.stale |= tick.tentative.is_some();
        let at = offset(at_ns.clamp(tick.start_ns, tick.end_ns), tick.start_ns);
        tick.items.push(Item {
            lo: at,
            hi: at,
            ..item
        });
        Some((tick.seq, (tick.items.len() - 1) as u32))
    }

    /// Spreads `item`'s tokens over `(from_ns, to_ns]` in proportion to each held tick's overlap.
    /// Calls `placed` once per stored part. A span reaching past the newest tick is cut at its end.
    pub fn place_span(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        item: Item,
        before: BeforeWindow,
        mut placed: impl FnMut(ItemRef),
    ) {
        let (Some(first), Some(last)) = (self.open_front(), self.ticks.back()) else {
            return;
        };
        let (ws, we) = (first.start_ns, last.end_ns);
        let to = to_ns.min(we);
        let full = to_ns.saturating_sub(from_ns);
        let from = match before {
            BeforeWindow::Compress => from_ns.max(ws).min(to),
            BeforeWindow::Drop => from_ns.min(to),
        };
        if to <= ws || to <= from {
            // A point, or a span entirely before the window.
            if before == BeforeWindow::Drop && (full > 0 || to_ns <= ws) {
                return;
            }
            if let Some(r) = self.place_point(to, item) {
                placed(r);
            }
            return;
        }
        // With Drop the denominator is the whole span, so the part before the window is lost.
        let denom = match before {
            BeforeWindow::Compress => to - from,
            BeforeWindow::Drop => full.max(1),
        };
        // Most spans start in the newest tick or the one before (estimates from the newest
        // tick's start, a stream's tokens since its previous token): look there before searching.
        let n = self.ticks.len();
        let start_idx = if from >= last.start_ns {
            n - 1
        } else if n >= 2 && from >= self.ticks[n - 2].start_ns {
            n - 2
        } else {
            self.ticks.partition_point(|t| t.end_ns <= from)
        }
        .max(self.frozen);
        let mut total_overlap = 0u64;
        for tick in self.ticks.range_mut(start_idx..) {
            if tick.start_ns >= to {
                break;
            }
            let overlap = tick.end_ns.min(to).saturating_sub(tick.start_ns.max(from));
            if overlap == 0 {
                continue;
            }
            total_overlap += overlap;
            tick.stale |= tick.tentative.is_some();
            let f = overlap as f64 / denom as f64;
            tick.items.push(Item {
                prefill: (f64::from(item.prefill) * f) as f32,
                decode: (f64::from(item.decode) * f) as f32,
                context: (f64::from(item.context) * f) as f32,
                lo: offset(from.max(tick.start_ns), tick.start_ns),
                hi: offset(to.min(tick.end_ns), tick.start_ns),
                ..item
            });
            placed((tick.seq, (tick.items.len() - 1) as u32));
        }
        if total_overlap == 0 && before == BeforeWindow::Compress {
            // The span fell in a gap between ticks: keep its work anyway.
            if let Some(r) = self.place_point(to, item) {
                placed(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(n: u64) -> Window {
        let mut w = Window::default();
        for k in 0..n {
            w.push(HeldTick {
                seq: k + 10,
                start_ns: 100 * k,
                end_ns: 100 * (k + 1),
                delta_uj: Some(1),
                unfilled_ns: 0,
                estimate_uj: None,
                busy: true,
                busy_ns: 100,
                items: Vec::new(),
                tentative: None,
                stale: false,
            });
        }
        w
    }

    fn item(p: f64, d: f64) -> Item {
        Item {
            prefill: p as f32,
            decode: d as f32,
            ..Item::empty(0)
        }
    }

    fn prefill_per_tick(w: &Window) -> Vec<f64> {
        w.iter()
            .map(|t| t.items.iter().map(|i| f64::from(i.prefill)).sum())
            .collect()
    }

    #[test]
    fn spans_spread_by_overlap() {
        let mut w = window(3);
        let mut refs = Vec::new();
        w.place_span(50, 250, item(200.0, 0.0), BeforeWindow::Compress, |r| {
            refs.push(r)
        });
        assert_eq!(prefill_per_tick(&w), vec![50.0, 100.0, 50.0]);
        assert_eq!(refs, vec![(10, 0), (11, 0), (12, 0)]);
        assert!(w.item_mut((11, 0)).is_some());
        assert!(w.item_mut((9, 0)).is_none());
    }

    #[test]
    fn compress_and_drop_differ_before_the_window() {
        let mut w = window(2);
        w.pop(); // window is now (100, 200]
        w.place_span(0, 200, item(100.0, 0.0), BeforeWindow::Compress, |_| {});
        assert_eq!(prefill_per_tick(&w), vec![100.0]);
        let mut w = window(2);
        w.pop();
        w.place_span(0, 200, item(100.0, 0.0), BeforeWindow::Drop, |_| {});
        assert_eq!(prefill_per_tick(&w), vec![50.0]);
        let mut w = window(2);
        w.pop();
        w.place_span(0, 50, item(100.0, 0.0), BeforeWindow::Drop, |_| {});
        assert_eq!(prefill_per_tick(&w), vec![0.0]);
        w.place_span(0, 50, item(100.0, 0.0), BeforeWindow::Compress, |_| {});
        assert_eq!(prefill_per_tick(&w), vec![100.0]);
    }

    #[test]
    fn points_are_clamped_into_the_window() {
        let mut w = window(2);
        assert_eq!(w.place_point(150, item(0.0, 1.0)), Some((11, 0)));
        assert_eq!(w.place_point(10_000, item(0.0, 1.0)), Some((11, 1)));
        assert_eq!(w.place_point(0, item(0.0, 1.0)), Some((10, 0)));
        let mut empty = Window::default();
        assert_eq!(empty.place_point(0, item(0.0, 1.0)), None);
    }
}
