//! The observer/rewriter on streams other than the captures' plain shapes: the Responses API's
//! events, errors, comments and odd events mid-stream, multi-line and oversized events, a stream
//! cut short, CRLF line ends, and the energy object added once.

use bytes::Bytes;
use serde_json::Value;

use super::fixture_tests::{body, cfg_as_if, normalise, progress, run, DIRS};
use super::inject::StripPolicy;
use super::observer::{ObserverConfig, StreamObserver};
use crate::observe::Endpoint;

#[test]
fn responses_stream_counts_deltas_then_takes_usage() {
    for dir in DIRS {
        let r = run(
            ObserverConfig::observe_only(Endpoint::Responses),
            &[&body(dir, "responses-stream")],
        );
        assert_eq!((r.snap.prompt_tokens, r.snap.completion_tokens), (22, 8));
        assert!(r.totals.exact && r.totals.done);
        assert_eq!(
            r.totals.finish_reasons,
            vec!["max_output_tokens".to_owned()]
        );
    }
}

#[test]
fn mid_stream_error_comments_and_odd_events() {
    let stream = b": keep-alive\r\n\r\nevent: x\r\ndata: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata: not json\n\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"x\",\"code\":500}}\n\ndata: [DONE]\n\n";
    let r = run(
        ObserverConfig::observe_only(Endpoint::ChatCompletions),
        &[stream],
    );
    assert!(r.totals.saw_error && r.totals.done);
    assert_eq!(r.totals.parse_errors, 1);
    assert_eq!(r.snap.completion_tokens, 1, "multi-line data is joined");
    assert_eq!(r.out, stream.to_vec());
}

#[test]
fn multi_line_data_is_rewritten_as_one_line() {
    let stream = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\ndata: \"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
    let mut cfg = ObserverConfig::observe_only(Endpoint::ChatCompletions);
    cfg.strip = StripPolicy::PerChunkUsage;
    let r = run(cfg, &[stream]);
    assert_eq!(
        String::from_utf8(r.out).unwrap(),
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
    );
}

#[test]
fn oversized_events_are_forwarded_raw_in_both_modes() {
    let big = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}}}}\n\ndata: [DONE]\n\n",
        "x".repeat(300)
    );
    for strip in [StripPolicy::Nothing, StripPolicy::AllUsage] {
        let mut cfg = ObserverConfig::observe_only(Endpoint::ChatCompletions);
        cfg.strip = strip;
        cfg.max_event_bytes = 64;
        let parts: Vec<&[u8]> = big.as_bytes().chunks(10).collect();
        let r = run(cfg, &parts);
        assert_eq!(r.out, big.as_bytes());
        assert_eq!(r.totals.oversized_events, 1);
        assert!(r.totals.done);
    }
}

#[test]
fn stream_cut_short_forwards_its_tail_and_holds_nothing_back() {
    let b = body("vllm-0.32", "chat-stream-usage-continuous");
    let cut = &b[..b.len() - 200];
    let mut cfg = cfg_as_if("vllm-0.32", "chat-stream-plain", true, false);
    cfg.strip = StripPolicy::AllUsage;
    let r = run(cfg, &[cut]);
    assert!(!r.totals.done && !r.totals.exact);
    // Everything received is delivered (usage removed from complete chunks, the tail raw).
    assert!(r.out.ends_with(&cut[cut.len() - 50..]));
}

#[test]
fn crlf_streams_are_rewritten_the_same_way() {
    let crlf = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap().replace('\n', "\r\n");
    let up = crlf(&body("vllm-0.32", "chat-stream-usage-continuous"));
    let plain = crlf(&body("vllm-0.32", "chat-stream-plain"));
    let cfg = cfg_as_if("vllm-0.32", "chat-stream-plain", true, true);
    let whole = run(cfg, &[up.as_bytes()]);
    assert_eq!(normalise(&whole.out), normalise(plain.as_bytes()));
    let ones: Vec<&[u8]> = up.as_bytes().chunks(1).collect();
    assert_eq!(run(cfg, &ones), whole);
}

#[test]
fn energy_is_added_once_and_only_when_given() {
    let b = body("vllm-0.32", "chat-stream-usage");
    let cfg = cfg_as_if("vllm-0.32", "chat-stream-usage", false, true);
    assert!(cfg.add_energy && cfg.strip == StripPolicy::Nothing);
    let p = progress(Endpoint::ChatCompletions);
    let mut obs = StreamObserver::new(cfg);
    let mut calls = 0;
    let mut out = obs
        .feed(Bytes::from(b.clone()), 5, &p, &mut || {
            calls += 1;
            None
        })
        .to_vec();
    out.extend_from_slice(&obs.finish());
    assert_eq!((calls, out), (1, b.clone()));
    // With energy: the final usage chunk ends with the object, as valid JSON.
    let r = run(cfg, &[&b]);
    let last = std::str::from_utf8(&r.out)
        .unwrap()
        .split("\n\n")
        .filter(|e| e.contains("\"choices\":[]"))
        .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
        .next()
        .unwrap();
    let v: serde_json::Map<String, Value> = serde_json::from_str(&last).unwrap();
    assert_eq!(v.keys().next_back().map(String::as_str), Some("energy"));
    assert_eq!(v["energy"]["joules"], 1.5);
    // A client that did not ask for usage never gets energy in the stream.
    let cfg = cfg_as_if("vllm-0.32", "chat-stream-plain", false, true);
    assert!(!cfg.add_energy);
}
