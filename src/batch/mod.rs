//! `joulegate batch`: runs an OpenAI batch file (JSONL lines `{"custom_id","method","url","body"}`)
//! through joulegate and writes OpenAI's batch output shape, one line per request, with an
//! `energy` object read from the response's `x-energy-*` headers, then a summary of the job.
//!
//! Through a running proxy (`--proxy URL`) or an in-process one in front of `--upstream URL` with
//! `--meter SPEC` (started like `serve`, on loopback ports, and drained at the end). At most
//! `--max-concurrency` requests are in flight. Resumable: `custom_id`s already in the output file
//! are skipped, and the output is appended to, one flushed line per finished request, so a job
//! cut short loses at most the requests in flight. Lines are written in completion order (as
//! OpenAI's are not ordered either). Owns the command; the line shapes live in [`line`].

pub mod line;

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::app::{App, AppError, Listeners};
use crate::cli::ServeArgs;
use crate::config::{Config, ConfigError, FileConfig};
use crate::proxy::headers::ENERGY_TAG;
pub use line::Summary;
use line::{parse_input, Energy, InputLine, LineError, OutputError, OutputLine, OutputResponse};

/// Flags of `joulegate batch`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// The batch file: one JSON request per line (`custom_id`, `method`, `url`, `body`).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Output JSONL file; appended to, and `custom_id`s already in it are skipped (resume).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// A running joulegate to send the requests through, e.g. http://127.0.0.1:9000.
    #[arg(long, value_name = "URL", conflicts_with = "upstream")]
    pub proxy: Option<String>,
    /// Start joulegate in this process in front of this OpenAI-compatible server instead.
    #[arg(long, value_name = "URL", required_unless_present = "proxy")]
    pub upstream: Option<String>,
    /// Energy meter of the in-process joulegate (repeatable; as `serve --meter`).
    #[arg(long = "meter", value_name = "SPEC", requires = "upstream")]
    pub meters: Vec<String>,
    /// Most requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_concurrency: u64,
    /// `x-energy-tag` sent with every request, so `/stats` shows the job as one tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
}

/// Why a batch could not run (a failed request is an output line, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An input line is not a batch request.
    #[error("{path}: {source}")]
    Line { path: PathBuf, source: LineError },
    /// `--proxy` is not a plain http:// base URL.
    #[error("invalid --proxy {0:?}: expected http://HOST:PORT")]
    ProxyUrl(String),
    /// The in-process joulegate's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The in-process joulegate could not start.
    #[error(transparent)]
    App(#[from] AppError),
    /// Binding the in-process joulegate's loopback listeners failed.
    #[error("cannot bind the in-process joulegate: {0}")]
    Bind(std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and checks the whole input file (a bad line stops the job before anything is sent).
pub fn read_input(path: &Path) -> Result<Vec<InputLine>, BatchError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, text) in std::io::BufReader::new(file).lines().enumerate() {
        let text = text.map_err(io_err(path))?;
        if text.trim().is_empty() {
            continue;
        }
        let line = parse_input(i + 1, &text).map_err(|source| BatchError::Line {
            path: path.to_path_buf(),
            source,
        })?;
        if !seen.insert(line.custom_id.clone()) {
            return Err(BatchError::Line {
                path: path.to_path_buf(),
                source: LineError::Duplicate {
                    line: i + 1,
                    custom_id: line.custom_id,
                },
            });
        }
        out.push(line);
    }
    Ok(out)
}

/// The output lines already written (resume); a torn last line (a job killed mid-write) is
/// ignored, and its request is sent again.
pub fn read_output(path: &Path) -> Result<Vec<OutputLine>, BatchError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<OutputLine>(l).ok())
        .collect())
}

