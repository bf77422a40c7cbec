//! Producing a generation response as its tokens appear: where tokens come from (immediately, fixed
//! timing, or the engine runner) and how they become vLLM's SSE chunks or final JSON, with scripted
//! faults and client-disconnect detection (the body channel's receiver is dropped by hyper).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::sync::mpsc;

use super::engine::Emit;
use super::faults::{Fault, FaultAction};
use super::request::{ApiKind, GenRequest};
use super::runner::RequestTiming;
use super::server::{BodyError, MockBody, Timing};
use super::service::{error_response, json_response, status_error, App};
use super::text::{gen_token, mix, GenToken};
use super::wire::{self, ChunkCtx, ChunkExtras, DONE};
use super::wire_json::{self, ChoiceOut};
use super::wire_metrics::{fixed_timing, RequestMetrics};
use super::wire_responses::{self as wr, RespCtx};

/// Everything needed to write one response.
pub struct Plan {
    /// What was asked.
    pub req: GenRequest,
    /// Repeated chunk fields.
    pub ctx: ChunkCtx,
    /// `/v1/responses` fields.
    pub resp: Option<RespCtx>,
    /// Key of the generated text.
    pub key: u64,
    /// Scripted faults.
    pub fault: Fault,
    /// The response id.
    pub response_id: String,
    /// `--enable-per-request-metrics`.
    pub per_request_metrics: bool,
}

impl Plan {
    /// The `metrics` of this response, for a server with per-request metrics: vLLM times only
    /// responses of one prompt and one choice (`n > 1` gets `null` in a body, nothing in a stream).
    fn metrics(&self, source: &Source, completion: u64) -> Option<RequestMetrics> {
        if !self.per_request_metrics || self.req.n != 1 || self.req.prompt_tokens.len() != 1 {
            return None;
        }
        source
            .timing(self.req.max_tokens)
            .map(|t| RequestMetrics::from_timing(&t, completion))
    }
}

/// Progress of one prompt (`sub`) of a request: tokens per choice so far.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    sub: u32,
    generated: u32,
    finished: bool,
}

/// Where tokens come from.
pub enum Source {
    /// Immediate or fixed timing: all prompts and choices advance together.
    Timed {
        /// Delay before the first token.
        ttft: Duration,
        /// Delay between tokens.
        itl: Duration,
        /// Prompts.
        subs: u32,
        /// Tokens per choice.
        max: u32,
        /// Tokens per choice so far.
        done: u32,
        /// Progress not yet handed out.
        pending: Vec<Progress>,
        /// Whether the zero-token finish was handed out.
        ended: bool,
    },
    /// The engine runner: engine ids `base..base + prompts`.
    Engine {
        /// Progress of this request's engine requests.
        rx: mpsc::UnboundedReceiver<Emit>,
        /// First engine id.
        base: u64,
        /// Engine ids, to abort.
        ids: Vec<u64>,
        /// The engine.
        app: Arc<App>,
    },
}

impl Source {
    /// Starts producing tokens for `req` (submitting it to the engine in engine timing).
    pub fn start(app: &Arc<App>, req: &GenRequest, response_id: &str) -> Source {
        let subs = req.prompt_tokens.len() as u32;
        let (ttft, itl) = match &app.timing {
            Timing::Immediate => (Duration::ZERO, Duration::ZERO),
            Timing::Fixed { ttft, itl } => (*ttft, *itl),
            Timing::Engine(_) => {
                if let Some(engine) = &app.engine {
                    let base = app.engine_ids(u64::from(subs));
                    let ids: Vec<u64> = (base..base + u64::from(subs)).collect();
                    app.track(response_id, ids.clone());
                    let (tx, rx) = mpsc::unbounded_channel();
                    for (id, &p) in ids.iter().zip(&req.prompt_tokens) {
                        engine.submit_with(*id, p, req.max_tokens, req.n, tx.clone());
                    }
                    return Source::Engine {
                        rx,
                        base,
                        ids,
                        app: app.clone(),
                    };
                }
                (Duration::ZERO, Duration::ZERO)
            }
        };
        Source::Timed {
            ttft,
            itl,
            subs,
            max: req.max_tokens,
            done: 0,
            pending: Vec::new(),
            ended: false,
        }
    }

    async fn next(&mut self) -> Option<Progress> {
        match self {
            Source::Timed {
                ttft,
                itl,
                subs,
                max,
                done,
                pending,
                ended,
            } => {
                if let Some(p) = pending.pop() {
                    return Some(p);
                }
                if *done >= *max {
                    if *max == 0 && !*ended {
                        *ended = true;
                        pending.extend((0..*subs).rev().map(|sub| Progress {
                            sub,
                            generated: 0,
                            finished: true,
                        }));
                        return pending.pop();
                    }
                    return None;
                }
                let wait = if *done == 0 { *ttft } else { *itl };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                *done += 1;
                let finished = *done == *max;
                pending.extend((0..*subs).rev().map(|sub| Progress {
                    sub,
                    generated: *done,
                    finished,
                }));
                pending.pop()
            }
            Source::Engine { rx, base, .. } => rx.recv().await.map(|e| Progress {
                sub: (e.id - *base) as u32,
                generated: e.generated,
                finished: e.finished,
            }),
        }
    }

