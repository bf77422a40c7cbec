//! The live page with everything full: 10,000 records in the ring, 10,000 requests in flight, ten
//! minutes of history on two devices, and 100 tags plus `other`. Accounting is driven by hand
//! (ticks fed in order, as `benches/admin.rs` does), the admin listener serves it on 127.0.0.1:0
//! and headless Chromium loads the page: it must render, with its rows bounded (200 finished, 50
//! in flight, the in-flight total counted) and all 600 history points drawn.
//!
//! Needs Chromium; without it this test says `SKIPPED`.

mod browser;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use joulegate::accounting::{Accounting, AccountingConfig};
use joulegate::admin::{AdminService, AdminState};
use joulegate::clock::Clock;
use joulegate::config::Config;
use joulegate::observe::{Endpoint, InFlight, InFlightGuard, Outcome, RequestMeta};
use joulegate::proxy::listen::{serve_connections, ConnLimits};
use joulegate::proxy::upstream::Upstream;
use joulegate::tick::{DeviceDelta, Tick, TickPhase};

const SECOND: u64 = 1_000_000_000;
const TICK: u64 = 50_000_000;

fn meta(id: u64, live: bool) -> RequestMeta {
    RequestMeta {
        id,
        model: Some(format!("model-{}", id % 3)),
        endpoint: Endpoint::ChatCompletions,
        key_hash: None,
        tag: Some(format!(
            "{}-{}",
            if live { "live" } else { "run" },
            id % 130
        )),
        stream: true,
        arrival_ns: 1,
        estimated_prompt_tokens: 500,
        choices: 1,
        max_tokens: None,
    }
}

fn tick(seq: u64, start_ns: u64, end_ns: u64) -> Tick {
    // Two devices at 300 W and 200 W.
    let w = [("gpu0", 300u64), ("gpu1", 200)];
    let devices: Vec<DeviceDelta> = w
        .iter()
        .map(|(d, watts)| DeviceDelta {
            device: (*d).into(),
            delta_uj: Some(watts * (end_ns - start_ns) / 1000),
        })
        .collect();
    Tick {
        seq,
        start_ns,
        end_ns,
        delta_uj: Some(devices.iter().filter_map(|d| d.delta_uj).sum()),
        devices,
        phase: TickPhase::Whole,
    }
}

/// Ten idle minutes of one-second ticks, then 10,000 requests retired in batches of 1,000, then
/// 10,000 registered and left in flight.
fn state() -> (Arc<AdminState>, Accounting, Vec<InFlightGuard>) {
    let reg = Arc::new(InFlight::new());
    let clock = Clock::new();
    let mut acc = Accounting::new(AccountingConfig::default(), reg.clone(), clock).expect("config");
    // (seq, end of the last tick)
    let mut fed = (0, 0);
    let mut next = |acc: &mut Accounting, len: u64| {
        let (seq, at) = fed;
        acc.process_tick(&tick(seq + 1, at, at + len));
        fed = (seq + 1, at + len);
        at + len
    };
    let mut at = 0;
    for _ in 0..600 {
        at = next(&mut acc, SECOND);
    }
    let mut id = 1;
    for _ in 0..10 {
        let batch: Vec<_> = (0..1000)
            .map(|_| {
                id += 1;
                reg.register(meta(id, false), clock)
            })
            .collect();
        for g in &batch {
            let p = g.progress();
            p.progress_visible.store(true, Relaxed);
            p.set_prompt_exact(500);
            p.observe_completion(1, at + TICK);
        }
        at = next(&mut acc, TICK);
        let end = at;
        for g in &batch {
            g.progress().completion_exact.store(true, Relaxed);
            g.progress().finish(Outcome::Ok, end);
        }
        drop(batch);
        for _ in 0..80 {
            at = next(&mut acc, TICK);
        }
    }
    let live: Vec<_> = (0..10_000)
        .map(|_| {
            id += 1;
            reg.register(meta(id, true), clock)
        })
        .collect();
    let config = Config::resolve(&Default::default(), &Default::default(), None).expect("config");
    let upstream = Upstream::new(
        config.upstream.clone(),
        config.connect_timeout,
        config.upstream_header_timeout,
        config.max_body_bytes,
    );
    let request_bodies = Arc::new(joulegate::proxy::bodies::InspectBudget::new(
        config.max_inspect_bytes,
        config.max_inspect_total_bytes,
    ));
    let state = Arc::new(AdminState {
        accounting: acc.shared(),
        sampler: None,
        meters_unavailable: Vec::new(),
        in_flight: reg,
        clock,
        config,
        upstream,
        request_log: None,
        #[cfg(feature = "otel")]
        otel: None,
        upstream_version: Default::default(),
        upstream_facts: Default::default(),
        upstream_semantics: Arc::new(joulegate::proxy::inspect::SharedSemantics::new(
            Default::default(),
            true,
        )),
        request_bodies,
        admission: Arc::new(joulegate::proxy::admission::Admission::new(
            joulegate::proxy::admission::AdmissionConfig::off(),
        )),
        engine_gauges: Default::default(),
    });
    (state, acc, live)
}

