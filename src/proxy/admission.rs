//! Admission control of model requests (`max_inflight_requests`, `max_inflight_tokens`,
//! `max_queue`, `queue_timeout_ms`), and the queue and in-flight figures `/stats` and `/metrics`
//! read whether or not it is on.
//!
//! A model request costs one request and its token bound: its prompt estimate plus, for endpoints
//! that generate, its `max_tokens` (or `admission_default_max_tokens`) for every choice. One that
//! fits is admitted at once; otherwise it waits in a FIFO queue until it fits (strict order: a
//! later, smaller request never overtakes a waiting one). A full queue or a wait past the timeout
//! is a [`Rejected`], which the service answers with 429 and `Retry-After`. A request larger than
//! the whole token budget is admitted alone, when nothing else is in flight, rather than never.
//!
//! Bookkeeping lives in RAII guards: an [`AdmissionPermit`] gives its capacity back when dropped
//! (the relay carries it until the response ends, by end of stream, error or drop), and a queue
//! entry removes itself when its future is dropped (a client that leaves while queued). With
//! admission off no lock is ever taken: a permit only moves the published atomics.
//!
//! This module does no I/O; it reads the clock only for the queue timeout (`tokio::time`) and to
//! time each wait. It must not touch accounting: the service registers a request in flight only
//! once it is admitted, since queued requests do no work (DESIGN §3).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::observe::Endpoint;
use crate::openai::request::RequestView;

/// Upper bounds (seconds) of the queue-wait histogram buckets; the last bucket is `+Inf`.
pub const QUEUE_WAIT_BUCKETS_S: [f64; 13] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The admission limits; 0 means "no limit" for the two in-flight bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AdmissionConfig {
    /// Most model requests in flight at once (0: no limit).
    pub max_inflight_requests: u64,
    /// Most tokens (prompt estimate + completion bound) in flight at once (0: no limit).
    pub max_inflight_tokens: u64,
    /// Most requests waiting for admission; beyond it requests are rejected at once.
    pub max_queue: u64,
    /// Longest wait in the queue before a request is rejected.
    #[serde(rename = "queue_timeout_ms", serialize_with = "ser_ms")]
    pub queue_timeout: Duration,
    /// Completion bound of a generating request that sets none.
    pub default_max_tokens: u64,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AdmissionConfig {
    /// Off: no limit, nothing queued.
    pub fn off() -> Self {
        AdmissionConfig {
            max_inflight_requests: 0,
            max_inflight_tokens: 0,
            max_queue: 0,
            queue_timeout: Duration::from_secs(30),
            default_max_tokens: 0,
        }
    }

    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.max_inflight_requests > 0 || self.max_inflight_tokens > 0
    }

    /// The `Retry-After` of a rejection, seconds: the queue timeout rounded up, at least 1 (about
    /// the time a full queue takes to move).
    pub fn retry_after_s(&self) -> u64 {
        let ms = u64::try_from(self.queue_timeout.as_millis()).unwrap_or(u64::MAX);
        ms.div_ceil(1000).max(1)
    }

    /// The token cost of a request: prompt estimate plus, for generating endpoints, the completion
    /// bound (`max_tokens`, else the configured default) of every choice. `declared_prompt_tokens`
    /// is a floor for the prompt (the estimate of a body forwarded uninspected, from its length).
    pub fn cost(&self, view: &RequestView, declared_prompt_tokens: u64) -> u64 {
        let prompt = view.estimated_prompt_tokens.max(declared_prompt_tokens);
        let completion = match view.endpoint {
            Endpoint::Embeddings | Endpoint::Other => 0,
            _ => view
                .max_output()
                .unwrap_or(self.default_max_tokens)
                .saturating_mul(view.expected_choices()),
        };
        prompt.saturating_add(completion)
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_queue` requests were already waiting.
    QueueFull,
    /// It waited `queue_timeout_ms` without fitting.
    Timeout,
}

impl RejectReason {
    /// The label of `/metrics` and the key of `/stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::Timeout => "timeout",
        }
    }
}

