//! Start-up questions to the upstream: its `/version` (how it reads `stream_options`) and, when
//! `upstream_forces_usage = "auto"`, whether it forces usage on every stream (vLLM
//! `--enable-force-include-usage`): one streamed one-token completion with no `stream_options`,
//! sent to the upstream directly (it is not a client's request and is not accounted). Usage in its
//! answer means the server forces it. The proxy's own injection hides forcing in client traffic, so
//! this is the only way to learn it before the first client stream.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};

use super::upstream::Upstream;
use crate::openai::semantics::{first_model, force_probe_body, stream_reports_usage};

/// Most bytes of a probe answer read (a one-token stream is a few hundred bytes).
const PROBE_MAX_BYTES: usize = 64 * 1024;
/// Longest wait for a probe answer (a one-token completion on a busy server).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET path` on the upstream: the body of a success, bounded.
pub async fn get(upstream: &Upstream, path: &'static str) -> Option<Bytes> {
    let uri = upstream.uri_for(&http::Uri::from_static(path)).ok()?;
    let request = http::Request::get(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .ok()?;
    read(upstream, request).await
}

async fn read(upstream: &Upstream, request: http::Request<super::ProxyBody>) -> Option<Bytes> {
    let answer = async {
        let response = upstream.send(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), PROBE_MAX_BYTES);
        Some(body.collect().await.ok()?.to_bytes())
    };
    tokio::time::timeout(PROBE_TIMEOUT, answer)
        .await
        .ok()
        .flatten()
}

/// Whether the upstream forces usage: `None` when it could not be asked (no model list, an error
/// answer, a timeout).
pub async fn upstream_forces_usage(upstream: &Upstream) -> Option<bool> {
    let model = first_model(&get(upstream, "/v1/models").await?)?;
    let uri = upstream
        .uri_for(&http::Uri::from_static("/v1/completions"))
        .ok()?;
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(force_probe_body(&model)))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .ok()?;
    let body = read(upstream, request).await?;
    Some(stream_reports_usage(&body))
}
