//! The admin listener, on its own port (never the proxy port: the upstream's own `/metrics` must stay
//! reachable through the proxy): `/healthz` now; metrics, stats and request records build on it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::proxy::error::error_json;
use crate::proxy::ProxyBody;

/// The hyper service of the admin listener.
#[derive(Clone, Debug, Default)]
pub struct AdminService {}

impl AdminService {
    /// A new admin service.
    pub fn new() -> Self {
        AdminService {}
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
