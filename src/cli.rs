//! The command line: `serve`, `demo`, `log-power`, `mock-upstream`.

use clap::{Parser, Subcommand};

/// joulegate: energy per LLM request, measured at the proxy.
#[derive(Debug, Parser)]
#[command(name = "joulegate", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a power and energy logger writing CSV.
    LogPower(crate::meter::log_power::LogPowerArgs),
    /// Run the mock vLLM upstream (vLLM's wire format, simulated engine).
    MockUpstream(crate::sim::MockUpstreamArgs),
}
