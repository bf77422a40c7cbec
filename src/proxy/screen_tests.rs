//! Unit tests of the request-head screen: what passes unchanged (at every split), what is refused,
//! and that body framing finds the next pipelined head.

use super::*;

/// Feeds `input` whole and cut at every byte offset; all cuts must give the same output.
fn screen(input: &[u8]) -> Result<Vec<u8>, FramingError> {
    let mut whole = Vec::new();
    let expected = Screen::default().feed(input, &mut whole).map(|()| whole);
    for at in 0..=input.len() {
        let mut s = Screen::default();
        let mut out = Vec::new();
        let got = s
            .feed(&input[..at], &mut out)
            .and_then(|()| s.feed(&input[at..], &mut out))
            .map(|()| out);
        assert_eq!(got, expected, "cut at {at}");
    }
    expected
}

fn refused_with(input: &[u8]) -> String {
    let out = screen(input).expect("no framing error");
    let text = String::from_utf8_lossy(&out).to_string();
    let marker = format!("{}: ", crate::proxy::headers::REFUSED_HEAD.as_str());
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("not refused: {text:?}"));
    assert!(
        text.ends_with("\r\nconnection: close\r\n\r\n"),
        "refusal ends the head: {text:?}"
    );
    text[at + marker.len()..]
        .split("\r\n")
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn well_formed_requests_pass_unchanged_with_pipelining() {
    let pipelined: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd\
GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n\
POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n4;ext=1\r\nwxyz\r\n0\r\nT: 1\r\n\r\n\
GET /last HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = screen(pipelined).unwrap();
    // The framing fields move to the end of their head; everything else is byte for byte.
    let expected: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd\
GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n\
POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwxyz\r\n0\r\nT: 1\r\n\r\n\
GET /last HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(expected)
    );
}

#[test]
fn a_body_that_looks_like_a_smuggled_head_is_body() {
    let body = b"GET /admin HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut input =
        format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    input.extend_from_slice(body);
    assert_eq!(screen(&input).unwrap(), input);
}

#[test]
fn ambiguous_framing_is_refused() {
    let cases: &[(&[u8], Refusal)] = &[
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refusal::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            Refusal::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding:  chunked\r\n\r\n",
            Refusal::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            Refusal::DuplicateLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\ncontent-length: 5\r\n\r\n",
            Refusal::DuplicateLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
            Refusal::BadLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
            Refusal::BadLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \x0bchunked\r\n\r\n",
            Refusal::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refusal::DuplicateTransferEncoding,
        ),
        (b"GET / HTTP/1.1\nHost: x\n\n", Refusal::BareLf),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", Refusal::BareLf),
        (b"GET / HTTP/1.1\r\nHost: x\rY: 1\r\n\r\n", Refusal::BareCr),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            Refusal::BadHeaderName,
        ),
        (
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            Refusal::BadHeaderName,
        ),
        (
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            Refusal::BadHeaderName,
        ),
        (
            b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",
            Refusal::ObsFold,
        ),
    ];
    for (input, refusal) in cases {
        assert_eq!(
            refused_with(input),
            refusal.code(),
            "{}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(Refusal::from_code(refusal.code().as_bytes()), *refusal);
    }
}

#[test]
fn nothing_after_a_refusal_is_passed_on() {
    let input = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    let mut s = Screen::default();
    let mut out = Vec::new();
    s.feed(input, &mut out).unwrap();
    assert!(s.refused());
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("smuggled"), "{text}");
    // The framing lines were held back, so hyper never sees them with the marker.
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
}

