//! The sampler against real GPUs' energy counters: 28 s of an H200's and of an H100's NVML
//! counter (read every ~8-9 ms under the same known load, `tests/fixtures/nvml_h200_energy_counter.csv`
//! and `nvml_h100_energy_counter.csv`) replayed at the sampler's reads, in virtual time. The ticks must carry the counter's energy exactly and follow
//! its timeline (constant power between two reads at which it changed) closely: with the counter
//! read at every sample, and with it read once a second and shaped by instantaneous power
//! (`nvml:...,counter_ms=1000`).

use std::time::Duration;

use joulegate::meter::{DeviceInfo, Meter, MeterSet, Method, ReadError, Reading};
use joulegate::sampler::{SamplerCore, TimeSource, Wake};
use joulegate::tick::{Tick, TickPhase};

const MS: u64 = 1_000_000;

/// The cards whose counters were recorded.
#[derive(Clone, Copy, Debug)]
enum Card {
    H200,
    H100,
}

const CARDS: [Card; 2] = [Card::H200, Card::H100];

/// (time ns, counter mJ, instantaneous power mW) per read of the card's trace.
fn trace(card: Card) -> Vec<(u64, u64, u64)> {
    let text = match card {
        Card::H200 => include_str!("fixtures/nvml_h200_energy_counter.csv"),
        Card::H100 => include_str!("fixtures/nvml_h100_energy_counter.csv"),
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("t_us"))
        .map(|l| {
            let f: Vec<u64> = l.split(',').map(|x| x.parse().expect("number")).collect();
            (f[0] * 1_000, f[1], f[2])
        })
        .collect()
}

/// Replays the trace: the counter as it stood at the read's time, read every time or (with
/// `counter_every_ns`) at most that often, the power then given at every read.
struct TraceMeter {
    infos: Vec<DeviceInfo>,
    rows: Vec<(u64, u64, u64)>,
    counter_every_ns: Option<u64>,
    last_counter: Option<(u64, u64)>,
}

impl TraceMeter {
    fn at(&self, t: u64) -> (u64, u64) {
        let i = self.rows.partition_point(|r| r.0 <= t).saturating_sub(1);
        (self.rows[i].1 * 1_000, self.rows[i].2)
    }
}

impl Meter for TraceMeter {
    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn read(&mut self, _: usize, now_ns: u64) -> Result<Reading, ReadError> {
        let (counter_uj, power_mw) = self.at(now_ns);
        let Some(every) = self.counter_every_ns else {
            return Ok(Reading {
                energy_uj: counter_uj,
                at_ns: now_ns,
                ended: false,
                power_mw: None,
            });
        };
        if self
            .last_counter
            .map_or(true, |(at, _)| now_ns - at >= every)
        {
            self.last_counter = Some((now_ns, counter_uj));
        }
        Ok(Reading {
            energy_uj: self.last_counter.map_or(0, |c| c.1),
            at_ns: now_ns,
            ended: false,
            power_mw: Some(power_mw),
        })
    }
}

/// The ticks of a 50 ms sampler over the trace, its reads 7 ms out of phase with the trace's start.
fn ticks(card: Card, counter_every_ns: Option<u64>) -> Vec<Tick> {
    ticks_with(card, counter_every_ns, None, Start::At(7 * MS))
}

/// Where the sampler's reads start.
#[derive(Clone, Copy)]
enum Start {
    /// At this time.
    At(u64),
    /// As `serve` starts them: a burst of reads from this time finds the counter's update phase,
    /// then the reads start half an interval after its updates.
    Aligned(u64),
}

/// Virtual time for the start-up burst: sleeping jumps to the deadline.
struct Virtual(u64);

impl TimeSource for Virtual {
    fn now_ns(&mut self) -> u64 {
        self.0
    }
    fn sleep_until(&mut self, deadline_ns: u64, _: &std::sync::mpsc::Receiver<()>) -> Wake {
        self.0 = self.0.max(deadline_ns);
        Wake::Deadline
    }
}

