//! The request-head screen: an I/O wrapper on each client connection that reads HTTP/1.x request
//! framing before hyper does and refuses the ambiguous framing that request smuggling relies on.
//!
//! hyper already refuses conflicting `Content-Length` values, a `Transfer-Encoding` whose last
//! coding is not `chunked`, header names with spaces and obsolete line folding (400, connection
//! closed). It accepts, per RFC 9112's leniencies, a request carrying both `Content-Length` and
//! `Transfer-Encoding` (it drops the length and closes the connection after answering, but still
//! hands the request to the service, which would forward it), identical duplicate lengths, and
//! bare LF line endings; and from the service's side the dropped `Content-Length` is invisible.
//! The screen sees the bytes, so it decides: a head with any of these is never completed as the
//! client sent it. The screen ends it instead with the private header
//! [`super::headers::REFUSED_HEAD`] naming the [`Refusal`] and `connection: close`; the service
//! answers that with a 400 (431 for an oversized head) in the OpenAI error shape through
//! [`super::error::error_response`], and hyper closes the connection after it. Nothing of a refused
//! request reaches the upstream, and nothing pipelined after it is read.
//!
//! It forwards bytes as soon as it may: the request line at once (so hyper's
//! `header_read_timeout` and the HTTP/2 preface detection see a slow client), each complete
//! header line once screened, the framing lines (`Content-Length`, `Transfer-Encoding`) at the end
//! of the head, and bodies as they come (their framing tracked, so that the next pipelined head is
//! found: a fixed length, or chunks, extensions and trailers). hyper cannot dispatch a head before
//! its final empty line, which the screen writes only once the head passed. An HTTP/2 connection
//! (the `PRI` preface) and a `CONNECT` tunnel pass through unscreened after their first line. A
//! body whose chunked framing is broken ends the connection with an I/O error (hyper would refuse
//! it too). It must not touch response bytes (writes pass straight through) nor hold more than one
//! head ([`MAX_HEAD_BYTES`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head (request line and header fields) screened; longer ones are refused with 431.
/// uvicorn, in front of vLLM, refuses heads over 16 KiB, so this never refuses what vLLM accepts.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// hyper's per-connection buffer bound on client connections: what one may hold of bytes read but
/// not yet consumed, or written but not yet taken by the peer. hyper's default (about 400 KiB) made
/// each slow reader cost about 600 KiB; this keeps room for the largest head the screen lets
/// through, plus a margin. Upstream connections read in fixed steps instead
/// ([`crate::proxy::upstream::MAX_RESPONSE_HEAD_BYTES`]).
pub const CONNECTION_BUF_BYTES: usize = MAX_HEAD_BYTES + 32 * 1024;

/// Most header lines in one head. hyper's own bound is 100; the screen stops at 98 so that the two
/// lines it adds to a refused head stay within it.
pub const MAX_HEADER_LINES: usize = 98;

