//! Sampler tests: scripted time, no sleeping (meters slower than the sampler in `slow_counter`).

use super::*;
use crate::clock::Clock;
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
        meter_period: None,
        align_phase: false,
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
    let (ticks, deadlines, status) = run(sim_set(100.0), start, &[0, 3 * MS, 0, 120 * MS, 0], 64);
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
        phase: crate::tick::TickPhase::Whole,
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
    // Announcements carry no devices, only an estimate of their energy: merged, the estimates
    // add up, and there is none where one of them had none.
    let a = |s: u64, e: u64, d: Option<u64>| Tick {
        devices: Vec::new(),
        phase: crate::tick::TickPhase::Announce,
        ..t(s, e, d)
    };
    let span = |k: Tick| (k.start_ns, k.end_ns, k.delta_uj);
    out.offer(a(4, 5, Some(3)));
    out.offer(a(5, 6, Some(4)));
    out.offer(a(6, 7, Some(2)));
    assert_eq!(rx.try_recv().map(span).ok(), Some((4, 5, Some(3))));
    out.offer(a(7, 8, Some(1)));
    assert_eq!(rx.try_recv().map(span).ok(), Some((5, 8, Some(7))));
    out.offer(a(8, 9, Some(1)));
    out.offer(a(9, 10, None));
    assert_eq!(rx.try_recv().map(span).ok(), Some((8, 9, Some(1))));
    out.offer(a(10, 11, Some(1)));
    assert_eq!(rx.try_recv().map(span).ok(), Some((9, 11, None)));
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
    let (sampler, rx) = Sampler::spawn_with(set, SamplerConfig::default(), time).expect("spawn");
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
    let (sampler, rx) = Sampler::spawn_with(set, SamplerConfig::default(), time).expect("spawn");
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
    assert!(core.round(0).is_empty());
    let tick = core.round(MS).pop().expect("tick");
    let ticked: Vec<&str> = tick.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(ticked, ["sim", "sim#2", "sim#3"]);
    assert_eq!(tick.delta_uj, Some(6_000));
}

#[test]
fn intervals_are_validated_and_real_time_stops_promptly() {
    let bad = SamplerConfig {
        interval: Duration::from_millis(250),
        queue: 1,
        meter_period: None,
        align_phase: false,
    };
    assert!(matches!(
        Sampler::spawn(sim_set(1.0), bad, Clock::new()),
        Err(SamplerError::Interval { given_ms: 250, .. })
    ));
    // With the real clock, dropping the handle stops and joins the thread (no tick needed).
    let cfg = SamplerConfig {
        interval: MAX_INTERVAL,
        queue: 4,
        meter_period: None,
        align_phase: false,
    };
    let (sampler, _rx) = Sampler::spawn(sim_set(1.0), cfg, Clock::new()).expect("spawn");
    drop(sampler);
}

#[test]
fn a_replay_past_its_end_holds_and_turns_unhealthy() {
    let csv = format!(
        "{}\n0,gpu,0,\n0.1,gpu,10,100\n",
        crate::meter::replay::HEADER
    );
    let trace = crate::meter::replay::Trace::parse(&csv).expect("trace");
    let meter = crate::meter::replay::ReplayMeter::from_trace(trace, "test");
    let mut core = SamplerCore::new(
        MeterSet {
            meters: vec![Box::new(meter)],
            unavailable: vec![],
        },
        DEFAULT_INTERVAL,
    );
    assert!(core.round(0).is_empty());
    assert_eq!(
        core.round(100 * MS).pop().and_then(|t| t.delta_uj),
        Some(10_000_000)
    );
    assert!(core.status().snapshot().devices[0].healthy);
    assert_eq!(core.round(200 * MS).pop().and_then(|t| t.delta_uj), Some(0));
    let d = &core.status().snapshot().devices[0];
    assert!(d.ended && !d.healthy);
    assert_eq!(d.energy_uj, 10_000_000);
}

mod slow_counter;
