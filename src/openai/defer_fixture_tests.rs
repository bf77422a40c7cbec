//! Deferred energy (`response_energy = "settled"`) against the vLLM captures: the observer leaves
//! the `energy` value out and says where it belongs; filling it in there gives, at every split, the
//! very bytes the immediate mode writes, and the energy callback is never called.

use bytes::Bytes;

use super::fixture_tests::{body, cfg_as_if, endpoint_of, progress, run, DIRS, STREAMS};
use super::inject::StripPolicy;
use super::observer::{ObserverConfig, StreamObserver};
use crate::observe::Endpoint;

const ENERGY: &str = r#"{"joules":1.5,"request_id":"jg-1"}"#;

/// Feeds `parts` with deferred energy; inserts [`ENERGY`] where the observer says. Returns the
/// output and how many splits were reported.
fn run_deferred(cfg: ObserverConfig, parts: &[&[u8]]) -> (Vec<u8>, usize) {
    let p = progress(cfg.endpoint);
    let mut obs = StreamObserver::new(cfg);
    let mut out = Vec::new();
    let mut splits = 0;
    for part in parts {
        let got = obs.feed(Bytes::copy_from_slice(part), 1000, &p, &mut || {
            panic!("deferred energy must not call the callback")
        });
        match obs.take_energy_split() {
            Some(split) => {
                splits += 1;
                assert!(split.event_at <= split.value_at && split.value_at <= got.len());
                assert!(got[split.event_at..].starts_with(b"data:"), "{split:?}");
                let (head, tail) = got.split_at(split.value_at);
                out.extend_from_slice(head);
                out.extend_from_slice(ENERGY.as_bytes());
                out.extend_from_slice(tail);
            }
            None => out.extend_from_slice(&got),
        }
    }
    assert_eq!(obs.take_energy_split(), None);
    out.extend_from_slice(&obs.finish());
    (out, splits)
}

#[test]
fn deferred_energy_fills_in_to_the_immediate_bytes_at_every_split() {
    for dir in DIRS {
        for name in STREAMS {
            if endpoint_of(name) == Endpoint::Responses {
                continue;
            }
            let b = body(dir, name);
            let mut cfgs = Vec::new();
            for strip in [StripPolicy::PerChunkUsage, StripPolicy::AllUsage] {
                let mut c = cfg_as_if(dir, name, true, true);
                c.strip = strip;
                cfgs.push(c);
            }
            cfgs.push(cfg_as_if(dir, name, false, true));
            for immediate in cfgs {
                let want = run(immediate, &[&b]);
                let cfg = ObserverConfig {
                    defer_energy: true,
                    ..immediate
                };
                let (whole, splits) = run_deferred(cfg, &[&b]);
                assert_eq!(whole, want.out, "{dir}/{name} {cfg:?}");
                assert_eq!(splits as u32, want.energy_calls, "{dir}/{name} {cfg:?}");
                let ones: Vec<&[u8]> = b.chunks(1).collect();
                assert_eq!(run_deferred(cfg, &ones).0, want.out, "{dir}/{name} 1-byte");
                // Every cut in the last events (where the usage chunk is), a stride elsewhere.
                for cut in (0..=b.len()).filter(|&c| c + 450 > b.len() || c % 97 == 0) {
                    let (x, y) = b.split_at(cut);
                    assert_eq!(
                        run_deferred(cfg, &[x, y]).0,
                        want.out,
                        "{dir}/{name} cut {cut}"
                    );
                }
            }
        }
    }
}
