//! The response body wrapper (linkerd's `body-eos` shape): every upstream frame passes through the
//! token observer on its way to the client, in the same poll, so backpressure and cadence are the
//! upstream's. At the upstream's end of stream the request is finished and its energy written as
//! trailers (when the client accepts them); a wrapper dropped before that (client gone) leaves the
//! in-flight guard to mark the request aborted. No task, no channel.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

use super::energy::{energy_headers, energy_json, Carbon};
use super::inspect::{ForceSource, SharedSemantics};
use super::learned::UpstreamFacts;
use super::service::record_metrics;
use super::BoxError;
use crate::clock::Clock;
use crate::observe::{Endpoint, InFlightGuard, Outcome, RequestProgress};
use crate::openai::observer::StreamObserver;
use crate::openai::usage::{MetricsField, UsageTail};

/// What the relay needs to close a request's accounts.
#[derive(Debug)]
pub struct RequestEnd {
    /// The request's in-flight guard; dropping it without `finish` means aborted.
    pub guard: InFlightGuard,
    /// The shared clock.
    pub clock: Clock,
    /// The registry (for the system rates used by energy estimates).
    pub in_flight: Arc<crate::observe::InFlight>,
    /// Carbon settings for the figures.
    pub carbon: Carbon,
    /// The `x-energy-request-id`.
    pub public_id: String,
    /// Whether energy trailers may be sent (HTTP/2, or HTTP/1.1 with `TE: trailers`).
    pub trailers_allowed: bool,
    /// The upstream answered with an error status: the outcome is `error` whatever the body says.
    pub error_status: bool,
    /// What responses tell about the upstream (per-request metrics).
    pub facts: Arc<UpstreamFacts>,
    /// The upstream's `stream_options` semantics, which a stream may show to force usage.
    pub semantics: Arc<SharedSemantics>,
    /// The request asked for one choice of one prompt (a `"metrics": null` then means "off").
    pub single_choice: bool,
}

impl RequestEnd {
    fn progress(&self) -> &Arc<RequestProgress> {
        self.guard.progress()
    }
}

pin_project! {
    /// A response body relayed from the upstream with observation.
    pub struct RelayBody {
        #[pin]
        inner: Incoming,
        observer: Option<StreamObserver>,
        end: Option<RequestEnd>,
        upstream_trailers: Option<HeaderMap>,
        pending_trailers: Option<HeaderMap>,
        stash: Option<Stashed>,
        usage_tail: Option<(Endpoint, UsageTail)>,
        done: bool,
    }
}

impl RelayBody {
    /// Wraps `inner`; `observer` reads (and, if it was configured so, rewrites) an SSE stream.
    pub fn new(inner: Incoming, observer: Option<StreamObserver>, end: RequestEnd) -> RelayBody {
        RelayBody {
            inner,
            observer,
            end: Some(end),
            upstream_trailers: None,
            pending_trailers: None,
            stash: None,
            usage_tail: None,
            done: false,
        }
    }

