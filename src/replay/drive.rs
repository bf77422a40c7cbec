//! The load generator of `joulegate replay`: sends a plan's requests at their (compressed) arrival
//! times, at most `max_inflight` at once, reads every response to its end as a client does, and
//! notes what the client saw: status, time to first token and inter-token gaps (from SSE events),
//! and the energy the proxy gave it (headers, trailers, or the `energy` object of the final usage
//! chunk). Afterwards it can read each request's settled record from an admin listener.
//!
//! Owns the client side only; it knows the proxy through its wire format (header names from
//! [`crate::proxy::headers`]) and never reaches into accounting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::source::{body, Item};
use crate::proxy::headers::{
    ENERGY_ACTIVE_JOULES, ENERGY_CO2_GRAMS, ENERGY_COMPLETION_TOKENS, ENERGY_JOULES,
    ENERGY_PROMPT_TOKENS, ENERGY_REQUEST_ID, ENERGY_STATUS, ENERGY_TAG,
};

/// The HTTP client replay uses.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client (plain HTTP/1.1, pooled).
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Energy figures of one request, from the response or from its settled record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Energy {
    /// Attributed energy, J.
    pub joules: Option<f64>,
    /// Active energy (idle share excluded), J.
    pub active_joules: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// `ok`, `estimated`, ...
    pub status: Option<String>,
    /// CO2, g, when the proxy has a carbon intensity.
    pub co2_grams: Option<f64>,
}

impl Energy {
    fn from_headers(h: &HeaderMap, into: &mut Energy) {
        let text = |n| h.get(n).and_then(|v: &http::HeaderValue| v.to_str().ok());
        let num = |n| text(n).and_then(|s: &str| s.parse::<f64>().ok());
        let int = |n| text(n).and_then(|s: &str| s.parse::<u64>().ok());
        into.joules = num(ENERGY_JOULES).or(into.joules);
        into.active_joules = num(ENERGY_ACTIVE_JOULES).or(into.active_joules);
        into.prompt_tokens = int(ENERGY_PROMPT_TOKENS).or(into.prompt_tokens);
        into.completion_tokens = int(ENERGY_COMPLETION_TOKENS).or(into.completion_tokens);
        into.status = text(ENERGY_STATUS)
            .map(str::to_string)
            .or(into.status.take());
        into.co2_grams = num(ENERGY_CO2_GRAMS).or(into.co2_grams);
    }

    /// From a record as `/requests/{id}` serves it (`None` while it is still in flight).
    pub fn from_record(v: &Value) -> Option<Energy> {
        if v.get("state").is_some() {
            return None;
        }
        Some(Energy {
            joules: v["energy_joules"].as_f64(),
            active_joules: v["active_joules"].as_f64(),
            prompt_tokens: v["prompt_tokens"].as_u64(),
            completion_tokens: v["completion_tokens"].as_u64(),
            status: v["status"].as_str().map(str::to_string),
            co2_grams: v["co2_grams"].as_f64(),
        })
    }

    fn from_usage(v: &Value, into: &mut Energy) {
        let u = &v["usage"];
        if let Some(p) = u["prompt_tokens"].as_u64() {
            into.prompt_tokens = Some(p);
        }
        if let Some(c) = u["completion_tokens"].as_u64() {
            into.completion_tokens = Some(c);
        }
        let e = &v["energy"];
        if let Some(j) = e["joules"].as_f64() {
            into.joules = Some(j);
            into.active_joules = e["active_joules"].as_f64().or(into.active_joules);
            into.status = e["status"]
                .as_str()
                .map(str::to_string)
                .or(into.status.take());
            into.co2_grams = e["co2_grams"].as_f64().or(into.co2_grams);
        }
    }
}

/// What the client saw for one request.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Index in the plan.
    pub index: usize,
    /// The tag sent (`None`: none).
    pub tag: Option<String>,
    /// Whether it streamed.
    pub stream: bool,
    /// When it was sent, from the start of the run (wall time, after `--speed`).
    pub sent_at: Duration,
    /// HTTP status (0: no response).
    pub http_status: u16,
    /// Transport or protocol failure, if any.
    pub error: Option<String>,
    /// The proxy's public id (`x-energy-request-id`).
    pub request_id: Option<String>,
    /// Time to the first token event (streams only).
    pub ttft: Option<Duration>,
    /// Gaps between successive token events, s.
    pub itl_s: Vec<f32>,
    /// Send to the end of the body.
    pub latency: Duration,
    /// The energy the response carried.
    pub response: Energy,
    /// The settled record, when one was read.
    pub settled: Option<Energy>,
}

impl Outcome {
    /// The best figures known: the settled record, else the response's.
    pub fn energy(&self) -> &Energy {
        self.settled.as_ref().unwrap_or(&self.response)
    }

    /// Whether the request succeeded (2xx, read to its end).
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.http_status) && self.error.is_none()
    }
}

