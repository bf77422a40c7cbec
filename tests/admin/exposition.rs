//! Reading the `/metrics` exposition in tests: a minimal Rust reader of sample lines, and Python's
//! `prometheus_client` parsers (Prometheus text and strict OpenMetrics) run as a subprocess.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One sample: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// A minimal reader of the exposition's sample lines (the Rust-side check).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("numeric value"),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'));
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => val.push('\n'),
                                Some(o) => val.push(o),
                                None => break,
                            },
                            '"' => break,
                            o => val.push(o),
                        }
                    }
                    labels.insert(key.trim_start_matches(',').to_owned(), val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_owned(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

/// Runs Python's Prometheus and OpenMetrics parsers over `text`; `None` (with a printed reason)
/// when no Python with `prometheus_client` is available.
pub fn python_parse(text: &str) -> Option<[Vec<Sample>; 2]> {
    const SCRIPT: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
text = sys.stdin.read()
out = []
for parse in (prom, om):
    out.append([[s.name, s.labels, s.value] for f in parse(text) for s in f.samples])
print(json.dumps(out))
"#;
    let stdout = run_python_parser(SCRIPT, text, "/metrics")?;
    type Raw = Vec<(String, BTreeMap<String, String>, Value)>;
    let v: [Raw; 2] = serde_json::from_slice(&stdout).expect("parser output");
    Some(v.map(|samples| {
        samples
            .into_iter()
            .map(|(n, l, v)| (n, l, v.as_f64().unwrap_or(f64::NAN)))
            .collect()
    }))
}

/// Runs `script` (Python with `prometheus_client`) with `text` on its stdin and returns its
/// stdout; asserts it succeeded (a parser rejected `what` otherwise). `None`, said once per test
/// binary on stderr, when no `.venv/bin/python` or `python3` with `prometheus_client` exists.
pub fn run_python_parser(script: &str, text: &str, what: &str) -> Option<Vec<u8>> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let pythons = [venv.to_string_lossy().into_owned(), "python3".to_owned()];
    let python = pythons.iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        // Straight to the stderr handle, not `eprintln!`: the test harness captures the macros,
        // and a skipped check must be visible in a passing run. Once per test binary.
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the real-parser check of {what}: no .venv/bin/python or python3 with \
                 prometheus_client (.ci/run installs it); the Rust-side checks still run"
            );
        });
        return None;
    };
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "a real parser rejected {what}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

/// Sum of the samples named `name` whose labels include every `(k, v)` of `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && filter
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .sum()
}

/// Equal up to float rounding (joules are summed in different orders).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}
