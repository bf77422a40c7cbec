//! The request phase of accounting: decide whether a request is model work, read a bounded copy of
//! its body into the lenient [`RequestView`], apply the documented usage injection, and register it
//! in the in-flight registry. Everything else is forwarded untouched and not accounted.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::request::Parts;
use http::{HeaderValue, Method};
use sha2::Sha256;

use super::headers::ENERGY_TAG;
use crate::observe::{Endpoint, RequestMeta};
use crate::openai::inject::{plan_injection, InjectionPlan};
use crate::openai::request::{endpoint_of, parse_request, RequestView, ViewConfig};
use crate::openai::semantics::UsageSemantics;

/// Longest `x-energy-tag` kept (longer tags are cut at a character boundary).
pub const MAX_TAG_BYTES: usize = 128;

/// How the upstream reads `stream_options`, shared and updatable once the upstream's `/version` is
/// known, and once it is seen forcing usage (`upstream_forces_usage = "auto"`).
#[derive(Debug)]
pub struct SharedSemantics {
    absent_include_usage: AtomicBool,
    force_include_usage: AtomicBool,
    /// Whether forcing may still be learned from the upstream (configured `auto`).
    force_auto: bool,
    /// How `force_include_usage` became known: [`ForceSource`] as a `u8`.
    force_source: AtomicU8,
    /// Turns true once forcing is known (configured, or learned), for [`SharedSemantics::force_known`].
    known: tokio::sync::watch::Sender<bool>,
}

/// How the proxy knows whether its upstream forces usage on every stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ForceSource {
    /// Not known yet (`auto`, nothing seen): assumed not forcing.
    Unknown = 0,
    /// Set by configuration (`upstream_forces_usage = true | false`).
    Config = 1,
    /// The start-up probe (a one-token stream that asked for no usage) answered.
    Probe = 2,
    /// A stream the proxy did not inject into carried usage its client had not asked for.
    Stream = 3,
}

impl ForceSource {
    /// The `/stats` form.
    pub fn as_str(self) -> &'static str {
        match self {
            ForceSource::Unknown => "unknown",
            ForceSource::Config => "config",
            ForceSource::Probe => "probe",
            ForceSource::Stream => "stream",
        }
    }

    fn from_u8(v: u8) -> ForceSource {
        match v {
            1 => ForceSource::Config,
            2 => ForceSource::Probe,
            3 => ForceSource::Stream,
            _ => ForceSource::Unknown,
        }
    }
}

impl SharedSemantics {
    /// Starts from `initial`; `force_auto` lets [`SharedSemantics::learn_forced`] change the
    /// forcing flag later (otherwise it was configured and stays as given).
    pub fn new(initial: UsageSemantics, force_auto: bool) -> Self {
        SharedSemantics {
            absent_include_usage: AtomicBool::new(initial.absent_include_usage),
            force_include_usage: AtomicBool::new(initial.force_include_usage),
            force_auto,
            force_source: AtomicU8::new(if force_auto {
                ForceSource::Unknown as u8
            } else {
                ForceSource::Config as u8
            }),
            known: tokio::sync::watch::channel(!force_auto).0,
        }
    }

    /// Resolves once forcing is known: at once when configured, else when the start-up probe or a
    /// stream told (never, if neither ever does). Lets a caller plan after the probe instead of
    /// guessing how long it takes.
    pub async fn force_known(&self) {
        let mut rx = self.known.subscribe();
        // The sender lives in `self`, so the wait ends only when the flag turns true.
        let _ = rx.wait_for(|known| *known).await;
    }

    /// The current semantics.
    pub fn get(&self) -> UsageSemantics {
        UsageSemantics {
            absent_include_usage: self.absent_include_usage.load(Relaxed),
            force_include_usage: self.force_include_usage.load(Relaxed),
        }
    }

    /// Sets how an absent `include_usage` reads (after `/version` was read); forcing is kept.
    pub fn set_absent_include_usage(&self, absent: bool) {
        self.absent_include_usage.store(absent, Relaxed);
    }

    /// Whether forcing may still be learned (configured `auto`).
    pub fn force_auto(&self) -> bool {
        self.force_auto
    }

