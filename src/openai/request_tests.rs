//! Tests of the request view and of the injection edit: odd inputs never fail, edits keep every
//! other byte.

use proptest::prelude::*;
use serde_json::Value;

use super::fixture_tests::{request, DIRS};
use super::inject::{edit_body, plan_injection, StripPolicy, INJECTED_OPTIONS};
use super::request::{parse_request, RequestView, ViewConfig, MAX_LABEL_BYTES};
use super::semantics::UsageSemantics;
use crate::observe::Endpoint;

fn view(path: &str, body: &[u8]) -> RequestView {
    parse_request(
        &http::Method::POST,
        path,
        &http::HeaderMap::new(),
        body,
        &ViewConfig::default(),
    )
}

const CHAT: &str = "/v1/chat/completions";

#[test]
fn fixture_requests_read_as_expected() {
    let (path, body) = request(DIRS[0], "chat-stream-n2-usage-continuous");
    let v = view(&path, &body);
    assert!(v.accountable && v.stream);
    assert_eq!(v.endpoint, Endpoint::ChatCompletions);
    assert_eq!(v.model.as_deref(), Some("tiny"));
    assert_eq!((v.n, v.prompts, v.max_tokens), (2, 1, Some(8)));
    assert_eq!(v.stream_options.include_usage, Some(true));
    assert_eq!(v.stream_options.continuous_usage_stats, Some(true));
    // "say something short": 19 bytes / 4 per token.
    assert_eq!(v.estimated_prompt_tokens, 5);

    let (path, body) = request(DIRS[0], "completions-stream-prompts2-usage");
    let v = view(&path, &body);
    assert_eq!(
        (v.endpoint, v.prompts, v.expected_choices()),
        (Endpoint::Completions, 2, 2)
    );
    assert_eq!(v.estimated_prompt_tokens, 6); // 7 + 15 bytes

    let (path, body) = request(DIRS[0], "responses-stream");
    let v = view(&path, &body);
    assert_eq!(
        (v.endpoint, v.max_output_tokens, v.max_output()),
        (Endpoint::Responses, Some(8), Some(8))
    );

    let (path, body) = request(DIRS[0], "error-bad-json");
    assert!(!view(&path, &body).accountable);
}