    /// Also reads the exact counts from the `usage` at the end of a non-streaming `endpoint` body
    /// (one too large to read whole before answering).
    pub fn with_usage_tail(mut self, endpoint: Endpoint) -> RelayBody {
        self.usage_tail = Some((endpoint, UsageTail::default()));
        self
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(trailers) = this.pending_trailers.take() {
                *this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            let next = match this.stash.take() {
                Some(Stashed::End) => None,
                Some(Stashed::Error(err)) => Some(Err(err)),
                None => {
                    ready!(this.inner.as_mut().poll_frame(cx)).map(|r| r.map_err(BoxError::from))
                }
            };
            match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = process(this.observer, this.end, this.usage_tail, data);
                        // Frames the upstream has already delivered go out together: fewer,
                        // larger writes to the client and no added wait (only what is ready now).
                        let mut joined: Option<BytesMut> = None;
                        while joined.as_ref().map_or(out.len(), |j| j.len()) < COALESCE_MAX_BYTES {
                            match this.inner.as_mut().poll_frame(cx) {
                                Poll::Pending => break,
                                Poll::Ready(None) => {
                                    *this.stash = Some(Stashed::End);
                                    break;
                                }
                                Poll::Ready(Some(Err(err))) => {
                                    *this.stash = Some(Stashed::Error(err.into()));
                                    break;
                                }
                                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                                    Ok(data) => {
                                        let more =
                                            process(this.observer, this.end, this.usage_tail, data);
                                        if !more.is_empty() {
                                            joined
                                                .get_or_insert_with(|| BytesMut::from(&out[..]))
                                                .extend_from_slice(&more);
                                        }
                                    }
                                    Err(frame) => {
                                        if let Ok(trailers) = frame.into_trailers() {
                                            this.upstream_trailers
                                                .get_or_insert_with(HeaderMap::new)
                                                .extend(trailers);
                                        }
                                    }
                                },
                            }
                        }
                        if let Some(joined) = joined {
                            out = joined.freeze();
                        }
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.upstream_trailers
                                .get_or_insert_with(HeaderMap::new)
                                .extend(trailers);
                        }
                    }
                },
                Some(Err(err)) => {
                    if let Some(end) = this.end.take() {
                        end.guard.finish(Outcome::Error);
                    }
                    *this.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    let tail = this
                        .observer
                        .as_mut()
                        .map(|o| o.finish())
                        .unwrap_or_default();
                    let saw_error = this.observer.as_ref().is_some_and(|o| o.saw_error());
                    let mut trailers = this.upstream_trailers.take();
                    if let (Some(observer), Some(end)) = (this.observer.as_ref(), this.end.as_ref())
                    {
                        let totals = observer.totals();
                        if let Some(t) = totals.engine_times {
                            end.facts.observe(MetricsField::Times(t), end.single_choice);
                        }
                        if totals.unasked_usage {
                            end.semantics.learn_forced(true, ForceSource::Stream);
                        }
                    }
                    if let (Some((endpoint, tail)), Some(end)) =
                        (this.usage_tail.take(), this.end.as_ref())
                    {
                        if let Some(metrics) = tail.metrics() {
                            record_metrics(&end.facts, end.progress(), metrics, end.single_choice);
                        }
                        if let Some(usage) = tail.usage(endpoint) {
                            let progress = end.progress();
                            progress.set_prompt_exact(usage.prompt_tokens);
                            progress
                                .observe_completion(usage.completion_tokens, end.clock.now_ns());
                            progress.completion_exact.store(true, Relaxed);
                        }
                    }
                    if let Some(end) = this.end.take() {
                        let outcome = if end.error_status || saw_error {
                            Outcome::Error
                        } else {
                            Outcome::Ok
                        };
                        end.guard.finish(outcome);
                        if end.trailers_allowed {
                            let figures = end
                                .progress()
                                .energy_now(end.clock.now_ns(), &end.in_flight.rates);
                            let mut ours = energy_headers(&end.public_id, &figures, &end.carbon);
                            if let Some(theirs) = trailers.take() {
                                for (name, value) in theirs.iter() {
                                    if !name.as_str().starts_with(super::headers::ENERGY_PREFIX) {
                                        ours.append(name.clone(), value.clone());
                                    }
                                }
                            }
                            trailers = Some(ours);
                        }
                    }
                    *this.pending_trailers = trailers;
                    if this.pending_trailers.is_none() {
                        *this.done = true;
                    }
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.observer {
            Some(o) if o.rewrites() => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

/// Most bytes joined from frames that are ready at once (larger writes would only delay the first
/// of them behind the processing of the rest).
const COALESCE_MAX_BYTES: usize = 64 * 1024;

/// What a coalescing read found after the data it returned: handled on the next poll.
enum Stashed {
    End,
    Error(BoxError),
}

impl std::fmt::Debug for Stashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stashed::End => f.write_str("End"),
            Stashed::Error(e) => write!(f, "Error({e})"),
        }
    }
}

/// One data frame through the observer (when there is one) and the usage tail reader.
fn process(
    observer: &mut Option<StreamObserver>,
    end: &Option<RequestEnd>,
    usage_tail: &mut Option<(Endpoint, UsageTail)>,
    data: Bytes,
) -> Bytes {
    let out = match (observer.as_mut(), end.as_ref()) {
        (Some(observer), Some(end)) => feed(observer, end, data),
        _ => data,
    };
    if let Some((_, tail)) = usage_tail.as_mut() {
        tail.push(&out);
    }
    out
}

/// One frame through the observer; the energy callback is what the final usage chunk carries.
fn feed(observer: &mut StreamObserver, end: &RequestEnd, data: Bytes) -> Bytes {
    let progress = end.progress();
    let now = end.clock.now_ns();
    let mut energy = || {
        Some(energy_json(
            &end.public_id,
            &progress.energy_now(end.clock.now_ns(), &end.in_flight.rates),
            &end.carbon,
        ))
    };
    observer.feed(data, now, progress, &mut energy)
}
