//! How an upstream reads `stream_options`: the one protocol fact that differs between vLLM versions and
//! decides whether a client "asked for usage". Owns the version parsing of `/version` bodies; it does
//! no I/O (the caller fetches `/version`) and never looks at a response stream.

use serde::Deserialize;

/// The first vLLM version known (from captured responses) to read a present `stream_options` without
/// `include_usage` as "no usage". Older releases declared `include_usage: Optional[bool] = True` in
/// their `StreamOptions` model, so `{"stream_options": {}}` meant "usage please". The exact release
/// that flipped the default is not pinned down here; 0.32.0 is the first one verified.
pub const VLLM_ABSENT_INCLUDE_USAGE_FALSE_SINCE: (u64, u64, u64) = (0, 32, 0);

/// How the upstream interprets a request's `stream_options`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageSemantics {
    /// What a present `stream_options` object without an `include_usage` key means.
    /// (A missing or `null` `stream_options` means "no usage" on every vLLM version.)
    pub absent_include_usage: bool,
    /// The server forces usage on every stream (vLLM `--enable-force-include-usage`): the final
    /// usage chunk and continuous usage on every chunk, whatever `stream_options` says (see
    /// `tests/fixtures/vllm-0.32-force-usage/`: even `chat-stream-plain` carries both).
    pub force_include_usage: bool,
}

impl Default for UsageSemantics {
    /// The semantics of the newest verified vLLM (0.32): absent means false, nothing forced.
    fn default() -> Self {
        UsageSemantics {
            absent_include_usage: false,
            force_include_usage: false,
        }
    }
}

#[derive(Deserialize)]
struct VersionBody<'a> {
    #[serde(borrow)]
    version: std::borrow::Cow<'a, str>,
}

impl UsageSemantics {
    /// Semantics for a vLLM version string such as `"0.32.0"`, `"v0.10.1rc2"` or
    /// `"0.11.1.dev7+g1234"`. Unparseable versions get the newest behaviour ([`Default`]).
    pub fn from_vllm_version(version: &str) -> UsageSemantics {
        match parse_version(version) {
            Some(v) if v < VLLM_ABSENT_INCLUDE_USAGE_FALSE_SINCE => UsageSemantics {
                absent_include_usage: true,
                force_include_usage: false,
            },
            _ => UsageSemantics::default(),
        }
    }

    /// Semantics from the body of vLLM's `GET /version` (`{"version":"0.32.0"}`); `None` when the body
    /// does not have that shape (not vLLM, or an error page).
    pub fn from_version_body(body: &[u8]) -> Option<UsageSemantics> {
        let parsed: VersionBody<'_> = serde_json::from_slice(body).ok()?;
        Some(Self::from_vllm_version(&parsed.version))
    }

    /// Whether a streaming request asked for the final usage chunk, given its `stream_options`
    /// (`present`: the key exists with a non-null value; `include_usage`: that object's field, `None`
    /// when missing or not a boolean).
    /// A forcing server sends usage whatever the request says, so its clients always get it.
    pub fn client_wants_usage(&self, options_present: bool, include_usage: Option<bool>) -> bool {
        if self.force_include_usage {
            return true;
        }
        if !options_present {
            return false;
        }
        include_usage.unwrap_or(self.absent_include_usage)
    }

    /// Whether a streaming request gets usage on every chunk: vLLM's
    /// `include_usage and continuous_usage_stats` (default false), or always on a forcing server.
    pub fn client_wants_continuous(
        &self,
        options_present: bool,
        include_usage: Option<bool>,
        continuous_usage_stats: Option<bool>,
    ) -> bool {
        self.force_include_usage
            || (self.client_wants_usage(options_present, include_usage)
                && continuous_usage_stats == Some(true))
    }
}

/// The request body of the start-up probe that tells whether the upstream forces usage: one token,
/// streamed, with no `stream_options` (which every vLLM version reads as "no usage").
pub fn force_probe_body(model: &str) -> Vec<u8> {
    serde_json::json!({"model": model, "prompt": "hi", "max_tokens": 1, "stream": true})
        .to_string()
        .into_bytes()
}

/// The first model id of a `GET /v1/models` body.
pub fn first_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Model<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        data: Vec<Model<'a>>,
    }
    let list: List<'_> = serde_json::from_slice(body).ok()?;
    list.data.into_iter().next().map(|m| m.id.into_owned())
}

