//! Admission cost per model request: admit and give back one permit, with admission off (atomics
//! only, no lock) and on (uncontended: the request fits at once), and a queued hand-over (a
//! permit dropped grants the waiter at the head of the queue). DESIGN budget: at most 5 µs per
//! admitted request, nothing measurable when off.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use joulegate::proxy::admission::{Admission, AdmissionConfig};

fn on(max_requests: u64) -> AdmissionConfig {
    AdmissionConfig {
        max_inflight_requests: max_requests,
        max_inflight_tokens: 1_000_000,
        max_queue: 1024,
        queue_timeout: Duration::from_secs(30),
        default_max_tokens: 1024,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    let off = Arc::new(Admission::new(AdmissionConfig::off()));
    g.bench_function("off_admit_release", |b| {
        b.iter(|| {
            let permit = off.admit(std::hint::black_box(700)).now_or_never();
            drop(std::hint::black_box(permit));
        })
    });
    let enabled = Arc::new(Admission::new(on(256)));
    // Some requests already in flight, as on a busy server.
    let _busy: Vec<_> = (0..100).filter_map(|_| enabled.try_admit(700)).collect();
    g.bench_function("on_admit_release", |b| {
        b.iter(|| {
            let permit = enabled.admit(std::hint::black_box(700)).now_or_never();
            drop(std::hint::black_box(permit));
        })
    });
    // One slot: the held permit's drop hands the slot to the waiter queued behind it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let one = Arc::new(Admission::new(on(1)));
    g.bench_function("queued_handover", |b| {
        b.iter(|| {
            rt.block_on(async {
                let held = one.admit(700).await.expect("fits");
                let mut waiter = Box::pin(one.admit(700));
                assert!((&mut waiter).now_or_never().is_none());
                drop(held);
                let next = waiter.await.expect("granted");
                drop(next);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
