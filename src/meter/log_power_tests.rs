//! Tests of `log-power`: scripted-time logs that replay back exactly, and one real-clock run.

use super::*;
use crate::meter::replay::{ReplayMeter, Trace};
use crate::meter::sim::SimMeter;
use crate::meter::{Meter, MeterKind};
use crate::sampler::Wake;
use std::sync::mpsc::Receiver;

const MS: u64 = 1_000_000;

/// Jumps to each deadline at once; stops after `wakes` wakes. Nothing sleeps.
struct Instant {
    now: u64,
    wakes: u32,
}

impl TimeSource for Instant {
    fn now_ns(&mut self) -> u64 {
        self.now
    }
    fn sleep_until(&mut self, deadline_ns: u64, _stop: &Receiver<()>) -> Wake {
        if self.wakes == 0 {
            return Wake::Stop;
        }
        self.wakes -= 1;
        self.now = self.now.max(deadline_ns);
        Wake::Deadline
    }
}

fn sim_log(watts: f64, wakes: u32, duration: Option<Duration>) -> (String, Summary) {
    let set = MeterSet {
        meters: vec![Box::new(SimMeter::constant(watts))],
        unavailable: vec![],
    };
    let opts = LogOptions {
        interval: Duration::from_millis(50),
        duration,
        align_phase: false,
    };
    let mut out = Vec::new();
    let stop = AtomicBool::new(false);
    let summary = log(set, opts, Instant { now: 3 * MS, wakes }, &stop, &mut out).expect("log");
    (String::from_utf8(out).expect("utf-8"), summary)
}

#[test]
fn a_scripted_log_replays_back_exactly() {
    let (csv, summary) = sim_log(100.0, 4, None);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], HEADER);
    assert_eq!(lines[1], "0.000000000,sim,0.000000,");
    assert_eq!(lines[2], "0.050000000,sim,5.000000,100.000");
    assert_eq!(lines.len(), 6);
    assert_eq!(summary.samples, 4);
    assert_eq!(summary.energy_j, 20.0);
    assert_eq!(summary.mean_power_w, 100.0);
    assert_eq!(summary.idle_power_w, Some(100.0));

    let trace = Trace::parse(&csv).expect("parseable");
    let mut replay = ReplayMeter::from_trace(trace, "test");
    let t0 = 42 * MS;
    for (t, uj) in [(0, 0), (25, 2_500_000), (50, 5_000_000), (200, 20_000_000)] {
        let r = replay.read(0, t0 + t * MS).expect("read");
        assert_eq!((r.energy_uj, r.ended), (uj, false));
    }
    assert!(replay.read(0, t0 + 201 * MS).expect("read").ended);
}

#[test]
fn duration_stops_the_log() {
    let (csv, summary) = sim_log(10.0, 100, Some(Duration::from_millis(120)));
    // Samples at 50, 100, 150 ms: the one reaching 120 ms is the last.
    assert_eq!(summary.samples, 3);
    assert_eq!(csv.lines().count(), 1 + 1 + 3);
    assert!(summary
        .to_string()
        .starts_with("3 samples over 0.150 s: total 1.500 J, mean 10.000 W"));
}

#[test]
fn unavailable_samples_leave_energy_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing");
    let meter = crate::meter::counter_file::CounterFileMeter::from_spec(
        &path,
        crate::meter::Unit::Microjoules,
        None,
    )
    .expect("meter");
    let set = MeterSet {
        meters: vec![Box::new(meter)],
        unavailable: vec![],
    };
    let opts = LogOptions {
        interval: Duration::from_millis(50),
        duration: None,
        align_phase: false,
    };
    let mut out = Vec::new();
    let summary = log(
        set,
        opts,
        Instant { now: 0, wakes: 2 },
        &AtomicBool::new(false),
        &mut out,
    )
    .expect("log");
    let csv = String::from_utf8(out).expect("utf-8");
    let label = format!("counter-file:{}", path.display());
    assert_eq!(
        csv.lines().nth(2),
        Some(format!("0.050000000,{},,", csv_field(&label)).as_str())
    );
    assert_eq!(summary.unavailable_samples, 2);
    // Unavailable rows are skipped by replay: only the origin row carries energy.
    let trace = Trace::parse(&csv).expect("parseable");
    assert_eq!(trace.devices, vec![(label, vec![(0, 0)])]);
}

#[test]
fn end_to_end_on_the_real_clock_writes_a_replayable_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("power.csv");
    let args = LogPowerArgs {
        meters: vec!["sim:100".parse().expect("spec")],
        interval_ms: 10,
        duration_s: 0.03,
        output: output.clone(),
        summary: true,
    };
    let summary = run_until(&args, &AtomicBool::new(false))
        .expect("run")
        .expect("summary");
    assert!(summary.samples >= 1);
    let spec: MeterSpec = format!("replay:{}", output.display())
        .parse()
        .expect("spec");
    let mut set = build_meters(&[spec]).expect("replay builds");
    let replay = &mut set.meters[0];
    assert_eq!(replay.devices()[0].label, "sim");
    // Constant 100 W: the replayed energy at any time within the trace is 100 W * t (to rounding).
    let r = replay.read(0, 0).expect("read");
    assert_eq!(r.energy_uj, 0);
    let at = replay.read(0, 10 * MS).expect("read").energy_uj;
    assert!((999_000..=1_001_000).contains(&at), "{at}");
}

