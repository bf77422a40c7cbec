//! Token usage as the upstream reports it: the minimal serde views of chat/completions chunks and
//! bodies, `/v1/responses` events and bodies, embeddings bodies, and vLLM's per-request `metrics`; plus
//! the bounded accumulator for non-streaming bodies. Views are lenient (`#[serde(default)]`, unknown
//! keys skipped, strings borrowed where they can be) and never allocate for fields the proxy ignores.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::observe::Endpoint;

/// Token counts from a usage object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens; 0 for embeddings.
    pub completion_tokens: u64,
}

/// `usage` of chat/completions/embeddings.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsageView {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

/// `usage` of `/v1/responses`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResponsesUsageView {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

/// The delta of a chat chunk: which keys are present (values are not needed).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeltaView {
    #[serde(default)]
    pub role: Option<IgnoredAny>,
    #[serde(default)]
    pub content: Option<IgnoredAny>,
    #[serde(default)]
    pub reasoning_content: Option<IgnoredAny>,
    #[serde(default)]
    pub reasoning: Option<IgnoredAny>,
    #[serde(default)]
    pub tool_calls: Option<IgnoredAny>,
}

impl DeltaView {
    /// Whether this delta carries generated output (vLLM sends about one token per such chunk; the
    /// role chunk and an empty closing delta carry none).
    pub fn carries_output(&self) -> bool {
        self.role.is_none()
            && (self.content.is_some()
                || self.reasoning_content.is_some()
                || self.reasoning.is_some()
                || self.tool_calls.is_some())
    }
}

/// One choice of a streamed chunk.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChoiceView<'a> {
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub delta: Option<DeltaView>,
    #[serde(default)]
    pub text: Option<IgnoredAny>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct IncompleteView<'a> {
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
}

/// The `response` object of `/v1/responses` (a JSON body, or inside a terminal stream event).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResponseView<'a> {
    #[serde(default)]
    pub usage: Option<ResponsesUsageView>,
    #[serde(default, borrow)]
    pub status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub incomplete_details: Option<IncompleteView<'a>>,
    #[serde(default)]
    pub error: Option<IgnoredAny>,
    /// vLLM's per-request `metrics` (read with [`metrics_from_value`]); absent on other servers.
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
}

/// One `/v1/responses` stream event's data.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResponsesEventView<'a> {
    #[serde(default, borrow, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub response: Option<ResponseView<'a>>,
}

/// Non-streaming chat/completions/embeddings body.
#[derive(Debug, Default, Deserialize)]
struct BodyView {
    #[serde(default)]
    usage: Option<UsageView>,
}

/// The engine's own timing of one request, from vLLM's per-request `metrics` object (vLLM 0.32+
/// started with `--enable-per-request-metrics`), in integer nanoseconds. Each field is `None` when
/// the server did not send it or sent something unusable (negative, not a finite number, or longer
/// than [`MAX_ENGINE_TIME_MS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineTimes {
    /// `queue_time_ms`: from arrival in the engine to its first scheduling.
    pub queue_ns: Option<u64>,
    /// `time_to_first_token_ms`: from first scheduling to the first token, i.e. the prefill
    /// without the queue wait.
    pub prefill_ns: Option<u64>,
    /// `generation_time_ms`: from the first token to the last.
    pub generation_ns: Option<u64>,
}

/// What a response said about per-request metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsField {
    /// `"metrics": null`: a vLLM server without `--enable-per-request-metrics` (or a response shape
    /// it does not time, such as `n > 1`).
    Null,
    /// A `metrics` object, read.
    Times(EngineTimes),
    /// A `metrics` value of another shape (not an object), ignored.
    Invalid,
}

/// Longest engine time accepted from `metrics`, milliseconds (one day): anything longer is not a
/// request's timing but a broken or hostile value.
pub const MAX_ENGINE_TIME_MS: f64 = 86_400_000.0;

/// Reads the value of a response's `metrics` member (the raw JSON text of the value), as vLLM 0.32
/// writes it:
/// `{"time_to_first_token_ms":2.21,"generation_time_ms":13.05,"queue_time_ms":0.014,
/// "mean_itl_ms":1.86,"tokens_per_second":524.2,"speculative_decoding":null}` (JSON bodies and the
/// `response` of `/v1/responses`' `response.completed`; the final usage chunk of a chat/completions
/// stream has the same members without `speculative_decoding`).
///
/// Earlier versions of this reader also accepted `time_in_queue`, `first_scheduled_time`,
/// `first_token_time` and `arrival_time` (seconds): those are the fields of vLLM v0's Python
/// `RequestMetrics` (`vllm/sequence.py`), attached to `RequestOutput` in the offline `LLM` API. No
/// vLLM OpenAI server release serialised them in a response, so they are not read any more.
pub fn parse_metrics(value: &[u8]) -> MetricsField {
    let value = value.trim_ascii();
    if value == b"null" {
        return MetricsField::Null;
    }
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(v) => metrics_from_value(&v),
        Err(_) => MetricsField::Invalid,
    }
}

