//! OpenTelemetry export (cargo feature `otel`, off by default): finished request records as OTLP
//! log records and the energy books as OTLP metrics, POSTed as OTLP/HTTP JSON to
//! `{otel_endpoint}/v1/logs` and `{otel_endpoint}/v1/metrics`.
//!
//! Owns the exporter thread, its HTTP client and its counters. It never touches the data plane or
//! the ledger: accounting offers each finished record to a bounded channel without blocking (a
//! full channel drops the record and accounting counts it as `records_not_exported`); this thread
//! drains it in batches of at most [`MAX_BATCH`] records, flushed when a batch is full and at
//! every `otel_interval_ms`, when it also exports the counters that accounting and the sampler
//! published. A failed POST is not retried: its records are counted as failed and dropped, so a
//! dead collector costs a bounded amount of memory and never slows the proxy.
//!
//! Why hand-encoded OTLP/JSON rather than the `opentelemetry-otlp` stack: what is exported is two
//! fixed shapes (a flat record, a dozen counters), which the protobuf JSON mapping turns into a
//! few `serde_json` values ([`encode`]); the hyper client is already a dependency. The official
//! SDK would add its own batch processor, runtime glue, `prost`/`tonic` or `reqwest` and a large
//! compile-time cost for no behaviour we need, and would put the records through a logging or
//! tracing API whose queue we would then have to bound and count a second time. OTLP/HTTP JSON is
//! a stable part of the OTLP specification, accepted by the OpenTelemetry Collector's `otlp`
//! receiver and by the usual backends. The thread runs its own single-threaded runtime, like the
//! request log's writer thread, so export never competes with the proxy's workers.

pub mod encode;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::watch;

use crate::accounting::AccountingShared;
use crate::clock::Clock;
use crate::config::OtelConfig;
use crate::ledger::RequestRecord;
use crate::meter::status::SamplerStatus;
use encode::MetricsSnapshot;

/// Records per `/v1/logs` request at most.
pub const MAX_BATCH: usize = 512;

/// Longest wait for a receiver's answer while running.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for each final POST at shutdown, so that a dead collector cannot hold it up.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Which exports a POST belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// While running: waits up to [`TIMEOUT`], and at most [`SHUTDOWN_TIMEOUT`] more once the
    /// owner stops the exporter.
    Running,
    /// The last flush at stop: waits up to [`SHUTDOWN_TIMEOUT`].
    Final,
}

impl Phase {
    fn timeout(self) -> Duration {
        match self {
            Phase::Running => TIMEOUT,
            Phase::Final => SHUTDOWN_TIMEOUT,
        }
    }
}

/// How often the thread checks its stop flag while the channel is quiet.
const POLL: Duration = Duration::from_millis(100);

/// Response bodies read at most (OTLP answers are small; only the status matters).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The exporter's runtime could not be built.
    #[error("cannot build the OpenTelemetry exporter's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The OS refused the thread.
    #[error("cannot start the OpenTelemetry exporter thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("abandoned: no answer within {SHUTDOWN_TIMEOUT:?} of the exporter's stop")]
    Stopping,
    #[error("not sent: an earlier export failed while stopping")]
    GaveUp,
    #[error("{0}")]
    Transport(#[from] hyper_util::client::legacy::Error),
    #[error("receiver answered {0}")]
    Status(StatusCode),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
}

/// Counters of the exporter, shown in `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct OtelStatus {
    records_exported: AtomicU64,
    records_failed: AtomicU64,
    log_exports_failed: AtomicU64,
    metric_exports: AtomicU64,
    metric_exports_failed: AtomicU64,
}

/// A plain copy of [`OtelStatus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OtelCounts {
    /// Records the receiver accepted.
    pub records_exported: u64,
    /// Records lost with a failed `/v1/logs` request.
    pub records_failed: u64,
    /// Failed `/v1/logs` requests.
    pub log_exports_failed: u64,
    /// Accepted `/v1/metrics` requests.
    pub metric_exports: u64,
    /// Failed `/v1/metrics` requests.
    pub metric_exports_failed: u64,
}

