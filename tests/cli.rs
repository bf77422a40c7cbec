//! The command line as data: every subcommand's `--help`, `--print-config` with the precedence
//! flag > environment > file > default, and start-up errors that name the key, value and origin.

use std::process::{Command, Output};

fn joulegate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_joulegate"));
    cmd.args(args);
    // A clean environment for the JOULEGATE_* variables, so the host's settings do not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("JOULEGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run joulegate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "serve",
        "demo",
        "log-power",
        "mock-upstream",
        "batch",
        "replay",
    ] {
        let o = joulegate(&[sub, "--help"], &[]);
        assert!(o.status.success(), "{sub} --help failed: {}", stderr(&o));
        assert!(
            stdout(&o).contains("Usage: joulegate"),
            "{sub}: {}",
            stdout(&o)
        );
    }
    let o = joulegate(&["serve", "--help"], &[]);
    for flag in ["--response-energy", "--response-energy-max-wait-ms"] {
        assert!(stdout(&o).contains(flag), "serve --help lists {flag}");
    }
    let o = joulegate(&["--help"], &[]);
    for sub in ["serve", "demo", "log-power", "mock-upstream", "batch"] {
        assert!(stdout(&o).contains(sub), "top-level help lists {sub}");
    }
}

fn printed(o: &Output) -> toml::Table {
    assert!(o.status.success(), "print-config failed: {}", stderr(o));
    toml::from_str(&stdout(o)).expect("--print-config prints TOML")
}

#[test]
fn print_config_shows_precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("joulegate.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1111\"\nupstream = \"http://10.0.0.9:8000\"\npue = 1.3\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let o = joulegate(
        &[
            "serve",
            "--print-config",
            "--config",
            file,
            "--listen",
            "127.0.0.1:2222",
        ],
        &[
            ("JOULEGATE_LISTEN", "127.0.0.1:3333"),
            ("JOULEGATE_PUE", "1.5"),
            ("JOULEGATE_KEY_SALT", "s3cret"),
        ],
    );
    let t = printed(&o);
    assert_eq!(
        t["listen"].as_str(),
        Some("127.0.0.1:2222"),
        "flag beats env and file"
    );
    assert_eq!(t["pue"].as_float(), Some(1.5), "env beats file");
    assert_eq!(
        t["upstream"].as_str(),
        Some("http://10.0.0.9:8000"),
        "file beats default"
    );
    assert_eq!(
        t["admin_listen"].as_str(),
        Some("127.0.0.1:9101"),
        "default"
    );
    assert!(!stdout(&o).contains("s3cret"), "secrets are never printed");
}

#[test]
fn meters_come_from_repeated_flags_or_a_semicolon_list() {
    let o = joulegate(
        &[
            "serve",
            "--print-config",
            "--meter",
            "sim:100",
            "--meter",
            "nvml:0,1",
        ],
        &[],
    );
    let t = printed(&o);
    let meters: Vec<&str> = t["meters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(meters, vec!["sim:100", "nvml:0,1"]);
    let o = joulegate(
        &["serve", "--print-config"],
        &[("JOULEGATE_METERS", "sim:5;rapl")],
    );
    let t = printed(&o);
    assert_eq!(t["meters"].as_array().unwrap().len(), 2);
}

#[test]
fn otel_keys_need_a_binary_built_with_the_feature() {
    let o = joulegate(
        &["serve", "--print-config"],
        &[("JOULEGATE_OTEL_ENDPOINT", "http://127.0.0.1:4318")],
    );
    if cfg!(feature = "otel") {
        let t = printed(&o);
        assert_eq!(t["otel_endpoint"].as_str(), Some("http://127.0.0.1:4318"));
        assert_eq!(t["otel_interval_ms"].as_integer(), Some(5000));
    } else {
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("otel_endpoint") && e.contains("built without the `otel` feature"),
            "{e}"
        );
    }
}