/// [`ticks`] with every meter's update period set to `meter_period` (1 ns: increments are sent
/// as measured, never spread), the reads starting as `start` says.
fn ticks_with(
    card: Card,
    counter_every_ns: Option<u64>,
    meter_period: Option<Duration>,
    start: Start,
) -> Vec<Tick> {
    let rows = trace(card);
    let end = rows.last().expect("rows").0;
    let mut info = DeviceInfo::new("nvml:0", format!("{card:?}"), Method::NvmlEnergyCounter);
    // As `NvmlMeter` declares a sparse counter: it moves once per read of it.
    info.period_ns = counter_every_ns;
    let meter = TraceMeter {
        infos: vec![info],
        rows,
        counter_every_ns,
        last_counter: None,
    };
    let set = MeterSet {
        meters: vec![Box::new(meter)],
        unavailable: vec![],
    };
    let mut core = SamplerCore::with_period(set, Duration::from_millis(50), meter_period);
    let mut t = match start {
        Start::At(t) => t,
        Start::Aligned(from) => {
            let (_stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
            core.align_start(&mut Virtual(from), &stop_rx)
                .expect("not stopped")
                .expect("the counter's phase found")
        }
    };
    let mut out = Vec::new();
    while t <= end {
        out.extend(
            core.round(t)
                .into_iter()
                .filter(|t| t.phase != TickPhase::Announce),
        );
        t += 50 * MS;
    }
    out.extend(core.flush());
    out
}

/// The counter's own timeline: the reads at which it changed, `(time ns, counter mJ)`.
fn change_points(card: Card) -> Vec<(u64, u64)> {
    let rows = trace(card);
    let mut points = vec![(rows[0].0, rows[0].1)];
    for w in rows.windows(2) {
        if w[1].1 != w[0].1 {
            points.push((w[1].0, w[1].1));
        }
    }
    points
}

/// Cumulative µJ at `t` on the counter's timeline, linear between its change points.
fn truth_uj(points: &[(u64, u64)], t: u64) -> f64 {
    let i = points.partition_point(|p| p.0 <= t);
    let mj = if i == 0 {
        points[0].1 as f64
    } else if i == points.len() {
        points[i - 1].1 as f64
    } else {
        let ((a, ea), (b, eb)) = (points[i - 1], points[i]);
        ea as f64 + (eb - ea) as f64 * (t - a) as f64 / (b - a) as f64
    };
    mj * 1_000.0
}

/// The 95th percentile of the relative error of the ticks' energy over `width_ns` windows (50 ms:
/// each tick),
/// between 2 s after the start and 2 s before the end.
fn p95_error(card: Card, ticks: &[Tick], width_ns: u64) -> f64 {
    let (lo, hi) = (2_000 * MS, ticks.last().expect("ticks").end_ns - 2_000 * MS);
    let mut windows: Vec<(u64, u64, u64)> = Vec::new();
    for t in ticks.iter().filter(|t| t.start_ns >= lo && t.end_ns <= hi) {
        let k = (t.start_ns - lo) / width_ns;
        match windows.last_mut() {
            Some(w) if (w.0 - lo) / width_ns == k => {
                w.1 = t.end_ns;
                w.2 += t.delta_uj.expect("measured");
            }
            _ => windows.push((t.start_ns, t.end_ns, t.delta_uj.expect("measured"))),
        }
    }
    let points = change_points(card);
    let truth = |t| truth_uj(&points, t);
    let mut errors: Vec<f64> = windows
        .iter()
        .map(|&(a, b, e)| (e as f64 / (truth(b) - truth(a)) - 1.0).abs())
        .collect();
    errors.sort_by(f64::total_cmp);
    errors[errors.len() * 95 / 100]
}

#[test]
fn ticks_carry_a_real_counter_exactly_and_follow_its_timeline() {
    for card in CARDS {
        carries_exactly_and_follows(card);
    }
}

fn carries_exactly_and_follows(card: Card) {
    let rows = trace(card);
    let dense = ticks(card, None);
    let sparse = ticks(card, Some(1_000 * MS));
    for (name, ticks) in [("dense", &dense), ("sparse", &sparse)] {
        let sum: u64 = ticks.iter().map(|t| t.delta_uj.expect("measured")).sum();
        // From the first read (7 ms) to the counter as the last counter read saw it.
        let first = rows[rows.partition_point(|r| r.0 <= 7 * MS) - 1].1;
        assert!(sum > 0, "{card:?} {name}");
        let last_read = ticks.last().expect("ticks").end_ns;
        let last = rows[rows.partition_point(|r| r.0 <= last_read) - 1].1;
        if name == "dense" {
            assert_eq!(
                sum,
                (last - first) * 1_000,
                "{card:?} {name}: the counter's energy exactly"
            );
        } else {
            // The sparse counter's last read is up to a second before the end.
            assert!(sum <= (last - first) * 1_000, "{card:?} {name}");
        }
    }
    let raw = ticks_with(card, None, Some(Duration::from_nanos(1)), Start::At(7 * MS));
    let e = |t: &[Tick]| [50, 250, 1_000].map(|w| p95_error(card, t, w * MS));
    let (d, s, r) = (e(&dense), e(&sparse), e(&raw));
    eprintln!(
        "{card:?}: p95 error at 50 / 250 / 1000 ms: dense {d:.3?}, sparse {s:.3?}, unspread {r:.3?}"
    );
    // Measured, H200: dense 0.162 / 0.062 / 0.013 (before the increments were placed at the
    // update's estimated time rather than at the read that saw it, 0.560 / 0.364 / 0.058: a 25 ms
    // lag), sparse 1.031 / 0.691 / 0.098, unspread 1.325 / 0.551 / 0.178. H100: dense 0.270 /
    // 0.097 / 0.027, sparse 1.133 / 0.638 / 0.132, unspread 1.738 / 0.729 / 0.209: reads fixed at
    // 7 ms land near this counter's updates (started as `serve` starts them, 0.091-0.123 / 0.032-
    // 0.039 / 0.008-0.009: the test below), so its bounds here are wider.
    let bound = match card {
        Card::H200 => [0.25, 0.10, 0.025],
        Card::H100 => [0.35, 0.13, 0.035],
    };
    assert!(
        d[0] < bound[0] && d[1] < bound[1] && d[2] < bound[2],
        "{card:?} dense: {d:?}"
    );
    assert!(
        r[0] > 3.0 * d[0],
        "{card:?}: spreading matters at the tick: {r:?} vs {d:?}"
    );
    assert!(s[2] < 0.15, "{card:?} sparse, over a second: {s:?}");
}

/// Wherever the sampler starts against the counter's updates, the start-up burst puts its reads
/// half an interval after them: the timeline is as good as at the best phase. Started at fixed
/// times instead, the reads landing on the updates (35 ms here, on the H200) made it 2–4 times
/// worse.
#[test]
fn aligned_reads_follow_the_timeline_from_any_start() {
    for card in CARDS {
        let e = |t: &[Tick]| [50, 250, 1_000].map(|w| p95_error(card, t, w * MS));
        for from in [0, 10, 20, 30, 35, 40] {
            let fixed = e(&ticks_with(card, None, None, Start::At(from * MS + 1)));
            let aligned = e(&ticks_with(card, None, None, Start::Aligned(from * MS)));
            eprintln!("{card:?} start {from} ms: fixed {fixed:.3?}, aligned {aligned:.3?}");
            assert!(
                aligned[0] < 0.25 && aligned[1] < 0.10 && aligned[2] < 0.025,
                "{card:?} start {from} ms: {aligned:?}"
            );
        }
    }
}