/// A request admission refused (answered with 429 and `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .reason {
    RejectReason::QueueFull => format!("admission queue full ({} waiting); retry later", .limit),
    RejectReason::Timeout => format!("no capacity within the admission queue timeout of {} ms; retry later", .limit),
})]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// `max_queue` (queue full) or `queue_timeout_ms` (timeout), for the message.
    pub limit: u64,
    /// The `Retry-After` seconds.
    pub retry_after_s: u64,
}

/// Published counters (atomics: read by admin without a lock).
#[derive(Debug, Default)]
struct Counters {
    queue_length: AtomicU64,
    inflight_requests: AtomicU64,
    inflight_tokens: AtomicU64,
    admitted: AtomicU64,
    queued: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_timeout: AtomicU64,
    left_queue: AtomicU64,
    wait_buckets: [AtomicU64; QUEUE_WAIT_BUCKETS_S.len() + 1],
    wait_sum_ns: AtomicU64,
    wait_count: AtomicU64,
    wait_max_ns: AtomicU64,
}

/// One waiting request.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    cost: u64,
    grant: oneshot::Sender<()>,
}

/// What the lock guards (admission on only).
#[derive(Debug, Default)]
struct Books {
    requests: u64,
    tokens: u64,
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
}

/// The admission controller, shared by all connections.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    enabled: bool,
    books: Mutex<Books>,
    counters: Counters,
}

impl Admission {
    /// A controller with `config` (off when it sets no limit).
    pub fn new(config: AdmissionConfig) -> Self {
        Admission {
            enabled: config.enabled(),
            config,
            books: Mutex::new(Books::default()),
            counters: Counters::default(),
        }
    }

    /// The limits.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock leaves consistent books (every edit is one step).
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fits(&self, b: &Books, cost: u64) -> bool {
        let c = &self.config;
        (c.max_inflight_requests == 0 || b.requests < c.max_inflight_requests)
            && (c.max_inflight_tokens == 0
                || b.requests == 0
                || b.tokens.saturating_add(cost) <= c.max_inflight_tokens)
    }

    fn take(&self, b: &mut Books, cost: u64) {
        b.requests += 1;
        b.tokens = b.tokens.saturating_add(cost);
        self.publish_inflight(b);
    }

    fn publish_inflight(&self, b: &Books) {
        self.counters.inflight_requests.store(b.requests, Relaxed);
        self.counters.inflight_tokens.store(b.tokens, Relaxed);
        self.counters
            .queue_length
            .store(b.waiting.len() as u64, Relaxed);
    }

    /// Admits the waiters at the head of the queue that now fit, in order.
    fn dispatch(&self, b: &mut Books) {
        while let Some(front) = b.waiting.front() {
            if !self.fits(b, front.cost) {
                break;
            }
            let Some(w) = b.waiting.pop_front() else {
                break;
            };
            self.take(b, w.cost);
            // A failed send means the waiter's receiver is gone; its entry's drop then finds the
            // ticket out of the queue and gives the capacity back, so nothing is undone here.
            let _ = w.grant.send(());
        }
        self.publish_inflight(b);
    }

    fn release(&self, cost: u64) {
        if !self.enabled {
            self.counters.inflight_requests.fetch_sub(1, Relaxed);
            self.counters.inflight_tokens.fetch_sub(cost, Relaxed);
            return;
        }
        let mut b = self.books();
        b.requests = b.requests.saturating_sub(1);
        b.tokens = b.tokens.saturating_sub(cost);
        self.dispatch(&mut b);
    }

    fn observe_wait(&self, wait: Duration) {
        let c = &self.counters;
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        let s = wait.as_secs_f64();
        let i = QUEUE_WAIT_BUCKETS_S.partition_point(|b| *b < s);
        if let Some(slot) = c.wait_buckets.get(i) {
            slot.fetch_add(1, Relaxed);
        }
        c.wait_sum_ns.fetch_add(ns, Relaxed);
        c.wait_count.fetch_add(1, Relaxed);
        c.wait_max_ns.fetch_max(ns, Relaxed);
    }

