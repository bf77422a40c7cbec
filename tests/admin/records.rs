//! A request's record outside `/requests`: the request log's lines (each the record
//! `/requests/{id}` serves) written and rotated, and a request in flight shown with its energy so
//! far, in `/requests` and `/metrics`.

use http_body_util::BodyExt;
use serde_json::Value;

use crate::common::*;
use crate::exposition::sum;
use crate::support::*;

#[tokio::test]
async fn request_log_lines_are_written_and_rotated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("requests.jsonl");
    let upstream = vllm().await;
    let log = path.clone();
    let proxy = TestProxy::start_with(upstream.addr, move |a| {
        with_sim(a);
        a.request_log = Some(log);
        // Smaller than one line: every line starts a new file.
        a.request_log_max_bytes = Some(100);
        a.request_log_files = Some(2);
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let got = chat(proxy.addr, Some("logged"), None).await;
        ids.push(header(&got, "x-energy-request-id"));
    }
    let stats = guard("the log lines", async {
        loop {
            let s = admin_json(proxy.admin, "/stats").await;
            if s["request_log"]["written"] == 3 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(stats["request_log"]["rotations"], 2);
    assert_eq!(stats["records"]["not_logged"], 0);
    let mut logged = Vec::new();
    for p in [
        joulegate::request_log::rotated(&path, 2),
        joulegate::request_log::rotated(&path, 1),
        path.clone(),
    ] {
        let text = std::fs::read_to_string(&p).expect("log file");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", p.display());
        logged.extend(lines);
    }
    assert!(!joulegate::request_log::rotated(&path, 3).exists());
    // Lines come in retirement order (requests settled by one tick retire in any order).
    let mut logged_ids: Vec<&str> = logged.iter().filter_map(|l| l["id"].as_str()).collect();
    logged_ids.sort_unstable();
    assert_eq!(logged_ids, ids);
    for line in &logged {
        // The log line is the record `/requests/{id}` serves.
        let id = line["id"].as_str().expect("id");
        assert_eq!(line, &finished(proxy.admin, id).await);
    }
    let m = metrics(proxy.admin, None).await;
    assert_eq!(sum(&m, "joulegate_request_log_lines_total", &[]), 3.0);
}

#[tokio::test]
async fn in_flight_requests_show_their_energy_so_far() {
    let stream = fixtures("vllm-0.32")
        .into_iter()
        .find(|f| f.name == "chat-stream-usage-continuous")
        .expect("fixture");
    let cut = stream.body.len() / 2;
    let (first, rest) = (stream.body[..cut].to_vec(), stream.body[cut..].to_vec());
    let upstream = ScriptedUpstream::start(move |_| {
        Reply::chunked(
            200,
            &[("content-type", "text/event-stream; charset=utf-8")],
            vec![
                Step::Write(first.clone()),
                Step::Gate,
                Step::Write(rest.clone()),
            ],
        )
    })
    .await;
    let proxy = TestProxy::start_with(upstream.addr, with_sim).await;
    let body = serde_json::to_vec(&stream.request_body).expect("body");
    let mut sender = h1(proxy.addr).await;
    let response = guard(
        "head",
        sender.send_request(request(
            "POST",
            proxy.addr,
            "/v1/chat/completions",
            &[("x-energy-tag", "live")],
            &body,
        )),
    )
    .await
    .expect("response");
    let id = header(
        &Got {
            status: response.status(),
            headers: response.headers().clone(),
            body: Vec::new(),
            trailers: None,
        },
        "x-energy-request-id",
    );
    let live = admin_json(proxy.admin, &format!("/requests/{id}")).await;
    assert_eq!(live["state"], "in_flight");
    assert_eq!(live["tag"], "live");
    assert!(live["energy_joules"].is_number());
    let list = admin_json(proxy.admin, "/requests?tag=live").await;
    assert_eq!(list["in_flight"][0]["id"], id.as_str());
    assert_eq!(list["in_flight_total"], 1);
    let m = metrics(proxy.admin, None).await;
    assert_eq!(sum(&m, "joulegate_requests_in_flight", &[]), 1.0);
    upstream.open_gate();
    guard("body", response.into_body().collect())
        .await
        .expect("body");
    let r = finished(proxy.admin, &id).await;
    assert_eq!(r["stream"], true);
    assert_eq!(r["tag"], "live");
}
