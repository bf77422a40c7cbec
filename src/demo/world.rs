//! The demo's world in one process: the simulated engine (mock vLLM upstream in engine timing), its
//! energy counter read by a [`SimMeter`], the proxy in front of it, and a hyper client that sends a
//! seeded workload through the proxy and collects each request's record and ground truth.
//!
//! Owns the start and stop of those parts and the matching of proxy records with engine truth; it
//! must not reach into the ledger: it reads what accounting publishes, as an operator would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::report::{DemoReport, DemoRow};
use super::DemoError;
use crate::accounting::AccountingShared;
use crate::app::{App, Listeners, Running};
use crate::cli::ServeArgs;
use crate::config::{Config, FileConfig};
use crate::meter::sim::SimMeter;
use crate::meter::MeterSet;
use crate::observe::parse_public_id;
use crate::openai::sse::{self, LineKind};
use crate::proxy::headers::{ENERGY_JOULES, ENERGY_REQUEST_ID, ENERGY_TAG};
use crate::sim::workload::PlannedRequest;
use crate::sim::{EngineConfig, MockHandle, MockUpstream, RunnerConfig, Timing};

/// How the world is built.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    /// Seed of the mock (ids, generated text).
    pub seed: u64,
    /// Simulated seconds per wall second of the engine.
    pub time_scale: f64,
    /// Grid carbon intensity configured in the proxy, g CO2 per kWh.
    pub carbon_g_per_kwh: Option<f64>,
    /// The proxy's sampling interval, ms (`None`: the proxy's default).
    pub sample_interval_ms: Option<u64>,
    /// The engine's limits and cost model.
    pub engine: EngineConfig,
    /// How often the simulated energy counter advances (NVML's counter moves every ~10-100 ms).
    pub counter_period: Duration,
    /// Longest wait for accounting to retire every request (a guard, not a pass/fail criterion).
    pub settle_timeout: Duration,
    /// Before the workload, wait (at most this long) until the ledger has learned P_idle from
    /// idle ticks, as it would have on a server that was idle before its first request; zero
    /// skips it, and active energy then equals energy until P_idle is known.
    pub idle_warmup: Duration,
    /// The admin listener's bearer token (`None`: open, as the demo runs on loopback).
    pub admin_token: Option<String>,
    /// Whether the proxy reads the mock engine's queue gauges from its `/metrics`
    /// (`upstream_metrics`; on by default, as in front of vLLM).
    pub upstream_metrics: bool,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            seed: 1,
            time_scale: 1.0,
            carbon_g_per_kwh: Some(400.0),
            sample_interval_ms: None,
            engine: EngineConfig::default(),
            counter_period: RunnerConfig::default().counter_period,
            settle_timeout: Duration::from_secs(60),
            idle_warmup: Duration::from_secs(3),
            admin_token: None,
            upstream_metrics: true,
        }
    }
}

/// What the client got for one planned request.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Index in the plan.
    pub index: usize,
    /// The path posted to.
    pub path: &'static str,
    /// Whether it streamed.
    pub stream: bool,
    /// The `x-energy-tag` sent.
    pub tag: &'static str,
    /// HTTP status from the proxy.
    pub http_status: u16,
    /// The proxy's numeric request id (from `x-energy-request-id`).
    pub record_key: Option<u64>,
    /// The engine's response id (the truth key), predictable from the `X-Request-Id` sent.
    pub response_id: String,
    /// The energy the response itself carried, J, as a client reads it: `x-energy-joules` on a
    /// JSON response, the `energy` object of a stream's final usage chunk (streams that asked for
    /// usage). `None` where the response carried none (a stream without usage: its client reads
    /// the record).
    pub response_joules: Option<f64>,
}

/// The running world.
pub struct World {
    mock: MockHandle,
    running: Running,
    proxy: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    settle_timeout: Duration,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("proxy", &self.proxy)
            .field("upstream", &self.mock.addr())
            .finish()
    }
}

/// Tags the demo spreads its requests over, so `/stats` has something per tag to show.
const TAGS: [&str; 3] = ["chat-app", "batch", "eval"];

