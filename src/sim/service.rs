//! The mock upstream's routes: vLLM's endpoints (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/responses`, `/v1/embeddings`, `/v1/models`, `/health`, `/version`, `/metrics`, `/tokenize`),
//! uvicorn's headers in uvicorn's order, request recording, ids, and the errors vLLM answers before
//! generating. Token production and stream bytes are in [`super::stream`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use super::endpoints;
use super::engine::Phase;
use super::faults::{Fault, FAULT_HEADER};
use super::request::{self, ApiError, ApiKind, Limits};
use super::runner::EngineClient;
use super::server::{BodyError, MockBody, RecordedRequest, RequestTruth, Timing};
use super::stream::{self, Plan};
use super::text::{hash_bytes, hex_id};
use super::wire::{self, ChunkCtx};
use super::wire_json;
use super::wire_responses::RespCtx;

/// The mock's fixed settings (see [`super::MockBuilder`] for each one's meaning).
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Seed of ids and text.
    pub seed: u64,
    /// Served model name.
    pub model: String,
    /// `root` in `/v1/models`.
    pub model_root: String,
    /// `/version`.
    pub vllm_version: String,
    /// `max_model_len`.
    pub max_model_len: u32,
    /// `--enable-prompt-tokens-details`.
    pub prompt_details: bool,
    /// An absent `include_usage` in `stream_options` means true.
    pub absent_include_usage_is_true: bool,
    /// `--enable-per-request-metrics`: responses carry `metrics` (the engine's timing).
    pub per_request_metrics: bool,
    /// `--enable-force-include-usage`: every chat/completions stream reports usage, continuously.
    pub force_include_usage: bool,
    /// Default fault.
    pub fault: Option<Fault>,
    /// How many received requests are kept for the handle (older ones are dropped).
    pub record_limit: usize,
    /// How many responses' ground truths are kept (older finished ones are forgotten).
    pub truth_limit: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: 0,
            model: "tiny".into(),
            model_root: "/tmp/tinymodel".into(),
            vllm_version: "0.32.0".into(),
            max_model_len: 2048,
            prompt_details: false,
            absent_include_usage_is_true: false,
            per_request_metrics: false,
            force_include_usage: false,
            fault: None,
            record_limit: 10_000,
            truth_limit: 100_000,
        }
    }
}

/// What the handle observes.
#[derive(Debug, Default)]
pub struct AppState {
    /// The latest requests received, in order (at most `record_limit`). Scrapes of the mock's own
    /// `GET /metrics` are monitoring, not traffic, and are left out (a proxy in front reads its
    /// queue gauges every 250 ms, `upstream_metrics`; counted here, they made the count of
    /// requests forwarded depend on timing).
    pub requests: VecDeque<RecordedRequest>,
    /// Requests received in all (scrapes of `/metrics` left out, as above).
    pub received: u64,
    /// Response ids with engine requests, oldest first (at most `truth_limit`).
    pub truth_order: VecDeque<String>,
    /// Streams whose client went away.
    pub client_gone: u64,
    /// Generation responses sent completely.
    pub completed: u64,
    /// Engine request ids of each response id.
    pub engine_ids: HashMap<String, Vec<u64>>,
    /// `/metrics` counters.
    pub prompt_tokens_total: u64,
    /// `/metrics` counters.
    pub generation_tokens_total: u64,
}

/// Shared state of one mock upstream.
pub struct App {
    /// Settings.
    pub cfg: MockConfig,
    /// Timing mode.
    pub timing: Timing,
    /// The engine, in engine timing.
    pub engine: Option<EngineClient>,
    state: Mutex<AppState>,
    /// Bumped after every observable change.
    pub events: watch::Sender<u64>,
    next_id: AtomicU64,
    next_engine_id: AtomicU64,
    /// Turns true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl App {
    /// A new app.
    pub fn new(
        cfg: MockConfig,
        timing: Timing,
        engine: Option<EngineClient>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        App {
            cfg,
            timing,
            engine,
            state: Mutex::new(AppState::default()),
            events: watch::channel(0).0,
            next_id: AtomicU64::new(0),
            next_engine_id: AtomicU64::new(1),
            shutdown,
        }
    }

    /// Locks the observable state.
    pub fn state(&self) -> MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state and wakes waiters.
    pub fn update(&self, f: impl FnOnce(&mut AppState)) {
        f(&mut self.state());
        self.events.send_modify(|v| *v += 1);
    }

