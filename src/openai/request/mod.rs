//! The lenient request view: what accounting and usage injection need from a client's request (method,
//! path, headers and a bounded copy of its body), read without ever failing. A body that is not a JSON
//! object, or is compressed, gives a view that is merely not `accountable`; forwarding never depends
//! on this module. Owns the prompt-size estimate; it must not touch the body bytes themselves.

use serde::Deserializer as _;

use crate::observe::Endpoint;

mod de;

use de::TopVisitor;

/// Longest `model` / `user` value kept (bytes, cut at a character boundary): they become labels.
pub const MAX_LABEL_BYTES: usize = 256;

/// Knobs for reading requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewConfig {
    /// Bytes of prompt text per estimated token (default 4; values <= 0 or not finite mean 4).
    pub bytes_per_token: f64,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            bytes_per_token: 4.0,
        }
    }
}

/// The request's `stream_options`, as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptionsView {
    /// The key exists at the top level (with any value, `null` included).
    pub key_present: bool,
    /// Its value is a JSON object (`null` and other types are not).
    pub is_object: bool,
    /// `include_usage` when it is a boolean.
    pub include_usage: Option<bool>,
    /// `continuous_usage_stats` when it is a boolean.
    pub continuous_usage_stats: Option<bool>,
}

impl StreamOptionsView {
    /// Whether the upstream sees stream options at all (vLLM reads `null` like a missing key).
    pub fn effective(&self) -> bool {
        self.key_present && self.is_object
    }
}

/// What the proxy knows about a request before forwarding it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestView {
    /// Which API, from the path alone.
    pub endpoint: Endpoint,
    /// The body was an uncompressed JSON object sent with POST to a model endpoint: its fields below
    /// are meaningful and the request is accounted as model work.
    pub accountable: bool,
    /// `model`, truncated to [`MAX_LABEL_BYTES`].
    pub model: Option<String>,
    /// `stream` (a non-boolean value reads as false).
    pub stream: bool,
    /// `stream_options`.
    pub stream_options: StreamOptionsView,
    /// `n`, at least 1.
    pub n: u32,
    /// Number of prompts (a `/v1/completions` prompt list, else 1).
    pub prompts: u32,
    /// `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// `max_output_tokens` (`/v1/responses`).
    pub max_output_tokens: Option<u64>,
    /// `user`, truncated to [`MAX_LABEL_BYTES`].
    pub user: Option<String>,
    /// Prompt tokens estimated from text bytes (and counted exactly for token-id prompts).
    pub estimated_prompt_tokens: u64,
}

impl RequestView {
    /// A view that knows only the endpoint.
    pub fn opaque(endpoint: Endpoint) -> RequestView {
        RequestView {
            endpoint,
            accountable: false,
            model: None,
            stream: false,
            stream_options: StreamOptionsView::default(),
            n: 1,
            prompts: 1,
            max_tokens: None,
            max_completion_tokens: None,
            max_output_tokens: None,
            user: None,
            estimated_prompt_tokens: 0,
        }
    }

    /// Choices the response will carry: `n` per prompt.
    pub fn expected_choices(&self) -> u64 {
        u64::from(self.n.max(1)) * u64::from(self.prompts.max(1))
    }

    /// The per-choice completion bound the request set, whichever field carried it.
    pub fn max_output(&self) -> Option<u64> {
        self.max_completion_tokens
            .or(self.max_tokens)
            .or(self.max_output_tokens)
    }
}

/// The endpoint a path names (the query string is ignored).
pub fn endpoint_of(path: &str) -> Endpoint {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/completions" => Endpoint::Completions,
        "/v1/responses" => Endpoint::Responses,
        "/v1/embeddings" => Endpoint::Embeddings,
        _ => Endpoint::Other,
    }
}

/// Reads a request. Never fails: odd input yields a non-accountable view.
pub fn parse_request(
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    cfg: &ViewConfig,
) -> RequestView {
    let endpoint = endpoint_of(path);
    if endpoint == Endpoint::Other || method != http::Method::POST {
        return RequestView::opaque(endpoint);
    }
    // A compressed body cannot be read (or edited) here.
    let encoded = headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return RequestView::opaque(endpoint);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = match de.deserialize_any(TopVisitor) {
        Ok(Some(f)) if de.end().is_ok() => f,
        _ => return RequestView::opaque(endpoint),
    };
    let ratio = if cfg.bytes_per_token.is_finite() && cfg.bytes_per_token > 0.0 {
        cfg.bytes_per_token
    } else {
        4.0
    };
    let text = fields.measure.text_bytes as f64 / ratio;
    let estimated = (text.ceil() as u64).saturating_add(fields.measure.token_ids);
    let prompts = if endpoint == Endpoint::Completions {
        fields.prompts.max(1)
    } else {
        1
    };
    RequestView {
        endpoint,
        accountable: true,
        model: fields.model.map(bounded),
        stream: fields.stream.unwrap_or(false),
        stream_options: fields.stream_options,
        n: fields
            .n
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(1)
            .max(1),
        prompts,
        max_tokens: fields.max_tokens,
        max_completion_tokens: fields.max_completion_tokens,
        max_output_tokens: fields.max_output_tokens,
        user: fields.user.map(bounded),
        estimated_prompt_tokens: estimated,
    }
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_LABEL_BYTES {
        let mut cut = MAX_LABEL_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