impl OtelStatus {
    /// A copy of the counters.
    pub fn counts(&self) -> OtelCounts {
        OtelCounts {
            records_exported: self.records_exported.load(Relaxed),
            records_failed: self.records_failed.load(Relaxed),
            log_exports_failed: self.log_exports_failed.load(Relaxed),
            metric_exports: self.metric_exports.load(Relaxed),
            metric_exports_failed: self.metric_exports_failed.load(Relaxed),
        }
    }
}

/// What the metrics export reads: published copies only, never meters or the ledger.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Accounting's books and aggregates.
    pub accounting: Arc<AccountingShared>,
    /// The sampler's status (power), when a meter works.
    pub sampler: Option<Arc<SamplerStatus>>,
    /// The app's clock: its zero is the start of every cumulative counter.
    pub clock: Clock,
}

/// Owner of the exporter thread. Dropping it stops the thread after a last flush of what the
/// channel holds and a last metrics export (each bounded by a short timeout), and joins it.
#[derive(Debug)]
pub struct OtelExporter {
    status: Arc<OtelStatus>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl OtelExporter {
    /// Starts the exporter over `records` (the accounting export channel).
    pub fn spawn(
        config: OtelConfig,
        records: Receiver<Arc<RequestRecord>>,
        sources: Sources,
    ) -> Result<OtelExporter, OtelError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OtelError::Runtime)?;
        let status = Arc::new(OtelStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let exporter = Exporter {
            stop: stop_rx,
            gave_up: false,
            client: client(),
            config,
            sources,
            status: status.clone(),
            runtime,
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("joulegate-otel".into())
            .spawn(move || run(exporter, &records))
            .map_err(OtelError::Spawn)?;
        Ok(OtelExporter {
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// The exporter's counters.
    pub fn status(&self) -> &Arc<OtelStatus> {
        &self.status
    }
}

impl Drop for OtelExporter {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            // A panic in the thread was already reported; nothing more to do with it here.
            let _ = t.join();
        }
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

fn run(mut ex: Exporter, records: &Receiver<Arc<RequestRecord>>) {
    let interval = ex.config.interval;
    let mut batch: Vec<Arc<RequestRecord>> = Vec::with_capacity(MAX_BATCH);
    let mut next = Instant::now() + interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now()).min(POLL);
        let closed = match records.recv_timeout(wait) {
            Ok(r) => {
                batch.push(r);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        fill(&mut batch, records);
        if batch.len() >= MAX_BATCH {
            ex.export_logs(&mut batch, Phase::Running);
        }
        if closed || *ex.stop.borrow() {
            // What is queued, at most one queue's worth: in the app the sender (accounting) is
            // gone by now, so that is everything; a sender still feeding cannot keep us here.
            let mut left = ex.config.queue.max(MAX_BATCH);
            while left > 0 {
                fill(&mut batch, records);
                if batch.is_empty() {
                    break;
                }
                left = left.saturating_sub(batch.len());
                ex.export_logs(&mut batch, Phase::Final);
            }
            ex.export_metrics(Phase::Final);
            return;
        }
        if Instant::now() >= next {
            if !batch.is_empty() {
                ex.export_logs(&mut batch, Phase::Running);
            }
            ex.export_metrics(Phase::Running);
            next = Instant::now() + interval;
        }
    }
}

/// Moves what the channel holds into `batch`, up to [`MAX_BATCH`].
fn fill(batch: &mut Vec<Arc<RequestRecord>>, records: &Receiver<Arc<RequestRecord>>) {
    while batch.len() < MAX_BATCH {
        match records.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

struct Exporter {
    client: Client<HttpConnector, Full<Bytes>>,
    config: OtelConfig,
    sources: Sources,
    status: Arc<OtelStatus>,
    runtime: tokio::runtime::Runtime,
    /// Set when the owner is dropped: a POST under way is then given at most the short timeout,
    /// so that stopping never waits out the long one.
    stop: watch::Receiver<bool>,
    /// An export failed while stopping: the rest of the final flush is counted as failed without
    /// being tried, so that a dead receiver holds shutdown up for one short timeout, not one per
    /// batch.
    gave_up: bool,
    /// Whether the last export failed: failures are logged when they start and when they end,
    /// not at every interval.
    failing: bool,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Exporter {
    /// Exports and empties `batch`.
    fn export_logs(&mut self, batch: &mut Vec<Arc<RequestRecord>>, phase: Phase) {
        let clock = self.sources.clock;
        let body = encode::logs_body(
            batch,
            |r| {
                let ns = if r.end_ns > 0 { r.end_ns } else { r.arrival_ns };
                unix_ns(clock.wall(ns))
            },
            unix_ns(SystemTime::now()),
        );
        let n = batch.len() as u64;
        batch.clear();
        match self.post("/v1/logs", body, phase) {
            Ok(()) => {
                self.status.records_exported.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.status.records_failed.fetch_add(n, Relaxed);
                self.status.log_exports_failed.fetch_add(1, Relaxed);
                self.failed("logs", &e);
            }
        }
    }

    fn export_metrics(&mut self, phase: Phase) {
        let s = &self.sources;
        let snap = MetricsSnapshot {
            stats: s.accounting.stats(),
            models: s.accounting.aggregates().models.rows.into_iter().collect(),
            power_w: s.sampler.as_ref().and_then(|x| x.snapshot().power_w),
            start_unix_ns: unix_ns(s.clock.wall(0)),
            now_unix_ns: unix_ns(SystemTime::now()),
        };
        match self.post("/v1/metrics", encode::metrics_body(&snap), phase) {
            Ok(()) => {
                self.status.metric_exports.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.status.metric_exports_failed.fetch_add(1, Relaxed);
                self.failed("metrics", &e);
            }
        }
    }

    fn failed(&mut self, what: &str, e: &ExportError) {
        if !self.failing {
            tracing::warn!(
                endpoint = %self.config.endpoint.base(),
                what,
                error = %e,
                "OpenTelemetry export failed; data is dropped (and counted) until it succeeds"
            );
        }
        self.failing = true;
    }

    fn post(&mut self, path: &str, body: Vec<u8>, phase: Phase) -> Result<(), ExportError> {
        let timeout = phase.timeout();
        if self.gave_up {
            return Err(ExportError::GaveUp);
        }
        let result = self.runtime.block_on(async {
            let uri = format!("{}{}", self.config.endpoint.base(), path);
            let mut req = Request::post(uri).header(http::header::CONTENT_TYPE, "application/json");
            for (k, v) in &self.config.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req.body(Full::new(Bytes::from(body)))?;
            let exchange = async {
                let resp = self.client.request(req).await?;
                let status = resp.status();
                // Read the (small) answer so the connection can be reused; its content is not
                // needed (a partial success still means the receiver took the request).
                let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(ExportError::Status(status))
                }
            };
            let mut stop = self.stop.clone();
            let abandon = async {
                // The final exports have their own bound; a running one gets that bound from
                // the moment the owner stops the exporter.
                if phase == Phase::Final || stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(SHUTDOWN_TIMEOUT).await;
            };
            tokio::select! {
                r = tokio::time::timeout(timeout, exchange) => r.unwrap_or(Err(ExportError::Timeout(timeout))),
                () = abandon => Err(ExportError::Stopping),
            }
        });
        if result.is_err() && (phase == Phase::Final || *self.stop.borrow()) {
            self.gave_up = true;
        }
        if result.is_ok() && self.failing {
            tracing::info!(endpoint = %self.config.endpoint.base(), "OpenTelemetry export recovered");
            self.failing = false;
        }
        result
    }
}

#[cfg(test)]
mod tests;
