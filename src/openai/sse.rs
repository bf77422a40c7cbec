//! Incremental Server-Sent Events framing: splitting an arbitrarily chunked byte stream into complete
//! raw events (check -> parse -> advance, any split, LF, CRLF or CR line ends) and reading the fields
//! of one complete event. Owns only framing: what the events mean is [`super::observer`]'s business.
//! Memory is bounded: an event larger than the configured limit is handed on raw, piece by piece, and
//! never parsed.

/// Default bound on one buffered event (logprob-heavy chunks are a few KiB; 1 MiB is generous).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Buffers that grew past this for one large event are released afterwards, so that a long-lived
/// stream keeps its steady-state footprint small (the budget is a few KiB per in-flight request).
pub const KEEP_CAPACITY: usize = 16 << 10;

/// What the splitter hands on.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One complete event, raw, including its terminating blank line.
    Event(&'a [u8]),
    /// Bytes of an event too large to buffer: forward them as they are; they are not parsed.
    Oversized(&'a [u8]),
}

/// Incremental event splitter: one per response.
#[derive(Debug)]
pub struct Splitter {
    tail: Vec<u8>,
    line_len: usize,
    after_cr: bool,
    oversized: bool,
    max_event: usize,
    oversized_events: u64,
}

impl Splitter {
    /// A splitter buffering at most `max_event` bytes of one event.
    pub fn new(max_event: usize) -> Splitter {
        Splitter {
            tail: Vec::new(),
            line_len: 0,
            after_cr: false,
            oversized: false,
            max_event: max_event.max(16),
            oversized_events: 0,
        }
    }

    /// Bytes of the incomplete event held so far.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Events that exceeded the bound (forwarded raw, not parsed).
    pub fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Feeds one chunk, calling `on` for every complete event and oversized piece, in stream order.
    pub fn feed(&mut self, chunk: &[u8], on: &mut dyn FnMut(Piece<'_>)) {
        let mut start = 0; // first byte of the current event within `chunk`
        let mut i = 0;
        while i < chunk.len() {
            if self.after_cr {
                self.after_cr = false;
                if chunk.get(i) == Some(&b'\n') {
                    // The LF of a CRLF whose CR ended the previous chunk: already counted.
                    i += 1;
                    continue;
                }
            }
            let rest = chunk.get(i..).unwrap_or(&[]);
            let Some(k) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.line_len += rest.len();
                break;
            };
            let pos = i + k;
            let blank = self.line_len == 0 && k == 0;
            self.line_len = 0;
            i = pos + 1;
            if chunk.get(pos) == Some(&b'\r') {
                if chunk.get(i) == Some(&b'\n') {
                    i += 1;
                } else if i == chunk.len() {
                    self.after_cr = true;
                }
            }
            if blank {
                let piece = chunk.get(start..i).unwrap_or(&[]);
                if self.oversized {
                    self.oversized = false;
                    on(Piece::Oversized(piece));
                } else if self.tail.is_empty() {
                    on(Piece::Event(piece));
                } else {
                    self.tail.extend_from_slice(piece);
                    on(Piece::Event(&self.tail));
                    self.tail.clear();
                    if self.tail.capacity() > KEEP_CAPACITY {
                        self.tail = Vec::new();
                    }
                }
                start = i;
            }
        }
        let rest = chunk.get(start..).unwrap_or(&[]);
        if rest.is_empty() {
            return;
        }
        if self.oversized {
            on(Piece::Oversized(rest));
        } else if self.tail.len() + rest.len() > self.max_event {
            self.oversized = true;
            self.oversized_events += 1;
            if !self.tail.is_empty() {
                on(Piece::Oversized(&self.tail));
            }
            self.tail = Vec::new();
            on(Piece::Oversized(rest));
        } else {
            self.tail.extend_from_slice(rest);
        }
    }

    /// Ends the stream: the bytes of an incomplete last event (which SSE clients discard unparsed).
    pub fn finish(&mut self) -> Vec<u8> {
        self.line_len = 0;
        self.after_cr = false;
        self.oversized = false;
        std::mem::take(&mut self.tail)
    }
}

/// One line of an event, as byte offsets into the raw event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// First byte of the line.
    pub start: usize,
    /// Just past the line's content (its terminator excluded).
    pub end: usize,
    /// Just past the terminator.
    pub next: usize,
    /// What the line is.
    pub kind: LineKind,
    /// First byte of the field value (after `:` and one optional space); `end` when there is none.
    pub value_start: usize,
}

