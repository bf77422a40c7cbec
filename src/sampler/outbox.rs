//! The sending side of the tick queue: numbering, merging while the consumer is behind, and the
//! last non-blocking send at shutdown. Never blocks the sampler.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use crate::meter::status::SamplerStatus;
use crate::tick::{DeviceDelta, Tick};

/// Merges tick `b` (the later one) into `a`: see the module doc for the rules.
pub fn merge(a: Tick, b: Tick) -> Tick {
    let devices: Vec<DeviceDelta> = a
        .devices
        .into_iter()
        .zip(b.devices)
        .map(|(x, y)| DeviceDelta {
            device: x.device,
            delta_uj: match (x.delta_uj, y.delta_uj) {
                (Some(p), Some(q)) => Some(p.saturating_add(q)),
                (Some(p), None) | (None, Some(p)) => Some(p),
                (None, None) => None,
            },
        })
        .collect();
    let delta_uj = if a.phase == crate::tick::TickPhase::Announce {
        // Announcements carry no devices, only an estimate (see `TickPhase::Announce`).
        a.delta_uj.zip(b.delta_uj).map(|(x, y)| x.saturating_add(y))
    } else {
        devices
            .iter()
            .try_fold(0u64, |t, d| d.delta_uj.map(|v| t.saturating_add(v)))
    };
    Tick {
        seq: a.seq,
        start_ns: a.start_ns,
        end_ns: b.end_ns,
        delta_uj,
        devices,
        phase: a.phase,
    }
}

/// Most ticks kept unsent while the consumer is behind: beyond it, fills are merged together and
/// everything else together (fills first: they belong to intervals announced before).
const MAX_PENDING: usize = 8;

/// The sending side: numbers ticks and merges them while the consumer's queue is full. Only ticks
/// of the same phase merge (an announcement never absorbs a fill, see [`crate::tick::TickPhase`]).
pub struct Outbox {
    tx: Option<SyncSender<Tick>>,
    pending: std::collections::VecDeque<Tick>,
    next_seq: u64,
    status: Arc<SamplerStatus>,
}

impl Outbox {
    /// An outbox over `tx`, counting into `status`.
    pub fn new(tx: SyncSender<Tick>, status: Arc<SamplerStatus>) -> Self {
        Outbox {
            tx: Some(tx),
            pending: std::collections::VecDeque::new(),
            next_seq: 1,
            status,
        }
    }

    /// Offers a tick without blocking; if the queue is full it waits, merged, for the next offer.
    pub fn offer(&mut self, tick: Tick) {
        match self.pending.pop_back() {
            Some(p) if p.phase == tick.phase => self.pending.push_back(merge(p, tick)),
            Some(p) => {
                self.pending.push_back(p);
                self.pending.push_back(tick);
            }
            None => self.pending.push_back(tick),
        }
        if self.pending.len() > MAX_PENDING {
            let (fills, rest): (Vec<Tick>, Vec<Tick>) = self
                .pending
                .drain(..)
                .partition(|t| t.phase == crate::tick::TickPhase::Fill);
            for group in [fills, rest] {
                if let Some(t) = group.into_iter().reduce(merge) {
                    self.pending.push_back(t);
                }
            }
        }
        while let Some(mut tick) = self.pending.pop_front() {
            let Some(tx) = &self.tx else {
                self.pending.clear();
                return;
            };
            tick.seq = self.next_seq;
            match tx.try_send(tick) {
                Ok(()) => {
                    self.next_seq += 1;
                    self.status.count_tick();
                }
                Err(TrySendError::Full(t)) => {
                    self.status.count_merged();
                    self.pending.push_front(t);
                    return;
                }
                // Nobody listens any more: keep sampling for the status, send nothing.
                Err(TrySendError::Disconnected(_)) => self.tx = None,
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let Some(tx) = &self.tx else { return };
        while let Some(mut t) = self.pending.pop_front() {
            t.seq = self.next_seq;
            match tx.try_send(t) {
                Ok(()) => {
                    self.next_seq += 1;
                    self.status.count_tick();
                }
                Err(TrySendError::Full(_)) => self.status.count_dropped(),
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}
