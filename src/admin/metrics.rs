//! `/metrics`: the Prometheus (OpenMetrics text) exposition, through the `prometheus-client` crate.
//!
//! Owns the series names and their label sets. The registry is built per admin service from the
//! app's [`AdminState`] (never a global) and holds one [`Collector`] that, at scrape time, copies
//! what accounting and the sampler already published and encodes it: a scrape never reads a meter
//! and never touches the data plane. Series names carry their unit; labels are bounded (models,
//! keys and tags by `max_label_values` with overflow in `other`, per-key and per-tag series only
//! when configured; devices, endpoints and statuses are fixed sets).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::AdminState;
use crate::accounting::series::FixedHistogram;
use crate::accounting::{AccountingStats, Aggregates, LabelTable};
use crate::ledger::record::joules;
use crate::meter::status::{DeviceSnapshot, StatusSnapshot};
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

type Labels = Vec<(&'static str, String)>;

/// Reads one per-device counter out of a snapshot.
type DeviceCount = fn(&DeviceSnapshot) -> u64;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// One family of counters or gauges.
fn family<V>(
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

fn counter<V>(
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

fn gauge<V>(
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

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    h: &FixedHistogram,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
    m.encode_histogram::<Labels>(h.sum, h.count, &h.buckets(), None)
}

fn watts() -> Option<Unit> {
    Some(Unit::Other("watts".into()))
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
        self.energy(&mut enc, &scrape)?;
        self.requests(&mut enc, &scrape)?;
        self.labelled(&mut enc, &scrape.aggregates)?;
        self.meters(&mut enc, &scrape)?;
        self.calibration(&mut enc, &scrape.stats)?;
        self.housekeeping(&mut enc, &scrape)
    }
}

impl JoulegateCollector {
    fn energy(&self, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
        let t = &x.stats.totals;
        let books = [
            (
                "joulegate_measured_energy",
                "Energy measured by the meters and applied to the books (settled or held).",
                t.measured_uj,
            ),
            (
                "joulegate_attributed_energy",
                "Energy attributed to requests.",
                t.attributed_uj,
            ),
            (
                "joulegate_idle_energy",
                "Energy drawn with no request in flight (belongs to nobody).",
                t.idle_uj,
            ),
            (
                "joulegate_unattributed_energy",
                "Energy drawn with requests in flight but no work to place it on.",
                t.unattributed_uj,
            ),
            (
                "joulegate_active_energy",
                "Of the attributed energy, the part above the idle baseline (P_idle).",
                t.active_uj,
            ),
        ];
        for (name, help, uj) in books {
            counter(enc, name, help, Some(Unit::Joules), joules(uj))?;
        }
        gauge(
            enc,
            "joulegate_pending_energy",
            "Measured energy held for settlement (not yet attributed, idle or unattributed).",
            Some(Unit::Joules),
            joules(t.pending_uj),
        )?;
        if let Some(ci) = self.state.config.carbon_intensity_g_per_kwh {
            counter(
                enc,
                "joulegate_measured_co2",
                "Carbon of the measured energy: kWh x carbon_intensity_g_per_kwh x pue.",
                Some(Unit::Grams),
                joules(t.measured_uj) / 3.6e6 * ci * self.state.config.pue,
            )?;
        }
        let devices = x.sampler.as_ref().map_or(&[][..], |s| &s.devices[..]);
        family(
            enc,
            "joulegate_device_energy",
            "Energy measured per device since start.",
            Some(Unit::Joules),
            MetricType::Counter,
            devices
                .iter()
                .map(|d| (labels([("device", &d.info.label)]), d.energy_joules)),
        )?;
        family(
            enc,
            "joulegate_power",
            "Mean power over the device's last good sampling interval.",
            watts(),
            MetricType::Gauge,
            devices
                .iter()
                .filter_map(|d| d.power_w.map(|w| (labels([("device", &d.info.label)]), w))),
        )?;
        if let Some(mw) = x.stats.p_idle_mw {
            gauge(
                enc,
                "joulegate_idle_power",
                "Idle power P_idle (configured or learned from idle ticks).",
                watts(),
                mw as f64 / 1000.0,
            )?;
        }
        Ok(())
    }

    fn requests(&self, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
        let a = &x.aggregates;
        family(
            enc,
            "joulegate_requests",
            "Finished requests by model, endpoint and status.",
            None,
            MetricType::Counter,
            a.series.requests.iter().map(|(k, n)| {
                (
                    labels([
                        ("model", &k.model),
                        ("endpoint", &k.endpoint),
                        ("status", k.status),
                    ]),
                    *n,
                )
            }),
        )?;
        family(
            enc,
            "joulegate_tokens",
            "Tokens of finished requests by model and kind (prompt, completion).",
            None,
            MetricType::Counter,
            token_rows("model", &a.models),
        )?;
        family(
            enc,
            "joulegate_model_energy",
            "Energy attributed to finished requests, by model.",
            Some(Unit::Joules),
            MetricType::Counter,
            energy_rows("model", &a.models, |r| r.energy_uj),
        )?;
        family(
            enc,
            "joulegate_model_active_energy",
            "Active energy of finished requests, by model.",
            Some(Unit::Joules),
            MetricType::Counter,
            energy_rows("model", &a.models, |r| r.active_uj),
        )?;
        histogram(
            enc,
            "joulegate_request_energy",
            "Energy per finished request (measured requests only).",
            Some(Unit::Joules),
            &a.series.energy_joules,
        )?;
        histogram(
            enc,
            "joulegate_request_joules_per_token",
            "Energy per token (prompt + completion) of each measured finished request.",
            None,
            &a.series.joules_per_token,
        )?;
        gauge(
            enc,
            "joulegate_requests_in_flight",
            "Requests in flight (the response is not finished).",
            None,
            x.in_flight,
        )?;
        gauge(
            enc,
            "joulegate_requests_settling",
            "Finished requests whose last intervals are not settled yet.",
            None,
            x.settling,
        )
    }

    /// Per-tag and per-key series, each only when configured.
    fn labelled(&self, enc: &mut DescriptorEncoder, a: &Aggregates) -> fmt::Result {
        let c = &self.state.config;
        let dims = [
            (c.metrics_per_tag, "tag", &a.tags),
            (c.metrics_per_key, "key_hash", &a.keys),
        ];
        for (enabled, label, table) in dims {
            if !enabled {
                continue;
            }
            let prefix = if label == "tag" {
                "joulegate_tag"
            } else {
                "joulegate_key"
            };
            family(
                enc,
                &format!("{prefix}_requests"),
                &format!("Finished requests by {label}."),
                None,
                MetricType::Counter,
                table
                    .rows
                    .iter()
                    .map(|(v, r)| (labels([(label, v)]), r.requests)),
            )?;
            family(
                enc,
                &format!("{prefix}_tokens"),
                &format!("Tokens of finished requests by {label} and kind."),
                None,
                MetricType::Counter,
                token_rows(label, table),
            )?;
            family(
                enc,
                &format!("{prefix}_energy"),
                &format!("Energy attributed to finished requests, by {label}."),
                Some(Unit::Joules),
                MetricType::Counter,
                energy_rows(label, table, |r| r.energy_uj),
            )?;
            family(
                enc,
                &format!("{prefix}_active_energy"),
                &format!("Active energy of finished requests, by {label}."),
                Some(Unit::Joules),
                MetricType::Counter,
                energy_rows(label, table, |r| r.active_uj),
            )?;
        }
        family(
            enc,
            "joulegate_label_overflow",
            "Requests whose label value was folded into `other` (max_label_values reached).",
            None,
            MetricType::Counter,
            [
                ("model", &a.models),
                ("key_hash", &a.keys),
                ("tag", &a.tags),
            ]
            .into_iter()
            .map(|(d, t)| (labels([("dimension", d)]), t.overflowed)),
        )
    }

    fn meters(&self, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
        let devices = x.sampler.as_ref().map_or(&[][..], |s| &s.devices[..]);
        gauge(
            enc,
            "joulegate_energy_available",
            "1 when at least one meter measures energy, else 0.",
            None,
            u64::from(x.sampler.as_ref().is_some_and(|s| s.energy_available)),
        )?;
        family(
            enc,
            "joulegate_device_info",
            "Metered devices (always 1): name, how energy is measured, UUID where there is one.",
            None,
            MetricType::Gauge,
            devices.iter().map(|d| {
                (
                    labels([
                        ("device", &d.info.label),
                        ("name", &d.info.name),
                        ("method", d.info.method.as_str()),
                        ("uuid", d.info.uuid.as_deref().unwrap_or("")),
                    ]),
                    1u64,
                )
            }),
        )?;
        family(
            enc,
            "joulegate_meter_up",
            "1 when the device's last reading was good and its source is live.",
            None,
            MetricType::Gauge,
            devices
                .iter()
                .map(|d| (labels([("device", &d.info.label)]), u64::from(d.healthy))),
        )?;
        let per_device: [(&str, &str, DeviceCount); 3] = [
            ("joulegate_meter_counter_resets", "Energy counter resets and implausible jumps (the interval is dropped, never negative).", |d| d.resets),
            ("joulegate_meter_counter_wraps", "Energy counter wraps handled.", |d| d.wraps),
            ("joulegate_meter_read_errors", "Failed meter readings (the interval is unavailable).", |d| d.read_errors),
        ];
        for (name, help, f) in per_device {
            family(
                enc,
                name,
                help,
                None,
                MetricType::Counter,
                devices
                    .iter()
                    .map(|d| (labels([("device", &d.info.label)]), f(d))),
            )?;
        }
        family(
            enc,
            "joulegate_meter_unavailable",
            "Meters asked for (or probed) that could not measure (1 per meter spec).",
            None,
            MetricType::Gauge,
            self.state
                .meters_unavailable
                .iter()
                .map(|u| (labels([("meter", &u.spec)]), 1u64)),
        )?;
        counter(
            enc,
            "joulegate_ticks",
            "Sampler ticks applied to the books.",
            None,
            x.stats.totals.ticks,
        )?;
        counter(
            enc,
            "joulegate_unavailable_ticks",
            "Ticks whose energy could not be measured.",
            None,
            x.stats.totals.unavailable_ticks,
        )
    }

    fn calibration(&self, enc: &mut DescriptorEncoder, st: &AccountingStats) -> fmt::Result {
        let c = &st.calibration;
        gauge(
            enc,
            "joulegate_calibration_prefill_joules_per_token",
            "Weight alpha in use: joules per prefill token (fitted when trusted, else default).",
            None,
            c.alpha_j,
        )?;
        gauge(
            enc,
            "joulegate_calibration_decode_joules_per_token",
            "Weight beta in use: joules per decode token.",
            None,
            c.beta_j,
        )?;
        gauge(
            enc,
            "joulegate_calibration_trusted",
            "1 when the fitted alpha/beta are in use.",
            None,
            u64::from(c.trusted),
        )?;
        gauge(
            enc,
            "joulegate_calibration_window_ticks",
            "Ticks in the calibration window.",
            None,
            c.ticks as u64,
        )?;
        if let Some(r2) = c.r2.filter(|v| v.is_finite()) {
            gauge(
                enc,
                "joulegate_calibration_r2",
                "R squared of the alpha/beta fit.",
                None,
                r2,
            )?;
        }
        Ok(())
    }

    fn housekeeping(&self, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
        let st = &x.stats;
        counter(
            enc,
            "joulegate_records_evicted",
            "Finished-request records pushed out of the /requests ring.",
            None,
            st.records_evicted,
        )?;
        counter(
            enc,
            "joulegate_request_log_dropped",
            "Records the request log could not take (its queue was full): never written.",
            None,
            st.records_not_logged,
        )?;
        if let Some(log) = &self.state.request_log {
            let c = log.counts();
            counter(
                enc,
                "joulegate_request_log_lines",
                "Lines written to the request log.",
                None,
                c.written,
            )?;
            counter(
                enc,
                "joulegate_request_log_errors",
                "Request-log lines lost to write errors.",
                None,
                c.write_errors,
            )?;
        }
        family(
            enc,
            "joulegate_build_info",
            "joulegate build information (always 1).",
            None,
            MetricType::Gauge,
            [(labels([("version", env!("CARGO_PKG_VERSION"))]), 1u64)],
        )?;
        let start = self
            .state
            .clock
            .wall(0)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge(
            enc,
            "joulegate_start_time",
            "Start time of the process since the Unix epoch.",
            Some(Unit::Seconds),
            start,
        )
    }
}

fn token_rows<'a>(
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

fn energy_rows<'a>(
    label: &'static str,
    t: &'a LabelTable,
    f: impl Fn(&crate::accounting::Aggregate) -> u64 + 'a,
) -> impl Iterator<Item = (Labels, f64)> + 'a {
    t.rows
        .iter()
        .map(move |(v, r)| (labels([(label, v)]), joules(f(r))))
}
