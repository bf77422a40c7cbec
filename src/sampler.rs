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

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::Clock;
use crate::meter::counter::{CounterTracker, Step};
use crate::meter::status::SamplerStatus;
use crate::meter::{Meter, MeterSet};
use crate::tick::{DeviceDelta, Tick};

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

/// Whether a wait ended at its deadline or because the sampler is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The deadline passed.
    Deadline,
    /// Stop requested.
    Stop,
}

/// The sampler's notion of time: "now" and "sleep until".
pub trait TimeSource: Send + 'static {
    /// Now, in shared-clock nanoseconds.
    fn now_ns(&mut self) -> u64;
    /// Waits until `deadline_ns` or until `stop` fires (a message or its sender dropped).
    fn sleep_until(&mut self, deadline_ns: u64, stop: &Receiver<()>) -> Wake;
}

/// Production time: the shared [`Clock`], waiting on the stop channel so a stop is immediate.
#[derive(Clone, Copy, Debug)]
pub struct ClockTime(pub Clock);

impl TimeSource for ClockTime {
    fn now_ns(&mut self) -> u64 {
        self.0.now_ns()
    }

    fn sleep_until(&mut self, deadline_ns: u64, stop: &Receiver<()>) -> Wake {
        loop {
            let now = self.0.now_ns();
            if now >= deadline_ns {
                // A stop that arrived while we were busy still wins.
                return match stop.try_recv() {
                    Err(std::sync::mpsc::TryRecvError::Empty) => Wake::Deadline,
                    _ => Wake::Stop,
                };
            }
            match stop.recv_timeout(Duration::from_nanos(deadline_ns - now)) {
                Err(RecvTimeoutError::Timeout) => continue,
                _ => return Wake::Stop,
            }
        }
    }
}

/// Drift-free deadlines `start + k * interval`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start_ns: u64,
    interval_ns: u64,
    k: u64,
}

impl Schedule {
    /// A schedule whose slot 0 is `start_ns`.
    pub fn new(start_ns: u64, interval: Duration) -> Self {
        let interval_ns = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Schedule {
            start_ns,
            interval_ns,
            k: 0,
        }
    }