/// Bytes of the request line kept to recognise it (`CONNECT `, the HTTP/2 preface `PRI * HTTP/2.0`).
const REQUEST_LINE_KEEP: usize = 16;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Length` and `Transfer-Encoding` in one request (RFC 9112 §6.1: a smuggling sign).
    LengthAndChunked,
    /// More than one `Content-Length` field, even with equal values.
    DuplicateLength,
    /// A `Content-Length` that is not a plain decimal number.
    BadLength,
    /// A `Transfer-Encoding` other than exactly `chunked` (`chunked, identity`, `xchunked`, ...).
    BadTransferEncoding,
    /// More than one `Transfer-Encoding` field.
    DuplicateTransferEncoding,
    /// A line ended by LF without CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A header line without a colon, with an empty name, or with spaces or tabs in the name.
    BadHeaderName,
    /// A header line continued on the next line (obsolete folding).
    ObsFold,
    /// A head longer than [`MAX_HEAD_BYTES`] (431).
    TooLarge,
    /// More than [`MAX_HEADER_LINES`] header fields (431).
    TooManyFields,
}

impl Refusal {
    const ALL: [Refusal; 11] = [
        Refusal::LengthAndChunked,
        Refusal::DuplicateLength,
        Refusal::BadLength,
        Refusal::BadTransferEncoding,
        Refusal::DuplicateTransferEncoding,
        Refusal::BareLf,
        Refusal::BareCr,
        Refusal::BadHeaderName,
        Refusal::ObsFold,
        Refusal::TooLarge,
        Refusal::TooManyFields,
    ];

    /// The token carried in the marker header.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => "length-and-chunked",
            Refusal::DuplicateLength => "duplicate-length",
            Refusal::BadLength => "bad-length",
            Refusal::BadTransferEncoding => "bad-transfer-encoding",
            Refusal::DuplicateTransferEncoding => "duplicate-transfer-encoding",
            Refusal::BareLf => "bare-lf",
            Refusal::BareCr => "bare-cr",
            Refusal::BadHeaderName => "bad-header-name",
            Refusal::ObsFold => "obs-fold",
            Refusal::TooLarge => "too-large",
            Refusal::TooManyFields => "too-many-fields",
        }
    }

    /// The refusal a marker header names; an unknown token (a client forging the header) is
    /// still a refusal.
    pub fn from_code(code: &[u8]) -> Refusal {
        Refusal::ALL
            .into_iter()
            .find(|r| r.code().as_bytes() == code)
            .unwrap_or(Refusal::BadHeaderName)
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => {
                "request has both Content-Length and Transfer-Encoding (refused: ambiguous framing)"
            }
            Refusal::DuplicateLength => "request has more than one Content-Length",
            Refusal::BadLength => "request has an invalid Content-Length",
            Refusal::BadTransferEncoding => "request Transfer-Encoding must be exactly \"chunked\"",
            Refusal::DuplicateTransferEncoding => "request has more than one Transfer-Encoding",
            Refusal::BareLf => "request head has a line ending without CR",
            Refusal::BareCr => "request head has a CR without LF",
            Refusal::BadHeaderName => "request has an invalid header line or name",
            Refusal::ObsFold => "request has a folded header line",
            Refusal::TooLarge => "request header fields are larger than 65536 bytes",
            Refusal::TooManyFields => "request has more than 98 header fields",
        }
    }

    /// 431 for the size bounds, else 400.
    pub fn too_large(self) -> bool {
        matches!(self, Refusal::TooLarge | Refusal::TooManyFields)
    }
}

/// A request body whose chunked framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked request body")]
pub struct FramingError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size (`digits` read so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Spaces after the size, before `;` or CR.
    SizeWs {
        size: u64,
    },
    /// A chunk extension, up to CR.
    Ext {
        size: u64,
    },
    /// CR of the size line seen.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Start of a trailer line (an empty one ends the body).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line (empty lines are passed on; hyper skips them).
    Start,
    RequestLine,
    RequestLineCr,
    Headers,
    HeaderCr,
    Fixed(u64),
    Chunked(Chunk),
    /// HTTP/2 or a tunnel: nothing more to screen.
    Passthrough,
    /// A refused head was ended; nothing more is read.
    Refused,
}

/// The screening state machine: bytes in, the bytes hyper may see out. Pure, no I/O.
#[derive(Debug)]
pub struct Screen {
    state: State,
    /// The current line (request line, or a header line being held).
    line: Vec<u8>,
    /// Framing lines held until the end of the head.
    framing: Vec<u8>,
    head_bytes: usize,
    fields: usize,
    length: Option<u64>,
    chunked: bool,
    tunnel: bool,
}

impl Default for Screen {
    fn default() -> Self {
        Screen {
            state: State::Start,
            line: Vec::new(),
            framing: Vec::new(),
            head_bytes: 0,
            fields: 0,
            length: None,
            chunked: false,
            tunnel: false,
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

impl Screen {
    /// Whether the connection was refused (nothing more will be passed on).
    pub fn refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Whether the screen stepped aside (HTTP/2, a tunnel): bytes may go straight to hyper.
    pub fn passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// How many next bytes pass unscreened (body bytes of known length, or everything after the
    /// screen stepped aside): the wrapper may read them straight into hyper's buffer.
    pub fn pass_budget(&self) -> u64 {
        match self.state {
            State::Fixed(left) | State::Chunked(Chunk::Data(left)) => left,
            State::Passthrough => u64::MAX,
            _ => 0,
        }
    }

    /// Accounts for `n` bytes (at most [`Screen::pass_budget`]) that went to hyper directly.
    pub fn passed(&mut self, n: u64) {
        self.state = match self.state {
            State::Fixed(left) if n >= left => State::Start,
            State::Fixed(left) => State::Fixed(left - n),
            State::Chunked(Chunk::Data(left)) if n >= left => State::Chunked(Chunk::DataCr),
            State::Chunked(Chunk::Data(left)) => State::Chunked(Chunk::Data(left - n)),
            other => other,
        };
    }

    /// Screens `input`, appending what hyper may see now to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(&input[i..]);
                    return Ok(());
                }
                State::Refused => return Ok(()),
                State::Fixed(left) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Start
                    } else {
                        State::Fixed(left)
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    });
                }
                State::Chunked(chunk) => {
                    let b = input[i];
                    i += 1;
                    out.push(b);
                    self.state = match step_chunk(chunk, b)? {
                        Some(next) => State::Chunked(next),
                        None => State::Start,
                    };
                }
                _ => {
                    if matches!(self.state, State::RequestLine | State::Headers) {
                        let n = self.take_run(&input[i..], out);
                        if n > 0 {
                            i += n;
                            continue;
                        }
                    }
                    let b = input[i];
                    i += 1;
                    if let Err(refusal) = self.head_byte(b, out) {
                        self.refuse(refusal, out);
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the bytes before the next CR or LF of the request line or a header line at once (as
    /// [`Screen::head_byte`] would one by one, within [`MAX_HEAD_BYTES`]); returns how many. The
    /// line ends, and the byte that passes the bound, go through `head_byte`.
    fn take_run(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let run = memchr::memchr2(b'\r', b'\n', input).unwrap_or(input.len());
        let take = run.min(MAX_HEAD_BYTES.saturating_sub(self.head_bytes));
        let bytes = &input[..take];
        self.head_bytes += take;
        if self.state == State::Headers {
            self.line.extend_from_slice(bytes);
        } else {
            // Only the start of the request line is kept (the method, the HTTP/2 preface).
            let keep = REQUEST_LINE_KEEP.saturating_sub(self.line.len()).min(take);
            self.line.extend_from_slice(&bytes[..keep]);
            out.extend_from_slice(bytes);
        }
        take
    }

    /// One byte of a request head.
    fn head_byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Refusal> {
        if self.state != State::Start {
            self.head_bytes += 1;
            if self.head_bytes > MAX_HEAD_BYTES {
                return Err(Refusal::TooLarge);
            }
        }
        match self.state {
            State::Start => {
                if b == b'\r' || b == b'\n' {
                    out.push(b);
                } else {
                    self.state = State::RequestLine;
                    self.head_bytes = 1;
                    self.line.push(b);
                    out.push(b);
                }
            }
            State::RequestLine => match b {
                b'\r' => self.state = State::RequestLineCr,
                b'\n' => return Err(Refusal::BareLf),
                _ => {
                    // Only the start of the line is needed (the method, the HTTP/2 preface).
                    if self.line.len() < REQUEST_LINE_KEEP {
                        self.line.push(b);
                    }
                    out.push(b);
                }
            },
            State::RequestLineCr => {
                if b != b'\n' {
                    return Err(Refusal::BareCr);
                }
                out.extend_from_slice(b"\r\n");
                if self.line.starts_with(b"PRI * HTTP/2.0") {
                    self.state = State::Passthrough;
                    return Ok(());
                }
                self.tunnel = self.line.starts_with(b"CONNECT ");
                self.line.clear();
                self.state = State::Headers;
            }
            State::Headers => match b {
                b'\r' => self.state = State::HeaderCr,
                b'\n' => return Err(Refusal::BareLf),
                _ => self.line.push(b),
            },
            State::HeaderCr => {
                if b != b'\n' {
                    return Err(Refusal::BareCr);
                }
                if self.line.is_empty() {
                    return self.end_of_head(out);
                }
                self.header_line(out)?;
                self.line.clear();
                self.state = State::Headers;
            }
            _ => {}
        }
        Ok(())
    }

    /// A complete header line (without its CRLF).
    fn header_line(&mut self, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let line = &self.line;
        if line.first().copied().is_some_and(is_ows) {
            return Err(Refusal::ObsFold);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Refusal::BadHeaderName)?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || name.iter().any(|&b| is_ows(b)) {
            return Err(Refusal::BadHeaderName);
        }
        self.fields += 1;
        if self.fields > MAX_HEADER_LINES {
            return Err(Refusal::TooManyFields);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.length.is_some() {
                return Err(Refusal::DuplicateLength);
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::BadLength);
            }
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            self.length = Some(n);
            self.framing.extend_from_slice(line);
            self.framing.extend_from_slice(b"\r\n");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.chunked {
                return Err(Refusal::DuplicateTransferEncoding);
            }
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::BadTransferEncoding);
            }
            self.chunked = true;
            self.framing.extend_from_slice(line);
            self.framing.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    /// The empty line: the head passed unless its framing is ambiguous.
    fn end_of_head(&mut self, out: &mut Vec<u8>) -> Result<(), Refusal> {
        if self.chunked && self.length.is_some() {
            return Err(Refusal::LengthAndChunked);
        }
        out.append(&mut self.framing);
        out.extend_from_slice(b"\r\n");
        self.state = if self.tunnel {
            State::Passthrough
        } else if self.chunked {
            State::Chunked(Chunk::Size { size: 0, digits: 0 })
        } else {
            match self.length {
                Some(n) if n > 0 => State::Fixed(n),
                _ => State::Start,
            }
        };
        self.line.clear();
        self.head_bytes = 0;
        self.fields = 0;
        self.length = None;
        self.chunked = false;
        self.tunnel = false;
        Ok(())
    }

    /// Ends the head with the marker instead of what the client sent; nothing more is passed on.
    fn refuse(&mut self, refusal: Refusal, out: &mut Vec<u8>) {
        match self.state {
            State::Start => out.extend_from_slice(b"GET / HTTP/1.1\r\n"),
            State::RequestLine | State::RequestLineCr => out.extend_from_slice(b"\r\n"),
            _ => {}
        }
        out.extend_from_slice(super::headers::REFUSED_HEAD.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(refusal.code().as_bytes());
        out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        self.state = State::Refused;
        self.line = Vec::new();
        self.framing = Vec::new();
    }
}

/// One framing byte of a chunked body; `None` when the body ended.
fn step_chunk(chunk: Chunk, b: u8) -> Result<Option<Chunk>, FramingError> {
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    Ok(Some(match chunk {
        Chunk::Size { size, digits } => match (hex(b), b) {
            (Some(d), _) if digits < 16 => Chunk::Size {
                size: size * 16 + d,
                digits: digits + 1,
            },
            (Some(_), _) => return Err(FramingError),
            (None, _) if digits == 0 => return Err(FramingError),
            (None, b' ' | b'\t') => Chunk::SizeWs { size },
            (None, b';') => Chunk::Ext { size },
            (None, b'\r') => Chunk::SizeLf { size },
            _ => return Err(FramingError),
        },
        Chunk::SizeWs { size } => match b {
            b' ' | b'\t' => Chunk::SizeWs { size },
            b';' => Chunk::Ext { size },
            b'\r' => Chunk::SizeLf { size },
            _ => return Err(FramingError),
        },
        Chunk::Ext { size } => match b {
            b'\r' => Chunk::SizeLf { size },
            b'\n' => return Err(FramingError),
            _ => Chunk::Ext { size },
        },
        Chunk::SizeLf { size } => match (b, size) {
            (b'\n', 0) => Chunk::TrailerStart,
            (b'\n', n) => Chunk::Data(n),
            _ => return Err(FramingError),
        },
        Chunk::Data(_) => return Err(FramingError),
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            _ => return Err(FramingError),
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Err(FramingError),
        },
        Chunk::TrailerStart => match b {
            b'\r' => Chunk::EndLf,
            b'\n' => return Err(FramingError),
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLine => match b {
            b'\r' => Chunk::TrailerLf,
            b'\n' => return Err(FramingError),
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLf => match b {
            b'\n' => Chunk::TrailerStart,
            _ => return Err(FramingError),
        },
        Chunk::EndLf => match b {
            b'\n' => return Ok(None),
            _ => return Err(FramingError),
        },
    }))
}

/// A client connection read through a [`Screen`]; writes pass straight through.
#[derive(Debug)]
pub struct Screened<T> {
    inner: T,
    screen: Screen,
    /// Screened bytes not yet taken by hyper, from `pos`.
    out: Vec<u8>,
    pos: usize,
    eof: bool,
}

/// `out` keeps at most this much capacity between reads (it holds a head or one read's bytes).
const OUT_KEEP: usize = 16 * 1024;

impl<T> Screened<T> {
    /// Wraps a client connection.
    pub fn new(inner: T) -> Self {
        Screened {
            inner,
            screen: Screen::default(),
            out: Vec::new(),
            pos: 0,
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Screened<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                    if this.out.capacity() > OUT_KEEP {
                        this.out = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.screen.refused() {
                // The marker head is out; hyper answers it and closes. Nothing more is read.
                return Poll::Pending;
            }
            if this.screen.passthrough() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Body bytes of known length go straight to hyper when they cannot run past the body.
            if this.screen.pass_budget() >= buf.remaining() as u64 {
                let before = buf.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let n = buf.filled().len() - before;
                if n == 0 {
                    this.eof = true;
                }
                this.screen.passed(n as u64);
                return Poll::Ready(Ok(()));
            }
            // Read into hyper's buffer, screen what came, and put back what may pass now (the rest
            // waits in `out`, or was held back): no buffer of our own per connection.
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                this.eof = true;
                continue;
            }
            let screened = this.screen.feed(&buf.filled()[before..], &mut this.out);
            buf.set_filled(before);
            screened.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Screened<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "screen_tests.rs"]
mod tests;
