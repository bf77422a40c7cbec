//! Seeded request workloads for the demo and the accuracy bench: when each request arrives and what
//! it asks, in the four shapes the design's accuracy budget names (steady, bursty, prefill-heavy,
//! decode-heavy) plus a mix. Pure: a plan of bodies and arrival offsets, sent by whoever drives it.
//!
//! Every body is valid for the mock's defaults (`model: tiny`, `max_model_len` 2048): prompts stay
//! under ~1,500 toy tokens and `max_tokens` leaves room for them.

use std::time::Duration;

use serde_json::json;

use super::text::mix;

/// The shape of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Evenly spaced arrivals, moderate prompts and outputs.
    Steady,
    /// Bursts of 8 simultaneous arrivals separated by idle gaps.
    Bursty,
    /// Long prompts (500-1,500 tokens), short outputs (4-16 tokens).
    PrefillHeavy,
    /// Short prompts, long outputs (300-600 tokens).
    DecodeHeavy,
    /// A seeded mix of the above request sizes, evenly spaced.
    Mixed,
}

/// One request of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRequest {
    /// Arrival offset from the workload's start.
    pub at: Duration,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub path: &'static str,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Whether it streams.
    pub stream: bool,
}

const WORDS: [&str; 16] = [
    "energy", "token", "batch", "prefill", "decode", "kernel", "memory", "tensor", "power",
    "request", "model", "cache", "stream", "joule", "watt", "sample",
];

/// Text of about `chars` characters.
fn prompt_text(key: u64, chars: usize) -> String {
    let mut s = String::with_capacity(chars + 8);
    let mut i = 0u64;
    while s.len() < chars {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[(mix(key ^ i) % WORDS.len() as u64) as usize]);
        i += 1;
    }
    s
}

fn between(x: u64, lo: u64, hi: u64) -> u64 {
    lo + x % (hi - lo + 1)
}