#[test]
fn bad_arguments_are_typed_errors() {
    let args = |meters: Vec<&str>, duration_s: f64| LogPowerArgs {
        meters: meters
            .into_iter()
            .map(|m| m.parse().expect("spec"))
            .collect(),
        interval_ms: 50,
        duration_s,
        output: "-".into(),
        summary: false,
    };
    let stop = AtomicBool::new(true);
    assert!(matches!(
        run_until(&args(vec!["sim"], -1.0), &stop),
        Err(LogPowerError::Duration(_))
    ));
    assert!(matches!(
        run_until(&args(vec!["nvml"], 0.0), &stop),
        Err(LogPowerError::NoMeter(_))
    ));
    let mut too_slow = args(vec!["sim"], 0.0);
    too_slow.interval_ms = 1000;
    assert!(matches!(
        run_until(&too_slow, &stop),
        Err(LogPowerError::Sampler(_))
    ));
    assert!(matches!(
        run_until(&args(vec!["replay:/nonexistent/x.csv"], 0.0), &stop),
        Err(LogPowerError::Build(_))
    ));
}

#[test]
fn flags_parse_as_data() {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from([
        "joulegate",
        "log-power",
        "--meter",
        "sim:5",
        "--meter",
        "counter-file:/e,unit=mj",
        "--interval-ms",
        "20",
        "--duration-s",
        "1.5",
        "-o",
        "out.csv",
        "--summary",
    ])
    .expect("valid flags");
    let crate::cli::Command::LogPower(a) = cli.command else {
        panic!("wrong subcommand")
    };
    assert_eq!(a.meters.len(), 2);
    assert_eq!(a.meters[0], MeterKind::Sim { watts: 5.0 }.into());
    assert_eq!((a.interval_ms, a.duration_s, a.summary), (20, 1.5, true));
    assert_eq!(a.output, PathBuf::from("out.csv"));
    let defaults = crate::cli::Cli::try_parse_from(["joulegate", "log-power"]).expect("defaults");
    let crate::cli::Command::LogPower(d) = defaults.command else {
        panic!("wrong subcommand")
    };
    assert!(d.meters.is_empty());
    assert_eq!(
        (
            d.interval_ms,
            d.duration_s,
            d.output.as_os_str().to_str(),
            d.summary
        ),
        (100, 0.0, Some("-"), false)
    );
    let bad = crate::cli::Cli::try_parse_from(["joulegate", "log-power", "--meter", "sim:-1"]);
    assert!(bad.is_err_and(|e| e.to_string().contains("sim power \"-1\"")));
    let help = crate::cli::Cli::try_parse_from(["joulegate", "log-power", "--help"]);
    assert!(help.is_err_and(|e| e.kind() == clap::error::ErrorKind::DisplayHelp));
}

/// Time that jumps to each deadline and, at each wake, sets the shared counter to a slow counter's
/// value then. Nothing sleeps.
struct SlowCounterTime {
    now: u64,
    wakes: u32,
    counter: crate::sampler::lumpy::LumpyCounter,
    shared: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TimeSource for SlowCounterTime {
    fn now_ns(&mut self) -> u64 {
        self.now
    }
    fn sleep_until(&mut self, deadline_ns: u64, _stop: &Receiver<()>) -> Wake {
        if self.wakes == 0 {
            return Wake::Stop;
        }
        self.wakes -= 1;
        self.now = self.now.max(deadline_ns);
        self.shared
            .store(self.counter.value_at(self.now), Ordering::Release);
        Wake::Deadline
    }
}

#[test]
fn a_slow_meter_logs_its_power_never_zero_between_updates() {
    // A 100 ms counter at 300 W with 1 % noise, logged every 50 ms for 3 s.
    let counter =
        crate::sampler::lumpy::LumpyCounter::new(300, 100 * MS, 37 * MS, 0.01, 4_000 * MS, 3);
    let shared = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let set = MeterSet {
        meters: vec![Box::new(SimMeter::from_shared_counter(
            "gpu",
            shared.clone(),
        ))],
        unavailable: vec![],
    };
    let time = SlowCounterTime {
        now: 0,
        wakes: 60,
        counter,
        shared,
    };
    let opts = LogOptions {
        interval: Duration::from_millis(50),
        duration: None,
        align_phase: false,
    };
    let mut out = Vec::new();
    let summary = log(set, opts, time, &AtomicBool::new(false), &mut out).expect("log");
    let csv = String::from_utf8(out).expect("utf-8");
    let rows: Vec<(f64, f64)> = csv
        .lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f[0].parse().ok()?, f[3].parse().ok()?))
        })
        .collect();
    assert_eq!(rows.len(), 60, "every sample logged once");
    // Once the period is learned (two updates) and before the end (what is still held at stop
    // goes out as measured), every row shows 300 W within the meter's noise.
    for &(t, w) in rows.iter().filter(|r| r.0 > 0.3 && r.0 <= 2.9) {
        assert!((w / 300.0 - 1.0).abs() < 0.015, "{t} s: {w} W");
    }
    let idle = summary.idle_power_w.unwrap_or(0.0);
    assert!((idle / 300.0 - 1.0).abs() < 0.03, "idle estimate {idle} W");
    // Announcements of held intervals are neither samples nor unavailable ones.
    assert_eq!((summary.samples, summary.unavailable_samples), (60, 0));
}
