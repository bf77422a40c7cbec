//! Diagnostic logs of the built binary, read from its stderr: JSON lines carry timestamp, level,
//! target, message and fields; text off a terminal carries no colour escapes; the demo's and
//! log-power's stdout is theirs alone; and the proxy at `RUST_LOG=trace` never logs an API key, a
//! prompt or a completion. Nothing waits on time: commands run to their end, and the proxy is read
//! once it has exited after SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::*;

/// The binary with a clean environment: no host `JOULEGATE_*`, `RUST_LOG` or `NO_COLOR`.
fn joulegate(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_joulegate"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("JOULEGATE_") || k == "RUST_LOG" || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let o = joulegate(args, env).output().expect("run joulegate");
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A short `log-power` run whose one warning is certain: a RAPL root that does not exist.
const LOG_POWER: &[&str] = &[
    "log-power",
    "--meter",
    "sim:100",
    "--meter",
    "rapl:/nonexistent-powercap",
    "--duration-s",
    "0.02",
    "--interval-ms",
    "10",
];

/// Parses every stderr line as a JSON object with the fields a log pipeline indexes.
fn json_lines(stderr: &[u8]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let text = String::from_utf8(stderr.to_vec()).expect("UTF-8 logs");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            let obj = v.as_object().expect("an object").clone();
            for key in ["timestamp", "level", "target"] {
                assert!(obj.get(key).is_some_and(|v| v.is_string()), "{key}: {line}");
            }
            obj
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_with_message_and_fields() {
    // The global flag after the subcommand, before it, and as the environment variable.
    let after: Vec<&str> = LOG_POWER
        .iter()
        .copied()
        .chain(["--log-format", "json"])
        .collect();
    let before: Vec<&str> = ["--log-format", "json"]
        .into_iter()
        .chain(LOG_POWER.iter().copied())
        .collect();
    for o in [
        run(&after, &[]),
        run(&before, &[]),
        run(LOG_POWER, &[("JOULEGATE_LOG_FORMAT", "json")]),
    ] {
        let lines = json_lines(&o.stderr);
        assert_eq!(lines.len(), 1, "{}", String::from_utf8_lossy(&o.stderr));
        let warn = &lines[0];
        assert_eq!(warn["level"], "WARN");
        assert_eq!(warn["target"], "joulegate::meter::log_power");
        assert_eq!(warn["meter"], "rapl:/nonexistent-powercap");
        let message = warn["message"].as_str().expect("message");
        assert!(message.contains("/nonexistent-powercap"), "{message}");
        // stdout is the CSV, untouched by logs.
        let csv = String::from_utf8(o.stdout).unwrap();
        assert!(csv.lines().next().is_some_and(|h| h.contains(',')), "{csv}");
        assert!(!csv.contains("WARN"), "{csv}");
    }
}

#[test]
fn a_bad_log_format_names_key_value_and_origin() {
    let o = joulegate(&["log-power", "--log-format", "logfmt"], &[])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("log_format") && e.contains("logfmt") && e.contains("--log-format"),
        "{e}"
    );
}

#[test]
fn text_logs_off_a_terminal_carry_no_colour() {
    let o = run(LOG_POWER, &[]);
    let text = String::from_utf8(o.stderr).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains("\x1b["), "{text:?}");
    assert!(
        text.contains(" WARN joulegate::meter::log_power: "),
        "{text}"
    );
    // `-v` raises log-power's default (warn) to info.
    let o = run(&[&["-v"], LOG_POWER].concat(), &[]);
    let text = String::from_utf8(o.stderr).unwrap();
    assert!(!text.contains("\x1b["), "{text:?}");
    assert!(text.lines().any(|l| l.contains(" WARN ")), "{text}");
    assert!(!text.lines().any(|l| l.contains("DEBUG")), "{text}");
}

#[test]
fn the_demo_keeps_stdout_for_its_table_and_logs_only_warnings() {
    let o = run(
        &[
            "demo",
            "--requests",
            "3",
            "--duration-s",
            "0.2",
            "--time-scale",
            "8",
        ],
        &[],
    );
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.lines().any(|l| l.starts_with("conservation:")),
        "{table}"
    );
    assert!(
        !table.contains(" INFO ") && !table.contains("\x1b["),
        "{table}"
    );
    let logs = String::from_utf8(o.stderr).unwrap();
    assert!(
        logs.lines()
            .all(|l| !l.contains(" INFO ") && !l.contains(" DEBUG ")),
        "the demo logs warnings only by default: {logs}"
    );
}

const KEY: &str = "sk-secret-LOGTEST-9f3a7c";
const PROMPT: &str = "ZEBRA-PROMPT-4b2d-ocelot";
const COMPLETION: &str = "QUOKKA-COMPLETION-7c1e-narwhal";