/// How to drive.
#[derive(Clone, Debug)]
pub struct DriveOptions {
    /// Base URL of the target (`http://host:port`).
    pub target: Uri,
    /// Arrival offsets are divided by this.
    pub speed: f64,
    /// Most requests in flight; later arrivals wait for a slot.
    pub max_inflight: usize,
    /// Model name for requests whose item has none.
    pub model: String,
    /// Always use this model, whatever the item recorded.
    pub force_model: bool,
    /// Characters of synthetic prompt per token.
    pub chars_per_token: f64,
    /// Send `X-Request-Id: {prefix}-{index}` (the mock derives its response id from it).
    pub request_id_prefix: Option<String>,
    /// Print a progress line on stderr about once a second.
    pub progress: bool,
}

/// Counters shown by the progress line.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// Sends `plan` at its times until done or until `stop` resolves (then in-flight requests are
/// dropped, which closes them, and what finished is returned). Outcomes are in plan order.
pub async fn drive(
    client: &HttpClient,
    plan: &[Item],
    opts: &DriveOptions,
    stop: impl std::future::Future<Output = ()>,
) -> (Vec<Outcome>, bool) {
    let start = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_inflight.max(1)));
    let progress = Arc::new(Progress::default());
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(plan.len());
    let mut interrupted = false;
    // On a terminal the line is rewritten in place; elsewhere (a log file, CI) one line a second.
    let (cr, nl) = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ("\r", "")
    } else {
        ("", "\n")
    };
    let ticker = opts.progress.then(|| {
        let p = progress.clone();
        let total = plan.len();
        tokio::spawn(async move {
            let mut every =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                every.tick().await;
                eprint!(
                    "{cr}replay: {:>7.1} s  sent {}/{}  done {}  failed {}   {nl}",
                    start.elapsed().as_secs_f64(),
                    p.sent.load(Relaxed),
                    total,
                    p.done.load(Relaxed),
                    p.failed.load(Relaxed)
                );
            }
        })
    });
    tokio::pin!(stop);
    let mut next = 0;
    while next < plan.len() || !set.is_empty() {
        let due = plan
            .get(next)
            .map(|item| start + item.at.div_f64(opts.speed));
        tokio::select! {
            () = &mut stop => { interrupted = true; break; }
            Some(done) = set.join_next(), if !set.is_empty() => {
                // A panicked task is a bug here; its request is missing from the report.
                if let Ok(o) = done {
                    out.push(o);
                }
            }
            // Waiting for a slot happens inside the select, so completions keep being collected.
            permit = wait_slot(&slots, due), if due.is_some() => {
                let Ok(permit) = permit else { break };
                let item = plan[next].clone();
                let index = next;
                next += 1;
                let client = client.clone();
                let opts = opts.clone();
                let progress = progress.clone();
                progress.sent.fetch_add(1, Relaxed);
                set.spawn(async move {
                    let o = send(&client, &item, index, &opts, start).await;
                    let counter = if o.ok() { &progress.done } else { &progress.failed };
                    counter.fetch_add(1, Relaxed);
                    drop(permit);
                    o
                });
            }
        }
    }
    set.abort_all();
    if let Some(t) = ticker {
        t.abort();
        eprintln!(
            "{cr}replay: {:.1} s, {} sent, {} done, {} failed{}",
            start.elapsed().as_secs_f64(),
            progress.sent.load(Relaxed),
            progress.done.load(Relaxed),
            progress.failed.load(Relaxed),
            if interrupted { " (interrupted)" } else { "" }
        );
    }
    out.sort_by_key(|o| o.index);
    (out, interrupted)
}

async fn wait_slot(
    slots: &Arc<tokio::sync::Semaphore>,
    due: Option<Instant>,
) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
    slots.clone().acquire_owned().await
}

