//! The admin listener, on its own port (never the proxy port: the upstream's own `/metrics` must stay
//! reachable through the proxy): `/metrics` ([`metrics`]), `/stats` ([`stats`]), `/requests` and
//! `/requests/{id}` ([`requests`]), `/healthz` and `/readyz` ([`health`]), `/dcgm/metrics` (the
//! device power and energy in dcgm-exporter's shape, [`dcgm`]), `/history` (the last minutes,
//! [`history`]) and `/`, the live page that draws them ([`live`]), behind an optional bearer token
//! ([`auth`]; `/healthz` stays open for liveness probes; the page also takes it as `?token=`).
//!
//! This file owns the routing and the response shapes; errors use the OpenAI error JSON. Everything
//! is read from [`AdminState`], read-only handles on what accounting and the sampler publish:
//! nothing here reads a meter or waits on the data plane.

pub mod auth;
pub mod dcgm;
pub mod health;
pub mod history;
pub mod live;
pub mod metrics;
pub mod requests;
pub mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::accounting::AccountingShared;
use crate::clock::Clock;
use crate::config::Config;
use crate::meter::status::SamplerStatus;
use crate::meter::Unavailable;
use crate::observe::InFlight;
use crate::proxy::error::error_json;
use crate::proxy::upstream::Upstream;
use crate::proxy::{full_body, json_response, ProxyBody};
use crate::request_log::RequestLogStatus;

/// Everything the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// Totals, aggregates and the record ring, published by the accounting thread.
    pub accounting: Arc<AccountingShared>,
    /// Meter and device health, published by the sampler (none when no meter works).
    pub sampler: Option<Arc<SamplerStatus>>,
    /// Meters that were asked for (or probed by default) and could not measure, with the reason.
    pub meters_unavailable: Vec<Unavailable>,
    /// Requests in flight (and finished ones awaiting settlement), with their energy so far.
    pub in_flight: Arc<InFlight>,
    /// The shared clock (uptime, RFC 3339 times).
    pub clock: Clock,
    /// The effective configuration (secrets are `#[serde(skip)]`).
    pub config: Config,
    /// The upstream, for `/readyz`.
    pub upstream: Upstream,
    /// The request-log writer's counters, when `request_log` is set.
    pub request_log: Option<Arc<RequestLogStatus>>,
    /// The OpenTelemetry exporter's counters, when `otel_endpoint` is set.
    #[cfg(feature = "otel")]
    pub otel: Option<Arc<crate::otel::OtelStatus>>,
    /// The upstream's version, once read from its `/version` (with `absent_include_usage = auto`).
    pub upstream_version: Arc<std::sync::OnceLock<String>>,
    /// What responses told about the upstream (per-request metrics), for `/stats`.
    pub upstream_facts: Arc<crate::proxy::learned::UpstreamFacts>,
    /// The upstream's `stream_options` semantics as now known (forced usage), for `/stats`.
    pub upstream_semantics: Arc<crate::proxy::inspect::SharedSemantics>,
    /// The bytes held to inspect request bodies, and the requests streamed uninspected.
    pub request_bodies: Arc<crate::proxy::bodies::InspectBudget>,
    /// Admission control: queue, in-flight requests and tokens, rejections (read as atomics).
    pub admission: Arc<crate::proxy::admission::Admission>,
    /// The reader of the upstream's queue gauges (`upstream_metrics`), for `/stats`.
    pub engine_gauges: Arc<crate::proxy::engine_gauges::ReaderStatus>,
}

/// The hyper service of the admin listener.
#[derive(Clone, Debug)]
pub struct AdminService {
    state: Arc<AdminState>,
    registry: Arc<Registry>,
    token: Option<auth::AdminToken>,
}

impl AdminService {
    /// A new admin service over `state`, with its own metrics registry (see [`metrics::registry`]).
    pub fn new(state: Arc<AdminState>) -> Self {
        let registry = Arc::new(metrics::registry(state.clone()));
        Self::with_registry(state, registry)
    }

