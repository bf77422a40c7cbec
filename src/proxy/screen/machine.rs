//! The screening state machine ([`Screen`]): bytes in, the bytes hyper may see out. Owns the
//! request-head states, the header-line checks that decide a [`Refusal`], the framing lines held
//! until the end of the head, and the hand-over to body framing (a fixed length or chunks). Pure,
//! no I/O.

use super::chunked::{step_chunk, Chunk};
use super::{FramingError, Refusal, MAX_HEADER_LINES, MAX_HEAD_BYTES};

/// Bytes of the request line kept to recognise it (`CONNECT `, the HTTP/2 preface `PRI * HTTP/2.0`).
const REQUEST_LINE_KEEP: usize = 16;

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
        out.extend_from_slice(crate::proxy::headers::REFUSED_HEAD.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(refusal.code().as_bytes());
        out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        self.state = State::Refused;
        self.line = Vec::new();
        self.framing = Vec::new();
    }
}
