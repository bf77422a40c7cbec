//! The load generator's two ends, written on raw sockets so that they cost little next to the
//! proxy they measure and control exactly how the upstream writes: a vLLM-shaped upstream (JSON
//! responses, SSE streams written all at once, one write per event, or paced) and an HTTP/1.1
//! client that times the response head and its last byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Events a client sees per stream: role, 128 tokens, finish, `[DONE]`.
pub const EVENTS: usize = 131;
const TOKENS: usize = 128;

/// How the upstream answers (the `x-bench` request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A 16-token chat completion, JSON, one write.
    Json,
    /// A stream written whole in one write (the proxy reads many events at once).
    Burst,
    /// A stream at full speed, one write per event.
    Each,
    /// A stream with `pace` between events, one write per event.
    Paced,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Json => "json",
            Shape::Burst => "burst",
            Shape::Each => "each",
            Shape::Paced => "paced",
        }
    }

    fn from_name(name: &[u8]) -> Shape {
        match name {
            b"burst" => Shape::Burst,
            b"each" => Shape::Each,
            b"paced" => Shape::Paced,
            _ => Shape::Json,
        }
    }
}

const JSON: &str = r#"{"id":"chatcmpl-b3f1c2d4e5f60718293a4b5c6d7e8f90","object":"chat.completion","created":1764000000,"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog while the cat sleeps on","refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning_content":null},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":22,"total_tokens":38,"completion_tokens":16,"prompt_tokens_details":null},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}"#;

/// The stream's SSE events, each chunk-encoded (`usage`: whether the request asked for it, and
/// whether continuously).
fn events(include: bool, continuous: bool) -> Vec<Vec<u8>> {
    let head = r#"data: {"id":"chatcmpl-b3f1c2d4e5f60718293a4b5c6d7e8f90","object":"chat.completion.chunk","created":1764000000,"model":"tiny","choices":[{"index":0,"#;
    let usage = |completion: usize| {
        if continuous {
            format!(
                r#","usage":{{"prompt_tokens":22,"total_tokens":{},"completion_tokens":{completion}}}"#,
                22 + completion
            )
        } else {
            String::new()
        }
    };
    let mut out = vec![format!(
        r#"{head}"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]{}}}"#,
        usage(0)
    )];
    for i in 0..TOKENS {
        out.push(format!(
            r#"{head}"delta":{{"content":" tok{i}"}},"logprobs":null,"finish_reason":null,"token_ids":null}}]{}}}"#,
            usage(i + 1)
        ));
    }
    out.push(format!(
        r#"{head}"delta":{{"content":""}},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}}]{}}}"#,
        usage(TOKENS)
    ));
    if include {
        out.push(format!(
            r#"data: {{"id":"chatcmpl-b3f1c2d4e5f60718293a4b5c6d7e8f90","object":"chat.completion.chunk","created":1764000000,"model":"tiny","choices":[],"usage":{{"prompt_tokens":22,"total_tokens":{},"completion_tokens":{TOKENS}}}}}"#,
            22 + TOKENS
        ));
    }
    out.push("data: [DONE]".to_string());
    out.into_iter()
        .map(|e| {
            let e = format!("{e}\n\n");
            format!("{:x}\r\n{e}\r\n", e.len()).into_bytes()
        })
        .collect()
}

struct Canned {
    json: Vec<u8>,
    sse_head: &'static [u8],
    // [plain, usage at the end, continuous usage]
    streams: [Vec<Vec<u8>>; 3],
    bursts: [Vec<u8>; 3],
}

fn canned() -> Canned {
    let json = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON}",
        JSON.len()
    )
    .into_bytes();
    let streams = [
        events(false, false),
        events(true, false),
        events(true, true),
    ];
    let bursts = streams.clone().map(|s| {
        let mut b = s.concat();
        b.extend_from_slice(b"0\r\n\r\n");
        b
    });
    Canned {
        json,
        sse_head: b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n",
        streams,
        bursts,
    }
}

/// Serves the upstream on `listener` until the process ends.
pub async fn upstream(listener: TcpListener, pace: Duration) {
    let canned: &'static Canned = Box::leak(Box::new(canned()));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = serve_upstream(tcp, canned, pace).await;
        });
    }
}

