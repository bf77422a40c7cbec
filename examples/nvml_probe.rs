//! Measures what the NVML meter reads on a real GPU: how long each NVML call takes, how often the
//! energy counter (`nvmlDeviceGetTotalEnergyConsumption`) actually moves, and how its energy compares
//! with the instantaneous power field integrated over the same reads (and with the one-second
//! averaged `power_usage`, which joulegate never uses).
//!
//! ```text
//! cargo run --release --example nvml_probe -- --seconds 30 --poll-us 1000 --csv reads.csv
//! ```
//!
//! Every read is one row of the CSV (`unix_ns,energy_mj,energy_call_ns,energy_field_mj,
//! energy_field_call_ns,instant_mw,instant_call_ns,average_mw,average_call_ns`), wall-clock time so a load generator in another process can mark its
//! phases on the same clock. The summary on stdout gives call latencies (p50 / p99 / max), the
//! intervals between counter changes and the size of each change, and energy by the three methods.
//! `benches/nvml/check.sh` runs it under a known GPU load; see the README ("NVML on real hardware").

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_POWER_INSTANT, NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
};
use nvml_wrapper::{Device, Nvml};

struct Args {
    seconds: f64,
    poll_us: u64,
    csv: Option<String>,
    device: u32,
    /// Which sources to read: `counter`, `field` (the energy field), `instant`, `average`.
    sources: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 10.0,
        poll_us: 1000,
        csv: None,
        device: 0,
        sources: ["counter", "field", "instant", "average"]
            .map(String::from)
            .to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--poll-us" => {
                args.poll_us = value()?.parse().map_err(|e| format!("--poll-us: {e}"))?
            }
            "--csv" => args.csv = Some(value()?),
            "--sources" => args.sources = value()?.split(',').map(String::from).collect(),
            "--device" => args.device = value()?.parse().map_err(|e| format!("--device: {e}"))?,
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --seconds S --poll-us US --csv FILE --device N \
                     --sources counter,field,instant,average"
                ))
            }
        }
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err("--seconds must be a positive number".into());
    }
    Ok(args)
}

/// One NVML field as an integer, as the meter reads it; `None` if the read fails.
fn field(device: &Device<'_>, id: u32) -> Option<u64> {
    joulegate::meter::nvml::field_u64(device, id).ok()
}

/// One read of all three sources, with the time each call took.
struct Row {
    unix_ns: u128,
    energy_mj: Option<u64>,
    energy_call_ns: u64,
    energy_field_mj: Option<u64>,
    energy_field_call_ns: u64,
    instant_mw: Option<u64>,
    instant_call_ns: u64,
    average_mw: Option<u64>,
    average_call_ns: u64,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed().as_nanos() as u64)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx]
}

fn describe(name: &str, mut values: Vec<f64>, unit: &str) {
    values.sort_by(f64::total_cmp);
    println!(
        "{name:<34} n={:<7} p10 {:>9.3}  p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  max {:>9.3} {unit}",
        values.len(),
        percentile(&values, 0.10),
        percentile(&values, 0.50),
        percentile(&values, 0.90),
        percentile(&values, 0.99),
        values.last().copied().unwrap_or(f64::NAN),
    );
}

