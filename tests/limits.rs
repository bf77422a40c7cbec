//! Bounds that had no test of their own (issue #9, limits): a full request-log queue drops lines
//! and counts them instead of blocking accounting. Accounting is driven by hand (ticks fed
//! synchronously), so nothing here depends on time.

use std::sync::Arc;

use joulegate::accounting::{Accounting, AccountingConfig};
use joulegate::clock::Clock;
use joulegate::observe::{Endpoint, InFlight, Outcome, RequestMeta};
use joulegate::tick::{Tick, TickPhase};

const MS: u64 = 1_000_000;

fn meta(id: u64) -> RequestMeta {
    RequestMeta {
        id,
        model: Some("m".into()),
        endpoint: Endpoint::Completions,
        key_hash: None,
        tag: None,
        stream: false,
        arrival_ns: 0,
        estimated_prompt_tokens: 10,
        choices: 1,
        max_tokens: None,
    }
}

#[test]
fn a_full_request_log_queue_drops_and_counts_lines_without_blocking() {
    let reg = Arc::new(InFlight::new());
    let clock = Clock::new();
    let config = AccountingConfig {
        record_channel_capacity: 2,
        ..AccountingConfig::default()
    };
    let mut acc = Accounting::new(config, reg.clone(), clock).expect("config");
    // Nobody drains the queue: a stalled log writer.
    let rx = acc.with_log_channel().expect("a log channel");
    for id in 1..=5 {
        let g = reg.register(meta(id), clock);
        g.progress().finish(Outcome::Ok, 10 * MS);
    }
    let mut k = 0;
    while !reg.is_empty() {
        k += 1;
        assert!(k < 1000, "requests never retired");
        acc.process_tick(&Tick {
            seq: k,
            start_ns: (k - 1) * 50 * MS,
            end_ns: k * 50 * MS,
            delta_uj: Some(1_000),
            devices: Vec::new(),
            phase: TickPhase::Whole,
        });
    }
    let stats = acc.shared().stats();
    assert_eq!(stats.requests.ok, 5, "every request still has its record");
    assert_eq!(
        stats.records_not_logged, 3,
        "two fit the queue, three were dropped"
    );
    assert_eq!(rx.try_iter().count(), 2);
}