async fn serve_upstream(
    mut tcp: TcpStream,
    canned: &Canned,
    pace: Duration,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // One request: its head, then its content-length body.
        let (shape, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let shape = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("x-bench"))
                    .map_or(Shape::Json, |h| Shape::from_name(h.value));
                let body_len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                buf.advance(n);
                break (shape, body_len);
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        while buf.len() < len {
            if tcp.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf.split_to(len);
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        let usage = if has(b"\"continuous_usage_stats\":true") {
            2
        } else if has(b"\"include_usage\":true") {
            1
        } else {
            0
        };
        match shape {
            Shape::Json => tcp.write_all(&canned.json).await?,
            Shape::Burst => {
                let mut whole = canned.sse_head.to_vec();
                whole.extend_from_slice(&canned.bursts[usage]);
                tcp.write_all(&whole).await?;
            }
            Shape::Each | Shape::Paced => {
                tcp.write_all(canned.sse_head).await?;
                for event in &canned.streams[usage] {
                    if shape == Shape::Paced {
                        tokio::time::sleep(pace).await;
                    }
                    tcp.write_all(event).await?;
                }
                tcp.write_all(b"0\r\n\r\n").await?;
            }
        }
    }
}

/// One request's timings.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// First byte of the response.
    pub ttfb: Duration,
    /// Last byte of the body (trailers included).
    pub last: Duration,
}

/// One client connection sending `n` requests of `shape` one after another. With `energy`, every
/// response must carry joulegate's energy (`x-energy-joules` in the head of a JSON response, in
/// the trailers of a stream): the proxy did its whole accounting.
pub async fn client(
    addr: SocketAddr,
    shape: Shape,
    n: usize,
    energy: bool,
) -> std::io::Result<Vec<Timing>> {
    let no_energy = || std::io::Error::other("a response without x-energy-joules");
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let body: &[u8] = if shape == Shape::Json {
        br#"{"model":"tiny","messages":[{"role":"user","content":"Write one sentence about a fox."}],"max_tokens":16}"#
    } else {
        br#"{"model":"tiny","messages":[{"role":"user","content":"Write one sentence about a fox."}],"max_tokens":128,"stream":true}"#
    };
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nauthorization: Bearer sk-bench\r\nte: trailers\r\nx-bench: {}\r\ncontent-length: {}\r\n\r\n",
        shape.name(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        tcp.write_all(&request).await?;
        let mut ttfb = None;
        // The head.
        let (chunked, mut left) = loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
                    if resp.code != Some(200) {
                        return Err(std::io::Error::other(format!("status {:?}", resp.code)));
                    }
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| h.value)
                    };
                    let chunked = header("transfer-encoding").is_some();
                    if energy && !chunked && header("x-energy-joules").is_none() {
                        return Err(no_energy());
                    }
                    let len = header("content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
                        .unwrap_or(0);
                    buf.advance(n);
                    break (chunked, len);
                }
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            ttfb.get_or_insert_with(|| t0.elapsed());
        };
        if chunked {
            let mut trailers = Vec::new();
            while !chunked_done(&mut buf, &mut trailers)? {
                if tcp.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let needle = b"x-energy-joules:";
            if energy
                && !trailers
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle))
            {
                return Err(no_energy());
            }
        } else {
            loop {
                let take = left.min(buf.len());
                buf.advance(take);
                left -= take;
                if left == 0 {
                    break;
                }
                if tcp.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        out.push(Timing {
            ttfb: ttfb.unwrap_or_default(),
            last: t0.elapsed(),
        });
    }
    Ok(out)
}

/// Consumes whole chunks from `buf`; true once the last chunk and the trailer section (copied to
/// `trailers`) are in.
fn chunked_done(buf: &mut BytesMut, trailers: &mut Vec<u8>) -> std::io::Result<bool> {
    let bad = || std::io::Error::other("bad chunked body");
    loop {
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(false);
        };
        let size_text = std::str::from_utf8(&buf[..eol]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        if size == 0 {
            // Trailers: lines until an empty one.
            let rest = &buf[eol + 2..];
            if rest.starts_with(b"\r\n") {
                buf.advance(eol + 4);
                return Ok(true);
            }
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(false);
            };
            trailers.extend_from_slice(&rest[..end]);
            buf.advance(eol + 2 + end + 4);
            return Ok(true);
        }
        if buf.len() < eol + 2 + size + 2 {
            return Ok(false);
        }
        buf.advance(eol + 2 + size + 2);
    }
}
