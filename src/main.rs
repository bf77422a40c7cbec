//! The binary: parse the command line, start tracing, dispatch. The only place for `anyhow`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use joulegate::app::{App, Listeners};
use joulegate::cli::{Cli, Command, LogArgs, ServeArgs};
use joulegate::config::{resolve_log_format, Config};
use joulegate::logging::{self, LogFormat, LogOptions};

fn main() -> anyhow::Result<()> {
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
    let (runtime, flavour) = serve_runtime()?;
    runtime.block_on(async move {
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
        tracing::info!(upstream = %config.upstream.base(), runtime = flavour, "joulegate serving");
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

/// The data plane's runtime and its name for the start-up log: a current-thread runtime when the
/// process may use a single CPU (`available_parallelism` follows `taskset` and cgroup quotas), where
/// a multi-thread runtime would be one worker plus its scheduler's machinery (the injection queue,
/// the LIFO slot, wakes across threads); the multi-thread runtime otherwise. On one CPU the overhead
/// bench measured 2-3 µs less CPU per JSON request in three of four batches of interleaved pairs
/// (none in the fourth) and slightly more per event at full stream speed (issue #10).
/// Nothing the proxy runs needs a second runtime thread: the sampler, accounting and request-log
/// threads are std threads that hand over through atomics, std channels and `Notify` (which wakes
/// a current-thread runtime from any thread), and the only `spawn_blocking` (the OpenTelemetry
/// exporter's last flush at shutdown) runs on the blocking pool, which both flavours have.
fn serve_runtime() -> anyhow::Result<(tokio::runtime::Runtime, &'static str)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        return Ok((runtime()?, "multi-thread"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((runtime, "current-thread"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
