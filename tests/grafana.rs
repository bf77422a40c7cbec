//! `examples/grafana`: every series the dashboard and the recording rules query exists in a real
//! `/metrics` scrape of a proxy that has carried traffic (tagged, sim-metered, settled). The
//! dashboard is read as JSON (every `expr`, and the `query` of query variables); `rules.yml` line by
//! line (`record:` and `expr:`), as it keeps one expression per line. Waits poll a condition under a
//! hang guard; nothing decides pass/fail on time. The dashboard's `by (...)` labels are checked too.

mod common;
#[allow(dead_code)]
#[path = "admin/exposition.rs"]
mod exposition;
#[allow(dead_code)]
#[path = "admin/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;
use serde_json::Value;
use support::*;

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/grafana")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric identifiers of a PromQL expression (quoted strings skipped): `[A-Za-z_:][\w:]*`.
fn identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            // A label value or legend: skip to the closing quote (escapes included).
            while let Some(d) = chars.next() {
                if d == '\\' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut id = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    id.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(id);
        } else if c.is_ascii_digit() || c == '$' {
            // A number (`0.99`, `5m`) or a Grafana variable (`$__rate_interval`): not a series.
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_' || *d == '.')
            {
                chars.next();
            }
        }
    }
    out
}

/// The joulegate series an expression reads.
fn series(expr: &str) -> Vec<String> {
    identifiers(expr)
        .into_iter()
        .filter(|i| i.starts_with("joulegate_"))
        .collect()
}

/// Every PromQL expression of the dashboard: panel targets' `expr` and query variables' `query`.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            if m.get("type").and_then(Value::as_str) == Some("query") {
                match m.get("query") {
                    Some(Value::String(q)) => out.push(q.clone()),
                    Some(Value::Object(q)) => {
                        if let Some(Value::String(q)) = q.get("query") {
                            out.push(q.clone());
                        }
                    }
                    _ => {}
                }
            }
            m.values().for_each(|x| dashboard_exprs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

#[test]
fn the_tokenizer_finds_series_and_skips_strings_numbers_and_variables() {
    assert_eq!(
        series(
            r#"histogram_quantile(0.99, sum by (le) (rate(joulegate_request_energy_joules_bucket{instance=~"joulegate_x"}[$__rate_interval])))"#
        ),
        ["joulegate_request_energy_joules_bucket"]
    );
    assert_eq!(
        series("model:joulegate_j:rate5m / joulegate:model_tokens:rate5m + joulegate_tokens_total"),
        ["joulegate_tokens_total"]
    );
}

#[test]
fn the_dashboard_is_importable_grafana_json() {
    let d: Value = serde_json::from_str(&example("joulegate.json")).expect("dashboard JSON");
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "unique panel ids");
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
            assert!(t["expr"].as_str().is_some_and(|e| !series(e).is_empty()));
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Power per device",
        "Energy books (as power)",
        "Joules per token, per model",
        "Request energy percentiles",
        "Energy per tag (as power)",
        "In flight and queue",
        "Effective batch",
        "Meter health",
    ] {
        assert!(titles.contains(&want), "panel {want}");
    }
}

#[tokio::test]
async fn every_series_the_dashboard_and_rules_query_is_scraped() {
    let upstream = vllm().await;
    let proxy = TestProxy::start_with(upstream.addr, with_sim).await;
    first_tick(proxy.admin, None).await;
    let mut ids = Vec::new();
    for tag in [Some("run-a"), None] {
        let got = chat(proxy.addr, tag, None).await;
        ids.push(header(&got, "x-energy-request-id"));
    }
    for id in &ids {
        finished(proxy.admin, id).await;
    }
    let samples = metrics(proxy.admin, None).await;
    let scraped: BTreeSet<String> = samples.iter().map(|s| s.0.clone()).collect();
    // The labels each scraped series carries (`instance` and `job` come from Prometheus).
    let labels_of = |name: &str| -> BTreeSet<String> {
        let mut l: BTreeSet<String> = samples
            .iter()
            .filter(|s| s.0 == name)
            .flat_map(|s| s.1.keys().cloned())
            .collect();
        l.extend(["instance".to_owned(), "job".to_owned()]);
        l
    };

    let d: Value = serde_json::from_str(&example("joulegate.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&d, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut wanted = BTreeSet::new();
    for e in &exprs {
        let s = series(e);
        assert!(
            !s.is_empty(),
            "a dashboard query reads a joulegate series: {e}"
        );
        // Every `by (...)` label is carried by each series the query reads.
        for grouping in e.split("by (").skip(1) {
            let list = grouping.split(')').next().unwrap_or("");
            for label in list.split(',').map(str::trim) {
                for name in &s {
                    assert!(
                        labels_of(name).contains(label),
                        "{name} has no label {label}: {e}"
                    );
                }
            }
        }
        wanted.extend(s);
    }

    // rules.yml: each rule's expression reads scraped series or rules recorded above it.
    let mut recorded = BTreeSet::new();
    let mut rules = 0;
    for line in example("rules.yml").lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- record:") {
            recorded.insert(name.trim().to_owned());
        } else if let Some(expr) = line.strip_prefix("expr:") {
            rules += 1;
            for id in identifiers(expr) {
                if id.contains(':') {
                    assert!(recorded.contains(&id), "{id} is recorded before use");
                } else if id.starts_with("joulegate_") {
                    wanted.insert(id);
                }
            }
        }
    }
    assert_eq!(rules, recorded.len(), "one expr per record");
    assert!(recorded.contains("joulegate:model_joules_per_token:rate5m"));

    let missing: Vec<&String> = wanted.iter().filter(|w| !scraped.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "queried but not in /metrics: {missing:?}\nscraped: {scraped:?}"
    );
    for must in [
        "joulegate_power_watts",
        "joulegate_request_energy_joules_bucket",
        "joulegate_tag_energy_joules_total",
        "joulegate_model_energy_joules_total",
        "joulegate_batch_size_mean",
        "joulegate_meter_up",
    ] {
        assert!(wanted.contains(must), "the dashboard shows {must}");
    }
}
