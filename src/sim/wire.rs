//! vLLM 0.32's exact response bytes: JSON bodies and SSE events for chat, completions, responses,
//! embeddings, models, tokenize and errors, with vLLM's key order, spacing and `null`s.
//!
//! Pure string building, no I/O. The shapes follow `tests/fixtures/vllm-0.32/` (real captures) and
//! vLLM's serving code: pydantic's compact JSON (`model_dump_json`, non-ASCII kept as UTF-8) for
//! payloads, Python's `json.dumps` (`", "` and `": "`, ASCII-escaped) for mid-stream errors.

use std::fmt::Write as _;

use super::request::ApiError;
use super::text::{alternative, GenToken};
use super::wire_metrics::RequestMetrics;

/// The SSE terminator of chat and completions streams.
pub const DONE: &str = "data: [DONE]\n\n";

/// The fields every chunk of one response repeats.
#[derive(Clone, Debug)]
pub struct ChunkCtx {
    /// Response id, e.g. `chatcmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// `system_fingerprint`, e.g. `vllm-0.32.0-2479cced`.
    pub fingerprint: String,
    /// Whether the server runs with `--enable-prompt-tokens-details`.
    pub prompt_details: bool,
}

/// Appends `s` as a JSON string the way pydantic/serde_json write it.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, `.0` kept, and an exponent (below 1e-4
/// and from 1e16, as Rust's `Debug` also switches) with a sign and at least two digits (`1e-05`).
pub fn py_float(f: f64) -> String {
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

pub(crate) fn head(out: &mut String, c: &ChunkCtx, object: &str) {
    out.push_str("{\"id\":");
    push_json_str(out, &c.id);
    let _ = write!(
        out,
        ",\"object\":\"{object}\",\"created\":{},\"model\":",
        c.created
    );
    push_json_str(out, &c.model);
}

pub(crate) fn usage_short(out: &mut String, prompt: u64, completion: u64) {
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{prompt},\"total_tokens\":{},\"completion_tokens\":{completion}",
        prompt + completion
    );
}

/// The role chunk that opens each choice of a chat stream.
pub fn chat_role_chunk(c: &ChunkCtx, index: u32, continuous_prompt: Option<u64>) -> String {
    let mut s = String::with_capacity(320);
    s.push_str("data: ");
    head(&mut s, c, "chat.completion.chunk");
    let _ = write!(
        s,
        ",\"choices\":[{{\"index\":{index},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]"
    );
    if let Some(p) = continuous_prompt {
        s.push_str(",\"usage\":");
        usage_short(&mut s, p, 0);
        s.push_str(",\"completion_tokens_details\":null}");
    }
    s.push_str(",\"prompt_token_ids\":null,\"prompt_text\":null}\n\n");
    s
}

/// Chat `logprobs.content` entries for tokens, each with `top` alternatives.
pub fn chat_logprobs(tokens: &[GenToken], top: u32) -> String {
    let mut s = String::from("{\"content\":[");
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        logprob_entry(&mut s, t);
        s.pop();
        s.push_str(",\"top_logprobs\":[");
        for r in 0..top {
            if r > 0 {
                s.push(',');
            }
            let alt = if r == 0 { t.clone() } else { alternative(t, r) };
            logprob_entry(&mut s, &alt);
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s
}

fn logprob_entry(s: &mut String, t: &GenToken) {
    s.push_str("{\"token\":");
    push_json_str(s, t.text);
    let _ = write!(s, ",\"logprob\":{},\"bytes\":[", py_float(t.logprob));
    for (i, b) in t.text.bytes().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{b}");
    }
    s.push_str("]}");
}

/// Completions `logprobs` for tokens starting at character offset `offset`.
pub fn completion_logprobs(tokens: &[GenToken], top: u32, mut offset: usize) -> String {
    let mut offsets = String::new();
    let mut lps = String::new();
    let mut toks = String::new();
    let mut tops = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            offsets.push(',');
            lps.push(',');
            toks.push(',');
            tops.push(',');
        }
        let _ = write!(offsets, "{offset}");
        offset += t.text.chars().count();
        lps.push_str(&py_float(t.logprob));
        push_json_str(&mut toks, t.text);
        tops.push('{');
        for r in 0..top.max(1) {
            if r > 0 {
                tops.push(',');
            }
            let alt = if r == 0 { t.clone() } else { alternative(t, r) };
            push_json_str(&mut tops, alt.text);
            let _ = write!(tops, ":{}", py_float(alt.logprob));
        }
        tops.push('}');
    }
    format!("{{\"text_offset\":[{offsets}],\"token_logprobs\":[{lps}],\"tokens\":[{toks}],\"top_logprobs\":[{tops}]}}")
}

