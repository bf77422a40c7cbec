use crate::cli::ServeArgs;
use std::path::{Path, PathBuf};

use super::*;

fn args() -> ServeArgs {
    ServeArgs::default()
}

fn resolve_file(text: &str) -> Result<Config, ConfigError> {
    let path = PathBuf::from("test.toml");
    let file = FileConfig::parse(text, &path)?;
    Config::resolve(&args(), &file, Some(&path))
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let c = Config::resolve(&args(), &FileConfig::default(), None).unwrap();
    assert_eq!(c.listen.to_string(), defaults::LISTEN);
    assert_eq!(c.admin_listen.to_string(), defaults::ADMIN_LISTEN);
    assert_eq!(c.upstream.authority, "127.0.0.1:8000");
    assert_eq!(c.max_body_bytes, None);
    assert_eq!(c.max_inspect_bytes, defaults::MAX_INSPECT_BYTES);
    assert_eq!(c.max_inspect_total_bytes, defaults::MAX_INSPECT_TOTAL_BYTES);
}

#[test]
fn flag_beats_file() {
    let path = PathBuf::from("f.toml");
    let file = FileConfig::parse(
        "listen = \"127.0.0.1:1\"\nupstream = \"http://10.0.0.1:8000\"\n",
        &path,
    )
    .unwrap();
    let mut a = args();
    a.listen = Some("127.0.0.1:2".into());
    let c = Config::resolve(&a, &file, Some(&path)).unwrap();
    assert_eq!(c.listen.port(), 2);
    assert_eq!(c.upstream.authority, "10.0.0.1:8000");
}

#[test]
fn example_config_round_trips() {
    let text = include_str!("../../config.example.toml");
    let c = resolve_file(text).expect("config.example.toml is valid");
    let printed = c.to_toml();
    let again = resolve_file(&printed).expect("--print-config output is valid config");
    assert_eq!(c.to_toml(), again.to_toml());
    // Every key of the mirror appears in the example, so the example documents them all.
    let keys: Vec<String> = toml::from_str::<toml::Table>(&printed)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for key in keys {
        assert!(
            text.contains(&format!("{key} =")),
            "config.example.toml does not document `{key}`"
        );
    }
}

#[test]
fn unknown_key_is_rejected_with_file_name() {
    let err = resolve_file("lisen = \"127.0.0.1:1\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.toml") && err.contains("lisen"), "{err}");
}

