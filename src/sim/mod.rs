//! The simulated vLLM world: a mock OpenAI-compatible upstream that speaks vLLM 0.32's exact wire
//! format, and a continuous-batching engine with ground-truth energy per request, for `demo`, tests
//! and benches. Owns nothing of the proxy: it is what the proxy talks to.
//!
//! - [`server`]: [`MockUpstream::builder`] → [`MockBuilder::spawn`] → [`MockHandle`] (await requests,
//!   client disconnects, completions, ground truth).
//! - [`service`] (routes, headers, ids) and [`stream`] (tokens → SSE/JSON, faults).
//! - [`wire`], [`wire_json`], [`wire_responses`], [`wire_metrics`]: vLLM's bytes; [`endpoints`]:
//!   tokenize, metrics; [`request`]: vLLM's request reading and errors; [`text`]: the toy
//!   tokenizer and seeded text; [`faults`]: scripted faults.
//! - [`engine`]: the pure batching and energy model; [`runner`]: its real-time driver and the
//!   energy counter.
//! - Options of vLLM's server flags: `--enable-prompt-tokens-details`,
//!   `--enable-per-request-metrics` (responses carry the engine's timing in `metrics`; in engine
//!   timing the runner's true timing of the request) and `--enable-force-include-usage` (usage,
//!   continuous, on every chat and completions stream).
//! - [`workload`]: seeded request plans (steady, bursty, prefill-heavy, decode-heavy, mixed).
//! - [`cli`]: `joulegate mock-upstream`.
//!
//! Completion length: `max_tokens` (or `max_completion_tokens`, `max_output_tokens`) exactly, since
//! the mock has no end-of-sequence token (as vLLM with `ignore_eos`); when absent, vLLM's default,
//! `max_model_len - prompt_tokens`.

pub mod cli;
pub mod endpoints;
pub mod engine;
pub mod faults;
pub mod request;
pub mod runner;
pub mod server;
pub mod service;
pub mod stream;
pub mod text;
pub mod wire;
pub mod wire_json;
pub mod wire_metrics;
pub mod wire_responses;
pub mod workload;

pub use cli::{run_cli, MockUpstreamArgs};
pub use engine::{CostModel, EngineConfig, Phase};
pub use faults::Fault;
pub use runner::{RequestTiming, RunnerConfig};
pub use server::{MockBuilder, MockHandle, MockUpstream, RecordedRequest, RequestTruth, Timing};
