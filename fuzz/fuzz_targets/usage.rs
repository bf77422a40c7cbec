//! Usage and metrics readers of whole bodies and of a body's tail: never panic, and the tail
//! reader gives the same answer however the body is cut.
#![no_main]

use joulegate::observe::Endpoint;
use joulegate::openai::usage::{body_metrics, parse_usage, UsageTail};
use libfuzzer_sys::fuzz_target;

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let _ = parse_usage(endpoint, body);
    let _ = body_metrics(body);
    let mut whole = UsageTail::default();
    whole.push(body);
    let at = usize::from(pick) * body.len() / 256;
    let mut split = UsageTail::default();
    split.push(&body[..at]);
    split.push(&body[at..]);
    assert_eq!(whole.usage(endpoint), split.usage(endpoint), "cut at {at}");
    let _ = whole.metrics();
});