    /// The timing of a single-prompt request once its last token is out: the engine runner's true
    /// timing, or [`fixed_timing`] of the configured delays for `tokens` tokens.
    fn timing(&self, tokens: u32) -> Option<RequestTiming> {
        match self {
            Source::Timed { ttft, itl, .. } => Some(fixed_timing(*ttft, *itl, tokens)),
            Source::Engine { ids, app, .. } => match (ids.as_slice(), &app.engine) {
                ([id], Some(engine)) => engine.shared.request_timing(*id),
                _ => None,
            },
        }
    }

    /// Stops the engine work of this request (client gone, fault).
    fn abort(&self) {
        if let Source::Engine { ids, app, .. } = self {
            if let Some(engine) = &app.engine {
                for id in ids {
                    engine.abort(*id);
                }
            }
        }
    }
}

/// The client is gone (the body receiver was dropped).
struct Gone;

type Tx = mpsc::Sender<Result<Bytes, BodyError>>;

async fn send(tx: &Tx, s: String) -> Result<(), Gone> {
    tx.send(Ok(Bytes::from(s))).await.map_err(|_| Gone)
}

fn token(plan: &Plan, choice: u32, k: u32) -> GenToken {
    // Greedy sampling gives every choice the same text; otherwise each choice has its own.
    let choice = if plan.req.temperature == Some(0.0) && plan.req.n == 1 {
        0
    } else {
        choice
    };
    gen_token(plan.key, choice, k)
}

/// Writes a streaming response into `tx` as tokens appear.
pub async fn produce(app: Arc<App>, plan: Plan, mut source: Source, tx: Tx) {
    let mut shutdown = app.shutdown.clone();
    let result = tokio::select! {
        r = write_stream(&plan, &mut source, &tx) => r,
        _ = tx.closed() => Err(Gone),
        _ = shutdown.wait_for(|s| *s) => Ok(false),
    };
    match result {
        Ok(true) => app.update(|s| s.completed += 1),
        Ok(false) => source.abort(),
        Err(Gone) => {
            source.abort();
            app.update(|s| s.client_gone += 1);
        }
    }
}

/// Returns whether the stream completed normally (`false`: a fault ended it).
async fn write_stream(plan: &Plan, source: &mut Source, tx: &Tx) -> Result<bool, Gone> {
    let req = &plan.req;
    let (n, subs) = (req.n, req.prompt_tokens.len());
    let mut gen = vec![0u32; subs];
    let mut finished = vec![false; subs];
    let mut offsets = vec![0usize; subs * n as usize];
    let mut sent = 0u32;
    let mut opened = false;
    let mut text = String::new();
    let responses = plan.resp.as_ref();
    if let Some(r) = responses {
        // vLLM announces the response before generating.
        send(tx, wr::opening_events(r)).await?;
    }
    while let Some(p) = source.next().await {
        let sub = p.sub as usize;
        if sub >= subs {
            continue;
        }
        if req.kind == ApiKind::Chat && !opened {
            for c in 0..n {
                let usage = req
                    .continuous_usage
                    .then_some(u64::from(req.prompt_tokens[0]));
                send(tx, wire::chat_role_chunk(&plan.ctx, c, usage)).await?;
            }
        }
        opened = true;
        for k in gen[sub]..p.generated {
            for c in 0..n {
                if let Some(action) = plan.fault.due(sent) {
                    return fault_mid_stream(plan, source, tx, action, sent).await;
                }
                let index = p.sub * n + c;
                let tok = token(plan, index, k);
                let chunk = match (req.kind, responses) {
                    (ApiKind::Responses, Some(r)) => {
                        text.push_str(tok.text);
                        wr::delta_event(r, tok.text, 4 + u64::from(sent))
                    }
                    _ => chunk_bytes(plan, index, k, &tok, &mut offsets[index as usize]),
                };
                send(tx, chunk).await?;
                sent += 1;
            }
        }
        gen[sub] = gen[sub].max(p.generated);
        finished[sub] |= p.finished;
        if finished.iter().all(|f| *f) {
            break;
        }
    }
    let completion: u64 = gen.iter().map(|&g| u64::from(g) * u64::from(n)).sum();
    let metrics = plan.metrics(source, completion);
    if let Some(r) = responses {
        let out = wr::closing_events(
            r,
            &text,
            (req.total_prompt_tokens(), completion),
            4 + u64::from(sent),
            metrics.as_ref(),
        );
        send(tx, out).await?;
        return Ok(true);
    }
    if req.include_usage {
        let chunk = wire::final_usage_chunk(
            &plan.ctx,
            req.kind == ApiKind::Chat,
            req.total_prompt_tokens(),
            completion,
            metrics.as_ref(),
        );
        send(tx, chunk).await?;
    }
    send(tx, DONE.to_owned()).await?;
    Ok(true)
}

