//! Test harness for whole-proxy tests: a scripted raw-TCP upstream (exact bytes, exact cuts, gates
//! instead of sleeps), the proxy started on 127.0.0.1:0, and a small hyper client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Generous guard for awaits that must complete; never a pass/fail timing criterion.
pub const GUARD: Duration = Duration::from_secs(10);

pub async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// One step of a scripted response.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes (as one write; for chunked replies, as one chunk).
    Write(Vec<u8>),
    /// Wait for one permit of the upstream's gate before continuing.
    Gate,
    /// Close the connection abruptly now.
    Reset,
    /// Keep the connection open without writing until the peer closes it.
    Hold,
}

/// A scripted response: head and body steps.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body steps; with `chunked`, each `Write` is framed as one chunk.
    pub steps: Vec<Step>,
    pub chunked: bool,
}

impl Reply {
    /// A fixed body with content-length.
    pub fn fixed(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            headers.push(("content-length".into(), body.len().to_string()));
        }
        Reply {
            status,
            headers,
            steps: vec![Step::Write(body.to_vec())],
            chunked: false,
        }
    }

    /// A chunked body made of `steps`.
    pub fn chunked(status: u16, headers: &[(&str, &str)], steps: Vec<Step>) -> Reply {
        let headers = headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(std::iter::once((
                "transfer-encoding".to_string(),
                "chunked".to_string(),
            )))
            .collect();
        Reply {
            status,
            headers,
            steps,
            chunked: true,
        }
    }
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    /// Header (name lowercased, value) pairs in wire order.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// A raw HTTP/1.1 upstream that answers each request with a scripted reply.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Received>,
    /// One message per connection the peer closed while the script was gated or holding.
    pub peer_closed: mpsc::UnboundedReceiver<()>,
    pub gate: Arc<Semaphore>,
}

impl ScriptedUpstream {
    pub async fn start(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (rx_tx, received) = mpsc::unbounded_channel();
        let (closed_tx, peer_closed) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let handler: Handler = Arc::new(handler);
        let gate2 = gate.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    handler.clone(),
                    rx_tx.clone(),
                    closed_tx.clone(),
                    gate2.clone(),
                ));
            }
        });
        ScriptedUpstream {
            addr,
            received,
            peer_closed,
            gate,
        }
    }

    /// Lets one gated step proceed.
    pub fn open_gate(&self) {
        self.gate.add_permits(1);
    }
}

async fn connection(
    mut stream: TcpStream,
    handler: Handler,
    received: mpsc::UnboundedSender<Received>,
    closed: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let reply = handler(&request);
        let _ = received.send(request);
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for step in &reply.steps {
            match step {
                Step::Write(bytes) => {
                    let framed = if reply.chunked {
                        if bytes.is_empty() {
                            continue;
                        }
                        let mut f = format!("{:x}\r\n", bytes.len()).into_bytes();
                        f.extend_from_slice(bytes);
                        f.extend_from_slice(b"\r\n");
                        f
                    } else {
                        bytes.clone()
                    };
                    if stream.write_all(&framed).await.is_err() {
                        let _ = closed.send(());
                        return;
                    }
                }
                Step::Gate => {
                    tokio::select! {
                        permit = gate.acquire() => permit.unwrap().forget(),
                        () = wait_closed(&mut stream) => { let _ = closed.send(()); return; }
                    }
                }
                Step::Reset => {
                    // Zero linger makes the close an RST, which is what "reset" means here; the socket
                    // is closed right after, so the blocking-drop concern does not apply.
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::Hold => {
                    wait_closed(&mut stream).await;
                    let _ = closed.send(());
                    return;
                }
            }
        }
        if reply.chunked && stream.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

async fn wait_closed(stream: &mut TcpStream) {
    let mut scratch = [0u8; 1024];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status")
}

/// Reads one request (head + content-length or chunked body). `None` on EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        while buf.len() < len {
            read_more(stream, buf).await?;
        }
        body = buf.drain(..len).collect();
    } else if lower
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                read_more(stream, buf).await?;
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                read_more(stream, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    Some(Received { head, body })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A running proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub join: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    pub async fn start(upstream: SocketAddr) -> TestProxy {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: SocketAddr, tweak: impl FnOnce(&mut ServeArgs)) -> TestProxy {
        let mut args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{upstream}")),
            // No /version probe unless a test asks for it: scripted upstreams answer every request.
            absent_include_usage: Some("false".into()),
            upstream_forces_usage: Some("false".into()),
            ..ServeArgs::default()
        };
        tweak(&mut args);
        let config = Config::resolve(&args, &Default::default(), None).expect("valid test config");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let addr = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let app = App::build(config).expect("app builds");
        let join = tokio::spawn(async move {
            app.serve(listeners, async {
                let _ = rx.await;
            })
            .await
            .expect("app serves");
        });
        TestProxy {
            addr,
            admin,
            shutdown: Some(tx),
            join,
        }
    }

    /// Starts the graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A received response, fully read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    /// Header (name, value) pairs in order, minus framing headers hyper owns.
    pub fn header_list(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_str() != "transfer-encoding")
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }
}

/// An HTTP/1.1 client connection (no pooling, so each test controls its socket).
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// An HTTP/2 prior-knowledge (h2c) client connection.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Builds an HTTP/1.1 request in origin form (as real clients send it); [`h2_request`] for HTTP/2.
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let _ = addr;
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// The same request with an absolute URI, as HTTP/2 needs (`:scheme`, `:authority`).
pub fn h2_request(mut req: Request<Full<Bytes>>, addr: SocketAddr) -> Request<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    req.headers_mut().remove("host");
    req
}

/// Sends over HTTP/1.1 and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let mut sender = h1(addr).await;
    let response = guard("response", sender.send_request(req))
        .await
        .expect("response");
    collect(response).await
}

/// Reads a whole response, keeping trailers.
pub async fn collect(response: http::Response<hyper::body::Incoming>) -> Got {
    let (parts, body) = response.into_parts();
    let collected = guard("body", body.collect()).await.expect("body");
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes().to_vec(),
        trailers,
    }
}

/// The fixtures folder kept in the project.
pub fn fixtures_dir(folder: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder)
}

/// One recorded vLLM exchange.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub method: String,
    pub path: String,
    pub request_body: Option<serde_json::Value>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Fixture {
    pub fn is_chunked(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    }
}

/// Loads every case of a fixture folder.
pub fn fixtures(folder: &str) -> Vec<Fixture> {
    let dir = fixtures_dir(folder);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (name, case) in index.as_object().unwrap() {
        let headers = case["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap().to_string(),
                    h[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.push(Fixture {
            name: name.clone(),
            method: case["request"]["method"].as_str().unwrap().to_string(),
            path: case["request"]["path"].as_str().unwrap().to_string(),
            request_body: case["request"]
                .get("body")
                .filter(|b| !b.is_null())
                .cloned(),
            status: case["status"].as_u64().unwrap() as u16,
            headers,
            body: std::fs::read(dir.join(format!("{name}.body"))).unwrap(),
        });
    }
    out
}
