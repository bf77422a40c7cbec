//! Test harness for whole-proxy tests: a scripted raw-TCP upstream (exact bytes, exact cuts, gates
//! instead of sleeps), the proxy started on 127.0.0.1:0, and a small hyper client.
//!
//! - `upstream`: the scripted upstream ([`ScriptedUpstream`], [`Reply`], [`Step`], [`Received`]).
//! - `client`: client connections, requests and whole responses ([`send`], [`Got`]).
//! - here: the hang guard, the proxy under test ([`TestProxy`]) and the recorded fixtures.
#![allow(dead_code)]

mod client;
mod upstream;

// Not every test binary uses every helper (as with `dead_code` above).
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use upstream::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use joulegate::app::{App, Listeners};
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use tokio::sync::oneshot;

/// Generous guard for awaits that must complete; never a pass/fail timing criterion.
pub const GUARD: Duration = Duration::from_secs(10);

pub async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A running proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub join: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    pub async fn start(upstream: SocketAddr) -> TestProxy {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: SocketAddr, tweak: impl FnOnce(&mut ServeArgs)) -> TestProxy {
        let mut args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{upstream}")),
            // No /version probe unless a test asks for it: scripted upstreams answer every request.
            absent_include_usage: Some("false".into()),
            upstream_forces_usage: Some("false".into()),
            // Nor reads of its /metrics: they would be requests the scripts did not expect.
            upstream_metrics: Some("off".into()),
            ..ServeArgs::default()
        };
        tweak(&mut args);
        let config = Config::resolve(&args, &Default::default(), None).expect("valid test config");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let addr = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let app = App::build(config).expect("app builds");
        let join = tokio::spawn(async move {
            app.serve(listeners, async {
                let _ = rx.await;
            })
            .await
            .expect("app serves");
        });
        TestProxy {
            addr,
            admin,
            shutdown: Some(tx),
            join,
        }
    }

    /// Starts the graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The fixtures folder kept in the project.
pub fn fixtures_dir(folder: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder)
}

/// One recorded vLLM exchange.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub method: String,
    pub path: String,
    pub request_body: Option<serde_json::Value>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Fixture {
    pub fn is_chunked(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    }
}

/// Loads every case of a fixture folder.
pub fn fixtures(folder: &str) -> Vec<Fixture> {
    let dir = fixtures_dir(folder);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (name, case) in index.as_object().unwrap() {
        let headers = case["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap().to_string(),
                    h[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.push(Fixture {
            name: name.clone(),
            method: case["request"]["method"].as_str().unwrap().to_string(),
            path: case["request"]["path"].as_str().unwrap().to_string(),
            request_body: case["request"]
                .get("body")
                .filter(|b| !b.is_null())
                .cloned(),
            status: case["status"].as_u64().unwrap() as u16,
            headers,
            body: std::fs::read(dir.join(format!("{name}.body"))).unwrap(),
        });
    }
    out
}
