//! Coalescing: what the upstream connection has already read leaves in one client write. hyper's
//! client hands a response body over one chunk at a time, each behind a task switch, so the relay
//! joins every frame that is ready now and steps aside (a yield, never a wait) for the ones the
//! connection task is about to hand over.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::Incoming;

use super::frame::{hold_energy_part, process, Settling};
use super::RequestEnd;
use crate::observe::{Endpoint, EnergyNow};
use crate::openai::observer::StreamObserver;
use crate::openai::usage::UsageTail;
use crate::proxy::idle::IdleBody;
use crate::proxy::BoxError;

/// Most bytes joined from frames that are ready at once (larger writes would only delay the first
/// of them behind the processing of the rest).
pub(super) const COALESCE_MAX_BYTES: usize = 64 * 1024;

/// Steps aside in a row that may bring nothing before what is gathered goes out. Measured with
/// hyper 1.12 on tokio's multi-thread runtime: the connection task hands the next chunk over on
/// the second yield about as often as on the first (it runs after the body's task is polled once
/// more), rarely later; each empty step costs one poll of this task, never a wait.
pub(super) const MAX_EMPTY_STEPS: u32 = 2;

/// Joins to `held` every frame the upstream body has ready now (processed as they come), up to
/// [`COALESCE_MAX_BYTES`]; an end or error found after them is stashed for the next poll. Returns
/// whether it found any. Never waits: a body with nothing ready is told it was not waited on.
#[allow(clippy::too_many_arguments)]
pub(super) fn gather(
    mut inner: Pin<&mut IdleBody<Incoming>>,
    cx: &mut Context<'_>,
    held: &mut Held,
    observer: &mut Option<StreamObserver>,
    end: &Option<RequestEnd>,
    usage_tail: &mut Option<(Endpoint, UsageTail)>,
    settling: &mut Option<Settling>,
    figures: &mut Option<EnergyNow>,
    stash: &mut Option<Stashed>,
    upstream_trailers: &mut Option<HeaderMap>,
) -> bool {
    let mut found = false;
    // The frames ready now arrived together: one clock read for all of them.
    let mut now = None;
    while settling.is_none() && stash.is_none() && held.len() < COALESCE_MAX_BYTES {
        match inner.as_mut().poll_ready_frame(cx) {
            // Nothing more ready: what is ready goes out, no wait begins.
            Poll::Pending => break,
            Poll::Ready(None) => *stash = Some(Stashed::End),
            Poll::Ready(Some(Err(err))) => *stash = Some(Stashed::Error(err)),
            Poll::Ready(Some(Ok(frame))) => {
                found = true;
                match frame.into_data() {
                    Ok(data) => {
                        let (mut more, split) = process(observer, end, usage_tail, data, &mut now);
                        if let Some(split) = split {
                            more = hold_energy_part(observer, end, settling, figures, more, split);
                        }
                        held.extend(&more);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            upstream_trailers
                                .get_or_insert_with(HeaderMap::new)
                                .extend(trailers);
                        }
                    }
                }
            }
        }
    }
    found
}

/// Whether to step aside once before sending `held`, so that the upstream connection's task can
/// hand over what it has already read. hyper's client passes a response body from its connection
/// task one chunk (one SSE event) at a time, each behind a task switch: without this, every event
/// of a burst the proxy read in one go would leave in its own write to the client. The step is a
/// yield (the task is queued behind those ready to run, the connection's among them), not a wait:
/// if nothing more came, `held` goes out on the very next poll.
pub(super) fn step_aside(
    cx: &mut Context<'_>,
    settling: &Option<Settling>,
    stash: &Option<Stashed>,
    held: &Held,
) -> bool {
    if settling.is_some() || stash.is_some() || held.is_empty() || held.len() >= COALESCE_MAX_BYTES
    {
        return false;
    }
    yield_once(cx)
}

/// Queues this task behind the others ready to run (the wake is scheduled at once); `false` if
/// the runtime declined. The first poll of a yield does that; the future is not needed after it.
pub(super) fn yield_once(cx: &mut Context<'_>) -> bool {
    let mut yielded = std::pin::pin!(tokio::task::yield_now());
    yielded.as_mut().poll(cx).is_pending()
}

/// Output gathered for one client write: the first chunk as it came, copied into a buffer only
/// when more joins it (most paced events go out alone, with no copy).
pub(super) struct Held {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Held {
    pub(super) fn new(first: Bytes) -> Self {
        Held {
            first,
            joined: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn extend(&mut self, more: &[u8]) {
        if more.is_empty() {
            return;
        }
        let first = &self.first;
        self.joined
            .get_or_insert_with(|| BytesMut::from(&first[..]))
            .extend_from_slice(more);
    }

    pub(super) fn freeze(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }
}

/// What a coalescing read found after the data it returned: handled on the next poll.
pub(super) enum Stashed {
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