impl World {
    /// Starts the engine, its meter and the proxy on 127.0.0.1 port 0 (needs a tokio runtime).
    pub async fn start(opts: &WorldOptions) -> Result<World, DemoError> {
        if !(opts.time_scale.is_finite() && opts.time_scale > 0.0) {
            return Err(DemoError::TimeScale(opts.time_scale));
        }
        let upstream = TcpListener::bind("127.0.0.1:0").await?;
        let mock = MockUpstream::builder()
            .seed(opts.seed)
            .timing(Timing::Engine(RunnerConfig {
                engine: opts.engine.clone(),
                time_scale: opts.time_scale,
                counter_period: opts.counter_period,
                ..RunnerConfig::default()
            }))
            .spawn(upstream)?;
        let counter = mock.energy_counter().ok_or(DemoError::NoEngineCounter)?;
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(mock.url()),
            // The mock is vLLM 0.32: say so rather than probing /version at start-up.
            absent_include_usage: Some("false".into()),
            // The built-in engine never forces usage: no start-up probe request.
            upstream_forces_usage: Some("false".into()),
            carbon_intensity_g_per_kwh: opts.carbon_g_per_kwh,
            sample_interval_ms: opts.sample_interval_ms,
            admin_token: opts.admin_token.clone(),
            upstream_metrics: Some(if opts.upstream_metrics { "auto" } else { "off" }.into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args, &FileConfig::default(), None)?;
        let listeners = Listeners::bind(&config).await?;
        let meters = MeterSet {
            meters: vec![Box::new(SimMeter::from_shared_counter("sim-gpu0", counter))],
            unavailable: Vec::new(),
        };
        let running = App::build_with_meters(config, meters).start(listeners)?;
        let proxy = running.proxy_addr.ok_or(DemoError::NoProxyAddress)?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let deadline = Instant::now() + opts.idle_warmup;
        // Condition-based: P_idle appears after the ledger's `idle_min_samples` idle ticks.
        while running.admin.accounting.stats().p_idle_mw.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(World {
            mock,
            running,
            proxy,
            client,
            settle_timeout: opts.settle_timeout,
        })
    }

