//! `response_energy = "settled"`: the energy-bearing part of every response waits until accounting
//! has retired the request, so headers, the usage chunk's `energy` object and trailers carry
//! exactly the record's figures (also the trailers of a JSON answer too large to buffer); a tiny
//! wait bound gives the provisional figure as `estimated`;
//! without a meter nothing waits; a client leaving during the wait changes nothing.
//!
//! The rig plays the sampler while a response waits ([`Rig::drive`]): the number of ticks a
//! request needs varies, what the response carries does not.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use joulegate::ledger::{RecordStatus, RequestRecord};
use joulegate::observe::{parse_public_id, Outcome};
use serde_json::Value;

use super::common::{self, collect, guard, h2, h2_request, Got};
use super::energy::{chat_body, text, CHAT};
use super::rig::{engine_mock, Metering, Rig};
use super::wire::{client_request, strip_energy};

/// Long enough never to end a wait in these tests (settlement takes a few ticks).
const NEVER_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug)]
enum Via {
    H1,
    H1Te,
    H2,
}

async fn exchange(proxy: SocketAddr, path: &'static str, body: Vec<u8>, via: Via) -> Got {
    match via {
        Via::H1 => common::send(proxy, client_request(proxy, path, "settled", &body, &[])).await,
        Via::H1Te => {
            let req = client_request(proxy, path, "settled", &body, &[("te", "trailers")]);
            common::send(proxy, req).await
        }
        Via::H2 => {
            let req = client_request(proxy, path, "settled", &body, &[]);
            let mut sender = h2(proxy).await;
            let resp = sender
                .send_request(h2_request(req, proxy))
                .await
                .expect("h2 response");
            collect(resp).await
        }
    }
}

fn settled_rig(max_wait_ms: u64, metering: Metering) -> impl std::future::Future<Output = Rig> {
    Rig::start(engine_mock(), metering, move |args| {
        args.response_energy = Some("settled".into());
        args.response_energy_max_wait_ms = Some(max_wait_ms);
    })
}

/// Header or trailer fields equal the record's.
fn assert_fields_match(h: &HeaderMap, r: &RequestRecord, ctx: &str) {
    assert_eq!(
        text(h, "x-energy-request-id").as_deref(),
        Some(&*r.id),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-joules"),
        Some(format!("{:.6}", r.energy_joules)),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-active-joules"),
        Some(format!("{:.6}", r.active_joules)),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-prompt-tokens"),
        Some(r.prompt_tokens.to_string()),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-completion-tokens"),
        Some(r.completion_tokens.to_string()),
        "{ctx}"
    );
    assert_eq!(
        text(h, "x-energy-status").as_deref(),
        Some(r.status.as_str()),
        "{ctx}"
    );
}

/// The usage chunk's `energy` object equals the record.
fn assert_object_matches(e: &Value, r: &RequestRecord, ctx: &str) {
    assert_eq!(e["request_id"], r.id, "{ctx}");
    assert_eq!(e["joules"].as_f64(), Some(r.energy_joules), "{ctx}: {e}");
    assert_eq!(
        e["active_joules"].as_f64(),
        Some(r.active_joules),
        "{ctx}: {e}"
    );
    assert_eq!(e["prompt_tokens"], r.prompt_tokens, "{ctx}");
    assert_eq!(e["completion_tokens"], r.completion_tokens, "{ctx}");
    assert_eq!(e["status"], r.status.as_str(), "{ctx}");
}

struct Case {
    label: &'static str,
    path: &'static str,
    body: Vec<u8>,
    via: Via,
    /// Where the energy rides: headers (JSON), the `energy` object, trailers.
    headers: bool,
    object: bool,
    trailers: bool,
}

