//! The binary: parse the command line, start tracing, dispatch. The only place for `anyhow`.

use anyhow::Context;
use clap::Parser;
use joulegate::app::{App, Listeners};
use joulegate::cli::{Cli, Command, ServeArgs};
use joulegate::config::Config;

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
        Command::Serve(args) => serve(*args),
        Command::Demo(args) => Ok(runtime()?.block_on(joulegate::demo::run_cli(args))?),
        Command::LogPower(args) => joulegate::meter::log_power::run(args),
        Command::MockUpstream(args) => runtime()?.block_on(joulegate::sim::run_cli(args)),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let app = App::build(config.clone())?;
    runtime()?.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let proxy_addr = listeners
            .proxy
            .local_addr()
            .context("proxy listener address")?;
        let admin_addr = listeners
            .admin
            .local_addr()
            .context("admin listener address")?;
        // One line per bound address, on stdout, so scripts can find port-0 listeners.
        println!("listening proxy={proxy_addr}");
        println!("listening admin={admin_addr}");
        tracing::info!(upstream = %config.upstream.base(), "joulegate serving");
        app.serve(listeners, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