/// `count` requests of shape `kind`, arriving on average every `mean_gap`.
pub fn plan(
    kind: WorkloadKind,
    seed: u64,
    count: usize,
    mean_gap: Duration,
) -> Vec<PlannedRequest> {
    (0..count as u64)
        .map(|i| {
            let x = mix(seed ^ mix(i));
            let size = match kind {
                WorkloadKind::Mixed => [
                    WorkloadKind::Steady,
                    WorkloadKind::PrefillHeavy,
                    WorkloadKind::DecodeHeavy,
                ][(x % 3) as usize],
                k => k,
            };
            // (prompt characters, max_tokens); the toy tokenizer counts ~3 characters per token.
            let (chars, max_tokens) = match size {
                WorkloadKind::PrefillHeavy => {
                    (between(x >> 8, 1_500, 4_500), between(x >> 24, 4, 16))
                }
                WorkloadKind::DecodeHeavy => (between(x >> 8, 30, 150), between(x >> 24, 300, 600)),
                _ => (between(x >> 8, 150, 900), between(x >> 24, 30, 200)),
            };
            let at = match kind {
                WorkloadKind::Bursty => mean_gap * 8 * (i / 8) as u32,
                _ => mean_gap * i as u32,
            };
            let stream = (x >> 40) % 10 < 8;
            let text = prompt_text(x, chars as usize);
            let (path, mut body) = if (x >> 44) % 10 == 0 {
                (
                    "/v1/completions",
                    json!({"model": "tiny", "prompt": text, "max_tokens": max_tokens}),
                )
            } else {
                let messages = json!([{"role": "user", "content": text}]);
                (
                    "/v1/chat/completions",
                    json!({"model": "tiny", "messages": messages, "max_tokens": max_tokens}),
                )
            };
            if stream {
                body["stream"] = json!(true);
                // Some clients ask for usage, some do not: the proxy must cope with both.
                if (x >> 48) % 2 == 0 {
                    body["stream_options"] = json!({"include_usage": true});
                }
            }
            PlannedRequest {
                at,
                path,
                body: body.to_string().into_bytes(),
                stream,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::request::{parse, ApiKind, Limits};

    const LIMITS: Limits<'static> = Limits {
        model: "tiny",
        max_model_len: 2048,
        absent_include_usage_is_true: false,
    };

    fn sizes(kind: WorkloadKind) -> (u64, u64) {
        plan(kind, 3, 200, Duration::from_millis(10))
            .iter()
            .fold((0, 0), |(p, d), r| {
                let api = if r.path == "/v1/completions" {
                    ApiKind::Completions
                } else {
                    ApiKind::Chat
                };
                let g = parse(api, &r.body, &LIMITS).expect("valid for the mock");
                (p + g.total_prompt_tokens(), d + u64::from(g.max_tokens))
            })
    }

    #[test]
    fn shapes_differ_as_named_and_bodies_are_valid() {
        let (p, d) = sizes(WorkloadKind::PrefillHeavy);
        assert!(p > 20 * d, "{p} prompt vs {d} decode");
        let (p, d) = sizes(WorkloadKind::DecodeHeavy);
        assert!(d > 5 * p, "{p} prompt vs {d} decode");
        sizes(WorkloadKind::Steady);
        sizes(WorkloadKind::Mixed);
        sizes(WorkloadKind::Bursty);
    }

    #[test]
    fn arrivals_and_determinism() {
        let gap = Duration::from_millis(10);
        let b = plan(WorkloadKind::Bursty, 1, 16, gap);
        assert!(b[..8].iter().all(|r| r.at == Duration::ZERO));
        assert!(b[8..].iter().all(|r| r.at == gap * 8));
        let s = plan(WorkloadKind::Steady, 1, 4, gap);
        assert_eq!(
            s.iter().map(|r| r.at).collect::<Vec<_>>(),
            vec![Duration::ZERO, gap, gap * 2, gap * 3]
        );
        assert_eq!(
            plan(WorkloadKind::Mixed, 9, 50, gap),
            plan(WorkloadKind::Mixed, 9, 50, gap)
        );
        assert_ne!(
            plan(WorkloadKind::Mixed, 9, 50, gap),
            plan(WorkloadKind::Mixed, 10, 50, gap)
        );
        let streams = plan(WorkloadKind::Mixed, 9, 200, gap)
            .iter()
            .filter(|r| r.stream)
            .count();
        assert!((100..200).contains(&streams));
    }
}

#[cfg(test)]
mod figures {
    use super::*;
    use crate::sim::engine::{Engine, EngineConfig};
    use crate::sim::request::{parse, ApiKind, Limits};

    /// Drives the pure engine with a plan in simulated time; returns (J, s, tokens out, W mean).
    fn simulate(kind: WorkloadKind) -> (f64, f64, u64, f64) {
        let limits = Limits {
            model: "tiny",
            max_model_len: 2048,
            absent_include_usage_is_true: false,
        };
        let mut e = Engine::new(EngineConfig::default());
        let mut now_ns = 0u64;
        let mut out = 0;
        for (id, r) in plan(kind, 7, 200, Duration::from_millis(50))
            .iter()
            .enumerate()
        {
            let at = r.at.as_nanos() as u64;
            while now_ns < at {
                match e.step() {
                    Some(s) => now_ns += s.duration_ns,
                    None => {
                        e.idle(at - now_ns);
                        now_ns = at;
                    }
                }
            }
            let api = if r.path == "/v1/completions" {
                ApiKind::Completions
            } else {
                ApiKind::Chat
            };
            let g = parse(api, &r.body, &limits).unwrap();
            out += u64::from(g.max_tokens);
            e.add(id as u64, g.prompt_tokens[0], g.max_tokens, 1);
        }
        while let Some(s) = e.step() {
            now_ns += s.duration_ns;
        }
        let t = e.totals();
        let secs = now_ns as f64 / 1e9;
        (
            t.total_uj as f64 / 1e6,
            secs,
            out,
            t.total_uj as f64 / 1e6 / secs,
        )
    }

    #[test]
    fn default_model_gives_h100_like_power() {
        for kind in [
            WorkloadKind::Steady,
            WorkloadKind::Bursty,
            WorkloadKind::PrefillHeavy,
            WorkloadKind::DecodeHeavy,
        ] {
            let (j, s, tokens, w) = simulate(kind);
            println!(
                "{kind:?}: {j:.1} J over {s:.2} s simulated, {w:.0} W mean, {:.3} J/output token",
                j / tokens as f64
            );
            assert!((70.0..700.0).contains(&w), "{kind:?}: {w} W");
        }
    }
}
