//! The soak's load: the fixed mix of twenty requests, and the workers that send it, each on one
//! keep-alive HTTP/1.1 connection, checking every answer and counting answers, aborts and failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What one request in the mix is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ChatJson,
    CompletionJson,
    StreamUsage,
    StreamPlain,
    Abort,
}

impl Kind {
    /// The fixed mix of twenty.
    fn of(i: u64) -> Kind {
        match i % 20 {
            0..=8 if i % 2 == 0 => Kind::ChatJson,
            0..=8 => Kind::CompletionJson,
            9..=12 => Kind::StreamUsage,
            13..=17 => Kind::StreamPlain,
            _ => Kind::Abort,
        }
    }

    fn request(self) -> (&'static str, &'static [u8]) {
        const CHAT: &str = "/v1/chat/completions";
        const COMPLETIONS: &str = "/v1/completions";
        match self {
            Kind::ChatJson => (CHAT, br#"{"model":"tiny","messages":[{"role":"user","content":"soak"}],"max_tokens":8}"#),
            Kind::CompletionJson => (COMPLETIONS, br#"{"model":"tiny","prompt":"soak","max_tokens":8}"#),
            Kind::StreamUsage => (CHAT, br#"{"model":"tiny","messages":[{"role":"user","content":"soak"}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}"#),
            Kind::StreamPlain => (COMPLETIONS, br#"{"model":"tiny","prompt":"soak","max_tokens":8,"stream":true}"#),
            Kind::Abort => (CHAT, br#"{"model":"tiny","messages":[{"role":"user","content":"soak"}],"max_tokens":8,"stream":true}"#),
        }
    }
}

/// Counts shared by the workers.
#[derive(Default)]
pub struct Counts {
    pub done: AtomicU64,
    pub answered: AtomicU64,
    pub aborted: AtomicU64,
    pub failed: AtomicU64,
}

async fn connect(addr: SocketAddr) -> Result<(SendRequest<Full<Bytes>>, JoinHandle<()>)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// Sends one request of `kind` on `conn` (opening it if needed); an abort closes it.
async fn one(
    addr: SocketAddr,
    conn: &mut Option<(SendRequest<Full<Bytes>>, JoinHandle<()>)>,
    kind: Kind,
) -> Result<()> {
    if conn.as_ref().map_or(true, |(s, _)| s.is_closed()) {
        *conn = Some(connect(addr).await?);
    }
    let Some((sender, _)) = conn.as_mut() else {
        bail!("no connection");
    };
    sender.ready().await?;
    let (path, body) = kind.request();
    let mut req = http::Request::post(path)
        .header("host", "soak")
        .header("content-type", "application/json");
    if kind == Kind::Abort {
        req = req.header("x-mock-fault", "stall-after=2");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from_static(body)))?)
        .await?;
    if resp.status() != 200 {
        bail!("status {}", resp.status());
    }
    match kind {
        Kind::ChatJson | Kind::CompletionJson => {
            if !resp.headers().contains_key("x-energy-status") {
                bail!("no x-energy-status");
            }
            resp.into_body().collect().await?;
        }
        Kind::StreamUsage | Kind::StreamPlain => {
            let all = resp.into_body().collect().await?.to_bytes();
            if !all.ends_with(b"data: [DONE]\n\n") {
                bail!("stream without [DONE]");
            }
        }
        Kind::Abort => {
            let mut body = resp.into_body();
            let mut seen = Vec::new();
            while !seen.windows(9).any(|w| w == b"\"content\"") {
                let frame = body
                    .frame()
                    .await
                    .context("stream ended before a token")??;
                seen.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
            }
            // Dropping the connection is the abort.
            if let Some((_, task)) = conn.take() {
                task.abort();
            }
        }
    }
    Ok(())
}

pub async fn worker(addr: SocketAddr, next: Arc<AtomicU64>, total: u64, counts: Arc<Counts>) {
    let mut conn = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return;
        }
        let kind = Kind::of(i);
        match one(addr, &mut conn, kind).await {
            Ok(()) if kind == Kind::Abort => counts.aborted.fetch_add(1, Ordering::Relaxed),
            Ok(()) => counts.answered.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if counts.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("request {i} failed: {e:#}");
                }
                conn = None;
                0
            }
        };
        counts.done.fetch_add(1, Ordering::Relaxed);
    }
}
