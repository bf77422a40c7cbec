//! What `joulegate replay` sends and when: a plan of [`Item`]s read from the proxy's own request log
//! (the JSONL of `/requests/{id}`), from a Mooncake/aiperf-style trace (`timestamp` ms,
//! `input_length`, `output_length`), or drawn from a synthetic spec (Poisson arrivals, token-count
//! distributions), and the request bodies built for them.
//!
//! Pure: text in, plan out; no clock, no I/O beyond the caller handing over a reader. A bad line is
//! an error naming its line number, never skipped silently; blank lines and lines starting with
//! `#` (comments) are skipped.

use std::io::BufRead;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::dist::{Dist, Rng};

/// The two APIs replay drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Api {
    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }

    /// From a record's `endpoint` label; `None` for the APIs replay does not drive.
    pub fn from_label(label: &str) -> Option<Api> {
        match label {
            "chat.completions" => Some(Api::Chat),
            "completions" => Some(Api::Completions),
            _ => None,
        }
    }
}

/// One planned request.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Arrival offset from the start of the trace (before `--speed`).
    pub at: Duration,
    /// Which API.
    pub api: Api,
    /// Whether it streams.
    pub stream: bool,
    /// Prompt tokens to aim at.
    pub prompt_tokens: u32,
    /// Completion tokens asked for (`max_tokens`, with `ignore_eos`).
    pub output_tokens: u32,
    /// The `x-energy-tag` to send, if any.
    pub tag: Option<String>,
    /// The model recorded for it, if any.
    pub model: Option<String>,
}

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not what the format says.
    #[error("line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// Nothing to replay.
    #[error("no requests to replay in {0}")]
    Empty(String),
}

/// The fields replay reads from a request-log line (a `RequestRecord` as JSON); others are ignored.
#[derive(Deserialize)]
struct LogLine {
    endpoint: String,
    arrival: String,
    stream: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

/// One line of a Mooncake/aiperf trace.
#[derive(Deserialize)]
struct TraceLine {
    timestamp: f64,
    input_length: u64,
    output_length: u64,
}

fn lines<R: BufRead>(
    reader: R,
    what: &str,
) -> impl Iterator<Item = Result<(usize, String), SourceError>> {
    let what = what.to_string();
    reader
        .lines()
        .enumerate()
        .map(move |(i, l)| {
            l.map(|l| (i + 1, l)).map_err(|source| SourceError::Io {
                what: what.clone(),
                source,
            })
        })
        // Blank lines and `#` comment lines (a header saying what a file holds) are skipped.
        .filter(
            |r| !matches!(r, Ok((_, l)) if l.trim().is_empty() || l.trim_start().starts_with('#')),
        )
}

fn tokens(line: usize, field: &str, n: u64) -> Result<u32, SourceError> {
    u32::try_from(n).map_err(|_| SourceError::Line {
        line,
        why: format!("`{field}` {n} is too large"),
    })
}

/// Reads a request log written by `serve` (`request_log = PATH`). Arrivals become offsets from the
/// earliest one; the plan is in arrival order (the log is in completion order). Records of APIs
/// replay does not drive (embeddings, responses, other paths) are left out and counted.
pub fn read_request_log(
    reader: impl BufRead,
    what: &str,
) -> Result<(Vec<Item>, usize), SourceError> {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for l in lines(reader, what) {
        let (line, text) = l?;
        let r: LogLine = serde_json::from_str(&text).map_err(|e| SourceError::Line {
            line,
            why: format!("not a request record: {e}"),
        })?;
        let at = humantime::parse_rfc3339_weak(&r.arrival).map_err(|e| SourceError::Line {
            line,
            why: format!("`arrival` {:?} is not RFC 3339: {e}", r.arrival),
        })?;
        let Some(api) = Api::from_label(&r.endpoint) else {
            skipped += 1;
            continue;
        };
        rows.push((
            at,
            Item {
                at: Duration::ZERO,
                api,
                stream: r.stream,
                prompt_tokens: tokens(line, "prompt_tokens", r.prompt_tokens)?.max(1),
                output_tokens: tokens(line, "completion_tokens", r.completion_tokens)?.max(1),
                tag: r.tag,
                model: r.model,
            },
        ));
    }
    let Some(first) = rows.iter().map(|(t, _)| *t).min() else {
        return Err(SourceError::Empty(what.to_string()));
    };
    rows.sort_by_key(|(t, _)| *t);
    let items = rows
        .into_iter()
        .map(|(t, mut item)| {
            item.at = t.duration_since(first).unwrap_or_default();
            item
        })
        .collect();
    Ok((items, skipped))
}

/// Reads a Mooncake/aiperf-style trace: one JSON object per line with `timestamp` (ms from the
/// trace's start), `input_length` and `output_length` (tokens); other fields (`hash_ids`) are
/// ignored. Every request goes to `api`, streaming or not, with `tag`.
pub fn read_trace(
    reader: impl BufRead,
    what: &str,
    api: Api,
    stream: bool,
    tag: Option<&str>,
) -> Result<Vec<Item>, SourceError> {
    let mut items = Vec::new();
    for l in lines(reader, what) {
        let (line, text) = l?;
        let r: TraceLine = serde_json::from_str(&text).map_err(|e| SourceError::Line {
            line,
            why: format!(
                "not a trace line ({{\"timestamp\", \"input_length\", \"output_length\"}}): {e}"
            ),
        })?;
        if !(r.timestamp.is_finite() && r.timestamp >= 0.0) {
            return Err(SourceError::Line {
                line,
                why: format!(
                    "`timestamp` {} must be a non-negative number of ms",
                    r.timestamp
                ),
            });
        }
        items.push(Item {
            at: Duration::from_secs_f64(r.timestamp / 1000.0),
            api,
            stream,
            prompt_tokens: tokens(line, "input_length", r.input_length)?.max(1),
            output_tokens: tokens(line, "output_length", r.output_length)?.max(1),
            tag: tag.map(str::to_string),
            model: None,
        });
    }
    if items.is_empty() {
        return Err(SourceError::Empty(what.to_string()));
    }
    items.sort_by_key(|i| i.at);
    Ok(items)
}

/// A synthetic spec: Poisson arrivals at `rate` per second for `duration`, token counts drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Synthetic {
    /// Mean arrivals per second.
    pub rate: f64,
    /// Span of the arrivals.
    pub duration: Duration,
    /// Prompt tokens.
    pub prompt: Dist,
    /// Completion tokens.
    pub output: Dist,
    /// Seed of the arrivals and draws.
    pub seed: u64,
}

