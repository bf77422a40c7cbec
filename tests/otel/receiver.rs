//! The in-test OTLP/HTTP receiver of `tests/otel.rs` and the readers of what it decoded: log
//! records by id, metrics by name, data points, attributes as plain JSON, and the optional strict
//! check with the official protobuf JSON parser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::common::guard;

/// One POST the receiver decoded.
#[derive(Clone, Debug)]
pub struct Export {
    pub path: String,
    pub content_type: Option<String>,
    pub test_header: Option<String>,
    pub body: Value,
    /// The bytes as received.
    pub raw: Bytes,
}

/// An OTLP/HTTP receiver: decodes each body as JSON, keeps it, answers `status`.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Export>>>,
    count: watch::Receiver<usize>,
}

impl Receiver {
    pub async fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let store = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (store, tx) = (store.clone(), tx.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (store, tx) = (store.clone(), tx.clone());
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let path = req.uri().path().to_owned();
                        let (content_type, test_header) =
                            (header("content-type"), header("x-test"));
                        assert_eq!(req.method(), http::Method::POST);
                        let bytes = req.into_body().collect().await?.to_bytes();
                        let body: Value =
                            serde_json::from_slice(&bytes).expect("an OTLP/JSON body");
                        let raw = bytes;
                        let n = {
                            let mut g = store.lock().expect("lock");
                            g.push(Export {
                                path,
                                content_type,
                                test_header,
                                body,
                                raw,
                            });
                            g.len()
                        };
                        tx.send_replace(n);
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .expect("response"),
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, got, count }
    }

    pub fn all(&self) -> Vec<Export> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits for the next decoded body until `done` holds for what has been received.
    pub async fn until<T>(
        &mut self,
        what: &str,
        mut done: impl FnMut(&[Export]) -> Option<T>,
    ) -> T {
        guard(what, async {
            loop {
                if let Some(v) = done(&self.all()) {
                    return v;
                }
                self.count.changed().await.expect("receiver alive");
            }
        })
        .await
    }
}

/// `attributes` (a list of `{key, value}`) as a map.
pub fn attrs(v: &Value) -> BTreeMap<String, Value> {
    v["attributes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().expect("key").to_owned(),
                        kv["value"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every log record received, by its `id` attribute.
pub fn log_records(got: &[Export]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in got.iter().filter(|e| e.path == "/v1/logs") {
        for rl in e.body["resourceLogs"].as_array().expect("resourceLogs") {
            assert_eq!(
                attrs(&rl["resource"])["service.name"],
                json!({"stringValue": "joulegate"})
            );
            for sl in rl["scopeLogs"].as_array().expect("scopeLogs") {
                for lr in sl["logRecords"].as_array().expect("logRecords") {
                    let id = attrs(lr)["id"]["stringValue"]
                        .as_str()
                        .expect("id attribute")
                        .to_owned();
                    assert!(out.insert(id, lr.clone()).is_none(), "exported once");
                }
            }
        }
    }
    out
}

/// The metrics of one `/v1/metrics` body, by name.
pub fn metrics_of(e: &Export) -> BTreeMap<String, Value> {
    let rm = &e.body["resourceMetrics"][0];
    assert_eq!(
        attrs(&rm["resource"])["service.name"],
        json!({"stringValue": "joulegate"})
    );
    rm["scopeMetrics"][0]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| (m["name"].as_str().expect("name").to_owned(), m.clone()))
        .collect()
}

/// The value of the data point of `metric` whose attributes include `with`.
pub fn point(metric: &Value, with: &[(&str, &str)]) -> Option<f64> {
    let points = metric["sum"]["dataPoints"]
        .as_array()
        .or(metric["gauge"]["dataPoints"].as_array())?;
    let p = points.iter().find(|p| {
        let a = attrs(p);
        with.iter()
            .all(|(k, v)| a.get(*k) == Some(&json!({ "stringValue": v })))
    })?;
    match (&p["asDouble"], &p["asInt"]) {
        (Value::Number(n), _) => n.as_f64(),
        // 64-bit integers are strings in the OTLP JSON mapping.
        (_, Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

/// An attribute as the JSON value `/requests/{id}` serves.
pub fn plain(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        s.clone()
    } else if let Some(b) = v.get("boolValue") {
        b.clone()
    } else if let Some(Value::String(i)) = v.get("intValue") {
        json!(i.parse::<u64>().expect("intValue is an integer string"))
    } else if let Some(d) = v.get("doubleValue") {
        d.clone()
    } else {
        panic!("unexpected AnyValue {v}")
    }
}

/// Parses every body with the official protobuf JSON parser (`google.protobuf.json_format`, strict:
/// an unknown field or a wrong type fails) into `ExportLogsServiceRequest` /
/// `ExportMetricsServiceRequest` from the `opentelemetry-proto` package, and returns how many
/// log records or metrics each held. `None`, said on stderr, when no `.venv/bin/python` or
/// `python3` has that package (`pip install opentelemetry-proto`).
pub fn proto_counts(exports: &[Export]) -> Option<Vec<u64>> {
    const SCRIPT: &str = r#"
import json, sys
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
for line in sys.stdin:
    item = json.loads(line)
    if item["path"] == "/v1/logs":
        m = json_format.Parse(item["body"], ExportLogsServiceRequest())
        n = sum(len(s.log_records) for r in m.resource_logs for s in r.scope_logs)
    else:
        m = json_format.Parse(item["body"], ExportMetricsServiceRequest())
        n = sum(len(s.metrics) for r in m.resource_metrics for s in r.scope_metrics)
    print(n)
"#;
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let pythons = [venv.to_string_lossy().into_owned(), "python3".to_owned()];
    let Some(python) = pythons.iter().find(|p| {
        Command::new(p)
            .args(["-c", "import opentelemetry.proto, google.protobuf"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        use std::io::Write;
        // Straight to the stderr handle: a skipped check must be visible in a passing run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the protobuf-JSON check: no .venv/bin/python or python3 with \
             opentelemetry-proto; the Rust-side checks still run"
        );
        return None;
    };
    let input: String = exports
        .iter()
        .map(|e| {
            let body = String::from_utf8(e.raw.to_vec()).expect("UTF-8 body");
            format!("{}\n", json!({ "path": e.path, "body": body }))
        })
        .collect();
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "the protobuf JSON parser rejected a body: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse().expect("a count"))
            .collect(),
    )
}
