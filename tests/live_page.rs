//! The live page (`GET /` on the admin listener) in a real browser: the demo set-up (simulated
//! engine, its meter, the proxy) with an admin token, a request held in flight and a small mixed
//! workload; then headless Chromium loads the page, lets its script poll for a few seconds of
//! virtual time, and the dumped DOM is parsed and checked: the power chart has points and the idle
//! baseline, the split chart has intervals, every finished request has a row, the held one is in
//! flight, the tags and models tables are filled. Also: the token rules of the page.
//!
//! Needs Chromium (`chromium` on PATH or `$JOULEGATE_CHROMIUM`); without it the browser test says
//! `SKIPPED` and passes. Nothing depends on timing: waits are on conditions, under a guard.

mod browser;
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use joulegate::demo::{World, WorldOptions};
use joulegate::sim::workload::{plan, WorkloadKind};
use tokio::time::Instant;

const TOKEN: &str = "live/page+token";
const TOKEN_QUERY: &str = "live%2Fpage%2Btoken";

async fn world() -> World {
    World::start(&WorldOptions {
        seed: 5,
        time_scale: 8.0,
        idle_warmup: Duration::from_secs(5),
        admin_token: Some(TOKEN.into()),
        ..WorldOptions::default()
    })
    .await
    .expect("the demo world starts")
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> common::Got {
    common::send(addr, common::request("GET", addr, path, headers, b"")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_takes_the_token_in_its_query_and_the_data_routes_only_as_a_header() {
    let world = world().await;
    let admin = world.admin_addr().expect("admin listener");
    // Two seconds of ticks make two points (by condition, under a guard).
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.accounting().history_since(0).points.len() < 2 {
        assert!(Instant::now() < deadline, "no history points");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(get(admin, "/", &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(admin, "/?token=wrong", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let page = get(admin, &format!("/?token={TOKEN_QUERY}"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let ct = page.headers.get(http::header::CONTENT_TYPE);
    assert_eq!(
        ct.and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    for h in [
        "content-security-policy",
        "cache-control",
        "referrer-policy",
    ] {
        assert!(page.headers.contains_key(h), "{h}");
    }
    let header_too = get(admin, "/", &[("authorization", &bearer)]).await;
    assert_eq!(
        (header_too.status, header_too.body),
        (StatusCode::OK, page.body)
    );
    // The query form is the page's only: data routes need the header.
    for path in ["/history", "/stats", "/requests"] {
        let q = format!("{path}?token={TOKEN_QUERY}");
        assert_eq!(get(admin, &q, &[]).await.status, StatusCode::UNAUTHORIZED);
        let ok = get(admin, path, &[("authorization", &bearer)]).await;
        assert_eq!(ok.status, StatusCode::OK, "{path}");
    }
    // The history document: its shape, and `since` skips what a reader has.
    let h: serde_json::Value = serde_json::from_slice(
        &get(admin, "/history", &[("authorization", &bearer)])
            .await
            .body,
    )
    .expect("json");
    assert_eq!(h["capacity"], 600);
    assert_eq!(h["devices"], serde_json::json!(["sim-gpu0"]));
    let points = h["points"].as_array().expect("points");
    assert!(points.len() >= 2, "{h}");
    let last = points.last().and_then(|p| p["seq"].as_u64()).expect("seq");
    let after: serde_json::Value = serde_json::from_slice(
        &get(
            admin,
            &format!("/history?since={last}"),
            &[("authorization", &bearer)],
        )
        .await
        .body,
    )
    .expect("json");
    assert!(after["points"]
        .as_array()
        .expect("points")
        .iter()
        .all(|p| p["seq"].as_u64() > Some(last)));
    let bad = get(admin, "/history?since=x", &[("authorization", &bearer)]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    world.stop().await;
}

/// The attribute `name` of the element with id `id`.
fn attr(dom: &tl::VDom<'_>, id: &str, name: &str) -> Option<String> {
    let node = dom.get_element_by_id(id)?.get(dom.parser())?;
    let v = node.as_tag()?.attributes().get(name)??;
    Some(v.as_utf8_str().into_owned())
}

/// The values of attribute `name` on the `tag` elements inside the element with id `id` (tl's
/// descendant selectors do not reach into SVG, so the walk is by hand).
fn attrs(dom: &tl::VDom<'_>, id: &str, tag: &str, name: &str) -> Vec<String> {
    let parser = dom.parser();
    let Some(root) = dom
        .get_element_by_id(id)
        .and_then(|h| h.get(parser))
        .and_then(|n| n.as_tag())
    else {
        return Vec::new();
    };
    root.children()
        .all(parser)
        .iter()
        .filter_map(|n| n.as_tag())
        .filter(|t| t.name().as_bytes() == tag.as_bytes())
        .filter_map(|t| t.attributes().get(name).flatten())
        .map(|v| v.as_utf8_str().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_draws_power_and_requests_in_headless_chromium() {
    let Some(bin) = browser::find() else {
        println!(
            "SKIPPED: chromium not found (install Debian's `chromium` or set JOULEGATE_CHROMIUM)"
        );
        return;
    };
    let world = world().await;
    let admin = world.admin_addr().expect("admin listener");
    let proxy = world.proxy_addr();

    // One streaming request the engine stalls after two tokens: in flight until we let go.
    let mut held = common::h1(proxy).await;
    let body = br#"{"model":"tiny","messages":[{"role":"user","content":"hold on"}],"stream":true,"max_tokens":50}"#;
    let held = common::guard(
        "the held request's head",
        held.send_request(common::request(
            "POST",
            proxy,
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("x-mock-fault", "stall-after=2"),
                ("x-energy-tag", "held"),
            ],
            body,
        )),
    )
    .await
    .expect("response head");
    let held_id = held
        .headers()
        .get("x-energy-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("a streaming response names its request id at once");

    let workload = plan(WorkloadKind::Mixed, 11, 9, Duration::from_millis(40));
    let sent = world.drive(&workload, "live").await;
    assert!(sent.iter().all(|s| s.http_status == 200), "{sent:?}");
    let keys: Vec<u64> = sent.iter().filter_map(|s| s.record_key).collect();
    assert_eq!(keys.len(), workload.len());

    // Wait (by condition, under a guard) until every request is in the ring and the history has
    // a few seconds for the charts.
    let acc = world.accounting().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let retired = keys.iter().all(|k| acc.record(*k).is_some());
        if retired && acc.history_since(0).points.len() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "accounting did not settle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| acc.record(*k))
        .map(|r| r.id.clone())
        .collect();

    let url = format!("http://{admin}/?token={TOKEN_QUERY}");
    let dump = tokio::task::spawn_blocking(move || browser::dump_dom(&bin, &url, 4000))
        .await
        .expect("browser thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let dom = tl::parse(&dump, tl::ParserOptions::default()).expect("the DOM parses");

    assert_eq!(
        attr(&dom, "status", "data-state").as_deref(),
        Some("live"),
        "the page got its data: {}",
        &dump[..dump.len().min(2000)]
    );
    let power_points: usize = attr(&dom, "power-chart", "data-points")
        .and_then(|v| v.parse().ok())
        .expect("data-points");
    assert!(power_points >= 4, "{power_points}");
    let series = attrs(&dom, "power-chart", "path", "data-series");
    assert!(series.iter().any(|s| s == "sim-gpu0"), "{series:?}");
    assert!(
        series.iter().any(|s| s == "idle"),
        "P_idle is known after the warm-up: {series:?}"
    );
    let split_points: usize = attr(&dom, "split-chart", "data-points")
        .and_then(|v| v.parse().ok())
        .expect("data-points");
    assert!(split_points >= 3, "{split_points}");
    assert!(!attrs(&dom, "split-chart", "polygon", "points").is_empty());

    let rows: BTreeSet<String> = attrs(&dom, "recent-rows", "tr", "data-id")
        .into_iter()
        .collect();
    assert_eq!(rows, ids, "one row per finished request");
    let statuses = attrs(&dom, "recent-rows", "tr", "data-status");
    assert!(statuses.iter().all(|s| s == "ok"), "{statuses:?}");
    let live = attrs(&dom, "inflight-rows", "tr", "data-id");
    assert_eq!(live, [held_id], "the held request is in flight");
    let tags: BTreeSet<String> = attrs(&dom, "tags-rows", "tr", "data-name")
        .into_iter()
        .collect();
    let sent_tags: BTreeSet<String> = sent.iter().map(|s| s.tag.to_owned()).collect();
    assert_eq!(tags, sent_tags, "finished requests' tags");
    assert_eq!(attrs(&dom, "models-rows", "tr", "data-name"), ["tiny"]);

    drop(held);
    world.stop().await;
}
