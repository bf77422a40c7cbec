//! The data plane: accept loops ([`listen`]), the upstream pool ([`upstream`]), header rules
//! ([`headers`]), request bodies and the bytes held to inspect them ([`bodies`]), the request phase of accounting ([`inspect`]), the per-request service
//! ([`service`]), the request-head screen against smuggling ([`screen`]), what it learns about
//! the upstream from its answers ([`learned`]) and start-up questions ([`probe`]), the body wrapper
//! that observes responses ([`relay`]) and the upstream idle bound ([`idle`]), how energy is
//! written on responses ([`energy`]), the bounded wait for settled figures ([`settle`]),
//! admission control of model requests and its queue ([`admission`]) and the proxy's own errors
//! ([`error`]).
//!
//! It may use `openai` (protocol) and `observe` (per-request atomics), never the ledger's or the
//! sampler's internals: the data plane never waits on accounting, except for the opt-in, bounded
//! wait of `response_energy = "settled"` on a request's own settled signal ([`settle`]).

pub mod admission;
pub mod bodies;
pub mod energy;
pub mod engine_gauges;
pub mod error;
pub mod headers;
pub mod idle;
pub mod inspect;
pub mod learned;
pub mod listen;
pub mod probe;
pub mod relay;
pub mod screen;
pub mod service;
pub mod settle;
pub mod upstream;

use bytes::Bytes;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the proxy sends both ways.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A whole body from bytes.
pub fn full_body(bytes: Bytes) -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response the proxy or the admin listener writes itself.
pub fn json_response(status: http::StatusCode, json: Bytes) -> http::Response<ProxyBody> {
    let mut response = http::Response::new(full_body(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
