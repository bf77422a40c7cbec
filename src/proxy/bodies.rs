//! Request bodies: how much of a model request the proxy may hold to inspect it, and the bodies it
//! forwards. A model request is read whole only while it fits both bounds: `max_inspect_bytes` for
//! the request and `max_inspect_total_bytes` across all requests being read at once (a semaphore of
//! bytes, taken without waiting). A body over either bound is forwarded as a stream, untouched:
//! the bytes already read first, then the rest as the client sends it. Nothing is refused for size
//! here; only the optional hard cap `max_body_bytes` gives a 413 ([`ProxyError::BodyTooLarge`]).
//!
//! Owns the byte budget and its `/stats` counters; it must not parse bodies (that is
//! [`super::inspect`]) or touch accounting.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ProxyError;
use super::{BoxError, ProxyBody};

/// The bytes held for inspection across concurrent requests, and what happened to the bodies that
/// did not fit.
#[derive(Debug)]
pub struct InspectBudget {
    semaphore: Arc<Semaphore>,
    per_request: u64,
    total: u64,
    inspected: AtomicU64,
    too_large: AtomicU64,
    budget_full: AtomicU64,
}

/// Why a model request was forwarded without being inspected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uninspected {
    /// Its body is larger than `max_inspect_bytes`.
    TooLarge,
    /// Reading it would have held more than `max_inspect_total_bytes` across requests.
    BudgetFull,
}

/// The `/stats` figures of [`InspectBudget`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BodyStats {
    /// `max_inspect_bytes`.
    pub max_inspect_bytes: u64,
    /// `max_inspect_total_bytes`.
    pub max_inspect_total_bytes: u64,
    /// Bytes held for inspection right now, over all requests.
    pub inspect_bytes_held: u64,
    /// Model requests read whole and inspected.
    pub inspected: u64,
    /// Model requests forwarded as a stream, uninspected, because their body exceeds
    /// `max_inspect_bytes`.
    pub streamed_too_large: u64,
    /// Model requests forwarded as a stream, uninspected, because `max_inspect_total_bytes` was in
    /// use by other requests.
    pub streamed_budget_full: u64,
}

impl InspectBudget {
    /// A budget of `total` bytes, at most `per_request` of them for one request (`per_request` is
    /// clamped to `total`).
    pub fn new(per_request: u64, total: u64) -> Self {
        let max = Semaphore::MAX_PERMITS as u64;
        let total = total.min(max);
        InspectBudget {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            per_request: per_request.min(total),
            total,
            inspected: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            budget_full: AtomicU64::new(0),
        }
    }

    /// `max_inspect_bytes`.
    pub fn per_request(&self) -> u64 {
        self.per_request
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.total
            .saturating_sub(self.semaphore.available_permits() as u64)
    }

    /// The counters.
    pub fn stats(&self) -> BodyStats {
        BodyStats {
            max_inspect_bytes: self.per_request,
            max_inspect_total_bytes: self.total,
            inspect_bytes_held: self.held(),
            inspected: self.inspected.load(Relaxed),
            streamed_too_large: self.too_large.load(Relaxed),
            streamed_budget_full: self.budget_full.load(Relaxed),
        }
    }

    /// Takes `bytes` of the budget without waiting, adding them to `held`.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.semaphore.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                match held {
                    Some(h) => h.merge(permit),
                    None => *held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }

    fn count(&self, outcome: Option<Uninspected>) {
        match outcome {
            None => &self.inspected,
            Some(Uninspected::TooLarge) => &self.too_large,
            Some(Uninspected::BudgetFull) => &self.budget_full,
        }
        .fetch_add(1, Relaxed);
    }
}

/// A model request's body after the read for inspection.
#[derive(Debug)]
pub enum ReadBody {
    /// The whole body, and the part of the budget it holds (released when the forwarded body is
    /// dropped, i.e. once sent).
    Whole(Bytes, Option<OwnedSemaphorePermit>),
    /// Too large to hold: forward it as it comes, the bytes already read first.
    Stream(ProxyBody, Uninspected),
}

/// Reads a model request's body for inspection within the budget, or turns it into a stream.
/// `declared` is its content-length; `cap` the optional hard cap (`max_body_bytes`), enforced on
/// both outcomes.
pub async fn read_for_inspection(
    budget: &InspectBudget,
    mut body: Incoming,
    declared: Option<u64>,
    cap: Option<u64>,
) -> Result<ReadBody, ProxyError> {
    let per_request = budget.per_request;
    let mut held = None;
    let outcome = match declared {
        Some(n) if n > per_request => Some(Uninspected::TooLarge),
        Some(n) => (!budget.take(&mut held, n as usize)).then_some(Uninspected::BudgetFull),
        None => None,
    };
    if let Some(why) = outcome {
        budget.count(Some(why));
        return Ok(ReadBody::Stream(
            capped(PrefixThen::new(Bytes::new(), None, body), cap),
            why,
        ));
    }
    // With a declared length the budget is already taken; without one it is taken frame by frame.
    let metered = declared.is_none();
    let mut buf = BytesMut::new();
    loop {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| ProxyError::BadRequestBody(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            // Request trailers are not forwarded (as before: a read body has none).
            continue;
        };
        let after = (buf.len() + data.len()) as u64;
        if cap.is_some_and(|c| after > c) {
            return Err(ProxyError::BodyTooLarge {
                limit: cap.unwrap_or(0),
            });
        }
        let why = if after > per_request {
            Some(Uninspected::TooLarge)
        } else if metered && !budget.take(&mut held, data.len()) {
            Some(Uninspected::BudgetFull)
        } else {
            None
        };
        if let Some(why) = why {
            budget.count(Some(why));
            buf.extend_from_slice(&data);
            let cap_left = cap.map(|c| c.saturating_sub(buf.len() as u64));
            let prefix = buf.freeze();
            return Ok(ReadBody::Stream(
                capped_rest(PrefixThen::new(prefix, held, body), cap_left, cap),
                why,
            ));
        }
        buf.extend_from_slice(&data);
    }
    budget.count(None);
    Ok(ReadBody::Whole(buf.freeze(), held))
}

