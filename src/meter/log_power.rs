//! `joulegate log-power`: a CSV power and energy log of any meter set.
//!
//! Writes the [`super::replay`] trace format (`time_s,device,energy_j,power_w`), one row per device
//! per sample, so `replay:FILE` reads a log back as a meter. A first row per device at `time_s = 0`
//! holds energy 0 and an empty power (no interval yet). `energy_j` is cumulative since the start and
//! empty for an unavailable sample; `power_w` is the mean power since that device's previous good
//! sample. A meter slower than the sampling interval is logged through the sampler's spreading, so its
//! rows show the power over the counter's updates (never 0 W between two of them), each row
//! written up to one meter period after its time. Rows of one sample are written and flushed together, and Ctrl-C only sets a flag the writer
//! checks between samples, so the file is a valid CSV at any point.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use super::replay::{csv_field, HEADER};
use super::{build_meters, default_meters, MeterSet, MeterSpec};
use crate::clock::Clock;
use crate::sampler::{ClockTime, Sampler, SamplerConfig, SamplerError, TimeSource};

/// Flags of `joulegate log-power`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogPowerArgs {
    /// Meter specs (repeatable, see [`MeterSpec`]); empty = NVML if it initialises.
    #[arg(
        long = "meter",
        value_name = "SPEC",
        help = "Meter spec, repeatable: nvml[:0,1|:GPU-uuid][,counter_ms=N], \
                counter-file:PATH[,unit=uj|mj|j][,wrap=N|wrap-file=PATH], rapl[:ROOT], sim[:WATTS], \
                replay:PATH; any may end with ,period_ms=N. Default: nvml if it initialises"
    )]
    pub meters: Vec<MeterSpec>,
    /// Sampling interval in milliseconds (1 to 200).
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub interval_ms: u64,
    /// How long to log, in seconds; 0 or absent = until Ctrl-C.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub duration_s: f64,
    /// Output CSV file; `-` = stdout.
    #[arg(long, short, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    /// Print mean power, total energy and an idle estimate to stderr at the end.
    #[arg(long)]
    pub summary: bool,
}

/// Why `log-power` failed.
#[derive(Debug, thiserror::Error)]
pub enum LogPowerError {
    /// A meter spec could not be built.
    #[error(transparent)]
    Build(#[from] super::BuildError),
    /// No meter works.
    #[error("no meter available: {0}")]
    NoMeter(String),
    /// The sampler could not start.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// `--duration-s` is negative or not finite.
    #[error("--duration-s {0} is not a finite, non-negative number of seconds")]
    Duration(f64),
    /// Writing the log failed (the output is named by [`run_until`]'s [`LogPowerError::Write`]).
    #[error("cannot write the log: {0}")]
    Output(#[from] std::io::Error),
    /// Writing the CSV file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output (`-` for stdout).
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the log measured, for `--summary`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples written (ticks).
    pub samples: u64,
    /// Seconds covered.
    pub seconds: f64,
    /// Energy over all devices, joules.
    pub energy_j: f64,
    /// Mean power over all devices, watts.
    pub mean_power_w: f64,
    /// Idle estimate: the 5th percentile of per-sample total power, watts.
    pub idle_power_w: Option<f64>,
    /// Samples with at least one unavailable device.
    pub unavailable_samples: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} samples over {:.3} s: total {:.3} J, mean {:.3} W, idle estimate (p5 of sample power) ",
            self.samples, self.seconds, self.energy_j, self.mean_power_w
        )?;
        match self.idle_power_w {
            Some(w) => write!(f, "{w:.3} W")?,
            None => f.write_str("n/a")?,
        }
        if self.unavailable_samples > 0 {
            write!(
                f,
                ", {} samples with unavailable devices",
                self.unavailable_samples
            )?;
        }
        Ok(())
    }
}

/// How long and how often to log.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// Sampling interval.
    pub interval: Duration,
    /// Stop after this much time; `None` = until stopped.
    pub duration: Option<Duration>,
    /// Align the reads with a slow counter's updates first ([`crate::sampler::align`]).
    pub align_phase: bool,
}

