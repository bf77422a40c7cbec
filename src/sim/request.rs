//! Reading a client's request the way vLLM's OpenAI server does: what it asks for (API, stream,
//! usage options, `n`, prompts, `max_tokens`, logprobs) and the validation errors vLLM answers before
//! any stream starts, in vLLM's order (JSON, request model validators, unknown model, token limits).
//!
//! Pure: no I/O, no clock. Prompt sizes come from the toy tokenizer in [`super::text`].

use serde_json::Value;

use super::text::{count_chat_tokens, count_text_tokens};

/// Which generation API a request calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
    /// `/v1/responses`
    Responses,
    /// `/v1/embeddings`
    Embeddings,
}

/// An error vLLM answers with before generating anything: `{"error": {message, type, param, code}}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {err_type}: {message}")]
pub struct ApiError {
    /// HTTP status (also the `code` field).
    pub status: u16,
    /// `message`
    pub message: String,
    /// `type`, e.g. `BadRequestError`, `NotFoundError`.
    pub err_type: String,
    /// `param`, if any.
    pub param: Option<String>,
}

impl ApiError {
    fn bad(message: String, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message,
            err_type: "BadRequestError".into(),
            param: param.map(str::to_owned),
        }
    }
}

/// The server-side facts that validation needs.
#[derive(Clone, Debug)]
pub struct Limits<'a> {
    /// The served model name.
    pub model: &'a str,
    /// `max_model_len`.
    pub max_model_len: u32,
    /// Whether an absent `stream_options.include_usage` means true (vLLM versions differ; 0.32: false).
    pub absent_include_usage_is_true: bool,
}

