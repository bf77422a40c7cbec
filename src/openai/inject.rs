//! Usage injection: deciding, from the client's request and the upstream's semantics, what the client
//! asked for, and editing the request body so that vLLM streams cumulative usage on every chunk. The
//! edit is minimal (the top-level `stream_options` value is replaced, or the key is inserted before the
//! final `}`); every other byte is forwarded as the client wrote it. Removal of what was added is the
//! stream observer's job ([`super::observer`]), driven by the [`StripPolicy`] decided here.

use bytes::Bytes;

use super::json_scan::{scan_object, splice};
use super::request::RequestView;
use super::semantics::UsageSemantics;
use crate::observe::Endpoint;

/// The `stream_options` value the proxy sends upstream.
pub const INJECTED_OPTIONS: &str = r#"{"include_usage":true,"continuous_usage_stats":true}"#;

/// What a streaming response must have removed before the client sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StripPolicy {
    /// Forward usage as the upstream sends it (nothing was injected, or the client asked for
    /// exactly what was injected).
    #[default]
    Nothing,
    /// The client asked for the final usage chunk only: remove `usage` from every chunk that carries
    /// choices.
    PerChunkUsage,
    /// The client asked for no usage: remove `usage` from chunks, drop the final usage-only chunk,
    /// and move its `system_fingerprint` back to the last finish chunk (where vLLM puts it when usage
    /// is off).
    AllUsage,
}

/// The decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionPlan {
    /// The body was edited: the stream will carry usage the client may not have asked for.
    pub injected: bool,
    /// The client's own request asks for the final usage chunk (upstream semantics applied).
    pub client_wants_usage: bool,
    /// The client's own request asks for usage on every chunk.
    pub client_wants_continuous: bool,
    /// The body to forward when `injected` (otherwise forward the original).
    pub body: Option<Bytes>,
    /// What the response observer must remove.
    pub strip: StripPolicy,
}

impl InjectionPlan {
    /// Nothing injected and nothing known of what the client asked (a body forwarded uninspected):
    /// the response reaches the client as the upstream sends it.
    pub fn nothing() -> InjectionPlan {
        InjectionPlan {
            injected: false,
            client_wants_usage: false,
            client_wants_continuous: false,
            body: None,
            strip: StripPolicy::Nothing,
        }
    }
}

/// Decides whether and how to inject usage options into a request.
///
/// Injection happens only for accountable streaming chat/completions requests whose
/// `stream_options` is absent, `null` or an object, when `inject_enabled`; never with
/// `stream: false` (vLLM answers 400 to `stream_options` there) and never when the client already
/// asked for continuous usage.
pub fn plan_injection(
    view: &RequestView,
    body: &[u8],
    semantics: UsageSemantics,
    inject_enabled: bool,
) -> InjectionPlan {
    let opts = view.stream_options;
    let streaming_usage_api = view.accountable
        && view.stream
        && matches!(
            view.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        );
    let client_wants_usage =
        streaming_usage_api && semantics.client_wants_usage(opts.effective(), opts.include_usage);
    // vLLM: `include_continuous_usage = include_usage and continuous_usage_stats` (default false);
    // a forcing server sends it always, so there is nothing to inject and nothing to remove.
    let client_wants_continuous = streaming_usage_api
        && semantics.client_wants_continuous(
            opts.effective(),
            opts.include_usage,
            opts.continuous_usage_stats,
        );
    let mut plan = InjectionPlan {
        injected: false,
        client_wants_usage,
        client_wants_continuous,
        body: None,
        strip: StripPolicy::Nothing,
    };
    // Another type (`"stream_options": 5`) is the client's 400 to get; leave it alone.
    let options_editable = !opts.key_present || opts.is_object || is_null_options(body);
    if !inject_enabled || !streaming_usage_api || client_wants_continuous || !options_editable {
        return plan;
    }
    if let Some(new_body) = edit_body(body) {
        plan.injected = true;
        plan.body = Some(Bytes::from(new_body));
        plan.strip = if !client_wants_usage {
            StripPolicy::AllUsage
        } else {
            StripPolicy::PerChunkUsage
        };
    }
    plan
}

fn is_null_options(body: &[u8]) -> bool {
    scan_object(body)
        .ok()
        .and_then(|l| l.find(body, "stream_options"))
        .is_some_and(|m| m.value(body) == b"null")
}

/// The body with `stream_options` set to [`INJECTED_OPTIONS`], keeping any other option keys the
/// client sent. `None` when the body cannot be edited safely.
pub fn edit_body(body: &[u8]) -> Option<Vec<u8>> {
    let layout = scan_object(body).ok()?;
    match layout.find(body, "stream_options") {
        None => {
            let (at, comma) = layout.append_point();
            let mut insert = Vec::with_capacity(INJECTED_OPTIONS.len() + 20);
            if comma {
                insert.push(b',');
            }
            insert.extend_from_slice(b"\"stream_options\":");
            insert.extend_from_slice(INJECTED_OPTIONS.as_bytes());
            Some(splice(body, (at, at), &insert))
        }
        Some(m) => {
            let value = m.value(body);
            let replacement = if value == b"null" {
                INJECTED_OPTIONS.as_bytes().to_vec()
            } else {
                let inner = scan_object(value).ok()?;
                let mut obj = Vec::with_capacity(value.len() + INJECTED_OPTIONS.len());
                obj.push(b'{');
                for om in &inner.members {
                    if om.key_is(value, "include_usage")
                        || om.key_is(value, "continuous_usage_stats")
                    {
                        continue;
                    }
                    obj.extend_from_slice(value.get(om.key_start..om.value_end)?);
                    obj.push(b',');
                }
                obj.extend_from_slice(INJECTED_OPTIONS.as_bytes().get(1..)?);
                obj
            };
            Some(splice(body, (m.value_start, m.value_end), &replacement))
        }
    }
}