fn attr(dom: &tl::VDom<'_>, id: &str, name: &str) -> Option<String> {
    let node = dom.get_element_by_id(id)?.get(dom.parser())?;
    let v = node.as_tag()?.attributes().get(name)??;
    Some(v.as_utf8_str().into_owned())
}

fn count(dom: &tl::VDom<'_>, id: &str, tag: &str) -> usize {
    let parser = dom.parser();
    dom.get_element_by_id(id)
        .and_then(|h| h.get(parser))
        .and_then(|n| n.as_tag())
        .map_or(0, |t| {
            t.children()
                .all(parser)
                .iter()
                .filter_map(|n| n.as_tag())
                .filter(|t| t.name().as_bytes() == tag.as_bytes())
                .count()
        })
}

fn text(dom: &tl::VDom<'_>, id: &str) -> String {
    let parser = dom.parser();
    dom.get_element_by_id(id)
        .and_then(|h| h.get(parser))
        .map(|n| n.inner_text(parser).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_stays_bounded_with_10000_records_and_10000_in_flight() {
    let Some(bin) = browser::find() else {
        println!(
            "SKIPPED: chromium not found (install Debian's `chromium` or set JOULEGATE_CHROMIUM)"
        );
        return;
    };
    let (state, _acc, _live) = tokio::task::spawn_blocking(state)
        .await
        .expect("state built");
    let stats = state.accounting.stats();
    assert_eq!(stats.requests.ok + stats.requests.estimated, 10_000);
    assert_eq!(state.in_flight.len(), 10_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_connections(
        listener,
        AdminService::new(state.clone()),
        ConnLimits {
            max_connections: 64,
            grace: Duration::from_secs(1),
        },
        async {
            let _ = stopped.await;
        },
    ));

    let url = format!("http://{addr}/");
    let dump = tokio::task::spawn_blocking(move || browser::dump_dom(&bin, &url, 3000))
        .await
        .expect("browser thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let dom = tl::parse(&dump, tl::ParserOptions::default()).expect("the DOM parses");

    assert_eq!(attr(&dom, "status", "data-state").as_deref(), Some("live"));
    assert_eq!(
        attr(&dom, "power-chart", "data-points").as_deref(),
        Some("600"),
        "ten minutes of one-second points"
    );
    // Two devices and their total.
    assert_eq!(
        attr(&dom, "power-chart", "data-series").as_deref(),
        Some("3")
    );
    assert_eq!(count(&dom, "recent-rows", "tr"), 200);
    assert_eq!(count(&dom, "inflight-rows", "tr"), 50);
    assert_eq!(text(&dom, "inflight-count"), "(10000)");
    // 100 tags and `other` (the label bound), all shown.
    assert_eq!(count(&dom, "tags-rows", "tr"), 101);

    let _ = stop.send(());
    server.await.expect("server stops");
}