    /// The proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// The admin listener's address (`/stats`, `/requests`, the live page).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.running.admin_addr
    }

    /// The accounting state of the proxy.
    pub fn accounting(&self) -> &Arc<AccountingShared> {
        &self.running.admin.accounting
    }

    /// Sends every planned request at its offset (from now), reads each response to its end, and
    /// returns what the client saw, in plan order. `X-Request-Id: {prefix}-{index}` makes the
    /// engine's response id predictable.
    pub async fn drive(&self, plan: &[PlannedRequest], prefix: &str) -> Vec<Sent> {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(plan.len());
        for (index, p) in plan.iter().enumerate() {
            let client = self.client.clone();
            let uri = format!("http://{}{}", self.proxy, p.path);
            let xrid = format!("{prefix}-{index}");
            let tag = TAGS[index % TAGS.len()];
            let body = Bytes::from(p.body.clone());
            let (at, path, stream) = (p.at, p.path, p.stream);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + at).await;
                let response_id = match path {
                    "/v1/completions" => format!("cmpl-{xrid}"),
                    _ => format!("chatcmpl-{xrid}"),
                };
                let got = send(&client, &uri, &xrid, tag, body).await;
                Sent {
                    index,
                    path,
                    stream,
                    tag,
                    http_status: got.http_status,
                    record_key: got.record_key,
                    response_id,
                    response_joules: got.response_joules,
                }
            }));
        }
        let mut sent = Vec::with_capacity(tasks.len());
        for t in tasks {
            // A panicked task is a bug in this file; its request is simply missing from the table.
            if let Ok(s) = t.await {
                sent.push(s);
            }
        }
        sent
    }

    /// Waits until accounting has retired every sent request and holds no energy, then matches
    /// each record with the engine's truth.
    pub async fn collect(&self, sent: Vec<Sent>) -> Result<DemoReport, DemoError> {
        let deadline = Instant::now() + self.settle_timeout;
        let accounting = self.accounting().clone();
        // Accounting publishes no event per record: look again every few ms (bounded by the
        // deadline). This waits on a background thread, it does not time anything.
        loop {
            let stats = accounting.stats();
            let all_retired = sent
                .iter()
                .filter_map(|s| s.record_key)
                .all(|k| accounting.record(k).is_some());
            if all_retired && stats.in_flight == 0 && stats.totals.pending_uj == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(DemoError::NotSettled {
                    in_flight: stats.in_flight,
                    pending_uj: stats.totals.pending_uj,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = accounting.stats();
        let mut rows = Vec::with_capacity(sent.len());
        for s in sent {
            let truth = tokio::time::timeout_at(deadline, self.mock.wait_for_truth(&s.response_id))
                .await
                .unwrap_or_default();
            let record = s.record_key.and_then(|k| accounting.record(k));
            rows.push(DemoRow {
                sent: s,
                record: record.map(|r| (*r).clone()),
                truth,
            });
        }
        Ok(DemoReport {
            rows,
            totals: stats.totals,
            p_idle_mw: stats.p_idle_mw,
            calibration: stats.calibration,
            engine: self.mock.settle_energy(),
            prefill_tokens_per_s: stats.prefill_tokens_per_s,
            decode_tokens_per_s: stats.decode_tokens_per_s,
        })
    }

    /// Stops the proxy (drained) and the engine.
    pub async fn stop(self) {
        self.running.shutdown();
        self.running.wait().await;
        self.mock.shutdown().await;
    }
}

/// What [`send`] read from one response.
#[derive(Default)]
struct Received {
    http_status: u16,
    record_key: Option<u64>,
    response_joules: Option<f64>,
}

/// Posts one request and reads the whole response: its status, the proxy's id and the energy
/// the response carried.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &str,
    xrid: &str,
    tag: &str,
    body: Bytes,
) -> Received {
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", xrid)
        .header(ENERGY_TAG, tag)
        .body(Full::new(body));
    let Ok(request) = request else {
        return Received::default();
    };
    let Ok(response) = client.request(request).await else {
        return Received::default();
    };
    let mut got = Received {
        http_status: response.status().as_u16(),
        record_key: response
            .headers()
            .get(ENERGY_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_public_id),
        response_joules: response
            .headers()
            .get(ENERGY_JOULES)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<f64>().ok()),
    };
    // Read to the end, as a client does: the request's life (and its energy) ends with the body.
    let Ok(body) = response.into_body().collect().await else {
        return got;
    };
    if got.response_joules.is_none() {
        got.response_joules = usage_chunk_joules(&body.to_bytes());
    }
    got
}

/// The `energy.joules` of the last SSE event that carries one (a stream's final usage chunk).
fn usage_chunk_joules(body: &[u8]) -> Option<f64> {
    let mut lines = Vec::new();
    sse::lines(body, &mut lines);
    lines
        .iter()
        .rev()
        .filter(|l| l.kind == LineKind::Data)
        .filter_map(|l| body.get(l.value_start..l.end))
        .filter(|data| memchr::memmem::find(data, b"\"energy\"").is_some())
        .find_map(|data| {
            serde_json::from_slice::<serde_json::Value>(data)
                .ok()?
                .get("energy")?
                .get("joules")?
                .as_f64()
        })
}

#[cfg(test)]
mod tests {
    use super::usage_chunk_joules;

    #[test]
    fn a_streams_figure_is_the_energy_of_its_last_usage_chunk() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"energy\\\":\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3},\"energy\":{\"joules\":1.5,\"request_id\":\"jg-1\"}}\n\n\
data: [DONE]\n\n";
        assert_eq!(usage_chunk_joules(body), Some(1.5));
        assert_eq!(
            usage_chunk_joules(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"),
            None
        );
        assert_eq!(usage_chunk_joules(b"data: {\"energy\":\n\n"), None);
    }
}
