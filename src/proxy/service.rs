//! The proxy service: one request's phases (pingora's shape): check the request, inspect and
//! register it when it is model work (read whole within the bounds of [`super::bodies`]; a larger
//! one is registered knowing only its endpoint and streamed through untouched), send it upstream, filter the response headers, then relay the
//! body through the observer (streams) or read it whole and add the energy headers (JSON; in
//! settled mode after the bounded wait for the request's final figures). Errors become responses in
//! [`super::error::error_response`] only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::admission::{Admission, AdmissionPermit};
use super::bodies::{capped, read_for_inspection, Held, InspectBudget, ReadBody};
use super::energy::{insert_energy_headers, Carbon};
use super::error::{error_response, ProxyError};
use super::headers::{
    accepts_trailers, content_length, declare_energy_trailers, is_event_stream,
    is_websocket_upgrade, remove_in_order, strip_energy_headers, strip_hop_by_hop,
    ENERGY_REQUEST_ID, REFUSED_HEAD,
};
use super::idle::{IdleBody, UpstreamIdle};
use super::inspect::{inspect, is_candidate, request_meta, InspectConfig, Inspected};
use super::learned::UpstreamFacts;
use super::relay::{RelayBody, RequestEnd};
use super::screen::Refusal;
use super::settle::{figures_after, should_wait};
use super::upstream::Upstream;
use super::{full_body, ProxyBody};
use crate::clock::Clock;
use crate::observe::{InFlight, InFlightGuard, Outcome, RequestProgress};
use crate::openai::inject::InjectionPlan;
use crate::openai::observer::{ObserverConfig, StreamObserver};
use crate::openai::request::{endpoint_of, RequestView};
use crate::openai::usage::{usage_and_metrics, MetricsField};

/// What every request needs, shared by all connections.
#[derive(Debug)]
pub struct ProxyState {
    /// The upstream pool.
    pub upstream: Upstream,
    /// The hard cap on request bodies (`max_body_bytes`; `None`: none, as vLLM has none).
    pub max_body_bytes: Option<u64>,
    /// The inspection bounds (`max_inspect_bytes`, `max_inspect_total_bytes`) and their counters.
    pub bodies: Arc<InspectBudget>,
    /// Largest non-streaming response read whole to put its energy in headers; larger ones stream
    /// through with the energy in trailers and the record only.
    pub max_buffered_response_bytes: u64,
    /// The in-flight registry accounting reads.
    pub in_flight: Arc<InFlight>,
    /// The shared clock.
    pub clock: Clock,
    /// Request-phase settings.
    pub inspect: InspectConfig,
    /// Carbon settings of the energy figures.
    pub carbon: Carbon,
    /// Whether any meter works; without one every request's energy is `unavailable` from the start.
    pub energy_measured: bool,
    /// `response_energy = "settled"`: the longest wait for a request's final figures before its
    /// energy-bearing response part goes out (`None`: provisional figures, never wait).
    pub settle_wait: Option<std::time::Duration>,
    /// The upstream's version, once its `/version` was read (auto semantics only).
    pub upstream_version: Arc<std::sync::OnceLock<String>>,
    /// What responses told about the upstream (per-request metrics on or off).
    pub facts: Arc<UpstreamFacts>,
    /// Admission control of model requests (off by default) and its published figures.
    pub admission: Arc<Admission>,
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

