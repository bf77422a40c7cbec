//! The harness itself: deterministic, books exact, every request recorded.

use super::*;

fn small(workload: VirtualWorkload, period_ms: u64) -> Case {
    Case {
        workload,
        model: cost_models().remove(0),
        meter: MeterModel {
            counter_period_ns: period_ms * 1_000_000,
            ..MeterModel::default()
        },
        requests: 24,
        seed: 5,
        per_request_metrics: false,
    }
}

#[test]
fn runs_are_reproducible_and_books_exact() {
    for w in [VirtualWorkload::Steady, VirtualWorkload::Aborts] {
        let case = small(w, 50);
        let a = drive::run(&case.scenario(), AccountingConfig::default()).unwrap();
        let b = drive::run(&case.scenario(), AccountingConfig::default()).unwrap();
        assert_eq!(a.rows, b.rows, "{}", w.name());
        assert!(a.books_exact(), "{}: {:?}", w.name(), a.totals);
        assert!(a.rows.iter().all(|r| r.record_uj.is_some()), "{}", w.name());
        // The meter's noise averages out: measured is within 1 % of what the engine drew.
        let measured = a.totals.measured_uj as f64;
        let drawn = a.engine_total_uj as f64;
        assert!(
            (measured / drawn - 1.0).abs() < 0.01,
            "{measured} vs {drawn}"
        );
    }
}

/// A guard against regressions of the ledger, not the targets (those are the bench's): the
/// harness is deterministic, so these figures are exact for a given ledger, and the bounds sit a
/// little above what it achieves now (median / p95 of |error|, 40 requests, 8B model, 50 ms
/// counter; record, then the provisional figure a response carries): steady 6.1 / 17.5 and
/// 7.8 / 19.0 %, decode-heavy 3.2 / 9.2 and 3.1 / 12.7 %, queueing 5.6 / 23.5 and 7.6 / 21.0 %,
/// n>1 6.0 / 18.1 and 12.0 / 25.1 %; the naive split by completion tokens gives 24-35 % median,
/// 63-111 % p95 on the same requests.
#[test]
fn attribution_beats_the_naive_split_by_a_margin() {
    for (w, record, provisional) in [
        (VirtualWorkload::Steady, (0.08, 0.20), (0.10, 0.21)),
        (VirtualWorkload::DecodeHeavy, (0.05, 0.12), (0.05, 0.15)),
        (VirtualWorkload::Queueing, (0.08, 0.28), (0.10, 0.25)),
        (VirtualWorkload::Choices, (0.08, 0.22), (0.14, 0.29)),
    ] {
        let case = Case {
            requests: 40,
            seed: 11,
            ..small(w, 50)
        };
        let r = run_case(&case);
        assert!(
            r.books_exact && r.missing_records == 0,
            "{}: {r:?}",
            w.name()
        );
        for (kind, got, (median, p95)) in [
            ("record", r.record, record),
            ("provisional", r.provisional, provisional),
        ] {
            assert!(
                got.median <= median && got.p95 <= p95,
                "{} {kind}: median {:.3} p95 {:.3}",
                w.name(),
                got.median,
                got.p95
            );
            assert!(got.median < r.naive.median, "{} {kind}: {r:?}", w.name());
        }
    }
}
