//! What the accounting tests send and how they compare what comes back: the request shapes the mock
//! supports, the direct-vs-proxied exchange (the direct mock is seeded so that it generates the same
//! text for the client's body as the proxied one does for the forwarded body), and the two
//! normalisations allowed: `created`/`created_at` (wall-clock seconds) and the documented `energy`
//! member of the final usage chunk, which is checked and then cut out byte-exactly.

use std::net::SocketAddr;

use joulegate::sim::text::hash_bytes;
use joulegate::sim::{MockBuilder, MockHandle, MockUpstream, RecordedRequest};
use serde_json::Value;

use super::common::{self, Got};
use super::rig::{spawn_mock, Rig};

/// The API a shape talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
    Responses,
    Embeddings,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Responses => "/v1/responses",
            Api::Embeddings => "/v1/embeddings",
        }
    }
}

/// One request shape.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: String,
    pub api: Api,
    pub stream: bool,
    /// `None`: no `stream_options`; `Some(None)`: present without `include_usage`.
    pub include_usage: Option<Option<bool>>,
    pub continuous: bool,
    pub n: u32,
    /// Completions only: how many prompts (a list when more than one).
    pub prompts: u32,
    /// Ask for log-probabilities (top 2).
    pub logprobs: bool,
}

/// Completion tokens each shape asks for (the mock produces exactly `max_tokens`).
pub const MAX_TOKENS: u64 = 5;

impl Shape {
    pub fn new(
        api: Api,
        stream: bool,
        include_usage: Option<Option<bool>>,
        continuous: bool,
    ) -> Self {
        Shape {
            name: String::new(),
            api,
            stream,
            include_usage,
            continuous,
            n: 1,
            prompts: 1,
            logprobs: false,
        }
        .named()
    }

    fn with_n(mut self, n: u32) -> Self {
        self.n = n;
        self.named()
    }

    fn with_prompts(mut self, prompts: u32) -> Self {
        self.prompts = prompts;
        self.named()
    }

    fn with_logprobs(mut self) -> Self {
        self.logprobs = true;
        self.named()
    }

    fn named(mut self) -> Self {
        let opts = match (self.include_usage, self.continuous) {
            (None, _) => "no-options".to_string(),
            (Some(None), false) => "options-{}".to_string(),
            (Some(None), true) => "continuous-only".to_string(),
            (Some(Some(b)), c) => {
                format!("include_usage={b}{}", if c { "+continuous" } else { "" })
            }
        };
        let mode = if self.stream { "stream" } else { "json" };
        self.name = format!("{:?}-{mode}-{opts}-n{}", self.api, self.n).to_lowercase();
        if self.prompts != 1 {
            self.name.push_str(&format!("-prompts{}", self.prompts));
        }
        if self.logprobs {
            self.name.push_str("-logprobs");
        }
        self
    }