/// Trapezoid integral of a power column (mW) over the rows' wall-clock times, in joules.
fn integrate(rows: &[Row], power: impl Fn(&Row) -> Option<u64>) -> f64 {
    let mut joules = 0.0;
    let mut last: Option<(u128, u64)> = None;
    for row in rows {
        if let Some(p) = power(row) {
            if let Some((t, q)) = last {
                joules += (p + q) as f64 / 2.0 / 1000.0 * (row.unix_ns - t) as f64 / 1e9;
            }
            last = Some((row.unix_ns, p));
        }
    }
    joules
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nvml_probe: {e}");
            std::process::exit(2);
        }
    };
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nvml_probe: NVML unavailable: {e}");
            std::process::exit(1);
        }
    };
    let device = match nvml.device_by_index(args.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("nvml_probe: GPU {}: {e}", args.device);
            std::process::exit(1);
        }
    };
    println!(
        "device {}: {} ({}), driver {}, NVML {}, power limit {} mW",
        args.device,
        device.name().unwrap_or_default(),
        device.uuid().unwrap_or_default(),
        nvml.sys_driver_version().unwrap_or_default(),
        nvml.sys_nvml_version().unwrap_or_default(),
        device
            .enforced_power_limit()
            .map(|p| p.to_string())
            .unwrap_or_else(|e| e.to_string()),
    );

    let poll = Duration::from_micros(args.poll_us);
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut rows = Vec::with_capacity((args.seconds * 1e6 / args.poll_us.max(1) as f64) as usize);
    let mut next = Instant::now();
    while Instant::now() < end {
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let on = |name: &str| args.sources.iter().any(|s| s == name);
        let (energy_mj, energy_call_ns) =
            timed(|| on("counter").then(|| device.total_energy_consumption().ok())?);
        let (energy_field_mj, energy_field_call_ns) =
            timed(|| on("field").then(|| field(&device, NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION))?);
        let (instant_mw, instant_call_ns) =
            timed(|| on("instant").then(|| field(&device, NVML_FI_DEV_POWER_INSTANT))?);
        let (average_mw, average_call_ns) =
            timed(|| on("average").then(|| device.power_usage().ok().map(u64::from))?);
        rows.push(Row {
            unix_ns,
            energy_mj,
            energy_call_ns,
            energy_field_mj,
            energy_field_call_ns,
            instant_mw,
            instant_call_ns,
            average_mw,
            average_call_ns,
        });
        next += poll;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }

    if let Some(path) = &args.csv {
        let file = std::fs::File::create(path).unwrap_or_else(|e| {
            eprintln!("nvml_probe: cannot create {path}: {e}");
            std::process::exit(1);
        });
        let mut out = std::io::BufWriter::new(file);
        let cell = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let written = (|| -> std::io::Result<()> {
            writeln!(out, "unix_ns,energy_mj,energy_call_ns,energy_field_mj,energy_field_call_ns,instant_mw,instant_call_ns,average_mw,average_call_ns")?;
            for r in &rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{}",
                    r.unix_ns,
                    cell(r.energy_mj),
                    r.energy_call_ns,
                    cell(r.energy_field_mj),
                    r.energy_field_call_ns,
                    cell(r.instant_mw),
                    r.instant_call_ns,
                    cell(r.average_mw),
                    r.average_call_ns
                )?;
            }
            out.flush()
        })();
        if let Err(e) = written {
            eprintln!("nvml_probe: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }

    let failed = |f: fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    println!(
        "reads: {} over {:.1} s (poll {} us); failed: energy {}, energy field {}, instant {}, average {}",
        rows.len(),
        args.seconds,
        args.poll_us,
        failed(|r| r.energy_mj.is_none()),
        failed(|r| r.energy_field_mj.is_none()),
        failed(|r| r.instant_mw.is_none()),
        failed(|r| r.average_mw.is_none()),
    );
    let micros = |f: fn(&Row) -> u64| rows.iter().map(|r| f(r) as f64 / 1e3).collect::<Vec<_>>();
    describe(
        "call total_energy_consumption",
        micros(|r| r.energy_call_ns),
        "us",
    );
    describe(
        "call field TOTAL_ENERGY_CONSUMPTION",
        micros(|r| r.energy_field_call_ns),
        "us",
    );
    describe(
        "call field POWER_INSTANT",
        micros(|r| r.instant_call_ns),
        "us",
    );
    describe("call power_usage", micros(|r| r.average_call_ns), "us");

    // Counter changes: when the counter moves, and by how much.
    let mut changes: Vec<(u128, u64)> = Vec::new();
    let mut last: Option<u64> = None;
    for r in &rows {
        if let Some(e) = r.energy_mj {
            if let Some(prev) = last {
                if e != prev {
                    changes.push((r.unix_ns, e.saturating_sub(prev)));
                }
            }
            last = Some(e);
        }
    }
    let intervals: Vec<f64> = changes
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) as f64 / 1e6)
        .collect();
    describe("counter: ms between changes", intervals, "ms");
    describe(
        "counter: mJ per change",
        changes.iter().map(|c| c.1 as f64).collect(),
        "mJ",
    );
    let mut field_changes: Vec<u128> = Vec::new();
    let mut last_field = None;
    for r in &rows {
        if r.energy_field_mj.is_some() && r.energy_field_mj != last_field {
            if last_field.is_some() {
                field_changes.push(r.unix_ns);
            }
            last_field = r.energy_field_mj;
        }
    }
    describe(
        "energy field: ms between changes",
        field_changes
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1e6)
            .collect(),
        "ms",
    );
    let same = rows
        .iter()
        .filter(|r| r.energy_mj.is_some() && r.energy_mj == r.energy_field_mj)
        .count();
    println!(
        "energy field equal to the counter call in {same} of {} reads",
        rows.len()
    );
    let mut instant_changes = 0usize;
    let mut last_instant = None;
    for r in &rows {
        if r.instant_mw.is_some() && r.instant_mw != last_instant {
            if last_instant.is_some() {
                instant_changes += 1;
            }
            last_instant = r.instant_mw;
        }
    }
    println!(
        "instant power changed value {instant_changes} times ({:.1} per s)",
        instant_changes as f64 / args.seconds
    );

    let first = rows
        .iter()
        .find_map(|r| r.energy_mj.map(|e| (r.unix_ns, e)));
    let last = rows
        .iter()
        .rev()
        .find_map(|r| r.energy_mj.map(|e| (r.unix_ns, e)));
    if let (Some((t0, e0)), Some((t1, e1))) = (first, last) {
        let counter_j = e1.saturating_sub(e0) as f64 / 1e3;
        let span_s = (t1 - t0) as f64 / 1e9;
        let instant_j = integrate(&rows, |r| r.instant_mw);
        let average_j = integrate(&rows, |r| r.average_mw);
        println!(
            "energy over {span_s:.2} s: counter {counter_j:.1} J ({:.1} W); instant power integrated {instant_j:.1} J ({:+.2} % vs counter); power_usage integrated {average_j:.1} J ({:+.2} %)",
            counter_j / span_s,
            (instant_j / counter_j - 1.0) * 100.0,
            (average_j / counter_j - 1.0) * 100.0,
        );
    }
    // CPU time of this process (utime and stime of /proc/self/stat, in clock ticks of 10 ms).
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (user, system) = (ticks(11) / 100.0, ticks(12) / 100.0);
        println!(
            "process CPU: user {user:.2} s, system {system:.2} s = {:.2} % of one core over the run",
            (user + system) / args.seconds * 100.0,
        );
    }
}