#[test]
fn bad_values_stop_start_up_with_key_value_and_origin() {
    let o = joulegate(&["serve", "--print-config", "--listen", "nowhere"], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("listen") && e.contains("nowhere") && e.contains("--listen"),
        "{e}"
    );

    let o = joulegate(
        &["serve", "--print-config"],
        &[("JOULEGATE_METERS", "ipmi")],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("meters") && e.contains("ipmi"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "sample_interval_ms = 1000\n").unwrap();
    let o = joulegate(
        &[
            "serve",
            "--print-config",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("sample_interval_ms") && e.contains("bad.toml"),
        "{e}"
    );

    let o = joulegate(
        &["serve", "--print-config"],
        &[("JOULEGATE_RESPONSE_ENERGY", "exact")],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("response_energy")
            && e.contains("exact")
            && e.contains("provisional or settled"),
        "{e}"
    );
}

#[test]
fn response_energy_keys_in_three_layers() {
    let t = printed(&joulegate(&["serve", "--print-config"], &[]));
    assert_eq!(t["response_energy"].as_str(), Some("provisional"));
    assert_eq!(t["response_energy_max_wait_ms"].as_integer(), Some(4000));
    let t = printed(&joulegate(
        &[
            "serve",
            "--print-config",
            "--response-energy",
            "settled",
            "--response-energy-max-wait-ms",
            "300",
        ],
        &[],
    ));
    assert_eq!(t["response_energy"].as_str(), Some("settled"));
    assert_eq!(t["response_energy_max_wait_ms"].as_integer(), Some(300));
    let t = printed(&joulegate(
        &["serve", "--print-config"],
        &[
            ("JOULEGATE_RESPONSE_ENERGY", "settled"),
            ("JOULEGATE_RESPONSE_ENERGY_MAX_WAIT_MS", "20"),
        ],
    ));
    assert_eq!(t["response_energy"].as_str(), Some("settled"));
    assert_eq!(t["response_energy_max_wait_ms"].as_integer(), Some(20));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settled.toml");
    std::fs::write(
        &file,
        "response_energy = \"settled\"\nresponse_energy_max_wait_ms = 0\n",
    )
    .unwrap();
    let o = joulegate(
        &[
            "serve",
            "--print-config",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("response_energy_max_wait_ms") && e.contains("settled.toml"),
        "{e}"
    );
}

#[test]
fn admission_keys_in_three_layers() {
    let t = printed(&joulegate(&["serve", "--print-config"], &[]));
    assert_eq!(t["max_inflight_requests"].as_integer(), Some(0));
    assert_eq!(t["max_inflight_tokens"].as_integer(), Some(0));
    assert_eq!(t["max_queue"].as_integer(), Some(1024));
    assert_eq!(t["queue_timeout_ms"].as_integer(), Some(30000));
    assert_eq!(t["admission_default_max_tokens"].as_integer(), Some(1024));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admission.toml");
    std::fs::write(
        &file,
        "max_inflight_requests = 2\nmax_queue = 3\nqueue_timeout_ms = 700\n",
    )
    .unwrap();
    let t = printed(&joulegate(
        &[
            "serve",
            "--print-config",
            "--config",
            file.to_str().unwrap(),
            "--max-inflight-requests",
            "4",
        ],
        &[
            ("JOULEGATE_MAX_QUEUE", "5"),
            ("JOULEGATE_MAX_INFLIGHT_TOKENS", "8000"),
        ],
    ));
    // Flag over file; environment over file; file over default.
    assert_eq!(t["max_inflight_requests"].as_integer(), Some(4));
    assert_eq!(t["max_queue"].as_integer(), Some(5));
    assert_eq!(t["max_inflight_tokens"].as_integer(), Some(8000));
    assert_eq!(t["queue_timeout_ms"].as_integer(), Some(700));
    let o = joulegate(&["serve", "--print-config", "--queue-timeout-ms", "0"], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("queue_timeout_ms") && e.contains("--queue-timeout-ms"),
        "{e}"
    );
    let o = joulegate(&["serve", "--help"], &[]);
    for flag in [
        "--max-inflight-requests",
        "--max-inflight-tokens",
        "--max-queue",
        "--queue-timeout-ms",
        "--admission-default-max-tokens",
    ] {
        assert!(stdout(&o).contains(flag), "serve --help lists {flag}");
    }
}

#[test]
fn every_subcommand_accepts_the_global_log_flags() {
    for sub in ["serve", "demo", "log-power", "mock-upstream", "batch"] {
        let o = joulegate(&[sub, "--help"], &[]);
        for flag in ["--log-format <text|json>", "--verbose"] {
            assert!(stdout(&o).contains(flag), "{sub} --help lists {flag}");
        }
        // Before or after the subcommand, and as short `-v`.
        let o = joulegate(&["--log-format", "json", "-vv", sub, "--help"], &[]);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
    }
}

#[test]
fn log_format_in_three_layers_and_validated() {
    let t = printed(&joulegate(&["serve", "--print-config"], &[]));
    assert_eq!(t["log_format"].as_str(), Some("text"), "default");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logs.toml");
    std::fs::write(&file, "log_format = \"json\"\n").unwrap();
    let file = file.to_str().unwrap();
    let t = printed(&joulegate(
        &["serve", "--print-config", "--config", file],
        &[],
    ));
    assert_eq!(t["log_format"].as_str(), Some("json"), "file");
    let t = printed(&joulegate(
        &["serve", "--print-config", "--config", file],
        &[("JOULEGATE_LOG_FORMAT", "text")],
    ));
    assert_eq!(t["log_format"].as_str(), Some("text"), "env beats file");
    let t = printed(&joulegate(
        &["--log-format", "json", "serve", "--print-config"],
        &[("JOULEGATE_LOG_FORMAT", "text")],
    ));
    assert_eq!(t["log_format"].as_str(), Some("json"), "flag beats env");

    let o = joulegate(&["serve", "--print-config", "--log-format", "logfmt"], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("`log_format`")
            && e.contains("\"logfmt\"")
            && e.contains("--log-format")
            && e.contains("text or json"),
        "{e}"
    );
    let bad = dir.path().join("bad-logs.toml");
    std::fs::write(&bad, "log_format = \"yaml\"\n").unwrap();
    let o = joulegate(
        &["serve", "--print-config", "--config", bad.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("\"yaml\"") && e.contains("bad-logs.toml"), "{e}");
}

#[test]
fn attribution_keys_in_three_layers_and_validated() {
    let t = printed(&joulegate(&["serve", "--print-config"], &[]));
    assert_eq!(t["settle_lag_ms"].as_integer(), Some(3000));
    assert_eq!(t["context_joules_per_token"].as_float(), Some(0.00001));
    let t = printed(&joulegate(
        &["serve", "--print-config"],
        &[("JOULEGATE_SETTLE_LAG_MS", "1500")],
    ));
    assert_eq!(t["settle_lag_ms"].as_integer(), Some(1500));
    let o = joulegate(&["serve", "--print-config", "--settle-lag-ms", "5"], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("settle_lag_ms") && e.contains('5') && e.contains("--settle-lag-ms"),
        "{e}"
    );
    assert_eq!(t["calibration_hold_ms"].as_integer(), Some(10_000));
    let t = printed(&joulegate(
        &["serve", "--print-config", "--calibration-hold-ms", "0"],
        &[],
    ));
    assert_eq!(t["calibration_hold_ms"].as_integer(), Some(0));
    let o = joulegate(
        &["serve", "--print-config"],
        &[("JOULEGATE_CALIBRATION_HOLD_MS", "70000")],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("calibration_hold_ms")
            && e.contains("70000")
            && e.contains("JOULEGATE_CALIBRATION_HOLD_MS"),
        "{e}"
    );
}

/// A start-up error is one line, whatever `RUST_BACKTRACE` says: the message names what to fix,
/// and a stack trace (what `anyhow` printed for `main`'s error with `RUST_BACKTRACE=1`, as on the
/// GPU machines) only buried it. Causes appear once.
#[test]
fn a_start_up_error_is_one_line_without_a_stack_trace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let o = joulegate(
        &["serve", "--config", missing.to_str().unwrap()],
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(
        lines[0].starts_with("Error: ") && lines[0].contains("missing.toml"),
        "{e}"
    );
    assert!(!e.contains("backtrace") && !e.contains("Caused by"), "{e}");
    // The OS's reason once, not once per link of the chain.
    let reason = "No such file or directory";
    assert_eq!(e.matches(reason).count(), 1, "{e}");
}
