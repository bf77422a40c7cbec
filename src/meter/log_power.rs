//! `joulegate log-power`: a CSV power and energy log.

/// Flags of `joulegate log-power`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogPowerArgs {}

/// Runs `log-power`.
pub fn run(_args: LogPowerArgs) -> anyhow::Result<()> {
    anyhow::bail!("log-power is not built yet")
}
