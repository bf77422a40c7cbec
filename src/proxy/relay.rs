//! The response body wrapper (linkerd's `body-eos` shape): every upstream frame passes through the
//! token observer on its way to the client, in the same poll, so backpressure and cadence are the
//! upstream's. At the upstream's end of stream the request is finished and its energy written as
//! trailers (when the client accepts them); a wrapper dropped before that (client gone) leaves the
//! in-flight guard to mark the request aborted. No task, no channel.
//!
//! In settled mode (`response_energy = "settled"`) the energy-bearing parts wait here, inside the
//! wrapper, for the request's settled signal (bounded): the final usage chunk (from where its
//! `energy` value belongs, with everything after it) and the trailers. Every other frame flows at
//! once; while a part waits, the upstream is not read (backpressure as usual).
//!
//! A frame's way through the observer and the parts held for settled figures are in `frame`;
//! joining the frames that are ready at once into one client write is in `gather`.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

mod frame;
mod gather;
use frame::{hold_energy_part, process, AfterSettle, Settling};
use gather::{gather, step_aside, yield_once, Held, Stashed, MAX_EMPTY_STEPS};

use super::energy::{energy_headers, energy_json, Carbon};
use super::idle::IdleBody;
use super::inspect::{ForceSource, SharedSemantics};
use super::learned::UpstreamFacts;
use super::service::record_metrics;
use super::settle::{figures_after, should_wait, wait, SettleWait};
use super::BoxError;
use crate::clock::Clock;
use crate::observe::{Endpoint, EnergyNow, InFlightGuard, Outcome, RequestProgress};
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
    /// Settled mode with a meter: the longest wait for the request's final figures.
    pub settle_wait: Option<Duration>,
    /// The request's admission; given back when the upstream's response ends (or the body is
    /// dropped), before any wait for settled figures.
    pub admission: Option<crate::proxy::admission::AdmissionPermit>,
}

impl RequestEnd {
    fn progress(&self) -> &Arc<RequestProgress> {
        self.guard.progress()
    }

    /// The bounded wait for settled figures, when this request should wait.
    fn settle(&self) -> Option<SettleWait> {
        should_wait(self.progress(), self.settle_wait).map(|max| wait(self.progress().clone(), max))
    }

    /// The figures now, without waiting.
    fn figures_now(&self) -> EnergyNow {
        self.progress()
            .energy_now(self.clock.now_ns(), &self.in_flight.rates)
    }

    /// The figures after a settle wait (`settled`: it ended before its bound).
    fn figures_after(&self, settled: bool) -> EnergyNow {
        figures_after(
            self.progress(),
            settled,
            self.clock.now_ns(),
            &self.in_flight.rates,
        )
    }

    /// The energy trailers, with the upstream's own (minus `x-energy-*`) after them.
    fn trailers(&self, figures: &EnergyNow, theirs: Option<HeaderMap>) -> HeaderMap {
        let mut ours = energy_headers(&self.public_id, figures, &self.carbon);
        if let Some(theirs) = theirs {
            for (name, value) in theirs.iter() {
                if !name.as_str().starts_with(super::headers::ENERGY_PREFIX) {
                    ours.append(name.clone(), value.clone());
                }
            }
        }
        ours
    }
}

pin_project! {
    /// A response body relayed from the upstream with observation.
    pub struct RelayBody {
        #[pin]
        inner: IdleBody<Incoming>,
        observer: Option<StreamObserver>,
        end: Option<RequestEnd>,
        upstream_trailers: Option<HeaderMap>,
        pending_trailers: Option<HeaderMap>,
        stash: Option<Stashed>,
        // Output gathered while the body stepped aside for the upstream connection's task
        // (see `gather`).
        gathered: Option<Held>,
        // Steps aside in a row that brought nothing.
        empty_steps: u32,
        // Data went out since this body last returned `Pending`.
        data_unflushed: bool,
        usage_tail: Option<(Endpoint, UsageTail)>,
        settling: Option<Settling>,
        // The figures the energy object carried (settled mode): the trailers repeat them.
        figures: Option<EnergyNow>,
        done: bool,
    }
}

