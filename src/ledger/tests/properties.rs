//! Property tests of the ledger: random workloads and tick sequences keep the books exact and
//! settle everything; absurd inputs never panic.

use proptest::prelude::*;

use super::*;

fn script_strategy() -> impl Strategy<Value = Script> {
    (
        0u64..2_000,   // arrival ms
        0u64..5_000,   // prompt
        any::<bool>(), // visible
        0u64..400,     // ttft ms
        0u64..40,      // tokens
        1u64..60,      // gap ms
        0u8..4,        // outcome
        0u64..300,     // prefill ms reported (0 = unknown)
    )
        .prop_map(|(arr, prompt, visible, ttft, n, gap, outcome, pf)| {
            let arrival = arr * MS;
            let first = arrival + ttft * MS + 1;
            let tokens: Vec<u64> = (0..n).map(|i| first + i * gap * MS).collect();
            let end = tokens.last().copied().unwrap_or(first) + 3 * MS;
            let outcome = match outcome {
                0 => Outcome::Aborted,
                1 => Outcome::Error,
                _ => Outcome::Ok,
            };
            Script {
                id: 0,
                arrival,
                prompt,
                visible,
                tokens,
                end: Some((end, outcome)),
                prefill_ns: pf * MS,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn conservation_is_exact_and_everything_settles(
        mut scripts in proptest::collection::vec(script_strategy(), 0..25),
        energies in proptest::collection::vec(proptest::option::weighted(0.9, 0u64..5_000_000_000), 160),
        settle in 1usize..12,
        hold in 0usize..40,
        learn_idle in any::<bool>(),
    ) {
        for (i, s) in scripts.iter_mut().enumerate() { s.id = i as u64 + 1; }
        let mut l = Ledger::new(LedgerConfig {
            settle_ticks: settle,
            calibration_hold_ticks: hold,
            p_idle_mw: if learn_idle { None } else { Some(50_000) },
            idle_min_samples: 2,
            calibration: CalibrationConfig { min_ticks: 5, ..Default::default() },
            ..LedgerConfig::default()
        }).expect("config");
        // 160 ticks of 50 ms = 8 s; every script ends before 4.5 s, and the lag and the hold
        // for the calibration are at most 50 ticks together.
        let done = run(&mut l, &scripts, 160, |k| energies[(k - 1) as usize]);
        let t = l.totals();
        prop_assert_eq!(t.pending_uj, 0);
        prop_assert_eq!(t.attributed_uj + t.idle_uj + t.unattributed_uj, t.measured_uj);
        prop_assert_eq!(done.len(), scripts.len());
        prop_assert_eq!(l.tracked(), 0);
        let sum: u64 = done.iter().map(|f| f.energy.energy_uj).sum();
        prop_assert_eq!(sum, t.attributed_uj);
        for f in &done {
            let e = f.energy;
            prop_assert_eq!(e.prefill_uj + e.decode_uj, e.energy_uj);
            prop_assert!(e.active_uj <= e.energy_uj);
        }
        let active: u64 = done.iter().map(|f| f.energy.active_uj).sum();
        prop_assert_eq!(active, t.active_uj);
    }
}

#[test]
fn absurd_inputs_never_panic() {
    let mut l = Ledger::new(LedgerConfig {
        settle_ticks: 1,
        ..LedgerConfig::default()
    })
    .expect("config");
    let mut s = stream(1, 0, u64::MAX, 10, 3, 1);
    s.prefill_ns = u64::MAX;
    let obs = [s.at(u64::MAX).expect("arrived")];
    // Huge energies, a tick that goes back in time, an empty and a zero-length tick.
    l.apply(
        TickSpan {
            energy_later: false,
            seq: 1,
            start_ns: 0,
            end_ns: 100,
            delta_uj: Some(u64::MAX),
        },
        &obs,
    );
    l.apply(
        TickSpan {
            energy_later: false,
            seq: 2,
            start_ns: 100,
            end_ns: 50,
            delta_uj: Some(u64::MAX),
        },
        &obs,
    );
    l.apply(
        TickSpan {
            energy_later: false,
            seq: 3,
            start_ns: 200,
            end_ns: 200,
            delta_uj: Some(7),
        },
        &[],
    );
    l.apply(
        TickSpan {
            energy_later: false,
            seq: 4,
            start_ns: u64::MAX - 1,
            end_ns: u64::MAX,
            delta_uj: None,
        },
        &[],
    );
    l.flush();
    let mut out = Vec::new();
    l.drain_final(&mut out);
    assert_eq!(out.len(), 1);
}