/// Draws the synthetic plan (same spec and seed, same plan).
pub fn synthetic(spec: &Synthetic, api: Api, stream: bool, tag: Option<&str>) -> Vec<Item> {
    let mut rng = Rng::new(spec.seed);
    let mut t = 0.0;
    let mut items = Vec::new();
    loop {
        t += rng.exponential(spec.rate);
        if t >= spec.duration.as_secs_f64() {
            return items;
        }
        items.push(Item {
            at: Duration::from_secs_f64(t),
            api,
            stream,
            prompt_tokens: spec.prompt.sample(&mut rng),
            output_tokens: spec.output.sample(&mut rng),
            tag: tag.map(str::to_string),
            model: None,
        });
    }
}

const WORDS: [&str; 16] = [
    "energy", "token", "batch", "prefill", "decode", "kernel", "memory", "tensor", "power",
    "request", "model", "cache", "stream", "joule", "watt", "sample",
];

/// Tokens a chat template adds around one user message under the mock's toy tokenizer.
const CHAT_OVERHEAD: u32 = crate::sim::text::CHAT_FIXED_TOKENS
    + crate::sim::text::CHAT_PER_MESSAGE_TOKENS
    + crate::sim::text::CHAT_GENERATION_PROMPT_TOKENS;

/// Text of `chars` characters made of words (distinct per `key`, so no two prompts share a
/// prefix cache entry by accident).
fn text(key: u64, chars: usize) -> String {
    let mut s = format!("{key} ");
    let mut i = 0u64;
    while s.len() < chars {
        s.push_str(WORDS[(crate::sim::text::mix(key ^ i) % WORDS.len() as u64) as usize]);
        s.push(' ');
        i += 1;
    }
    s.truncate(chars.max(1));
    s
}