#[test]
fn odd_bodies_give_non_accountable_views() {
    for body in [
        &b""[..],
        b"null",
        b"[1,2]",
        b"\"str\"",
        b"42",
        b"{not json",
        b"{\"model\":\"a\"} trailing",
        b"\xff\xfe",
    ] {
        let v = view(CHAT, body);
        assert!(!v.accountable, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(v.endpoint, Endpoint::ChatCompletions);
    }
    assert!(!view("/v1/models", b"{}").accountable);
    let get = parse_request(
        &http::Method::GET,
        CHAT,
        &http::HeaderMap::new(),
        b"{}",
        &ViewConfig::default(),
    );
    assert!(!get.accountable);
    let mut gz = http::HeaderMap::new();
    gz.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
    assert!(
        !parse_request(
            &http::Method::POST,
            CHAT,
            &gz,
            b"{}",
            &ViewConfig::default()
        )
        .accountable
    );
}

#[test]
fn wrong_types_and_huge_numbers_are_ignored_field_by_field() {
    let v = view(
        CHAT,
        br#"{"model":5,"stream":"yes","n":1e300,"max_tokens":-3,"max_completion_tokens":12.0,
            "user":{"a":1},"stream_options":[1],"messages":"hi","extra":[{"deep":[[[]]]}]}"#,
    );
    assert!(v.accountable);
    assert_eq!(v.model, None);
    assert!(!v.stream);
    assert_eq!(v.n, 1);
    assert_eq!(v.max_tokens, None);
    assert_eq!(v.max_completion_tokens, Some(12));
    assert_eq!(v.user, None);
    assert!(v.stream_options.key_present && !v.stream_options.is_object);
    let v = view(
        CHAT,
        br#"{"n":18446744073709551615,"max_tokens":99999999999999999999999}"#,
    );
    assert_eq!((v.n, v.max_tokens), (u32::MAX, None));
    // Beyond f64 range serde_json refuses the document: the view is opaque, nothing fails.
    let v = view(CHAT, br#"{"stream":true,"n":1e400}"#);
    assert!(!v.accountable && v.endpoint == Endpoint::ChatCompletions);
}

#[test]
fn labels_are_bounded_and_unicode_safe() {
    let long = "é".repeat(400);
    let body = serde_json::to_vec(&serde_json::json!({"model": long, "user": "ü\u{0}x"})).unwrap();
    let v = view(CHAT, &body);
    let m = v.model.unwrap();
    assert!(m.len() <= MAX_LABEL_BYTES && m.chars().all(|c| c == 'é'));
    assert_eq!(v.user.as_deref(), Some("ü\u{0}x"));
}

#[test]
fn prompt_estimates_cover_the_shapes() {
    // Chat content parts; roles and image URLs are not text.
    let v = view(
        CHAT,
        br#"{"messages":[{"role":"system","content":"12345678"},
            {"role":"user","content":[{"type":"text","text":"abcd"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}]}]}"#,
    );
    assert_eq!(v.estimated_prompt_tokens, 3);
    // Token-id prompts count exactly; a list of lists is several prompts.
    let v = view("/v1/completions", br#"{"prompt":[1,2,3,4,5]}"#);
    assert_eq!((v.estimated_prompt_tokens, v.prompts), (5, 1));
    let v = view("/v1/completions", br#"{"prompt":[[1,2],[3]],"n":3}"#);
    assert_eq!(
        (v.estimated_prompt_tokens, v.prompts, v.expected_choices()),
        (3, 2, 6)
    );
    let v = view("/v1/completions", br#"{"prompt":[[7]]}"#);
    assert_eq!(v.prompts, 1);
    let v = view("/v1/embeddings", br#"{"input":["abcd","efgh"]}"#);
    assert_eq!(v.estimated_prompt_tokens, 2);
    let v = view(
        "/v1/responses",
        br#"{"instructions":"abcd","input":[{"role":"user","content":[{"type":"input_text","text":"efgh"}]}]}"#,
    );
    assert_eq!(v.estimated_prompt_tokens, 2);
    let cfg = ViewConfig {
        bytes_per_token: 2.0,
    };
    let v = parse_request(
        &http::Method::POST,
        CHAT,
        &http::HeaderMap::new(),
        br#"{"messages":[{"content":"abcd"}]}"#,
        &cfg,
    );
    assert_eq!(v.estimated_prompt_tokens, 2);
    let bad = ViewConfig {
        bytes_per_token: f64::NAN,
    };
    let v = parse_request(
        &http::Method::POST,
        CHAT,
        &http::HeaderMap::new(),
        br#"{"messages":[{"content":"abcd"}]}"#,
        &bad,
    );
    assert_eq!(v.estimated_prompt_tokens, 1);
}

fn injected(body: &str) -> (String, super::inject::InjectionPlan) {
    let v = view(CHAT, body.as_bytes());
    let plan = plan_injection(&v, body.as_bytes(), UsageSemantics::default(), true);
    let out = plan
        .body
        .as_ref()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .unwrap_or_else(|| body.to_owned());
    (out, plan)
}

#[test]
fn injection_edits_only_stream_options() {
    let (b, p) = injected(r#"{"model":"m", "stream" : true , "messages":[]}"#);
    assert_eq!(
        b,
        format!(
            r#"{{"model":"m", "stream" : true , "messages":[],"stream_options":{INJECTED_OPTIONS}}}"#
        )
    );
    assert_eq!(
        (p.injected, p.client_wants_usage, p.strip),
        (true, false, StripPolicy::AllUsage)
    );

    let (b, p) = injected(r#"{"stream":true,"stream_options":null,"n":2}"#);
    assert_eq!(
        b,
        format!(r#"{{"stream":true,"stream_options":{INJECTED_OPTIONS},"n":2}}"#)
    );
    assert_eq!(p.strip, StripPolicy::AllUsage);

    let (b, p) = injected(r#"{"stream":true,"stream_options":{"include_usage":true,"x":[1]} }"#);
    assert_eq!(
        b,
        r#"{"stream":true,"stream_options":{"x":[1],"include_usage":true,"continuous_usage_stats":true} }"#
    );
    assert!(p.client_wants_usage && !p.client_wants_continuous);
    assert_eq!(p.strip, StripPolicy::PerChunkUsage);

    let (b, p) = injected(r#"{"stream":true,"stream_options":{}}"#);
    assert_eq!(
        b,
        format!(r#"{{"stream":true,"stream_options":{INJECTED_OPTIONS}}}"#)
    );
    assert!(
        !p.client_wants_usage,
        "vLLM 0.32: absent include_usage is false"
    );
}

#[test]
fn no_injection_where_it_would_change_behaviour() {
    for body in [
        r#"{"stream":false,"messages":[]}"#,
        r#"{"messages":[]}"#,
        r#"{"stream":true,"stream_options":5}"#,
        r#"{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
        r#"{"stream":true"#,
    ] {
        let (b, p) = injected(body);
        assert!(!p.injected && p.body.is_none(), "{body}");
        assert_eq!(b, body);
        assert_eq!(p.strip, StripPolicy::Nothing);
    }
    let body = br#"{"stream":true}"#;
    let v = view("/v1/responses", body);
    assert!(!plan_injection(&v, body, UsageSemantics::default(), true).injected);
    let v = view(CHAT, body);
    assert!(!plan_injection(&v, body, UsageSemantics::default(), false).injected);
    // The client's continuous request is honoured as is and wants usage.
    let body =
        br#"{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#;
    let p = plan_injection(&view(CHAT, body), body, UsageSemantics::default(), true);
    assert!(p.client_wants_usage && p.client_wants_continuous);
}

#[test]
fn older_servers_read_empty_options_as_usage() {
    let body = br#"{"stream":true,"stream_options":{}}"#;
    let old = UsageSemantics::from_vllm_version("0.6.0");
    let p = plan_injection(&view(CHAT, body), body, old, true);
    assert!(p.injected && p.client_wants_usage);
    assert_eq!(p.strip, StripPolicy::PerChunkUsage);
}

#[test]
fn injection_keeps_every_other_byte_of_every_fixture_request() {
    for dir in DIRS {
        let index: Value = serde_json::from_slice(
            &std::fs::read(format!("tests/fixtures/{dir}/index.json")).unwrap(),
        )
        .unwrap();
        for name in index.as_object().unwrap().keys() {
            let (path, body) = request(dir, name);
            let v = view(&path, &body);
            let p = plan_injection(&v, &body, UsageSemantics::default(), true);
            let Some(new) = p.body else { continue };
            let mut orig: serde_json::Map<String, Value> = serde_json::from_slice(&body).unwrap();
            let mut edited: serde_json::Map<String, Value> = serde_json::from_slice(&new).unwrap();
            assert_eq!(
                edited.shift_remove("stream_options").unwrap()["continuous_usage_stats"],
                true
            );
            orig.shift_remove("stream_options");
            assert_eq!(edited, orig, "{dir}/{name}");
            // Byte-wise: the edit is one contiguous region.
            let prefix = body
                .iter()
                .zip(new.iter())
                .take_while(|(a, b)| a == b)
                .count();
            let suffix = body
                .iter()
                .rev()
                .zip(new.iter().rev())
                .take_while(|(a, b)| a == b)
                .count();
            let changed = &new[prefix..new.len() - suffix.min(new.len() - prefix)];
            assert!(changed.len() <= INJECTED_OPTIONS.len() + 20, "{dir}/{name}");
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let v = view(CHAT, &body);
        let _ = plan_injection(&v, &body, UsageSemantics::default(), true);
        let _ = edit_body(&body);
    }

    #[test]
    fn arbitrary_json_objects_inject_validly(model in "\\PC{0,20}", n in any::<u64>(), stream in any::<bool>(),
                                             opts in 0u8..4, ws in "[ \t\n]{0,3}") {
        let opts_text = match opts {
            0 => String::new(),
            1 => format!(",{ws}\"stream_options\"{ws}:{ws}null"),
            2 => format!(",\"stream_options\":{{{ws}}}"),
            _ => format!(",\"stream_options\":{{\"include_usage\":{stream}{ws}}}"),
        };
        let body = format!("{{{ws}\"model\":{},\"n\":{n},\"stream\":{stream}{opts_text}{ws}}}",
                           serde_json::to_string(&model).unwrap());
        let v = view(CHAT, body.as_bytes());
        prop_assert!(v.accountable);
        let p = plan_injection(&v, body.as_bytes(), UsageSemantics::default(), true);
        prop_assert_eq!(p.injected, stream);
        if let Some(new) = p.body {
            let parsed: Value = serde_json::from_slice(&new).unwrap();
            prop_assert_eq!(&parsed["stream_options"]["include_usage"], &Value::Bool(true));
            prop_assert_eq!(&parsed["model"], &Value::String(model.clone()));
        }
    }
}
