//! `/`: the live page, one self-contained HTML document (its CSS and script inlined, charts drawn
//! as SVG by hand, no external fetch, no build step) that polls `/stats`, `/requests?limit=200` and
//! `/history` on this listener every second.
//!
//! Owns only the page's bytes and headers. The page holds no figures itself, so serving it reads no
//! state; the source lives in `live/` beside this file (`index.html`, `live.css`, `live.js`) and is
//! assembled once. With `admin_token` set, the page is reached as `/?token=…` and its script sends
//! the token as a bearer header on every data request (see [`super::auth`]).

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::proxy::{full_body, ProxyBody};

/// Finished requests the page asks for: enough to read, few enough that a ring of 10,000 costs a
/// poll no more than 200 would.
pub const RECENT_ROWS: usize = 200;

/// The page's Content-Security-Policy: inline style and script only, data only from this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

static PAGE: LazyLock<Bytes> = LazyLock::new(|| {
    let page = include_str!("live/index.html")
        .replacen("/*LIVE_CSS*/", include_str!("live/live.css"), 1)
        .replacen("/*LIVE_JS*/", include_str!("live/live.js"), 1)
        .replacen("__RECENT_ROWS__", &RECENT_ROWS.to_string(), 1);
    Bytes::from(page)
});

/// The page as a response: HTML, never cached (it may carry a token in its address), no referrer.
pub fn response() -> Response<ProxyBody> {
    let mut r = Response::new(full_body(PAGE.clone()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_assembled_and_fetches_nothing_from_elsewhere() {
        let page = std::str::from_utf8(&PAGE).expect("utf-8");
        assert!(!page.contains("/*LIVE_CSS*/") && !page.contains("/*LIVE_JS*/"));
        assert!(!page.contains("__RECENT_ROWS__"));
        assert!(page.contains(&format!("const RECENT = {RECENT_ROWS};")));
        // No external resource: no URL with a scheme besides the SVG namespace name (an
        // identifier, never fetched), no element that loads a file.
        let rest = page.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!rest.contains(needle), "{needle}");
        }
    }
}
