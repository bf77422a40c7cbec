//! The sampling thread: reads the meters on a drift-free schedule and sends [`crate::tick::Tick`]s.
//!
//! Owns the schedule, the per-device [`CounterTracker`]s, the outgoing queue and the thread's life
//! ([`Sampler`] joins it on drop). It never touches the ledger: ticks go out over a bounded
//! `sync_channel`, status goes to [`SamplerStatus`] for the admin listener.
//!
//! - **Schedule**: deadlines at `t0 + k * interval`; after an overrun the missed deadlines are skipped
//!   and the next tick simply spans a longer interval, so there is no drift and no burst.
//! - **Backpressure**: if the consumer's queue is full, the interval is merged into the next tick
//!   (start kept, end and energy extended) and counted; energy is never dropped while running. At
//!   shutdown one last non-blocking send is tried; a tick that still does not fit is counted as dropped.
//! - **Failures**: a failed reading makes that device's delta `None` for that tick (and the tick's
//!   total `None`). Counters keep their last good value, so the next good reading carries the energy of
//!   the failed intervals: energy is delayed, not lost. Merging follows the same rule: a merged device
//!   delta is the sum of its known parts, `None` only if every part was unavailable.
//! - **Time** comes from a [`TimeSource`]: [`ClockTime`] (the shared [`Clock`]) in production, a
//!   scripted one in tests, so schedules and ticks are tested without sleeping.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::Clock;
use crate::meter::counter::{CounterTracker, Step};
use crate::meter::status::SamplerStatus;
use crate::meter::{Meter, MeterSet};
use crate::tick::{DeviceDelta, Tick};

#[cfg(test)]
pub(crate) mod lumpy;
mod outbox;
pub mod period;
pub mod spread;
mod time;

pub use outbox::{merge, Outbox};
pub use period::{Period, PeriodSource};
pub use spread::{CoveredSpan, Spreader};
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
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: DEFAULT_INTERVAL,
            queue: DEFAULT_QUEUE,
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
}

/// The sampling logic without the thread: reads every device and turns readings into ticks.
pub struct SamplerCore {
    meters: Vec<Box<dyn Meter>>,
    slots: Vec<Slot>,
    labels: Vec<String>,
    status: Arc<SamplerStatus>,
    last_ns: Option<u64>,
}

impl SamplerCore {
    /// Takes ownership of the meters; `interval` is only reported in the status.
    pub fn new(set: MeterSet, interval: Duration) -> Self {
        let mut slots = Vec::new();
        let mut infos = Vec::new();
        for (m, meter) in set.meters.iter().enumerate() {
            for (d, info) in meter.devices().iter().enumerate() {
                slots.push(Slot {
                    meter: m,
                    device: d,
                    tracker: CounterTracker::for_device(info.wrap_uj, info.power_limit_w),
                });
                let mut info = info.clone();
                info.label = unique_label(&infos, &info.label);
                infos.push(info);
            }
        }
        let labels = infos.iter().map(|i| i.label.clone()).collect();
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        SamplerCore {
            meters: set.meters,
            slots,
            labels,
            status: Arc::new(SamplerStatus::new(interval_ns, infos, set.unavailable)),
            last_ns: None,
        }
    }

    /// The shared status this core writes.
    pub fn status(&self) -> Arc<SamplerStatus> {
        self.status.clone()
    }

    /// One sampling round at `now_ns`. The first call takes the baseline and returns `None`; later
    /// calls return the tick for `(previous, now_ns]` (with `seq` 0: the sender numbers ticks).
    pub fn round(&mut self, now_ns: u64) -> Option<Tick> {
        let start_ns = self.last_ns.replace(now_ns);
        let dt = start_ns.map_or(0, |s| now_ns.saturating_sub(s));
        let mut devices = Vec::with_capacity(self.slots.len());
        let mut total: Option<u64> = Some(0);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let status = &self.status.devices()[i];
            let read = match self.meters.get_mut(slot.meter) {
                Some(m) => m.read(slot.device, now_ns),
                None => Err(crate::meter::ReadError::NoSuchDevice(slot.meter)),
            };
            let delta = match read {
                Ok(r) => {
                    let step = slot.tracker.observe(r.energy_uj, now_ns);
                    match step {
                        Step::Baseline => status.record_baseline(r.ended),
                        Step::Wrapped(_) => status.count_wrap(),
                        Step::Reset(_) => status.count_reset(),
                        Step::Increase(_) => {}
                    }
                    if step == Step::Baseline {
                        // Nothing measured yet for this device (first read, or first good read after
                        // failing from the start): 0 is exact for a counter we had never seen.
                        Some(0)
                    } else {
                        status.record_ok(step.delta_uj(), dt, r.ended);
                        Some(step.delta_uj())
                    }
                }
                Err(e) => {
                    status.record_error(&e);
                    tracing::debug!(device = %self.labels[i], error = %e, "meter read failed");
                    None
                }
            };
            total = match (total, delta) {
                (Some(t), Some(d)) => Some(t.saturating_add(d)),
                _ => None,
            };
            devices.push(DeviceDelta {
                device: self.labels[i].clone(),
                delta_uj: delta,
            });
        }
        let start_ns = start_ns?;
        Some(Tick {
            seq: 0,
            start_ns,
            end_ns: now_ns,
            delta_uj: total,
            devices,
        })
    }
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

/// The running sampler thread. Dropping it stops and joins the thread.
pub struct Sampler {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<SamplerStatus>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    /// Starts sampling `set` on the shared clock; returns the handle and the tick receiver.
    pub fn spawn(
        set: MeterSet,
        config: SamplerConfig,
        clock: Clock,
    ) -> Result<(Sampler, Receiver<Tick>), SamplerError> {
        Self::spawn_with(set, config, ClockTime(clock))
    }

    /// Starts sampling with an injected time source (tests drive the schedule without sleeping).
    pub fn spawn_with<T: TimeSource>(
        set: MeterSet,
        config: SamplerConfig,
        mut time: T,
    ) -> Result<(Sampler, Receiver<Tick>), SamplerError> {
        config.validate()?;
        let mut core = SamplerCore::new(set, config.interval);
        let status = core.status();
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let mut outbox = Outbox::new(tx, status.clone());
        let interval = config.interval;
        let thread = std::thread::Builder::new()
            .name("joulegate-sampler".into())
            .spawn(move || {
                let t0 = time.now_ns();
                let _ = core.round(t0);
                let mut schedule = Schedule::new(t0, interval);
                loop {
                    let deadline = schedule.next_deadline(time.now_ns());
                    if time.sleep_until(deadline, &stop_rx) == Wake::Stop {
                        break;
                    }
                    if let Some(tick) = core.round(time.now_ns()) {
                        outbox.offer(tick);
                    }
                }
            })?;
        Ok((
            Sampler {
                stop: Some(stop_tx),
                thread: Some(thread),
                status,
            },
            rx,
        ))
    }

    /// The shared status (cheap to clone, safe to read from any thread).
    pub fn status(&self) -> &Arc<SamplerStatus> {
        &self.status
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread's wait at once.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("sampler thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests;