/// [`parse_metrics`] for a value already parsed (the `response` of a `/v1/responses` event).
pub fn metrics_from_value(value: &serde_json::Value) -> MetricsField {
    let map = match value {
        serde_json::Value::Null => return MetricsField::Null,
        serde_json::Value::Object(map) => map,
        _ => return MetricsField::Invalid,
    };
    let ns = |name: &str| {
        map.get(name)
            .and_then(serde_json::Value::as_f64)
            .and_then(ms_to_ns)
    };
    MetricsField::Times(EngineTimes {
        queue_ns: ns("queue_time_ms"),
        prefill_ns: ns("time_to_first_token_ms"),
        generation_ns: ns("generation_time_ms"),
    })
}

/// Milliseconds as integer nanoseconds, rounded; `None` for negative, non-finite or absurd values.
pub fn ms_to_ns(ms: f64) -> Option<u64> {
    (ms.is_finite() && (0.0..=MAX_ENGINE_TIME_MS).contains(&ms)).then(|| (ms * 1e6).round() as u64)
}

/// The `metrics` member of a complete JSON response body (chat, completions, `/v1/responses`):
/// `None` when the body has no such member at its top level or is not a JSON object.
pub fn body_metrics(body: &[u8]) -> Option<MetricsField> {
    let layout = super::json_scan::scan_object(body).ok()?;
    let member = layout.find(body, "metrics")?;
    Some(parse_metrics(member.value(body)))
}

/// Usage from a complete non-streaming response body: chat/completions (`usage.prompt_tokens`,
/// `usage.completion_tokens`), `/v1/responses` (`usage.input_tokens`, `usage.output_tokens`),
/// embeddings (`usage.prompt_tokens` only). `None` when the body has no usable usage.
pub fn parse_usage(endpoint: Endpoint, body: &[u8]) -> Option<Usage> {
    match endpoint {
        Endpoint::Responses => {
            let r: ResponseView<'_> = serde_json::from_slice(body).ok()?;
            let u = r.usage?;
            Some(Usage {
                prompt_tokens: u.input_tokens?,
                completion_tokens: u.output_tokens.unwrap_or(0),
            })
        }
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
            let b: BodyView = serde_json::from_slice(body).ok()?;
            usage_of(endpoint, b.usage?)
        }
        Endpoint::Other => None,
    }
}

/// The counts of a chat/completions/embeddings `usage` object.
fn usage_of(endpoint: Endpoint, u: UsageView) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: u.prompt_tokens?,
        completion_tokens: if endpoint == Endpoint::Embeddings {
            0
        } else {
            u.completion_tokens.unwrap_or(0)
        },
    })
}

/// [`parse_usage`] and [`body_metrics`] of one complete JSON response body, equal to calling
/// both, in one pass where it can: a chat/completions/embeddings body that serde reads whole as an
/// object with at most one `usage` gives both figures from that read (serde has then validated the
/// JSON, on which the member scanner of [`body_metrics`] finds the same last `metrics`, provided
/// the scanner's nesting bound cannot be reached: no more opening brackets than it allows); any
/// other body takes the two separate reads. The non-streaming path reads every JSON response so.
pub fn usage_and_metrics(endpoint: Endpoint, body: &[u8]) -> (Option<Usage>, Option<MetricsField>) {
    let one_pass = matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    ) && within_depth(body);
    if one_pass {
        if let Ok(top) = serde_json::from_slice::<TopView>(body) {
            let usage = top.usage.and_then(|u| usage_of(endpoint, u));
            return (usage, top.metrics.as_ref().map(metrics_from_value));
        }
    }
    (parse_usage(endpoint, body), body_metrics(body))
}

/// Whether `body` has no more opening brackets than [`super::json_scan::MAX_DEPTH`] (so that the
/// member scanner's nesting bound cannot be reached). memchr's vector search, stopping at the first
/// bracket past the bound: a byte-wise count of a 700-byte body was ~0.6 % of the proxy's worker
/// on 16-token JSON responses.
fn within_depth(body: &[u8]) -> bool {
    memchr::memchr2_iter(b'{', b'[', body)
        .nth(super::json_scan::MAX_DEPTH)
        .is_none()
}

/// A whole response body read once for [`usage_and_metrics`]: `usage` as [`BodyView`] reads it
/// (a duplicate is an error, as in a derived struct), the last `metrics` value, all else skipped.
/// Only a JSON object is accepted (a derived struct also takes an array).
struct TopView {
    usage: Option<UsageView>,
    metrics: Option<serde_json::Value>,
}

