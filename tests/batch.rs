//! `joulegate batch` against the mock upstream: an in-process joulegate (`--upstream`, `--meter`)
//! and a running one (`--proxy`), OpenAI's output shape with an `energy` object per line, resume
//! (custom_ids already in the output are skipped), and the summary. No timing decides anything.

mod common;

use joulegate::batch::{read_output, run, BatchArgs};
use joulegate::sim::{MockHandle, MockUpstream};
use tokio::net::TcpListener;

async fn mock() -> MockHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    MockUpstream::builder()
        .spawn(listener)
        .expect("mock starts")
}

fn args(input: &std::path::Path, output: &std::path::Path) -> BatchArgs {
    BatchArgs {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        proxy: None,
        upstream: None,
        meters: Vec::new(),
        max_concurrency: 2,
        tag: Some("job-1".into()),
    }
}

const EXAMPLE: &str = include_str!("../examples/batch.jsonl");

#[tokio::test]
async fn an_in_process_batch_writes_every_line_with_energy_and_resumes() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    // The first two requests only: the rest are added for the resumed run.
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    std::fs::write(&input, lines[..2].join("\n")).unwrap();
    let mut a = args(&input, &output);
    a.upstream = Some(mock.url());
    a.meters = vec!["sim:100".into()];
    let s = common::guard("the batch", run(&a))
        .await
        .expect("batch runs");
    assert_eq!(
        (s.lines, s.sent, s.skipped, s.succeeded, s.failed),
        (2, 2, 0, 2, 0)
    );
    let out = read_output(&output).unwrap();
    assert_eq!(out.len(), 2);
    for line in &out {
        assert!(line.id.starts_with("batch_req_"));
        assert!(line.error.is_none());
        let r = line.response.as_ref().expect("response");
        assert_eq!(r.status_code, 200);
        assert_eq!(r.body["object"], "chat.completion");
        assert!(r.request_id.is_some());
        let e = line.energy.as_ref().expect("energy headers");
        assert!(e
            .request_id
            .as_deref()
            .is_some_and(|id| id.starts_with("jg-")));
        assert!(e.joules.is_some());
        assert!(e.completion_tokens.is_some_and(|t| t > 0));
    }
    // Resume with the whole file: only the two new custom_ids are sent.
    std::fs::write(&input, EXAMPLE).unwrap();
    let s = common::guard("the resumed batch", run(&a))
        .await
        .expect("batch runs");
    assert_eq!((s.lines, s.sent, s.skipped, s.succeeded), (4, 2, 2, 4));
    let out = read_output(&output).unwrap();
    let mut ids: Vec<&str> = out.iter().map(|l| l.custom_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["req-1", "req-2", "req-3", "req-4"]);
    let mut line_ids: Vec<&str> = out.iter().map(|l| l.id.as_str()).collect();
    line_ids.sort_unstable();
    line_ids.dedup();
    assert_eq!(line_ids.len(), 4, "output ids are unique across runs");
    // Nothing left: a third run sends nothing.
    let s = run(&a).await.expect("batch runs");
    assert_eq!((s.sent, s.skipped, s.lines), (0, 4, 4));
}

#[tokio::test]
async fn a_batch_through_a_running_proxy_and_a_bad_input_line() {
    let mock = mock().await;
    let proxy = common::TestProxy::start(mock.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    std::fs::write(&input, EXAMPLE).unwrap();
    let mut a = args(&input, &output);
    a.proxy = Some(format!("http://{}/", proxy.addr));
    let s = common::guard("the batch", run(&a))
        .await
        .expect("batch runs");
    assert_eq!((s.lines, s.succeeded), (4, 4));
    // Energy per line sums to the job's: the summary adds the lines' headers.
    let out = read_output(&output).unwrap();
    let tokens: u64 = out
        .iter()
        .filter_map(|l| l.energy.as_ref())
        .map(|e| e.prompt_tokens.unwrap_or(0) + e.completion_tokens.unwrap_or(0))
        .sum();
    assert_eq!(tokens, s.prompt_tokens + s.completion_tokens);
    // A malformed line stops the job before anything is sent, naming the line.
    std::fs::write(&input, "{\"custom_id\":\"x\"}\n").unwrap();
    let err = run(&a).await.expect_err("bad line").to_string();
    assert!(err.contains("line 1"), "{err}");
}
