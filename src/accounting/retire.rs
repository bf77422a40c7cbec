//! Retiring a request: its final figures published, its record built and handed to the ring, the
//! aggregates, the log writer and the exporter (never blocking on them), then the registry left and
//! the settled signal given. Also how figures reach a request's atomics for the data plane.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use super::{Accounting, RecordEnergy};
use crate::ledger::record::{co2_grams, joules};
use crate::ledger::{
    Attribution, Coverage, FinalRequest, RecordStatus, RequestEnergy, RequestRecord,
};
use crate::observe::{Endpoint, RequestProgress};

impl Accounting {
    pub(super) fn retire(&mut self, f: &FinalRequest, settled_until: u64) {
        let Some(p) = self.in_flight.get(f.id) else {
            self.shared.update_stats(|s| s.vanished += 1);
            return;
        };
        publish(&p, &f.energy, settled_until);
        if p.prompt_exact.load(Relaxed) {
            self.in_flight
                .rates
                .learn_prompt_scale(p.body_prompt_estimate, p.prompt_tokens.load(Relaxed));
        }
        if p.meta.endpoint == Endpoint::Other {
            self.in_flight.retire(f.id);
            p.settled.mark();
            return;
        }
        let record = Arc::new(self.record_of(&p, &f.energy));
        let e = RecordEnergy {
            energy_uj: f.energy.energy_uj,
            active_uj: f.energy.active_uj,
            prefill_uj: f.energy.prefill_uj,
            decode_uj: f.energy.decode_uj,
        };
        self.shared.with_aggregates(|a| a.add(&record, e));
        // Offered without blocking: a slow writer or exporter loses records, never stalls us.
        let offer = |tx: &Option<SyncSender<Arc<RequestRecord>>>| match tx {
            Some(tx) => match tx.try_send(record.clone()) {
                Ok(()) => 0,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => 1,
            },
            None => 0,
        };
        let not_logged = offer(&self.sink);
        let not_exported = offer(&self.export);
        let evicted = self.shared.push_record(record.clone());
        self.shared.update_stats(|s| {
            s.requests.add(record.status);
            s.attribution.add(record.attribution);
            if record.end_ns >= record.arrival_ns && record.end_ns > 0 {
                s.processing
                    .observe((record.end_ns - record.arrival_ns) as f64 / 1e9);
            }
            s.prompt_tokens = s.prompt_tokens.saturating_add(record.prompt_tokens);
            s.completion_tokens = s.completion_tokens.saturating_add(record.completion_tokens);
            s.records_evicted += evicted;
            s.records_not_logged += not_logged;
            s.records_not_exported += not_exported;
        });
        // Leave the registry only once the record is in the ring: `/requests/{id}` always finds
        // the request in one or the other.
        self.in_flight.retire(f.id);
        // Last: a response waiting for settled figures (`response_energy = "settled"`) may go
        // out now, and a client reading `/requests/{id}` after it finds the final record.
        p.settled.mark();
    }

    fn record_of(&self, p: &RequestProgress, e: &RequestEnergy) -> RequestRecord {
        let s = p.snapshot();
        let m = &p.meta;
        let at = |ns: u64| (ns != 0).then(|| self.clock.rfc3339(ns));
        let coverage = e.coverage();
        RequestRecord {
            id: m.public_id(),
            model: m.model.clone(),
            endpoint: m.endpoint.as_str().to_owned(),
            key_hash: m.key_hash.clone(),
            tag: m.tag.clone(),
            stream: m.stream,
            arrival: self.clock.rfc3339(m.arrival_ns),
            first_token: at(s.first_token_ns),
            end: at(s.end_ns),
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            tokens_exact: s.prompt_exact
                && (s.completion_exact || m.endpoint == Endpoint::Embeddings),
            energy_joules: joules(e.energy_uj),
            active_joules: joules(e.active_uj),
            prefill_joules: joules(e.prefill_uj),
            decode_joules: joules(e.decode_uj),
            co2_grams: if coverage == Coverage::None {
                None
            } else {
                co2_grams(
                    e.energy_uj,
                    self.config.carbon_intensity_g_per_kwh,
                    self.config.pue,
                )
            },
            status: RecordStatus::choose(s.outcome, coverage),
            attribution: Attribution::of(&s),
            key: m.id,
            arrival_ns: m.arrival_ns,
            end_ns: s.end_ns,
        }
    }
}

/// Stores a request's figures into its atomics for the data plane.
pub(super) fn publish(p: &RequestProgress, e: &RequestEnergy, settled_until: u64) {
    p.energy_uj.store(e.energy_uj, Relaxed);
    p.active_uj.store(e.active_uj, Relaxed);
    p.prefill_uj.store(e.prefill_uj, Relaxed);
    p.decode_uj.store(e.decode_uj, Relaxed);
    p.recent_power_mw.store(e.recent_power_mw, Relaxed);
    p.tentative_own_ppm
        .store(u64::from(e.tentative_own_ppm), Relaxed);
    let t = e.settled_tokens;
    for (slot, v) in p
        .settled_tokens
        .iter()
        .zip([t.prefill, t.decode, t.context])
    {
        slot.store(v, Relaxed);
    }
    p.settled_until_ns.store(settled_until, Relaxed);
    p.energy_available.store(
        e.coverage() != Coverage::None || e.unavailable_ticks == 0,
        Relaxed,
    );
}