/// Runs the job described by `args` and returns its summary.
pub async fn run(args: &BatchArgs) -> Result<Summary, BatchError> {
    let inputs = read_input(&args.input)?;
    let (base, running) = match (&args.proxy, &args.upstream) {
        (Some(url), _) => (proxy_base(url)?, None),
        (None, upstream) => {
            let serve = ServeArgs {
                listen: Some("127.0.0.1:0".into()),
                admin_listen: Some("127.0.0.1:0".into()),
                upstream: upstream.clone(),
                meters: args.meters.clone(),
                ..ServeArgs::default()
            };
            let config = Config::resolve(&serve, &FileConfig::default(), None)?;
            let listeners = Listeners::bind(&config).await.map_err(BatchError::Bind)?;
            let running = App::build(config)?.start(listeners)?;
            let addr = running
                .proxy_addr
                .ok_or_else(|| BatchError::Bind(std::io::Error::other("no proxy address")))?;
            (format!("http://{addr}"), Some(running))
        }
    };
    let summary = send_all(args, &base, inputs).await;
    if let Some(running) = running {
        running.shutdown();
        running.wait().await;
    }
    summary
}

fn proxy_base(url: &str) -> Result<String, BatchError> {
    let trimmed = url.trim_end_matches('/');
    match trimmed.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Ok(trimmed.into()),
        _ => Err(BatchError::ProxyUrl(url.into())),
    }
}

async fn send_all(
    args: &BatchArgs,
    base: &str,
    inputs: Vec<InputLine>,
) -> Result<Summary, BatchError> {
    let start = Instant::now();
    let mut summary = Summary::default();
    let done = read_output(&args.output)?;
    let done_ids: HashSet<String> = done.iter().map(|l| l.custom_id.clone()).collect();
    for line in &done {
        summary.add(line);
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .map_err(io_err(&args.output))?;
    let client: Arc<Client<_, Full<Bytes>>> =
        Arc::new(Client::builder(TokioExecutor::new()).build_http());
    let base: Arc<str> = base.into();
    let tag: Option<Arc<str>> = args.tag.as_deref().map(Into::into);
    let mut next_id = done.len() as u64;
    let (skipped, todo): (Vec<InputLine>, Vec<InputLine>) = inputs
        .into_iter()
        .partition(|i| done_ids.contains(&i.custom_id));
    summary.skipped = skipped.len() as u64;
    let mut pending = todo.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while (tasks.len() as u64) < args.max_concurrency {
            let Some(input) = pending.next() else { break };
            next_id += 1;
            let (client, base, tag) = (client.clone(), base.clone(), tag.clone());
            tasks.spawn(
                async move { send_one(&client, &base, tag.as_deref(), input, next_id).await },
            );
            summary.sent += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        // A panicked task is a bug; its request is left out and sent again on resume.
        let Ok(line) = joined else { continue };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(io_err(&args.output))?;
        summary.add(&line);
    }
    summary.wall_s = start.elapsed().as_secs_f64();
    Ok(summary)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send_one(
    client: &HttpClient,
    base: &str,
    tag: Option<&str>,
    input: InputLine,
    n: u64,
) -> OutputLine {
    let id = format!("batch_req_{n}");
    let failed = |code: &str, message: String| OutputLine {
        id: id.clone(),
        custom_id: input.custom_id.clone(),
        response: None,
        error: Some(OutputError {
            code: code.into(),
            message,
        }),
        energy: None,
    };
    let method = match Method::from_bytes(input.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return failed("invalid_request", format!("bad method {:?}", input.method)),
    };
    let body = serde_json::to_vec(&input.body).unwrap_or_default();
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{base}{}", input.url))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(tag) = tag {
        builder = builder.header(ENERGY_TAG, tag);
    }
    let request = match builder.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return failed("invalid_request", e.to_string()),
    };
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return failed("request_failed", e.to_string()),
    };
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return failed("request_failed", format!("response body: {e}")),
    };
    let energy = Energy::from_headers(&parts.headers);
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| energy.as_ref().and_then(|e| e.request_id.clone()));
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    OutputLine {
        id,
        custom_id: input.custom_id,
        response: Some(OutputResponse {
            status_code: parts.status.as_u16(),
            request_id,
            body,
        }),
        error: None,
        energy,
    }
}

/// The CLI entry: runs the job and prints its summary as JSON on stdout.
pub async fn run_cli(args: BatchArgs) -> Result<(), BatchError> {
    let summary = run(&args).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}