/// A body streamed to the upstream, cut at the hard cap when one is set.
pub fn capped<B>(body: B, cap: Option<u64>) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    capped_rest(body, cap, cap)
}

/// `body` limited to `left` bytes (a 413 naming `cap` beyond them).
fn capped_rest<B>(body: B, left: Option<u64>, cap: Option<u64>) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match left {
        Some(left) => {
            let left = usize::try_from(left).unwrap_or(usize::MAX);
            let cap = cap.unwrap_or(0);
            Limited::new(body, left)
                .map_err(move |e| -> BoxError {
                    if e.is::<LengthLimitError>() {
                        Box::new(CapExceeded(cap))
                    } else {
                        e
                    }
                })
                .boxed_unsync()
        }
        None => body.map_err(Into::into).boxed_unsync(),
    }
}

/// A streamed request body went past `max_body_bytes` (the upstream call then answers 413).
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct CapExceeded(pub u64);

pin_project! {
    /// The bytes read before the body turned out too large, then the rest as the client sends it.
    /// The budget those bytes took is released as soon as they have gone.
    pub struct PrefixThen<B> {
        prefix: Option<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
        #[pin]
        rest: B,
    }
}

impl<B> PrefixThen<B> {
    /// `prefix` (holding `permit`), then `rest`.
    pub fn new(prefix: Bytes, permit: Option<OwnedSemaphorePermit>, rest: B) -> Self {
        PrefixThen {
            prefix: (!prefix.is_empty()).then_some(prefix),
            permit,
            rest,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for PrefixThen<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        // The prefix is with hyper now; its budget goes back.
        this.permit.take();
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(p) = &self.prefix {
            let n = p.len() as u64;
            // The upper bound first: a lower bound may not pass it.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(n));
            }
            hint.set_lower(hint.lower().saturating_add(n));
        }
        hint
    }
}

pin_project! {
    /// A whole body that gives its part of the inspection budget back when it is dropped.
    pub struct Held {
        data: Option<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl Held {
    /// `data`, holding `permit` until sent.
    pub fn new(data: Bytes, permit: Option<OwnedSemaphorePermit>) -> Self {
        Held {
            data: (!data.is_empty()).then_some(data),
            permit,
        }
    }

    /// As the proxy's body type.
    pub fn boxed(self) -> ProxyBody {
        self.map_err(|never| match never {}).boxed_unsync()
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        Poll::Ready(this.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_taken_without_waiting_and_given_back() {
        let budget = InspectBudget::new(10, 25);
        let mut a = None;
        assert!(budget.take(&mut a, 10));
        assert!(budget.take(&mut a, 10));
        assert_eq!(budget.held(), 20);
        let mut b = None;
        assert!(!budget.take(&mut b, 10), "only 5 bytes left");
        assert!(budget.take(&mut b, 5));
        drop(a);
        assert_eq!(budget.held(), 5);
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(budget.take(&mut None, 0));
    }

    #[test]
    fn per_request_is_clamped_to_the_total() {
        assert_eq!(InspectBudget::new(100, 10).per_request(), 10);
        let s = InspectBudget::new(4, 10).stats();
        assert_eq!((s.max_inspect_bytes, s.max_inspect_total_bytes), (4, 10));
    }

    #[tokio::test]
    async fn a_prefix_goes_first_and_returns_its_budget() {
        let budget = InspectBudget::new(8, 8);
        let mut held = None;
        assert!(budget.take(&mut held, 4));
        let rest = http_body_util::Full::new(Bytes::from_static(b"5678"));
        let mut body = PrefixThen::new(Bytes::from_static(b"1234"), held, rest);
        assert_eq!(body.size_hint().exact(), Some(8));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"1234");
        assert_eq!(budget.held(), 4, "held until hyper has the prefix");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"5678");
        assert_eq!(budget.held(), 0);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_held_body_releases_on_drop() {
        let budget = InspectBudget::new(8, 8);
        let mut held = None;
        assert!(budget.take(&mut held, 3));
        let body = Held::new(Bytes::from_static(b"abc"), held);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(budget.held(), 0);
    }
}
