//! Unit tests of request reading: usage semantics, fixture error shapes, prompt sizes.
use super::*;

const LIMITS: Limits<'static> = Limits {
    model: "tiny",
    max_model_len: 2048,
    absent_include_usage_is_true: false,
};

#[test]
fn chat_usage_semantics_follow_vllm_032() {
    let r = parse(
        ApiKind::Chat,
        br#"{"model":"tiny","messages":[{"role":"user","content":"say something short"}],"max_tokens":8,"stream":true,"stream_options":{}}"#,
        &LIMITS,
    )
    .unwrap();
    assert!(!r.include_usage && !r.continuous_usage);
    assert_eq!(r.prompt_tokens, vec![22]);
    let r = parse(
        ApiKind::Chat,
        br#"{"messages":[],"stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}}"#,
        &LIMITS,
    )
    .unwrap();
    assert!(!r.continuous_usage);
    let other = Limits {
        absent_include_usage_is_true: true,
        ..LIMITS
    };
    let r = parse(
        ApiKind::Chat,
        br#"{"messages":[],"stream":true,"stream_options":{}}"#,
        &other,
    )
    .unwrap();
    assert!(r.include_usage);
}

#[test]
fn errors_match_fixture_shapes() {
    let e = parse(ApiKind::Chat, b"{not json", &LIMITS).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("body.1"));
    assert!(e
        .message
        .contains("Expecting property name enclosed in double quotes"));
    let e = parse(ApiKind::Chat, br#"{"model":"nope","messages":[]}"#, &LIMITS).unwrap_err();
    assert_eq!(e.status, 404);
    let e = parse(
        ApiKind::Chat,
        br#"{"messages":[],"max_tokens":100000}"#,
        &LIMITS,
    )
    .unwrap_err();
    assert!(e
        .message
        .starts_with("max_tokens=100000 cannot be greater than max_model_len=2048."));
    let e = parse(
        ApiKind::Chat,
        br#"{"messages":[],"stream_options":{"include_usage":true}}"#,
        &LIMITS,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("stream_options"));
    assert!(parse(ApiKind::Chat, b"[1]", &LIMITS).is_err());
    assert!(parse(ApiKind::Completions, br#"{"prompt":7}"#, &LIMITS).is_err());
}

#[test]
fn prompts_and_defaults() {
    let r = parse(
        ApiKind::Completions,
        br#"{"prompt":["one two","three four five"]}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(r.prompt_tokens, vec![3, 5]);
    assert_eq!(r.max_tokens, 2048 - 5);
    let r = parse(
        ApiKind::Completions,
        br#"{"prompt":[1,2,3],"max_tokens":4,"logprobs":2}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(
        (r.prompt_tokens.clone(), r.max_tokens, r.logprobs),
        (vec![3], 4, Some(2))
    );
    let r = parse(ApiKind::Embeddings, br#"{"input":["a","bcdef"]}"#, &LIMITS).unwrap();
    assert_eq!((r.prompt_tokens.clone(), r.max_tokens), (vec![1, 2], 0));
    let r = parse(
        ApiKind::Responses,
        br#"{"input":"say something short","max_output_tokens":8}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!((r.prompt_tokens.clone(), r.max_tokens), (vec![22], 8));
}