    /// Registers a model request in the in-flight registry.
    fn register(&self, parts: &http::request::Parts, view: &RequestView) -> InFlightGuard {
        let state = &self.state;
        let id = state.in_flight.next_id();
        let meta = request_meta(&state.inspect, id, parts, view, state.clock.now_ns());
        let guard = state.in_flight.register(meta, state.clock);
        if !state.energy_measured {
            guard.progress().energy_available.store(false, Relaxed);
        }
        guard
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        let state = &self.state;
        let (mut parts, body) = request.into_parts();
        if let Some(code) = parts.headers.get(REFUSED_HEAD) {
            return Err(ProxyError::RefusedHead(Refusal::from_code(code.as_bytes())));
        }
        if let Some(cap) = state.max_body_bytes {
            if content_length(&parts.headers).is_some_and(|n| n > cap) {
                return Err(ProxyError::BodyTooLarge { limit: cap });
            }
        }
        if is_websocket_upgrade(&parts.headers) {
            return Err(ProxyError::UpgradeUnsupported);
        }
        let trailers_allowed = parts.version == Version::HTTP_2 || accepts_trailers(&parts.headers);
        // An HTTP/1.1 body may only end with trailer fields its head declared.
        let declare_trailers = trailers_allowed && parts.version != Version::HTTP_2;
        // A model request the proxy accounts: what it asks for, and a prompt-size floor from its
        // declared length when it was not read.
        let mut model_request: Option<(Accounted, u64)> = None;
        let body: ProxyBody = if is_candidate(&parts.method, parts.uri.path()) {
            // Model requests that fit the inspection bounds are read whole to see what they ask
            // for (the upstream cannot start before it has the whole JSON anyway); larger ones
            // stream through untouched and are accounted from their response.
            let declared = content_length(&parts.headers);
            match read_for_inspection(&state.bodies, body, declared, state.max_body_bytes).await? {
                ReadBody::Whole(bytes, held) => match inspect(&state.inspect, &parts, bytes) {
                    Ok(inspected) => {
                        if inspected.plan.body.is_some() {
                            parts.headers.insert(
                                header::CONTENT_LENGTH,
                                HeaderValue::from(inspected.body.len()),
                            );
                        }
                        let Inspected { view, plan, body } = inspected;
                        model_request = Some((Accounted { view, plan }, 0));
                        Held::new(body, held).boxed()
                    }
                    Err(bytes) => Held::new(bytes, held).boxed(),
                },
                ReadBody::Stream(body, why) => {
                    tracing::debug!(reason = ?why, "model request streamed uninspected");
                    if let Some(view) = uninspected_view(&parts) {
                        let bytes_per_token = state.inspect.view.bytes_per_token.max(1.0);
                        let prompt_floor = (declared.unwrap_or(0) as f64 / bytes_per_token) as u64;
                        model_request = Some((
                            Accounted {
                                view,
                                plan: InjectionPlan::nothing(),
                            },
                            prompt_floor,
                        ));
                    }
                    body
                }
            }
        } else {
            capped(body, state.max_body_bytes)
        };
        // Admission comes before registration: a queued request does no work, so accounting
        // must not see it in flight (DESIGN §3); a refused one never reaches the upstream.
        let accounted: Option<(InFlightGuard, Accounted, AdmissionPermit)> = match model_request {
            Some((inspected, prompt_floor)) => {
                let cost = state.admission.config().cost(&inspected.view, prompt_floor);
                let permit = state.admission.admit(cost).await?;
                let guard = self.register(&parts, &inspected.view);
                Some((guard, inspected, permit))
            }
            None => None,
        };
        // An `Upgrade: h2c` offer is hop-by-hop and simply declined: the request goes on as HTTP/1.1.
        strip_hop_by_hop(&mut parts.headers);
        parts.uri = state.upstream.uri_for(&parts.uri)?;
        parts.version = Version::HTTP_11;
        let response = match state.upstream.send(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(err) => {
                if let Some((guard, _, _)) = &accounted {
                    guard.finish(Outcome::Error);
                }
                return Err(err);
            }
        };
        let (mut parts, body) = response.into_parts();
        let body = IdleBody::new(body, state.upstream.idle_timeout());
        strip_hop_by_hop(&mut parts.headers);
        strip_energy_headers(&mut parts.headers);
        parts.version = Version::default();
        let Some((guard, inspected, permit)) = accounted else {
            return Ok(Response::from_parts(parts, body.boxed_unsync()));
        };
        let progress = guard.progress().clone();
        let public_id = progress.meta.public_id();
        let mut end = RequestEnd {
            guard,
            clock: state.clock,
            in_flight: state.in_flight.clone(),
            carbon: state.carbon,
            public_id: public_id.clone(),
            trailers_allowed,
            error_status: !parts.status.is_success(),
            facts: state.facts.clone(),
            semantics: state.inspect.semantics.clone(),
            single_choice: inspected.view.accountable && inspected.view.expected_choices() == 1,
            settle_wait: state.settle_wait.filter(|_| state.energy_measured),
            admission: Some(permit),
        };
        if is_event_stream(&parts.headers) {
            progress.progress_visible.store(true, Relaxed);
            let mut config = ObserverConfig::for_request(
                &inspected.view,
                &inspected.plan,
                state.inspect.energy_in_usage,
            );
            // Settled mode: the relay fills the `energy` object in once the request has settled.
            config.defer_energy = config.add_energy && end.settle_wait.is_some();
            let observer = StreamObserver::new(config);
            if observer.rewrites() {
                remove_in_order(&mut parts.headers, &header::CONTENT_LENGTH);
            }
            parts
                .headers
                .insert(ENERGY_REQUEST_ID, header_value(&public_id));
            if declare_trailers && content_length(&parts.headers).is_none() {
                declare_energy_trailers(&mut parts.headers);
            }
            let body = RelayBody::new(body, Some(observer), end);
            return Ok(Response::from_parts(parts, body.boxed_unsync()));
        }
        if content_length(&parts.headers).is_some_and(|n| n <= state.max_buffered_response_bytes) {
            // vLLM sends a non-streaming body at once when generation ends: reading it whole costs
            // nothing and lets the energy ride in the headers.
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    end.guard.finish(Outcome::Error);
                    if err.is::<UpstreamIdle>() {
                        return Err(ProxyError::UpstreamTimeout(
                            state.upstream.idle_timeout().as_millis(),
                        ));
                    }
                    return Err(ProxyError::UpstreamUnavailable(format!(
                        "upstream body failed: {err}"
                    )));
                }
            };
            // The upstream is done with it: its capacity is free for the next.
            drop(end.admission.take());
            let now = state.clock.now_ns();
            let (usage, metrics) = usage_and_metrics(inspected.view.endpoint, &bytes);
            if let Some(usage) = usage {
                progress.set_prompt_exact(usage.prompt_tokens);
                progress.observe_completion(usage.completion_tokens, now);
                progress.completion_exact.store(true, Relaxed);
            }
            if let Some(metrics) = metrics {
                record_metrics(&state.facts, &progress, metrics, end.single_choice);
            }
            end.guard.finish(if end.error_status {
                Outcome::Error
            } else {
                Outcome::Ok
            });
            let figures = match should_wait(&progress, end.settle_wait) {
                // Settled mode: the headers are the energy-bearing part, and nothing of the
                // response has gone out yet. A client that leaves meanwhile drops this future;
                // the request keeps the outcome set just above.
                Some(max_wait) => {
                    let settled = progress.settled.wait_for(max_wait).await;
                    figures_after(
                        &progress,
                        settled,
                        state.clock.now_ns(),
                        &state.in_flight.rates,
                    )
                }
                None => progress.energy_now(now, &state.in_flight.rates),
            };
            insert_energy_headers(&mut parts.headers, &public_id, &figures, &state.carbon);
            return Ok(Response::from_parts(parts, full_body(bytes)));
        }
        parts
            .headers
            .insert(ENERGY_REQUEST_ID, header_value(&public_id));
        // With a content-length the HTTP/1.1 body has no trailer section to declare.
        if declare_trailers && content_length(&parts.headers).is_none() {
            declare_energy_trailers(&mut parts.headers);
        }
        // Too large (or of unknown length) to hold: it streams through, and its exact counts are
        // read from the `usage` at its end.
        let body = RelayBody::new(body, None, end).with_usage_tail(inspected.view.endpoint);
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }
}

/// What the response phase needs of an accounted request.
#[derive(Debug)]
struct Accounted {
    /// What the request asked for (opaque when it was streamed uninspected).
    view: RequestView,
    /// What was injected.
    plan: InjectionPlan,
}

/// The view of a model request forwarded uninspected: only its endpoint is known, and it is
/// accounted from its response (the counts its usage gives, else those counted from the stream,
/// `estimated`). `None` for a compressed body, which an inspected request would not account either.
fn uninspected_view(parts: &http::request::Parts) -> Option<RequestView> {
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    (!encoded).then(|| RequestView::opaque(endpoint_of(parts.uri.path())))
}

/// A response's `metrics`: its times go to the request, what it says about the upstream to the
/// shared facts.
pub(crate) fn record_metrics(
    facts: &UpstreamFacts,
    progress: &RequestProgress,
    metrics: MetricsField,
    single_choice: bool,
) {
    if let MetricsField::Times(t) = metrics {
        progress.set_engine_times(t.queue_ns, t.prefill_ns, t.generation_ns);
    }
    facts.observe(metrics, single_choice);
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
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
