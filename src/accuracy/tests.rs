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