    /// Remembers the engine ids of a response, forgetting the oldest beyond `truth_limit`.
    pub fn track(&self, response_id: &str, ids: Vec<u64>) {
        let mut forget = Vec::new();
        self.update(|s| {
            s.engine_ids.insert(response_id.to_owned(), ids);
            s.truth_order.push_back(response_id.to_owned());
            while s.truth_order.len() > self.cfg.truth_limit.max(1) {
                if let Some(old) = s.truth_order.pop_front() {
                    forget.extend(s.engine_ids.remove(&old).unwrap_or_default());
                }
            }
        });
        if let Some(engine) = &self.engine {
            for id in forget {
                engine.shared.forget(id);
            }
        }
    }

    /// Reserves `count` consecutive engine ids.
    pub fn engine_ids(&self, count: u64) -> u64 {
        self.next_engine_id.fetch_add(count, Ordering::Relaxed)
    }

    /// Ground truth of a response, summed over its engine requests.
    pub fn truth(&self, response_id: &str) -> Option<RequestTruth> {
        let ids = self.state().engine_ids.get(response_id)?.clone();
        let engine = self.engine.as_ref()?.shared.engine();
        let mut t = RequestTruth {
            prefill_uj: 0,
            decode_uj: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            phase: Phase::Finished,
        };
        for id in ids {
            let Some(p) = engine.truth(id) else { continue };
            t.prefill_uj += p.prefill_uj;
            t.decode_uj += p.decode_uj;
            t.prompt_tokens += u64::from(p.prompt_tokens);
            t.completion_tokens += p.completion_tokens;
            t.phase = match (t.phase, p.phase) {
                (Phase::Aborted, _) | (_, Phase::Aborted) => Phase::Aborted,
                (Phase::Finished, x) => x,
                (x, _) => x,
            };
        }
        Some(t)
    }

    fn new_base_id(&self, req_id: Option<&str>) -> String {
        match req_id {
            Some(id) => id.to_owned(),
            None => hex_id(self.cfg.seed, self.next_id.fetch_add(1, Ordering::Relaxed)),
        }
    }

    fn fingerprint(&self) -> String {
        format!("vllm-{}-2479cced", self.cfg.vllm_version)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Response headers in uvicorn's order: `server`, `date`, then the app's.
fn base_response(status: u16) -> http::response::Builder {
    let date = httpdate::fmt_http_date(SystemTime::now());
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::SERVER, "uvicorn")
        .header(header::DATE, date)
}

/// A JSON response with vLLM's headers.
pub fn json_response(status: u16, body: String) -> Response<MockBody> {
    with_body(
        base_response(status)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::VARY, "Origin"),
        MockBody::Full(Some(Bytes::from(body))),
    )
}

fn with_body(b: http::response::Builder, body: MockBody) -> Response<MockBody> {
    // The builder only fails on invalid header values, and every value above is a valid constant.
    b.body(body)
        .unwrap_or_else(|_| Response::new(MockBody::Full(None)))
}

/// A streaming SSE response with vLLM's headers.
pub fn sse_response(rx: mpsc::Receiver<Result<Bytes, BodyError>>) -> Response<MockBody> {
    with_body(
        base_response(200)
            .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .header(header::VARY, "Origin")
            .header(header::TRANSFER_ENCODING, "chunked"),
        MockBody::Channel(rx),
    )
}

/// vLLM's error response.
pub fn error_response(e: &ApiError) -> Response<MockBody> {
    json_response(e.status, wire::error_json(e))
}

/// The error a `status=N` fault answers with.
pub fn status_error(status: u16) -> ApiError {
    let (message, err_type) = match status {
        400 => ("Bad request", "BadRequestError"),
        404 => ("Not found", "NotFoundError"),
        429 => ("Too many requests", "TooManyRequestsError"),
        503 => ("Service unavailable", "ServiceUnavailableError"),
        _ => ("Internal server error", "InternalServerError"),
    };
    ApiError {
        status,
        message: message.into(),
        err_type: err_type.into(),
        param: None,
    }
}