async fn send(
    client: &HttpClient,
    item: &Item,
    index: usize,
    opts: &DriveOptions,
    start: Instant,
) -> Outcome {
    let model = match (&item.model, opts.force_model) {
        (Some(m), false) => m.as_str(),
        _ => opts.model.as_str(),
    };
    let sent = Instant::now();
    let mut o = Outcome {
        index,
        tag: item.tag.clone(),
        stream: item.stream,
        sent_at: sent - start,
        ..Outcome::default()
    };
    let uri = format!(
        "{}{}",
        opts.target.to_string().trim_end_matches('/'),
        item.api.path()
    );
    let mut req = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::TE, "trailers");
    if let Some(tag) = &item.tag {
        req = req.header(ENERGY_TAG, tag);
    }
    if let Some(prefix) = &opts.request_id_prefix {
        req = req.header("x-request-id", format!("{prefix}-{index}"));
    }
    let req = match req.body(Full::new(Bytes::from(body(
        item,
        index,
        model,
        opts.chars_per_token,
    )))) {
        Ok(r) => r,
        Err(e) => {
            o.error = Some(format!("request: {e}"));
            return o;
        }
    };
    let response = match client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            o.error = Some(format!("{e}"));
            o.latency = sent.elapsed();
            return o;
        }
    };
    o.http_status = response.status().as_u16();
    o.request_id = response
        .headers()
        .get(ENERGY_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Energy::from_headers(response.headers(), &mut o.response);
    let mut body = response.into_body();
    let mut sse = Vec::new();
    let mut whole = Vec::new();
    let mut last_token: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                o.error = Some(format!("body: {e}"));
                break;
            }
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let now = Instant::now();
                if item.stream {
                    sse.extend_from_slice(data.chunk());
                    for event in take_events(&mut sse) {
                        if is_token_event(&event) {
                            match last_token {
                                None => o.ttft = Some(now - sent),
                                Some(t) => o.itl_s.push((now - t).as_secs_f32()),
                            }
                            last_token = Some(now);
                        }
                        Energy::from_usage(&event, &mut o.response);
                    }
                } else {
                    whole.extend_from_slice(data.chunk());
                    data.advance(data.remaining());
                }
                continue;
            }
            Err(f) => f,
        };
        if let Ok(trailers) = frame.into_trailers() {
            Energy::from_headers(&trailers, &mut o.response);
        }
    }
    if !item.stream {
        if let Ok(v) = serde_json::from_slice::<Value>(&whole) {
            let mut usage_only = o.response.clone();
            Energy::from_usage(&v, &mut usage_only);
            o.response.prompt_tokens = o.response.prompt_tokens.or(usage_only.prompt_tokens);
            o.response.completion_tokens = o
                .response
                .completion_tokens
                .or(usage_only.completion_tokens);
        }
    }
    o.latency = sent.elapsed();
    o
}

/// Takes the complete SSE events out of `buf` and returns their `data:` payloads parsed as JSON
/// (`[DONE]`, comments and non-JSON data are dropped).
fn take_events(buf: &mut Vec<u8>) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let Some(end) = buf.windows(2).position(|w| w == b"\n\n") else {
            return events;
        };
        let event: Vec<u8> = buf.drain(..end + 2).collect();
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
                    events.push(v);
                }
            }
        }
    }
}

/// Whether an event carries generated tokens (non-empty `choices`), as opposed to a usage-only or
/// error chunk.
fn is_token_event(v: &Value) -> bool {
    v["choices"].as_array().is_some_and(|c| !c.is_empty())
}

/// Reads the settled record of every outcome with a proxy id from `admin` (`/requests/{id}`),
/// waiting while a record is still in flight or settling, at most until `deadline`; outcomes
/// whose record did not come keep their response figures.
pub async fn read_settled(
    client: &HttpClient,
    admin: &Uri,
    token: Option<&str>,
    outcomes: &mut [Outcome],
    deadline: Instant,
) -> usize {
    let base = admin.to_string();
    let base = base.trim_end_matches('/');
    let mut missing = 0;
    for o in outcomes.iter_mut() {
        let Some(id) = o.request_id.clone() else {
            continue;
        };
        let uri = format!("{base}/requests/{id}");
        loop {
            if let Some(e) = get_record(client, &uri, token).await {
                o.settled = Some(e);
                break;
            }
            if Instant::now() >= deadline {
                missing += 1;
                break;
            }
            // Accounting publishes no event per record: look again shortly (bounded by the
            // deadline; nothing here is timed).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    missing
}

async fn get_record(client: &HttpClient, uri: &str, token: Option<&str>) -> Option<Energy> {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = client
        .request(req.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Energy::from_record(&serde_json::from_slice(&bytes).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads_and_usage_energy_is_read() {
        let text = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n: keep-alive\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1},\"energy\":{\"joules\":1.5,\"active_joules\":1.0,\"status\":\"ok\"}}\n\ndata: [DONE]\n\n";
        for cut in 0..text.len() {
            let mut buf = text[..cut].to_vec();
            let mut events = take_events(&mut buf);
            buf.extend_from_slice(&text[cut..]);
            events.extend(take_events(&mut buf));
            assert!(buf.is_empty());
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert!(is_token_event(&events[0]) && !is_token_event(&events[1]));
            let mut e = Energy::default();
            Energy::from_usage(&events[1], &mut e);
            assert_eq!(e.joules, Some(1.5));
            assert_eq!((e.prompt_tokens, e.completion_tokens), (Some(3), Some(1)));
            assert_eq!(e.status.as_deref(), Some("ok"));
        }
    }

    #[test]
    fn records_in_flight_are_not_settled() {
        let v = serde_json::json!({"state": "settling", "energy_joules": 1.0});
        assert_eq!(Energy::from_record(&v), None);
        let v = serde_json::json!({"energy_joules": 2.0, "prompt_tokens": 4, "completion_tokens": 5, "status": "ok", "co2_grams": null});
        let e = Energy::from_record(&v).expect("settled");
        assert_eq!(
            (e.joules, e.prompt_tokens, e.co2_grams),
            (Some(2.0), Some(4), None)
        );
    }
}