    /// Admits at once, or `None` when the request would have to queue (or be refused). With
    /// admission off this always admits and takes no lock.
    pub fn try_admit(self: &Arc<Self>, cost: u64) -> Option<AdmissionPermit> {
        if !self.enabled {
            self.counters.inflight_requests.fetch_add(1, Relaxed);
            self.counters.inflight_tokens.fetch_add(cost, Relaxed);
            self.counters.admitted.fetch_add(1, Relaxed);
            return Some(self.permit(cost));
        }
        let mut b = self.books();
        if !(b.waiting.is_empty() && self.fits(&b, cost)) {
            return None;
        }
        self.take(&mut b, cost);
        drop(b);
        self.counters.admitted.fetch_add(1, Relaxed);
        self.observe_wait(Duration::ZERO);
        Some(self.permit(cost))
    }

    fn permit(self: &Arc<Self>, cost: u64) -> AdmissionPermit {
        AdmissionPermit {
            admission: self.clone(),
            cost,
        }
    }

    fn reject(&self, reason: RejectReason) -> Rejected {
        let (counter, limit) = match reason {
            RejectReason::QueueFull => (&self.counters.rejected_queue_full, self.config.max_queue),
            RejectReason::Timeout => (
                &self.counters.rejected_timeout,
                u64::try_from(self.config.queue_timeout.as_millis()).unwrap_or(u64::MAX),
            ),
        };
        counter.fetch_add(1, Relaxed);
        Rejected {
            reason,
            limit,
            retry_after_s: self.config.retry_after_s(),
        }
    }

    /// Admits a request of `cost` tokens: at once when it fits and nobody waits, else after its
    /// turn in the queue. Dropping the future while queued removes the request from the queue.
    pub async fn admit(self: &Arc<Self>, cost: u64) -> Result<AdmissionPermit, Rejected> {
        if let Some(permit) = self.try_admit(cost) {
            return Ok(permit);
        }
        let (tx, rx) = oneshot::channel();
        let mut entry = {
            let mut b = self.books();
            // Checked again under the same lock: a slot may have freed since.
            if b.waiting.is_empty() && self.fits(&b, cost) {
                self.take(&mut b, cost);
                drop(b);
                self.counters.admitted.fetch_add(1, Relaxed);
                self.observe_wait(Duration::ZERO);
                return Ok(self.permit(cost));
            }
            if b.waiting.len() as u64 >= self.config.max_queue {
                drop(b);
                return Err(self.reject(RejectReason::QueueFull));
            }
            let ticket = b.next_ticket;
            b.next_ticket += 1;
            b.waiting.push_back(Waiter {
                ticket,
                cost,
                grant: tx,
            });
            self.publish_inflight(&b);
            QueueEntry {
                admission: self.clone(),
                ticket,
                cost,
                armed: true,
                timed_out: false,
            }
        };
        self.counters.queued.fetch_add(1, Relaxed);
        let start = Instant::now();
        match tokio::time::timeout(self.config.queue_timeout, rx).await {
            Ok(Ok(())) => {
                entry.armed = false;
                self.counters.admitted.fetch_add(1, Relaxed);
                self.observe_wait(start.elapsed());
                Ok(self.permit(cost))
            }
            // The sender is only dropped once granted or removed, never while queued: treat a
            // dropped one like the timeout (the entry's drop gives back whatever was taken).
            Ok(Err(_)) | Err(_) => {
                entry.timed_out = true;
                drop(entry);
                Err(self.reject(RejectReason::Timeout))
            }
        }
    }

