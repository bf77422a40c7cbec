//! A fixed number of ledger ticks at 10,000 requests in flight, for counting instructions where
//! timings are too noisy to compare builds (a shared machine: the same build's `cargo bench
//! --bench ledger` varied 2× within an hour). The same steady state as `benches/ledger.rs`
//! (`benches/ledger/steady.rs`): every request produced a token since the last tick (or, with
//! `half`, every second one is a non-streamed request whose work is estimated each tick); 40
//! ticks fill the window first.
//!
//! ```sh
//! cargo build --release --example ledger_ticks
//! valgrind --tool=callgrind target/release/examples/ledger_ticks 0    # the set-up alone
//! valgrind --tool=callgrind target/release/examples/ledger_ticks 20   # set-up and 20 ticks
//! ```
//!
//! The difference of the two counts over 20 is the instructions of one tick (README, "Measured
//! overhead").

use joulegate::ledger::{Ledger, LedgerConfig};

#[path = "../benches/ledger/steady.rs"]
mod steady;
use steady::{N, WARM_UP_TICKS};

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
    let mut observations = steady::observations(if half_invisible { 2 } else { 0 });
    for k in 1..=WARM_UP_TICKS + measured {
        steady::tick(&mut ledger, &mut observations, k);
    }
    let t = ledger.totals();
    assert_eq!(
        t.attributed_uj + t.idle_uj + t.unattributed_uj + t.pending_uj,
        t.measured_uj,
        "books"
    );
    println!(
        "{measured} ticks after {WARM_UP_TICKS} of warm-up, {N} requests in flight{}: books exact",
        if half_invisible {
            ", every second one non-streamed"
        } else {
            ""
        }
    );
}
