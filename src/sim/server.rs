//! The mock upstream's outside: a builder (`MockUpstream::builder()...spawn(listener)`), the accept
//! loop (hyper-util auto HTTP/1 + HTTP/2, graceful drain), the response body type, and the
//! [`MockHandle`] tests await on: requests received (headers and exact body bytes), client
//! disconnects, completions, and the engine's ground truth per response id.
//!
//! The routes and response bytes live in [`super::service`] and [`super::stream`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::engine::{EngineConfig, Phase, Totals};
use super::faults::Fault;
use super::runner::{self, RequestTiming, RunnerConfig};
use super::service::{App, AppState, MockConfig};

/// How fast the mock produces tokens.
#[derive(Clone, Debug)]
pub enum Timing {
    /// All tokens at once (fast tests).
    Immediate,
    /// Fixed time to first token and inter-token latency.
    Fixed {
        /// Time to the first token.
        ttft: Duration,
        /// Time between tokens.
        itl: Duration,
    },
    /// Driven by the simulated continuous-batching engine (with ground-truth energy).
    Engine(RunnerConfig),
}

/// Entry point of the builder API.
pub struct MockUpstream;

impl MockUpstream {
    /// A builder with vLLM 0.32 defaults: model `tiny`, `max_model_len` 2048, immediate timing.
    pub fn builder() -> MockBuilder {
        MockBuilder {
            cfg: MockConfig::default(),
            timing: Timing::Immediate,
            counter_file: None,
        }
    }
}

/// Configures a mock upstream.
#[derive(Clone, Debug)]
pub struct MockBuilder {
    cfg: MockConfig,
    timing: Timing,
    counter_file: Option<PathBuf>,
}

impl MockBuilder {
    /// Seed of generated ids and text (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }
    /// Token timing.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }
    /// Engine-driven timing with this engine configuration, real time, 20 ms counter period.
    pub fn engine(self, engine: EngineConfig) -> Self {
        self.timing(Timing::Engine(RunnerConfig {
            engine,
            ..RunnerConfig::default()
        }))
    }
    /// `/version` and the `system_fingerprint` prefix (default `0.32.0`).
    pub fn vllm_version(mut self, v: impl Into<String>) -> Self {
        self.cfg.vllm_version = v.into();
        self
    }
    /// Served model name (default `tiny`).
    pub fn model(mut self, m: impl Into<String>) -> Self {
        self.cfg.model = m.into();
        self
    }
    /// `max_model_len` (default 2048).
    pub fn max_model_len(mut self, n: u32) -> Self {
        self.cfg.max_model_len = n;
        self
    }
    /// vLLM's `--enable-prompt-tokens-details` (adds `prompt_tokens_details` to usage).
    pub fn enable_prompt_tokens_details(mut self, on: bool) -> Self {
        self.cfg.prompt_details = on;
        self
    }
    /// vLLM's `--enable-per-request-metrics`: chat, completions and responses bodies carry
    /// `metrics` (`null` for `n > 1`), and so does a stream's final usage chunk (one choice, usage
    /// reported) or its `response.completed`. In engine timing the values are the runner's true
    /// timing of the request ([`MockHandle::timing`]); otherwise fixed plausible values.
    pub fn enable_per_request_metrics(mut self, on: bool) -> Self {
        self.cfg.per_request_metrics = on;
        self
    }
    /// vLLM's `--enable-force-include-usage`: every chat and completions stream reports usage,
    /// continuous usage included, whatever its `stream_options` say.
    pub fn enable_force_include_usage(mut self, on: bool) -> Self {
        self.cfg.force_include_usage = on;
        self
    }
    /// Whether `stream_options` without `include_usage` means true. vLLM 0.32: false (the default);
    /// some other versions: true.
    pub fn absent_include_usage_is_true(mut self, on: bool) -> Self {
        self.cfg.absent_include_usage_is_true = on;
        self
    }
    /// A fault applied to every request that has no `x-mock-fault` header.
    pub fn fault(mut self, f: Fault) -> Self {
        self.cfg.fault = Some(f);
        self
    }
    /// Mirrors the engine's energy counter to this file (engine timing only).
    pub fn energy_counter_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.counter_file = Some(path.into());
        self
    }
    /// Keeps at most this many received requests for [`MockHandle::requests`] (default 10,000).
    pub fn record_limit(mut self, n: usize) -> Self {
        self.cfg.record_limit = n;
        self
    }
    /// Keeps the ground truth of at most this many responses (default 100,000).
    pub fn truth_limit(mut self, n: usize) -> Self {
        self.cfg.truth_limit = n;
        self
    }

    /// Starts serving on `listener` (already bound: tests bind `127.0.0.1:0`).
    pub fn spawn(mut self, listener: TcpListener) -> std::io::Result<MockHandle> {
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if let (Timing::Engine(rc), Some(path)) = (&mut self.timing, self.counter_file.take()) {
            rc.counter_file = Some(path);
        }
        let engine = match self.timing.clone() {
            Timing::Engine(rc) => {
                let (client, t) = runner::spawn(rc, shutdown_rx.clone());
                tasks.extend(t);
                Some(client)
            }
            _ => None,
        };
        let app = Arc::new(App::new(self.cfg, self.timing, engine, shutdown_rx.clone()));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            app.clone(),
            shutdown_rx,
        )));
        Ok(MockHandle {
            addr,
            app,
            shutdown_tx,
            tasks,
        })
    }
}