fn completion_json() -> Vec<u8> {
    serde_json::json!({
        "id": "cmpl-log", "object": "chat.completion", "created": 1, "model": "tiny",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": COMPLETION}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    })
    .to_string()
    .into_bytes()
}

fn completion_sse() -> Vec<Step> {
    let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
        let v = serde_json::json!({
            "id": "cmpl-log", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": choices, "usage": usage
        });
        Step::Write(format!("data: {v}\n\n").into_bytes())
    };
    vec![
        chunk(
            serde_json::json!([{"index": 0, "delta": {"content": COMPLETION}, "finish_reason": null}]),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!([]),
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
        ),
        Step::Write(b"data: [DONE]\n\n".to_vec()),
    ]
}

/// Runs `joulegate serve` at `RUST_LOG=trace` in `format`, sends it requests carrying the key, the
/// prompt and (back) the completion over HTTP/1.1 and HTTP/2, stops it with SIGTERM and returns
/// everything it wrote on stderr.
#[cfg(unix)]
async fn serve_at_trace(upstream: std::net::SocketAddr, format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let upstream_url = format!("http://{upstream}");
    let mut child = joulegate(
        &[
            "--log-format",
            format,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream_url,
            "--meter",
            "sim:100",
            "--absent-include-usage",
            "false",
            "--upstream-forces-usage",
            "false",
        ],
        &[("RUST_LOG", "trace")],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::from(log_file))
    .spawn()
    .expect("start joulegate serve");
    // The binary prints its bound addresses on stdout (port 0 picked by the kernel). The pipe stays
    // open until the end: a closed stdout would make its next `println!` fail.
    let stdout = child.stdout.take().unwrap();
    let (proxy, _stdout) = guard(
        "listening lines",
        tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout);
            let mut proxy = None;
            let mut line = String::new();
            while lines.read_line(&mut line).expect("stdout") > 0 {
                if let Some(addr) = line.trim().strip_prefix("listening proxy=") {
                    proxy = Some(addr.parse::<std::net::SocketAddr>().expect("an address"));
                }
                if line.starts_with("listening admin=") {
                    return (proxy.expect("proxy line first"), lines);
                }
                line.clear();
            }
            panic!("joulegate serve exited before listening");
        }),
    )
    .await
    .unwrap();

    let auth = format!("Bearer {KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("host", "joulegate.test"),
    ];
    let body = |stream: bool| {
        serde_json::json!({
            "model": "tiny", "stream": stream,
            "messages": [{"role": "user", "content": PROMPT}]
        })
        .to_string()
    };
    for stream in [false, true] {
        let got = send(
            proxy,
            request(
                "POST",
                proxy,
                "/v1/chat/completions",
                &headers,
                body(stream).as_bytes(),
            ),
        )
        .await;
        assert_eq!(got.status, 200);
        assert!(
            String::from_utf8_lossy(&got.body).contains(COMPLETION),
            "the completion went through"
        );
    }
    let mut h2_sender = h2(proxy).await;
    let req = h2_request(
        request(
            "POST",
            proxy,
            "/v1/chat/completions",
            &headers[..2],
            body(false).as_bytes(),
        ),
        proxy,
    );
    let got = collect(
        guard("h2 response", h2_sender.send_request(req))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    drop(h2_sender);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = guard(
        "exit after SIGTERM",
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(exit.success(), "{exit:?}");
    std::fs::read_to_string(&log_path).unwrap()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_carry_keys_prompts_or_completions() {
    let upstream = ScriptedUpstream::start(|r| {
        let stream = String::from_utf8_lossy(&r.body).contains("\"stream\":true");
        if stream {
            Reply::chunked(
                200,
                &[("content-type", "text/event-stream")],
                completion_sse(),
            )
        } else {
            Reply::fixed(
                200,
                &[("content-type", "application/json")],
                &completion_json(),
            )
        }
    })
    .await;
    for format in ["text", "json"] {
        let logs = serve_at_trace(upstream.addr, format).await;
        // Trace was really on: the dependencies' trace events are there.
        assert!(
            logs.lines().filter(|l| l.contains("TRACE")).count() > 10,
            "{format}: {logs}"
        );
        for secret in [KEY, "sk-secret", PROMPT, COMPLETION] {
            let hits: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
            assert!(hits.is_empty(), "{format}: {secret} logged: {hits:#?}");
        }
        assert!(
            !logs.contains("\x1b["),
            "{format}: no colour off a terminal"
        );
        if format == "json" {
            let lines = json_lines(logs.as_bytes());
            assert!(lines.iter().any(|l| l["message"] == "joulegate serving"));
        }
    }
}
