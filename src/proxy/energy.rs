//! How a request's energy is written on its response: `x-energy-*` headers (non-streaming), the same
//! fields as trailers (streams), and the `energy` object in a stream's final usage chunk.
//!
//! Joules are printed exactly from integer micro-joules (`12.345678`), never via floating point.
//! When energy is unavailable the joule fields are left out and `x-energy-status: unavailable` says
//! why; token counts and the request id are always present.

use http::{HeaderMap, HeaderValue};

use super::headers::{
    ENERGY_ACTIVE_JOULES, ENERGY_CO2_GRAMS, ENERGY_COMPLETION_TOKENS, ENERGY_JOULES,
    ENERGY_JOULES_PER_TOKEN, ENERGY_PROMPT_TOKENS, ENERGY_REQUEST_ID, ENERGY_STATUS,
};
use crate::observe::{EnergyNow, EnergyStatus};

/// Micro-joules in a kilowatt-hour.
const UJ_PER_KWH: f64 = 3.6e12;

/// Carbon settings: `co2_g = kWh x carbon_intensity_g_per_kwh x pue`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Carbon {
    /// Grid carbon intensity, grams CO2 per kWh (none: no CO2 figures).
    pub intensity_g_per_kwh: Option<f64>,
    /// Power usage effectiveness of the facility (1.0 = none).
    pub pue: f64,
}

impl Carbon {
    /// Grams of CO2 for `energy_uj`, when configured.
    pub fn grams(&self, energy_uj: u64) -> Option<f64> {
        self.intensity_g_per_kwh
            .map(|i| energy_uj as f64 / UJ_PER_KWH * i * self.pue)
    }
}

/// Exact decimal joules of an integer micro-joule count.
pub fn joules_text(uj: u64) -> String {
    format!("{}.{:06}", uj / 1_000_000, uj % 1_000_000)
}

fn per_token(e: &EnergyNow) -> Option<f64> {
    let tokens = e.prompt_tokens + e.completion_tokens;
    (tokens > 0).then(|| e.energy_uj as f64 / 1e6 / tokens as f64)
}

/// A header value formatted on the stack: every response carries up to seven of these, and a
/// `String` per field was a measurable part of the proxy's own CPU per request.
struct ValueBuf {
    bytes: [u8; 64],
    len: usize,
}

impl ValueBuf {
    fn new() -> Self {
        ValueBuf {
            bytes: [0; 64],
            len: 0,
        }
    }

    /// The header value of what was written (`invalid` if it overflowed, which our figures cannot:
    /// the longest, `u64::MAX` micro-joules, is 21 bytes; an `f64` with six decimals at most 317).
    fn value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.bytes[..self.len])
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

impl std::fmt::Write for ValueBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `args` formatted as a header value without a heap string.
fn value_fmt(args: std::fmt::Arguments<'_>) -> HeaderValue {
    use std::fmt::Write;
    let mut buf = ValueBuf::new();
    match buf.write_fmt(args) {
        Ok(()) => buf.value(),
        // Longer than the buffer: the heap path, same text.
        Err(_) => value(&args.to_string()),
    }
}

fn value(text: &str) -> HeaderValue {
    // Every text here is ASCII digits, dots, dashes and letters.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The energy fields as headers (or trailers).
pub fn energy_headers(request_id: &str, e: &EnergyNow, carbon: &Carbon) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    insert_energy_headers(&mut h, request_id, e, carbon);
    h
}

/// Inserts the energy fields into `h` (a response's own headers, from which
/// [`super::headers::strip_energy_headers`] removed any upstream `x-energy-*`), in the order and
/// with the text of [`energy_headers`].
pub fn insert_energy_headers(h: &mut HeaderMap, request_id: &str, e: &EnergyNow, carbon: &Carbon) {
    h.reserve(8);
    h.insert(ENERGY_REQUEST_ID, value(request_id));
    if e.status != EnergyStatus::Unavailable {
        let (j, uj) = (e.energy_uj / 1_000_000, e.energy_uj % 1_000_000);
        h.insert(ENERGY_JOULES, value_fmt(format_args!("{j}.{uj:06}")));
        let (j, uj) = (e.active_uj / 1_000_000, e.active_uj % 1_000_000);
        h.insert(ENERGY_ACTIVE_JOULES, value_fmt(format_args!("{j}.{uj:06}")));
        if let Some(j) = per_token(e) {
            h.insert(ENERGY_JOULES_PER_TOKEN, value_fmt(format_args!("{j:.6}")));
        }
        if let Some(g) = carbon.grams(e.energy_uj) {
            h.insert(ENERGY_CO2_GRAMS, value_fmt(format_args!("{g:.6}")));
        }
    }
    h.insert(ENERGY_PROMPT_TOKENS, HeaderValue::from(e.prompt_tokens));
    h.insert(
        ENERGY_COMPLETION_TOKENS,
        HeaderValue::from(e.completion_tokens),
    );
    h.insert(ENERGY_STATUS, HeaderValue::from_static(e.status.as_str()));
}

