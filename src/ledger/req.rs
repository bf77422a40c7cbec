//! A request's state in the ledger: where its work was placed so far, how it was seen, and its
//! energy (settled, and its part of held ticks' provisional splits).

use super::types::{RequestEnergy, SettledTokens};
use super::window::{Item, ItemRef};
use super::WorkKind;

#[derive(Clone, Debug)]
pub(super) struct Req {
    pub(super) id: u64,
    pub(super) arrival_ns: u64,
    pub(super) end_ns: u64,
    pub(super) kind: WorkKind,
    pub(super) choices: u32,
    pub(super) visible: bool,
    pub(super) prefill_placed: bool,
    pub(super) waited_for_prompt: bool,
    pub(super) consumed_completion: u64,
    /// When the latest token placed so far was seen (0 before the first).
    pub(super) last_token_seen_ns: u64,
    /// For a request whose progress is invisible: the end of the latest tick in which it waited
    /// behind an earlier request that had not started (FIFO admission); its estimated work starts
    /// no earlier (0: never waited).
    pub(super) queued_until_ns: u64,
    /// Its place on the engine's prefill conveyor (where its prefill ends; 0: not on it yet).
    pub(super) queue_place: f64,
    /// The prompt tokens it was put on the conveyor with.
    pub(super) queue_prompt: f64,
    /// How far the engine was estimated to have got on the conveyor when it was put on it (see
    /// `PrefillQueue::reached`).
    pub(super) queue_served_at: f64,
    /// Whether its first token or end was already reported to the conveyor.
    pub(super) queue_reported: bool,
    /// Whether it is on the conveyor with its exact prompt count (see `queue::Resizes`).
    pub(super) queue_sized: bool,
    /// When its estimated prefill ended and its estimated decode began (0: not yet).
    pub(super) prov_decode_from_ns: u64,
    /// Decode tokens (all choices) its estimate placed so far.
    pub(super) prov_decoded: f64,
    /// Prompt, decode and context tokens of its work in settled ticks.
    pub(super) settled_work: [f64; 3],
    /// The same in frozen ticks (held for the calibration, their work final; see
    /// `Window::freeze_next`): done as far as placement goes, not yet settled.
    pub(super) frozen_work: [f64; 3],
    pub(super) ended: bool,
    pub(super) vanished: bool,
    pub(super) seen_seq: u64,
    pub(super) prov_from_ns: u64,
    pub(super) provisional: Vec<ItemRef>,
    pub(super) pending_items: u32,
    pub(super) recent_seq: u64,
    pub(super) recent_uj: u64,
    pub(super) energy: RequestEnergy,
    /// Its parts of held ticks' provisional splits: energy, active energy (µJ) and tokens.
    pub(super) tentative: (u64, u64, [f64; 3]),
    /// Of its provisional energy, the sum over held ticks of its part times its fraction of the
    /// tick's weight: over the energy, how much of its ticks it is on average (a request alone
    /// in its ticks: 1), so how little more work placed there would move its share.
    pub(super) tentative_own: f64,
    /// Prompt tokens it was paid for from the prefill pool: its claim on the pool's balance when
    /// it becomes final (see `prefill_pool`).
    pub(super) pool_tokens: f64,
    /// What the pool paid it for them, µJ.
    pub(super) pool_paid_uj: u64,
    /// What its ticks' splits gave it for them before the pool priced them, µJ.
    pub(super) pool_parts_uj: u64,
}

impl Req {
    /// Its work whose placement is final: in settled and in frozen ticks.
    pub(super) fn done_work(&self) -> [f64; 3] {
        std::array::from_fn(|k| self.settled_work[k] + self.frozen_work[k])
    }

    /// Counts `item`'s work as settled (`frozen`: it was frozen before, and counted there).
    pub(super) fn settle_work(&mut self, item: &Item, frozen: bool) {
        let work = item.tokens();
        for ((s, f), w) in self
            .settled_work
            .iter_mut()
            .zip(self.frozen_work.iter_mut())
            .zip(work)
        {
            *s += w;
            if frozen {
                *f = (*f - w).max(0.0);
            }
        }
    }

    /// Its settled figures, with the tokens they paid for. (The counts are converted here, not
    /// per settled item: three float-to-integer conversions per item were 4 % of a ledger tick's
    /// instructions at 10,000 requests in flight.)
    pub(super) fn settled_energy(&self) -> RequestEnergy {
        let mut e = self.energy;
        e.settled_tokens = SettledTokens {
            prefill: self.settled_work[0] as u64,
            decode: self.settled_work[1] as u64,
            context: self.settled_work[2] as u64,
        };
        e
    }

    /// Counts `item`'s work as frozen: final in its place, its energy still to be split.
    pub(super) fn freeze_work(&mut self, item: &Item) {
        for (f, w) in self.frozen_work.iter_mut().zip(item.tokens()) {
            *f += w;
        }
    }

    /// The figures published for the data plane: settled energy plus the held ticks'
    /// provisional split, with the tokens each paid for (so only the rest is priced per token).
    pub(super) fn published(&self) -> RequestEnergy {
        let mut e = self.energy;
        let (energy, active, tokens) = self.tentative;
        e.energy_uj = e.energy_uj.saturating_add(energy);
        e.active_uj = e.active_uj.saturating_add(active);
        let t = &mut e.settled_tokens;
        t.prefill = (self.settled_work[0] + tokens[0]) as u64;
        t.decode = (self.settled_work[1] + tokens[1]) as u64;
        t.context = (self.settled_work[2] + tokens[2]) as u64;
        if energy > 0 {
            let own = (self.tentative_own / energy as f64).clamp(0.0, 1.0);
            e.tentative_own_ppm = (own * 1e6) as u32;
        }
        e
    }
}
