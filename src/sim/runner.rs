//! The real-time driver of the pure [`Engine`]: a tokio task that runs steps back to back, sleeping
//! each step's (scaled) duration, hands each request's progress to its HTTP stream the moment the step
//! that produced it ends, and keeps an energy timeline from which a cumulative counter is published
//! at a fixed period (like NVML's total-energy counter, which advances in steps every ~10-100 ms).
//!
//! **Time scale.** With `time_scale = k`, a step of simulated duration `d` takes `d / k` of wall time;
//! energies stay the simulated ones, so the apparent power is `k` times the simulated power. The demo
//! uses it to run a realistic workload in a few seconds; `1.0` is real time.
//!
//! The counter is `Arc<AtomicU64>` micro-joules (what `SimMeter::from_shared_counter` reads) and may be
//! mirrored to a file (`<µJ>\n`, rewritten atomically by write + rename) for out-of-process meters.
//! Within a step the published energy grows linearly over the step; between steps at idle power.
//!
//! **Request timing.** The runner also keeps each request's clock on the same timeline: arrival
//! (when it was submitted), the start of the step in which its prefill started, and the ends of the
//! steps that produced its first and last tokens ([`RequestTiming`], what vLLM's per-request
//! `metrics` report). It is written before the step's progress is handed out, so a stream that
//! receives its last token can read its timing at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::engine::{Emit, Engine, EngineConfig, Phase, Totals};

/// How the runner runs.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// The engine's limits and cost model.
    pub engine: EngineConfig,
    /// Simulated seconds per wall second (1.0 = real time; clamped to [0.001, 10^6]; invalid → 1.0).
    pub time_scale: f64,
    /// How often the energy counter advances (default 20 ms).
    pub counter_period: Duration,
    /// Optional counter file, rewritten each period.
    pub counter_file: Option<PathBuf>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            engine: EngineConfig::default(),
            time_scale: 1.0,
            counter_period: Duration::from_millis(20),
            counter_file: None,
        }
    }
}

/// The moments of one request on the runner's timeline.
#[derive(Clone, Copy, Debug)]
struct RequestClock {
    arrival: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    generated: u32,
}

/// The engine's timing of one request, wall clock, on the runner's timeline (steps last their
/// simulated duration divided by the time scale), as vLLM's per-request `metrics` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTiming {
    /// Arrival at the engine (submission) → the start of the step in which its prefill started.
    pub queue: Duration,
    /// That step's start → the end of the step that produced its first token (the prefill, without
    /// the queue).
    pub prefill: Duration,
    /// The first token → the last token.
    pub generation: Duration,
    /// Tokens generated per choice.
    pub tokens: u32,
}

impl RequestClock {
    fn timing(&self) -> Option<RequestTiming> {
        let scheduled = self.scheduled?;
        let first = self.first_token?;
        let last = self.last_token?;
        Some(RequestTiming {
            queue: scheduled.saturating_duration_since(self.arrival),
            prefill: first.saturating_duration_since(scheduled),
            generation: last.saturating_duration_since(first),
            tokens: self.generated,
        })
    }
}

#[derive(Debug)]
enum Seg {
    Idle,
    Step { dur_ns: u64, energy_uj: u64 },
}

/// Energy as a function of wall time: completed steps, closed idle time, and the open segment.
#[derive(Debug)]
struct Timeline {
    steps_uj: u64,
    idle_ns: u64,
    seg: Seg,
    seg_start: Instant,
    scale: f64,
}

impl Timeline {
    fn sim_ns(&self, from: Instant, to: Instant) -> u64 {
        (to.saturating_duration_since(from).as_nanos() as f64 * self.scale) as u64
    }

    fn energy_at(&self, engine: &Engine, now: Instant) -> u64 {
        let elapsed = self.sim_ns(self.seg_start, now);
        match self.seg {
            Seg::Idle => self.steps_uj + engine.idle_energy_uj(self.idle_ns + elapsed),
            Seg::Step { dur_ns, energy_uj } => {
                let part = u128::from(energy_uj) * u128::from(elapsed.min(dur_ns))
                    / u128::from(dur_ns.max(1));
                self.steps_uj + engine.idle_energy_uj(self.idle_ns) + part as u64
            }
        }
    }
}

/// State shared by the runner task, the counter publisher and the mock's handle.
#[derive(Debug)]
pub struct EngineShared {
    engine: Mutex<Engine>,
    timeline: Mutex<Timeline>,
    counter: Arc<AtomicU64>,
    clocks: Mutex<HashMap<u64, RequestClock>>,
    /// Bumped after every step and abort, so waiters can re-check conditions.
    pub changed: watch::Sender<u64>,
}