/// What a valid generation request asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// Which API.
    pub kind: ApiKind,
    /// Whether the response streams.
    pub stream: bool,
    /// `stream_options.include_usage` with vLLM's semantics.
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats`, only honoured with `include_usage`.
    pub continuous_usage: bool,
    /// Choices per prompt (`n`).
    pub n: u32,
    /// Prompt tokens of each prompt (several only for `/v1/completions` and embeddings lists).
    pub prompt_tokens: Vec<u32>,
    /// Completion tokens each choice will produce (no EOS in the mock, so always this many).
    pub max_tokens: u32,
    /// Top log-probabilities per token when log-probabilities are asked for (0 = chosen token only).
    pub logprobs: Option<u32>,
    /// `temperature` as sent (echoed by `/v1/responses`).
    pub temperature: Option<f64>,
    /// `top_p` as sent (echoed by `/v1/responses`).
    pub top_p: Option<f64>,
    /// `max_output_tokens` as sent (echoed by `/v1/responses`).
    pub max_output_tokens: Option<u64>,
}

impl GenRequest {
    /// Total prompt tokens over all prompts.
    pub fn total_prompt_tokens(&self) -> u64 {
        self.prompt_tokens.iter().map(|&p| u64::from(p)).sum()
    }
}

/// Parses and validates a generation request body.
pub fn parse(kind: ApiKind, body: &[u8], limits: &Limits<'_>) -> Result<GenRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| json_error(body, &e))?;
    let Some(obj) = v.as_object() else {
        return Err(validation_error(
            "dict_type",
            "body",
            "Input should be a valid dictionary",
        ));
    };
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let stream_options = obj.get("stream_options").filter(|s| !s.is_null());
    if stream_options.is_some() && !stream && kind != ApiKind::Responses {
        return Err(ApiError::bad(
            "Stream options can only be defined when `stream=True`. (parameter=stream_options)"
                .into(),
            Some("stream_options"),
        ));
    }
    let (include_usage, continuous_usage) = match stream_options {
        Some(so) => {
            let inc = match so.get("include_usage").and_then(Value::as_bool) {
                Some(b) => b,
                None => limits.absent_include_usage_is_true,
            };
            let cont = so
                .get("continuous_usage_stats")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            (inc, inc && cont)
        }
        None => (false, false),
    };
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => match n.as_u64() {
            Some(n) if (1..=128).contains(&n) => n as u32,
            _ => return Err(ApiError::bad("n must be at least 1.".into(), Some("n"))),
        },
    };
    let prompt_tokens = prompt_sizes(kind, obj)?;
    if let Some(model) = obj.get("model").and_then(Value::as_str) {
        if model != limits.model {
            return Err(ApiError {
                status: 404,
                message: format!(
                    "The model `{model}` does not exist. Valid aliases: {}.",
                    limits.model
                ),
                err_type: "NotFoundError".into(),
                param: Some("model".into()),
            });
        }
    }
    let max_field = match kind {
        ApiKind::Responses => "max_output_tokens",
        _ => "max_tokens",
    };
    let asked = obj
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get(max_field).filter(|v| !v.is_null()))
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                ApiError::bad(
                    format!("{max_field} must be a non-negative integer."),
                    Some(max_field),
                )
            })
        })
        .transpose()?;
    let max_len = u64::from(limits.max_model_len);
    let longest_prompt = u64::from(prompt_tokens.iter().copied().max().unwrap_or(0));
    if longest_prompt > max_len {
        return Err(ApiError::bad(
            format!(
                "This model's maximum context length is {max_len} tokens. However, your request has \
                 {longest_prompt} input tokens. Please reduce the length of the input messages. \
                 (parameter=input_tokens, value={longest_prompt})"
            ),
            Some("input_tokens"),
        ));
    }
    let max_tokens = match (kind, asked) {
        (ApiKind::Embeddings, _) => 0,
        (_, Some(m)) if m > max_len => {
            return Err(ApiError::bad(
                format!(
                "{max_field}={m} cannot be greater than max_model_len={max_len}. Please request \
                     fewer output tokens. (parameter={max_field}, value={m})"
            ),
                Some(max_field),
            ))
        }
        (_, Some(m)) if m + longest_prompt > max_len => {
            return Err(ApiError::bad(
                format!(
                    "'{max_field}' is too large: {m}. This model's maximum context length is \
                     {max_len} tokens and your request has {longest_prompt} input tokens \
                     ({m} > {max_len} - {longest_prompt}). (parameter={max_field}, value={m})"
                ),
                Some(max_field),
            ))
        }
        (_, Some(m)) => m as u32,
        // vLLM's default: whatever room the context leaves.
        (_, None) => (max_len - longest_prompt) as u32,
    };
    let logprobs = match kind {
        ApiKind::Chat if obj.get("logprobs").and_then(Value::as_bool) == Some(true) => Some(
            obj.get("top_logprobs")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(20) as u32,
        ),
        ApiKind::Completions => obj
            .get("logprobs")
            .and_then(Value::as_u64)
            .map(|k| k.min(20) as u32),
        _ => None,
    };
    Ok(GenRequest {
        kind,
        stream: stream && kind != ApiKind::Embeddings,
        include_usage,
        continuous_usage,
        // The Responses API has no `n`; embeddings have no choices.
        n: if matches!(kind, ApiKind::Embeddings | ApiKind::Responses) {
            1
        } else {
            n
        },
        prompt_tokens,
        max_tokens,
        logprobs,
        temperature: obj.get("temperature").and_then(Value::as_f64),
        top_p: obj.get("top_p").and_then(Value::as_f64),
        max_output_tokens: obj.get("max_output_tokens").and_then(Value::as_u64),
    })
}

/// Prompt token counts, one per prompt, for the request's API.
fn prompt_sizes(kind: ApiKind, obj: &serde_json::Map<String, Value>) -> Result<Vec<u32>, ApiError> {
    match kind {
        ApiKind::Chat => {
            let Some(msgs) = obj.get("messages").and_then(Value::as_array) else {
                return Err(validation_error("missing", "messages", "Field required"));
            };
            let texts: Vec<String> = msgs
                .iter()
                .map(|m| content_text(m.get("content")))
                .collect();
            Ok(vec![count_chat_tokens(texts.iter().map(String::as_str))])
        }
        ApiKind::Responses => {
            let mut texts = Vec::new();
            if let Some(i) = obj.get("instructions").and_then(Value::as_str) {
                texts.push(i.to_owned());
            }
            match obj.get("input") {
                Some(Value::String(s)) => texts.push(s.clone()),
                Some(Value::Array(items)) => {
                    texts.extend(items.iter().map(|m| content_text(m.get("content"))))
                }
                _ => return Err(validation_error("missing", "input", "Field required")),
            }
            Ok(vec![count_chat_tokens(texts.iter().map(String::as_str))])
        }
        ApiKind::Completions | ApiKind::Embeddings => {
            let field = if kind == ApiKind::Completions {
                "prompt"
            } else {
                "input"
            };
            match obj.get(field) {
                Some(Value::String(s)) => Ok(vec![count_text_tokens(s)]),
                Some(Value::Array(items)) if items.is_empty() => Err(ApiError::bad(
                    format!("{field} must not be empty."),
                    Some(field),
                )),
                Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
                    Ok(vec![items.len() as u32])
                }
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|it| match it {
                        Value::String(s) => Ok(count_text_tokens(s)),
                        Value::Array(ids) => Ok(ids.len() as u32),
                        _ => Err(validation_error(
                            "string_type",
                            field,
                            "Input should be a valid string",
                        )),
                    })
                    .collect(),
                _ => Err(validation_error("missing", field, "Field required")),
            }
        }
    }
}

/// The text of a message's `content`: a string, or the `text` of its parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A pydantic-style request validation error, as vLLM 0.32 reports it (status 400, `Bad Request`).
fn validation_error(kind: &str, field: &str, msg: &str) -> ApiError {
    ApiError {
        status: 400,
        message: format!(
            "1 validation error:\n  {{'type': '{kind}', 'loc': ('body', '{field}'), 'msg': '{msg}'}}"
        ),
        err_type: "Bad Request".into(),
        param: Some(format!("body.{field}")),
    }
}

/// vLLM's answer to a body that is not JSON: the decoder's message and the byte offset where it
/// failed, named after Python's `json` module messages (approximated from serde_json's error class).
pub fn json_error(body: &[u8], e: &serde_json::Error) -> ApiError {
    // serde reports 1-based line/column; Python reports a 0-based character offset.
    let mut offset = 0usize;
    let mut line = 1usize;
    for (i, b) in body.iter().enumerate() {
        if line == e.line() {
            offset = i + e.column().saturating_sub(1);
            break;
        }
        if *b == b'\n' {
            line += 1;
        }
    }
    let text = e.to_string();
    let reason = if text.starts_with("key must be a string") {
        "Expecting property name enclosed in double quotes"
    } else if text.starts_with("trailing characters") {
        "Extra data"
    } else if text.starts_with("expected `:`") {
        "Expecting ':' delimiter"
    } else if text.starts_with("expected `,` or `}`") {
        "Expecting ',' delimiter"
    } else {
        "Expecting value"
    };
    if e.is_eof() {
        offset = body.len();
    }
    ApiError {
        status: 400,
        message: format!(
            "1 validation error:\n  {{'type': 'json_invalid', 'loc': 'body.{offset}', 'msg': 'JSON decode \
             error', 'input': '<dict of 0 items>', 'ctx': {{'error': '{reason}'}}}}"
        ),
        err_type: "Bad Request".into(),
        param: Some(format!("body.{offset}")),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