/// Errors a response body can end with.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The scripted `reset-after` fault.
    #[error("scripted connection reset")]
    Reset,
}

/// The mock's response body: a whole buffer, or a channel fed by a stream producer. A dropped
/// channel receiver is how the producer learns that the client is gone.
#[derive(Debug)]
pub enum MockBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// A streamed body.
    Channel(mpsc::Receiver<Result<Bytes, BodyError>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            // An empty body reports an unknown length so that hyper keeps the explicit
            // `content-length: 0` where uvicorn puts it instead of appending its own.
            MockBody::Full(Some(b)) if b.is_empty() => SizeHint::default(),
            MockBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            MockBody::Channel(_) => SizeHint::default(),
        }
    }
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning or exiting.
                tracing::warn!(error = %e, "mock upstream accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req| super::service::handle(app.clone(), req));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Streams end when the shutdown signal reaches their producers; then connections drain.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// A request the mock received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: String,
    /// Header names (lower case) and raw values, in the order hyper parsed them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The exact body bytes.
    pub body: Bytes,
    /// The response id it was given (generation endpoints).
    pub response_id: Option<String>,
}

impl RecordedRequest {
    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Ground truth of one response (summed over its prompts), exact integer micro-joules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTruth {
    /// Energy of the steps it prefilled in.
    pub prefill_uj: u64,
    /// Energy of the steps it decoded in.
    pub decode_uj: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens produced.
    pub completion_tokens: u64,
    /// `Finished` when all its parts finished, `Aborted` if any was aborted, else in progress.
    pub phase: Phase,
}

impl RequestTruth {
    /// Total energy.
    pub fn total_uj(&self) -> u64 {
        self.prefill_uj + self.decode_uj
    }
}

/// A running mock upstream. Dropping it does not stop it: call [`MockHandle::shutdown`].
pub struct MockHandle {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MockHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, ends open streams, drains connections and stops the engine.
    pub async fn shutdown(self) {
        self.shutdown_tx.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    async fn wait_until(&self, mut cond: impl FnMut(&AppState) -> bool) {
        let mut rx = self.app.events.subscribe();
        let app = self.app.clone();
        let _ = rx.wait_for(|_| cond(&app.state())).await;
    }

    /// Requests received so far (the latest `record_limit`), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.app.state().requests.iter().cloned().collect()
    }

    /// Waits until `n` requests have been received in all; returns those kept.
    pub async fn wait_for_requests(&self, n: u64) -> Vec<RecordedRequest> {
        self.wait_until(|s| s.received >= n).await;
        self.requests()
    }

    /// Waits until `n` streams have seen their client disconnect (the body's receiver dropped).
    pub async fn wait_for_client_gone(&self, n: u64) {
        self.wait_until(|s| s.client_gone >= n).await;
    }

    /// Streams whose client disconnected so far.
    pub fn client_gone(&self) -> u64 {
        self.app.state().client_gone
    }

    /// Waits until `n` generation responses have been sent completely.
    pub async fn wait_for_completed(&self, n: u64) {
        self.wait_until(|s| s.completed >= n).await;
    }

    /// The engine's shared cumulative energy counter, µJ (engine timing only).
    pub fn energy_counter(&self) -> Option<Arc<AtomicU64>> {
        self.app.engine.as_ref().map(|e| e.shared.counter())
    }

    /// The counter's current value, µJ (0 without an engine).
    pub fn energy_counter_uj(&self) -> u64 {
        self.energy_counter()
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Closes the current idle interval and publishes the counter, then returns the exact totals:
    /// `total = steps (all attributed) + idle` and the counter equals `total` at this instant.
    pub fn settle_energy(&self) -> Option<Totals> {
        self.app.engine.as_ref().map(|e| e.shared.settle_idle())
    }

    /// Ground truth of a response by its id (engine timing only).
    pub fn truth(&self, response_id: &str) -> Option<RequestTruth> {
        self.app.truth(response_id)
    }

    /// The engine's true timing of a response of one prompt (engine timing only; `None` until its
    /// last token is out, and for responses of several prompts): what its per-request `metrics`
    /// report, to the nanosecond.
    pub fn timing(&self, response_id: &str) -> Option<RequestTiming> {
        let ids = self.app.state().engine_ids.get(response_id)?.clone();
        match (ids.as_slice(), &self.app.engine) {
            ([id], Some(engine)) => engine.shared.request_timing(*id),
            _ => None,
        }
    }

    /// All ground truths by response id.
    pub fn truths(&self) -> Vec<(String, RequestTruth)> {
        let ids: Vec<String> = self.app.state().engine_ids.keys().cloned().collect();
        ids.into_iter()
            .filter_map(|id| self.truth(&id).map(|t| (id, t)))
            .collect()
    }

    /// Waits until a response's truth is final (finished or aborted).
    pub async fn wait_for_truth(&self, response_id: &str) -> Option<RequestTruth> {
        let engine = self.app.engine.as_ref()?;
        let mut rx = engine.shared.changed.subscribe();
        let done = |t: &Option<RequestTruth>| {
            t.as_ref()
                .is_some_and(|t| matches!(t.phase, Phase::Finished | Phase::Aborted))
        };
        let _ = rx
            .wait_for(|_| {
                done(&self.truth(response_id))
                    || !self.app.state().engine_ids.contains_key(response_id)
            })
            .await;
        self.truth(response_id)
    }
}
