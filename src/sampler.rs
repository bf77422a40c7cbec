//! The sampling thread: reads the meters on a drift-free schedule and sends [`crate::tick::Tick`]s.
//!
//! Owns the schedule, the per-device [`CounterTracker`]s, the outgoing queue and the thread's life
//! ([`Sampler`] joins it on drop). It never touches the ledger: ticks go out over a bounded
//! `sync_channel`, status goes to [`SamplerStatus`] for the admin listener.
//!
//! - **Slow meters**: a counter that updates more slowly than it is read (NVML's every 20–100 ms, a
//!   file another program writes) goes through a per-device [`Spreader`]: its update period is
//!   learned (or configured: `meter_period_ms`, a spec's `period_ms=N`), and each increment is spread
//!   over the intervals since the previous change, so ticks carry a smooth timeline, delayed by up to
//!   one meter period. A tick goes out once every device has finalised its interval; a counter that
//!   moves at every read is never delayed. A warning says once per device when this happens.
//! - **Schedule**: deadlines at `t0 + k * interval`; after an overrun the missed deadlines are skipped
//!   and the next tick simply spans a longer interval, so there is no drift and no burst.
//! - **Backpressure**: if the consumer's queue is full, the interval is merged into the next tick
//!   (start kept, end and energy extended) and counted; energy is never dropped while running. At
//!   shutdown one last non-blocking send is tried; a tick that still does not fit is counted as dropped.
//! - **Failures**: a failed reading makes that device's delta `None` for that tick (and the tick's
//!   total `None`). Counters keep their last good value, so the next good reading carries the energy of
//!   the failed intervals: energy is delayed, not lost (and never spread back into the failed one). Merging follows the same rule: a merged device
//!   delta is the sum of its known parts, `None` only if every part was unavailable.
//! - **Time** comes from a [`TimeSource`]: [`ClockTime`] (the shared [`Clock`]) in production, a
//!   scripted one in tests, so schedules and ticks are tested without sleeping.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use crate::meter::counter::{CounterTracker, Step};
use crate::meter::status::SamplerStatus;
use crate::meter::{Meter, MeterSet};
use crate::tick::{DeviceDelta, Tick, TickPhase};

pub mod align;
#[cfg(test)]
pub(crate) mod lumpy;
mod outbox;
pub mod period;
pub mod spread;
mod thread;
mod time;

pub use outbox::{merge, Outbox};
pub use period::{Period, PeriodSource};
pub use spread::{CoveredSpan, Spreader};
pub use thread::Sampler;
pub use time::{ClockTime, Schedule, TimeSource, Wake};

/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);
/// Longest interval allowed (5 Hz: the ledger needs at least that resolution).
pub const MAX_INTERVAL: Duration = Duration::from_millis(200);
/// Shortest interval allowed (meter reads and the ledger tick must fit in it).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Default capacity of the tick queue.
pub const DEFAULT_QUEUE: usize = 64;

/// Sampler settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Sampling interval, within [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    pub interval: Duration,
    /// Capacity of the tick queue (at least 1).
    pub queue: usize,
    /// Every meter's update period, unless its spec sets one; `None` learns it from the reads.
    pub meter_period: Option<Duration>,
    /// Before the first read, find when a slow counter updates and start the reads half an
    /// interval after its updates ([`align`]). `serve` and `log-power` turn it on.
    pub align_phase: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: DEFAULT_INTERVAL,
            queue: DEFAULT_QUEUE,
            meter_period: None,
            // Off unless asked for: a scripted time source would spend its script on the burst.
            align_phase: false,
        }
    }
}

/// Why the sampler cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The interval is outside the allowed range.
    #[error("sampling interval {given_ms} ms is outside {min_ms}..={max_ms} ms")]
    Interval {
        /// The interval given.
        given_ms: u128,
        /// The shortest allowed.
        min_ms: u128,
        /// The longest allowed.
        max_ms: u128,
    },
    /// The OS refused to start the thread.
    #[error("cannot start the sampler thread: {0}")]
    Spawn(#[from] std::io::Error),
}

