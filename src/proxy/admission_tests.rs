//! Admission unit tests: time is tokio's paused clock, never the wall.

use super::*;

fn config(requests: u64, tokens: u64, queue: u64) -> AdmissionConfig {
    AdmissionConfig {
        max_inflight_requests: requests,
        max_inflight_tokens: tokens,
        max_queue: queue,
        queue_timeout: Duration::from_secs(5),
        default_max_tokens: 100,
    }
}

/// Polls a future once (admission futures are ready at once or wait on a grant).
fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    use std::task::{Context, Poll};
    let waker = futures_util::task::noop_waker_ref();
    match std::pin::Pin::new(f).poll(&mut Context::from_waker(waker)) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[test]
fn off_admits_everything_and_counts() {
    let a = Arc::new(Admission::new(AdmissionConfig::off()));
    let permits: Vec<_> = (0..10).filter_map(|_| a.try_admit(7)).collect();
    assert_eq!(permits.len(), 10);
    let s = a.stats();
    assert!(!s.enabled);
    assert_eq!((s.inflight_requests, s.inflight_tokens), (10, 70));
    assert_eq!((s.admitted, s.queue_length, s.queue_wait.count), (10, 0, 0));
    drop(permits);
    let s = a.stats();
    assert_eq!((s.inflight_requests, s.inflight_tokens), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn queued_requests_are_admitted_in_order_when_slots_free() {
    let a = Arc::new(Admission::new(config(2, 0, 4)));
    let p1 = a.admit(1).await.expect("fits");
    let p2 = a.admit(1).await.expect("fits");
    let mut w3 = Box::pin(a.admit(1));
    let mut w4 = Box::pin(a.admit(1));
    assert!(poll_once(&mut w3).is_none());
    assert!(poll_once(&mut w4).is_none());
    assert_eq!(a.stats().queue_length, 2);
    // A newcomer that would fit by count still queues behind the waiters (FIFO).
    assert!(a.try_admit(1).is_none());
    drop(p1);
    let p3 = poll_once(&mut w3).expect("granted").expect("admitted");
    assert!(poll_once(&mut w4).is_none(), "only one slot freed");
    drop(p2);
    let p4 = w4.await.expect("admitted");
    let s = a.stats();
    assert_eq!((s.inflight_requests, s.queue_length, s.queued), (2, 0, 2));
    assert_eq!((s.admitted, s.queue_wait.count), (4, 4));
    drop((p3, p4));
    assert_eq!(a.stats().inflight_requests, 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_at_once() {
    let a = Arc::new(Admission::new(config(1, 0, 1)));
    let _p = a.admit(1).await.expect("fits");
    let mut waiting = Box::pin(a.admit(1));
    assert!(poll_once(&mut waiting).is_none());
    let err = a.admit(1).await.expect_err("queue full");
    assert_eq!(err.reason, RejectReason::QueueFull);
    assert_eq!(err.retry_after_s, 5);
    assert!(err.to_string().contains("queue full"), "{err}");
    assert_eq!(a.stats().rejected.queue_full, 1);
    // No queue at all: refused as soon as it does not fit.
    let b = Arc::new(Admission::new(config(1, 0, 0)));
    let _q = b.admit(1).await.expect("fits");
    assert_eq!(
        b.admit(1).await.expect_err("no queue").reason,
        RejectReason::QueueFull
    );
}

#[tokio::test(start_paused = true)]
async fn the_queue_timeout_rejects_and_leaves_the_queue_empty() {
    let a = Arc::new(Admission::new(config(1, 0, 4)));
    let _p = a.admit(1).await.expect("fits");
    let err = a.admit(1).await.expect_err("the slot never frees");
    assert_eq!(err.reason, RejectReason::Timeout);
    let s = a.stats();
    assert_eq!(
        (s.queue_length, s.rejected.timeout, s.left_queue),
        (0, 1, 0)
    );
    assert_eq!(s.inflight_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_the_queue_and_lets_the_next_in() {
    // Tokens: the head needs 80 of 100 while 50 are held; the second needs 10 and waits behind it.
    let a = Arc::new(Admission::new(config(0, 100, 4)));
    let _held = a.admit(50).await.expect("fits");
    let mut head = Box::pin(a.admit(80));
    let mut next = Box::pin(a.admit(10));
    assert!(poll_once(&mut head).is_none());
    assert!(poll_once(&mut next).is_none(), "FIFO: no overtaking");
    drop(head);
    let s = a.stats();
    assert_eq!((s.left_queue, s.queue_length), (1, 0));
    let p = poll_once(&mut next).expect("dispatched").expect("admitted");
    assert_eq!(a.stats().inflight_tokens, 60);
    drop(p);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_after_its_grant_gives_the_capacity_back() {
    let a = Arc::new(Admission::new(config(1, 0, 4)));
    let p = a.admit(1).await.expect("fits");
    let mut w = Box::pin(a.admit(1));
    assert!(poll_once(&mut w).is_none());
    drop(p); // grants `w`, which is never polled again
    assert_eq!(a.stats().inflight_requests, 1);
    drop(w);
    let s = a.stats();
    assert_eq!((s.inflight_requests, s.queue_length), (0, 0));
    assert!(a.try_admit(1).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_token_budget_runs_alone() {
    let a = Arc::new(Admission::new(config(0, 100, 4)));
    let big = a.admit(500).await.expect("alone");
    let mut small = Box::pin(a.admit(1));
    assert!(poll_once(&mut small).is_none());
    drop(big);
    assert!(poll_once(&mut small).is_some());
}

#[test]
fn cost_counts_prompt_and_completion_bounds() {
    let c = config(1, 0, 0);
    let mut v = RequestView::opaque(Endpoint::ChatCompletions);
    v.estimated_prompt_tokens = 20;
    assert_eq!(c.cost(&v, 0), 120, "default completion bound");
    v.max_tokens = Some(10);
    v.n = 3;
    assert_eq!(c.cost(&v, 0), 50, "three choices of 10");
    assert_eq!(c.cost(&v, 40), 70, "declared prompt floor");
    let mut e = RequestView::opaque(Endpoint::Embeddings);
    e.estimated_prompt_tokens = 9;
    assert_eq!(c.cost(&e, 0), 9, "embeddings generate nothing");
    assert_eq!(AdmissionConfig::off().retry_after_s(), 30);
}
