//! The upstream pool: keep-alive HTTP/1.1 connections to the one upstream, request URIs, and the
//! mapping of transport failures to [`ProxyError`]s.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{error::ProxyError, ProxyBody};
use crate::config::UpstreamUrl;

/// Longest response head an upstream may send (status line, header fields and the blank line);
/// a longer one fails the request with 502, as nginx's `proxy_buffer_size` does (4 or 8 KiB by
/// default). uvicorn, in front of vLLM, sends heads of a few hundred bytes.
///
/// It is also the exact size of every read on an upstream connection (hyper's
/// `read_buf_exact_size`, which bounds the head by the same figure). hyper's adaptive read buffer
/// doubles after each read that fills it, up to the connection's bound, and the grown buffer stays
/// with the pooled connection: after bursts of coalesced events (the overhead bench's (b)) the
/// proxy's RSS stayed 4–5 MB higher for 64 connections. 16 KiB saved a little more memory but cost
/// CPU per event on those bursts (one more read each); 32 KiB showed no change above the noise.
/// The price: the option replaces hyper's `max_buf_size`, so what an upstream connection may
/// queue of a request body streamed to a slow upstream is hyper's default bound (about 400 KiB, at
/// most 16 chunks, queued without a copy) instead of [`super::screen::CONNECTION_BUF_BYTES`].
pub const MAX_RESPONSE_HEAD_BYTES: usize = 32 * 1024;

/// A pooled client bound to one upstream.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, ProxyBody>,
    base: UpstreamUrl,
    /// `base.authority` parsed once (`None` if it does not parse alone; then every URI is built
    /// from text).
    authority: Option<Authority>,
    header_timeout: Duration,
    idle_timeout: Duration,
    body_limit: Option<u64>,
}

impl Upstream {
    /// Builds the pool; no connection is opened until the first request.
    pub fn new(
        base: UpstreamUrl,
        connect_timeout: Duration,
        header_timeout: Duration,
        body_limit: Option<u64>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        // Streams are many small writes: Nagle would hold each SSE event back.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_read_buf_exact_size(MAX_RESPONSE_HEAD_BYTES)
            .build(connector);
        let authority =
            Authority::from_maybe_shared(bytes::Bytes::from(base.authority.clone())).ok();
        Upstream {
            client,
            base,
            authority,
            header_timeout,
            idle_timeout: Duration::from_millis(crate::config::defaults::UPSTREAM_IDLE_TIMEOUT_MS),
            body_limit,
        }
    }

    /// Sets the longest silence between two reads of a response body (`upstream_idle_timeout_ms`).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The longest silence between two reads of a response body.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The upstream URI for a client request's path and query.
    pub fn uri_for(&self, original: &Uri) -> Result<Uri, ProxyError> {
        // Without a prefix the upstream URI is the request's own path and query behind our
        // authority: assembled from parts (no text to format and parse again per request).
        if let (true, Some(authority), Some(pq)) = (
            self.base.path_prefix.is_empty(),
            &self.authority,
            original.path_and_query(),
        ) {
            if pq.as_str().starts_with('/') {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(authority.clone());
                parts.path_and_query = Some(pq.clone());
                if let Ok(uri) = Uri::from_parts(parts) {
                    return Ok(uri);
                }
            }
        }
        self.uri_from_text(original)
    }

    /// [`Upstream::uri_for`] by formatting and parsing the whole URI (a path prefix, or a request
    /// target that is not a plain path).
    fn uri_from_text(&self, original: &Uri) -> Result<Uri, ProxyError> {
        let path_and_query = original.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        format!(
            "http://{}{}{}",
            self.base.authority, self.base.path_prefix, path_and_query
        )
        .parse()
        .map_err(|e| ProxyError::BadRequestBody(format!("cannot build upstream URI: {e}")))
    }

    /// Sends a request and waits (bounded) for the response headers.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.header_timeout, self.client.request(request)).await {
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout(self.header_timeout.as_millis())),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(classify(err, self.body_limit)),
        }
    }
}

/// Request-body failures surface as client errors; a body over the hard cap is a 413.
fn classify(err: hyper_util::client::legacy::Error, body_limit: Option<u64>) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(cap) = e.downcast_ref::<super::bodies::CapExceeded>() {
            return ProxyError::BodyTooLarge { limit: cap.0 };
        }
        if e.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge {
                limit: body_limit.unwrap_or(0),
            };
        }
        source = e.source();
    }
    ProxyError::UpstreamUnavailable(describe(&err))
}

/// The error with its causes, on one line.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        Upstream::new(
            UpstreamUrl::parse(url).unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
        )
    }

    #[test]
    fn assembled_uris_equal_parsed_ones() {
        let plain = upstream("http://127.0.0.1:8000");
        let prefixed = upstream("http://vllm.internal/base/");
        for target in [
            "/v1/chat/completions",
            "/",
            "/v1/models?x=1&y=%20z",
            "http://client.example/v1/completions?q",
            "/a//b/../c",
            "*",
        ] {
            let original: Uri = target.parse().unwrap();
            for u in [&plain, &prefixed] {
                let fast = u.uri_for(&original).map(|x| x.to_string());
                let text = u.uri_from_text(&original).map(|x| x.to_string());
                assert_eq!(fast.ok(), text.ok(), "{target}");
            }
        }
        assert_eq!(
            plain.uri_for(&"/v1/models?a=b".parse().unwrap()).unwrap(),
            "http://127.0.0.1:8000/v1/models?a=b"
        );
    }
}
