//! Cost of the streaming token observer per SSE event and per byte: plain chunks and continuous-usage
//! chunks, observe-only (pass-through) and rewriting (usage removal) modes. Each upstream event is fed
//! as its own frame, as vLLM flushes them. Events are real vLLM 0.32 chunks from `tests/fixtures/`.
//! Also the one read of a whole non-streaming JSON body for its `usage` and `metrics`
//! (`json_body/usage_and_metrics`), which every JSON response takes.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use joulegate::observe::{Endpoint, RequestMeta, RequestProgress};
use joulegate::openai::usage::usage_and_metrics;
use joulegate::openai::{ObserverConfig, StreamObserver, StripPolicy};

const EVENTS: usize = 1000;

/// The content-chunk event (the second event) of a fixture, repeated.
fn frames(fixture: &str) -> Vec<Bytes> {
    let text = std::fs::read_to_string(format!("tests/fixtures/vllm-0.32/{fixture}.body"))
        .expect("fixture");
    let event = text
        .split_inclusive("\n\n")
        .nth(1)
        .expect("event")
        .to_owned();
    (0..EVENTS).map(|_| Bytes::from(event.clone())).collect()
}

fn progress() -> RequestProgress {
    RequestProgress::new(RequestMeta {
        id: 1,
        model: None,
        endpoint: Endpoint::ChatCompletions,
        key_hash: None,
        tag: None,
        stream: true,
        arrival_ns: 1,
        estimated_prompt_tokens: 1,
        choices: 1,
        max_tokens: None,
    })
}

fn run(cfg: ObserverConfig, frames: &[Bytes], p: &RequestProgress) -> usize {
    let mut obs = StreamObserver::new(cfg);
    let mut n = 0;
    for (i, f) in frames.iter().enumerate() {
        n += obs.feed(f.clone(), i as u64, p, &mut || None).len();
    }
    n + obs.finish().len()
}

fn bench(c: &mut Criterion) {
    let plain = frames("chat-stream-plain");
    let cont = frames("chat-stream-usage-continuous");
    let observe = ObserverConfig::observe_only(Endpoint::ChatCompletions);
    let mut strip_all = observe;
    strip_all.strip = StripPolicy::AllUsage;
    let mut strip_chunk = observe;
    strip_chunk.strip = StripPolicy::PerChunkUsage;
    let cases: [(&str, &[Bytes], ObserverConfig); 5] = [
        ("plain/observe", &plain, observe),
        ("continuous/observe", &cont, observe),
        ("plain/rewrite", &plain, strip_all),
        ("continuous/rewrite-all", &cont, strip_all),
        ("continuous/rewrite-per-chunk", &cont, strip_chunk),
    ];
    let p = progress();
    for (unit, per) in [("per_event", true), ("per_byte", false)] {
        let mut g = c.benchmark_group(unit);
        g.warm_up_time(std::time::Duration::from_millis(500));
        g.measurement_time(std::time::Duration::from_secs(2));
        g.sample_size(20);
        for (name, frames, cfg) in cases {
            let bytes: usize = frames.iter().map(Bytes::len).sum();
            g.throughput(if per {
                Throughput::Elements(frames.len() as u64)
            } else {
                Throughput::Bytes(bytes as u64)
            });
            g.bench_function(name, |b| b.iter(|| black_box(run(cfg, frames, &p))));
        }
        g.finish();
    }
    let body = std::fs::read("tests/fixtures/vllm-0.32/chat-json.body").expect("fixture");
    let mut g = c.benchmark_group("json_body");
    g.warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(2));
    g.sample_size(20);
    g.bench_function("usage_and_metrics", |b| {
        b.iter(|| {
            black_box(usage_and_metrics(
                Endpoint::ChatCompletions,
                black_box(&body),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
