//! The simulated vLLM-like world: a mock OpenAI-compatible upstream with vLLM's exact wire format and
//! a continuous-batching engine with ground-truth energy, for `demo`, tests and benches.

pub mod engine;
pub mod request;
pub mod runner;
pub mod text;
pub mod wire;
pub mod wire_responses;

/// Flags of `joulegate mock-upstream`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockUpstreamArgs {}

/// Runs `mock-upstream` until Ctrl-C.
pub async fn run_cli(_args: MockUpstreamArgs) -> anyhow::Result<()> {
    anyhow::bail!("mock-upstream is not built yet")
}