impl SamplerConfig {
    /// Checks the interval bounds.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            return Err(SamplerError::Interval {
                given_ms: self.interval.as_millis(),
                min_ms: MIN_INTERVAL.as_millis(),
                max_ms: MAX_INTERVAL.as_millis(),
            });
        }
        Ok(())
    }
}

struct Slot {
    meter: usize,
    device: usize,
    tracker: CounterTracker,
    spreader: Spreader,
    /// Whether "slower than the sampler" was said for this device.
    warned: bool,
}

/// The sampling logic without the thread: reads every device, spreads slow counters' increments
/// over the intervals they cover ([`Spreader`]) and turns them into ticks.
pub struct SamplerCore {
    meters: Vec<Box<dyn Meter>>,
    slots: Vec<Slot>,
    labels: Vec<String>,
    status: Arc<SamplerStatus>,
    interval_ns: u64,
    last_ns: Option<u64>,
    /// End of the newest interval announced before its energy was final.
    announced_until_ns: u64,
}

impl SamplerCore {
    /// Takes ownership of the meters; `interval` is reported in the status and compared with the
    /// meters' update periods. Periods are learned unless a meter's spec configures one.
    pub fn new(set: MeterSet, interval: Duration) -> Self {
        Self::with_period(set, interval, None)
    }

    /// Like [`SamplerCore::new`], with `meter_period` as every meter's update period, unless its
    /// spec sets its own (`period_ms=N`); `None` learns it.
    pub fn with_period(set: MeterSet, interval: Duration, meter_period: Option<Duration>) -> Self {
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        let all_ns = meter_period
            .map(|p| u64::try_from(p.as_nanos()).unwrap_or(u64::MAX))
            .filter(|&p| p > 0);
        let mut slots = Vec::new();
        let mut infos = Vec::new();
        for (m, meter) in set.meters.iter().enumerate() {
            for (d, info) in meter.devices().iter().enumerate() {
                let mut info = info.clone();
                info.label = unique_label(&infos, &info.label);
                let period_ns = info.period_ns.or(all_ns);
                info.period_ns = period_ns;
                let warned = match period_ns {
                    Some(p) if p > interval_ns => {
                        warn_slow(&info.label, p, interval_ns, "configured");
                        true
                    }
                    _ => false,
                };
                slots.push(Slot {
                    meter: m,
                    device: d,
                    tracker: CounterTracker::for_device(info.wrap_uj, info.power_limit_w),
                    spreader: Spreader::new(period_ns),
                    warned,
                });
                infos.push(info);
            }
        }
        let labels = infos.iter().map(|i| i.label.clone()).collect();
        let status = Arc::new(SamplerStatus::new(interval_ns, infos, set.unavailable));
        for (slot, st) in slots.iter().zip(status.devices()) {
            st.record_period(slot.spreader.period());
        }
        SamplerCore {
            meters: set.meters,
            slots,
            labels,
            status,
            interval_ns,
            last_ns: None,
            announced_until_ns: 0,
        }
    }

    /// The shared status this core writes.
    pub fn status(&self) -> Arc<SamplerStatus> {
        self.status.clone()
    }

