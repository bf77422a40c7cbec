//! The binary: parse the command line, start tracing, dispatch. The only place for `anyhow`.

use clap::Parser;
use joulegate::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::LogPower(args) => joulegate::meter::log_power::run(args),
        Command::MockUpstream(args) => runtime()?.block_on(joulegate::sim::run_cli(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
