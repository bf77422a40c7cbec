//! Pure OpenAI/vLLM protocol code, no I/O and no clock: the lenient request view, usage injection and
//! its removal, the incremental SSE parser and usage extraction. Bytes and times come in as
//! arguments, which keeps every function here exhaustively testable.
//!
//! The relay's use, per request:
//! 1. [`request::parse_request`] on a bounded copy of the body: a [`request::RequestView`].
//! 2. [`inject::plan_injection`] with the upstream's [`semantics::UsageSemantics`]: the body to
//!    forward and what the client asked for.
//! 3. Streaming responses: a [`observer::StreamObserver`] built from
//!    [`observer::ObserverConfig::for_request`]; `feed` each frame, `finish` at the end.
//!    Non-streaming: a [`usage::BodyAccumulator`] and [`usage::parse_usage`].

pub mod inject;
pub mod json_scan;
pub mod observer;
pub mod request;
pub mod semantics;
pub mod sse;
pub mod usage;

#[cfg(test)]
mod defer_fixture_tests;
#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod metrics_fixture_tests;
#[cfg(test)]
mod odd_stream_tests;
#[cfg(test)]
mod request_tests;

pub use inject::{plan_injection, InjectionPlan, StripPolicy};
pub use observer::{ObserverConfig, StreamObserver, StreamTotals};
pub use request::{parse_request, RequestView, StreamOptionsView, ViewConfig};
pub use semantics::UsageSemantics;
pub use usage::{parse_usage, BodyAccumulator, Usage};
