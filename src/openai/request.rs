//! The lenient request view: what accounting and usage injection need from a client's request (method,
//! path, headers and a bounded copy of its body), read without ever failing. A body that is not a JSON
//! object, or is compressed, gives a view that is merely not `accountable`; forwarding never depends
//! on this module. Owns the prompt-size estimate; it must not touch the body bytes themselves.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::observe::Endpoint;

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

#[derive(Default)]
struct Fields {
    model: Option<String>,
    user: Option<String>,
    stream: Option<bool>,
    stream_options: StreamOptionsView,
    n: Option<u64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    measure: Measure,
    prompts: u32,
}

/// Any JSON value reduced to the scalar shapes the view uses; containers are skipped.
enum Scalar {
    Str(String),
    Bool(bool),
    UInt(u64),
    Float(f64),
    Other,
}

impl Scalar {
    fn string(self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
    fn boolean(self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// Non-negative integers, also written as integral floats (`8.0`), as pydantic accepts them.
    fn uint(self) -> Option<u64> {
        match self {
            Scalar::UInt(v) => Some(v),
            Scalar::Float(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => {
                Some(f as u64)
            }
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// The top level: `Some(fields)` for an object, `None` for any other JSON value.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Option<Fields>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON request body")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Option<Fields>, A::Error> {
        let mut f = Fields::default();
        while let Some(key) = a.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "model" => f.model = a.next_value::<Scalar>()?.string(),
                "user" => f.user = a.next_value::<Scalar>()?.string(),
                "stream" => f.stream = a.next_value::<Scalar>()?.boolean(),
                "n" => f.n = a.next_value::<Scalar>()?.uint(),
                "max_tokens" => f.max_tokens = a.next_value::<Scalar>()?.uint(),
                "max_completion_tokens" => {
                    f.max_completion_tokens = a.next_value::<Scalar>()?.uint()
                }
                "max_output_tokens" => f.max_output_tokens = a.next_value::<Scalar>()?.uint(),
                "stream_options" => f.stream_options = a.next_value_seed(OptionsSeed)?,
                "messages" | "input" | "instructions" | "prompt" => {
                    let mut m = Measure::default();
                    a.next_value_seed(MeasureSeed {
                        acc: &mut m,
                        depth: 0,
                        skip: false,
                    })?;
                    if key == "prompt" {
                        f.prompts = if m.top_is_seq && m.top_items_nonint > 0 {
                            m.top_items_nonint
                        } else {
                            1
                        };
                    }
                    f.measure.text_bytes += m.text_bytes;
                    f.measure.token_ids += m.token_ids;
                }
                _ => {
                    a.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(f))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Option<Fields>, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Fields>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Fields>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Fields>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Fields>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Fields>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Fields>, E> {
        Ok(None)
    }
}

struct OptionsSeed;

impl<'de> DeserializeSeed<'de> for OptionsSeed {
    type Value = StreamOptionsView;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptionsSeed {
    type Value = StreamOptionsView;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("stream options")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut v = StreamOptionsView {
            key_present: true,
            is_object: true,
            ..Default::default()
        };
        while let Some(key) = a.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "include_usage" => v.include_usage = a.next_value::<Scalar>()?.boolean(),
                "continuous_usage_stats" => {
                    v.continuous_usage_stats = a.next_value::<Scalar>()?.boolean()
                }
                _ => {
                    a.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(v)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_object())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(not_object())
    }
}

fn not_object() -> StreamOptionsView {
    StreamOptionsView {
        key_present: true,
        ..Default::default()
    }
}

/// Sizes of the prompt-bearing fields.
#[derive(Default)]
struct Measure {
    text_bytes: u64,
    token_ids: u64,
    top_is_seq: bool,
    top_items_nonint: u32,
    last_top_int: bool,
}

/// Keys whose string values are not prompt text (roles, ids, media payloads).
const NOT_TEXT_KEYS: &[&str] = &[
    "role",
    "type",
    "name",
    "id",
    "tool_call_id",
    "call_id",
    "image_url",
    "url",
    "input_audio",
    "audio",
    "file",
    "file_id",
    "data",
    "detail",
    "format",
    "status",
];

struct MeasureSeed<'m> {
    acc: &'m mut Measure,
    depth: u32,
    skip: bool,
}

impl<'de> DeserializeSeed<'de> for MeasureSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MeasureSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("prompt content")
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        if !self.skip {
            self.acc.text_bytes += v.len() as u64;
        }
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        // Token-id prompts (`[1, 2, 3]` or `[[1, 2], [3]]`) count one token per id.
        if !self.skip && self.depth > 0 {
            self.acc.token_ids += 1;
        }
        if self.depth == 1 {
            self.acc.last_top_int = true;
        }
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_u64(v.unsigned_abs())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let top = self.depth == 0;
        if top {
            self.acc.top_is_seq = true;
        }
        loop {
            self.acc.last_top_int = false;
            let seed = MeasureSeed {
                acc: &mut *self.acc,
                depth: self.depth + 1,
                skip: self.skip,
            };
            if a.next_element_seed(seed)?.is_none() {
                break;
            }
            // A top-level item that is not a bare token id is one prompt (a string or id list).
            if top && !self.acc.last_top_int {
                self.acc.top_items_nonint = self.acc.top_items_nonint.saturating_add(1);
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while let Some(key) = a.next_key::<Cow<'de, str>>()? {
            let skip = self.skip || NOT_TEXT_KEYS.contains(&key.as_ref());
            a.next_value_seed(MeasureSeed {
                acc: &mut *self.acc,
                depth: self.depth + 1,
                skip,
            })?;
        }
        Ok(())
    }
}
