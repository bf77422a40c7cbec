//! The mock's small endpoints: `/tokenize` (the toy tokenizer's ids) and `/metrics` (a small
//! vLLM-like Prometheus text).

use http::Response;

use super::request::{self, ApiError};
use super::server::MockBody;
use super::service::{error_response, json_response, App};
use super::text::{count_chat_tokens, text_token_ids};
use super::wire_json;

/// `POST /tokenize`: `{"prompt"}` or `{"messages"}`.
pub fn tokenize(app: &App, body: &[u8]) -> Response<MockBody> {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error_response(&request::json_error(body, &e)),
    };
    let tokens: Vec<u32> = if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
        text_token_ids(p)
    } else if let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) {
        let texts: Vec<String> = msgs
            .iter()
            .map(|m| {
                m.get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let count = count_chat_tokens(texts.iter().map(String::as_str)) as usize;
        // Template tokens get special ids (128000+), the messages' text their own ids.
        let mut ids: Vec<u32> = texts.iter().flat_map(|t| text_token_ids(t)).collect();
        let mut special = 128_000;
        while ids.len() < count {
            ids.insert(0, special);
            special += 1;
        }
        ids
    } else {
        return error_response(&ApiError {
            status: 400,
            message: "Either `prompt` or `messages` is required.".into(),
            err_type: "BadRequestError".into(),
            param: None,
        });
    };
    if let Some(m) = v
        .get("model")
        .and_then(|m| m.as_str())
        .filter(|m| *m != app.cfg.model)
    {
        return error_response(&ApiError {
            status: 404,
            message: format!(
                "The model `{m}` does not exist. Valid aliases: {}.",
                app.cfg.model
            ),
            err_type: "NotFoundError".into(),
            param: Some("model".into()),
        });
    }
    json_response(
        200,
        wire_json::tokenize_json(&tokens, app.cfg.max_model_len),
    )
}

/// `GET /metrics`.
pub fn metrics_text(app: &App) -> String {
    let (waiting, running) = app
        .engine
        .as_ref()
        .map_or((0, 0), |e| e.shared.engine().queue_depths());
    let s = app.state();
    let labels = format!("engine=\"0\",model_name=\"{}\"", app.cfg.model);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}.0\n"
        ));
    };
    metric(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        u64::from(running),
    );
    metric(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        waiting as u64,
    );
    metric(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        s.prompt_tokens_total,
    );
    metric(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        s.generation_tokens_total,
    );
    metric(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        s.completed,
    );
    out
}