    /// One sampling round at `now_ns`. The first call takes the baseline; later calls read the
    /// interval `(previous, now_ns]` and return the ticks whose energy is final on every device
    /// (with `seq` 0: the sender numbers them). A meter whose counter moves at every read yields
    /// this interval's tick at once; a slower one's intervals come out, spread, once its counter
    /// has moved past them (at most a bounded time later, see [`spread`]).
    pub fn round(&mut self, now_ns: u64) -> Vec<Tick> {
        let start_ns = self.last_ns.replace(now_ns);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(status) = self.status.devices().get(i) else {
                continue;
            };
            let read = match self.meters.get_mut(slot.meter) {
                Some(m) => m.read(slot.device, now_ns),
                None => Err(crate::meter::ReadError::NoSuchDevice(slot.meter)),
            };
            let (delta, ended, power_mw) = match read {
                Ok(r) => {
                    let step = slot.tracker.observe(r.energy_uj, now_ns);
                    match step {
                        Step::Baseline => status.record_baseline(r.ended),
                        Step::Wrapped(_) => status.count_wrap(),
                        Step::Reset(_) => status.count_reset(),
                        Step::Increase(_) => {}
                    }
                    if step != Step::Baseline {
                        status.record_ok(step.delta_uj(), r.ended);
                    }
                    // A baseline (first read, or first good read after failing from the start)
                    // measured nothing yet: 0 is exact for a counter we had never seen.
                    (Some(step.delta_uj()), r.ended, r.power_mw)
                }
                Err(e) => {
                    status.record_error(&e);
                    tracing::debug!(device = %self.labels[i], error = %e, "meter read failed");
                    (None, false, None)
                }
            };
            let Some(start_ns) = start_ns else {
                slot.spreader.baseline_power(power_mw);
                continue;
            };
            let before = slot.spreader.last_span();
            slot.spreader.push_shaped(start_ns, now_ns, delta, power_mw);
            if ended {
                // Nothing more will come to spread over what is held.
                slot.spreader.flush();
            }
            let span = slot.spreader.last_span();
            if span != before {
                if let Some(mw) = span.and_then(|s| s.power_mw()) {
                    status.record_power_mw(mw);
                }
            }
            let period = slot.spreader.period();
            status.record_period(period);
            if !slot.warned && !period.every_read {
                if let Some(p) = period.ns.filter(|&p| p > self.interval_ns) {
                    warn_slow(&self.labels[i], p, self.interval_ns, "learned");
                    slot.warned = true;
                }
            }
        }
        if start_ns.is_none() {
            return Vec::new();
        }
        if self.slots.is_empty() {
            return start_ns
                .map(|s| Tick {
                    seq: 0,
                    start_ns: s,
                    end_ns: now_ns,
                    delta_uj: Some(0),
                    devices: Vec::new(),
                    phase: crate::tick::TickPhase::Whole,
                })
                .into_iter()
                .collect();
        }
        let mut ticks = self.ready_ticks();
        if let Some(start_ns) = start_ns {
            if ticks.last().map_or(true, |t| t.end_ns < now_ns) {
                // This interval waits for a slow counter: announce it now, so that accounting
                // reads the requests' progress when it ends; its energy follows as a fill. It
                // carries an estimate where every device has measured part of it.
                let estimate = self.slots.iter().try_fold(0u64, |sum, slot| {
                    let e = slot.spreader.estimate_of(start_ns, now_ns)?;
                    Some(sum.saturating_add(e))
                });
                ticks.push(Tick {
                    seq: 0,
                    start_ns,
                    end_ns: now_ns,
                    delta_uj: estimate,
                    devices: Vec::new(),
                    phase: TickPhase::Announce,
                });
                self.announced_until_ns = now_ns;
            }
        }
        ticks
    }

    /// When a slow counter's update phase is found by a burst of reads ([`align::probe`]), the
    /// first time half an interval after its updates, waited for here: the read schedule starts
    /// there. `None` when there is nothing to align to (the schedule keeps its start); `Err` when a
    /// stop was asked for meanwhile.
    pub fn align_start(
        &mut self,
        time: &mut impl TimeSource,
        stop: &Receiver<()>,
    ) -> Result<Option<u64>, align::Stopped> {
        if self.interval_ns < align::MIN_INTERVAL {
            // Reads too close together for the burst to place an update within one.
            return Ok(None);
        }
        let Some(probe) = align::probe(&mut self.meters, time, stop, self.interval_ns)? else {
            return Ok(None);
        };
        // A counter that moves at every read updated, on average, half the interval before the
        // read where its period is close to the interval (the reads are then aligned half an
        // interval after its updates): its increments are spread up to then instead of over the
        // read's interval (see `Spreader::set_update_lag`). A faster counter's last update falls
        // anywhere in its period before a read, at offsets the reads cycle through (a 20 ms
        // counter read every 50 ms: two, 10 ms apart, wherever the run started): half its
        // period as the lag gained in the accuracy matrix (20 ms counters, four seeds: records
        // 5.7 / 23.0 -> 5.5 / 22.1 %) but lost in the real-time demo (records 3.7-5.2 -> 5.6-6.2
        // % median, JSON headers 4.4-6.7 -> 10.3-10.8 %, two runs each) and in the real-time
        // run's medians (8B, 20 ms counter, two pairs: records 3.6 -> 3.9-4.1 %, figures read
        // 4.2-4.5 -> 4.6 %; p95 better, 16.1-16.7 -> 13.9-14.9 and 26.7-29.5 -> 25.5-26.2 %).
        for ((slot, label), period) in self.slots.iter_mut().zip(&self.labels).zip(&probe.periods) {
            let period = slot.spreader.configured_period().or(*period);
            let lag = period
                .filter(|&p| p.saturating_mul(4) >= self.interval_ns.saturating_mul(3))
                .map(|p| p.min(self.interval_ns) / 2);
            slot.spreader.set_update_lag(lag);
            if let Some(lag) = lag {
                tracing::debug!(device = %label, update_lag_ms = lag as f64 / 1e6, "counter update lag");
            }
        }
        let Some((device, phase)) = probe.aligned else {
            return Ok(None);
        };
        let start = align::aligned_start(time.now_ns(), phase, self.interval_ns);
        tracing::info!(
            device = %self.labels.get(device).map_or("?", String::as_str),
            update_phase_ms = phase as f64 / 1e6,
            "reads start half an interval after the meter's counter updates"
        );
        if time.sleep_until(start, stop) == Wake::Stop {
            return Err(align::Stopped);
        }
        Ok(Some(start))
    }

    /// Releases every interval still held (shutdown) and returns the remaining ticks.
    pub fn flush(&mut self) -> Vec<Tick> {
        for slot in &mut self.slots {
            slot.spreader.flush();
        }
        self.ready_ticks()
    }

    /// The ticks final on every device. Every spreader is fed the same intervals in the same
    /// order, so their final queues line up.
    fn ready_ticks(&mut self) -> Vec<Tick> {
        let mut ticks = Vec::new();
        while !self.slots.is_empty() && self.slots.iter().all(|s| s.spreader.has_final()) {
            let mut devices = Vec::with_capacity(self.slots.len());
            let mut span = None;
            let mut total: Option<u64> = Some(0);
            for (slot, label) in self.slots.iter_mut().zip(&self.labels) {
                let Some((s, e, delta)) = slot.spreader.pop_final() else {
                    continue;
                };
                span.get_or_insert((s, e));
                total = match (total, delta) {
                    (Some(t), Some(d)) => Some(t.saturating_add(d)),
                    _ => None,
                };
                devices.push(DeviceDelta {
                    device: label.clone(),
                    delta_uj: delta,
                });
            }
            let Some((start_ns, end_ns)) = span else {
                break;
            };
            let phase = if end_ns <= self.announced_until_ns {
                TickPhase::Fill
            } else {
                TickPhase::Whole
            };
            ticks.push(Tick {
                seq: 0,
                start_ns,
                end_ns,
                delta_uj: total,
                devices,
                phase,
            });
        }
        ticks
    }
}

/// Says once per device that its meter is slower than the sampler, and what that means.
fn warn_slow(label: &str, period_ns: u64, interval_ns: u64, how: &str) {
    tracing::warn!(
        device = %label,
        period_ms = period_ns as f64 / 1e6,
        interval_ms = interval_ns as f64 / 1e6,
        "meter updates ({how}) more slowly than it is sampled: each counter increment is spread over \
         the intervals it covers, so ticks are smooth but delayed by up to one meter period"
    );
}

/// `label`, or `label#2`, `label#3`... if devices already use it: ticks and metrics need unique labels
/// (two `sim` meters, a replay of a log next to the live meter it logged).
fn unique_label(taken: &[crate::meter::DeviceInfo], label: &str) -> String {
    let used = |l: &str| taken.iter().any(|i| i.label == l);
    if !used(label) {
        return label.to_owned();
    }
    (2..)
        .map(|n| format!("{label}#{n}"))
        .find(|l| !used(l))
        .unwrap_or_else(|| label.to_owned())
}

#[cfg(test)]
mod tests;
