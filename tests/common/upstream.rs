//! The mock upstream of the whole-proxy tests: a raw HTTP/1.1 server on 127.0.0.1:0 that answers
//! each request with a scripted reply (exact bytes, exact cuts, gates instead of sleeps, resets and
//! holds), and reports what it received and which connections the peer closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

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
