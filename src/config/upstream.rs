//! The upstream's base URL: validated once at start-up, then only its parts are used.

use http::Uri;
use serde::Serialize;

/// The upstream server: an `http://` base URL, possibly with a path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamUrl {
    /// `host:port` (port defaulted to 80).
    pub authority: String,
    /// Path prefix without a trailing slash ("" for none).
    pub path_prefix: String,
}

impl UpstreamUrl {
    /// Parses `http://host[:port][/prefix]`. TLS upstreams are not supported (vLLM serves plain HTTP
    /// on the node; put TLS in front of joulegate, not behind it).
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err("https upstreams are not supported; use http://".into()),
            _ => return Err("expected http://host:port".into()),
        }
        let auth = uri.authority().ok_or("missing host")?;
        if auth.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let authority = match auth.port_u16() {
            Some(_) => auth.as_str().to_string(),
            None => format!("{}:80", auth.host()),
        };
        if uri.query().is_some() {
            return Err("a query string is not allowed".into());
        }
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            authority,
            path_prefix,
        })
    }

    /// The `http://host:port` form.
    pub fn base(&self) -> String {
        format!("http://{}{}", self.authority, self.path_prefix)
    }
}