/// What a token chunk carries besides its text.
#[derive(Clone, Debug, Default)]
pub struct ChunkExtras<'a> {
    /// Serialized `logprobs` object, or `null`.
    pub logprobs: Option<&'a str>,
    /// Whether this chunk finishes its choice (`finish_reason: "length"`).
    pub finish: bool,
    /// Stamp `system_fingerprint` (finish chunks when no usage chunk follows).
    pub fingerprint: bool,
    /// Continuous usage `(prompt, completion so far)`.
    pub usage: Option<(u64, u64)>,
}

/// A chat token chunk.
pub fn chat_token_chunk(c: &ChunkCtx, index: u32, text: &str, x: &ChunkExtras<'_>) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("data: ");
    head(&mut s, c, "chat.completion.chunk");
    let _ = write!(
        s,
        ",\"choices\":[{{\"index\":{index},\"delta\":{{\"content\":"
    );
    push_json_str(&mut s, text);
    let _ = write!(s, "}},\"logprobs\":{}", x.logprobs.unwrap_or("null"));
    if x.finish {
        s.push_str(",\"finish_reason\":\"length\",\"stop_reason\":null");
    } else {
        s.push_str(",\"finish_reason\":null");
    }
    s.push_str(",\"token_ids\":null}]");
    if let Some((p, done)) = x.usage {
        s.push_str(",\"usage\":");
        usage_short(&mut s, p, done);
        s.push_str(",\"completion_tokens_details\":null}");
    }
    tail_fingerprint(&mut s, c, x.fingerprint);
    s
}

fn tail_fingerprint(s: &mut String, c: &ChunkCtx, fingerprint: bool) {
    if fingerprint {
        s.push_str(",\"system_fingerprint\":");
        push_json_str(s, &c.fingerprint);
    }
    s.push_str("}\n\n");
}

/// A completions token chunk.
pub fn completion_chunk(c: &ChunkCtx, index: u32, text: &str, x: &ChunkExtras<'_>) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("data: ");
    head(&mut s, c, "text_completion");
    let _ = write!(s, ",\"choices\":[{{\"index\":{index},\"text\":");
    push_json_str(&mut s, text);
    let _ = write!(
        s,
        ",\"logprobs\":{},\"finish_reason\":{},\"stop_reason\":null,\"prompt_token_ids\":null,\"token_ids\":null}}]",
        x.logprobs.unwrap_or("null"),
        if x.finish { "\"length\"" } else { "null" }
    );
    if let Some((p, done)) = x.usage {
        s.push_str(",\"usage\":");
        usage_short(&mut s, p, done);
        s.push('}');
    }
    tail_fingerprint(&mut s, c, x.fingerprint);
    s
}

/// The final `choices: []` usage chunk of a chat (`chat = true`) or completions stream, with the
/// per-request `metrics` after `system_fingerprint` when given.
pub fn final_usage_chunk(
    c: &ChunkCtx,
    chat: bool,
    prompt: u64,
    completion: u64,
    metrics: Option<&RequestMetrics>,
) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("data: ");
    head(
        &mut s,
        c,
        if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        },
    );
    s.push_str(",\"choices\":[],\"usage\":");
    usage_short(&mut s, prompt, completion);
    if c.prompt_details {
        s.push_str(if chat {
            ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"created_cache_tokens\":0}"
        } else {
            ",\"prompt_tokens_details\":{\"cached_tokens\":0}"
        });
    }
    s.push_str("},\"system_fingerprint\":");
    push_json_str(&mut s, &c.fingerprint);
    if let Some(m) = metrics {
        s.push_str(",\"metrics\":");
        m.push_json(&mut s, false);
    }
    s.push_str("}\n\n");
    s
}

