//! The request view and usage injection: any body, on any endpoint, gives a view without
//! panicking; an injected body is still a JSON object when the client's was one, with the client's
//! members unchanged and only `stream_options` added or edited.
#![no_main]

use joulegate::openai::inject::plan_injection;
use joulegate::openai::request::{parse_request, ViewConfig};
use joulegate::openai::semantics::UsageSemantics;
use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/other",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(pick) % PATHS.len()];
    let view = parse_request(
        &http::Method::POST,
        path,
        &http::HeaderMap::new(),
        body,
        &ViewConfig::default(),
    );
    let _ = view.expected_choices();
    let _ = view.max_output();
    let semantics = UsageSemantics {
        absent_include_usage: pick & 0x40 != 0,
        force_include_usage: pick & 0x80 != 0,
    };
    let plan = plan_injection(&view, body, semantics, true);
    if let Some(edited) = &plan.body {
        assert!(plan.injected);
        if let Ok(serde_json::Value::Object(before)) = serde_json::from_slice(body) {
            let after: serde_json::Value =
                serde_json::from_slice(edited).expect("an injected body is JSON");
            let after = after.as_object().expect("an object");
            for (k, v) in &before {
                if k != "stream_options" {
                    assert_eq!(after.get(k), Some(v), "member {k} kept");
                }
            }
            assert!(after["stream_options"]["include_usage"] == true);
        }
    }
});
