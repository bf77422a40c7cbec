//! vLLM 0.32's non-streaming JSON bodies: chat and completions responses, embeddings, `/v1/models`,
//! `/version` and `/tokenize`, with vLLM's key order and `null`s (see `tests/fixtures/vllm-0.32/`).
//!
//! Pure string building, no I/O; the shared helpers (escaping, the common head) are in [`super::wire`].

use std::fmt::Write as _;

use super::wire::{head, push_json_str, py_float, usage_short, ChunkCtx};
use super::wire_metrics::RequestMetrics;

/// The closing `"metrics":…}` of a chat or completions body: `null` without per-request metrics
/// (or for a response vLLM does not time, such as `n > 1`).
fn metrics_tail(s: &mut String, metrics: Option<&RequestMetrics>) {
    s.push_str(",\"metrics\":");
    match metrics {
        Some(m) => m.push_json(s, true),
        None => s.push_str("null"),
    }
    s.push('}');
}

fn usage_full(s: &mut String, c: &ChunkCtx, chat: bool, prompt: u64, completion: u64) {
    usage_short(s, prompt, completion);
    s.push_str(match (c.prompt_details, chat) {
        (false, _) => ",\"prompt_tokens_details\":null",
        (true, true) => ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"created_cache_tokens\":0,\"multimodal_tokens\":null}",
        (true, false) => ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"created_cache_tokens\":null,\"multimodal_tokens\":null}",
    });
    s.push_str(",\"completion_tokens_details\":null}");
}

/// One finished choice of a non-streaming response: its text and serialized `logprobs`, if asked.
#[derive(Clone, Debug)]
pub struct ChoiceOut {
    /// The whole generated text.
    pub text: String,
    /// Serialized `logprobs`, if asked for.
    pub logprobs: Option<String>,
}

/// A non-streaming chat completion (`metrics`: see [`RequestMetrics`]; `None` writes `null`).
pub fn chat_json(
    c: &ChunkCtx,
    choices: &[ChoiceOut],
    prompt: u64,
    completion: u64,
    metrics: Option<&RequestMetrics>,
) -> String {
    let mut s = String::with_capacity(700);
    head(&mut s, c, "chat.completion");
    s.push_str(",\"choices\":[");
    for (i, ch) in choices.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"index\":{i},\"message\":{{\"role\":\"assistant\",\"content\":"
        );
        push_json_str(&mut s, &ch.text);
        let _ = write!(
            s,
            ",\"refusal\":null,\"annotations\":null,\"audio\":null,\"function_call\":null,\"reasoning\":null}},\"logprobs\":{},\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null,\"routed_experts\":null}}",
            ch.logprobs.as_deref().unwrap_or("null")
        );
    }
    s.push_str("],\"service_tier\":null,\"system_fingerprint\":");
    push_json_str(&mut s, &c.fingerprint);
    s.push_str(",\"usage\":");
    usage_full(&mut s, c, true, prompt, completion);
    s.push_str(",\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"prompt_text\":null,\"kv_transfer_params\":null,\"ec_transfer_params\":null");
    metrics_tail(&mut s, metrics);
    s
}

/// A non-streaming completion (`metrics` as in [`chat_json`]).
pub fn completion_json(
    c: &ChunkCtx,
    choices: &[ChoiceOut],
    prompt: u64,
    completion: u64,
    metrics: Option<&RequestMetrics>,
) -> String {
    let mut s = String::with_capacity(600);
    head(&mut s, c, "text_completion");
    s.push_str(",\"choices\":[");
    for (i, ch) in choices.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{{\"index\":{i},\"text\":");
        push_json_str(&mut s, &ch.text);
        let _ = write!(
            s,
            ",\"logprobs\":{},\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null,\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"routed_experts\":null}}",
            ch.logprobs.as_deref().unwrap_or("null")
        );
    }
    s.push_str("],\"service_tier\":null,\"system_fingerprint\":");
    push_json_str(&mut s, &c.fingerprint);
    s.push_str(",\"usage\":");
    usage_full(&mut s, c, false, prompt, completion);
    s.push_str(",\"kv_transfer_params\":null,\"ec_transfer_params\":null");
    metrics_tail(&mut s, metrics);
    s
}

/// A non-streaming embeddings response with a small deterministic vector per input.
pub fn embeddings_json(c: &ChunkCtx, vectors: &[Vec<f64>], prompt: u64) -> String {
    let mut s = String::with_capacity(256);
    head(&mut s, c, "list");
    s.push_str(",\"data\":[");
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"index\":{i},\"object\":\"embedding\",\"embedding\":["
        );
        for (j, x) in v.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            s.push_str(&py_float(*x));
        }
        s.push_str("]}");
    }
    s.push_str("],\"usage\":");
    let _ = write!(
        s,
        "{{\"prompt_tokens\":{prompt},\"total_tokens\":{prompt},\"completion_tokens\":0,\"prompt_tokens_details\":null,\"completion_tokens_details\":null}}}}"
    );
    s
}

/// `/v1/models`.
pub fn models_json(
    model: &str,
    root: &str,
    created: u64,
    max_model_len: u32,
    perm_id: &str,
) -> String {
    let mut s = String::from("{\"object\":\"list\",\"data\":[{\"id\":");
    push_json_str(&mut s, model);
    let _ = write!(
        s,
        ",\"object\":\"model\",\"created\":{created},\"owned_by\":\"vllm\",\"root\":"
    );
    push_json_str(&mut s, root);
    let _ = write!(
        s,
        ",\"parent\":null,\"max_model_len\":{max_model_len},\"permission\":[{{\"id\":\"modelperm-{perm_id}\",\"object\":\"model_permission\",\"created\":{created},\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,\"is_blocking\":false}}]}}]}}"
    );
    s
}

/// `/version`.
pub fn version_json(version: &str) -> String {
    let mut s = String::from("{\"version\":");
    push_json_str(&mut s, version);
    s.push('}');
    s
}

/// `/tokenize`.
pub fn tokenize_json(tokens: &[u32], max_model_len: u32) -> String {
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    format!(
        "{{\"count\":{},\"max_model_len\":{max_model_len},\"tokens\":[{}],\"token_strs\":null}}",
        tokens.len(),
        list.join(",")
    )
}
