//! Start-up questions to the upstream: its `/version` (how it reads `stream_options`) and, when
//! `upstream_forces_usage = "auto"`, whether it forces usage on every stream (vLLM
//! `--enable-force-include-usage`): one streamed one-token completion with no `stream_options`,
//! sent to the upstream directly (it is not a client's request and is not accounted). Usage in its
//! answer means the server forces it. The proxy's own injection hides forcing in client traffic, so
//! this is the only way to learn it before the first client stream. [`detect_usage_semantics`] is
//! the start-up task that asks and publishes what it learned. Its bounded `GET` also serves
//! the periodic read of the upstream's queue gauges ([`super::engine_gauges`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};

use super::inspect::ForceSource;
use super::service::ProxyState;
use super::upstream::Upstream;
use crate::openai::semantics::{
    first_model, force_probe_body, stream_reports_usage, UsageSemantics,
};

/// Most bytes of a probe answer read (a one-token stream is a few hundred bytes).
const PROBE_MAX_BYTES: usize = 64 * 1024;
/// Longest wait for a probe answer (a one-token completion on a busy server).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the upstream's `/version` to learn how it treats an absent `include_usage` (when that is
/// `auto`), retrying every 2 s until it answers (vLLM may still be loading its model when the proxy
/// starts); until then the current vLLM behaviour (absent = false) is assumed. When
/// `upstream_forces_usage` is `auto` and the upstream is vLLM, asks it once whether it forces usage
/// (below) before publishing what it learned.
pub async fn detect_usage_semantics(
    state: Arc<ProxyState>,
    absent_auto: bool,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let semantics = &state.inspect.semantics;
    loop {
        let answered = tokio::select! {
            answer = get(&state.upstream, "/version") => answer,
            () = &mut stop => return,
        };
        if let Some(body) = answered {
            match version_of(&body) {
                Some(version) => {
                    if semantics.force_auto() {
                        let forced = tokio::select! {
                            forced = upstream_forces_usage(&state.upstream) => forced,
                            () = &mut stop => return,
                        };
                        match forced {
                            Some(forced) => {
                                semantics.learn_forced(forced, ForceSource::Probe);
                            }
                            None => tracing::info!(
                                "could not ask the upstream whether it forces usage; assuming not \
                                 (set upstream_forces_usage to say)"
                            ),
                        }
                    }
                    let parsed = UsageSemantics::from_vllm_version(&version);
                    tracing::info!(
                        %version,
                        absent_include_usage = parsed.absent_include_usage,
                        forces_usage = semantics.get().force_include_usage,
                        "upstream version read"
                    );
                    let _ = state.upstream_version.set(version);
                    if absent_auto {
                        semantics.set_absent_include_usage(parsed.absent_include_usage);
                    }
                }
                None => tracing::info!(
                    "upstream has no usable /version; assuming vLLM >= 0.32 stream_options semantics"
                ),
            }
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            () = &mut stop => return,
        }
    }
}

/// The `version` of a `/version` body (`{"version":"0.32.0"}`).
fn version_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("version")?.as_str()?.to_owned())
}

/// `GET path` on the upstream: the body of a success, bounded.
pub async fn get(upstream: &Upstream, path: &'static str) -> Option<Bytes> {
    get_within(upstream, path, PROBE_MAX_BYTES, PROBE_TIMEOUT)
        .await
        .ok()
}

/// Why a bounded `GET` brought no body back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetFailure {
    /// The upstream answered with this status (not a success).
    Status(u16),
    /// No answer: connection refused or reset, the timeout, or a body over the bound.
    NoAnswer,
}

/// `GET path` on the upstream: the body of a success of at most `max_bytes`, within `timeout`.
pub async fn get_within(
    upstream: &Upstream,
    path: &'static str,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Bytes, GetFailure> {
    let uri = upstream
        .uri_for(&http::Uri::from_static(path))
        .map_err(|_| GetFailure::NoAnswer)?;
    let request = http::Request::get(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|_| GetFailure::NoAnswer)?;
    read(upstream, request, max_bytes, timeout).await
}

async fn read(
    upstream: &Upstream,
    request: http::Request<super::ProxyBody>,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Bytes, GetFailure> {
    let answer = async {
        let response = upstream
            .send(request)
            .await
            .map_err(|_| GetFailure::NoAnswer)?;
        if !response.status().is_success() {
            return Err(GetFailure::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), max_bytes);
        Ok(body
            .collect()
            .await
            .map_err(|_| GetFailure::NoAnswer)?
            .to_bytes())
    };
    tokio::time::timeout(timeout, answer)
        .await
        .unwrap_or(Err(GetFailure::NoAnswer))
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
    let body = read(upstream, request, PROBE_MAX_BYTES, PROBE_TIMEOUT)
        .await
        .ok()?;
    Some(stream_reports_usage(&body))
}