/// Runs `log-power` from its flags, stopping at the duration or on Ctrl-C.
pub fn run(args: LogPowerArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async move {
        let mut work = tokio::task::spawn_blocking(move || run_until(&args, &worker_stop));
        tokio::select! {
            r = &mut work => r,
            _ = tokio::signal::ctrl_c() => {
                stop.store(true, Ordering::Relaxed);
                work.await
            }
        }
    })??;
    if let Some(s) = summary {
        eprintln!("log-power: {s}");
    }
    Ok(())
}

/// Runs `log-power` on the real clock until the duration passes or `stop` is set. Returns the summary
/// when `--summary` was asked.
pub fn run_until(args: &LogPowerArgs, stop: &AtomicBool) -> Result<Option<Summary>, LogPowerError> {
    let set = if args.meters.is_empty() {
        default_meters()
    } else {
        build_meters(&args.meters)?
    };
    if set.device_count() == 0 {
        let why: Vec<String> = set
            .unavailable
            .iter()
            .map(|u| format!("{}: {}", u.spec, u.reason))
            .collect();
        return Err(LogPowerError::NoMeter(why.join("; ")));
    }
    for u in &set.unavailable {
        tracing::warn!(meter = %u.spec, "{}", u.reason);
    }
    if !args.duration_s.is_finite() || args.duration_s < 0.0 {
        return Err(LogPowerError::Duration(args.duration_s));
    }
    let opts = LogOptions {
        interval: Duration::from_millis(args.interval_ms),
        duration: (args.duration_s > 0.0).then(|| Duration::from_secs_f64(args.duration_s)),
        align_phase: true,
    };
    let werr = |source| LogPowerError::Write {
        path: args.output.clone(),
        source,
    };
    let result = if args.output.as_os_str() == "-" {
        log(
            set,
            opts,
            ClockTime(Clock::new()),
            stop,
            std::io::stdout().lock(),
        )
    } else {
        let file = std::fs::File::create(&args.output).map_err(werr)?;
        log(set, opts, ClockTime(Clock::new()), stop, file)
    };
    match result {
        Ok(summary) => Ok(args.summary.then_some(summary)),
        Err(LogPowerError::Output(e)) => Err(werr(e)),
        Err(e) => Err(e),
    }
}

