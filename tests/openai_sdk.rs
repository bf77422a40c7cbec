//! Client compatibility with the official `openai` Python SDK (`tests/sdk/openai_cases.py`): for
//! each case (streams with and without `stream_options`, `n = 2`, JSON, completions, responses) the
//! SDK's parsed objects through the proxy equal those it gets from the mock directly (no usage added
//! or lost; the `energy` extra field appears only where the client asked for usage, and is then set
//! aside), and the proxy's record has the mock's true counts.
//!
//! Python comes from `.venv/bin/python` (what `.ci/run` installs), else `python3`; without an
//! importable `openai` the test prints why and returns.
//!
//! The direct mock of each case is seeded so that, for the SDK's own request bytes, it generates
//! the text the proxied mock generated for the forwarded bytes (see `accounting/wire.rs`): the SDK's
//! bytes are learnt by sending the case once to a recording mock.

mod common;
#[path = "accounting/rig.rs"]
mod rig;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use joulegate::ledger::RecordStatus;
use joulegate::sim::text::hash_bytes;
use joulegate::sim::{MockHandle, MockUpstream};
use serde_json::{json, Value};

use common::guard;
use rig::{engine_mock, spawn_mock, Metering, Rig};

/// Completion tokens per choice the script asks for.
const MAX_TOKENS: u64 = 5;

/// The SDK driver process: one JSON command per line in, one JSON answer per line out.
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Sdk {
    fn spawn(python: &Path) -> Sdk {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_cases.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SDK driver");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Sdk {
            child,
            stdin,
            stdout,
        }
    }

    fn ask_blocking(&mut self, command: &Value) -> Value {
        writeln!(self.stdin, "{command}").expect("write to the SDK driver");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the SDK driver");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("SDK driver said {line:?}: {e}"))
    }

    /// Runs a command off the runtime's threads (the servers it talks to run on them).
    async fn ask(self, command: Value) -> (Sdk, Value) {
        let mut sdk = self;
        guard(
            "the SDK driver",
            tokio::task::spawn_blocking(move || {
                let answer = sdk.ask_blocking(&command);
                (sdk, answer)
            }),
        )
        .await
        .expect("SDK driver thread")
    }

    /// Runs `case` against `base` (`http://ADDR`), failing on an SDK error.
    async fn run(self, case: &str, base: &str) -> (Sdk, Value) {
        let (sdk, answer) = self
            .ask(json!({"case": case, "base_url": format!("{base}/v1")}))
            .await;
        if let Some(err) = answer.get("error") {
            panic!("{case} against {base}: the SDK raised {err}");
        }
        (sdk, answer)
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        // Closing stdin ends the driver's loop; kill in case it is stuck in a request.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python that can `import openai`, if any.
fn python_with_openai() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let candidates = [venv, PathBuf::from("python3")];
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import openai"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether the case's request asks for the final usage chunk (vLLM 0.32 semantics: `{}` does not).
fn asks_for_usage(case: &str) -> bool {
    case.ends_with("-usage") && !case.ends_with("-no-usage")
}

/// Sets every `created` / `created_at`, at any depth, to 0: wall-clock seconds differ between two
/// runs (and `/v1/responses` events nest them in `response`).
fn without_created(items: &mut [Value]) {
    fn clear(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "created" || k == "created_at" {
                        *child = json!(0);
                    } else {
                        clear(child);
                    }
                }
            }
            Value::Array(list) => list.iter_mut().for_each(clear),
            _ => {}
        }
    }
    items.iter_mut().for_each(clear);
}

/// Takes the `energy` extra field out of the items; returns (item index, energy object) pairs.
fn take_energy(items: &mut [Value]) -> Vec<(usize, Value)> {
    items
        .iter_mut()
        .enumerate()
        .filter_map(|(i, item)| {
            item.as_object_mut()
                .and_then(|o| o.remove("energy"))
                .map(|e| (i, e))
        })
        .collect()
}

/// KNOWN DIFFERENCE (reported, not settled; see `accounting/shapes.rs`): with `n > 1` and no usage
/// asked, the mock stamps `system_fingerprint` on every choice's finish chunk, the proxy on the last
/// one only. The direct items are brought to the proxy's form for that one field.
fn fingerprint_on_last_finish_only(items: &mut [Value]) {
    let last = items
        .iter()
        .rposition(|i| i.get("system_fingerprint").is_some());
    for (i, item) in items.iter_mut().enumerate() {
        if Some(i) != last {
            if let Some(o) = item.as_object_mut() {
                o.remove("system_fingerprint");
            }
        }
    }
}

fn items(answer: &Value) -> Vec<Value> {
    answer["items"].as_array().cloned().expect("items")
}

