//! Header names and the hop-by-hop rules (RFC 9110 §7.6.1), in one place.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1), besides those named in
/// `Connection`. Names, not strings: comparing a standard name is one integer comparison.
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Prefix of the energy headers joulegate adds; any such header from upstream is dropped.
pub const ENERGY_PREFIX: &str = "x-energy-";
/// The request header a client uses to tag a request (a benchmark run, a batch, a tenant).
pub const ENERGY_TAG: HeaderName = HeaderName::from_static("x-energy-tag");
/// The private request header with which [`super::screen`] ends a refused request head (its value
/// names the [`super::screen::Refusal`]); a request carrying it is answered 400 and never forwarded.
pub const REFUSED_HEAD: HeaderName = HeaderName::from_static("x-joulegate-refused");
/// The id under which `/requests/{id}` serves the record.
pub const ENERGY_REQUEST_ID: HeaderName = HeaderName::from_static("x-energy-request-id");
/// Total energy of the request, joules.
pub const ENERGY_JOULES: HeaderName = HeaderName::from_static("x-energy-joules");
/// Energy above the idle baseline, joules.
pub const ENERGY_ACTIVE_JOULES: HeaderName = HeaderName::from_static("x-energy-active-joules");
/// Prompt tokens counted.
pub const ENERGY_PROMPT_TOKENS: HeaderName = HeaderName::from_static("x-energy-prompt-tokens");
/// Completion tokens counted.
pub const ENERGY_COMPLETION_TOKENS: HeaderName =
    HeaderName::from_static("x-energy-completion-tokens");
/// Joules per (prompt + completion) token.
pub const ENERGY_JOULES_PER_TOKEN: HeaderName =
    HeaderName::from_static("x-energy-joules-per-token");
/// `ok`, `estimated` or `unavailable`.
pub const ENERGY_STATUS: HeaderName = HeaderName::from_static("x-energy-status");
/// Grams of CO2, when carbon intensity is configured.
pub const ENERGY_CO2_GRAMS: HeaderName = HeaderName::from_static("x-energy-co2-grams");

/// The energy fields a stream may end with, as a `Trailer` header value.
const ENERGY_TRAILER_FIELDS: &str =
    "x-energy-request-id, x-energy-joules, x-energy-active-joules, \
x-energy-prompt-tokens, x-energy-completion-tokens, x-energy-joules-per-token, x-energy-status, \
x-energy-co2-grams";

/// Declares the energy trailers in a `Trailer` header (kept beside any the upstream declared).
/// HTTP/1.1 needs it: a chunked body may only end with the fields its head announced (RFC 9110
/// §6.6.2), and hyper drops undeclared trailer fields silently.
pub fn declare_energy_trailers(headers: &mut HeaderMap) {
    headers.append(TRAILER, HeaderValue::from_static(ENERGY_TRAILER_FIELDS));
}

/// Removes hop-by-hop headers, including every header named in `Connection`. The remaining headers
/// keep their order (`HeaderMap::remove` would move the last header into the hole).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    retain(headers, |name| {
        !HOP_BY_HOP.contains(name) && !named.contains(name)
    });
}

/// Removes every `x-energy-*` header (the proxy is the only source of those toward clients).
pub fn strip_energy_headers(headers: &mut HeaderMap) {
    retain(headers, |name| !name.as_str().starts_with(ENERGY_PREFIX));
}

/// Removes one header by name, keeping the others in order.
pub fn remove_in_order(headers: &mut HeaderMap, name: &HeaderName) {
    retain(headers, |n| n != name);
}

/// Whether a response is a server-sent event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The `Content-Length`, if present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Keeps the headers whose name passes `keep`, in their original order. Allocates only when
/// something is actually removed.
fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    if headers.keys().all(&keep) {
        return;
    }
    // Sized for what stays, so that refilling it never grows (rehashes) it on the way (an empty
    // map, growing as before, past hyper's bound on the number of fields).
    let sized = HeaderMap::try_with_capacity(headers.len()).unwrap_or_default();
    let old = std::mem::replace(headers, sized);
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        // `IntoIter` yields the name only on the first value of each name.
        if let Some(name) = name {
            current = Some(name);
        }
        if let Some(name) = &current {
            if keep(name) {
                headers.append(name.clone(), value);
            }
        }
    }
}

/// Whether the client accepts trailers (`TE: trailers`), which HTTP/1.1 needs before any are sent.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.trim()
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Whether a request asks for a WebSocket upgrade (not proxied; an `h2c` offer is simply declined).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret , close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-request-id", "content-type"]);
    }

    #[test]
    fn order_and_repeated_values_survive_removal() {
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("uvicorn"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.insert("vary", HeaderValue::from_static("Origin"));
        strip_hop_by_hop(&mut h);
        let left: Vec<(&str, &str)> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            vec![
                ("server", "uvicorn"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("vary", "Origin")
            ]
        );
    }

    #[test]
    fn strips_upstream_energy_headers_only() {
        let mut h = HeaderMap::new();
        h.insert("x-energy-joules", HeaderValue::from_static("1"));
        h.insert("X-Energy-Status", HeaderValue::from_static("ok"));
        h.insert("x-energyish", HeaderValue::from_static("keep"));
        strip_energy_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-energyish"));
    }

    #[test]
    fn energy_trailers_are_declared_beside_the_upstream_ones() {
        let mut h = HeaderMap::new();
        h.insert("trailer", HeaderValue::from_static("grpc-status"));
        declare_energy_trailers(&mut h);
        let declared: Vec<String> = h
            .get_all("trailer")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .map(|n| n.trim().to_string())
            .collect();
        assert_eq!(declared[0], "grpc-status");
        for name in [
            ENERGY_REQUEST_ID,
            ENERGY_JOULES,
            ENERGY_ACTIVE_JOULES,
            ENERGY_PROMPT_TOKENS,
            ENERGY_COMPLETION_TOKENS,
            ENERGY_JOULES_PER_TOKEN,
            ENERGY_STATUS,
            ENERGY_CO2_GRAMS,
        ] {
            assert!(declared.iter().any(|d| d == name.as_str()), "{name}");
        }
    }

    #[test]
    fn te_trailers_detection() {
        let mut h = HeaderMap::new();
        assert!(!accepts_trailers(&h));
        h.insert("te", HeaderValue::from_static("gzip, Trailers;q=1"));
        assert!(accepts_trailers(&h));
        h.insert("te", HeaderValue::from_static("gzip"));
        assert!(!accepts_trailers(&h));
    }
}
