//! The admin listener, on its own port (never the proxy port: the upstream's own `/metrics` must stay
//! reachable through the proxy): `/healthz` now; metrics, stats and request records build on
//! [`AdminState`], which holds read-only handles on what accounting and the sampler publish.
//! Nothing here reads a meter or waits on the data plane.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::accounting::AccountingShared;
use crate::clock::Clock;
use crate::config::Config;
use crate::meter::status::SamplerStatus;
use crate::meter::Unavailable;
use crate::observe::InFlight;
use crate::proxy::error::error_json;
use crate::proxy::upstream::Upstream;
use crate::proxy::ProxyBody;

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
}

/// The hyper service of the admin listener.
#[derive(Clone, Debug)]
pub struct AdminService {
    state: Arc<AdminState>,
}

impl AdminService {
    /// A new admin service over `state`.
    pub fn new(state: Arc<AdminState>) -> Self {
        AdminService { state }
    }

    /// The state it serves.
    pub fn state(&self) -> &Arc<AdminState> {
        &self.state
    }

    fn route(&self, request: &Request<Incoming>) -> Response<ProxyBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                error_json("method not allowed", "InvalidRequestError", None, 405),
            );
        }
        match request.uri().path() {
            "/healthz" => json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
            other => json(
                StatusCode::NOT_FOUND,
                error_json(
                    &format!("no admin endpoint {other}"),
                    "NotFoundError",
                    None,
                    404,
                ),
            ),
        }
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let response = self.route(&request);
        Box::pin(async move { Ok(response) })
    }
}
