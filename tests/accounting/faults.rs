//! Upstream faults with accounting fed tick by tick (issue #9): for each fault the mock vLLM
//! injects (`x-mock-fault`), the client gets the right status or a stream that ends in an error,
//! the record says `error`, the books balance, and the proxy keeps serving (a follow-up request
//! is `ok`). Stalls end through the configured bounds (`upstream_header_timeout_ms`,
//! `upstream_idle_timeout_ms`), which only decide when an outcome that cannot change happens.

use http_body_util::BodyExt;
use joulegate::ledger::RecordStatus;
use joulegate::observe::format_public_id;

use super::common::{self, guard, h1};
use super::energy::{chat_body, text, CHAT};
use super::rig::{engine_mock, Metering, Rig};
use super::wire::client_request;

/// The public id the next request the proxy registers will get (ids are sequential; taking one
/// here only skips it).
fn next_public_id(rig: &Rig) -> String {
    format_public_id(rig.state.in_flight.next_id() + 1)
}

/// Sends a request with a fault; the status, whether the body ended in an error, and the record.
async fn faulty(rig: &mut Rig, stream: bool, fault: &str) -> (u16, bool, RecordStatus) {
    let expected_id = next_public_id(rig);
    let body = chat_body(if stream { r#","stream":true"# } else { "" });
    let req = client_request(rig.proxy, CHAT, "fault", &body, &[("x-mock-fault", fault)]);
    let mut sender = h1(rig.proxy).await;
    let response = guard("response head", sender.send_request(req))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    if let Some(id) = text(response.headers(), "x-energy-request-id") {
        assert_eq!(id, expected_id, "{fault}");
    }
    let mut body = response.into_body();
    let mut body_error = false;
    while let Some(frame) = guard("body", body.frame()).await {
        if frame.is_err() {
            body_error = true;
            break;
        }
    }
    let record = rig.settle(&expected_id);
    (status, body_error, record.status)
}

async fn follow_up_is_ok(rig: &mut Rig) {
    let req = client_request(rig.proxy, CHAT, "after", &chat_body(""), &[]);
    let got = common::send(rig.proxy, req).await;
    assert_eq!(got.status, 200);
    let record = rig.settle(&text(&got.headers, "x-energy-request-id").expect("id"));
    assert_eq!(record.status, RecordStatus::Ok);
}

#[tokio::test]
async fn resets_and_error_statuses_are_recorded_as_errors() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    // Reset before the response head: 502 from the proxy.
    assert_eq!(
        faulty(&mut rig, false, "reset-after=0").await,
        (502, false, RecordStatus::Error)
    );
    // Reset mid-stream: the client's stream ends in an error, not a clean end.
    assert_eq!(
        faulty(&mut rig, true, "reset-after=2").await,
        (200, true, RecordStatus::Error)
    );
    // 5xx from the upstream passes through, JSON and stream.
    assert_eq!(
        faulty(&mut rig, false, "status=500").await,
        (500, false, RecordStatus::Error)
    );
    assert_eq!(
        faulty(&mut rig, true, "status=503").await,
        (503, false, RecordStatus::Error)
    );
    follow_up_is_ok(&mut rig).await;
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn stalls_end_at_the_configured_bounds_and_are_recorded_as_errors() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |a| {
        a.upstream_header_timeout_ms = Some(100);
        a.upstream_idle_timeout_ms = Some(100);
    })
    .await;
    // Stall before the response head: 504.
    assert_eq!(
        faulty(&mut rig, false, "stall-after=0").await,
        (504, false, RecordStatus::Error)
    );
    // Stall mid-stream: the idle bound ends the client's stream in an error and drops the
    // upstream request, which the mock sees as its client leaving.
    let gone = rig.mock.client_gone();
    assert_eq!(
        faulty(&mut rig, true, "stall-after=2").await,
        (200, true, RecordStatus::Error)
    );
    guard(
        "the upstream request to be cancelled",
        rig.mock.wait_for_client_gone(gone + 1),
    )
    .await;
    follow_up_is_ok(&mut rig).await;
    rig.assert_conservation();
    rig.stop().await;
}
