//! Tests of the byte-level fast path against serde's reading.

use super::*;
use crate::openai::json_scan::scan_object;

/// serde's reading (the path the fast one must equal).
fn serde_choices(v: &[u8]) -> Option<Vec<Choice<'_>>> {
    let views: Vec<ChoiceView<'_>> = serde_json::from_slice(v).ok()?;
    Some(views.into_iter().map(Choice::from).collect())
}

fn serde_usage(v: &[u8]) -> Option<Counts> {
    serde_json::from_slice::<UsageView>(v)
        .ok()
        .map(Counts::from)
}

/// Whenever the fast path answers, serde accepts the value and reads the same.
fn check(v: &[u8]) -> (bool, bool) {
    let fast_c = choices(v);
    if let Some(c) = &fast_c {
        assert_eq!(
            Some(c.as_slice().to_vec()),
            serde_choices(v),
            "choices {:?}",
            String::from_utf8_lossy(v)
        );
    }
    let fast_u = usage(v);
    if let Some(u) = fast_u {
        assert_eq!(
            Some(u),
            serde_usage(v),
            "usage {:?}",
            String::from_utf8_lossy(v)
        );
    }
    (fast_c.is_some(), fast_u.is_some())
}

/// The `choices` and `usage` values of every data line of every streamed fixture.
fn fixture_values() -> Vec<(String, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().and_then(|e| e.to_str()) != Some("body") {
                continue;
            }
            let text = std::fs::read(&f).unwrap();
            for line in text.split(|&b| b == b'\n') {
                let Some(data) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                let Ok(layout) = scan_object(data) else {
                    continue;
                };
                for m in &layout.members {
                    if matches!(m.raw_key(data), b"choices" | b"usage") {
                        let name = format!("{}:{}", f.display(), m.key_start);
                        out.push((name, m.value(data).to_vec()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn fast_path_reads_every_fixture_value_as_serde_does() {
    let values = fixture_values();
    assert!(values.len() > 100, "fixtures found: {}", values.len());
    for (name, v) in &values {
        let (c, u) = check(v);
        // The fast path takes every chunk vLLM wrote (it is the point of it).
        let is_choices = v.first() == Some(&b'[');
        if v != b"null" {
            assert!(if is_choices { c } else { u }, "fast path declined {name}");
        }
    }
}

#[test]
fn fast_path_equals_serde_on_every_one_byte_mutation_of_the_fixtures() {
    const BYTES: &[u8] = b"\"\\{}[],: n0-.eEu1\x01\x7f\xff\xc3";
    let mut values = fixture_values();
    values.sort_by(|a, b| a.1.cmp(&b.1));
    values.dedup_by(|a, b| a.1 == b.1);
    let (mut tried, mut fast) = (0u64, 0u64);
    for (_, v) in values.iter().take(200) {
        for at in 0..v.len() {
            let mut cut = v.clone();
            cut.remove(at);
            fast += u64::from(check(&cut) != (false, false));
            for &b in BYTES {
                let mut m = v.clone();
                m[at] = b;
                fast += u64::from(check(&m) != (false, false));
                let mut ins = v.clone();
                ins.insert(at, b);
                fast += u64::from(check(&ins) != (false, false));
                tried += 2;
            }
        }
    }
    // The mutations exercise both paths (not only fallbacks).
    assert!(fast > tried / 20 && fast < tried, "{fast} of {tried}");
}

/// The scan that lets the fast path read `choices` and `usage` finds the same members as the
/// plain scan, on every data line of the fixtures and on one-byte mutations of them.
#[test]
fn reading_during_the_scan_keeps_the_layout() {
    use crate::openai::json_scan::{scan_object_into, scan_object_with, ObjectLayout};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut lines = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        for f in std::fs::read_dir(&dir).into_iter().flatten() {
            let text = std::fs::read(f.unwrap().path()).unwrap();
            for line in text.split(|&b| b == b'\n') {
                if let Some(d) = line.strip_prefix(b"data: ") {
                    lines.push(d.to_vec());
                }
            }
        }
    }
    assert!(lines.len() > 100);
    let same = |d: &[u8]| {
        let (mut a, mut b) = (ObjectLayout::default(), ObjectLayout::default());
        let ra = scan_object_into(d, &mut a);
        let mut read = 0;
        let rb = scan_object_with(d, &mut b, &mut |_, key, at| {
            let end = match key {
                b"choices" => choices_at(d, at)?.1,
                b"usage" => usage_at(d, at)?.1,
                _ => return None,
            };
            read += 1;
            Some(end)
        });
        assert_eq!(ra, rb, "{:?}", String::from_utf8_lossy(d));
        if ra.is_ok() {
            assert_eq!(a, b, "{:?}", String::from_utf8_lossy(d));
        }
        read
    };
    let mut read = 0;
    lines.sort();
    lines.dedup();
    for d in &lines {
        read += same(d);
        for at in (0..d.len()).step_by(3) {
            for &b in b"\"\\{}[],:" {
                let mut m = d.clone();
                m[at] = b;
                same(&m);
            }
        }
    }
    assert!(read > 100, "{read}");
}

#[test]
fn adversarial_values() {
    let cases: &[&str] = &[
        // Escaped and duplicate keys.
        r#"[{"ind\u0065x":3,"delta":{"content":"a"}}]"#,
        r#"[{"index":1,"index":2,"delta":{"content":"a"}}]"#,
        r#"[{"index":0,"delta":{"content":"a","content":null}}]"#,
        r#"[{"index":0,"delta":{"role":"assistant","role":"assistant"}}]"#,
        r#"[{"index":0,"delta":{"cont\u0065nt":"a"}}]"#,
        r#"[{"index":0,"finish_reason":"stop","finish_reason":null}]"#,
        r#"[{"index":0,"text":"a","text":"b"}]"#,
        r#"[{"index":0,"delta":null,"text":"a"}]"#,
        r#"[{"index":0,"delta":{},"text":"a"}]"#,
        r#"[{"index":0,"delta":[],"text":"a"}]"#,
        r#"[[0,{"content":"a"},null,"stop"]]"#,
        r#"[{"index":0,"delta":{"usage":{"content":1}},"usage":{"x":1}}]"#,
        r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}]"#,
        // Numbers serde does not read as u64.
        r#"[{"index":-0,"delta":{"content":"a"}}]"#,
        r#"[{"index":1.0,"delta":{"content":"a"}}]"#,
        r#"[{"index":1e0,"delta":{"content":"a"}}]"#,
        r#"[{"index":01,"delta":{"content":"a"}}]"#,
        r#"[{"index":18446744073709551615,"delta":{"content":"a"}}]"#,
        r#"[{"index":18446744073709551616,"delta":{"content":"a"}}]"#,
        r#"[{"index":null,"delta":{"content":"a"}}]"#,
        r#"[{"index":"0","delta":{"content":"a"}}]"#,
        // Strings: escapes, control characters, non-ASCII.
        r#"[{"index":0,"finish_reason":"st\u006fp"}]"#,
        r#"[{"index":0,"finish_reason":"é"}]"#,
        r#"[{"index":0,"finish_reason":1}]"#,
        r#"[{"index":0,"delta":{"content":"\ud800"}}]"#,
        r#"[{"index":0,"delta":{"content":"\x"}}]"#,
        r#"[{"index":0,"delta":{"content":"\u12"}}]"#,
        "[{\"index\":0,\"delta\":{\"content\":\"a\tb\"}}]",
        "[{\"index\":0,\"delta\":{\"content\":\"\u{e9}\u{1f600}\"}}]",
        // Literals, trailing commas, whitespace.
        r#"[{"index":0,"delta":{"content":nul}}]"#,
        r#"[{"index":0,"delta":{"content":"a"},}]"#,
        r#"[{"index":0,"delta":{"content":"a"}},]"#,
        r#"[{"index":0,"logprobs":[1,]}]"#,
        " [ { \"index\" : 2 , \"delta\" : { \"content\" : \"a\" } } ] ",
        "\t[\r\n{\"index\":2}\n]\n",
        r#"[]"#,
        r#"[null]"#,
        r#"[{"index":0},{"index":1},{"index":2},{"index":3},{"index":4}]"#,
        // Usage.
        r#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}"#,
        r#"{"prompt_tokens":5,"prompt_tokens":6}"#,
        r#"{"prompt_tok\u0065ns":5}"#,
        r#"{"prompt_tokens":null,"completion_tokens":1.5}"#,
        r#"{"prompt_tokens":-1}"#,
        r#"{"prompt_tokens_details":{"cached_tokens":3},"usage":{"prompt_tokens":9}}"#,
        r#"[5,7]"#,
        r#"{}"#,
    ];
    for c in cases {
        check(c.as_bytes());
    }
    // Invalid UTF-8 in keys and values.
    for v in [
        &b"[{\"ind\xffex\":0,\"delta\":{\"content\":\"a\"}}]"[..],
        b"[{\"index\":0,\"delta\":{\"content\":\"\xff\"}}]",
        b"[{\"index\":0,\"finish_reason\":\"\xc3\"}]",
        b"{\"prompt_tokens\":1,\"\xff\":2}",
    ] {
        check(v);
    }
    // Cut anywhere (a value split across reads is never seen here: the splitter hands on whole
    // events, but a truncated value must still fall back, not be read).
    for c in cases {
        for at in 0..c.len() {
            check(&c.as_bytes()[..at]);
        }
    }
    // The shapes the fast path is for.
    let plain = br#"[{"index":3,"delta":{"content":"a\n\"b"},"logprobs":null,"finish_reason":null,"token_ids":[1,2]}]"#;
    let got = choices(plain).expect("fast");
    assert_eq!(
        got.as_slice(),
        &[Choice {
            index: 3,
            output: true,
            finish_reason: None
        }]
    );
    let done = br#"[{"index":0,"text":"","finish_reason":"length","stop_reason":null}]"#;
    assert_eq!(
        choices(done).expect("fast").as_slice()[0]
            .finish_reason
            .as_deref(),
        Some("length")
    );
    assert_eq!(
        usage(br#"{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7,"prompt_tokens_details":null}"#),
        Some(Counts {
            prompt_tokens: Some(5),
            completion_tokens: Some(7)
        })
    );
}
