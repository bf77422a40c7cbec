//! The report of `joulegate replay`: per tag and overall, requests, tokens, joules, J/token,
//! tokens/J, J/request, mean power, throughput, client-side TTFT and ITL percentiles, CO2 when the
//! proxy has a carbon intensity, and against the simulated engine (`--mock`) the error of the
//! proxy's attribution; rendered as text, JSON, and one CSV row per request.
//!
//! Pure: outcomes in, figures out; no clock, no I/O (the caller writes the files).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::drive::Outcome;
use crate::demo::ErrorStats;

/// Percentiles of a latency, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `seconds`.
    pub fn of(mut seconds: Vec<f64>) -> Percentiles {
        seconds.retain(|x| x.is_finite());
        if seconds.is_empty() {
            return Percentiles::default();
        }
        seconds.sort_by(f64::total_cmp);
        let n = seconds.len();
        let rank = |q: f64| seconds[((q * n as f64).ceil() as usize).clamp(1, n) - 1] * 1000.0;
        Percentiles {
            count: n,
            p50_ms: rank(0.5),
            p90_ms: rank(0.9),
            p99_ms: rank(0.99),
            max_ms: seconds[n - 1] * 1000.0,
        }
    }
}

/// Figures of a group of requests (one tag, or all).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Group {
    /// Requests sent after the warm-up.
    pub requests: usize,
    /// Of them, failed (non-2xx or broken).
    pub failed: usize,
    /// Of them, without any energy figure.
    pub without_energy: usize,
    /// Prompt tokens (server counts).
    pub prompt_tokens: u64,
    /// Completion tokens (server counts).
    pub completion_tokens: u64,
    /// Attributed energy, J.
    pub joules: f64,
    /// Active energy, J.
    pub active_joules: f64,
    /// J per token (prompt + completion).
    pub joules_per_token: Option<f64>,
    /// Tokens per J.
    pub tokens_per_joule: Option<f64>,
    /// J per request with a figure.
    pub joules_per_request: Option<f64>,
    /// Attributed energy over the report's window, W (idle energy belongs to nobody, so this is
    /// below the device's mean power).
    pub mean_power_w: Option<f64>,
    /// Completion tokens per second of the window.
    pub output_tokens_per_s: Option<f64>,
    /// Requests per second of the window.
    pub requests_per_s: Option<f64>,
    /// CO2, g, when the responses carried it.
    pub co2_grams: Option<f64>,
    /// Time to first token (streams), client side.
    pub ttft: Percentiles,
    /// Inter-token latency (streams), client side.
    pub itl: Percentiles,
    /// Latency to the end of the response, client side.
    pub latency: Percentiles,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

