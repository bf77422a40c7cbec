//! The SSE observer and rewriter (usage removal, the `energy` object): any upstream stream, cut
//! anywhere, gives the same client bytes as the stream fed whole, and never panics. The first
//! byte picks the request shape (which usage the client asked for, so which removal policy).
#![no_main]

use bytes::Bytes;
use joulegate::observe::{Endpoint, RequestMeta, RequestProgress};
use joulegate::openai::inject::plan_injection;
use joulegate::openai::observer::{ObserverConfig, StreamObserver};
use joulegate::openai::request::{parse_request, ViewConfig};
use joulegate::openai::semantics::UsageSemantics;
use libfuzzer_sys::fuzz_target;

const BODIES: [&str; 6] = [
    r#"{"model":"m","messages":[],"stream":true}"#,
    r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
    r#"{"model":"m","messages":[],"stream":true,"n":2}"#,
    r#"{"model":"m","prompt":["a","b"],"stream":true,"stream_options":{}}"#,
    r#"{"model":"m","input":"x","stream":true}"#,
    r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
];
const PATHS: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/chat/completions",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/chat/completions",
];

fn run(cfg: ObserverConfig, pieces: &[&[u8]]) -> Vec<u8> {
    let progress = RequestProgress::new(RequestMeta {
        id: 1,
        model: None,
        endpoint: Endpoint::ChatCompletions,
        key_hash: None,
        tag: None,
        stream: true,
        arrival_ns: 0,
        estimated_prompt_tokens: 1,
        choices: 1,
        max_tokens: None,
    });
    let mut observer = StreamObserver::new(cfg);
    let mut out = Vec::new();
    let mut energy = || Some(r#"{"joules":1.0}"#.to_string());
    for (i, piece) in pieces.iter().enumerate() {
        let bytes = observer.feed(
            Bytes::copy_from_slice(piece),
            i as u64,
            &progress,
            &mut energy,
        );
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(&observer.finish());
    let _ = observer.totals();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, stream)) = rest.split_first() else {
        return;
    };
    let shape = usize::from(pick) % BODIES.len();
    let semantics = UsageSemantics {
        absent_include_usage: pick & 0x40 != 0,
        force_include_usage: pick & 0x80 != 0,
    };
    let body = BODIES[shape].as_bytes();
    let view = parse_request(
        &http::Method::POST,
        PATHS[shape],
        &http::HeaderMap::new(),
        body,
        &ViewConfig::default(),
    );
    let plan = plan_injection(&view, body, semantics, true);
    let cfg = ObserverConfig::for_request(&view, &plan, pick & 0x20 != 0);
    let whole = run(cfg, &[stream]);
    let at = usize::from(cut) * stream.len() / 256;
    let split = run(cfg, &[&stream[..at], &stream[at..]]);
    assert_eq!(whole, split, "cut at {at}");
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    if stream.len() < 512 {
        assert_eq!(whole, run(cfg, &bytewise), "byte by byte");
    }
    if !StreamObserver::new(cfg).rewrites() {
        assert_eq!(
            whole, stream,
            "an observer that does not rewrite changes nothing"
        );
    }
});
