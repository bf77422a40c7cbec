//! joulegate: a transparent reverse proxy for OpenAI-compatible LLM servers that measures accelerator
//! energy and attributes it to each request by the work it did.
//!
//! The crate map (see `../shared/DESIGN.md` for the model and STYLE.md for the shape):
//! - [`app`]: [`app::App`] built from a config, served on caller-bound [`app::Listeners`], drained.
//! - [`config`]: raw file/env/flag values validated into a typed [`config::Config`].
//! - [`cli`]: the clap commands (`serve`, `demo`, `log-power`, `mock-upstream`, `batch`, `replay`) and global log flags.
//! - [`logging`]: diagnostic logs on stderr: text or JSON lines, colour only on a terminal, levels.
//! - [`proxy`]: the data plane: listener, request-head screen, upstream pool, header rules, the relay
//!   body wrapper and the upstream idle bound, errors.
//! - [`openai`]: pure protocol code (request view, usage injection/removal, incremental SSE, usage).
//! - [`observe`]: per-request atomics and the in-flight guard, shared by data plane and accounting.
//! - [`clock`]: the shared monotonic clock; [`tick`]: the record between sampler and accounting.
//! - [`meter`]: energy sources (NVML, counter files, simulated, replay); [`sampler`]: the ticking thread.
//! - [`ledger`]: pure attribution of each tick's energy; [`accounting`]: the glue thread that feeds it.
//! - [`admin`]: the second listener (metrics, DCGM-shaped device telemetry, stats, requests, history, health, the live page); [`request_log`]: the JSONL log.
//! - `otel` (cargo feature `otel`): records and energy counters exported over OTLP/HTTP.
//! - [`demo`]: `joulegate demo` (engine, meter and proxy in one process) and the accuracy harness.
//! - [`batch`]: `joulegate batch` (an OpenAI batch file through joulegate, energy per line and job).
//! - [`replay`]: `joulegate replay`: timed load from a request log, a trace or a synthetic spec,
//!   with an energy report per tag.
//! - [`sim`]: the simulated vLLM-like engine and mock upstream used by `demo`, tests and benches.
#![forbid(unsafe_code)]

pub mod accounting;
pub mod accuracy;
pub mod admin;
pub mod app;
pub mod batch;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod ledger;
pub mod logging;
pub mod meter;
pub mod observe;
pub mod openai;
#[cfg(feature = "otel")]
pub mod otel;
pub mod proxy;
pub mod replay;
pub mod request_log;
pub mod sampler;
pub mod sim;
pub mod tick;
