//! The energy, meter and calibration series of `/metrics`: the books (measured, attributed, idle,
//! unattributed, active, pending), carbon, per-device energy and power, P_idle, meter health and
//! the alpha/beta fit. Owns these names only; values come from the scrape's copies.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::fmt;

use super::encode::{counter, family, gauge, labels, watts, DeviceCount};
use super::Scrape;
use crate::accounting::AccountingStats;
use crate::admin::AdminState;
use crate::ledger::record::joules;

pub(super) fn energy(s: &AdminState, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
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
    if let Some(ci) = s.config.carbon_intensity_g_per_kwh {
        counter(
            enc,
            "joulegate_measured_co2",
            "Carbon of the measured energy: kWh x carbon_intensity_g_per_kwh x pue.",
            Some(Unit::Grams),
            joules(t.measured_uj) / 3.6e6 * ci * s.config.pue,
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
        "Mean power over the span the device's last counter increment covered (the sampling interval for a counter that moves at every read; never 0 between two updates of a slower one).",
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

pub(super) fn meters(s: &AdminState, enc: &mut DescriptorEncoder, x: &Scrape) -> fmt::Result {
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
    family(
        enc,
        "joulegate_meter_update_period",
        "How often the device's energy counter updates, configured or learned from the reads (the sampling interval, an upper bound, for a counter that moves at every read); absent while unknown.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        devices.iter().filter_map(|d| {
            d.update_period_ms
                .map(|ms| (labels([("device", &d.info.label)]), ms / 1e3))
        }),
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
        s.meters_unavailable
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

pub(super) fn calibration(enc: &mut DescriptorEncoder, st: &AccountingStats) -> fmt::Result {
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
        "joulegate_calibration_context_joules_per_token",
        "Weight gamma in use: joules per context token a decode reads.",
        None,
        c.gamma_j,
    )?;
    if let Some(w) = c.fitted_static_w.filter(|v| v.is_finite()) {
        gauge(
            enc,
            "joulegate_calibration_static_watts",
            "Power above idle the engine draws while it runs, whatever its work (estimated).",
            None,
            w,
        )?;
    }
    gauge(
        enc,
        "joulegate_calibration_trusted",
        "1 when the fitted alpha/beta/gamma are in use.",
        None,
        u64::from(c.trusted),
    )?;
    gauge(
        enc,
        "joulegate_calibration_window_ticks",
        "Samples (blocks of ticks) in the calibration window.",
        None,
        c.ticks as u64,
    )?;
    if let Some(r2) = c.r2.filter(|v| v.is_finite()) {
        gauge(
            enc,
            "joulegate_calibration_r2",
            "R squared of the calibration fit.",
            None,
            r2,
        )?;
    }
    Ok(())
}
