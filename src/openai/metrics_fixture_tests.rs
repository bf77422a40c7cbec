//! Tests against the captures of vLLM 0.32 started with `--enable-per-request-metrics` and with
//! `--enable-force-include-usage`: every `metrics` object gives the engine's queue, prefill and
//! generation times in ns, in every way a response can be observed; a forcing server's streams pass
//! through unchanged, counted exactly.

use serde_json::Value;

use super::fixture_tests::{body, endpoint_of, request, run, DIRS, STREAMS};
use super::inject::{plan_injection, StripPolicy};
use super::observer::ObserverConfig;
use super::request::{parse_request, ViewConfig};
use super::semantics::UsageSemantics;
use super::usage::{body_metrics, EngineTimes, MetricsField, UsageTail};
use crate::observe::Endpoint;

const METRICS: &str = "vllm-0.32-per-request-metrics";
const FORCED: &str = "vllm-0.32-force-usage";

/// The times a `metrics` object states, computed here independently: milliseconds from the JSON,
/// times 10^6, rounded.
fn stated(metrics: &Value) -> EngineTimes {
    let ns = |k: &str| Some((metrics[k].as_f64().unwrap() * 1e6).round() as u64);
    EngineTimes {
        queue_ns: ns("queue_time_ms"),
        prefill_ns: ns("time_to_first_token_ms"),
        generation_ns: ns("generation_time_ms"),
    }
}

/// The `metrics` objects anywhere in a capture (JSON body, stream chunk, `response` of an event).
fn metrics_in(bytes: &[u8]) -> Vec<Value> {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        if let Some(m) = v.get("metrics").filter(|m| m.is_object()) {
            out.push(m.clone());
        }
        if let Some(r) = v.get("response") {
            walk(r, out);
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        walk(&v, &mut out);
    }
    for line in bytes.split(|&b| b == b'\n') {
        if let Some(data) = line.strip_prefix(b"data: ") {
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                walk(&v, &mut out);
            }
        }
    }
    out
}

#[test]
fn json_bodies_give_the_stated_times() {
    for (name, endpoint) in [
        ("chat-json", Endpoint::ChatCompletions),
        ("completions-json", Endpoint::Completions),
        ("responses-json", Endpoint::Responses),
    ] {
        let b = body(METRICS, name);
        let [m] = &metrics_in(&b)[..] else {
            panic!("{name}: one metrics object expected")
        };
        let want = stated(m);
        assert!(
            want.queue_ns.unwrap() > 0 && want.generation_ns.unwrap() > want.prefill_ns.unwrap()
        );
        assert_eq!(body_metrics(&b), Some(MetricsField::Times(want)), "{name}");
        // A body too large to hold: the tail finds them too.
        let mut tail = UsageTail::default();
        tail.push(&vec![b' '; 10_000]);
        for piece in b.chunks(13) {
            tail.push(piece);
        }
        assert_eq!(tail.metrics(), Some(MetricsField::Times(want)), "{name}");
        assert!(tail.usage(endpoint).is_some());
        // The same shape from a server without the flag.
        let plain = body("vllm-0.32", name);
        let want_plain = (endpoint != Endpoint::Responses).then_some(MetricsField::Null);
        assert_eq!(body_metrics(&plain), want_plain, "{name} without the flag");
    }
    // n > 1 is never timed, with or without the flag.
    assert_eq!(
        body_metrics(&body(METRICS, "chat-json-n2")),
        Some(MetricsField::Null)
    );
    for err in [
        "error-bad-json",
        "error-unknown-model",
        "error-too-many-tokens",
    ] {
        assert_eq!(body_metrics(&body(METRICS, err)), None, "{err}");
    }
}

