//! The ledger's request slots: finding a request's slot from an observation (the previous tick's
//! order first, the index otherwise), making one for a new request, and a request's end of life
//! there (vanished from the registry, drained when final, forced out).
//!
//! Part of the [`Ledger`]'s implementation (split from `attribution.rs` by concern).

use super::attribution::Ledger;
use super::req::Req;
use super::types::{FinalRequest, RequestEnergy};
use super::window::Item;
use super::Observation;

impl Ledger {
    /// The registry's iteration order is stable between ticks apart from insertions and removals,
    /// so the previous tick's order predicts the slot without hashing (a lookup per request was
    /// the largest cost of a tick at 10,000 requests).
    pub(super) fn find_slot(&mut self, cursor: &mut usize, obs: &Observation) -> u32 {
        let p = &obs.progress;
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
        self.slot_for(obs)
    }

    fn slot_for(&mut self, obs: &Observation) -> u32 {
        let (p, kind) = (&obs.progress, obs.kind);
        if let Some(s) = self.index.get(&p.id) {
            return *s;
        }
        let req = Req {
            id: p.id,
            arrival_ns: p.arrival_ns,
            end_ns: 0,
            kind,
            choices: obs.choices.max(1),
            visible: p.progress_visible,
            prefill_placed: false,
            waited_for_prompt: false,
            consumed_completion: 0,
            last_token_seen_ns: 0,
            queued_until_ns: 0,
            queue_place: 0.0,
            queue_prompt: 0.0,
            queue_served_at: 0.0,
            queue_reported: false,
            queue_sized: false,
            prov_decode_from_ns: 0,
            prov_decoded: 0.0,
            settled_work: [0.0; 3],
            frozen_work: [0.0; 3],
            ended: false,
            vanished: false,
            seen_seq: 0,
            prov_from_ns: p.arrival_ns,
            provisional: Vec::new(),
            pending_items: 0,
            recent_seq: 0,
            recent_uj: 0,
            energy: RequestEnergy::default(),
            tentative: (0, 0, [0.0; 3]),
            tentative_own: 0.0,
            pool_tokens: 0.0,
            pool_paid_uj: 0,
            pool_parts_uj: 0,
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
    pub(super) fn finish_vanished(&mut self, seq: u64) -> u32 {
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
                *item = Item::empty(u32::MAX);
            }
            for t in tick.tentative.iter_mut().flatten() {
                if t.slot == slot {
                    t.slot = u32::MAX;
                }
            }
        }
        let req = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(FinalRequest {
            id,
            energy: req.settled_energy(),
            vanished: req.vanished,
        })
    }
}