#[test]
fn oversized_heads_and_too_many_fields_are_431() {
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(vec![b'a'; MAX_HEAD_BYTES]);
    big.extend_from_slice(b"\r\n\r\n");
    let mut s = Screen::default();
    let mut out = Vec::new();
    s.feed(&big, &mut out).unwrap();
    assert!(s.refused());
    assert!(out.len() < MAX_HEAD_BYTES, "the held line is dropped");
    assert!(String::from_utf8_lossy(&out).contains("too-large"));
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADER_LINES {
        many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(refused_with(&many), Refusal::TooManyFields.code());
    assert!(Refusal::TooManyFields.too_large() && !Refusal::BareLf.too_large());
}

/// Feeds `input` whole, cut at a few offsets around `MAX_HEAD_BYTES` and byte by byte; all must
/// agree (the screen takes runs of line bytes at once, and the bound must fall on the same byte).
fn screen_near_bound(input: &[u8]) -> Vec<u8> {
    let mut whole = Vec::new();
    Screen::default().feed(input, &mut whole).unwrap();
    let cuts = [
        1,
        17,
        MAX_HEAD_BYTES - 1,
        MAX_HEAD_BYTES,
        MAX_HEAD_BYTES + 1,
    ];
    for at in cuts.into_iter().filter(|&at| at <= input.len()) {
        let mut s = Screen::default();
        let mut out = Vec::new();
        s.feed(&input[..at], &mut out).unwrap();
        s.feed(&input[at..], &mut out).unwrap();
        assert_eq!(out, whole, "cut at {at}");
    }
    let mut s = Screen::default();
    let mut out = Vec::new();
    for b in input.chunks(1) {
        s.feed(b, &mut out).unwrap();
    }
    assert_eq!(out, whole, "byte by byte");
    whole
}

#[test]
fn the_head_bound_falls_on_the_same_byte_in_request_and_header_lines() {
    let marker = format!(
        "{}: {}\r\nconnection: close\r\n\r\n",
        crate::proxy::headers::REFUSED_HEAD.as_str(),
        Refusal::TooLarge.code()
    );
    let path = "p".repeat(100);
    let line = format!("GET /{path} HTTP/1.1\r\n");
    let same = |out: Vec<u8>, expected: Vec<u8>, what: &str| {
        assert!(
            out == expected,
            "{what}: {} bytes out, {} expected",
            out.len(),
            expected.len()
        );
    };
    // A head of exactly MAX_HEAD_BYTES passes unchanged; one byte more is refused at its last
    // byte, after the complete header line went out.
    for extra in [0, 1] {
        let value = "v".repeat(MAX_HEAD_BYTES + extra - line.len() - "X: \r\n\r\n".len());
        let field = format!("X: {value}\r\n");
        let head = format!("{line}{field}\r\n").into_bytes();
        assert_eq!(head.len(), MAX_HEAD_BYTES + extra);
        let out = screen_near_bound(&head);
        if extra == 0 {
            same(out, head, "at the bound");
        } else {
            same(
                out,
                format!("{line}{field}{marker}").into_bytes(),
                "one past",
            );
        }
    }
    // A header line crossing the bound is held and dropped.
    let head = format!("{line}X: {}\r\n\r\n", "v".repeat(MAX_HEAD_BYTES)).into_bytes();
    same(
        screen_near_bound(&head),
        format!("{line}{marker}").into_bytes(),
        "long field",
    );
    // A request line past the bound: its first MAX_HEAD_BYTES bytes went out, then the marker.
    let mut long = b"GET /".to_vec();
    long.resize(MAX_HEAD_BYTES + 10, b'p');
    long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let mut expected = long[..MAX_HEAD_BYTES].to_vec();
    expected.extend_from_slice(b"\r\n");
    expected.extend_from_slice(marker.as_bytes());
    same(screen_near_bound(&long), expected, "long request line");
}

#[test]
fn http2_preface_and_tunnels_pass_through() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\n\n\n";
    assert_eq!(screen(preface).unwrap(), preface);
    let tunnel = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n\x16\x03\x01\n\n";
    assert_eq!(screen(tunnel).unwrap(), tunnel);
}

#[test]
fn broken_chunked_framing_is_an_error() {
    for body in [
        &b"zz\r\n"[..],
        b"4\nabcd\r\n0\r\n\r\n",
        b"4\r\nabcdX",
        b"11111111111111111\r\n",
    ] {
        let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(body);
        assert_eq!(screen(&input), Err(FramingError), "{body:?}");
    }
}

#[test]
fn bytes_passed_directly_advance_the_body() {
    let mut s = Screen::default();
    let mut out = Vec::new();
    s.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab", &mut out)
        .unwrap();
    assert_eq!(s.pass_budget(), 8);
    s.passed(8);
    assert_eq!(s.pass_budget(), 0);
    out.clear();
    // The next head is screened again.
    s.feed(b"GET / HTTP/1.1\nX: 1\r\n\r\n", &mut out).unwrap();
    assert!(s.refused());
    let mut s = Screen::default();
    s.feed(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        &mut out,
    )
    .unwrap();
    assert_eq!(s.pass_budget(), 3);
    s.passed(3);
    out.clear();
    s.feed(b"\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", &mut out)
        .unwrap();
    assert_eq!(out, b"\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert!(!s.refused());
}

#[test]
fn leading_empty_lines_and_a_slow_request_line_pass_at_once() {
    let mut s = Screen::default();
    let mut out = Vec::new();
    s.feed(b"\r\nGET /v1/mo", &mut out).unwrap();
    // hyper sees the start of the request line at once (its header timeout, HTTP/2 detection).
    assert_eq!(out, b"\r\nGET /v1/mo");
    s.feed(b"dels HTTP/1.1\r\nHost: x", &mut out).unwrap();
    assert_eq!(out, b"\r\nGET /v1/models HTTP/1.1\r\n");
    s.feed(b"\r\n\r\n", &mut out).unwrap();
    assert_eq!(out, b"\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
}

/// The wrapper over a socket: whatever the read sizes, hyper reads the screened bytes in order,
/// a body of known length included (read straight into its buffer), then end of file.
#[tokio::test]
async fn the_wrapper_delivers_the_screened_stream_at_any_read_size() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = vec![b'x'; 40_000];
    let mut input =
        format!("POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    input.extend_from_slice(&body);
    input.extend_from_slice(
        b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
    );
    let expected = screen(&input).unwrap();
    for read_size in [1, 7, 4096, 65536] {
        let (mut client, server) = tokio::io::duplex(1024);
        let bytes = input.clone();
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(333) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut screened = Screened::new(server);
        let mut got = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = screened.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), expected.len(), "read size {read_size}");
        assert!(got == expected, "read size {read_size}");
    }
}

#[tokio::test]
async fn the_wrapper_stops_reading_after_a_refusal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(1024);
    client
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut screened = Screened::new(server);
    let mut buf = vec![0u8; 4096];
    let n = screened.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        text.ends_with("length-and-chunked\r\nconnection: close\r\n\r\n"),
        "{text}"
    );
    // Nothing more is ever read: the next read stays pending.
    let more = tokio::time::timeout(std::time::Duration::ZERO, screened.read(&mut buf)).await;
    assert!(more.is_err(), "pending after a refusal");
}
