//! Every request shape, with usage injection on: the client sees byte-for-byte what the mock sends
//! it directly (ids and `created` aside, and the documented `energy` member, present exactly when the
//! client asked for usage); the proxy forwarded the client's bytes with only `stream_options`
//! changed; and the request's record has the mock's true token counts, exactly.

use joulegate::ledger::RecordStatus;
use joulegate::openai::inject::INJECTED_OPTIONS;
use joulegate::sim::{MockBuilder, MockHandle, RequestTruth};
use serde_json::Value;

use super::common::guard;
use super::rig::{engine_mock, Metering, Rig};
use super::wire::{
    all_shapes, assert_same_body, comparable_headers, event_json, events, exchange,
    normalise_created, strip_energy, Api, Exchange, Shape, MAX_TOKENS,
};

/// The body the proxy must forward for `shape`: the client's bytes, with the `stream_options` value
/// replaced by [`INJECTED_OPTIONS`] (or the member appended before the final `}`) when it injects.
fn expected_forwarded(ex: &Exchange, absent_true: bool) -> Vec<u8> {
    let client = std::str::from_utf8(&ex.client_body).expect("UTF-8 request");
    if !ex.shape.injected(absent_true) {
        return ex.client_body.clone();
    }
    let key = "\"stream_options\":";
    match client.find(key) {
        Some(at) => {
            let value_start = at + key.len();
            // The shapes' option objects are flat: the value ends at the first `}`.
            let value_end = value_start
                + client[value_start..]
                    .find('}')
                    .expect("options object closes")
                + 1;
            format!(
                "{}{INJECTED_OPTIONS}{}",
                &client[..value_start],
                &client[value_end..]
            )
            .into_bytes()
        }
        None => {
            let body = client.strip_suffix('}').expect("object body");
            format!("{body},{key}{INJECTED_OPTIONS}}}").into_bytes()
        }
    }
}

/// The `energy` member: present exactly once, in the final usage chunk, when the client asked for
/// usage; absent otherwise. Returns the stripped proxied body.
fn check_energy_member(ex: &Exchange, absent_true: bool, prompt: u64, completion: u64) -> String {
    let ctx = &ex.shape.name;
    let stripped = strip_energy(&ex.proxied.body);
    assert!(
        strip_energy(&ex.direct.body).energy.is_empty(),
        "{ctx}: the mock itself never sends `energy`"
    );
    if !ex.shape.wants_usage(absent_true) {
        assert!(
            stripped.energy.is_empty(),
            "{ctx}: `energy` without usage asked"
        );
        return stripped.body;
    }
    assert_eq!(stripped.energy.len(), 1, "{ctx}: one `energy` object");
    let (event_index, energy) = &stripped.energy[0];
    let all = events(&stripped.body);
    let chunk = event_json(all[*event_index]).expect("usage chunk JSON");
    assert_eq!(
        chunk["choices"],
        Value::Array(vec![]),
        "{ctx}: final usage chunk"
    );
    assert_eq!(chunk["usage"]["prompt_tokens"], prompt, "{ctx}");
    assert_eq!(chunk["usage"]["completion_tokens"], completion, "{ctx}");
    assert_eq!(
        all.iter()
            .skip(event_index + 1)
            .filter_map(|e| event_json(e))
            .count(),
        0,
        "{ctx}: nothing but [DONE] after the usage chunk"
    );
    assert_eq!(energy["request_id"], ex.public_id.as_str(), "{ctx}");
    assert!(
        matches!(energy["status"].as_str(), Some("ok" | "estimated")),
        "{ctx}: status {energy}"
    );
    assert!(energy["joules"].is_number(), "{ctx}: joules {energy}");
    assert!(
        energy["active_joules"].is_number(),
        "{ctx}: active_joules {energy}"
    );
    assert_eq!(energy["prompt_tokens"], prompt, "{ctx}");
    assert_eq!(energy["completion_tokens"], completion, "{ctx}");
    stripped.body
}

/// KNOWN DIFFERENCE (reported, not settled): with several choices (`n > 1` or several prompts) and no usage asked, the mock stamps
/// `system_fingerprint` on every choice's finish chunk, while the proxy, having dropped the injected
/// usage chunk, moves the fingerprint onto the last finish chunk only. No vLLM 0.32 capture shows
/// which one vLLM does, so the direct body is brought to the proxy's form here, and only here: the
/// fingerprint is removed from every finish chunk but the last.
fn fingerprint_on_last_finish_only(body: &str) -> String {
    let member = ",\"system_fingerprint\":";
    let events: Vec<&str> = body.split_inclusive("\n\n").collect();
    let last = events.iter().rposition(|e| e.contains(member));
    events
        .iter()
        .enumerate()
        .map(|(i, e)| match (e.find(member), Some(i) == last) {
            (Some(at), false) => {
                let value_end = e[at + member.len() + 1..]
                    .find('"')
                    .map_or(e.len(), |j| at + member.len() + 1 + j + 1);
                format!("{}{}", &e[..at], &e[value_end..])
            }
            _ => (*e).to_string(),
        })
        .collect()
}