fn chunk_bytes(plan: &Plan, index: u32, k: u32, tok: &GenToken, offset: &mut usize) -> String {
    let req = &plan.req;
    let sub = (index / req.n) as usize;
    let logprobs = req.logprobs.map(|top| match req.kind {
        ApiKind::Chat => wire::chat_logprobs(std::slice::from_ref(tok), top),
        _ => wire::completion_logprobs(std::slice::from_ref(tok), top, *offset),
    });
    *offset += tok.text.chars().count();
    let x = ChunkExtras {
        logprobs: logprobs.as_deref(),
        finish: k + 1 == req.max_tokens,
        fingerprint: k + 1 == req.max_tokens && !req.include_usage,
        usage: req
            .continuous_usage
            .then_some((u64::from(req.prompt_tokens[sub]), u64::from(k) + 1)),
    };
    match req.kind {
        ApiKind::Chat => wire::chat_token_chunk(&plan.ctx, index, tok.text, &x),
        _ => wire::completion_chunk(&plan.ctx, index, tok.text, &x),
    }
}

async fn fault_mid_stream(
    plan: &Plan,
    source: &mut Source,
    tx: &Tx,
    action: FaultAction,
    sent: u32,
) -> Result<bool, Gone> {
    source.abort();
    match action {
        FaultAction::Reset => {
            let _ = tx.send(Err(BodyError::Reset)).await;
        }
        FaultAction::Stall => {
            tx.closed().await;
            return Err(Gone);
        }
        FaultAction::Error => {
            if plan.resp.is_some() {
                send(
                    tx,
                    wr::error_event("Internal server error", 4 + u64::from(sent)),
                )
                .await?;
            } else {
                send(
                    tx,
                    wire::stream_error_event("Internal server error", "InternalServerError", 500),
                )
                .await?;
                send(tx, DONE.to_owned()).await?;
            }
        }
    }
    Ok(false)
}

/// Produces a non-streaming response once all tokens are there.
pub async fn collect(
    app: Arc<App>,
    plan: Plan,
    mut source: Source,
) -> Result<Response<MockBody>, BodyError> {
    let req = &plan.req;
    let subs = req.prompt_tokens.len();
    let mut gen = vec![0u32; subs];
    let mut finished = vec![false; subs];
    let mut shutdown = app.shutdown.clone();
    while !finished.iter().all(|f| *f) {
        let p = tokio::select! {
            p = source.next() => p,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(p) = p else { break };
        if let Some(g) = gen.get_mut(p.sub as usize) {
            *g = (*g).max(p.generated);
            finished[p.sub as usize] |= p.finished;
        }
    }
    match plan.fault.any_after() {
        Some(FaultAction::Reset) => return Err(BodyError::Reset),
        Some(FaultAction::Stall) => {
            let _ = shutdown.wait_for(|s| *s).await;
            return Err(BodyError::Reset);
        }
        Some(FaultAction::Error) => return Ok(error_response(&status_error(500))),
        None => {}
    }
    let n = req.n;
    let completion: u64 = gen.iter().map(|&g| u64::from(g) * u64::from(n)).sum();
    let prompt = req.total_prompt_tokens();
    let choices: Vec<ChoiceOut> = (0..subs as u32 * n)
        .map(|index| {
            let toks: Vec<GenToken> = (0..gen[(index / n) as usize])
                .map(|k| token(&plan, index, k))
                .collect();
            ChoiceOut {
                text: toks.iter().map(|t| t.text).collect(),
                logprobs: req.logprobs.map(|top| match req.kind {
                    ApiKind::Chat => wire::chat_logprobs(&toks, top),
                    _ => wire::completion_logprobs(&toks, top, 0),
                }),
            }
        })
        .collect();
    let metrics = plan.metrics(&source, completion);
    let metrics = metrics.as_ref();
    let body = match (req.kind, &plan.resp) {
        (ApiKind::Chat, _) => {
            wire_json::chat_json(&plan.ctx, &choices, prompt, completion, metrics)
        }
        (ApiKind::Completions, _) => {
            wire_json::completion_json(&plan.ctx, &choices, prompt, completion, metrics)
        }
        (ApiKind::Responses, Some(r)) => {
            wr::response_object(r, Some((&choices[0].text, prompt, completion)), metrics)
        }
        _ => {
            let vectors: Vec<Vec<f64>> = (0..subs as u64)
                .map(|i| embedding(plan.key ^ mix(i), 8))
                .collect();
            wire_json::embeddings_json(&plan.ctx, &vectors, prompt)
        }
    };
    app.update(|s| s.completed += 1);
    Ok(json_response(200, body))
}

/// A deterministic unit vector.
fn embedding(key: u64, dim: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..dim as u64)
        .map(|i| (mix(key ^ i) % 2001) as f64 / 1000.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    raw.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect()
}
