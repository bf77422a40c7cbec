//! The proxy service: one request's phases (pingora's shape): check the request, pick the upstream
//! URI, send, filter the response headers, wrap the body. Errors become responses in
//! [`super::error::error_response`] only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{header, Request, Response, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::error::{error_response, ProxyError};
use super::headers::{is_websocket_upgrade, strip_energy_headers, strip_hop_by_hop};
use super::upstream::Upstream;
use super::{BoxError, ProxyBody};

/// What every request needs, shared by all connections.
#[derive(Debug)]
pub struct ProxyState {
    /// The upstream pool.
    pub upstream: Upstream,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
}

/// The hyper service of the proxy listener (a `Clone` struct holding `Arc` state).
#[derive(Clone, Debug)]
pub struct ProxyService {
    state: Arc<ProxyState>,
}

impl ProxyService {
    /// Wraps shared state.
    pub fn new(state: Arc<ProxyState>) -> Self {
        ProxyService { state }
    }

    async fn handle(self, request: Request<Incoming>) -> Response<ProxyBody> {
        match self.forward(request).await {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(error = %err, fault = ?err.fault(), "proxy error");
                error_response(&err)
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        let state = &self.state;
        let (mut parts, body) = request.into_parts();
        if declared_length(&parts.headers).is_some_and(|n| n > state.max_body_bytes) {
            return Err(ProxyError::BodyTooLarge {
                limit: state.max_body_bytes,
            });
        }
        if is_websocket_upgrade(&parts.headers) {
            return Err(ProxyError::UpgradeUnsupported);
        }
        // An `Upgrade: h2c` offer is hop-by-hop and simply declined: the request goes on as HTTP/1.1.
        strip_hop_by_hop(&mut parts.headers);
        parts.uri = state.upstream.uri_for(&parts.uri)?;
        parts.version = Version::HTTP_11;
        let body: ProxyBody = Limited::new(
            body,
            usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX),
        )
        .map_err(BoxError::from)
        .boxed_unsync();
        let response = state
            .upstream
            .send(Request::from_parts(parts, body))
            .await?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        strip_energy_headers(&mut parts.headers);
        parts.version = Version::default();
        Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed_unsync(),
        ))
    }
}

/// The request's `Content-Length`, if present and valid.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