/// The `energy` object added to a stream's final usage chunk (JSON text).
pub fn energy_json(request_id: &str, e: &EnergyNow, carbon: &Carbon) -> String {
    let available = e.status != EnergyStatus::Unavailable;
    let mut obj = serde_json::Map::new();
    obj.insert("request_id".into(), request_id.into());
    if available {
        obj.insert("joules".into(), raw_number(&joules_text(e.energy_uj)));
        obj.insert(
            "active_joules".into(),
            raw_number(&joules_text(e.active_uj)),
        );
        if let Some(j) = per_token(e) {
            obj.insert("joules_per_token".into(), j.into());
        }
        if let Some(g) = carbon.grams(e.energy_uj) {
            obj.insert("co2_grams".into(), g.into());
        }
    } else {
        obj.insert("joules".into(), serde_json::Value::Null);
    }
    obj.insert("prompt_tokens".into(), e.prompt_tokens.into());
    obj.insert("completion_tokens".into(), e.completion_tokens.into());
    obj.insert("status".into(), e.status.as_str().into());
    serde_json::Value::Object(obj).to_string()
}

/// A JSON number from exact decimal text (falls back to f64 parsing, which cannot fail for our text).
fn raw_number(text: &str) -> serde_json::Value {
    text.parse::<f64>()
        .map(serde_json::Value::from)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(status: EnergyStatus) -> EnergyNow {
        EnergyNow {
            energy_uj: 12_345_678,
            active_uj: 10_000_001,
            prompt_tokens: 20,
            completion_tokens: 5,
            status,
        }
    }

    #[test]
    fn joules_are_exact_decimals() {
        assert_eq!(joules_text(0), "0.000000");
        assert_eq!(joules_text(1), "0.000001");
        assert_eq!(joules_text(12_345_678), "12.345678");
        assert_eq!(joules_text(u64::MAX), "18446744073709.551615");
    }

    #[test]
    fn headers_carry_every_field() {
        let carbon = Carbon {
            intensity_g_per_kwh: Some(400.0),
            pue: 1.2,
        };
        let h = energy_headers("jg-1", &figures(EnergyStatus::Ok), &carbon);
        assert_eq!(h["x-energy-request-id"], "jg-1");
        assert_eq!(h["x-energy-joules"], "12.345678");
        assert_eq!(h["x-energy-active-joules"], "10.000001");
        assert_eq!(h["x-energy-prompt-tokens"], "20");
        assert_eq!(h["x-energy-completion-tokens"], "5");
        assert_eq!(h["x-energy-joules-per-token"], "0.493827");
        assert_eq!(h["x-energy-status"], "ok");
        let co2: f64 = h["x-energy-co2-grams"].to_str().unwrap().parse().unwrap();
        assert!((co2 - 12.345678 / 3.6e6 * 400.0 * 1.2).abs() < 1e-6);
    }

    #[test]
    fn stack_formatting_matches_strings() {
        let carbon = Carbon {
            intensity_g_per_kwh: Some(1e300),
            pue: 1e8,
        };
        for (uj, active, p, c) in [
            (0, 0, 0, 0),
            (1, 0, 1, 0),
            (12_345_678, 10_000_001, 20, 5),
            (u64::MAX, u64::MAX, u64::MAX / 4, u64::MAX / 4),
        ] {
            let e = EnergyNow {
                energy_uj: uj,
                active_uj: active,
                prompt_tokens: p,
                completion_tokens: c,
                status: EnergyStatus::Ok,
            };
            let h = energy_headers("jg-1", &e, &carbon);
            assert_eq!(h["x-energy-joules"], joules_text(uj).as_str());
            assert_eq!(h["x-energy-active-joules"], joules_text(active).as_str());
            assert_eq!(h["x-energy-prompt-tokens"], p.to_string().as_str());
            assert_eq!(h["x-energy-completion-tokens"], c.to_string().as_str());
            if let Some(j) = per_token(&e) {
                assert_eq!(h["x-energy-joules-per-token"], format!("{j:.6}").as_str());
            }
            // Over 64 bytes (about 1e300 grams): the heap path gives the same text.
            let g = carbon.grams(uj).unwrap();
            assert_eq!(h["x-energy-co2-grams"], format!("{g:.6}").as_str());
        }
    }

    #[test]
    fn unavailable_energy_leaves_joules_out() {
        let h = energy_headers(
            "jg-1",
            &figures(EnergyStatus::Unavailable),
            &Carbon::default(),
        );
        assert!(h.get("x-energy-joules").is_none());
        assert!(h.get("x-energy-co2-grams").is_none());
        assert_eq!(h["x-energy-status"], "unavailable");
        let j: serde_json::Value = serde_json::from_str(&energy_json(
            "jg-1",
            &figures(EnergyStatus::Unavailable),
            &Carbon::default(),
        ))
        .unwrap();
        assert!(j["joules"].is_null());
        assert_eq!(j["status"], "unavailable");
    }

    #[test]
    fn json_object_fields() {
        let j: serde_json::Value = serde_json::from_str(&energy_json(
            "jg-9",
            &figures(EnergyStatus::Estimated),
            &Carbon::default(),
        ))
        .unwrap();
        assert_eq!(j["request_id"], "jg-9");
        assert_eq!(j["joules"], 12.345678);
        assert_eq!(j["active_joules"], 10.000001);
        assert_eq!(j["status"], "estimated");
        assert_eq!(j["completion_tokens"], 5);
        assert!(j.get("co2_grams").is_none());
    }
}
