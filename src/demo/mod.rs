//! `joulegate demo`: the simulated vLLM-like engine, its energy meter and the proxy in one process,
//! a short seeded mixed workload sent through the proxy by a real HTTP client, then a per-request
//! table (energy, J/token, active energy, CO2, status, error against the engine's ground truth) and
//! the books with the exact conservation line. No GPU, no vLLM, nothing beyond loopback.
//!
//! - [`world`]: start the engine, meter and proxy; drive a plan; collect records and truth;
//! - [`report`]: rows, error statistics, conservation, text and JSON renderings.
//!
//! Owns only the demo's orchestration; the accuracy bench (`benches/accuracy.rs`) reuses [`world`].

pub mod report;
pub mod world;

use std::time::Duration;

pub use report::{DemoReport, DemoRow, ErrorStats};
pub use world::{Sent, World, WorldOptions};

use crate::sim::workload::{plan, WorkloadKind};

/// Flags of `joulegate demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Requests in the workload.
    #[arg(long, default_value_t = 40)]
    pub requests: usize,
    /// Seed of the workload and the engine (same seed, same requests).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Wall seconds over which the requests arrive (the run ends when the last one is settled).
    #[arg(long, default_value_t = 8.0)]
    pub duration_s: f64,
    /// Simulated seconds per wall second of the engine (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Grid carbon intensity for the CO2 column, g CO2 per kWh.
    #[arg(long, default_value_t = 400.0)]
    pub carbon_intensity_g_per_kwh: f64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What the demo runs, as data (the flags, validated).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Requests in the workload.
    pub requests: usize,
    /// Seed of the workload and the engine.
    pub seed: u64,
    /// Wall time over which the requests arrive.
    pub duration: Duration,
    /// How the world is built.
    pub world: WorldOptions,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A flag is out of range.
    #[error("--{name} must be {what}, got {value}")]
    Flag {
        /// The flag.
        name: &'static str,
        /// What it must be.
        what: &'static str,
        /// The rejected value, as given.
        value: String,
    },
    /// The engine's time scale must be a positive number.
    #[error("time scale must be a finite positive number, got {0}")]
    TimeScale(f64),
    /// Binding a loopback listener or starting the mock failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy's configuration was rejected.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The proxy could not start.
    #[error("proxy: {0}")]
    App(#[from] crate::app::AppError),
    /// The mock was not started in engine timing (no energy counter).
    #[error("the simulated engine has no energy counter")]
    NoEngineCounter,
    /// The proxy listener has no local address.
    #[error("the proxy listener has no address")]
    NoProxyAddress,
    /// Accounting did not retire every request in time.
    #[error("accounting did not settle in time: {in_flight} requests in flight, {pending_uj} uJ pending")]
    NotSettled {
        /// Requests still registered.
        in_flight: u64,
        /// Energy still held.
        pending_uj: u64,
    },
}

impl DemoOptions {
    /// Validates the flags.
    pub fn from_args(args: &DemoArgs) -> Result<DemoOptions, DemoError> {
        if args.requests == 0 || args.requests > 10_000 {
            return Err(DemoError::Flag {
                name: "requests",
                what: "between 1 and 10000",
                value: args.requests.to_string(),
            });
        }
        if !(args.duration_s.is_finite() && (0.0..=3600.0).contains(&args.duration_s)) {
            return Err(DemoError::Flag {
                name: "duration-s",
                what: "between 0 and 3600",
                value: args.duration_s.to_string(),
            });
        }
        if !(args.time_scale.is_finite() && args.time_scale > 0.0 && args.time_scale <= 1000.0) {
            return Err(DemoError::Flag {
                name: "time-scale",
                what: "above 0 and at most 1000",
                value: args.time_scale.to_string(),
            });
        }
        let ci = args.carbon_intensity_g_per_kwh;
        if !(ci.is_finite() && ci >= 0.0) {
            return Err(DemoError::Flag {
                name: "carbon-intensity-g-per-kwh",
                what: "a finite non-negative number",
                value: ci.to_string(),
            });
        }
        Ok(DemoOptions {
            requests: args.requests,
            seed: args.seed,
            duration: Duration::from_secs_f64(args.duration_s),
            world: WorldOptions {
                seed: args.seed,
                time_scale: args.time_scale,
                carbon_g_per_kwh: Some(ci),
                ..WorldOptions::default()
            },
        })
    }
}

/// Runs the demo on the current tokio runtime: starts the world, sends the seeded mixed workload
/// (streaming and not, chat and completions, three tags), waits until every request is settled,
/// stops the world and returns the report.
pub async fn run(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    let gap = opts.duration / u32::try_from(opts.requests.max(1)).unwrap_or(u32::MAX);
    let workload = plan(WorkloadKind::Mixed, opts.seed, opts.requests, gap);
    let world = World::start(&opts.world).await?;
    let sent = world.drive(&workload, "demo").await;
    let report = world.collect(sent).await;
    world.stop().await;
    report
}

/// `joulegate demo`: runs it and prints the table (or JSON) on stdout.
pub async fn run_cli(args: DemoArgs) -> Result<(), DemoError> {
    let opts = DemoOptions::from_args(&args)?;
    if !args.json {
        println!(
            "joulegate demo: {} requests over {:.1} s through the proxy to a simulated H100 serving an 8B model (seed {}, time scale {})",
            opts.requests,
            opts.duration.as_secs_f64(),
            opts.seed,
            opts.world.time_scale
        );
    }
    let report = run(&opts).await?;
    if args.json {
        println!("{:#}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
