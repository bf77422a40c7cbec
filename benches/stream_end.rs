//! What closing a stream's energy costs the last byte (DESIGN §7: at most 1 ms p99): reading the
//! request's atomics into figures and writing them as trailers or as the usage chunk's `energy`
//! object. Nothing here waits on the sampler or the ledger; this bench shows the work is microseconds.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use joulegate::clock::Clock;
use joulegate::observe::{Endpoint, InFlight, RequestMeta};
use joulegate::proxy::energy::{energy_headers, energy_json, Carbon};

fn bench(c: &mut Criterion) {
    let clock = Clock::new();
    let in_flight = Arc::new(InFlight::new());
    let meta = RequestMeta {
        id: 42,
        model: Some("meta-llama/Llama-3.1-8B-Instruct".into()),
        endpoint: Endpoint::ChatCompletions,
        key_hash: Some("0123456789abcdef".into()),
        tag: Some("run-7".into()),
        stream: true,
        arrival_ns: 1,
        estimated_prompt_tokens: 100,
        choices: 1,
        max_tokens: Some(512),
    };
    let guard = in_flight.register(meta, clock);
    let p = guard.progress().clone();
    p.set_prompt_exact(812);
    p.observe_completion(377, 2);
    p.completion_exact.store(true, Relaxed);
    p.energy_uj.store(93_123_456, Relaxed);
    p.active_uj.store(80_000_000, Relaxed);
    p.settled_until_ns.store(clock.now_ns(), Relaxed);
    p.recent_power_mw.store(250_000, Relaxed);
    let carbon = Carbon {
        intensity_g_per_kwh: Some(400.0),
        pue: 1.2,
    };
    let id = p.meta.public_id();
    c.bench_function("stream_end_trailers", |b| {
        b.iter(|| {
            let figures = p.energy_now(clock.now_ns(), &in_flight.rates);
            std::hint::black_box(energy_headers(&id, &figures, &carbon))
        })
    });
    c.bench_function("stream_end_usage_energy_object", |b| {
        b.iter(|| {
            let figures = p.energy_now(clock.now_ns(), &in_flight.rates);
            std::hint::black_box(energy_json(&id, &figures, &carbon))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
