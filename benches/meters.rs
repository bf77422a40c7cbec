//! Cost of one sampling round per meter kind (sim, counter-file, replay), and the sampler thread's CPU
//! at 20 Hz as a share of one core (budget: 0.5 %, DESIGN.md section 7).
//!
//! The CPU figure is measured, not only estimated: the real sampler thread runs at 50 ms for a few
//! seconds with all three kinds, and its on-CPU time is read from `/proc/self/task/<tid>/schedstat`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use joulegate::clock::Clock;
use joulegate::meter::counter_file::CounterFileMeter;
use joulegate::meter::replay::{ReplayMeter, Trace, HEADER};
use joulegate::meter::sim::SimMeter;
use joulegate::meter::{Meter, MeterSet, Unit};
use joulegate::sampler::{Sampler, SamplerConfig, SamplerCore};

const STEP_NS: u64 = 50_000_000;

fn set(meter: Box<dyn Meter>) -> MeterSet {
    MeterSet {
        meters: vec![meter],
        unavailable: vec![],
    }
}

/// An hour-long 10 Hz trace of one device at 300 W.
fn trace() -> Trace {
    let mut csv = format!("{HEADER}\n");
    for i in 0..36_000u64 {
        let uj = i * 30_000_000;
        csv.push_str(&format!(
            "{}.{:09},gpu0,{}.{:06},300.000\n",
            i / 10,
            (i % 10) * 100_000_000,
            uj / 1_000_000,
            uj % 1_000_000
        ));
    }
    Trace::parse(&csv).expect("bench trace parses")
}

fn counter_file(dir: &std::path::Path) -> CounterFileMeter {
    let path = dir.join("energy_uj");
    std::fs::write(&path, "123456789\n").expect("write counter");
    CounterFileMeter::from_spec(&path, Unit::Microjoules, None).expect("counter-file meter")
}

fn bench_round(c: &mut Criterion, name: &str, meter: Box<dyn Meter>, step_ns: u64) {
    let mut core = SamplerCore::new(set(meter), Duration::from_millis(50));
    let mut t = 0u64;
    let _ = core.round(t);
    c.bench_function(&format!("sampling round/{name}"), |b| {
        b.iter(|| {
            t += step_ns;
            black_box(core.round(black_box(t)))
        })
    });
}

/// On-CPU nanoseconds of the thread named `name` (comm is truncated to 15 bytes by the kernel).
fn thread_cpu_ns(name: &str) -> Option<u64> {
    let short: String = name.chars().take(15).collect();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == short {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn measure_cpu_at_20hz(seconds: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let meters = MeterSet {
        meters: vec![
            Box::new(SimMeter::constant(300.0)),
            Box::new(counter_file(dir.path())),
            Box::new(ReplayMeter::from_trace(trace(), "bench")),
        ],
        unavailable: vec![],
    };
    let config = SamplerConfig {
        interval: Duration::from_millis(50),
        queue: 64,
        meter_period: None,
        align_phase: false,
    };
    let (sampler, rx) = Sampler::spawn(meters, config, Clock::new()).expect("sampler starts");
    // Let the thread start and take its baseline before the window opens.
    let _ = rx.recv();
    let cpu0 = thread_cpu_ns("joulegate-sampler");
    let wall0 = Instant::now();
    let mut ticks = 0u64;
    while wall0.elapsed() < Duration::from_secs(seconds) {
        if rx.recv().is_ok() {
            ticks += 1;
        }
    }
    let cpu1 = thread_cpu_ns("joulegate-sampler");
    let wall = wall0.elapsed();
    drop(sampler);
    match (cpu0, cpu1) {
        (Some(a), Some(b)) => {
            let pct = (b - a) as f64 / wall.as_nanos() as f64 * 100.0;
            println!(
                "sampler thread at 20 Hz (sim + counter-file + replay): {ticks} ticks in {:.2} s, \
                 {:.1} us CPU per tick, {pct:.4} % of one core (budget 0.5 %)",
                wall.as_secs_f64(),
                (b - a) as f64 / ticks.max(1) as f64 / 1e3,
            );
        }
        _ => println!("sampler CPU: /proc/self/task/*/schedstat not readable here; no figure"),
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let dir = tempfile::tempdir().expect("tempdir");
    bench_round(&mut c, "sim", Box::new(SimMeter::constant(300.0)), STEP_NS);
    bench_round(
        &mut c,
        "counter-file",
        Box::new(counter_file(dir.path())),
        STEP_NS,
    );
    // 1 us steps keep the replay inside its hour-long trace (interpolating) for the whole run.
    bench_round(
        &mut c,
        "replay",
        Box::new(ReplayMeter::from_trace(trace(), "bench")),
        1_000,
    );
    c.final_summary();
    // `cargo bench -- --test` (smoke mode) only checks that the benches run.
    if !std::env::args().any(|a| a == "--test") {
        measure_cpu_at_20hz(5);
    }
}