    /// The next deadline strictly after `now_ns` (and after the previous one), skipping missed slots.
    pub fn next_deadline(&mut self, now_ns: u64) -> u64 {
        let due = now_ns.saturating_sub(self.start_ns) / self.interval_ns + 1;
        self.k = due.max(self.k + 1);
        self.start_ns
            .saturating_add(self.k.saturating_mul(self.interval_ns))
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
mod tests {
    use super::*;
    use crate::meter::sim::SimMeter;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    const MS: u64 = 1_000_000;

    /// Time that jumps to each deadline plus a scripted lateness, recording the deadlines asked for;
    /// it stops when the script runs out. Nothing sleeps.
    struct Scripted {
        now: u64,
        lateness: VecDeque<u64>,
        deadlines: Arc<Mutex<Vec<u64>>>,
        on_wake: Option<Box<dyn FnMut(u64) + Send>>,
    }

    impl TimeSource for Scripted {
        fn now_ns(&mut self) -> u64 {
            self.now
        }
        fn sleep_until(&mut self, deadline_ns: u64, _stop: &Receiver<()>) -> Wake {
            let Some(late) = self.lateness.pop_front() else {
                return Wake::Stop;
            };
            if let Ok(mut d) = self.deadlines.lock() {
                d.push(deadline_ns);
            }
            self.now = self.now.max(deadline_ns) + late;
            if let Some(f) = &mut self.on_wake {
                f(self.now);
            }
            Wake::Deadline
        }
    }

    fn sim_set(watts: f64) -> MeterSet {
        MeterSet {
            meters: vec![Box::new(SimMeter::constant(watts))],
            unavailable: vec![],
        }
    }

    fn run(
        set: MeterSet,
        start: u64,
        lateness: &[u64],
        queue: usize,
    ) -> (Vec<Tick>, Vec<u64>, Arc<SamplerStatus>) {
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let time = Scripted {
            now: start,
            lateness: lateness.iter().copied().collect(),
            deadlines: deadlines.clone(),
            on_wake: None,
        };
        let cfg = SamplerConfig {
            interval: Duration::from_millis(50),
            queue,
        };
        let (sampler, rx) = Sampler::spawn_with(set, cfg, time).expect("spawn");
        let status = sampler.status().clone();
        drop(sampler); // joins: the script ran out
        let ticks: Vec<Tick> = rx.try_iter().collect();
        let d = deadlines.lock().map(|d| d.clone()).unwrap_or_default();
        (ticks, d, status)
    }

    #[test]
    fn schedule_is_drift_free_and_skips_missed_slots() {
        let mut s = Schedule::new(1_000, Duration::from_millis(50));
        assert_eq!(s.next_deadline(1_000), 1_000 + 50 * MS);
        assert_eq!(s.next_deadline(1_000 + 53 * MS), 1_000 + 100 * MS);
        // Woke 170 ms late: 150 and 200 are gone, next is 250.
        assert_eq!(s.next_deadline(1_000 + 220 * MS), 1_000 + 250 * MS);
        // A clock that did not move still advances one slot.
        assert_eq!(s.next_deadline(0), 1_000 + 300 * MS);
    }

    #[test]
    fn ticks_follow_the_scripted_clock_with_exact_energy() {
        let start = 7 * MS;
        let (ticks, deadlines, status) =
            run(sim_set(100.0), start, &[0, 3 * MS, 0, 120 * MS, 0], 64);
        assert_eq!(deadlines, [57, 107, 157, 207, 357].map(|d| d * MS));
        let ends: Vec<u64> = ticks.iter().map(|t| t.end_ns).collect();
        assert_eq!(ends, [57, 110, 157, 327, 357].map(|d| d * MS));
        let mut prev = start;
        for (i, t) in ticks.iter().enumerate() {
            assert_eq!(t.seq, i as u64 + 1);
            assert_eq!(t.start_ns, prev, "ticks are contiguous");
            prev = t.end_ns;
            // Sim energy is P * t, so each delta is exactly 100 W * dt.
            let exact = SimMeter::energy_at(100_000_000, t.end_ns)
                - SimMeter::energy_at(100_000_000, t.start_ns);
            assert_eq!(t.delta_uj, Some(exact));
            assert_eq!(t.devices[0].delta_uj, Some(exact));
        }
        let snap = status.snapshot();
        assert_eq!(snap.ticks, 5);
        assert_eq!(snap.energy_uj, SimMeter::energy_at(100_000_000, 350 * MS));
        assert_eq!(snap.devices[0].power_w, Some(100.0));
        assert!(snap.devices[0].healthy);
    }

    #[test]
    fn a_full_queue_merges_intervals_without_losing_energy() {
        let (ticks, _, status) = run(sim_set(40.0), 0, &[0; 6], 1);
        // Queue of one, nobody reading: tick 1 sent; 2..=6 merged; the merged one is dropped at stop.
        assert_eq!(ticks.len(), 1);
        let snap = status.snapshot();
        assert_eq!(snap.merged_intervals, 5);
        assert_eq!(snap.dropped_ticks, 1);

        // The merge itself, driven by hand: energy and span add up.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut out = Outbox::new(tx, Arc::new(SamplerStatus::new(0, vec![], vec![])));
        let t = |s: u64, e: u64, d: Option<u64>| Tick {
            seq: 0,
            start_ns: s,
            end_ns: e,
            delta_uj: d,
            devices: vec![DeviceDelta {
                device: "x".into(),
                delta_uj: d,
            }],
        };
        out.offer(t(0, 1, Some(5)));
        out.offer(t(1, 2, Some(7)));
        out.offer(t(2, 3, None));
        assert_eq!(
            rx.try_recv().map(|k| (k.seq, k.delta_uj)).ok(),
            Some((1, Some(5)))
        );
        out.offer(t(3, 4, Some(1)));
        let merged = rx.try_recv().expect("merged tick");
        assert_eq!(
            (merged.seq, merged.start_ns, merged.end_ns, merged.delta_uj),
            (2, 1, 4, Some(8))
        );
    }

    #[test]
    fn counter_anomalies_are_counted_never_negative() {
        let counter = Arc::new(AtomicU64::new(1_000_000));
        let writer = counter.clone();
        // The "engine" writes a new value at each wake: +2 J, a reset to 0.5 J, +1 J.
        let mut script = vec![3_000_000u64, 500_000, 1_500_000].into_iter();
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let time = Scripted {
            now: 0,
            lateness: [0u64; 3].into_iter().collect(),
            deadlines,
            on_wake: Some(Box::new(move |_| {
                if let Some(v) = script.next() {
                    writer.store(v, Ordering::Release);
                }
            })),
        };
        let set = MeterSet {
            meters: vec![Box::new(SimMeter::from_shared_counter("eng", counter))],
            unavailable: vec![],
        };
        let (sampler, rx) =
            Sampler::spawn_with(set, SamplerConfig::default(), time).expect("spawn");
        let status = sampler.status().clone();
        drop(sampler);
        let deltas: Vec<Option<u64>> = rx.try_iter().map(|t| t.delta_uj).collect();
        assert_eq!(deltas, [Some(2_000_000), Some(500_000), Some(1_000_000)]);
        let snap = status.snapshot();
        assert_eq!((snap.devices[0].resets, snap.devices[0].wraps), (1, 0));
        assert_eq!(snap.energy_uj, 3_500_000);
    }

    #[test]
    fn failed_reads_mark_the_interval_and_carry_energy_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e");
        std::fs::write(&path, "0").expect("write");
        let meter = crate::meter::counter_file::CounterFileMeter::from_spec(
            &path,
            crate::meter::Unit::Microjoules,
            None,
        )
        .expect("meter");
        let p = path.clone();
        let mut step = 0;
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let time = Scripted {
            now: 0,
            lateness: [0u64; 3].into_iter().collect(),
            deadlines,
            on_wake: Some(Box::new(move |_| {
                step += 1;
                let _ = match step {
                    1 => std::fs::write(&p, "100"),
                    2 => std::fs::remove_file(&p),
                    _ => std::fs::write(&p, "350"),
                };
            })),
        };
        let set = MeterSet {
            meters: vec![Box::new(meter)],
            unavailable: vec![],
        };
        let (sampler, rx) =
            Sampler::spawn_with(set, SamplerConfig::default(), time).expect("spawn");
        let status = sampler.status().clone();
        drop(sampler);
        let deltas: Vec<Option<u64>> = rx.try_iter().map(|t| t.delta_uj).collect();
        assert_eq!(deltas, [Some(100), None, Some(250)]);
        let d = &status.snapshot().devices[0];
        assert_eq!((d.read_errors, d.healthy, d.energy_uj), (1, true, 350));
        assert!(d
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot read")));
    }

    #[test]
    fn duplicate_labels_are_numbered() {
        let set = MeterSet {
            meters: vec![
                Box::new(SimMeter::constant(1.0)),
                Box::new(SimMeter::constant(2.0)),
                Box::new(SimMeter::constant(3.0)),
            ],
            unavailable: vec![],
        };
        let mut core = SamplerCore::new(set, DEFAULT_INTERVAL);
        let labels: Vec<String> = core
            .status()
            .snapshot()
            .devices
            .into_iter()
            .map(|d| d.info.label)
            .collect();
        assert_eq!(labels, ["sim", "sim#2", "sim#3"]);
        assert!(core.round(0).is_none());
        let tick = core.round(MS).expect("tick");
        let ticked: Vec<&str> = tick.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(ticked, ["sim", "sim#2", "sim#3"]);
        assert_eq!(tick.delta_uj, Some(6_000));
    }

    #[test]
    fn intervals_are_validated_and_real_time_stops_promptly() {
        let bad = SamplerConfig {
            interval: Duration::from_millis(250),
            queue: 1,
        };
        assert!(matches!(
            Sampler::spawn(sim_set(1.0), bad, Clock::new()),
            Err(SamplerError::Interval { given_ms: 250, .. })
        ));
        // With the real clock, dropping the handle stops and joins the thread (no tick needed).
        let cfg = SamplerConfig {
            interval: MAX_INTERVAL,
            queue: 4,
        };
        let (sampler, _rx) = Sampler::spawn(sim_set(1.0), cfg, Clock::new()).expect("spawn");
        drop(sampler);
    }
}
