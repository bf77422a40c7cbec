//! The upstream idle bound: a body wrapper that ends an upstream response body with an error when
//! the upstream sends nothing for `upstream_idle_timeout_ms` while the proxy is waiting for it. A
//! stalled stream then ends for the client in an error (never a clean-looking truncation), the
//! upstream request is dropped (closing its connection), and the relay records `error`.
//!
//! Only the upstream's silence counts: the clock starts when the proxy asks for the next frame
//! and finds none ready, so a slow client (backpressure) never trips it. A consumer that only
//! looks for more (the relay joining frames that are ready at once) and goes on uses
//! [`IdleBody::poll_ready_frame`], so that its look does not start the clock either. One timer
//! per body, reset only when it fires early, not per frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// The upstream sent nothing for the configured time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("upstream sent nothing for {0} ms")]
pub struct UpstreamIdle(pub u128);

pin_project! {
    /// `inner` with an idle bound between frames.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // Created on the first wait, then reused.
        sleep: Option<Pin<Box<Sleep>>>,
        // When the current wait for a frame began (`None`: not waiting).
        waiting_since: Option<Instant>,
        done: bool,
    }
}

impl<B> IdleBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleBody {
            inner,
            timeout,
            sleep: None,
            waiting_since: None,
            done: false,
        }
    }
}

impl<B> IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Looks for a frame that is ready without waiting for one: a consumer that goes on when
    /// none is (the relay joining the frames that are ready at once) neither starts the idle
    /// clock nor reads it (starting it on every look and resetting it after was one clock read
    /// per look: on the overhead bench's (b), 35 of the worker's 75 samples of
    /// `clock_gettime`, which was 3.4 % of them).
    pub fn poll_ready_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let frame = ready!(this.inner.poll_frame(cx));
        *this.waiting_since = None;
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = self.as_mut().poll_ready_frame(cx) {
            return Poll::Ready(frame);
        }
        // Nothing ready: the wait for the upstream starts (or goes on).
        let this = self.project();
        let since = *this.waiting_since.get_or_insert_with(Instant::now);
        let Some(deadline) = since.checked_add(*this.timeout) else {
            // Beyond the clock's range: no bound.
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                *this.done = true;
                let err = UpstreamIdle(this.timeout.as_millis());
                return Poll::Ready(Some(Err(Box::new(err))));
            }
            // Set for an earlier wait: move it to this one's deadline.
            sleep.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_ends_in_an_error_after_the_bound() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let mut body = IdleBody::new(body, Duration::from_millis(100));
        tx.send_data(Bytes::from_static(b"a")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        // Paused time: the runtime advances the clock to the timer once everything is idle.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<UpstreamIdle>(), "{err}");
        assert!(body.frame().await.is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_went_on_does_not_start_the_clock() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let mut body = Box::pin(IdleBody::new(body, Duration::from_millis(100)));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(body.as_mut().poll_ready_frame(&mut cx).is_pending());
        // The client was slow for longer than the bound; the upstream was never waited on.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            body.as_mut().poll_frame(&mut cx).is_pending(),
            "no idle error"
        );
        tx.send_data(Bytes::from_static(b"a")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_within_the_bound_keep_it_alive() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let mut body = IdleBody::new(body, Duration::from_millis(100));
        let sender = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send_data(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            frame.expect("no idle error: each gap is under the bound");
            got += 1;
            if got == 5 {
                break;
            }
        }
        sender.await.unwrap();
        assert_eq!(got, 5);
    }
}