/// The top-level keys [`TopView`] tells apart (escapes decoded, as serde's derive does).
enum TopKey {
    Usage,
    Metrics,
    Other,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TopKey, E> {
                Ok(match v {
                    "usage" => TopKey::Usage,
                    "metrics" => TopKey::Metrics,
                    _ => TopKey::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for TopView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> serde::de::Visitor<'de> for TopVisitor {
            type Value = TopView;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopView, A::Error> {
                let mut usage: Option<Option<UsageView>> = None;
                let mut metrics = None;
                while let Some(key) = map.next_key::<TopKey>()? {
                    match key {
                        TopKey::Usage => {
                            if usage.is_some() {
                                return Err(serde::de::Error::duplicate_field("usage"));
                            }
                            usage = Some(map.next_value()?);
                        }
                        TopKey::Metrics => metrics = Some(map.next_value()?),
                        TopKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(TopView {
                    usage: usage.flatten(),
                    metrics,
                })
            }
        }
        d.deserialize_map(TopVisitor)
    }
}

/// Bytes of a response's end kept by [`UsageTail`]: vLLM writes `usage` near the end of a JSON
/// body (a few hundred bytes before it), and 4 KiB keeps a request within its memory budget.
pub const USAGE_TAIL_BYTES: usize = 4096;

/// The last [`USAGE_TAIL_BYTES`] of a non-streaming body too large to read whole, so that its exact
/// counts can still be read from the `usage` object at its end. A body whose `usage` sits further
/// from the end (e.g. followed by long `prompt_logprobs`) keeps its estimated counts.
#[derive(Debug, Default)]
pub struct UsageTail {
    buf: Vec<u8>,
}

impl UsageTail {
    /// Keeps the last [`USAGE_TAIL_BYTES`] of the body seen so far (never more: one allocation).
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= USAGE_TAIL_BYTES {
            self.buf.clear();
            self.buf
                .extend_from_slice(&bytes[bytes.len() - USAGE_TAIL_BYTES..]);
            return;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(USAGE_TAIL_BYTES);
        }
        let over = (self.buf.len() + bytes.len()).saturating_sub(USAGE_TAIL_BYTES);
        self.buf.drain(..over);
        self.buf.extend_from_slice(bytes);
    }

    /// The usage in the tail: the last `"usage":` member whose value parses as an object, read
    /// with [`parse_usage`]'s rules. (Inside a JSON string the quotes would be escaped, so the bytes
    /// `"usage":` can only be a key.)
    pub fn usage(&self, endpoint: Endpoint) -> Option<Usage> {
        const KEY: &[u8] = b"\"usage\"";
        let finder = memchr::memmem::FinderRev::new(KEY);
        let mut end = self.buf.len();
        while let Some(at) = finder.rfind(&self.buf[..end]) {
            end = at;
            let rest = self.buf[at + KEY.len()..].trim_ascii_start();
            let Some(rest) = rest.strip_prefix(b":") else {
                continue;
            };
            let mut values =
                serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
            if let Some(Ok(value @ serde_json::Value::Object(_))) = values.next() {
                let body = serde_json::json!({ "usage": value }).to_string();
                return parse_usage(endpoint, body.as_bytes());
            }
        }
        None
    }
}

impl UsageTail {
    /// vLLM's per-request `metrics` in the tail: the last `"metrics":` member whose value parses as
    /// an object or `null` (vLLM writes it after `usage` in chat/completions bodies and a few hundred
    /// bytes before the end of `/v1/responses` bodies).
    pub fn metrics(&self) -> Option<MetricsField> {
        const KEY: &[u8] = b"\"metrics\"";
        let finder = memchr::memmem::FinderRev::new(KEY);
        let mut end = self.buf.len();
        while let Some(at) = finder.rfind(&self.buf[..end]) {
            end = at;
            let rest = self.buf[at + KEY.len()..].trim_ascii_start();
            let Some(rest) = rest.strip_prefix(b":") else {
                continue;
            };
            let mut values =
                serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
            if let Some(Ok(value)) = values.next() {
                if value.is_object() || value.is_null() {
                    return Some(metrics_from_value(&value));
                }
            }
        }
        None
    }
}

/// A bounded copy of a non-streaming response body, for [`parse_usage`] once it is complete. Past
/// the limit it stops copying (the body is still forwarded by the relay) and reports overflow.
#[derive(Debug)]
pub struct BodyAccumulator {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl BodyAccumulator {
    /// Keeps at most `limit` bytes.
    pub fn new(limit: usize) -> BodyAccumulator {
        BodyAccumulator {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    /// Appends a frame's bytes (dropping everything once over the limit).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.buf.len() + bytes.len() > self.limit {
            self.overflowed = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the body exceeded the limit (usage is then unknown).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The body so far (empty after overflow).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Usage of the complete body, unless it overflowed.
    pub fn usage(&self, endpoint: Endpoint) -> Option<Usage> {
        if self.overflowed {
            return None;
        }
        parse_usage(endpoint, &self.buf)
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
