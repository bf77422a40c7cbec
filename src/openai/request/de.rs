//! The lenient serde machinery behind [`super::parse_request`]: every field is read on its own and a
//! wrong type only blanks that field; prompt text is measured without being copied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::StreamOptionsView;

/// The fields read from a request object.
#[derive(Default)]
pub(super) struct Fields {
    pub(super) model: Option<String>,
    pub(super) user: Option<String>,
    pub(super) stream: Option<bool>,
    pub(super) stream_options: StreamOptionsView,
    pub(super) n: Option<u64>,
    pub(super) max_tokens: Option<u64>,
    pub(super) max_completion_tokens: Option<u64>,
    pub(super) max_output_tokens: Option<u64>,
    pub(super) measure: Measure,
    pub(super) prompts: u32,
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
pub(super) struct TopVisitor;

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
pub(super) struct Measure {
    pub(super) text_bytes: u64,
    pub(super) token_ids: u64,
    pub(super) top_is_seq: bool,
    pub(super) top_items_nonint: u32,
    pub(super) last_top_int: bool,
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