/// Serves one request.
pub async fn handle(
    app: Arc<App>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<MockBody>, BodyError> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                400,
                "{\"detail\":\"Bad request body\"}".into(),
            ))
        }
    };
    let kind = match parts.uri.path() {
        "/v1/chat/completions" => Some(ApiKind::Chat),
        "/v1/completions" => Some(ApiKind::Completions),
        "/v1/responses" => Some(ApiKind::Responses),
        "/v1/embeddings" => Some(ApiKind::Embeddings),
        _ => None,
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let response_id = kind.map(|k| {
        let base = app.new_base_id(header("x-request-id"));
        match k {
            ApiKind::Chat => format!("chatcmpl-{base}"),
            ApiKind::Completions => format!("cmpl-{base}"),
            ApiKind::Responses => format!("resp_{base}"),
            ApiKind::Embeddings => format!("embd-{base}"),
        }
    });
    let fault = header(FAULT_HEADER)
        .and_then(Fault::parse)
        .or(app.cfg.fault);
    let limit = app.cfg.record_limit;
    let scrape = parts.method == Method::GET && parts.uri.path() == "/metrics";
    if !scrape {
        app.update(|s| {
            s.received += 1;
            if s.requests.len() >= limit {
                s.requests.pop_front();
            }
            s.requests.push_back(RecordedRequest {
                method: parts.method.clone(),
                uri: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                body: body.clone(),
                response_id: response_id.clone(),
            })
        });
    }
    if let Some(status) = fault.and_then(|f| f.status) {
        return Ok(error_response(&status_error(status)));
    }
    let post = parts.method == Method::POST;
    match (kind, parts.uri.path()) {
        (Some(kind), _) if post => {
            generate(app, kind, &body, response_id.unwrap_or_default(), fault).await
        }
        (None, "/health") if parts.method == Method::GET => Ok(with_body(
            base_response(200)
                .header(header::CONTENT_LENGTH, 0)
                .header(header::VARY, "Origin"),
            MockBody::Full(Some(Bytes::new())),
        )),
        (None, "/version") if parts.method == Method::GET => Ok(json_response(
            200,
            wire_json::version_json(&app.cfg.vllm_version),
        )),
        (None, "/v1/models") if parts.method == Method::GET => Ok(json_response(
            200,
            wire_json::models_json(
                &app.cfg.model,
                &app.cfg.model_root,
                unix_now(),
                app.cfg.max_model_len,
                &hex_id(app.cfg.seed ^ 0x5eed, 0),
            ),
        )),
        (None, "/metrics") if parts.method == Method::GET => {
            let text = endpoints::metrics_text(&app);
            Ok(with_body(
                base_response(200)
                    .header(header::CONTENT_LENGTH, text.len())
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .header(header::VARY, "Origin"),
                MockBody::Full(Some(Bytes::from(text))),
            ))
        }
        (None, "/tokenize") if post => Ok(endpoints::tokenize(&app, &body)),
        (Some(_), _) | (None, "/health" | "/version" | "/v1/models" | "/metrics" | "/tokenize") => {
            Ok(json_response(
                405,
                "{\"detail\":\"Method Not Allowed\"}".into(),
            ))
        }
        _ => Ok(json_response(404, "{\"detail\":\"Not Found\"}".into())),
    }
}

async fn generate(
    app: Arc<App>,
    kind: ApiKind,
    body: &[u8],
    response_id: String,
    fault: Option<Fault>,
) -> Result<Response<MockBody>, BodyError> {
    let limits = Limits {
        model: &app.cfg.model,
        max_model_len: app.cfg.max_model_len,
        absent_include_usage_is_true: app.cfg.absent_include_usage_is_true,
    };
    let mut req = match request::parse(kind, body, &limits) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(&e)),
    };
    if app.cfg.force_include_usage
        && req.stream
        && matches!(kind, ApiKind::Chat | ApiKind::Completions)
    {
        // vLLM applies the flag after validation, whatever `stream_options` said.
        req.include_usage = true;
        req.continuous_usage = true;
    }
    let created = unix_now();
    let key = app.cfg.seed ^ hash_bytes(body);
    let ctx = ChunkCtx {
        id: response_id.clone(),
        created,
        model: app.cfg.model.clone(),
        fingerprint: app.fingerprint(),
        prompt_details: app.cfg.prompt_details,
    };
    let resp = (kind == ApiKind::Responses).then(|| RespCtx {
        id: response_id.clone(),
        msg_id: format!("msg_{}", hex_id(key, 1)),
        created_at: created,
        model: app.cfg.model.clone(),
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        max_output_tokens: req.max_output_tokens,
    });
    let source = stream::Source::start(&app, &req, &response_id);
    app.update(|s| {
        s.prompt_tokens_total += req.total_prompt_tokens();
        s.generation_tokens_total +=
            u64::from(req.max_tokens) * u64::from(req.n) * req.prompt_tokens.len() as u64;
    });
    let plan = Plan {
        req,
        ctx,
        resp,
        key,
        fault: fault.unwrap_or_default(),
        response_id,
        per_request_metrics: app.cfg.per_request_metrics,
    };
    if plan.req.stream {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(stream::produce(app, plan, source, tx));
        Ok(sse_response(rx))
    } else {
        stream::collect(app, plan, source).await
    }
}