#[test]
fn streams_give_the_stated_times_however_observed_and_cut() {
    let mut timed = 0;
    for name in STREAMS {
        let b = body(METRICS, name);
        let found = metrics_in(&b);
        let want = found.first().map(stated);
        let ep = endpoint_of(name);
        // Observe only, and as a client that asked for nothing (removal, dropping).
        let mut injected = super::fixture_tests::cfg_as_if(METRICS, name, true, true);
        injected.strip = StripPolicy::AllUsage;
        if ep == Endpoint::Responses {
            injected = ObserverConfig::observe_only(ep);
        }
        for cfg in [ObserverConfig::observe_only(ep), injected] {
            let whole = run(cfg, &[&b]);
            assert_eq!(whole.totals.engine_times, want, "{name} {cfg:?}");
            let snap = whole.snap;
            match want {
                Some(t) => {
                    assert!(snap.engine_timed, "{name}");
                    assert_eq!(
                        (
                            Some(snap.queue_ns),
                            Some(snap.prefill_ns),
                            Some(snap.generation_ns)
                        ),
                        (t.queue_ns, t.prefill_ns, t.generation_ns),
                        "{name}"
                    );
                }
                None => assert!(!snap.engine_timed && snap.prefill_ns == 0, "{name}"),
            }
            let ones: Vec<&[u8]> = b.chunks(1).collect();
            assert_eq!(run(cfg, &ones), whole, "{name} in 1-byte pieces");
        }
        timed += usize::from(want.is_some());
    }
    // Final usage chunks of single-choice chat/completions streams, and response.completed.
    assert_eq!(timed, 5);
}

/// The observer configuration the proxy builds for `name`'s request in front of a forcing server.
fn forced_cfg(name: &str, add_energy: bool) -> ObserverConfig {
    let (path, req) = request(FORCED, name);
    let view = parse_request(
        &http::Method::POST,
        &path,
        &http::HeaderMap::new(),
        &req,
        &ViewConfig::default(),
    );
    let forced = UsageSemantics {
        absent_include_usage: false,
        force_include_usage: true,
    };
    let plan = plan_injection(&view, &req, forced, true);
    assert!(
        !plan.injected && plan.body.is_none(),
        "{name}: nothing to inject"
    );
    assert_eq!(plan.strip, StripPolicy::Nothing, "{name}");
    ObserverConfig::for_request(&view, &plan, add_energy)
}

#[test]
fn a_forcing_servers_streams_pass_unchanged_and_are_counted_exactly() {
    for name in STREAMS {
        let b = body(FORCED, name);
        let cfg = forced_cfg(name, false);
        assert!(!cfg.detect_forcing, "{name}: already known");
        let r = run(cfg, &[&b]);
        assert_eq!(r.out, b, "{name}");
        assert!(r.snap.completion_exact && r.snap.prompt_exact, "{name}");
        let ones: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(run(cfg, &ones), r, "{name}");
        // With the energy object: the client sees the final usage chunk, so it gets it there.
        if endpoint_of(name) != Endpoint::Responses {
            let e = run(forced_cfg(name, true), &[&b]);
            assert_eq!(e.energy_calls, 1, "{name}");
            assert_eq!(
                e.out.len(),
                b.len() + r#","energy":{"joules":1.5,"request_id":"jg-1"}"#.len()
            );
        }
    }
}

#[test]
fn usage_nobody_asked_for_reveals_a_forcing_server() {
    for (dir, forced) in [(FORCED, true), ("vllm-0.32", false), (METRICS, false)] {
        let (path, req) = request(dir, "chat-stream-plain");
        let view = parse_request(
            &http::Method::POST,
            &path,
            &http::HeaderMap::new(),
            &req,
            &ViewConfig::default(),
        );
        // The proxy did not inject (injection off): the stream shows what the server does.
        let plan = plan_injection(&view, &req, UsageSemantics::default(), false);
        let cfg = ObserverConfig::for_request(&view, &plan, true);
        assert!(cfg.detect_forcing);
        let r = run(cfg, &[&body(dir, "chat-stream-plain")]);
        assert_eq!(r.totals.unasked_usage, forced, "{dir}");
    }
    // Injected requests, or requests that asked for usage, tell nothing.
    for dir in DIRS {
        let (path, req) = request(dir, "chat-stream-plain");
        let view = parse_request(
            &http::Method::POST,
            &path,
            &http::HeaderMap::new(),
            &req,
            &ViewConfig::default(),
        );
        let plan = plan_injection(&view, &req, UsageSemantics::default(), true);
        assert!(!ObserverConfig::for_request(&view, &plan, true).detect_forcing);
    }
}