impl EngineShared {
    /// Locks the engine (for truth and totals). Poisoning is ignored: the engine holds plain data.
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn clocks(&self) -> MutexGuard<'_, HashMap<u64, RequestClock>> {
        self.clocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The timing of a request once it produced its last token (or finished with none); `None`
    /// before that, or for an unknown or forgotten id.
    pub fn request_timing(&self, id: u64) -> Option<RequestTiming> {
        self.clocks().get(&id).and_then(RequestClock::timing)
    }

    /// Drops the records (truth and timing) of a finished or aborted request.
    pub fn forget(&self, id: u64) {
        let gone = {
            let mut engine = self.engine();
            engine.forget(id);
            engine.truth(id).is_none()
        };
        if gone {
            self.clocks().remove(&id);
        }
    }

    /// The cumulative counter the publisher advances.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    /// Energy consumed up to `now`, µJ, as the timeline says (not yet necessarily published).
    pub fn energy_now(&self) -> u64 {
        let engine = self.engine();
        self.timeline().energy_at(&engine, Instant::now())
    }

    /// Publishes the energy up to now into the counter; returns the value.
    pub fn publish(&self) -> u64 {
        let e = self.energy_now();
        self.counter.fetch_max(e, Ordering::Relaxed);
        self.counter.load(Ordering::Relaxed)
    }

    /// Closes the open idle segment at `now` into the engine's totals, so that [`Totals`] and the
    /// published counter agree exactly.
    pub fn settle_idle(&self) -> Totals {
        let mut engine = self.engine();
        let mut tl = self.timeline();
        let now = Instant::now();
        if let Seg::Idle = tl.seg {
            let ns = tl.sim_ns(tl.seg_start, now);
            engine.idle(ns);
            tl.idle_ns += ns;
            tl.seg_start = now;
        }
        let e = tl.energy_at(&engine, now);
        self.counter.fetch_max(e, Ordering::Relaxed);
        engine.totals()
    }
}

/// Commands to the runner.
#[derive(Debug)]
enum Cmd {
    Add {
        id: u64,
        prompt: u32,
        max_tokens: u32,
        n: u32,
        progress: mpsc::UnboundedSender<Emit>,
        /// When it was submitted: its arrival at the engine.
        at: Instant,
    },
    Abort(u64),
}

/// A cheap handle to submit requests to the running engine.
#[derive(Clone, Debug)]
pub struct EngineClient {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Shared engine state (truth, totals, counter).
    pub shared: Arc<EngineShared>,
}

impl EngineClient {
    /// Submits a request; its progress arrives on the returned receiver, one [`Emit`] per step that
    /// advanced it, the last with `finished`.
    pub fn submit(
        &self,
        id: u64,
        prompt: u32,
        max_tokens: u32,
        n: u32,
    ) -> mpsc::UnboundedReceiver<Emit> {
        let (progress, rx) = mpsc::unbounded_channel();
        self.submit_with(id, prompt, max_tokens, n, progress);
        rx
    }

    /// Like [`EngineClient::submit`], reporting to a given sender (several requests may share one).
    pub fn submit_with(
        &self,
        id: u64,
        prompt: u32,
        max_tokens: u32,
        n: u32,
        progress: mpsc::UnboundedSender<Emit>,
    ) {
        let _ = self.tx.send(Cmd::Add {
            id,
            prompt,
            max_tokens,
            n,
            progress,
            at: Instant::now(),
        });
    }

    /// Aborts a request (its client is gone).
    pub fn abort(&self, id: u64) {
        let _ = self.tx.send(Cmd::Abort(id));
    }
}

