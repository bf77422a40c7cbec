//! Ledger budget (DESIGN.md §7): one tick with 10,000 requests in flight must cost at most 1 ms.
//!
//! `ledger_apply_10k`: the pure ledger in steady state (window full, every request produced a token
//! since the last tick, so each tick places 10,000 items and settles a tick of 10,000 items).
//! `accounting_tick_10k`: the whole accounting step (registry snapshot, ledger, publishing back
//! into the atomics) over 10,000 registered streams.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use joulegate::accounting::{Accounting, AccountingConfig};
use joulegate::clock::Clock;
use joulegate::ledger::{Ledger, LedgerConfig, Observation};
use joulegate::observe::{Endpoint, InFlight, RequestMeta};
use joulegate::tick::Tick;

#[path = "ledger/steady.rs"]
mod steady;
use steady::{N, TICK_NS, WARM_UP_TICKS};

fn ledger_apply(c: &mut Criterion) {
    ledger_apply_with(c, "ledger_apply_10k", 0);
    // Every second request non-streamed and not yet answered: its work is estimated each tick
    // (the prefill conveyor, then decode at the per-sequence rate).
    ledger_apply_with(c, "ledger_apply_10k_half_invisible", 2);
}

/// Ticks over the steady state of `steady` (every `invisible_every`-th request non-streamed).
fn ledger_apply_with(c: &mut Criterion, name: &str, invisible_every: u64) {
    let mut ledger = Ledger::new(LedgerConfig::default()).expect("default config");
    let mut obs = steady::observations(invisible_every);
    let mut k = 0u64;
    let mut step = |ledger: &mut Ledger, obs: &mut Vec<Observation>| {
        k += 1;
        steady::tick(ledger, obs, k);
    };
    // Fill the window so every measured tick also settles one.
    for _ in 0..WARM_UP_TICKS {
        step(&mut ledger, &mut obs);
    }
    c.bench_function(name, |b| b.iter(|| step(&mut ledger, &mut obs)));
    let t = ledger.totals();
    assert_eq!(
        t.attributed_uj + t.idle_uj + t.unattributed_uj + t.pending_uj,
        t.measured_uj
    );
}

fn accounting_tick(c: &mut Criterion) {
    let reg = Arc::new(InFlight::new());
    let clock = Clock::new();
    let guards: Vec<_> = (1..=N)
        .map(|id| {
            let g = reg.register(
                RequestMeta {
                    id,
                    model: Some("m".into()),
                    endpoint: Endpoint::ChatCompletions,
                    key_hash: None,
                    tag: None,
                    stream: true,
                    arrival_ns: 1,
                    estimated_prompt_tokens: 500,
                    choices: 1,
                    max_tokens: None,
                },
                clock,
            );
            g.progress().progress_visible.store(true, Relaxed);
            g
        })
        .collect();
    let mut acc = Accounting::new(AccountingConfig::default(), reg.clone(), clock).expect("config");
    let mut k = 0u64;
    let mut step = |acc: &mut Accounting| {
        k += 1;
        let end = k * TICK_NS;
        for g in &guards {
            g.progress().observe_completion(k, end - 1);
        }
        acc.process_tick(&Tick {
            seq: k,
            start_ns: end - TICK_NS,
            end_ns: end,
            delta_uj: Some(30_000_000),
            devices: Vec::new(),
            phase: joulegate::tick::TickPhase::Whole,
        });
    };
    for _ in 0..40 {
        step(&mut acc);
    }
    // The token updates above are the data plane's cost, not accounting's; measure them apart.
    c.bench_function("accounting_tick_10k_incl_token_updates", |b| {
        b.iter(|| step(&mut acc))
    });
    let mut j = 1_000_000u64;
    c.bench_function("data_plane_token_updates_10k", |b| {
        b.iter(|| {
            j += 1;
            for g in &guards {
                g.progress().observe_completion(j, j);
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = ledger_apply, accounting_tick
}
criterion_main!(benches);