    /// How forcing is known.
    pub fn force_source(&self) -> ForceSource {
        ForceSource::from_u8(self.force_source.load(Relaxed))
    }

    /// Records what `source` learned about forcing, when configured `auto`: from then on streaming
    /// requests are planned as the forcing server answers them (nothing injected, nothing removed).
    /// Returns whether this call changed the flag. A configured value never changes.
    pub fn learn_forced(&self, forced: bool, source: ForceSource) -> bool {
        if !self.force_auto {
            return false;
        }
        self.force_source.store(source as u8, Relaxed);
        let before = self.force_include_usage.swap(forced, Relaxed);
        self.known.send_replace(true);
        if before != forced {
            if forced {
                tracing::warn!(
                    how = source.as_str(),
                    "the upstream forces usage on every stream (vLLM --enable-force-include-usage): \
                     its usage chunks now reach clients as the upstream sends them"
                );
            } else {
                tracing::info!(how = source.as_str(), "the upstream does not force usage");
            }
        }
        before != forced
    }
}

/// Settings of the request phase.
#[derive(Debug)]
pub struct InspectConfig {
    /// Prompt-size estimate settings.
    pub view: ViewConfig,
    /// Whether to add `stream_options` for exact streamed counts.
    pub inject_usage: bool,
    /// Whether the final usage chunk carries an `energy` object.
    pub energy_in_usage: bool,
    /// Upstream semantics of `stream_options` (shared with the relay, which may learn that the
    /// upstream forces usage).
    pub semantics: Arc<SharedSemantics>,
    /// The API-key hash, keyed with the salt.
    pub key_hasher: KeyHasher,
}

/// Whether a request may be model work worth buffering and reading.
pub fn is_candidate(method: &Method, path: &str) -> bool {
    method == Method::POST && endpoint_of(path) != Endpoint::Other
}

/// The result of inspecting an accountable request.
#[derive(Debug)]
pub struct Inspected {
    /// What the request asks for.
    pub view: RequestView,
    /// What the proxy injected (and so must remove from the response).
    pub plan: InjectionPlan,
    /// The body to forward (the client's bytes, or the injected edit).
    pub body: Bytes,
}

/// Reads the view of a buffered body and applies injection. `None` if the body is not accountable.
pub fn inspect(cfg: &InspectConfig, parts: &Parts, body: Bytes) -> Result<Inspected, Bytes> {
    let view = parse_request(
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        &body,
        &cfg.view,
    );
    if !view.accountable {
        return Err(body);
    }
    let plan = plan_injection(&view, &body, cfg.semantics.get(), cfg.inject_usage);
    let body = plan.body.clone().unwrap_or(body);
    Ok(Inspected { view, plan, body })
}

/// The facts of a request fixed at arrival.
pub fn request_meta(
    cfg: &InspectConfig,
    id: u64,
    parts: &Parts,
    view: &RequestView,
    arrival_ns: u64,
) -> RequestMeta {
    RequestMeta {
        id,
        model: view.model.clone(),
        endpoint: view.endpoint,
        key_hash: api_key(parts).map(|k| cfg.key_hasher.hash(k)),
        tag: parts.headers.get(ENERGY_TAG).and_then(tag_of),
        stream: view.stream,
        arrival_ns,
        estimated_prompt_tokens: view.estimated_prompt_tokens,
        choices: u32::try_from(view.expected_choices())
            .unwrap_or(u32::MAX)
            .max(1),
        max_tokens: view.max_output(),
    }
}

