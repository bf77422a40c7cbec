//! A fixed number of ledger ticks at 10,000 requests in flight, for counting instructions where
//! timings are too noisy to compare builds (a shared machine: the same build's `cargo bench
//! --bench ledger` varied 2× within an hour). Same steady state as `benches/ledger.rs`: every
//! request produced a token since the last tick (or, with `half`, every second one is a
//! non-streamed request whose work is estimated each tick); 40 ticks fill the window first.
//!
//! ```sh
//! cargo build --release --example ledger_ticks
//! valgrind --tool=callgrind target/release/examples/ledger_ticks 0    # the set-up alone
//! valgrind --tool=callgrind target/release/examples/ledger_ticks 20   # set-up and 20 ticks
//! ```
//!
//! The difference of the two counts over 20 is the instructions of one tick (README, "Measured
//! overhead").

use joulegate::ledger::{Ledger, LedgerConfig, Observation, TickSpan, WorkKind};
use joulegate::observe::{Outcome, ProgressSnapshot};

const N: u64 = 10_000;
const TICK_NS: u64 = 50_000_000;
const WARM_UP_TICKS: u64 = 40;

fn main() {
    let mut args = std::env::args().skip(1);
    let measured: u64 = match args.next().map(|v| v.parse()) {
        None => 20,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("ledger_ticks: the number of ticks must be an integer: {e}");
            std::process::exit(2);
        }
    };
    let half_invisible = match args.next().as_deref() {
        None => false,
        Some("half") => true,
        Some(other) => {
            eprintln!("ledger_ticks: the second argument is `half` or nothing, not {other:?}");
            std::process::exit(2);
        }
    };
    let mut ledger = Ledger::new(LedgerConfig::default()).expect("default config");
    let mut observations: Vec<Observation> = (1..=N)
        .map(|id| {
            let invisible = half_invisible && id % 2 == 0;
            Observation {
                progress: ProgressSnapshot {
                    id,
                    arrival_ns: 1,
                    prompt_tokens: 500,
                    prompt_exact: true,
                    completion_tokens: if invisible { 0 } else { 1 },
                    completion_exact: false,
                    progress_visible: !invisible,
                    first_token_ns: if invisible { 0 } else { 2 },
                    last_token_ns: if invisible { 0 } else { 2 },
                    queue_ns: 0,
                    prefill_ns: 0,
                    generation_ns: 0,
                    engine_timed: false,
                    end_ns: 0,
                    outcome: Outcome::InFlight,
                },
                kind: WorkKind::Generate,
                choices: 1,
            }
        })
        .collect();
    for k in 1..=WARM_UP_TICKS + measured {
        let end = k * TICK_NS;
        for o in observations
            .iter_mut()
            .filter(|o| o.progress.progress_visible)
        {
            o.progress.completion_tokens += 1;
            o.progress.last_token_ns = end - 1;
        }
        ledger.apply(
            TickSpan {
                energy_later: false,
                seq: k,
                start_ns: end - TICK_NS,
                end_ns: end,
                delta_uj: Some(30_000_000),
            },
            &observations,
        );
    }
    let t = ledger.totals();
    assert_eq!(
        t.attributed_uj + t.idle_uj + t.unattributed_uj + t.pending_uj,
        t.measured_uj,
        "books"
    );
    println!(
        "{} ticks after {WARM_UP_TICKS} of warm-up, {N} requests in flight{}: books exact",
        measured,
        if half_invisible {
            ", every second one non-streamed"
        } else {
            ""
        }
    );
}