/// One case: recorded, proxied, direct; compared; counted.
async fn check_case(sdk: Sdk, case: &str, rig: &mut Rig, recorder: &MockHandle) -> Sdk {
    // 1. The SDK's own request bytes.
    let (sdk, _) = sdk.run(case, &recorder.url()).await;
    let client_body = recorder.requests().last().expect("recorded").body.clone();
    // 2. Through the proxy.
    let proxy = format!("http://{}", rig.proxy);
    let (sdk, proxied) = sdk.run(case, &proxy).await;
    let forwarded = rig.mock.requests().last().cloned().expect("forwarded");
    assert_eq!(
        forwarded.header("x-request-id"),
        Some(format!("sdk-{case}").as_str())
    );
    // 3. Directly, to a mock that generates the same text for the client's bytes.
    let seed = hash_bytes(&client_body) ^ hash_bytes(&forwarded.body);
    let direct_mock = spawn_mock(MockUpstream::builder().seed(seed)).await;
    let (sdk, direct) = sdk.run(case, &direct_mock.url()).await;
    direct_mock.shutdown().await;

    let mut p = items(&proxied);
    let mut d = items(&direct);
    assert!(
        take_energy(&mut d).is_empty(),
        "{case}: the mock sends no energy"
    );
    let energy = take_energy(&mut p);
    let public_id = proxied["energy_headers"]["x-energy-request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no x-energy-request-id"))
        .to_string();
    let response_id = forwarded.response_id.clone().expect("generation id");
    let truth = guard("truth", rig.mock.wait_for_truth(&response_id))
        .await
        .expect("truth");
    if asks_for_usage(case) {
        assert_eq!(energy.len(), 1, "{case}: one energy object");
        let (at, e) = &energy[0];
        assert_eq!(*at, p.len() - 1, "{case}: on the final usage chunk");
        assert!(p[*at]["usage"].is_object(), "{case}: usage chunk");
        assert_eq!(e["request_id"], public_id.as_str(), "{case}");
        assert_eq!(e["prompt_tokens"], truth.prompt_tokens, "{case}");
        assert_eq!(e["completion_tokens"], truth.completion_tokens, "{case}");
    } else {
        assert!(energy.is_empty(), "{case}: energy without usage asked");
    }
    if case.contains("-n2") && !asks_for_usage(case) && proxied["kind"] == "stream" {
        fingerprint_on_last_finish_only(&mut d);
    }
    without_created(&mut p);
    without_created(&mut d);
    let usage_count = |items: &[Value]| items.iter().filter(|i| i["usage"].is_object()).count();
    assert_eq!(
        usage_count(&p),
        usage_count(&d),
        "{case}: usage added or lost"
    );
    assert_eq!(p.len(), d.len(), "{case}: item counts");
    for (i, (a, b)) in p.iter().zip(d.iter()).enumerate() {
        assert_eq!(a, b, "{case}: item {i} differs (proxied, direct)");
    }
    // Counts: the mock's truth, in the record and (JSON answers) in the headers.
    let n = if case.contains("-n2") { 2 } else { 1 };
    assert_eq!(
        truth.completion_tokens,
        MAX_TOKENS * n,
        "{case}: mock truth"
    );
    if proxied["kind"] == "json" {
        let h = &proxied["energy_headers"];
        assert_eq!(h["x-energy-prompt-tokens"], truth.prompt_tokens.to_string());
        assert_eq!(
            h["x-energy-completion-tokens"],
            truth.completion_tokens.to_string()
        );
        assert_eq!(h["x-energy-status"], "ok", "{case}");
    }
    let record = rig.settle(&public_id);
    assert_eq!(record.prompt_tokens, truth.prompt_tokens, "{case}: record");
    assert_eq!(record.completion_tokens, truth.completion_tokens, "{case}");
    assert!(record.tokens_exact, "{case}");
    assert_eq!(record.status, RecordStatus::Ok, "{case}: {record:?}");
    sdk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_sees_through_the_proxy_what_it_sees_directly() {
    let Some(python) = python_with_openai() else {
        eprintln!(
            "SKIPPED openai_sdk: no Python with the `openai` package (.venv/bin/python or python3); \
             run `python3 -m venv .venv && .venv/bin/pip install openai==3.54.0` (see .ci/run)"
        );
        return;
    };
    let mut rig = Rig::start(engine_mock(), Metering::Measured, |_| {}).await;
    let recorder = spawn_mock(MockUpstream::builder()).await;
    let (mut sdk, list) = Sdk::spawn(&python).ask(json!({"list": true})).await;
    let cases: Vec<String> = list["cases"]
        .as_array()
        .expect("case list")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    assert!(cases.len() >= 10, "the driver lists its cases: {list}");
    for case in &cases {
        sdk = check_case(sdk, case, &mut rig, &recorder).await;
    }
    rig.assert_conservation();
    drop(sdk);
    recorder.shutdown().await;
    rig.stop().await;
}
