//! The exporter thread against a local OTLP/HTTP receiver: batching at [`MAX_BATCH`], the final
//! flush when the channel closes, and the counters.

use std::sync::Mutex;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::*;
use crate::config::UpstreamUrl;

fn record(i: u64) -> Arc<RequestRecord> {
    Arc::new(RequestRecord::sample(i))
}

/// A receiver keeping (path, decoded body) of every POST, answering 200.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, Value)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let bytes = req.into_body().collect().await?.to_bytes();
                    let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
                    store.lock().expect("lock").push((path, body));
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_in_full_batches_and_the_rest_at_the_end() {
    let (addr, got) = receiver().await;
    let config = OtelConfig {
        endpoint: UpstreamUrl::parse(&format!("http://{addr}")).expect("url"),
        // Longer than the test: only full batches and the final flush send records.
        interval: Duration::from_secs(3600),
        queue: 2000,
        headers: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(2000);
    let n = 2 * MAX_BATCH as u64 + 76;
    for i in 1..=n {
        tx.send(record(i)).expect("queued");
    }
    // Closed before the exporter starts: it sends everything, then the counters, then stops.
    drop(tx);
    let sources = Sources {
        accounting: Arc::new(AccountingShared::new(10, 10)),
        sampler: None,
        clock: Clock::new(),
    };
    let exporter = OtelExporter::spawn(config, rx, sources).expect("starts");
    let status = exporter.status().clone();
    // Joined off the runtime that serves the receiver.
    tokio::task::spawn_blocking(move || drop(exporter))
        .await
        .expect("joined");
    let got = got.lock().expect("lock").clone();
    let sizes: Vec<usize> = got
        .iter()
        .filter(|(p, _)| p == "/v1/logs")
        .map(|(_, b)| {
            b["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
                .as_array()
                .expect("records")
                .len()
        })
        .collect();
    assert_eq!(sizes, [MAX_BATCH, MAX_BATCH, 76], "{:?}", status.counts());
    assert_eq!(got.iter().filter(|(p, _)| p == "/v1/metrics").count(), 1);
    assert_eq!(got.last().map(|(p, _)| p.as_str()), Some("/v1/metrics"));
    assert_eq!(
        status.counts(),
        OtelCounts {
            records_exported: n,
            metric_exports: 1,
            ..OtelCounts::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_counts_failures_and_stops_promptly() {
    // A port that was free a moment ago: connections are refused.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let config = OtelConfig {
        endpoint: UpstreamUrl::parse(&format!("http://{addr}")).expect("url"),
        interval: Duration::from_secs(3600),
        queue: 10,
        headers: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(10);
    for i in 1..=3 {
        tx.send(record(i)).expect("queued");
    }
    drop(tx);
    let sources = Sources {
        accounting: Arc::new(AccountingShared::new(10, 10)),
        sampler: None,
        clock: Clock::new(),
    };
    let exporter = OtelExporter::spawn(config, rx, sources).expect("starts");
    let status = exporter.status().clone();
    tokio::task::spawn_blocking(move || drop(exporter))
        .await
        .expect("joined");
    assert_eq!(
        status.counts(),
        OtelCounts {
            records_failed: 3,
            log_exports_failed: 1,
            metric_exports_failed: 1,
            ..OtelCounts::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_receiver_costs_one_short_wait_at_stop() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = OtelConfig {
        endpoint: UpstreamUrl::parse(&format!("http://{addr}")).expect("url"),
        interval: Duration::from_secs(3600),
        queue: 2000,
        headers: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(2000);
    let n = 3 * MAX_BATCH as u64;
    for i in 1..=n {
        tx.send(record(i)).expect("queued");
    }
    let sources = Sources {
        accounting: Arc::new(AccountingShared::new(10, 10)),
        sampler: None,
        clock: Clock::new(),
    };
    let exporter = OtelExporter::spawn(config, rx, sources).expect("starts");
    let status = exporter.status().clone();
    // Stopped while the first full batch waits for an answer (the sender still open: the stop
    // flag, not a closed channel, ends the thread). That POST gets the short bound, and once it
    // has failed the rest of the final flush is not tried.
    tokio::task::spawn_blocking(move || drop(exporter))
        .await
        .expect("joined");
    drop(tx);
    assert_eq!(
        status.counts(),
        OtelCounts {
            records_failed: n,
            log_exports_failed: 3,
            metric_exports_failed: 1,
            ..OtelCounts::default()
        }
    );
}