    /// A service exposing `registry` (which the caller owns and may have added to) on `/metrics`.
    pub fn with_registry(state: Arc<AdminState>, registry: Arc<Registry>) -> Self {
        let token = state
            .config
            .admin_token
            .as_deref()
            .map(auth::AdminToken::new);
        AdminService {
            state,
            registry,
            token,
        }
    }

    /// The state it serves.
    pub fn state(&self) -> &Arc<AdminState> {
        &self.state
    }

    async fn route(self, request: Request<Incoming>) -> Response<ProxyBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "InvalidRequestError",
            );
        }
        let path = request.uri().path();
        // Liveness stays open for probes; readiness names upstream errors, so it is protected.
        let open = path == "/healthz";
        if let (Some(token), false) = (&self.token, open) {
            // A browser cannot send a header when it navigates: the page (and only the page, which
            // holds no figures) also takes the token from its query; its script then sends the
            // header on every data request.
            let by_query = path == "/" && token.allows_query(request.uri().query());
            if !(by_query || token.allows(request.headers())) {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong admin bearer token",
                    "AuthenticationError",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        let s = &self.state;
        match path {
            "/" => live::response(),
            "/history" => match history::parse_since(request.uri().query()) {
                Ok(since) => json_of(StatusCode::OK, &history::history(s, since)),
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                    "InvalidRequestError",
                ),
            },
            "/healthz" => json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
            "/readyz" => {
                let r = health::readiness(s).await;
                let status = if r.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_of(status, &r)
            }
            "/metrics" => match metrics::render(&self.registry) {
                Ok(text) => {
                    let mut r = body(StatusCode::OK, Bytes::from(text));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(metrics::CONTENT_TYPE),
                    );
                    r
                }
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode metrics",
                    "InternalServerError",
                ),
            },
            "/dcgm/metrics" => {
                let snapshot = s.sampler.as_ref().map(|x| x.snapshot());
                let mut r = body(StatusCode::OK, Bytes::from(dcgm::render(snapshot.as_ref())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(dcgm::CONTENT_TYPE),
                );
                r
            }
            "/stats" => json_of(StatusCode::OK, &stats::stats(s)),
            "/requests" | "/requests/" => match requests::ListQuery::parse(request.uri().query()) {
                Ok(q) => json_of(StatusCode::OK, &requests::list(s, &q)),
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                    "InvalidRequestError",
                ),
            },
            other => match other.strip_prefix("/requests/") {
                Some(id) => match requests::lookup(s, id) {
                    requests::Lookup::Finished(r) => json_of(StatusCode::OK, &*r),
                    requests::Lookup::Live(v) => json_of(StatusCode::OK, &*v),
                    requests::Lookup::NotFound => error(
                        StatusCode::NOT_FOUND,
                        &format!("no request {id} (unknown, or no longer in the ring)"),
                        "NotFoundError",
                    ),
                    requests::Lookup::Malformed => error(
                        StatusCode::BAD_REQUEST,
                        "a request id looks like jg-000000000000002a",
                        "InvalidRequestError",
                    ),
                },
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no admin endpoint {other}"),
                    "NotFoundError",
                ),
            },
        }
    }
}

fn body(status: StatusCode, bytes: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(bytes));
    *response.status_mut() = status;
    response
}

fn json(status: StatusCode, bytes: Bytes) -> Response<ProxyBody> {
    json_response(status, bytes)
}

fn json_of(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec(value) {
        Ok(v) => json(status, Bytes::from(v)),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialise: {e}"),
            "InternalServerError",
        ),
    }
}

/// The one place an admin error becomes a response (OpenAI error shape).
fn error(status: StatusCode, message: &str, kind: &str) -> Response<ProxyBody> {
    json(status, error_json(message, kind, None, status.as_u16()))
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move { Ok(service.route(request).await) })
    }
}