    /// The request body the client sends.
    pub fn body(&self) -> Vec<u8> {
        let mut fields = vec![r#""model":"tiny""#.to_string()];
        match self.api {
            Api::Chat => {
                fields
                    .push(r#""messages":[{"role":"user","content":"say something short"}]"#.into());
                fields.push(format!(r#""max_tokens":{MAX_TOKENS}"#));
            }
            Api::Completions => {
                if self.prompts == 1 {
                    fields.push(r#""prompt":"once upon a time""#.into());
                } else {
                    let list: Vec<String> = (0..self.prompts)
                        .map(|i| format!(r#""once upon a time, part {i}""#))
                        .collect();
                    fields.push(format!(r#""prompt":[{}]"#, list.join(",")));
                }
                fields.push(format!(r#""max_tokens":{MAX_TOKENS}"#));
            }
            Api::Responses => {
                fields.push(r#""input":"say something short""#.into());
                fields.push(format!(r#""max_output_tokens":{MAX_TOKENS}"#));
            }
            Api::Embeddings => fields.push(r#""input":"the quick brown fox""#.into()),
        }
        if self.logprobs {
            fields.push(match self.api {
                Api::Chat => r#""logprobs":true,"top_logprobs":2"#.into(),
                _ => r#""logprobs":2"#.into(),
            });
        }
        if self.n != 1 {
            fields.push(format!(r#""n":{}"#, self.n));
        }
        if self.api != Api::Embeddings {
            fields.push(format!(r#""stream":{}"#, self.stream));
        }
        if let Some(include) = self.include_usage {
            let mut opts = Vec::new();
            if let Some(b) = include {
                opts.push(format!(r#""include_usage":{b}"#));
            }
            if self.continuous {
                opts.push(r#""continuous_usage_stats":true"#.into());
            }
            fields.push(format!(r#""stream_options":{{{}}}"#, opts.join(",")));
        }
        format!("{{{}}}", fields.join(",")).into_bytes()
    }

    /// Whether the proxy injects usage options (a streaming chat/completions request that did not
    /// already ask for continuous usage).
    pub fn injected(&self, absent_true: bool) -> bool {
        self.stream
            && matches!(self.api, Api::Chat | Api::Completions)
            && !(self.wants_usage(absent_true) && self.continuous)
    }

    /// Whether the client asked for the final usage chunk, under the upstream's semantics.
    pub fn wants_usage(&self, absent_true: bool) -> bool {
        self.stream
            && matches!(self.api, Api::Chat | Api::Completions)
            && match self.include_usage {
                None => false,
                Some(None) => absent_true,
                Some(Some(b)) => b,
            }
    }

    /// The number of choices the response carries.
    pub fn choices(&self) -> u64 {
        u64::from(self.n) * u64::from(self.prompts)
    }
}

/// Every request shape the mock supports.
pub fn all_shapes() -> Vec<Shape> {
    let mut out = Vec::new();
    for api in [Api::Chat, Api::Completions] {
        out.push(Shape::new(api, true, None, false));
        out.push(Shape::new(api, true, Some(None), false));
        out.push(Shape::new(api, true, Some(Some(true)), false));
        out.push(Shape::new(api, true, Some(Some(false)), false));
        out.push(Shape::new(api, true, Some(Some(true)), true));
        out.push(Shape::new(api, true, Some(Some(false)), true));
        out.push(Shape::new(api, true, Some(None), true));
        out.push(Shape::new(api, true, None, false).with_n(2));
        out.push(Shape::new(api, true, Some(Some(true)), false).with_n(2));
        out.push(Shape::new(api, true, Some(Some(true)), true).with_n(2));
        out.push(Shape::new(api, false, None, false));
        out.push(Shape::new(api, false, None, false).with_n(2));
    }
    for api in [Api::Chat, Api::Completions] {
        out.push(Shape::new(api, true, None, false).with_logprobs());
        out.push(Shape::new(api, true, Some(Some(true)), false).with_logprobs());
    }
    for usage in [None, Some(Some(true)), Some(Some(false))] {
        out.push(Shape::new(Api::Completions, true, usage, false).with_prompts(2));
    }
    out.push(
        Shape::new(Api::Completions, true, Some(Some(true)), true)
            .with_prompts(2)
            .with_n(2),
    );
    out.push(Shape::new(Api::Completions, false, None, false).with_prompts(2));
    out.push(Shape::new(Api::Responses, true, None, false));
    out.push(Shape::new(Api::Responses, false, None, false));
    out.push(Shape::new(Api::Embeddings, false, None, false));
    out
}

/// A request as a client sends it over HTTP/1.1.
pub fn client_request(
    addr: SocketAddr,
    path: &str,
    request_id: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let host = addr.to_string();
    let mut headers = vec![
        ("host", host.as_str()),
        ("content-type", "application/json"),
        ("x-request-id", request_id),
    ];
    headers.extend_from_slice(extra);
    common::request("POST", addr, path, &headers, body)
}

/// One shape sent through the proxy and, for reference, directly to an equivalent mock.
pub struct Exchange {
    pub shape: Shape,
    pub client_body: Vec<u8>,
    pub direct: Got,
    pub proxied: Got,
    /// What the proxied mock received.
    pub forwarded: RecordedRequest,
    /// The proxy's `x-energy-request-id`.
    pub public_id: String,
}

/// Sends `shape` through the rig's proxy, then directly to a fresh mock configured like the rig's
/// (`direct_mock`) whose seed makes it generate, for the client's bytes, the text the proxied mock
/// generated for the forwarded bytes (the mock's text key is `seed ^ hash(body)`; vLLM, sampling
/// with a fixed seed, is likewise unaffected by `stream_options`). Both get the same `X-Request-Id`,
/// which the mock uses for its ids.
pub async fn exchange(rig: &Rig, shape: &Shape, direct_mock: MockBuilder) -> Exchange {
    exchange_via(rig.proxy, &rig.mock, shape, direct_mock).await
}

/// [`exchange`] through the proxy at `proxy`, in front of `mock`.
pub async fn exchange_via(
    proxy: SocketAddr,
    mock: &MockHandle,
    shape: &Shape,
    direct_mock: MockBuilder,
) -> Exchange {
    let body = shape.body();
    let request_id = format!("e2e-{}", shape.name);
    let received_before = mock.requests().len();
    let proxied = common::send(
        proxy,
        client_request(proxy, shape.api.path(), &request_id, &body, &[]),
    )
    .await;
    let requests = mock.requests();
    assert_eq!(
        requests.len(),
        received_before + 1,
        "{}: one request forwarded",
        shape.name
    );
    let forwarded = requests.last().cloned().expect("forwarded request");
    let seed = hash_bytes(&body) ^ hash_bytes(&forwarded.body);
    let direct_mock = spawn_mock(direct_mock.seed(seed)).await;
    let direct = common::send(
        direct_mock.addr(),
        client_request(
            direct_mock.addr(),
            shape.api.path(),
            &request_id,
            &body,
            &[],
        ),
    )
    .await;
    direct_mock.shutdown().await;
    let public_id = proxied
        .headers
        .get("x-energy-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{}: no x-energy-request-id", shape.name))
        .to_string();
    Exchange {
        shape: shape.clone(),
        client_body: body,
        direct,
        proxied,
        forwarded,
        public_id,
    }
}

/// A default mock builder for direct runs (immediate timing: the bytes do not depend on timing).
pub fn direct_builder() -> MockBuilder {
    MockUpstream::builder()
}

/// Replaces the digits after `"created":` and `"created_at":` with `0`: wall-clock seconds are the
/// only bytes two runs of the mock may differ in.
pub fn normalise_created(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = ["\"created\":", "\"created_at\":"]
            .iter()
            .filter_map(|k| rest.find(k).map(|i| (i, k.len())))
            .min();
        let Some((i, klen)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i + klen]);
        rest = &rest[i + klen..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('0');
        }
        rest = &rest[digits..];
    }
}

/// A body with the `energy` member cut out of the SSE event that carries it, and that member parsed.
pub struct Stripped {
    pub body: String,
    /// The `energy` objects found, with the (0-based) index of their event.
    pub energy: Vec<(usize, Value)>,
}

/// Cuts `,"energy":{…}` (the proxy appends it as the last member of the final usage chunk) out of
/// every `data:` line, byte-exactly: the line must end `,"energy":<object>}`.
pub fn strip_energy(body: &[u8]) -> Stripped {
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    let mut out = String::with_capacity(text.len());
    let mut energy = Vec::new();
    let mut event = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches('\n');
        if content.is_empty() {
            event += 1;
        }
        if let (Some(data), Some(at)) = (
            content.strip_prefix("data: "),
            content.rfind(",\"energy\":"),
        ) {
            let _ = data;
            let member = &content[at + ",\"energy\":".len()..];
            let object = member
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("`energy` is not the last member: {content}"));
            let value: Value = serde_json::from_str(object)
                .unwrap_or_else(|e| panic!("`energy` is not JSON ({e}): {object}"));
            energy.push((event, value));
            out.push_str(&content[..at]);
            out.push('}');
            out.push_str(&line[content.len()..]);
        } else {
            out.push_str(line);
        }
    }
    Stripped { body: out, energy }
}

/// The SSE events of a body (blank-line separated, without the separator).
pub fn events(body: &str) -> Vec<&str> {
    body.split_terminator("\n\n").collect()
}

/// Asserts two normalised bodies are equal, pointing at the first differing event.
pub fn assert_same_body(direct: &str, proxied: &str, ctx: &str) {
    if direct == proxied {
        return;
    }
    let (d, p) = (events(direct), events(proxied));
    for (i, (a, b)) in d.iter().zip(p.iter()).enumerate() {
        assert_eq!(a, b, "{ctx}: event {i} differs");
    }
    assert_eq!(d.len(), p.len(), "{ctx}: event counts differ");
    assert_eq!(direct, proxied, "{ctx}: bodies differ");
}

/// The `data:` JSON of an SSE event, if any.
pub fn event_json(event: &str) -> Option<Value> {
    event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .and_then(|d| serde_json::from_str(d).ok())
}

/// Header (name, value) pairs minus `date` (two runs, two seconds) and `x-energy-*` (the proxy's).
pub fn comparable_headers(got: &Got) -> Vec<(String, String)> {
    got.header_list()
        .into_iter()
        .filter(|(k, _)| k != "date" && !k.starts_with("x-energy-"))
        .collect()
}
