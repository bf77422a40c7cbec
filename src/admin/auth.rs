//! Bearer-token check of the admin listener (`admin_token`).
//!
//! Owns the comparison only. Both sides are hashed with SHA-256 first and the digests compared in
//! constant time, so neither the token's content nor its length leaks through timing.

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// The configured token, kept as its digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token, nor its digest.
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A checker for `token`.
    pub fn new(token: &str) -> Self {
        AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <token>` (scheme case-insensitive).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some((scheme, rest)) = value.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        self.matches(rest.trim_ascii())
    }

    /// Whether a URL query carries `token=<token>` (percent-encoded). Only the live page takes
    /// it this way (a browser cannot add a header to a navigation); every data route needs the
    /// header.
    pub fn allows_query(&self, query: Option<&str>) -> bool {
        query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.strip_prefix("token="))
            .filter_map(super::requests::percent_decode)
            .any(|t| self.matches(t.as_bytes()))
    }

    fn matches(&self, given: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(given).into();
        constant_time_eq(&given, &self.digest)
    }
}

/// Equality of two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into a short-circuit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn accepts_only_the_right_bearer_token() {
        let t = AdminToken::new("s3cret");
        assert!(t.allows(&with("Bearer s3cret")));
        assert!(t.allows(&with("bearer s3cret")));
        assert!(!t.allows(&with("Bearer s3cre")));
        assert!(!t.allows(&with("Bearer s3cret2")));
        assert!(!t.allows(&with("Basic s3cret")));
        assert!(!t.allows(&with("Bearer")));
        assert!(!t.allows(&HeaderMap::new()));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn the_query_form_takes_a_percent_encoded_token() {
        let t = AdminToken::new("a b/c");
        assert!(t.allows_query(Some("token=a%20b%2Fc")));
        assert!(t.allows_query(Some("x=1&token=a+b/c")));
        assert!(!t.allows_query(Some("token=a%20b")));
        assert!(!t.allows_query(Some("tokens=a%20b%2Fc")));
        assert!(!t.allows_query(Some("token=%zz")));
        assert!(!t.allows_query(None));
    }
}