/// Starts the runner and the counter publisher; both stop when `stop` turns true (the publisher
/// publishes once more first) or when every [`EngineClient`] is dropped (the runner).
pub fn spawn(
    cfg: RunnerConfig,
    stop: watch::Receiver<bool>,
) -> (EngineClient, Vec<tokio::task::JoinHandle<()>>) {
    let scale = if cfg.time_scale.is_finite() && cfg.time_scale > 0.0 {
        cfg.time_scale
    } else {
        1.0
    };
    let shared = Arc::new(EngineShared {
        engine: Mutex::new(Engine::new(cfg.engine.clone())),
        timeline: Mutex::new(Timeline {
            steps_uj: 0,
            idle_ns: 0,
            seg: Seg::Idle,
            seg_start: Instant::now(),
            scale,
        }),
        counter: Arc::new(AtomicU64::new(0)),
        clocks: Mutex::new(HashMap::new()),
        changed: watch::channel(0).0,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(run(shared.clone(), rx, scale, stop.clone()));
    let publisher = tokio::spawn(publish_loop(
        shared.clone(),
        cfg.counter_period,
        cfg.counter_file,
        stop,
    ));
    (EngineClient { tx, shared }, vec![runner, publisher])
}

async fn run(
    shared: Arc<EngineShared>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    scale: f64,
    mut stop: watch::Receiver<bool>,
) {
    let mut subs: HashMap<u64, mpsc::UnboundedSender<Emit>> = HashMap::new();
    // Requests submitted but not yet seen scheduled, to stamp the step in which their prefill starts.
    let mut unscheduled: Vec<u64> = Vec::new();
    let mut next_start = Instant::now();
    let apply = |cmd: Cmd,
                 subs: &mut HashMap<u64, mpsc::UnboundedSender<Emit>>,
                 unscheduled: &mut Vec<u64>| {
        let mut engine = shared.engine();
        match cmd {
            Cmd::Add {
                id,
                prompt,
                max_tokens,
                n,
                progress,
                at,
            } => {
                engine.add(id, prompt, max_tokens, n);
                subs.insert(id, progress);
                shared.clocks().insert(
                    id,
                    RequestClock {
                        arrival: at,
                        scheduled: None,
                        first_token: None,
                        last_token: None,
                        generated: 0,
                    },
                );
                unscheduled.push(id);
            }
            Cmd::Abort(id) => {
                engine.abort(id);
                subs.remove(&id);
                shared.changed.send_modify(|v| *v += 1);
            }
        }
    };
    loop {
        while let Ok(cmd) = rx.try_recv() {
            apply(cmd, &mut subs, &mut unscheduled);
        }
        let has_work = shared.engine().has_work();
        if !has_work {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => apply(cmd, &mut subs, &mut unscheduled),
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            next_start = next_start.max(Instant::now());
            continue;
        }
        let (report, started) = {
            let mut engine = shared.engine();
            let Some(report) = engine.step() else {
                continue;
            };
            // Scheduled in this step: no longer waiting (an aborted one never ran).
            let mut started = Vec::new();
            unscheduled.retain(|id| match engine.truth(*id).map(|t| t.phase) {
                Some(Phase::Waiting) => true,
                Some(Phase::Running | Phase::Finished) => {
                    started.push(*id);
                    false
                }
                Some(Phase::Aborted) | None => false,
            });
            let mut tl = shared.timeline();
            // Close the idle gap before this step, then open the step's segment.
            let idle = tl.sim_ns(tl.seg_start, next_start);
            engine.idle(idle);
            tl.idle_ns += idle;
            tl.seg = Seg::Step {
                dur_ns: report.duration_ns,
                energy_uj: report.energy_uj,
            };
            tl.seg_start = next_start;
            (report, started)
        };
        let end = next_start + Duration::from_nanos((report.duration_ns as f64 / scale) as u64);
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        {
            let mut tl = shared.timeline();
            tl.steps_uj += report.energy_uj;
            tl.seg = Seg::Idle;
            tl.seg_start = end;
        }
        let step_start = next_start;
        next_start = end;
        {
            let mut clocks = shared.clocks();
            for id in started {
                if let Some(c) = clocks.get_mut(&id) {
                    c.scheduled = Some(step_start);
                }
            }
            for e in &report.emitted {
                if let Some(c) = clocks.get_mut(&e.id) {
                    if e.generated > c.generated || e.finished {
                        c.first_token.get_or_insert(end);
                        c.last_token = Some(end);
                        c.generated = e.generated;
                    }
                }
            }
        }
        for e in &report.emitted {
            let delivered = subs.get(&e.id).is_some_and(|s| s.send(*e).is_ok());
            if e.finished || !delivered {
                subs.remove(&e.id);
                if !e.finished {
                    // Nobody listens any more: stop spending the GPU on it, as vLLM does.
                    shared.engine().abort(e.id);
                }
            }
        }
        shared.changed.send_modify(|v| *v += 1);
    }
}

async fn publish_loop(
    shared: Arc<EngineShared>,
    period: Duration,
    file: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut iv = tokio::time::interval(period.max(Duration::from_millis(1)));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut warned = false;
    loop {
        let stopping = tokio::select! {
            _ = iv.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let value = shared.publish();
        if let Some(path) = &file {
            if let Err(e) = write_counter_file(path, value).await {
                if !warned {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the energy counter file");
                    warned = true;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Writes `<uj>\n` to `path` atomically (temporary file in the same directory, then rename).
pub async fn write_counter_file(path: &std::path::Path, uj: u64) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tokio::fs::write(&tmp, format!("{uj}\n")).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
