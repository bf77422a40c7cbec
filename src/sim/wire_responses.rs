//! vLLM 0.32's `/v1/responses` bytes: the response object and the streaming events
//! (`response.created` ... `response.completed`, `event:` lines, no `[DONE]`).
//!
//! Pure string building; shapes from `tests/fixtures/vllm-0.32/responses-*.body`. The mock sends
//! one `response.output_text.delta` per token (vLLM may merge several tokens into one delta).

use std::fmt::Write as _;

use super::wire::{push_json_str, py_float};
use super::wire_metrics::RequestMetrics;

/// The fields of one `/v1/responses` response.
#[derive(Clone, Debug)]
pub struct RespCtx {
    /// `resp_...`
    pub id: String,
    /// `msg_...` of the single output message.
    pub msg_id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Served model name.
    pub model: String,
    /// `temperature` echoed (vLLM default 1.0).
    pub temperature: f64,
    /// `top_p` echoed (default 1.0).
    pub top_p: f64,
    /// `max_output_tokens` echoed.
    pub max_output_tokens: Option<u64>,
}

fn item(s: &mut String, c: &RespCtx, text: Option<&str>) {
    s.push_str("{\"id\":");
    push_json_str(s, &c.msg_id);
    match text {
        Some(t) => {
            s.push_str(",\"content\":[{\"annotations\":[],\"text\":");
            push_json_str(s, t);
            s.push_str(",\"type\":\"output_text\",\"logprobs\":null}],\"role\":\"assistant\",\"status\":\"completed\"");
        }
        None => s.push_str(",\"content\":[],\"role\":\"assistant\",\"status\":\"in_progress\""),
    }
    s.push_str(",\"type\":\"message\",\"phase\":null}");
}

/// The response object: in progress (`done = None`) or finished with `(text, input, output tokens)`;
/// a server with per-request metrics puts `metrics` after `user` (finished responses only).
pub fn response_object(
    c: &RespCtx,
    done: Option<(&str, u64, u64)>,
    metrics: Option<&RequestMetrics>,
) -> String {
    let mut s = String::with_capacity(1200);
    s.push_str("{\"id\":");
    push_json_str(&mut s, &c.id);
    let _ = write!(
        s,
        ",\"created_at\":{},\"incomplete_details\":",
        c.created_at
    );
    // The mock never stops early: a finished response always ran into max_output_tokens.
    s.push_str(if done.is_some() {
        "{\"reason\":\"max_output_tokens\"}"
    } else {
        "null"
    });
    s.push_str(",\"instructions\":null,\"metadata\":null,\"model\":");
    push_json_str(&mut s, &c.model);
    s.push_str(",\"object\":\"response\",\"output\":[");
    if let Some((text, _, _)) = done {
        item(&mut s, c, Some(text));
    }
    let _ = write!(
        s,
        "],\"parallel_tool_calls\":true,\"temperature\":{},\"tool_choice\":\"none\",\"tools\":[],\"top_p\":{},\"background\":false,\"max_output_tokens\":{},\"max_tool_calls\":null,\"previous_response_id\":null,\"prompt\":null,\"reasoning\":null,\"service_tier\":\"auto\",\"status\":\"{}\",\"text\":null,\"top_logprobs\":null,\"truncation\":\"disabled\",\"usage\":",
        py_float(c.temperature),
        py_float(c.top_p),
        c.max_output_tokens.map_or("null".to_string(), |m| m.to_string()),
        if done.is_some() { "incomplete" } else { "in_progress" },
    );
    match done {
        Some((_, input, output)) => {
            let _ = write!(
                s,
                "{{\"input_tokens\":{input},\"input_tokens_details\":{{\"cached_tokens\":0,\"cache_write_tokens\":0,\"input_tokens_per_turn\":[],\"cached_tokens_per_turn\":[]}},\"output_tokens\":{output},\"output_tokens_details\":{{\"reasoning_tokens\":0,\"tool_output_tokens\":0,\"output_tokens_per_turn\":[],\"tool_output_tokens_per_turn\":[]}},\"total_tokens\":{}}}",
                input + output
            );
        }
        None => s.push_str("null"),
    }
    s.push_str(",\"user\":null");
    if let (Some(m), Some(_)) = (metrics, done) {
        s.push_str(",\"metrics\":");
        m.push_json(&mut s, true);
    }
    s.push_str(",\"presence_penalty\":0.0,\"frequency_penalty\":0.0,\"kv_transfer_params\":null,\"ec_transfer_params\":null,\"input_messages\":null,\"output_messages\":null}");
    s
}