/// The bearer token of `Authorization`, or `api-key` (Azure-style clients).
fn api_key(parts: &Parts) -> Option<&[u8]> {
    if let Some(v) = parts.headers.get(http::header::AUTHORIZATION) {
        let bytes = v.as_bytes();
        let token = bytes
            .strip_prefix(b"Bearer ")
            .or_else(|| bytes.strip_prefix(b"bearer "))
            .unwrap_or(bytes);
        let token = token.trim_ascii();
        if !token.is_empty() {
            return Some(token);
        }
    }
    parts
        .headers
        .get("api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
}

/// A keyed hash of an API key (HMAC-SHA256, first 8 bytes in hex): the key itself is never kept.
pub fn key_hash(salt: &[u8], key: &[u8]) -> String {
    KeyHasher::new(salt).hash(key)
}

/// [`key_hash`] under one salt, its HMAC key schedule (two SHA-256 blocks of the four a short key
/// costs) computed once rather than on every request. Its `Debug` never shows the salt.
#[derive(Clone)]
pub struct KeyHasher(Option<Hmac<Sha256>>);

impl KeyHasher {
    /// The hasher of `salt`.
    pub fn new(salt: &[u8]) -> Self {
        // HMAC accepts keys of any length; `None` cannot happen.
        KeyHasher(Hmac::<Sha256>::new_from_slice(salt).ok())
    }

    /// The hash of `key`: 16 lowercase hex digits.
    pub fn hash(&self, key: &[u8]) -> String {
        let Some(keyed) = &self.0 else {
            return String::from("unhashable");
        };
        let mut mac = keyed.clone();
        mac.update(key);
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(16);
        for b in &digest[..8] {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        text
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

/// A printable, bounded tag from the header value.
fn tag_of(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?.trim();
    if s.is_empty() {
        return None;
    }
    let mut end = s.len().min(MAX_TAG_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::post("/v1/chat/completions");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_are_hashed_with_the_salt_never_kept() {
        let a = key_hash(b"salt-1", b"sk-secret");
        assert_eq!(a.len(), 16);
        assert_eq!(a, key_hash(b"salt-1", b"sk-secret"));
        assert_ne!(a, key_hash(b"salt-2", b"sk-secret"));
        // The reference: HMAC-SHA256 computed afresh, its first 8 bytes formatted one by one.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"salt-1").unwrap();
        mac.update(b"sk-secret");
        let digest = mac.finalize().into_bytes();
        let reference: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a, reference);
        let hasher = KeyHasher::new(b"salt-1");
        assert_eq!(hasher.hash(b"sk-secret"), a);
        assert_eq!(
            hasher.hash(b"sk-secret"),
            a,
            "the keyed state is reused, not consumed"
        );
        assert!(!format!("{hasher:?}").contains("salt"));
        assert!(!a.contains("secret"));
        let p = parts(&[("authorization", "Bearer sk-secret")]);
        assert_eq!(api_key(&p), Some(&b"sk-secret"[..]));
        assert_eq!(api_key(&parts(&[("api-key", "k2")])), Some(&b"k2"[..]));
        assert_eq!(api_key(&parts(&[])), None);
    }

    /// `force_known` resolves at once when configured, and once something is learned under auto.
    #[tokio::test]
    async fn forcing_becomes_known_when_configured_or_learned() {
        let initial = UsageSemantics {
            absent_include_usage: false,
            force_include_usage: false,
        };
        SharedSemantics::new(initial, false).force_known().await;
        let auto = std::sync::Arc::new(SharedSemantics::new(initial, true));
        let waiter = tokio::spawn({
            let auto = auto.clone();
            async move { auto.force_known().await }
        });
        assert!(auto.learn_forced(true, ForceSource::Probe));
        waiter.await.unwrap();
        assert_eq!(auto.force_source(), ForceSource::Probe);
        assert!(auto.get().force_include_usage);
    }

    #[test]
    fn tags_are_bounded() {
        let long = "é".repeat(100);
        let t = tag_of(&HeaderValue::from_bytes(long.as_bytes()).unwrap());
        // non-ASCII header values are not `to_str`-able: no tag rather than a mangled one
        assert_eq!(t, None);
        let t = tag_of(&HeaderValue::from_str(&"x".repeat(500)).unwrap()).unwrap();
        assert_eq!(t.len(), MAX_TAG_BYTES);
        assert_eq!(
            tag_of(&HeaderValue::from_static("  run-7 ")).as_deref(),
            Some("run-7")
        );
    }

    #[test]
    fn candidates_are_posts_to_model_endpoints() {
        assert!(is_candidate(&Method::POST, "/v1/chat/completions"));
        assert!(!is_candidate(&Method::GET, "/v1/chat/completions"));
        assert!(!is_candidate(&Method::POST, "/tokenize"));
    }
}
