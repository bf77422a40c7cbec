//! The shared, lock-cheap health and energy snapshot of every metered device.
//!
//! The sampler thread is the only writer (atomics, once per tick); `/stats` and `/metrics` read a
//! [`StatusSnapshot`] through [`SamplerStatus::snapshot`] and never touch a meter. Static device
//! descriptions are fixed at start-up; only a device's last error text sits behind a mutex, written on
//! failures alone.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::{DeviceInfo, Unavailable};
use crate::sampler::{Period, PeriodSource};

/// Live counters of one device.
#[derive(Debug)]
pub struct DeviceStatus {
    info: DeviceInfo,
    power_mw: AtomicU64,
    has_power: AtomicBool,
    energy_uj: AtomicU64,
    resets: AtomicU64,
    wraps: AtomicU64,
    read_errors: AtomicU64,
    healthy: AtomicBool,
    ended: AtomicBool,
    period_ns: AtomicU64,
    period_source: AtomicU8,
    every_read: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl DeviceStatus {
    fn new(info: DeviceInfo) -> Self {
        DeviceStatus {
            info,
            power_mw: AtomicU64::new(0),
            has_power: AtomicBool::new(false),
            energy_uj: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            wraps: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            period_ns: AtomicU64::new(0),
            period_source: AtomicU8::new(source_code(PeriodSource::Unknown)),
            every_read: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// The static description.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Records a good reading: its raw increment `delta_uj`, and whether the source has ended.
    pub(crate) fn record_ok(&self, delta_uj: u64, ended: bool) {
        self.energy_uj.fetch_add(delta_uj, Ordering::Relaxed);
        self.ended.store(ended, Ordering::Relaxed);
        self.healthy.store(!ended, Ordering::Relaxed);
    }

    /// Records the device's current power: the mean over the span its counter's last increment
    /// covered (a lumpy counter never reads 0 W between two updates).
    pub(crate) fn record_power_mw(&self, mw: u64) {
        self.power_mw.store(mw, Ordering::Relaxed);
        self.has_power.store(true, Ordering::Relaxed);
    }

    /// Records the update period in force.
    pub(crate) fn record_period(&self, period: Period) {
        self.period_ns
            .store(period.ns.unwrap_or(0), Ordering::Relaxed);
        self.period_source
            .store(source_code(period.source), Ordering::Relaxed);
        self.every_read.store(period.every_read, Ordering::Relaxed);
    }

    /// Records the baseline reading (healthy, no energy yet).
    pub(crate) fn record_baseline(&self, ended: bool) {
        self.ended.store(ended, Ordering::Relaxed);
        self.healthy.store(!ended, Ordering::Relaxed);
    }

    /// Counts a reset (or implausible jump).
    pub(crate) fn count_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wrap.
    pub(crate) fn count_wrap(&self) {
        self.wraps.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failed reading.
    pub(crate) fn record_error(&self, error: &dyn std::fmt::Display) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(error.to_string());
        }
    }

    /// A plain copy for serialisation.
    pub fn snapshot(&self) -> DeviceSnapshot {
        let energy_uj = self.energy_uj.load(Ordering::Relaxed);
        DeviceSnapshot {
            info: self.info.clone(),
            power_w: self
                .has_power
                .load(Ordering::Relaxed)
                .then(|| self.power_mw.load(Ordering::Relaxed) as f64 / 1000.0),
            energy_uj,
            energy_joules: energy_uj as f64 / 1e6,
            update_period_ms: match self.period_ns.load(Ordering::Relaxed) {
                0 => None,
                ns => Some(ns as f64 / 1e6),
            },
            update_period_source: source_of(self.period_source.load(Ordering::Relaxed)),
            updates_every_read: self.every_read.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            wraps: self.wraps.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            healthy: self.healthy.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

fn source_code(s: PeriodSource) -> u8 {
    match s {
        PeriodSource::Unknown => 0,
        PeriodSource::Learned => 1,
        PeriodSource::Configured => 2,
    }
}

fn source_of(code: u8) -> PeriodSource {
    match code {
        1 => PeriodSource::Learned,
        2 => PeriodSource::Configured,
        _ => PeriodSource::Unknown,
    }
}

/// Status of every device the sampler reads, plus sampler-wide counters.
#[derive(Debug)]
pub struct SamplerStatus {
    interval_ns: u64,
    devices: Vec<DeviceStatus>,
    unavailable: Vec<Unavailable>,
    ticks: AtomicU64,
    merged: AtomicU64,
    dropped: AtomicU64,
}

impl SamplerStatus {
    /// Status for these devices (in sampler order) and the meters that could not be built.
    pub fn new(interval_ns: u64, devices: Vec<DeviceInfo>, unavailable: Vec<Unavailable>) -> Self {
        SamplerStatus {
            interval_ns,
            devices: devices.into_iter().map(DeviceStatus::new).collect(),
            unavailable,
            ticks: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// The live device entries, in sampler order.
    pub fn devices(&self) -> &[DeviceStatus] {
        &self.devices
    }

    /// Counts a tick handed to the consumer.
    pub(crate) fn count_tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an interval merged into the next tick because the consumer was behind.
    pub(crate) fn count_merged(&self) {
        self.merged.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a tick lost at shutdown (the consumer still had a full queue).
    pub(crate) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy for `/stats` and `/metrics`.
    pub fn snapshot(&self) -> StatusSnapshot {
        let devices: Vec<DeviceSnapshot> =
            self.devices.iter().map(DeviceStatus::snapshot).collect();
        StatusSnapshot {
            interval_ms: self.interval_ns as f64 / 1e6,
            energy_available: !devices.is_empty(),
            energy_uj: devices
                .iter()
                .map(|d| d.energy_uj)
                .fold(0, u64::saturating_add),
            power_w: devices.iter().map(|d| d.power_w).sum(),
            ticks: self.ticks.load(Ordering::Relaxed),
            merged_intervals: self.merged.load(Ordering::Relaxed),
            dropped_ticks: self.dropped.load(Ordering::Relaxed),
            devices,
            unavailable: self.unavailable.clone(),
        }
    }
}

/// One device, as `/stats` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeviceSnapshot {
    /// Name, UUID, method, versions, power limit.
    #[serde(flatten)]
    pub info: DeviceInfo,
    /// Mean power over the last covered span, watts: from the read before the counter's last
    /// change to the read at which it changed (one interval for a counter that moves at every read).
    pub power_w: Option<f64>,
    /// How often the device's counter updates, milliseconds, once known. With
    /// `updates_every_read` it is the sampling interval, an upper bound.
    pub update_period_ms: Option<f64>,
    /// Where `update_period_ms` comes from: `configured`, `learned` or `unknown`.
    pub update_period_source: PeriodSource,
    /// The counter moved at every recent read: its period is at most the sampling interval and
    /// its ticks are not delayed.
    pub updates_every_read: bool,
    /// Energy measured since the sampler started, micro-joules.
    pub energy_uj: u64,
    /// The same in joules.
    pub energy_joules: f64,
    /// Counter resets and implausible jumps.
    pub resets: u64,
    /// Counter wraps.
    pub wraps: u64,
    /// Failed readings.
    pub read_errors: u64,
    /// Last reading good and the source still live.
    pub healthy: bool,
    /// The source ran out of data (replay past its end).
    pub ended: bool,
    /// The last read error, if any.
    pub last_error: Option<String>,
}

/// Everything the sampler publishes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StatusSnapshot {
    /// Sampling interval, milliseconds.
    pub interval_ms: f64,
    /// Whether any device is metered at all.
    pub energy_available: bool,
    /// Energy over all devices since start, micro-joules.
    pub energy_uj: u64,
    /// Sum of the devices' last known power, watts (`None` until every device has one).
    pub power_w: Option<f64>,
    /// Ticks handed to the consumer.
    pub ticks: u64,
    /// Intervals merged into a later tick because the consumer was behind.
    pub merged_intervals: u64,
    /// Ticks lost at shutdown.
    pub dropped_ticks: u64,
    /// Per device.
    pub devices: Vec<DeviceSnapshot>,
    /// Meters asked for that could not be used, and why.
    pub unavailable: Vec<Unavailable>,
}
