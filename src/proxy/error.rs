//! Errors the proxy itself produces, and the one function that turns them into responses in the
//! OpenAI error shape `{"error":{"message","type","param","code"}}` (the shape vLLM uses, so client
//! SDKs raise their usual exceptions). Each error records whose fault it was (pingora's ErrorSource).

use bytes::Bytes;
use http::{Response, StatusCode};

use super::screen::Refusal;
use super::{json_response, ProxyBody};

/// Whose fault an error was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something the proxy will not forward.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// The proxy itself (overload, shutdown).
    Internal,
}

/// A failure the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream refused the connection, was unreachable, or failed before answering.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not send response headers in time.
    #[error("upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
    /// The request body exceeds `max_body_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request body could not be read from the client.
    #[error("could not read the request body: {0}")]
    BadRequestBody(String),
    /// Protocol upgrades (WebSocket, h2c upgrade over HTTP/1.1) are not proxied.
    #[error("protocol upgrades are not supported by joulegate")]
    UpgradeUnsupported,
    /// The proxy is shutting down or overloaded.
    #[error("{0}")]
    Unavailable(String),
    /// Admission control refused the request (queue full, or no capacity within the queue
    /// timeout): 429 with `Retry-After`; nothing reached the upstream.
    #[error(transparent)]
    Overloaded(#[from] super::admission::Rejected),
    /// The request head was refused by [`super::screen`] (ambiguous framing, a malformed line, too
    /// large); answered with `Connection: close` and never forwarded.
    #[error("{}", .0.message())]
    RefusedHead(Refusal),
}

impl ProxyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpgradeUnsupported => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RefusedHead(r) if r.too_large() => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::RefusedHead(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Whose fault it was.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTimeout(_) => Fault::Upstream,
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequestBody(_)
            | ProxyError::UpgradeUnsupported
            | ProxyError::RefusedHead(_) => Fault::Downstream,
            ProxyError::Unavailable(_) | ProxyError::Overloaded(_) => Fault::Internal,
        }
    }

    /// The OpenAI error `type` string.
    fn kind(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnavailable(_) => "BadGatewayError",
            ProxyError::UpstreamTimeout(_) => "GatewayTimeoutError",
            ProxyError::BodyTooLarge { .. } => "RequestTooLargeError",
            ProxyError::BadRequestBody(_) => "BadRequestError",
            ProxyError::UpgradeUnsupported => "NotImplementedError",
            ProxyError::Unavailable(_) => "ServiceUnavailableError",
            ProxyError::Overloaded(_) => "RateLimitError",
            ProxyError::RefusedHead(r) if r.too_large() => "RequestHeaderFieldsTooLargeError",
            ProxyError::RefusedHead(_) => "BadRequestError",
        }
    }
}

/// The body of an OpenAI-shaped error.
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: u16) -> Bytes {
    let value = serde_json::json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    });
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// The one place a [`ProxyError`] becomes a response.
pub fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let status = err.status();
    let body = error_json(
        &format!("joulegate: {err}"),
        err.kind(),
        None,
        status.as_u16(),
    );
    let mut response = json_response(status, body);
    if let ProxyError::Overloaded(rejected) = err {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(rejected.retry_after_s),
        );
    }
    if matches!(err, ProxyError::RefusedHead(_)) {
        // What follows a refused head on this connection cannot be trusted: hyper closes it after
        // this response.
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_shape_is_openai_like() {
        let r = error_response(&ProxyError::BodyTooLarge { limit: 10 });
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let e = &v["error"];
        assert_eq!(e["code"], 413);
        assert_eq!(e["type"], "RequestTooLargeError");
        assert!(e["param"].is_null());
        assert!(e["message"].as_str().unwrap().contains("10 bytes"));
    }

    #[tokio::test]
    async fn admission_rejections_are_429_with_retry_after() {
        use crate::proxy::admission::{RejectReason, Rejected};
        let r = error_response(&ProxyError::Overloaded(Rejected {
            reason: RejectReason::QueueFull,
            limit: 4,
            retry_after_s: 3,
        }));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "3");
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["type"], "RateLimitError");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue full"));
    }

    #[test]
    fn statuses_and_faults() {
        assert_eq!(ProxyError::UpstreamUnavailable("x".into()).status(), 502);
        assert_eq!(ProxyError::UpstreamTimeout(5).status(), 504);
        assert_eq!(ProxyError::UpstreamTimeout(5).fault(), Fault::Upstream);
        assert_eq!(ProxyError::Unavailable("x".into()).status(), 503);
        assert_eq!(
            ProxyError::BadRequestBody("x".into()).fault(),
            Fault::Downstream
        );
        let r = error_response(&ProxyError::RefusedHead(Refusal::LengthAndChunked));
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["connection"], "close");
        let r = error_response(&ProxyError::RefusedHead(Refusal::TooLarge));
        assert_eq!(r.status(), 431);
    }
}
