//! The data plane: accept loops ([`listen`]), the upstream pool ([`upstream`]), header rules
//! ([`headers`]), the per-request service ([`service`]) and the proxy's own errors ([`error`]).
//!
//! It may use `openai` (protocol) and `observe` (per-request atomics), never the ledger's or the
//! sampler's internals: the data plane never waits on accounting.

pub mod error;
pub mod headers;
pub mod listen;
pub mod service;
pub mod upstream;

use bytes::Bytes;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the proxy sends both ways.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
