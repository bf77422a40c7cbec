//! The ledger bench's steady state, shared by `benches/ledger.rs` (timed by criterion) and
//! `examples/ledger_ticks.rs` (counted in instructions): [`N`] requests in flight, every
//! streamed one producing a token each tick, the window full after [`WARM_UP_TICKS`].

use joulegate::ledger::{Ledger, Observation, TickSpan, WorkKind};
use joulegate::observe::{Outcome, ProgressSnapshot};

/// Requests in flight (DESIGN.md §7's budget is for 10,000).
pub const N: u64 = 10_000;
/// Length of a tick, ns.
pub const TICK_NS: u64 = 50_000_000;
/// Ticks that fill the window, so that every tick after them also settles one.
pub const WARM_UP_TICKS: u64 = 40;

/// `N` requests in flight; with `invisible_every = k > 0`, every `k`-th one's progress is
/// invisible (a non-streamed request with no first token, its work estimated each tick).
pub fn observations(invisible_every: u64) -> Vec<Observation> {
    (1..=N)
        .map(|id| {
            let invisible = invisible_every > 0 && id % invisible_every == 0;
            let first = if invisible { 0 } else { 2 };
            Observation {
                progress: ProgressSnapshot {
                    id,
                    arrival_ns: 1,
                    prompt_tokens: 500,
                    prompt_exact: true,
                    completion_tokens: u64::from(!invisible),
                    completion_exact: false,
                    progress_visible: !invisible,
                    first_token_ns: first,
                    last_token_ns: first,
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
        .collect()
}

/// Tick `k` (ending at `k` × [`TICK_NS`]): every visible request produced a token just before
/// its end.
pub fn tick(ledger: &mut Ledger, observations: &mut [Observation], k: u64) {
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
        observations,
    );
}
