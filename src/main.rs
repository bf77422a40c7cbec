//! The binary: parse the command line, start tracing, dispatch. The only place for `anyhow`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use joulegate::app::{App, Listeners};
use joulegate::cli::{Cli, Command, LogArgs, ServeArgs};
use joulegate::config::{resolve_log_format, Config};
use joulegate::logging::{self, LogFormat, LogOptions};

/// Runs the command; an error ends the process with status 1 and its message, causes included,
/// on one line: a start-up error is the user's to fix (a file, key or flag), and the stack
/// trace `anyhow` prints for `main`'s error when `RUST_BACKTRACE` is set only buried it.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause left out where the message before it
/// already says it (typed errors here put their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let quiet = cli.command.quiet_logs();
    let log = cli.log;
    match cli.command {
        Command::Serve(args) => serve(*args, log),
        Command::Demo(args) => {
            flag_logs(&log, quiet)?;
            Ok(runtime()?.block_on(joulegate::demo::run_cli(args))?)
        }
        Command::LogPower(args) => {
            flag_logs(&log, quiet)?;
            joulegate::meter::log_power::run(args)
        }
        Command::MockUpstream(args) => {
            flag_logs(&log, quiet)?;
            runtime()?.block_on(joulegate::sim::run_cli(args))
        }
        Command::Batch(args) => {
            flag_logs(&log, quiet)?;
            Ok(runtime()?.block_on(joulegate::batch::run_cli(args))?)
        }
        Command::Replay(args) => {
            flag_logs(&log, quiet)?;
            runtime()?.block_on(joulegate::replay::run_cli(*args))?;
            Ok(())
        }
    }
}

/// Starts the logs of a command without a config file: `--log-format` or its environment
/// variable, else text.
fn flag_logs(log: &LogArgs, quiet: bool) -> anyhow::Result<()> {
    let format = resolve_log_format(log.log_format.as_deref(), None, None)?;
    start_logs(format, quiet, log.verbose)
}

/// Installs the stderr subscriber: `RUST_LOG` if set, else the command's level raised by `-v`;
/// colour only on a terminal without `NO_COLOR`.
fn start_logs(format: LogFormat, quiet: bool, verbose: u8) -> anyhow::Result<()> {
    let options = LogOptions {
        format,
        colour: logging::colour_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ),
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, ignored) =
        logging::filter(logging::default_level(quiet, verbose), rust_log.as_deref());
    logging::init(&options, filter).context("cannot start the logs")?;
    if let Some(why) = ignored {
        tracing::warn!("{why}");
    }
    Ok(())
}

fn serve(mut args: ServeArgs, log: LogArgs) -> anyhow::Result<()> {
    // `serve` resolves its whole config before the logs start, because the file may set
    // `log_format`. Resolution logs nothing; its errors reach stderr once, as plain text, through
    // main's `Result`, whatever the format.
    args.log_format = log.log_format;
    let config = Config::from_args(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    start_logs(config.log_format, false, log.verbose)?;
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
