//! `/metrics`: the Prometheus (OpenMetrics text) exposition, through the `prometheus-client` crate.
//!
//! This file owns the registry and the scrape; the series names and label sets live in `energy`,
//! `requests` and `admission`, the encoding helpers in `encode`. The registry is built per admin service from
//! the app's [`AdminState`] (never a global) and holds one [`Collector`] that, at scrape time,
//! copies what accounting and the sampler already published and encodes it: a scrape never reads a
//! meter and never touches the data plane. Series names carry their unit; labels are bounded (models,
//! keys and tags by `max_label_values` with overflow in `other`, per-key and per-tag series only
//! when configured; devices, endpoints and statuses are fixed sets).

mod admission;
mod encode;
mod energy;
mod requests;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::AdminState;
use crate::accounting::{AccountingStats, Aggregates};
use crate::meter::status::StatusSnapshot;
use crate::observe::Outcome;

/// The content type of the exposition (what `prometheus_client::encoding::text` writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding the joulegate collector over `state`.
pub fn registry(state: Arc<AdminState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(JoulegateCollector { state }));
    registry
}

/// Encodes `registry` as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Reads the admin state at scrape time.
#[derive(Debug)]
struct JoulegateCollector {
    state: Arc<AdminState>,
}

/// Everything one scrape reads, copied out first so that no lock is held while encoding.
struct Scrape {
    stats: AccountingStats,
    aggregates: Aggregates,
    sampler: Option<StatusSnapshot>,
    in_flight: u64,
    settling: u64,
}

impl Collector for JoulegateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.state;
        let live = s.in_flight.all();
        let in_flight = live
            .iter()
            .filter(|p| p.outcome() == Outcome::InFlight)
            .count() as u64;
        let scrape = Scrape {
            stats: s.accounting.stats(),
            aggregates: s.accounting.aggregates(),
            sampler: s.sampler.as_ref().map(|x| x.snapshot()),
            in_flight,
            settling: live.len() as u64 - in_flight,
        };
        drop(live);
        energy::energy(&self.state, &mut enc, &scrape)?;
        requests::requests(&mut enc, &scrape)?;
        requests::labelled(&self.state, &mut enc, &scrape.aggregates)?;
        energy::meters(&self.state, &mut enc, &scrape)?;
        energy::calibration(&mut enc, &scrape.stats)?;
        admission::admission(&self.state.admission.stats(), &mut enc)?;
        admission::batch(&mut enc, &scrape.stats)?;
        requests::housekeeping(&self.state, &mut enc, &scrape)
    }
}
