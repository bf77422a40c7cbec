//! Encoding helpers over `prometheus-client`'s collector API: constant counters, gauges and
//! histograms written from values copied at scrape time, and the label rows of the bounded tables.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::accounting::series::FixedHistogram;
use crate::accounting::LabelTable;
use crate::ledger::record::joules;
use crate::meter::status::DeviceSnapshot;

type Labels = Vec<(&'static str, String)>;

/// Reads one per-device counter out of a snapshot.
pub(super) type DeviceCount = fn(&DeviceSnapshot) -> u64;

pub(super) fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// One family of counters or gauges.
pub(super) fn family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result
where
    ConstCounter<V>: EncodeMetric,
    ConstGauge<V>: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (l, v) in rows {
        let e = m.encode_family(&l)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(e)?,
            _ => ConstGauge::new(v).encode(e)?,
        }
    }
    Ok(())
}

pub(super) fn counter<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    v: V,
) -> fmt::Result
where
    ConstCounter<V>: EncodeMetric,
{
    let m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

pub(super) fn gauge<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    v: V,
) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

pub(super) fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    h: &FixedHistogram,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
    m.encode_histogram::<Labels>(h.sum, h.count, &h.buckets(), None)
}

pub(super) fn watts() -> Option<Unit> {
    Some(Unit::Other("watts".into()))
}

pub(super) fn token_rows<'a>(
    label: &'static str,
    t: &'a LabelTable,
) -> impl Iterator<Item = (Labels, u64)> + 'a {
    t.rows.iter().flat_map(move |(v, r)| {
        [
            (labels([(label, v), ("kind", "prompt")]), r.prompt_tokens),
            (
                labels([(label, v), ("kind", "completion")]),
                r.completion_tokens,
            ),
        ]
    })
}

pub(super) fn energy_rows<'a>(
    label: &'static str,
    t: &'a LabelTable,
    f: impl Fn(&crate::accounting::Aggregate) -> u64 + 'a,
) -> impl Iterator<Item = (Labels, f64)> + 'a {
    t.rows
        .iter()
        .map(move |(v, r)| (labels([(label, v)]), joules(f(r))))
}