/// SSE line kinds the proxy cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// `data:`
    Data,
    /// `event:`
    Event,
    /// `: comment`
    Comment,
    /// The blank line ending the event.
    Blank,
    /// `id:`, `retry:` or an unknown field.
    Other,
}

/// Splits a complete raw event into lines (appended to `out`, which is cleared first).
pub fn lines(raw: &[u8], out: &mut Vec<Line>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let rest = raw.get(i..).unwrap_or(&[]);
        let (end, next) = match memchr::memchr2(b'\n', b'\r', rest) {
            Some(k) => {
                let end = i + k;
                let crlf = raw.get(end) == Some(&b'\r') && raw.get(end + 1) == Some(&b'\n');
                (end, if crlf { end + 2 } else { end + 1 })
            }
            None => (raw.len(), raw.len()),
        };
        let content = raw.get(i..end).unwrap_or(&[]);
        let (kind, value_start) = if content.is_empty() {
            (LineKind::Blank, end)
        } else if content.first() == Some(&b':') {
            (LineKind::Comment, end)
        } else {
            let colon = memchr::memchr(b':', content);
            let name = &content[..colon.unwrap_or(content.len())];
            let mut vs = colon.map_or(end, |c| i + c + 1);
            if raw.get(vs) == Some(&b' ') && vs < end {
                vs += 1;
            }
            let kind = match name {
                b"data" => LineKind::Data,
                b"event" => LineKind::Event,
                _ => LineKind::Other,
            };
            (kind, vs)
        };
        out.push(Line {
            start: i,
            end,
            next,
            kind,
            value_start,
        });
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(parts: &[&[u8]], max: usize) -> (Vec<(bool, Vec<u8>)>, Vec<u8>) {
        let mut s = Splitter::new(max);
        let mut got = Vec::new();
        for p in parts {
            s.feed(p, &mut |piece| match piece {
                Piece::Event(e) => got.push((true, e.to_vec())),
                Piece::Oversized(e) => got.push((false, e.to_vec())),
            });
        }
        (got, s.finish())
    }

    #[test]
    fn splits_lf_crlf_and_cr_at_any_boundary() {
        let stream = b": ping\r\n\r\ndata: a\n\ndata: b\r\rdata: c\r\n\r\ntail";
        let (whole, rest) = split_all(&[stream], 1024);
        let events: Vec<_> = whole.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(
            events,
            vec![
                b": ping\r\n\r\n".to_vec(),
                b"data: a\n\n".to_vec(),
                b"data: b\r\r".to_vec(),
                b"data: c\r\n\r\n".to_vec()
            ]
        );
        assert_eq!(rest, b"tail");
        for cut in 0..stream.len() {
            let (got, rest2) = split_all(&[&stream[..cut], &stream[cut..]], 1024);
            let joined: Vec<u8> = got.iter().flat_map(|(_, e)| e.clone()).collect();
            let mut all = joined.clone();
            all.extend_from_slice(&rest2);
            assert_eq!(all, stream.to_vec(), "cut {cut}");
        }
    }

    #[test]
    fn oversized_event_is_forwarded_raw_and_counted() {
        let big = format!("data: {}\n\ndata: x\n\n", "y".repeat(100));
        let bytes = big.as_bytes();
        let parts: Vec<&[u8]> = bytes.chunks(7).collect();
        let (got, rest) = split_all(&parts, 32);
        assert!(rest.is_empty());
        let raw: Vec<u8> = got.iter().flat_map(|(_, e)| e.clone()).collect();
        assert_eq!(raw, bytes.to_vec());
        assert_eq!(got.last(), Some(&(true, b"data: x\n\n".to_vec())));
        assert!(got.iter().any(|(ok, _)| !ok));
    }

    #[test]
    fn lines_of_an_event() {
        let raw = b"event: e\r\ndata:x\ndata: y\n: c\nid\n\n";
        let mut ls = Vec::new();
        lines(raw, &mut ls);
        let kinds: Vec<_> = ls.iter().map(|l| l.kind).collect();
        use LineKind::*;
        assert_eq!(kinds, vec![Event, Data, Data, Comment, Other, Blank]);
        assert_eq!(&raw[ls[1].value_start..ls[1].end], b"x");
        assert_eq!(&raw[ls[2].value_start..ls[2].end], b"y");
        assert_eq!(&raw[ls[0].value_start..ls[0].end], b"e");
    }
}
