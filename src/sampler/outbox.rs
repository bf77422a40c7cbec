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
    let delta_uj = devices
        .iter()
        .try_fold(0u64, |t, d| d.delta_uj.map(|v| t.saturating_add(v)));
    Tick {
        seq: a.seq,
        start_ns: a.start_ns,
        end_ns: b.end_ns,
        delta_uj,
        devices,
    }
}

/// The sending side: numbers ticks and merges them while the consumer's queue is full.
pub struct Outbox {
    tx: Option<SyncSender<Tick>>,
    pending: Option<Tick>,
    next_seq: u64,
    status: Arc<SamplerStatus>,
}

impl Outbox {
    /// An outbox over `tx`, counting into `status`.
    pub fn new(tx: SyncSender<Tick>, status: Arc<SamplerStatus>) -> Self {
        Outbox {
            tx: Some(tx),
            pending: None,
            next_seq: 1,
            status,
        }
    }

    /// Offers a tick without blocking; if the queue is full it waits, merged, for the next offer.
    pub fn offer(&mut self, tick: Tick) {
        let mut tick = match self.pending.take() {
            Some(p) => merge(p, tick),
            None => tick,
        };
        let Some(tx) = &self.tx else { return };
        tick.seq = self.next_seq;
        match tx.try_send(tick) {
            Ok(()) => {
                self.next_seq += 1;
                self.status.count_tick();
            }
            Err(TrySendError::Full(t)) => {
                self.status.count_merged();
                self.pending = Some(t);
            }
            // Nobody listens any more: keep sampling for the status, send nothing.
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let (Some(tx), Some(mut t)) = (&self.tx, self.pending.take()) {
            t.seq = self.next_seq;
            match tx.try_send(t) {
                Ok(()) => self.status.count_tick(),
                Err(TrySendError::Full(_)) => self.status.count_dropped(),
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}