/// Whether a (complete or cut) SSE body carries a non-null `usage` in any `data:` event: the answer
/// of the force probe. Lines that are not JSON objects are skipped.
pub fn stream_reports_usage(body: &[u8]) -> bool {
    body.split(|&b| b == b'\n').any(|line| {
        let Some(data) = line.trim_ascii().strip_prefix(b"data:") else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(data.trim_ascii())
            .ok()
            .and_then(|v| v.get("usage").map(|u| !u.is_null()))
            .unwrap_or(false)
    })
}

/// `(major, minor, patch)` from the leading digits of a version string.
pub fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    let mut parts = s.split('.');
    let mut num = |required: bool| -> Option<u64> {
        match parts.next() {
            Some(p) => {
                let digits: &str = &p[..p.bytes().take_while(u8::is_ascii_digit).count()];
                if digits.is_empty() {
                    if required {
                        None
                    } else {
                        Some(0)
                    }
                } else {
                    digits.parse().ok()
                }
            }
            None if required => None,
            None => Some(0),
        }
    };
    Some((num(true)?, num(true)?, num(false)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(parse_version("0.32.0"), Some((0, 32, 0)));
        assert_eq!(parse_version("v0.10.1rc2"), Some((0, 10, 1)));
        assert_eq!(parse_version("0.11.1.dev7+g1234"), Some((0, 11, 1)));
        assert_eq!(parse_version("1.2"), Some((1, 2, 0)));
        assert_eq!(parse_version("dev"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("99999999999999999999999.1"), None);
    }

    #[test]
    fn vllm_032_reads_absent_include_usage_as_false() {
        let s = UsageSemantics::from_vllm_version("0.32.0");
        assert!(!s.absent_include_usage);
        let body = std::fs::read("tests/fixtures/vllm-0.32/version.body").unwrap();
        assert_eq!(UsageSemantics::from_version_body(&body), Some(s));
        // The fixtures: `stream_options: {}` equals the plain stream.
        assert!(!s.client_wants_usage(true, None));
        assert!(s.client_wants_usage(true, Some(true)));
        assert!(!s.client_wants_usage(false, None));
    }

    #[test]
    fn older_vllm_reads_absent_include_usage_as_true() {
        let s = UsageSemantics::from_vllm_version("0.6.3.post1");
        assert!(s.absent_include_usage);
        assert!(s.client_wants_usage(true, None));
        assert!(!s.client_wants_usage(true, Some(false)));
        assert!(!s.client_wants_usage(false, None));
        assert_eq!(
            UsageSemantics::from_vllm_version("garbage"),
            UsageSemantics::default()
        );
        assert_eq!(UsageSemantics::from_version_body(b"<html>"), None);
    }

    #[test]
    fn force_probe_reads_the_captured_servers() {
        let read = |dir: &str| {
            std::fs::read(format!("tests/fixtures/{dir}/chat-stream-plain.body")).unwrap()
        };
        assert!(stream_reports_usage(&read("vllm-0.32-force-usage")));
        assert!(!stream_reports_usage(&read("vllm-0.32")));
        assert!(!stream_reports_usage(&read(
            "vllm-0.32-per-request-metrics"
        )));
        assert!(!stream_reports_usage(
            b"data: {\"usage\": null}\n\ndata: [DONE]\n\n"
        ));
        assert!(!stream_reports_usage(b"data: {\"usage\": {\"prompt_tok"));
        let models = std::fs::read("tests/fixtures/vllm-0.32/models.body").unwrap();
        assert_eq!(first_model(&models).as_deref(), Some("tiny"));
        assert_eq!(first_model(b"{\"data\":[]}"), None);
        assert_eq!(first_model(b"<html>"), None);
        let body: serde_json::Value = serde_json::from_slice(&force_probe_body("tiny")).unwrap();
        assert_eq!(body["stream"], true);
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn forced_usage_gives_every_stream_usage_and_continuous_usage() {
        let s = UsageSemantics {
            absent_include_usage: false,
            force_include_usage: true,
        };
        // As `vllm-0.32-force-usage/`: plain, `{}`, `include_usage: false` all carry both.
        for (present, include) in [
            (false, None),
            (true, None),
            (true, Some(false)),
            (true, Some(true)),
        ] {
            assert!(s.client_wants_usage(present, include));
            assert!(s.client_wants_continuous(present, include, None));
        }
        let d = UsageSemantics::default();
        assert!(!d.client_wants_continuous(true, Some(true), None));
        assert!(d.client_wants_continuous(true, Some(true), Some(true)));
        assert!(!d.client_wants_continuous(true, Some(false), Some(true)));
        assert!(!d.client_wants_continuous(false, None, Some(true)));
    }
}