fn event(name: &str, body: &str, seq: u64) -> String {
    format!("event: {name}\ndata: {{{body},\"sequence_number\":{seq},\"type\":\"{name}\"}}\n\n")
}

/// The opening events: created, in_progress, output_item.added, content_part.added (seq 0..=3).
pub fn opening_events(c: &RespCtx) -> String {
    let obj = response_object(c, None, None);
    let mut s = event("response.created", &format!("\"response\":{obj}"), 0);
    s.push_str(&event(
        "response.in_progress",
        &format!("\"response\":{obj}"),
        1,
    ));
    let mut it = String::new();
    item(&mut it, c, None);
    s.push_str(&event(
        "response.output_item.added",
        &format!("\"item\":{it},\"output_index\":0"),
        2,
    ));
    let mut b = String::from("\"content_index\":0,\"item_id\":");
    push_json_str(&mut b, &c.msg_id);
    b.push_str(",\"output_index\":0,\"part\":{\"annotations\":[],\"text\":\"\",\"type\":\"output_text\",\"logprobs\":[]}");
    s.push_str(&event("response.content_part.added", &b, 3));
    s
}

/// One `response.output_text.delta` event.
pub fn delta_event(c: &RespCtx, delta: &str, seq: u64) -> String {
    let mut b = String::from("\"content_index\":0,\"delta\":");
    push_json_str(&mut b, delta);
    b.push_str(",\"item_id\":");
    push_json_str(&mut b, &c.msg_id);
    b.push_str(",\"logprobs\":[],\"output_index\":0");
    event("response.output_text.delta", &b, seq)
}

/// The closing events: output_text.done, content_part.done, output_item.done, completed (with the
/// per-request `metrics`, if any, in its response); `seq` is the sequence number of the first.
pub fn closing_events(
    c: &RespCtx,
    text: &str,
    (input, output): (u64, u64),
    seq: u64,
    metrics: Option<&RequestMetrics>,
) -> String {
    let mut b = String::from("\"content_index\":0,\"item_id\":");
    push_json_str(&mut b, &c.msg_id);
    b.push_str(",\"logprobs\":[],\"output_index\":0");
    let mut done_text = b.clone();
    done_text.push_str(",\"sequence_number\":");
    let mut s = format!("event: response.output_text.done\ndata: {{{done_text}{seq},\"text\":");
    push_json_str(&mut s, text);
    s.push_str(",\"type\":\"response.output_text.done\"}\n\n");
    let mut p = String::from("\"content_index\":0,\"item_id\":");
    push_json_str(&mut p, &c.msg_id);
    p.push_str(",\"output_index\":0,\"part\":{\"annotations\":[],\"text\":");
    push_json_str(&mut p, text);
    p.push_str(",\"type\":\"output_text\",\"logprobs\":null}");
    s.push_str(&event("response.content_part.done", &p, seq + 1));
    let mut it = String::new();
    item(&mut it, c, Some(text));
    s.push_str(&event(
        "response.output_item.done",
        &format!("\"item\":{it},\"output_index\":0"),
        seq + 2,
    ));
    let obj = response_object(c, Some((text, input, output)), metrics);
    s.push_str(&event(
        "response.completed",
        &format!("\"response\":{obj}"),
        seq + 3,
    ));
    s
}

/// A mid-stream `error` event of a responses stream.
pub fn error_event(message: &str, seq: u64) -> String {
    let mut b = String::from("\"code\":\"internal_error\",\"message\":");
    push_json_str(&mut b, message);
    b.push_str(",\"param\":null");
    event("error", &b, seq)
}
