//! `joulegate demo` run in-process on a small workload: every request has a record with status ok,
//! the books balance exactly, and the report's figures agree with the records. Nothing here depends
//! on timing: the demo waits for accounting by condition, and only structural facts are asserted.

use std::time::Duration;

use joulegate::demo::{run, DemoArgs, DemoOptions};
use joulegate::ledger::RecordStatus;

fn small() -> DemoOptions {
    let args = DemoArgs {
        requests: 6,
        seed: 7,
        duration_s: 0.3,
        time_scale: 8.0,
        carbon_intensity_g_per_kwh: 400.0,
        json: false,
    };
    let mut opts = DemoOptions::from_args(&args).expect("valid flags");
    opts.world.idle_warmup = Duration::ZERO;
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_settles_every_request_and_conserves_energy() {
    let report = run(&small()).await.expect("demo runs");
    assert_eq!(report.rows.len(), 6);
    let mut sum_uj = 0u64;
    for row in &report.rows {
        assert_eq!(row.sent.http_status, 200, "{row:?}");
        let record = row.record.as_ref().expect("every request has a record");
        assert_eq!(record.status, RecordStatus::Ok, "{record:?}");
        assert!(record.tokens_exact || !record.stream, "{record:?}");
        let truth = row.truth.as_ref().expect("the engine knows every request");
        assert_eq!(record.completion_tokens, truth.completion_tokens);
        assert_eq!(record.prompt_tokens, truth.prompt_tokens);
        assert!(record.co2_grams.is_some(), "carbon is configured");
        sum_uj += row.energy_uj().expect("record");
    }
    let t = report.totals;
    assert!(report.conserved(), "{t:?}");
    assert_eq!(t.pending_uj, 0);
    assert_eq!(
        u128::from(t.attributed_uj) + u128::from(t.idle_uj) + u128::from(t.unattributed_uj),
        u128::from(t.measured_uj)
    );
    assert!(t.measured_uj > 0);
    // Records carry µJ-exact joules: their sum is what the ledger attributed.
    assert_eq!(sum_uj, t.attributed_uj);
    let text = report.render();
    assert!(text
        .lines()
        .any(|l| l.starts_with("conservation:") && l.ends_with(" OK")));
    let json = report.to_json();
    assert_eq!(json["totals"]["conserved"], true);
    assert_eq!(json["requests"].as_array().map(Vec::len), Some(6));
}

#[test]
fn demo_flags_are_validated() {
    let base = DemoArgs {
        requests: 1,
        seed: 0,
        duration_s: 1.0,
        time_scale: 1.0,
        carbon_intensity_g_per_kwh: 400.0,
        json: false,
    };
    assert!(DemoOptions::from_args(&base).is_ok());
    for bad in [
        DemoArgs {
            requests: 0,
            ..base.clone()
        },
        DemoArgs {
            duration_s: -1.0,
            ..base.clone()
        },
        DemoArgs {
            time_scale: 0.0,
            ..base.clone()
        },
        DemoArgs {
            time_scale: f64::NAN,
            ..base.clone()
        },
        DemoArgs {
            carbon_intensity_g_per_kwh: -5.0,
            ..base.clone()
        },
    ] {
        assert!(DemoOptions::from_args(&bad).is_err(), "{bad:?}");
    }
}