impl RelayBody {
    /// Wraps `inner`; `observer` reads (and, if it was configured so, rewrites) an SSE stream.
    pub fn new(
        inner: IdleBody<Incoming>,
        observer: Option<StreamObserver>,
        end: RequestEnd,
    ) -> RelayBody {
        RelayBody {
            inner,
            observer,
            end: Some(end),
            upstream_trailers: None,
            pending_trailers: None,
            stash: None,
            gathered: None,
            empty_steps: 0,
            data_unflushed: false,
            usage_tail: None,
            settling: None,
            figures: None,
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
            if let Some(settling) = this.settling.as_mut() {
                let settled = ready!(settling.wait.as_mut().poll(cx));
                match this.settling.take().map(|s| s.then) {
                    Some(AfterSettle::UsageChunk(head, rest)) => {
                        if let Some(end) = this.end.as_ref() {
                            let figures = end.figures_after(settled);
                            *this.figures = Some(figures);
                            let text = energy_json(&end.public_id, &figures, &end.carbon);
                            let mut out =
                                BytesMut::with_capacity(head.len() + text.len() + rest.len());
                            out.extend_from_slice(&head);
                            out.extend_from_slice(text.as_bytes());
                            out.extend_from_slice(&rest);
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                    }
                    Some(AfterSettle::Trailers(end, theirs)) => {
                        let figures = end.figures_after(settled);
                        *this.pending_trailers = Some(end.trailers(&figures, theirs));
                    }
                    None => {}
                }
                continue;
            }
            if let Some(trailers) = this.pending_trailers.take() {
                *this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            if let Some(mut held) = this.gathered.take() {
                // Back from stepping aside: take what the connection task decoded meanwhile.
                let found = gather(
                    this.inner.as_mut(),
                    cx,
                    &mut held,
                    this.observer,
                    this.end,
                    this.usage_tail,
                    this.settling,
                    this.figures,
                    this.stash,
                    this.upstream_trailers,
                );
                *this.empty_steps = if found { 0 } else { *this.empty_steps + 1 };
                if *this.empty_steps < MAX_EMPTY_STEPS
                    && step_aside(cx, this.settling, this.stash, &held)
                {
                    *this.gathered = Some(held);
                    return Poll::Pending;
                }
                if held.is_empty() {
                    continue;
                }
                *this.data_unflushed = true;
                return Poll::Ready(Some(Ok(Frame::data(held.freeze()))));
            }
            let next = match this.stash.take() {
                Some(Stashed::End) => None,
                Some(Stashed::Error(err)) => {
                    if std::mem::take(this.data_unflushed) {
                        // hyper drops what it holds for the client when a body fails: step
                        // aside once so that the data before the failure is written first.
                        *this.stash = Some(Stashed::Error(err));
                        if yield_once(cx) {
                            return Poll::Pending;
                        }
                        continue;
                    }
                    Some(Err(err))
                }
                None => {
                    let next = this.inner.as_mut().poll_frame(cx);
                    if next.is_pending() {
                        *this.data_unflushed = false;
                    }
                    ready!(next)
                }
            };
            match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let (mut out, split) =
                            process(this.observer, this.end, this.usage_tail, data, &mut None);
                        if let Some(split) = split {
                            out = hold_energy_part(
                                this.observer,
                                this.end,
                                this.settling,
                                this.figures,
                                out,
                                split,
                            );
                        }
                        // Frames the upstream has already delivered go out together: fewer,
                        // larger writes to the client and no added wait (only what is ready now).
                        let mut held = Held::new(out);
                        gather(
                            this.inner.as_mut(),
                            cx,
                            &mut held,
                            this.observer,
                            this.end,
                            this.usage_tail,
                            this.settling,
                            this.figures,
                            this.stash,
                            this.upstream_trailers,
                        );
                        *this.empty_steps = 0;
                        if step_aside(cx, this.settling, this.stash, &held) {
                            *this.gathered = Some(held);
                            return Poll::Pending;
                        }
                        if held.is_empty() {
                            continue;
                        }
                        *this.data_unflushed = true;
                        return Poll::Ready(Some(Ok(Frame::data(held.freeze()))));
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
                    if let Some(mut end) = this.end.take() {
                        // The upstream is done with it: its capacity is free for the next.
                        drop(end.admission.take());
                        let outcome = if end.error_status || saw_error {
                            Outcome::Error
                        } else {
                            Outcome::Ok
                        };
                        // First writer wins: a stream finished at its final usage chunk (settled
                        // mode) keeps that outcome.
                        end.guard.finish(outcome);
                        if end.trailers_allowed {
                            let theirs = trailers.take();
                            if let Some(figures) = *this.figures {
                                trailers = Some(end.trailers(&figures, theirs));
                            } else if let Some(wait) = end.settle() {
                                *this.settling = Some(Settling {
                                    wait,
                                    then: AfterSettle::Trailers(Box::new(end), theirs),
                                });
                            } else {
                                trailers = Some(end.trailers(&end.figures_now(), theirs));
                            }
                        }
                    }
                    *this.pending_trailers = trailers;
                    if this.pending_trailers.is_none() && this.settling.is_none() {
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
