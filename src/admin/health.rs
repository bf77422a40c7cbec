//! `/healthz` (the process serves) and `/readyz` (the upstream answers and the meters are
//! initialised).
//!
//! Owns the readiness rules. The upstream probe is a `GET /health` (vLLM's own health route)
//! bounded by [`PROBE_TIMEOUT`], so `/readyz` never blocks long; any answer below 500 counts as
//! "the upstream answers" (a server without `/health` still answers 404).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use serde::Serialize;

use super::AdminState;

/// Longest wait for the upstream's answer to the readiness probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The path probed on the upstream.
pub const PROBE_PATH: &str = "/health";

/// The `/readyz` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Both checks passed.
    pub ready: bool,
    /// What the upstream probe saw (`ok`, or why not).
    pub upstream: String,
    /// `initialised`, `waiting` (no reading yet) or `unavailable` (no working meter: the proxy
    /// runs and reports energy as unavailable, which does not block readiness).
    pub meters: &'static str,
}

/// Whether the meters have produced their first readings.
fn meters(state: &AdminState) -> &'static str {
    match &state.sampler {
        None => "unavailable",
        Some(s) => {
            let snap = s.snapshot();
            if snap.ticks > 0 || snap.devices.iter().all(|d| d.healthy || d.ended) {
                "initialised"
            } else {
                "waiting"
            }
        }
    }
}

/// Probes the upstream (bounded) and checks the meters.
pub async fn readiness(state: &AdminState) -> Readiness {
    let upstream = match probe(state).await {
        Ok(()) => "ok".to_owned(),
        Err(why) => why,
    };
    let meters = meters(state);
    Readiness {
        ready: upstream == "ok" && meters != "waiting",
        upstream,
        meters,
    }
}

async fn probe(state: &AdminState) -> Result<(), String> {
    let uri = state
        .upstream
        .uri_for(&http::Uri::from_static(PROBE_PATH))
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(PROBE_TIMEOUT, state.upstream.send(request)).await {
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(response)) if response.status().is_server_error() => {
            Err(format!("{PROBE_PATH} answered {}", response.status()))
        }
        Ok(Ok(_)) => Ok(()),
    }
}
