//! `/dcgm/metrics` over real sockets: the dcgm-exporter names, HELP and TYPE lines and labels, read
//! in Rust and, where available, by Python's `prometheus_client` Prometheus-text parser (the format
//! dcgm-exporter serves); energy monotone and bracketed by `/stats` device energy read before and
//! after; the admin token enforced. Waits poll a condition under a hang guard; nothing decides
//! pass/fail on time.

mod common;
#[allow(dead_code)]
#[path = "admin/exposition.rs"]
mod exposition;
#[allow(dead_code)]
#[path = "admin/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use exposition::{parse_samples, run_python_parser, Sample};
use serde_json::Value;
use support::*;

const TOKEN: &str = "dcgm-t0ken";
const POWER: &str = "DCGM_FI_DEV_POWER_USAGE";
const ENERGY: &str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION";

/// GETs `/dcgm/metrics` with the token; checks the content type and the HELP/TYPE lines; returns
/// the samples (checked against the Python parser where there is one).
async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let got = admin_get(admin, "/dcgm/metrics", Some(TOKEN)).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        header(&got, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(got.body).expect("UTF-8");
    let meta: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(
        meta,
        [
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
            "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        ],
        "dcgm-exporter's default-counters.csv names, types and help"
    );
    let ours = parse_samples(&text);
    if let Some(mut theirs) = python_prometheus(&text) {
        // The Python client names every counter sample `<family>_total`, whatever the text says
        // (it reads real dcgm-exporter output the same way); the family name stays DCGM's.
        for s in &mut theirs {
            if let Some(n) = s.0.strip_suffix("_total") {
                s.0 = n.to_owned();
            }
        }
        let fmt = |s: &[Sample]| {
            let mut v: Vec<String> = s
                .iter()
                .map(|s| format!("{}{:?}{}", s.0, s.1, s.2))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            fmt(&theirs),
            fmt(&ours),
            "the Prometheus parser reads what we read"
        );
    }
    ours
}

/// Python's `prometheus_client` Prometheus-text parser over `text`; `None` without Python.
fn python_prometheus(text: &str) -> Option<Vec<Sample>> {
    const SCRIPT: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families as prom
fams = list(prom(sys.stdin.read()))
types = {f.name: f.type for f in fams}
assert types == {"DCGM_FI_DEV_POWER_USAGE": "gauge", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "counter"}, types
print(json.dumps([[s.name, s.labels, s.value] for f in fams for s in f.samples]))
"#;
    let stdout = run_python_parser(SCRIPT, text, "/dcgm/metrics")?;
    let raw: Vec<(String, BTreeMap<String, String>, Value)> =
        serde_json::from_slice(&stdout).expect("parser output");
    Some(
        raw.into_iter()
            .map(|(n, l, v)| (n, l, v.as_f64().unwrap_or(f64::NAN)))
            .collect(),
    )
}

/// `/stats` with the token.
async fn stats(admin: SocketAddr) -> Value {
    let got = admin_get(admin, "/stats", Some(TOKEN)).await;
    assert_eq!(got.status, 200);
    serde_json::from_slice(&got.body).expect("JSON")
}

/// The only device's energy in `/stats`, micro-joules.
async fn device_uj(admin: SocketAddr) -> u64 {
    let s = stats(admin).await;
    let devices = s["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1, "one sim device: {s}");
    devices[0]["energy_uj"].as_u64().expect("energy_uj")
}

fn only<'a>(samples: &'a [Sample], name: &str) -> &'a Sample {
    let of: Vec<&Sample> = samples.iter().filter(|s| s.0 == name).collect();
    assert_eq!(of.len(), 1, "one {name} sample per device: {samples:?}");
    of[0]
}

#[tokio::test]
async fn dcgm_series_follow_the_device_energy_and_need_the_token() {
    let upstream = vllm().await;
    let proxy = TestProxy::start_with(upstream.addr, |a| {
        with_sim(a);
        a.admin_token = Some(TOKEN.into());
    })
    .await;

    // Same auth as every admin route.
    for token in [None, Some("wrong"), Some("dcgm-t0ke")] {
        let got = admin_get(proxy.admin, "/dcgm/metrics", token).await;
        assert_eq!(got.status, 401, "token {token:?}");
        assert_eq!(header(&got, "www-authenticate"), "Bearer");
    }

    first_tick(proxy.admin, Some(TOKEN)).await;
    chat(proxy.addr, None, None).await;

    // Bracket each scrape by /stats: the sampler only adds, so before <= dcgm <= after.
    let before = device_uj(proxy.admin).await;
    let first = scrape(proxy.admin).await;
    let after = device_uj(proxy.admin).await;

    let power = only(&first, POWER);
    let energy = only(&first, ENERGY);
    let keys: Vec<&str> = energy.1.keys().map(String::as_str).collect();
    assert_eq!(keys, ["Hostname", "UUID", "device", "gpu", "modelName"]);
    assert_eq!(power.1, energy.1, "both series carry the same labels");
    assert_eq!(energy.1["gpu"], "0");
    assert_eq!(energy.1["device"], "sim");
    assert_eq!(energy.1["UUID"], "");
    let s = stats(proxy.admin).await;
    assert_eq!(
        energy.1["modelName"],
        s["devices"][0]["name"].as_str().expect("name")
    );
    // The sim draws 100 W; the published power is the mean over its last counter step, which
    // rounds to a milli-watt either side between two reads (so not compared for equality).
    let published = s["devices"][0]["power_w"].as_f64().expect("power_w");
    assert!(
        (power.2 - 100.0).abs() < 0.01 && (published - 100.0).abs() < 0.01,
        "DCGM {} W, /stats {published} W, sim:100",
        power.2
    );
    let mj = energy.2;
    assert_eq!(mj.fract(), 0.0, "whole milli-joules");
    assert!(
        (before / 1000) as f64 <= mj && mj <= (after / 1000) as f64,
        "{before} uJ <= {mj} mJ <= {after} uJ"
    );
    assert!(mj > 0.0);

    // More energy (at least 1 mJ past the first bracket): the counter moves forward, never back,
    // and stays with /stats.
    guard("more energy", async {
        while device_uj(proxy.admin).await < after + 1000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let before2 = device_uj(proxy.admin).await;
    let second = scrape(proxy.admin).await;
    let after2 = device_uj(proxy.admin).await;
    let mj2 = only(&second, ENERGY).2;
    assert!(mj2 > mj, "monotone: {mj} then {mj2}");
    assert!((before2 / 1000) as f64 <= mj2 && mj2 <= (after2 / 1000) as f64);
}