    /// The published figures.
    pub fn stats(&self) -> AdmissionStats {
        let c = &self.counters;
        let wait_count = c.wait_count.load(Relaxed);
        let wait_sum_s = c.wait_sum_ns.load(Relaxed) as f64 / 1e9;
        AdmissionStats {
            enabled: self.enabled,
            limits: self.config,
            queue_length: c.queue_length.load(Relaxed),
            inflight_requests: c.inflight_requests.load(Relaxed),
            inflight_tokens: c.inflight_tokens.load(Relaxed),
            admitted: c.admitted.load(Relaxed),
            queued: c.queued.load(Relaxed),
            rejected: RejectedCounts {
                queue_full: c.rejected_queue_full.load(Relaxed),
                timeout: c.rejected_timeout.load(Relaxed),
            },
            left_queue: c.left_queue.load(Relaxed),
            queue_wait: QueueWait {
                count: wait_count,
                sum_seconds: wait_sum_s,
                mean_seconds: (wait_count > 0).then(|| wait_sum_s / wait_count as f64),
                max_seconds: c.wait_max_ns.load(Relaxed) as f64 / 1e9,
                bucket_counts: c.wait_buckets.iter().map(|b| b.load(Relaxed)).collect(),
            },
        }
    }
}

/// The capacity of one admitted request, given back on drop (when its response ends).
#[derive(Debug)]
pub struct AdmissionPermit {
    admission: Arc<Admission>,
    cost: u64,
}

impl AdmissionPermit {
    /// The tokens it holds.
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        self.admission.release(self.cost);
    }
}

/// A request's place in the queue; dropped while armed it leaves the queue, or, if it was granted
/// meanwhile, gives the granted capacity back.
#[derive(Debug)]
struct QueueEntry {
    admission: Arc<Admission>,
    ticket: u64,
    cost: u64,
    armed: bool,
    timed_out: bool,
}

impl Drop for QueueEntry {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let a = &self.admission;
        let mut b = a.books();
        if let Some(i) = b.waiting.iter().position(|w| w.ticket == self.ticket) {
            b.waiting.remove(i);
            if !self.timed_out {
                a.counters.left_queue.fetch_add(1, Relaxed);
            }
            // Whoever waited behind it may fit now.
            a.dispatch(&mut b);
        } else {
            // Granted between the wake-up and the drop: give it back.
            b.requests = b.requests.saturating_sub(1);
            b.tokens = b.tokens.saturating_sub(self.cost);
            a.dispatch(&mut b);
        }
    }
}

/// Rejections by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedCounts {
    /// The queue was full.
    pub queue_full: u64,
    /// The queue wait passed `queue_timeout_ms`.
    pub timeout: u64,
}

/// The queue-wait distribution of admitted requests (0 for those admitted at once; admission on
/// only).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueWait {
    /// Admitted requests observed.
    pub count: u64,
    /// Sum of their waits, seconds.
    pub sum_seconds: f64,
    /// Mean wait, seconds (null before any).
    pub mean_seconds: Option<f64>,
    /// Longest wait, seconds.
    pub max_seconds: f64,
    /// Per-bucket (not cumulative) counts over [`QUEUE_WAIT_BUCKETS_S`] and `+Inf`.
    #[serde(skip)]
    pub bucket_counts: Vec<u64>,
}

/// The `/stats` `admission` object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdmissionStats {
    /// Whether any limit is set.
    pub enabled: bool,
    /// The limits.
    pub limits: AdmissionConfig,
    /// Requests waiting now.
    pub queue_length: u64,
    /// Admitted model requests whose response has not ended.
    pub inflight_requests: u64,
    /// Their tokens (prompt estimate + completion bound).
    pub inflight_tokens: u64,
    /// Model requests admitted since start.
    pub admitted: u64,
    /// Of them and the rejected, requests that had to wait in the queue.
    pub queued: u64,
    /// Requests refused with 429, by reason.
    pub rejected: RejectedCounts,
    /// Requests whose client left while they waited.
    pub left_queue: u64,
    /// Time admitted requests waited.
    pub queue_wait: QueueWait,
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