/// The client's view of one exchange (status, headers, body byte-identical apart from `created`
/// and the checked `energy` member) and what was forwarded; returns the mock's truth.
pub async fn check_exchange(ex: &Exchange, mock: &MockHandle, absent_true: bool) -> RequestTruth {
    let shape = &ex.shape;
    let ctx = &shape.name;
    assert_eq!(ex.direct.status, 200, "{ctx}: direct status");
    assert_eq!(ex.proxied.status, ex.direct.status, "{ctx}: status");
    assert_eq!(
        comparable_headers(&ex.proxied),
        comparable_headers(&ex.direct),
        "{ctx}: headers"
    );
    // What was forwarded: the client's bytes, only `stream_options` changed, and only if injected.
    assert_eq!(
        String::from_utf8_lossy(&ex.forwarded.body),
        String::from_utf8_lossy(&expected_forwarded(ex, absent_true)),
        "{ctx}: forwarded body"
    );
    // Ground truth from the proxied mock's engine.
    let response_id = ex.forwarded.response_id.clone().expect("generation id");
    let truth = guard("truth", mock.wait_for_truth(&response_id))
        .await
        .unwrap_or_else(|| panic!("{ctx}: no truth for {response_id}"));
    let completion = if shape.api == Api::Embeddings {
        0
    } else {
        MAX_TOKENS * shape.choices()
    };
    assert_eq!(truth.completion_tokens, completion, "{ctx}: mock truth");
    let proxied = check_energy_member(ex, absent_true, truth.prompt_tokens, completion);
    let mut direct = String::from_utf8(ex.direct.body.clone()).expect("UTF-8 body");
    if shape.choices() > 1 && shape.injected(absent_true) && !shape.wants_usage(absent_true) {
        direct = fingerprint_on_last_finish_only(&direct);
    }
    assert_same_body(
        &normalise_created(&direct),
        &normalise_created(&proxied),
        ctx,
    );
    truth
}

/// Runs one shape through `rig` and checks bytes, forwarding and counts.
async fn check_shape(rig: &mut Rig, shape: &Shape, absent_true: bool, direct: MockBuilder) {
    let ex = exchange(rig, shape, direct).await;
    let truth = check_exchange(&ex, &rig.mock, absent_true).await;
    let ctx = &shape.name;
    let completion = truth.completion_tokens;
    // JSON answers carry the counts in headers; streams in trailers (not asked for here).
    if !shape.stream {
        let h = &ex.proxied.headers;
        assert_eq!(
            h["x-energy-prompt-tokens"],
            truth.prompt_tokens.to_string(),
            "{ctx}"
        );
        assert_eq!(
            h["x-energy-completion-tokens"],
            completion.to_string(),
            "{ctx}"
        );
        assert_eq!(h["x-energy-status"], "ok", "{ctx}");
        assert!(h.contains_key("x-energy-joules"), "{ctx}");
    } else {
        assert!(
            ex.proxied.trailers.is_none(),
            "{ctx}: no trailers without TE"
        );
    }
    let record = rig.settle(&ex.public_id);
    assert_eq!(
        record.prompt_tokens, truth.prompt_tokens,
        "{ctx}: record prompt"
    );
    assert_eq!(
        record.completion_tokens, completion,
        "{ctx}: record completion"
    );
    assert!(record.tokens_exact, "{ctx}: exact counts");
    assert_eq!(record.stream, shape.stream, "{ctx}");
    assert_eq!(record.status, RecordStatus::Ok, "{ctx}: {record:?}");
}

#[tokio::test]
async fn every_shape_is_relayed_byte_identical_and_counted_exactly() {
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    for shape in all_shapes() {
        check_shape(&mut rig, &shape, false, super::wire::direct_builder()).await;
    }
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn every_shape_with_prompt_tokens_details() {
    let mut rig = Rig::start(
        engine_mock().enable_prompt_tokens_details(true),
        Metering::Measured,
        |_| {},
    )
    .await;
    for shape in all_shapes() {
        let direct = super::wire::direct_builder().enable_prompt_tokens_details(true);
        check_shape(&mut rig, &shape, false, direct).await;
    }
    rig.assert_conservation();
    rig.stop().await;
}

#[tokio::test]
async fn every_shape_when_the_upstream_reads_absent_include_usage_as_true() {
    let mut rig = Rig::start(
        engine_mock().absent_include_usage_is_true(true),
        Metering::Measured,
        |args| args.absent_include_usage = Some("true".into()),
    )
    .await;
    for shape in all_shapes() {
        let direct = super::wire::direct_builder().absent_include_usage_is_true(true);
        check_shape(&mut rig, &shape, true, direct).await;
    }
    rig.assert_conservation();
    rig.stop().await;
}