/// vLLM's error body: `{"error":{"message","type","param","code"}}`.
pub fn error_json(e: &ApiError) -> String {
    let mut s = String::from("{\"error\":{\"message\":");
    push_json_str(&mut s, &e.message);
    s.push_str(",\"type\":");
    push_json_str(&mut s, &e.err_type);
    s.push_str(",\"param\":");
    match &e.param {
        Some(p) => push_json_str(&mut s, p),
        None => s.push_str("null"),
    }
    let _ = write!(s, ",\"code\":{}}}}}", e.status);
    s
}

/// A mid-stream error event as vLLM writes it (`json.dumps`, so with spaces), followed by nothing:
/// the caller sends [`DONE`] after it.
pub fn stream_error_event(message: &str, err_type: &str, code: u16) -> String {
    let mut s = String::from("data: {\"error\": {\"message\": ");
    push_py_ascii_str(&mut s, message);
    s.push_str(", \"type\": ");
    push_py_ascii_str(&mut s, err_type);
    let _ = write!(s, ", \"param\": null, \"code\": {code}}}}}\n\n");
    s
}

/// Python `json.dumps` string escaping (`ensure_ascii=True`).
fn push_py_ascii_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ChunkCtx {
        ChunkCtx {
            id: "chatcmpl-883b80061890ec1a".into(),
            created: 1795346902,
            model: "tiny".into(),
            fingerprint: "vllm-0.32.0-2479cced".into(),
            prompt_details: false,
        }
    }

    #[test]
    fn chunks_match_fixture_lines() {
        let fixture = include_str!("../../tests/fixtures/vllm-0.32/chat-stream-plain.body");
        let events: Vec<&str> = fixture.split_inclusive("\n\n").collect();
        let c = ctx();
        assert_eq!(chat_role_chunk(&c, 0, None), events[0]);
        let mid = ChunkExtras::default();
        assert_eq!(chat_token_chunk(&c, 0, "\n", &mid), events[1]);
        let fin = ChunkExtras {
            finish: true,
            fingerprint: true,
            ..Default::default()
        };
        assert_eq!(chat_token_chunk(&c, 0, "\n", &fin), events[8]);
        assert_eq!(DONE, events[9]);
    }

    #[test]
    fn errors_and_escapes() {
        let e = ApiError {
            status: 404,
            message: "The model `nope` does not exist. Valid aliases: tiny.".into(),
            err_type: "NotFoundError".into(),
            param: Some("model".into()),
        };
        assert_eq!(
            error_json(&e),
            include_str!("../../tests/fixtures/vllm-0.32/error-unknown-model.body")
        );
        assert_eq!(
            stream_error_event("bad \u{e9}", "InternalServerError", 500),
            "data: {\"error\": {\"message\": \"bad \\u00e9\", \"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}\n\n"
        );
        let mut s = String::new();
        push_json_str(&mut s, "\u{8}\u{1}\"\u{fffd}");
        assert_eq!(s, "\"\\b\\u0001\\\"\u{fffd}\"");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(-6.04805326461792), "-6.04805326461792");
        assert_eq!(py_float(0.00001), "1e-05");
        assert_eq!(py_float(1.5e-7), "1.5e-07");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(0.0001), "0.0001");
    }

    /// The final usage chunk of a stream of a server with per-request metrics, byte for byte.
    #[test]
    fn final_usage_chunk_with_metrics_matches_the_capture() {
        let fixture = include_str!(
            "../../tests/fixtures/vllm-0.32-per-request-metrics/completions-stream-usage-continuous.body"
        );
        let events: Vec<&str> = fixture.split_inclusive("\n\n").collect();
        let c = ChunkCtx {
            id: "cmpl-8b8cee536e5a108b".into(),
            created: 1795502478,
            ..ctx()
        };
        let m = RequestMetrics {
            ttft_ms: 4.139104999921983,
            generation_ms: 11.778078000133974,
            queue_ms: 0.013185000170778949,
            mean_itl_ms: 1.6825825714477105,
            tokens_per_second: 502.60149675805553,
        };
        assert_eq!(
            final_usage_chunk(&c, false, 6, 8, Some(&m)),
            events[events.len() - 2]
        );
        // Without metrics, the chunk ends at the fingerprint, as before.
        let without = final_usage_chunk(&c, false, 6, 8, None);
        assert!(without.ends_with(",\"system_fingerprint\":\"vllm-0.32.0-2479cced\"}\n\n"));
    }
}
