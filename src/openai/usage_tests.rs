//! Tests of the usage views, the body accumulator and the one-pass usage and metrics read.

use super::*;

/// The one-pass read equals the two reads it replaces, on every captured body and on bodies
/// built to tell them apart (duplicates, escapes, arrays, depth, broken JSON).
#[test]
fn one_pass_equals_the_two_reads() {
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for dir in std::fs::read_dir(root).unwrap().flatten() {
        if let Ok(files) = std::fs::read_dir(dir.path()) {
            for f in files.flatten() {
                bodies.push(std::fs::read(f.path()).unwrap());
            }
        }
    }
    assert!(bodies.len() > 20, "fixtures found: {}", bodies.len());
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for text in [
        r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#.to_string(),
        r#"{"usage":{"prompt_tokens":3},"metrics":null}"#.to_string(),
        r#"{"usage":{"completion_tokens":3}}"#.to_string(),
        r#"{"usage":null,"metrics":{"queue_time_ms":1.5,"time_to_first_token_ms":2}}"#.to_string(),
        r#"{"metrics":{"queue_time_ms":1},"metrics":{"queue_time_ms":2}}"#.to_string(),
        r#"{"metrics":7,"usage":{"prompt_tokens":1,"completion_tokens":1}}"#.to_string(),
        r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#.to_string(),
        r#"{"us\u0061ge":{"prompt_tokens":5,"completion_tokens":6},"m\u0065trics":null}"#
            .to_string(),
        r#"{"usage":{"prompt_tokens":-1}}"#.to_string(),
        r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#.to_string(),
        r#"{"usage":"many","metrics":{"generation_time_ms":3}}"#.to_string(),
        r#"[{"usage":{"prompt_tokens":1,"completion_tokens":2}}]"#.to_string(),
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}} trailing"#.to_string(),
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"x":tru}"#.to_string(),
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"metrics":{"queue_time_ms":1}"#
            .to_string(),
        format!(
            r#"{{"metrics":{},"usage":{{"prompt_tokens":1}}}}"#,
            deep(126)
        ),
        format!(
            r#"{{"metrics":{},"usage":{{"prompt_tokens":1}}}}"#,
            deep(127)
        ),
        format!(r#"{{"x":{},"metrics":null}}"#, deep(200)),
        format!(r#"{{"x":{},"metrics":null}}"#, deep(300)),
        String::new(),
        "null".to_string(),
    ] {
        bodies.push(text.into_bytes());
    }
    for body in &bodies {
        for endpoint in [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
            Endpoint::Responses,
            Endpoint::Other,
        ] {
            assert_eq!(
                usage_and_metrics(endpoint, body),
                (parse_usage(endpoint, body), body_metrics(body)),
                "{endpoint:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

/// The bracket bound of the one-pass read counts `{` and `[` anywhere, up to and past the bound.
#[test]
fn depth_bound_counts_opening_brackets() {
    let max = crate::openai::json_scan::MAX_DEPTH;
    let body = |braces: usize, squares: usize| {
        format!(
            "{}{}\"x\"]{}",
            "{".repeat(braces),
            "[".repeat(squares),
            "}".repeat(braces)
        )
    };
    assert!(within_depth(b""));
    assert!(within_depth(b"\"no brackets\""));
    assert!(within_depth(body(max / 2, max - max / 2).as_bytes()));
    assert!(!within_depth(body(max / 2, max - max / 2 + 1).as_bytes()));
    assert!(!within_depth(body(max + 1, 0).as_bytes()));
    assert!(within_depth(body(0, max).as_bytes()));
    assert!(!within_depth(body(0, max + 7).as_bytes()));
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/{name}")).unwrap()
}

#[test]
fn json_bodies_from_fixtures() {
    for dir in ["vllm-0.32", "vllm-0.32-prompt-details"] {
        for (endpoint, file, prompt_tokens, completion_tokens) in [
            (Endpoint::ChatCompletions, "chat-json", 22, 8),
            (Endpoint::ChatCompletions, "chat-json-n2", 22, 16),
            (Endpoint::Completions, "completions-json", 6, 8),
            (Endpoint::Responses, "responses-json", 22, 8),
        ] {
            let u = parse_usage(endpoint, &fixture(&format!("{dir}/{file}.body")));
            assert_eq!(
                u,
                Some(Usage {
                    prompt_tokens,
                    completion_tokens
                }),
                "{dir}/{file}"
            );
        }
        for err in [
            "error-bad-json",
            "error-unknown-model",
            "error-too-many-tokens",
        ] {
            let body = fixture(&format!("{dir}/{err}.body"));
            assert_eq!(parse_usage(Endpoint::ChatCompletions, &body), None);
        }
    }
    let emb =
        br#"{"object":"list","data":[],"model":"m","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
    assert_eq!(
        parse_usage(Endpoint::Embeddings, emb),
        Some(Usage {
            prompt_tokens: 5,
            completion_tokens: 0
        })
    );
    assert_eq!(parse_usage(Endpoint::Other, emb), None);
    assert_eq!(parse_usage(Endpoint::ChatCompletions, b"not json"), None);
}

#[test]
fn accumulator_is_bounded() {
    let body = fixture("vllm-0.32/chat-json.body");
    let mut acc = BodyAccumulator::new(4096);
    for part in body.chunks(10) {
        acc.push(part);
    }
    assert_eq!(
        acc.usage(Endpoint::ChatCompletions)
            .map(|u| u.completion_tokens),
        Some(8)
    );
    let mut small = BodyAccumulator::new(100);
    small.push(&body);
    assert!(small.overflowed());
    assert_eq!(small.usage(Endpoint::ChatCompletions), None);
}

#[test]
fn metrics_values_are_checked() {
    let m = br#"{"time_to_first_token_ms":2.5,"generation_time_ms":-1,"queue_time_ms":"x"}"#;
    assert_eq!(
        parse_metrics(m),
        MetricsField::Times(EngineTimes {
            queue_ns: None,
            prefill_ns: Some(2_500_000),
            generation_ns: None,
        })
    );
    assert_eq!(parse_metrics(b" null "), MetricsField::Null);
    assert_eq!(parse_metrics(b"[1]"), MetricsField::Invalid);
    assert_eq!(parse_metrics(b"{"), MetricsField::Invalid);
    // v0's offline `RequestMetrics` names are not a server response's.
    let v0 = br#"{"arrival_time":10.0,"first_scheduled_time":10.5,"time_in_queue":0.5}"#;
    assert_eq!(
        parse_metrics(v0),
        MetricsField::Times(EngineTimes::default())
    );
    assert_eq!(ms_to_ns(0.0), Some(0));
    assert_eq!(ms_to_ns(0.013845000466972124), Some(13_845));
    assert_eq!(ms_to_ns(MAX_ENGINE_TIME_MS), Some(86_400_000_000_000));
    assert_eq!(ms_to_ns(MAX_ENGINE_TIME_MS * 1.01), None);
    assert_eq!(ms_to_ns(f64::NAN), None);
    assert_eq!(ms_to_ns(f64::INFINITY), None);
    assert_eq!(ms_to_ns(-0.001), None);
    // Numbers too large for f64 are not finite once read.
    let huge = br#"{"queue_time_ms":1e400}"#;
    assert!(matches!(
        parse_metrics(huge),
        MetricsField::Invalid | MetricsField::Times(EngineTimes { queue_ns: None, .. })
    ));
    assert_eq!(body_metrics(b"not json"), None);
    assert_eq!(body_metrics(br#"{"usage":{"metrics":null}}"#), None);
    assert_eq!(
        body_metrics(br#"{"metrics":null}"#),
        Some(MetricsField::Null)
    );
}

#[test]
fn usage_tail_reads_the_end_of_large_bodies() {
    let dir = std::path::Path::new("tests/fixtures/vllm-0.32");
    for (name, endpoint, prompt, completion) in [
        ("chat-json", Endpoint::ChatCompletions, 22, 8),
        ("completions-json", Endpoint::Completions, 6, 8),
        ("responses-json", Endpoint::Responses, 22, 8),
    ] {
        let body = std::fs::read(dir.join(format!("{name}.body"))).unwrap();
        // A large body: padding in front, fed in awkward pieces.
        let mut big = vec![b' '; 3 * USAGE_TAIL_BYTES + 17];
        big.extend_from_slice(&body);
        for cut in [1, 7, 1000, USAGE_TAIL_BYTES, big.len()] {
            let mut tail = UsageTail::default();
            for piece in big.chunks(cut) {
                tail.push(piece);
            }
            assert!(tail.buf.len() <= USAGE_TAIL_BYTES, "{name}");
            assert!(tail.buf.capacity() <= USAGE_TAIL_BYTES, "{name}");
            assert_eq!(
                tail.usage(endpoint),
                Some(Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion
                }),
                "{name} in pieces of {cut}"
            );
        }
    }
    let mut tail = UsageTail::default();
    tail.push(br#"{"data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}"#);
    assert_eq!(
        tail.usage(Endpoint::Embeddings),
        Some(Usage {
            prompt_tokens: 4,
            completion_tokens: 0
        })
    );
    // A string mentioning usage is not the member; a cut-off object is nothing.
    tail = UsageTail::default();
    tail.push(br#"{"text":"say \"usage\": {}","usage":{"prompt_tokens":3,"completion_tokens":2}"#);
    assert_eq!(
        tail.usage(Endpoint::ChatCompletions)
            .map(|u| u.prompt_tokens),
        Some(3)
    );
    tail = UsageTail::default();
    tail.push(br#"{"usage":{"prompt_tokens":3,"compl"#);
    assert_eq!(tail.usage(Endpoint::ChatCompletions), None);
    assert_eq!(UsageTail::default().usage(Endpoint::ChatCompletions), None);
}