#[test]
fn bad_listen_names_key_value_and_origin() {
    let err = resolve_file("listen = \"localhost\"").unwrap_err();
    match err {
        ConfigError::Invalid {
            key, value, origin, ..
        } => {
            assert_eq!(key, "listen");
            assert_eq!(value, "localhost");
            assert_eq!(origin, Origin::File(PathBuf::from("test.toml")));
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn bad_admin_listen_flag_names_flag() {
    let mut a = args();
    a.admin_listen = Some("nope".into());
    let err = Config::resolve(&a, &FileConfig::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--admin-listen") && err.contains("JOULEGATE_ADMIN_LISTEN"),
        "{err}"
    );
}

#[test]
fn a_public_admin_listener_needs_a_token_or_an_explicit_allowance() {
    let err = resolve_file("admin_listen = \"0.0.0.0:9101\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin_listen")
            && err.contains("admin_token")
            && err.contains("admin_allow_public"),
        "{err}"
    );
    assert!(resolve_file("admin_listen = \"0.0.0.0:9101\"\nadmin_token = \"t0ken\"").is_ok());
    let open = resolve_file("admin_listen = \"0.0.0.0:9101\"\nadmin_allow_public = true").unwrap();
    assert!(open.admin_allow_public);
    // Loopback, v4 or v6, needs neither.
    assert!(resolve_file("admin_listen = \"[::1]:9101\"").is_ok());
    let mut a = args();
    a.admin_listen = Some("10.1.2.3:9101".into());
    let err = Config::resolve(&a, &FileConfig::default(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin-listen"), "names the flag: {err}");
}

#[test]
fn config_errors_never_echo_secrets() {
    let secret = "s3cret-Value";
    for text in [
        format!("admin_token = \"{secret} x\""),
        format!("admin_token = \"{secret}"),
        format!("admin_token = {secret}"),
        format!("key_salt = [\"{secret}\"]"),
        format!("admin_token = \"{secret}\"\nlisten = 5"),
        format!("admin_token = \"{secret}\"\nbogus_key = 1"),
    ] {
        let err = resolve_file(&text).unwrap_err().to_string();
        assert!(!err.contains(secret), "{text:?} gave {err}");
        assert!(err.contains("test.toml"), "{err}");
    }
    // The error still says where: the key or the line.
    let err = resolve_file("admin_token = 5").unwrap_err().to_string();
    assert!(
        err.contains("admin_token") && err.contains("line 1"),
        "{err}"
    );
    let err = resolve_file("listen = \"127.0.0.1:0\"\nlisten_typo = 1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("listen_typo"),
        "{err}"
    );
    let mut a = args();
    a.admin_token = Some(format!("{secret} with spaces"));
    let err = Config::resolve(&a, &FileConfig::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains(secret) && err.contains("admin_token"),
        "{err}"
    );
}

#[test]
fn timeouts_resolve_and_zero_is_rejected() {
    let c = resolve_file("upstream_idle_timeout_ms = 1234\nheader_read_timeout_ms = 55").unwrap();
    assert_eq!(
        c.upstream_idle_timeout,
        std::time::Duration::from_millis(1234)
    );
    assert_eq!(c.header_read_timeout, std::time::Duration::from_millis(55));
    let d = resolve_file("").unwrap();
    assert_eq!(
        d.upstream_idle_timeout.as_millis() as u64,
        defaults::UPSTREAM_IDLE_TIMEOUT_MS
    );
    assert_eq!(
        d.header_read_timeout.as_millis() as u64,
        defaults::HEADER_READ_TIMEOUT_MS
    );
    assert!(!d.admin_allow_public);
}

#[test]
fn same_listen_and_admin_is_rejected() {
    assert!(resolve_file("listen = \"127.0.0.1:5\"\nadmin_listen = \"127.0.0.1:5\"").is_err());
    // port 0 twice is fine: each gets its own free port
    assert!(resolve_file("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"").is_ok());
}

#[test]
fn upstream_validation() {
    assert!(resolve_file("upstream = \"https://x:1\"")
        .unwrap_err()
        .to_string()
        .contains("https"));
    assert!(resolve_file("upstream = \"ftp://x:1\"").is_err());
    assert!(resolve_file("upstream = \"not a url\"").is_err());
    assert!(resolve_file("upstream = \"http://u:p@x:1\"").is_err());
    let c = resolve_file("upstream = \"http://gpu-node/vllm/\"").unwrap();
    assert_eq!(c.upstream.authority, "gpu-node:80");
    assert_eq!(c.upstream.path_prefix, "/vllm");
}

#[test]
fn zero_limits_are_rejected() {
    for key in [
        "max_inspect_bytes",
        "max_inspect_total_bytes",
        "max_connections",
        "connect_timeout_ms",
        "upstream_header_timeout_ms",
        "upstream_idle_timeout_ms",
        "header_read_timeout_ms",
    ] {
        let err = resolve_file(&format!("{key} = 0")).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn admission_is_off_by_default_and_validated() {
    let c = Config::resolve(&args(), &FileConfig::default(), None).unwrap();
    assert_eq!((c.max_inflight_requests, c.max_inflight_tokens), (0, 0));
    assert_eq!(c.max_queue, defaults::MAX_QUEUE);
    assert_eq!(
        c.queue_timeout,
        std::time::Duration::from_millis(defaults::QUEUE_TIMEOUT_MS)
    );
    let c = resolve_file(
        "max_inflight_requests = 4\nmax_inflight_tokens = 9000\nmax_queue = 0\n\
         queue_timeout_ms = 1\nadmission_default_max_tokens = 64",
    )
    .unwrap();
    assert_eq!((c.max_inflight_requests, c.max_inflight_tokens), (4, 9000));
    assert_eq!((c.max_queue, c.admission_default_max_tokens), (0, 64));
    assert_eq!(c.queue_timeout, std::time::Duration::from_millis(1));
    let again = resolve_file(&c.to_toml()).unwrap();
    assert_eq!(again.to_toml(), c.to_toml());
    // One failing case per rule, each naming the key, the value and the file.
    for (text, key, value) in [
        ("queue_timeout_ms = 0", "queue_timeout_ms", "0"),
        ("queue_timeout_ms = 3600001", "queue_timeout_ms", "3600001"),
        ("max_queue = 1000001", "max_queue", "1000001"),
    ] {
        let err = resolve_file(text).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(value) && err.contains("test.toml"),
            "{err}"
        );
    }
    assert!(resolve_file("max_inflight_requests = -1").is_err());
}

#[test]
fn body_bounds() {
    // The hard cap is off by default and with 0 (vLLM has none).
    assert_eq!(
        resolve_file("max_body_bytes = 0").unwrap().max_body_bytes,
        None
    );
    assert_eq!(
        resolve_file("max_body_bytes = 1024")
            .unwrap()
            .max_body_bytes,
        Some(1024)
    );
    let err = resolve_file("max_inspect_bytes = 100\nmax_inspect_total_bytes = 99")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_inspect_total_bytes") && err.contains("99"),
        "{err}"
    );
    let err = resolve_file("max_inspect_bytes = 4294967296\nmax_inspect_total_bytes = 8589934592")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_inspect_bytes") && err.contains("4294967296"),
        "{err}"
    );
    let c = resolve_file("max_inspect_bytes = 1\nmax_inspect_total_bytes = 1").unwrap();
    assert_eq!((c.max_inspect_bytes, c.max_inspect_total_bytes), (1, 1));
}

#[test]
fn wrong_type_is_rejected() {
    assert!(resolve_file("max_body_bytes = \"big\"").is_err());
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let err = FileConfig::load(Path::new("/nonexistent/joulegate.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/joulegate.toml"), "{err}");
}

#[test]
fn meter_period_is_optional_and_bounded() {
    assert_eq!(resolve_file("").expect("empty").meter_period_ms, None);
    let c =
        resolve_file("meter_period_ms = 100\nmeters = [\"sim:1,period_ms=20\"]").expect("valid");
    assert_eq!(c.meter_period_ms, Some(100));
    assert_eq!(c.meters[0].period_ms, Some(20));
    assert!(c.to_toml().contains("meter_period_ms = 100"));
    for bad in ["0", "60001"] {
        let err = resolve_file(&format!("meter_period_ms = {bad}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("meter_period_ms") && err.contains("test.toml"),
            "{err}"
        );
    }
    let mut a = args();
    a.meter_period_ms = Some(0);
    let err = Config::resolve(&a, &FileConfig::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("meter-period-ms") || err.contains("meter_period_ms"),
        "{err}"
    );
}

#[test]
fn response_energy_defaults_and_layers() {
    let c = Config::resolve(&args(), &FileConfig::default(), None).unwrap();
    assert_eq!(c.response_energy, ResponseEnergy::Provisional);
    assert_eq!(
        c.response_energy_max_wait,
        std::time::Duration::from_millis(defaults::RESPONSE_ENERGY_MAX_WAIT_MS)
    );
    let c =
        resolve_file("response_energy = \"settled\"\nresponse_energy_max_wait_ms = 250").unwrap();
    assert_eq!(c.response_energy, ResponseEnergy::Settled);
    assert_eq!(c.response_energy_max_wait.as_millis(), 250);
    // The flag (or its environment variable) beats the file.
    let path = PathBuf::from("f.toml");
    let file = FileConfig::parse("response_energy = \"settled\"", &path).unwrap();
    let mut a = args();
    a.response_energy = Some("provisional".into());
    a.response_energy_max_wait_ms = Some(7);
    let c = Config::resolve(&a, &file, Some(&path)).unwrap();
    assert_eq!(c.response_energy, ResponseEnergy::Provisional);
    assert_eq!(c.response_energy_max_wait.as_millis(), 7);
}

#[test]
fn response_energy_is_validated() {
    match resolve_file("response_energy = \"exact\"").unwrap_err() {
        ConfigError::Invalid {
            key,
            value,
            origin,
            reason,
        } => {
            assert_eq!(key, "response_energy");
            assert_eq!(value, "exact");
            assert_eq!(origin, Origin::File(PathBuf::from("test.toml")));
            assert!(reason.contains("provisional or settled"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
    for bad in [0, defaults::RESPONSE_ENERGY_MAX_WAIT_MS_LIMIT + 1] {
        let mut a = args();
        a.response_energy_max_wait_ms = Some(bad);
        let err = Config::resolve(&a, &FileConfig::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("response_energy_max_wait_ms")
                && err.contains(&bad.to_string())
                && err.contains("--response-energy-max-wait-ms")
                && err.contains("JOULEGATE_RESPONSE_ENERGY_MAX_WAIT_MS"),
            "{err}"
        );
    }
}

#[test]
fn log_format_layers_and_is_validated() {
    let c = Config::resolve(&args(), &FileConfig::default(), None).unwrap();
    assert_eq!(c.log_format, crate::logging::LogFormat::Text);
    let c = resolve_file("log_format = \"json\"").unwrap();
    assert_eq!(c.log_format, crate::logging::LogFormat::Json);
    // The global flag (copied into ServeArgs by the binary) beats the file.
    let path = PathBuf::from("f.toml");
    let file = FileConfig::parse("log_format = \"json\"", &path).unwrap();
    let mut a = args();
    a.log_format = Some("text".into());
    let c = Config::resolve(&a, &file, Some(&path)).unwrap();
    assert_eq!(c.log_format, crate::logging::LogFormat::Text);
    match resolve_file("log_format = \"logfmt\"").unwrap_err() {
        ConfigError::Invalid {
            key,
            value,
            origin,
            reason,
        } => {
            assert_eq!(key, "log_format");
            assert_eq!(value, "logfmt");
            assert_eq!(origin, Origin::File(PathBuf::from("test.toml")));
            assert!(reason.contains("text or json"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn otel_keys_need_the_feature() {
    assert!(resolve_file("").expect("defaults").otel.is_none());
    if cfg!(feature = "otel") {
        return;
    }
    // Without the exporter every `otel_*` key is refused, naming the key and the feature.
    for (text, key) in [
        ("otel_endpoint = \"http://127.0.0.1:4318\"", "otel_endpoint"),
        ("otel_interval_ms = 100", "otel_interval_ms"),
        ("otel_queue = 5", "otel_queue"),
        ("otel_headers = \"api-key=s3cret\"", "otel_headers"),
    ] {
        let err = resolve_file(text).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains("built without the `otel` feature"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
    let mut a = args();
    a.otel_endpoint = Some("http://127.0.0.1:4318".into());
    let err = Config::resolve(&a, &FileConfig::default(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--otel-endpoint"), "{err}");
}

#[cfg(feature = "otel")]
#[test]
fn otel_keys_resolve_and_are_validated() {
    let c = resolve_file("otel_endpoint = \"http://collector:4318/otlp/\"").expect("valid");
    let o = c.otel.as_ref().expect("configured");
    assert_eq!(o.endpoint.base(), "http://collector:4318/otlp");
    assert_eq!(
        o.interval,
        Duration::from_millis(defaults::OTEL_INTERVAL_MS)
    );
    assert_eq!(o.queue as u64, defaults::OTEL_QUEUE);
    assert!(o.headers.is_empty());
    let c = resolve_file(
        "otel_endpoint = \"http://collector:4318\"\notel_headers = \"api-key=s3cret\"\notel_queue = 7",
    )
    .expect("valid");
    let printed = c.to_toml();
    assert!(
        !printed.contains("s3cret") && printed.contains("otel_headers = \"api-key=<redacted>\""),
        "{printed}"
    );
    assert_eq!(
        resolve_file(&printed).expect("round trips").to_toml(),
        printed
    );
    const EP: &str = "otel_endpoint = \"http://collector:4318\"\n";
    for (text, key) in [
        (
            "otel_endpoint = \"https://collector:4318\"".to_owned(),
            "otel_endpoint",
        ),
        (
            "otel_endpoint = \"collector:4318\"".to_owned(),
            "otel_endpoint",
        ),
        (format!("{EP}otel_interval_ms = 0"), "otel_interval_ms"),
        (
            format!("{EP}otel_interval_ms = 3600001"),
            "otel_interval_ms",
        ),
        (format!("{EP}otel_queue = 0"), "otel_queue"),
        (format!("{EP}otel_queue = 1000001"), "otel_queue"),
        (format!("{EP}otel_headers = \"s3cret\""), "otel_headers"),
        // Without an endpoint the other keys would do nothing: refused rather than ignored.
        ("otel_queue = 5".to_owned(), "otel_queue"),
    ] {
        let err = resolve_file(&text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
