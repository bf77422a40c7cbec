//! The flags of `joulegate replay` as data: a valid set for each input and target, and one failing
//! case per validation rule.

use super::*;

fn synthetic() -> ReplayArgs {
    ReplayArgs {
        rate: Some(10.0),
        duration: Some(2.0),
        prompt_tokens: "fixed:32".into(),
        output_tokens: "uniform:2-4".into(),
        seed: 1,
        mock: true,
        speed: 1.0,
        max_inflight: 8,
        endpoint: "chat".into(),
        tag: "replay".into(),
        chars_per_token: 3.0,
        settle_timeout: 5.0,
        ..ReplayArgs::default()
    }
}

#[test]
fn default_args_match_the_command_lines_defaults() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        replay: ReplayArgs,
    }
    let mut parsed = Cli::try_parse_from(["replay"]).expect("parses").replay;
    // The only flag with an environment variable; the host's value is not a default.
    parsed.admin_token = None;
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", ReplayArgs::default())
    );
}

#[test]
fn synthetic_mock_is_valid_and_forces_the_mock_model() {
    let mut a = synthetic();
    a.model = Some("llama".into());
    let o = ReplayOptions::from_args(&a).expect("valid");
    assert_eq!(o.target, Target::Mock);
    assert_eq!((o.model.as_str(), o.force_model), ("tiny", true));
    assert!(!o.plan.is_empty());
    assert!(o
        .plan
        .iter()
        .all(|i| i.tag.as_deref() == Some("replay") && i.stream));
}

#[test]
fn remote_target_keeps_the_model_and_parses_urls() {
    let mut a = synthetic();
    a.mock = false;
    a.target = Some("http://127.0.0.1:9000".into());
    a.admin = Some("http://127.0.0.1:9101/".into());
    a.model = Some("llama".into());
    a.no_stream = true;
    a.endpoint = "completions".into();
    let o = ReplayOptions::from_args(&a).expect("valid");
    assert!(matches!(o.target, Target::Remote { admin: Some(_), .. }));
    assert_eq!((o.model.as_str(), o.force_model), ("llama", false));
    assert!(o
        .plan
        .iter()
        .all(|i| !i.stream && i.api == Api::Completions));
}

#[test]
fn each_rule_has_a_failing_case_naming_its_flag() {
    type Tweak = fn(&mut ReplayArgs);
    let cases: [(&str, Tweak); 12] = [
        ("--log", |a| a.rate = None),
        ("--target", |a| a.mock = false),
        ("--rate", |a| a.rate = Some(0.0)),
        ("--duration", |a| a.duration = Some(-1.0)),
        ("fixed:0", |a| a.prompt_tokens = "fixed:0".into()),
        ("lognormal", |a| a.output_tokens = "lognormal:x".into()),
        ("--speed", |a| a.speed = 0.0),
        ("--max-inflight", |a| a.max_inflight = 0),
        ("--endpoint", |a| a.endpoint = "embeddings".into()),
        ("--warmup", |a| a.warmup = f64::NAN),
        ("--chars-per-token", |a| a.chars_per_token = 0.0),
        ("--target", |a| {
            a.mock = false;
            a.target = Some("ftp://x".into());
        }),
    ];
    for (says, tweak) in cases {
        let mut a = synthetic();
        tweak(&mut a);
        let e = ReplayOptions::from_args(&a).expect_err(says).to_string();
        assert!(e.contains(says), "{says}: {e}");
    }
    let mut a = synthetic();
    a.mock = false;
    a.upstream = Some("http://127.0.0.1:8000".into());
    let e = ReplayOptions::from_args(&a)
        .expect_err("no meter")
        .to_string();
    assert!(e.contains("--meter"), "{e}");
}

#[test]
fn a_bad_log_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("requests.jsonl");
    std::fs::write(&path, "{}\n").expect("write");
    let mut a = synthetic();
    a.rate = None;
    a.log = Some(path.clone());
    let e = ReplayOptions::from_args(&a)
        .expect_err("bad log")
        .to_string();
    assert!(
        e.starts_with(&format!("{}: line 1: ", path.display())),
        "{e}"
    );
    a.log = Some(dir.path().join("absent.jsonl"));
    let e = ReplayOptions::from_args(&a)
        .expect_err("no file")
        .to_string();
    assert!(e.contains("cannot open"), "{e}");
}
