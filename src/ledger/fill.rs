//! Energy that comes after its interval: a meter slower than the reads (or spread up to its
//! updates) announces each interval when it ends and fills it once its counter has moved past it;
//! the fill is split over the held ticks it covers, and their provisional splits, made on an
//! estimate meanwhile, are made again.
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern).

use super::attribution::Ledger;
use super::split::split_uj;

/// What [`Ledger::fill`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// Ticks settled by it.
    pub settled: u32,
    /// The part of the filled span after the newest held tick, with its energy: the caller
    /// applies it as a tick of its own.
    pub after: Option<(u64, u64, Option<u64>)>,
}

impl Ledger {
    /// The final energy of `(start_ns, end_ns]`, whose intervals were announced earlier
    /// ([`super::TickSpan::energy_later`]). It is split over the held intervals it covers in proportion
    /// to their overlap (exact integers); a part before the held window (already settled or given
    /// up) counts as measured and *unattributed*; a part after the newest held tick is returned,
    /// for the caller to apply as a tick of its own. Settles whatever became complete.
    pub fn fill(&mut self, start_ns: u64, end_ns: u64, delta_uj: Option<u64>) -> Fill {
        let mut out = Fill::default();
        if end_ns <= start_ns {
            return out;
        }
        let first_start = self.window.front().map_or(u64::MAX, |t| t.start_ns);
        let newest = self.newest_end_ns;
        // Parts: each held pending tick's overlap, then before the window, then after it.
        self.weights.clear();
        let mut spans: Vec<(usize, u64)> = Vec::new();
        for (i, t) in self.window.iter().enumerate() {
            if t.unfilled_ns == 0 {
                continue;
            }
            let ov = end_ns
                .min(t.end_ns)
                .saturating_sub(start_ns.max(t.start_ns));
            if ov > 0 {
                spans.push((i, ov));
                self.weights.push(ov as f64);
            }
        }
        let before = end_ns.min(first_start).saturating_sub(start_ns);
        let after_from = start_ns.max(newest);
        let after = end_ns.saturating_sub(after_from);
        self.weights.push(before as f64);
        self.weights.push(after as f64);
        let mut shares = std::mem::take(&mut self.shares);
        let ok = match delta_uj {
            Some(e) => split_uj(e, &self.weights, &mut shares),
            None => false,
        };
        if !ok {
            shares.clear();
            shares.resize(self.weights.len(), 0);
            if let Some(e) = delta_uj {
                // Nothing held covers it and nothing follows: it is measured, and nobody's.
                self.totals.measured_uj = self.totals.measured_uj.saturating_add(e);
                self.totals.unattributed_uj = self.totals.unattributed_uj.saturating_add(e);
                self.shares = shares;
                return out;
            }
        }
        for (k, &(i, ov)) in spans.iter().enumerate() {
            let share = shares[k];
            let Some(t) = self.window.get_mut(i) else {
                continue;
            };
            t.unfilled_ns = t.unfilled_ns.saturating_sub(ov);
            match (t.delta_uj, delta_uj) {
                (Some(d), Some(_)) => {
                    t.delta_uj = Some(d.saturating_add(share));
                    self.totals.measured_uj = self.totals.measured_uj.saturating_add(share);
                    self.totals.pending_uj = self.totals.pending_uj.saturating_add(share);
                    if t.unfilled_ns == 0 && t.end_ns > t.start_ns {
                        self.recent_uj_per_ns =
                            (d.saturating_add(share)) as f64 / (t.end_ns - t.start_ns) as f64;
                    }
                }
                (Some(d), None) => {
                    // Part of the interval failed to read: the whole interval is unavailable.
                    t.delta_uj = None;
                    self.totals.measured_uj -= d.min(self.totals.measured_uj);
                    self.totals.pending_uj -= d.min(self.totals.pending_uj);
                    self.totals.unavailable_ticks += 1;
                }
                (None, _) => {}
            }
        }
        // Their provisional splits, made on an estimate, give way to the energy now in.
        for &(i, _) in &spans {
            let parts = self.window.get_mut(i).and_then(|t| t.tentative.take());
            self.take_back_tentative(parts);
        }
        let n = spans.len();
        if let Some(&b) = shares.get(n).filter(|&&b| b > 0) {
            self.totals.measured_uj = self.totals.measured_uj.saturating_add(b);
            self.totals.unattributed_uj = self.totals.unattributed_uj.saturating_add(b);
        }
        if after > 0 {
            out.after = Some((after_from, end_ns, delta_uj.map(|_| shares[n + 1])));
        }
        self.shares = shares;
        out.settled = self.settle_ready();
        out
    }
}
