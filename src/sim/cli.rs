//! `joulegate mock-upstream`: the mock vLLM upstream as a process, for demos and for people without
//! vLLM. Prints `listening mock-upstream=ADDR` once bound (port 0 allowed) and runs until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use super::engine::EngineConfig;
use super::runner::RunnerConfig;
use super::server::{MockUpstream, Timing};

/// Flags of `joulegate mock-upstream`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockUpstreamArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Seed of generated ids and text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fixed time to first token, milliseconds (with --itl-ms; default: immediate).
    #[arg(long, requires = "itl_ms", conflicts_with = "engine")]
    pub ttft_ms: Option<u64>,
    /// Fixed inter-token latency, milliseconds.
    #[arg(long, requires = "ttft_ms", conflicts_with = "engine")]
    pub itl_ms: Option<u64>,
    /// Drive timing by the simulated continuous-batching engine (H100 + 8B model cost model).
    #[arg(long)]
    pub engine: bool,
    /// Simulated seconds per wall second (engine timing).
    #[arg(long, default_value_t = 1.0, requires = "engine")]
    pub time_scale: f64,
    /// Period of the energy counter, milliseconds (engine timing).
    #[arg(long, default_value_t = 20, requires = "engine")]
    pub counter_period_ms: u64,
    /// Write the engine's cumulative energy (micro-joules) to this file every period.
    #[arg(long, requires = "engine")]
    pub energy_counter_file: Option<PathBuf>,
    /// vLLM version reported by /version.
    #[arg(long, default_value = "0.32.0")]
    pub vllm_version: String,
    /// Served model name.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Maximum context length.
    #[arg(long, default_value_t = 2048)]
    pub max_model_len: u32,
    /// Add prompt_tokens_details to usage, like vLLM's --enable-prompt-tokens-details.
    #[arg(long)]
    pub enable_prompt_tokens_details: bool,
    /// Add the engine's timing of each request (`metrics`) to responses, like vLLM's
    /// --enable-per-request-metrics (true timings with --engine, fixed ones otherwise).
    #[arg(long)]
    pub enable_per_request_metrics: bool,
    /// Report usage (continuous) on every stream whatever the request says, like vLLM's
    /// --enable-force-include-usage.
    #[arg(long)]
    pub enable_force_include_usage: bool,
}

/// Runs `mock-upstream` until Ctrl-C.
pub async fn run_cli(args: MockUpstreamArgs) -> anyhow::Result<()> {
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        anyhow::bail!(
            "--time-scale must be a positive number, got {}",
            args.time_scale
        );
    }
    let timing = if args.engine {
        Timing::Engine(RunnerConfig {
            engine: EngineConfig::default(),
            time_scale: args.time_scale,
            counter_period: Duration::from_millis(args.counter_period_ms.max(1)),
            counter_file: args.energy_counter_file.clone(),
        })
    } else if let (Some(ttft), Some(itl)) = (args.ttft_ms, args.itl_ms) {
        Timing::Fixed {
            ttft: Duration::from_millis(ttft),
            itl: Duration::from_millis(itl),
        }
    } else {
        Timing::Immediate
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --listen {}: {e}", args.listen))?;
    let handle = MockUpstream::builder()
        .seed(args.seed)
        .timing(timing)
        .vllm_version(args.vllm_version)
        .model(args.model)
        .max_model_len(args.max_model_len)
        .enable_prompt_tokens_details(args.enable_prompt_tokens_details)
        .enable_per_request_metrics(args.enable_per_request_metrics)
        .enable_force_include_usage(args.enable_force_include_usage)
        .spawn(listener)?;
    println!("listening mock-upstream={}", handle.addr());
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: MockUpstreamArgs,
    }

    fn parse(args: &[&str]) -> Result<MockUpstreamArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("mock-upstream").chain(args.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.listen.as_str(), a.seed, a.engine, a.vllm_version.as_str()),
            ("127.0.0.1:8000", 0, false, "0.32.0")
        );
        let a = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--ttft-ms",
            "5",
            "--itl-ms",
            "2",
            "--seed",
            "9",
        ])
        .unwrap();
        assert_eq!((a.ttft_ms, a.itl_ms, a.seed), (Some(5), Some(2), 9));
        let a = parse(&[
            "--engine",
            "--time-scale",
            "10",
            "--energy-counter-file",
            "/tmp/x",
        ])
        .unwrap();
        assert!(a.engine && a.time_scale == 10.0 && a.energy_counter_file.is_some());
        assert!(!a.enable_per_request_metrics && !a.enable_force_include_usage);
        let a = parse(&[
            "--enable-per-request-metrics",
            "--enable-force-include-usage",
        ])
        .unwrap();
        assert!(a.enable_per_request_metrics && a.enable_force_include_usage);
        // Fixed timing needs both delays and excludes the engine; engine options need --engine.
        assert!(parse(&["--ttft-ms", "5"]).is_err());
        assert!(parse(&["--engine", "--ttft-ms", "5", "--itl-ms", "1"]).is_err());
        assert!(parse(&["--energy-counter-file", "/tmp/x"]).is_err());
        assert!(parse(&["--seed", "x"]).is_err());
        let help = Wrap::try_parse_from(["mock-upstream", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("--energy-counter-file") && help.contains("--ttft-ms"));
        assert!(
            help.contains("--enable-per-request-metrics")
                && help.contains("--enable-force-include-usage")
        );
    }
}