fn workload() -> Vec<Case> {
    let usage = r#","stream":true,"stream_options":{"include_usage":true}"#;
    let completion_usage = br#"{"model":"tiny","prompt":"once upon a time","max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#;
    let case = |label, path, body: Vec<u8>, via, headers, object, trailers| Case {
        label,
        path,
        body,
        via,
        headers,
        object,
        trailers,
    };
    vec![
        case(
            "json chat",
            CHAT,
            chat_body(""),
            Via::H1,
            true,
            false,
            false,
        ),
        case(
            "json completions",
            "/v1/completions",
            br#"{"model":"tiny","prompt":"once upon a time","max_tokens":3}"#.to_vec(),
            Via::H1,
            true,
            false,
            false,
        ),
        case(
            "json embeddings",
            "/v1/embeddings",
            br#"{"model":"tiny","input":"the quick brown fox"}"#.to_vec(),
            Via::H2,
            true,
            false,
            false,
        ),
        case(
            "stream usage h2",
            CHAT,
            chat_body(usage),
            Via::H2,
            false,
            true,
            true,
        ),
        case(
            "stream no usage h2",
            CHAT,
            chat_body(r#","stream":true"#),
            Via::H2,
            false,
            false,
            true,
        ),
        case(
            "stream usage h1",
            CHAT,
            chat_body(usage),
            Via::H1,
            false,
            true,
            false,
        ),
        case(
            "stream completions usage h1+TE",
            "/v1/completions",
            completion_usage.to_vec(),
            Via::H1Te,
            false,
            true,
            true,
        ),
    ]
}

/// Checks one settled response against its record, which must already exist: the response waited
/// for it.
fn check(rig: &Rig, case: &Case, got: &Got) -> Arc<RequestRecord> {
    let ctx = case.label;
    assert_eq!(got.status, 200, "{ctx}");
    let public_id = text(&got.headers, "x-energy-request-id").expect("request id");
    let record = rig
        .record(&public_id)
        .unwrap_or_else(|| panic!("{ctx}: no record when the response ended"));
    assert_eq!(record.status, RecordStatus::Ok, "{ctx}: {record:?}");
    assert!(record.tokens_exact, "{ctx}: {record:?}");
    assert!(record.energy_joules > 0.0, "{ctx}: {record:?}");
    if case.headers {
        assert_fields_match(&got.headers, &record, ctx);
    }
    let stripped = strip_energy(&got.body);
    assert_eq!(stripped.energy.len(), usize::from(case.object), "{ctx}");
    if let Some((_, e)) = stripped.energy.first() {
        assert_object_matches(e, &record, ctx);
    }
    match (&got.trailers, case.trailers) {
        (Some(t), true) => assert_fields_match(t, &record, &format!("{ctx} trailers")),
        (None, false) => {}
        (t, want) => panic!("{ctx}: trailers {t:?}, wanted: {want}"),
    }
    record
}

#[tokio::test]
async fn settled_responses_carry_the_records_figures() {
    let mut rig = settled_rig(NEVER_MS, Metering::Measured).await;
    let proxy = rig.proxy;
    let cases = workload();
    // One at a time.
    for case in &cases {
        let got = rig
            .drive(exchange(proxy, case.path, case.body.clone(), case.via))
            .await;
        check(&rig, case, &got);
    }
    // All at once: each waits for its own settlement only.
    let tasks: Vec<_> = cases
        .iter()
        .map(|c| tokio::spawn(exchange(proxy, c.path, c.body.clone(), c.via)))
        .collect();
    let all = rig
        .drive(async {
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.expect("exchange task"));
            }
            all
        })
        .await;
    for (case, got) in cases.iter().zip(&all) {
        check(&rig, case, got);
    }
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn a_tiny_wait_bound_gives_the_provisional_figure_as_estimated() {
    // No tick is fed before the responses end: nothing can settle within the bound.
    let mut rig = settled_rig(1, Metering::Measured).await;
    let got = guard("json", exchange(rig.proxy, CHAT, chat_body(""), Via::H1)).await;
    assert_eq!(
        text(&got.headers, "x-energy-status").as_deref(),
        Some("estimated")
    );
    assert!(got.headers.contains_key("x-energy-joules"));
    let id = text(&got.headers, "x-energy-request-id").expect("id");
    assert_eq!(rig.settle(&id).status, RecordStatus::Ok);
    let body = chat_body(r#","stream":true,"stream_options":{"include_usage":true}"#);
    let got = guard("stream", exchange(rig.proxy, CHAT, body, Via::H2)).await;
    let stripped = strip_energy(&got.body);
    assert_eq!(stripped.energy.len(), 1);
    assert_eq!(stripped.energy[0].1["status"], "estimated");
    let trailers = got.trailers.expect("trailers");
    assert_eq!(
        text(&trailers, "x-energy-status").as_deref(),
        Some("estimated")
    );
    let id = text(&got.headers, "x-energy-request-id").expect("id");
    assert_eq!(rig.settle(&id).status, RecordStatus::Ok);
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn without_a_meter_settled_mode_never_waits() {
    // A wait would outlast the test's guard: the responses must come without any tick or timer.
    let mut rig = settled_rig(NEVER_MS, Metering::None).await;
    for case in workload() {
        let got = guard(
            case.label,
            exchange(rig.proxy, case.path, case.body.clone(), case.via),
        )
        .await;
        let ctx = case.label;
        if case.headers {
            assert_eq!(
                text(&got.headers, "x-energy-status").as_deref(),
                Some("unavailable"),
                "{ctx}"
            );
        }
        let stripped = strip_energy(&got.body);
        if let Some((_, e)) = stripped.energy.first() {
            assert_eq!(e["status"], "unavailable", "{ctx}");
        }
        if let Some(t) = &got.trailers {
            assert_eq!(
                text(t, "x-energy-status").as_deref(),
                Some("unavailable"),
                "{ctx}"
            );
        }
        let id = text(&got.headers, "x-energy-request-id").expect("id");
        assert_eq!(
            rig.settle_without_ticks(&id).status,
            RecordStatus::Unavailable
        );
    }
    rig.stop().await;
}

#[tokio::test]
async fn a_client_leaving_while_the_usage_chunk_waits_keeps_the_outcome() {
    let mut rig = settled_rig(NEVER_MS, Metering::Measured).await;
    let body = chat_body(r#","stream":true,"stream_options":{"include_usage":true}"#);
    let req = client_request(rig.proxy, CHAT, "leaves", &body, &[]);
    let mut sender = h2(rig.proxy).await;
    let resp = guard("h2", sender.send_request(h2_request(req, rig.proxy)))
        .await
        .expect("h2 response");
    let id = text(resp.headers(), "x-energy-request-id").expect("id");
    let key = parse_public_id(&id).expect("jg- id");
    let progress = rig.state.in_flight.get(key).expect("registered");
    // The proxy marks the request finished when it holds the final usage chunk; with no tick
    // fed, it then waits. Wait for that state (the bound only guards against a hang).
    guard("the usage chunk held", async {
        while progress.outcome() == Outcome::InFlight {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(!progress.settled.is_set());
    drop(resp);
    drop(sender);
    let record = rig.settle(&id);
    assert_eq!(record.status, RecordStatus::Ok, "{record:?}");
    assert!(
        record.tokens_exact && record.energy_joules > 0.0,
        "{record:?}"
    );
    assert!(progress.settled.is_set());
    // The proxy goes on serving.
    let case = &workload()[0];
    let got = rig
        .drive(exchange(rig.proxy, case.path, case.body.clone(), case.via))
        .await;
    check(&rig, case, &got);
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn json_answers_too_large_to_buffer_wait_before_their_trailers() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |args| {
        args.response_energy = Some("settled".into());
        args.response_energy_max_wait_ms = Some(NEVER_MS);
        args.max_buffered_response_bytes = Some(16);
    })
    .await;
    let case = Case {
        label: "large json h2",
        path: CHAT,
        body: chat_body(""),
        via: Via::H2,
        headers: false,
        object: false,
        trailers: true,
    };
    let got = rig
        .drive(exchange(rig.proxy, case.path, case.body.clone(), case.via))
        .await;
    check(&rig, &case, &got);
    rig.assert_conservation();
    rig.stop().await;
}