impl Group {
    /// The figures of `outcomes` over a window of `window`.
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>, window: Duration) -> Group {
        let mut g = Group::default();
        let (mut ttft, mut itl, mut latency) = (Vec::new(), Vec::new(), Vec::new());
        let mut with_energy = 0usize;
        let mut co2: Option<f64> = None;
        for o in outcomes {
            g.requests += 1;
            if !o.ok() {
                g.failed += 1;
            }
            let e = o.energy();
            g.prompt_tokens += e.prompt_tokens.unwrap_or(0);
            g.completion_tokens += e.completion_tokens.unwrap_or(0);
            match e.joules {
                Some(j) => {
                    with_energy += 1;
                    g.joules += j;
                    g.active_joules += e.active_joules.unwrap_or(0.0);
                }
                None => g.without_energy += 1,
            }
            if let Some(c) = e.co2_grams {
                co2 = Some(co2.unwrap_or(0.0) + c);
            }
            if o.ok() {
                ttft.extend(o.ttft.map(|t| t.as_secs_f64()));
                itl.extend(o.itl_s.iter().map(|x| f64::from(*x)));
                latency.push(o.latency.as_secs_f64());
            }
        }
        let tokens = (g.prompt_tokens + g.completion_tokens) as f64;
        let secs = window.as_secs_f64();
        g.joules_per_token = ratio(g.joules, tokens);
        g.tokens_per_joule = ratio(tokens, g.joules);
        g.joules_per_request = ratio(g.joules, with_energy as f64);
        g.mean_power_w = ratio(g.joules, secs);
        g.output_tokens_per_s = ratio(g.completion_tokens as f64, secs);
        g.requests_per_s = ratio(g.requests as f64, secs);
        g.co2_grams = co2;
        g.ttft = Percentiles::of(ttft);
        g.itl = Percentiles::of(itl);
        g.latency = Percentiles::of(latency);
        g
    }
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Where the load went.
    pub target: String,
    /// Requests in the plan.
    pub planned: usize,
    /// Records of APIs replay does not drive, left out of the plan.
    pub skipped: usize,
    /// Requests sent during the warm-up, left out of the figures.
    pub warmup_requests: usize,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Requests whose settled record could not be read in time (response figures used).
    pub unsettled: usize,
    /// Window the figures cover (after the warm-up).
    pub window: Duration,
    /// All requests after the warm-up.
    pub overall: Group,
    /// Per `x-energy-tag` (`-` for none).
    pub tags: BTreeMap<String, Group>,
    /// `--mock`: error of the proxy's attribution against the engine's truth.
    pub truth_errors: Option<ErrorStats>,
    /// `--mock`: signed per-request errors by plan index.
    pub truth_by_index: BTreeMap<usize, f64>,
    /// The outcomes after the warm-up, in plan order (the CSV rows).
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Builds the report from every outcome, leaving out those sent before `warmup`; the window
    /// runs from the warm-up's end to the last response's end.
    pub fn build(
        target: String,
        planned: usize,
        outcomes: Vec<Outcome>,
        warmup: Duration,
    ) -> Report {
        let (warm, kept): (Vec<Outcome>, Vec<Outcome>) =
            outcomes.into_iter().partition(|o| o.sent_at < warmup);
        let begin = kept
            .iter()
            .map(|o| o.sent_at)
            .min()
            .unwrap_or_default()
            .max(warmup);
        let end = kept
            .iter()
            .map(|o| o.sent_at + o.latency)
            .max()
            .unwrap_or(begin);
        let window = end.saturating_sub(begin);
        let mut by_tag: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
        for o in &kept {
            by_tag
                .entry(o.tag.clone().unwrap_or_else(|| "-".into()))
                .or_default()
                .push(o);
        }
        let tags = by_tag
            .into_iter()
            .map(|(t, os)| (t, Group::of(os, window)))
            .collect();
        Report {
            target,
            planned,
            warmup_requests: warm.len(),
            window,
            overall: Group::of(&kept, window),
            tags,
            outcomes: kept,
            ..Report::default()
        }
    }

    /// The report as JSON (figures, no per-request rows).
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "planned": self.planned,
            "skipped": self.skipped,
            "warmup_requests": self.warmup_requests,
            "interrupted": self.interrupted,
            "unsettled": self.unsettled,
            "window_s": self.window.as_secs_f64(),
            "overall": self.overall,
            "tags": self.tags,
            "truth_errors": self.truth_errors.map(|e| json!({
                "count": e.count, "median": e.median, "p95": e.p95, "max": e.max,
            })),
        })
    }

    /// One CSV row per request (header first).
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "index,tag,stream,sent_at_s,http_status,request_id,prompt_tokens,completion_tokens,joules,active_joules,status,settled,ttft_ms,latency_ms,truth_error\n",
        );
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
        for o in &self.outcomes {
            let e = o.energy();
            let _ = writeln!(
                s,
                "{},{},{},{:.6},{},{},{},{},{},{},{},{},{},{:.3},{}",
                o.index,
                csv_field(o.tag.as_deref().unwrap_or("")),
                o.stream,
                o.sent_at.as_secs_f64(),
                o.http_status,
                o.request_id.as_deref().unwrap_or(""),
                e.prompt_tokens.map_or(String::new(), |x| x.to_string()),
                e.completion_tokens.map_or(String::new(), |x| x.to_string()),
                opt(e.joules),
                opt(e.active_joules),
                csv_field(e.status.as_deref().unwrap_or("")),
                o.settled.is_some(),
                o.ttft.map_or(String::new(), |t| format!(
                    "{:.3}",
                    t.as_secs_f64() * 1000.0
                )),
                o.latency.as_secs_f64() * 1000.0,
                opt(self.truth_by_index.get(&o.index).copied()),
            );
        }
        s
    }

    /// The text table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "joulegate replay -> {}: {} planned, {} in the report over {:.2} s ({} warm-up{}{}{})",
            self.target,
            self.planned,
            self.overall.requests,
            self.window.as_secs_f64(),
            self.warmup_requests,
            if self.skipped > 0 {
                format!(", {} skipped records", self.skipped)
            } else {
                String::new()
            },
            if self.unsettled > 0 {
                format!(", {} without a settled record", self.unsettled)
            } else {
                String::new()
            },
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            },
        );
        let _ = writeln!(
            s,
            "{:<16} {:>6} {:>5} {:>9} {:>9} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "tag",
            "reqs",
            "fail",
            "prompt",
            "compl",
            "J",
            "J/tok",
            "tok/J",
            "J/req",
            "W",
            "tok/s",
            "TTFTp50",
            "ITLp50"
        );
        let row = |s: &mut String, name: &str, g: &Group| {
            let f = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
            let _ = writeln!(
                s,
                "{:<16} {:>6} {:>5} {:>9} {:>9} {:>11.3} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8.1} {:>8.1}",
                truncate(name, 16),
                g.requests,
                g.failed,
                g.prompt_tokens,
                g.completion_tokens,
                g.joules,
                f(g.joules_per_token, 4),
                f(g.tokens_per_joule, 2),
                f(g.joules_per_request, 3),
                f(g.mean_power_w, 1),
                f(g.output_tokens_per_s, 1),
                g.ttft.p50_ms,
                g.itl.p50_ms,
            );
        };
        for (t, g) in &self.tags {
            row(&mut s, t, g);
        }
        row(&mut s, "all", &self.overall);
        let o = &self.overall;
        let _ = writeln!(
            s,
            "TTFT ms p50/p90/p99 {:.1}/{:.1}/{:.1}  ITL ms p50/p90/p99 {:.1}/{:.1}/{:.1}  latency ms p50/p99 {:.1}/{:.1}",
            o.ttft.p50_ms, o.ttft.p90_ms, o.ttft.p99_ms, o.itl.p50_ms, o.itl.p90_ms, o.itl.p99_ms,
            o.latency.p50_ms, o.latency.p99_ms
        );
        if let Some(c) = o.co2_grams {
            let _ = writeln!(s, "CO2 {c:.4} g");
        }
        if o.without_energy > 0 {
            let _ = writeln!(s, "{} requests carried no energy figure", o.without_energy);
        }
        if let Some(e) = self.truth_errors {
            let _ = writeln!(
                s,
                "attribution error against the engine's truth ({} requests): median {:.2} %, p95 {:.2} %, max {:.2} %",
                e.count,
                e.median * 100.0,
                e.p95 * 100.0,
                e.max * 100.0
            );
        }
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::drive::Energy;

    fn outcome(index: usize, tag: Option<&str>, at_ms: u64, joules: Option<f64>) -> Outcome {
        Outcome {
            index,
            tag: tag.map(str::to_string),
            stream: true,
            sent_at: Duration::from_millis(at_ms),
            http_status: 200,
            latency: Duration::from_millis(1000),
            ttft: Some(Duration::from_millis(100)),
            itl_s: vec![0.02, 0.04],
            response: Energy {
                joules,
                prompt_tokens: Some(10),
                completion_tokens: Some(5),
                ..Energy::default()
            },
            ..Outcome::default()
        }
    }

    #[test]
    fn groups_sum_and_warmup_is_left_out() {
        let outs = vec![
            outcome(0, Some("a"), 0, Some(100.0)),
            outcome(1, Some("a"), 1000, Some(3.0)),
            outcome(2, Some("b,c"), 1000, Some(1.5)),
            outcome(3, None, 2000, None),
        ];
        let r = Report::build("t".into(), 4, outs, Duration::from_millis(500));
        assert_eq!(r.warmup_requests, 1);
        assert_eq!(r.window, Duration::from_millis(2000));
        assert_eq!(r.overall.requests, 3);
        assert_eq!(r.overall.without_energy, 1);
        assert!((r.overall.joules - 4.5).abs() < 1e-12);
        assert_eq!(r.overall.prompt_tokens + r.overall.completion_tokens, 45);
        assert_eq!(r.overall.joules_per_token, Some(0.1));
        assert_eq!(r.overall.joules_per_request, Some(2.25));
        assert_eq!(r.overall.mean_power_w, Some(2.25));
        assert_eq!(r.overall.ttft.p50_ms, 100.0);
        assert_eq!(r.overall.itl.count, 6);
        assert_eq!(r.tags.keys().collect::<Vec<_>>(), ["-", "a", "b,c"]);
        assert_eq!(r.tags["a"].requests, 1);
        let csv = r.to_csv();
        assert_eq!(csv.lines().count(), 4);
        assert!(csv
            .lines()
            .nth(2)
            .expect("row")
            .starts_with("2,\"b,c\",true,"));
        let v = r.to_json();
        assert_eq!(v["overall"]["requests"], 3);
        assert_eq!(v["tags"]["a"]["joules"], 3.0);
        assert!(r.render().contains("all"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|x| f64::from(x) / 1000.0).collect());
        assert_eq!(
            (p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }
}