/// Logs `set` as CSV into `out` until the duration passes, `stop` is set, or `time` stops the sampler.
pub fn log<T: TimeSource, W: Write>(
    set: MeterSet,
    opts: LogOptions,
    time: T,
    stop: &AtomicBool,
    out: W,
) -> Result<Summary, LogPowerError> {
    let config = SamplerConfig {
        interval: opts.interval,
        queue: 1024,
        // Learned per device, or set per meter with a spec's `period_ms=N`.
        meter_period: None,
        align_phase: opts.align_phase,
    };
    let (sampler, rx) = Sampler::spawn_with(set, config, time)?;
    let labels: Vec<String> = sampler
        .status()
        .devices()
        .iter()
        .map(|d| d.info().label.clone())
        .collect();
    let mut w = Writer::new(out, labels)?;
    let limit_ns = opts
        .duration
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut done = false;
    while !done && !stop.load(Ordering::Relaxed) {
        // The timeout only bounds how late a Ctrl-C is noticed.
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(tick) => done = w.tick(&tick, limit_ns)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The slowest counter's period, if slower than the samples: its last one is cut short at stop.
    let tail_ns = sampler
        .status()
        .snapshot()
        .devices
        .iter()
        .filter(|d| !d.updates_every_read)
        .filter_map(|d| d.update_period_ms)
        .map(|ms| (ms * 1e6) as u64)
        .max()
        .unwrap_or(0);
    drop(sampler);
    // Samples already taken are written too, up to the duration.
    for tick in rx.try_iter() {
        if done || w.tick(&tick, limit_ns)? {
            break;
        }
    }
    Ok(w.summary(tail_ns))
}

/// CSV rows and running sums.
struct Writer<W: Write> {
    out: std::io::BufWriter<W>,
    labels: Vec<String>,
    origin: Option<u64>,
    cum_uj: Vec<u64>,
    last_good_ns: Vec<Option<u64>>,
    /// Each sample's end and mean power (W), for the idle estimate.
    powers: Vec<(u64, f64)>,
    summary: Summary,
    total_uj: u64,
}

impl<W: Write> Writer<W> {
    fn new(out: W, labels: Vec<String>) -> std::io::Result<Self> {
        let mut out = std::io::BufWriter::new(out);
        writeln!(out, "{HEADER}")?;
        out.flush()?;
        let n = labels.len();
        Ok(Writer {
            out,
            labels,
            origin: None,
            cum_uj: vec![0; n],
            last_good_ns: vec![None; n],
            powers: Vec::new(),
            summary: Summary::default(),
            total_uj: 0,
        })
    }

    /// Writes one sample; returns whether the duration has been reached.
    fn tick(&mut self, tick: &crate::tick::Tick, limit_ns: Option<u64>) -> std::io::Result<bool> {
        if tick.phase == crate::tick::TickPhase::Announce {
            // A slow counter's interval ended and its energy follows in a fill: nothing to log
            // yet (counted, it read as an unavailable sample: an H200's log at 50 ms said a third
            // of its samples were).
            return Ok(false);
        }
        let origin = match self.origin {
            Some(o) => o,
            None => {
                self.origin = Some(tick.start_ns);
                for label in &self.labels {
                    writeln!(self.out, "0.000000000,{},0.000000,", csv_field(label))?;
                }
                self.last_good_ns
                    .iter_mut()
                    .for_each(|t| *t = Some(tick.start_ns));
                tick.start_ns
            }
        };
        let t = tick.end_ns.saturating_sub(origin);
        for (i, d) in tick.devices.iter().enumerate().take(self.labels.len()) {
            let label = csv_field(&self.labels[i]);
            write!(
                self.out,
                "{}.{:09},{label},",
                t / 1_000_000_000,
                t % 1_000_000_000
            )?;
            match d.delta_uj {
                Some(delta) => {
                    self.cum_uj[i] = self.cum_uj[i].saturating_add(delta);
                    let c = self.cum_uj[i];
                    let since = self.last_good_ns[i]
                        .replace(tick.end_ns)
                        .unwrap_or(tick.start_ns);
                    let dt = tick.end_ns.saturating_sub(since);
                    write!(self.out, "{}.{:06},", c / 1_000_000, c % 1_000_000)?;
                    if dt > 0 {
                        write!(self.out, "{:.3}", delta as f64 * 1e3 / dt as f64)?;
                    }
                    writeln!(self.out)?;
                }
                None => writeln!(self.out, ",")?,
            }
        }
        self.out.flush()?;
        self.summary.samples += 1;
        self.summary.seconds = t as f64 / 1e9;
        match tick.delta_uj {
            Some(d) => {
                self.total_uj = self.total_uj.saturating_add(d);
                let dt = tick.end_ns.saturating_sub(tick.start_ns);
                if dt > 0 {
                    self.powers.push((tick.end_ns, d as f64 * 1e3 / dt as f64));
                }
            }
            None => {
                self.summary.unavailable_samples += 1;
                let known: u64 = tick.devices.iter().filter_map(|d| d.delta_uj).sum();
                self.total_uj = self.total_uj.saturating_add(known);
            }
        }
        Ok(limit_ns.is_some_and(|l| t >= l))
    }

    /// The summary; samples ending in the last `tail_ns` are left out of the idle estimate (a slow
    /// counter's last period: at stop, its energy since the last update was never measured).
    fn summary(mut self, tail_ns: u64) -> Summary {
        let _ = self.out.flush();
        let mut s = self.summary;
        s.energy_j = self.total_uj as f64 / 1e6;
        s.mean_power_w = if s.seconds > 0.0 {
            s.energy_j / s.seconds
        } else {
            0.0
        };
        let last = self.powers.last().map_or(0, |p| p.0);
        let mut powers: Vec<f64> = self
            .powers
            .iter()
            .filter(|p| p.0.saturating_add(tail_ns) <= last)
            .map(|p| p.1)
            .collect();
        powers.sort_by(f64::total_cmp);
        s.idle_power_w = (!powers.is_empty()).then(|| {
            let idx = ((powers.len() - 1) as f64 * 0.05).round() as usize;
            powers[idx.min(powers.len() - 1)]
        });
        s
    }
}

#[cfg(test)]
#[path = "log_power_tests.rs"]
mod tests;