/// The JSON body of `item`: a synthetic prompt of about `prompt_tokens` at `chars_per_token`
/// characters per token (3 is the mock's toy tokenizer; the report uses the server's counts),
/// `max_tokens` = the output tokens with `ignore_eos: true` so the server produces exactly them,
/// and for streams `stream_options.include_usage` so the final chunk carries usage and energy.
pub fn body(item: &Item, index: usize, model: &str, chars_per_token: f64) -> Vec<u8> {
    let key = index as u64;
    let mut v = match item.api {
        Api::Chat => {
            let t = item.prompt_tokens.saturating_sub(CHAT_OVERHEAD).max(1);
            let content = text(key, (f64::from(t) * chars_per_token).round() as usize);
            json!({"model": model, "messages": [{"role": "user", "content": content}]})
        }
        Api::Completions => {
            let prompt = text(
                key,
                (f64::from(item.prompt_tokens) * chars_per_token).round() as usize,
            );
            json!({"model": model, "prompt": prompt})
        }
    };
    v["max_tokens"] = json!(item.output_tokens);
    v["ignore_eos"] = json!(true);
    if item.stream {
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
    }
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::text::{count_chat_tokens, count_text_tokens};

    const RECORD: &str = r#"{"id":"jg-1","model":"m","endpoint":"chat.completions","key_hash":null,"tag":"t","stream":true,"arrival":"2026-01-01T00:00:01.500000Z","first_token":null,"end":null,"prompt_tokens":40,"completion_tokens":7,"tokens_exact":true,"energy_joules":1.0,"active_joules":1.0,"prefill_joules":0.1,"decode_joules":0.9,"co2_grams":null,"status":"ok"}"#;

    #[test]
    fn request_log_is_sorted_by_arrival_and_offsets_start_at_zero() {
        let later = RECORD
            .replace("01.500000", "03.000000")
            .replace("\"tag\":\"t\"", "\"tag\":null");
        let emb = RECORD.replace("chat.completions", "embeddings");
        let text = format!("{later}\n\n{RECORD}\n{emb}\n");
        let (items, skipped) = read_request_log(text.as_bytes(), "log").expect("reads");
        assert_eq!(skipped, 1);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].at, Duration::ZERO);
        assert_eq!(items[0].tag.as_deref(), Some("t"));
        assert_eq!(items[1].at, Duration::from_millis(1500));
        assert_eq!(items[1].tag, None);
        assert_eq!((items[0].prompt_tokens, items[0].output_tokens), (40, 7));
        assert_eq!(items[0].model.as_deref(), Some("m"));
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let bad_time = RECORD.replace("2026-01-01T00:00:01.500000Z", "yesterday");
        for (text, line, says) in [
            (format!("{RECORD}\nnot json\n"), 2, "not a request record"),
            (format!("\n{bad_time}\n"), 2, "not RFC 3339"),
            (
                format!("{}\n", RECORD.replace("\"stream\":true,", "")),
                1,
                "stream",
            ),
        ] {
            let e = read_request_log(text.as_bytes(), "log").expect_err(&text);
            assert!(
                matches!(e, SourceError::Line { line: l, .. } if l == line),
                "{e}"
            );
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        assert!(matches!(
            read_request_log(&b"\n"[..], "log"),
            Err(SourceError::Empty(_))
        ));
    }

    #[test]
    fn trace_reads_mooncake_lines_and_names_bad_ones() {
        let text = "# a comment\n{\"timestamp\": 250, \"input_length\": 100, \"output_length\": 5, \"hash_ids\": [1]}\n{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2}\n";
        let items = read_trace(text.as_bytes(), "t", Api::Chat, true, Some("x")).expect("reads");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].at, Duration::ZERO);
        assert_eq!(items[1].at, Duration::from_millis(250));
        assert_eq!(items[1].prompt_tokens, 100);
        assert_eq!(items[1].tag.as_deref(), Some("x"));
        for (bad, line) in [
            ("{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1}\n# c\n{\"timestamp\": 1}\n", 3),
            ("{\"timestamp\": -5, \"input_length\": 1, \"output_length\": 1}\n", 1),
            ("{\"timestamp\": 0, \"input_length\": 99999999999, \"output_length\": 1}\n", 1),
        ] {
            let e = read_trace(bad.as_bytes(), "t", Api::Chat, true, None).expect_err(bad);
            assert!(matches!(e, SourceError::Line { line: l, .. } if l == line), "{e}");
        }
    }

    #[test]
    fn the_example_trace_reads() {
        let text = include_str!("../../examples/trace.jsonl");
        let items = read_trace(
            text.as_bytes(),
            "examples/trace.jsonl",
            Api::Chat,
            true,
            None,
        )
        .expect("the example trace is valid");
        assert_eq!(items.len(), 24);
    }

    #[test]
    fn synthetic_plans_are_seeded_poisson() {
        let spec = Synthetic {
            rate: 50.0,
            duration: Duration::from_secs(20),
            prompt: Dist::Fixed(64),
            output: Dist::Uniform(1, 4),
            seed: 3,
        };
        let a = synthetic(&spec, Api::Chat, true, None);
        assert_eq!(a, synthetic(&spec, Api::Chat, true, None));
        assert!((900..1100).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a
            .iter()
            .all(|i| i.at < spec.duration && (1..=4).contains(&i.output_tokens)));
    }

    #[test]
    fn bodies_hit_the_token_counts_under_the_mock_tokenizer() {
        let mut item = Item {
            at: Duration::ZERO,
            api: Api::Chat,
            stream: true,
            prompt_tokens: 120,
            output_tokens: 9,
            tag: None,
            model: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body(&item, 4, "tiny", 3.0)).expect("json");
        let content = v["messages"][0]["content"].as_str().expect("content");
        assert_eq!(count_chat_tokens([content]), 120);
        assert_eq!(v["max_tokens"], 9);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        item.api = Api::Completions;
        item.stream = false;
        let v: serde_json::Value =
            serde_json::from_slice(&body(&item, 4, "tiny", 3.0)).expect("json");
        assert_eq!(
            count_text_tokens(v["prompt"].as_str().expect("prompt")),
            120
        );
        assert!(v.get("stream").is_none());
    }
}
