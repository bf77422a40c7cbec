//! The virtual-time driver: the simulated engine steps, its energy counter updates, the sampler
//! reads and the data plane's observations all happen on one virtual clock, in time order, and
//! feed the real accounting (registry, ledger, published figures) exactly as the proxy would.
//!
//! Owns the event loop and the proxy-side view of each request (what a stream's continuous usage
//! or a JSON response's usage reveals, and when); it never reads a wall clock, so a run is
//! reproducible to the digit and takes well under a second per workload.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::counter::{Counter, EnergyClock, Noise, StartupBurst};
use super::workloads::VirtualRequest;
use crate::accounting::{Accounting, AccountingConfig, AccountingError};
use crate::clock::Clock;
use crate::meter::sim::SimMeter;
use crate::meter::MeterSet;
use crate::observe::{
    Endpoint, EngineQueueReading, InFlight, InFlightGuard, Outcome, RequestMeta, RequestProgress,
};
use crate::sampler::{SamplerCore, Schedule};
use crate::sim::engine::{Engine, EngineConfig, Phase, StepReport};

/// How the meter and sampler behave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeterModel {
    /// How often the energy counter moves, ns (NVML: 20–100 ms).
    pub counter_period_ns: u64,
    /// Relative noise on each counter increment (0.01 = ±1 %, uniform).
    pub noise: f64,
    /// The sampler's interval, ns.
    pub sample_interval_ns: u64,
    /// Each counter update comes up to this much before or after its lattice time, ns (uniform;
    /// an H200's NVML updates came 90–110 ms apart). 0: on the lattice.
    pub jitter_ns: u64,
}

impl Default for MeterModel {
    fn default() -> Self {
        MeterModel {
            counter_period_ns: 50_000_000,
            noise: 0.01,
            sample_interval_ns: 50_000_000,
            jitter_ns: 0,
        }
    }
}

/// One run's set-up.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The engine's limits and cost model.
    pub engine: EngineConfig,
    /// The meter.
    pub meter: MeterModel,
    /// Seed of the noise and the counter's phase.
    pub seed: u64,
    /// Whether responses carry vLLM's per-request `metrics` (queue, prefill, generation times).
    pub per_request_metrics: bool,
    /// How far the proxy's estimate of each prompt from its body's size is off, besides its 10 %
    /// bias: each request's estimate is its prompt times `1.1 ± spread` (uniform, from the seed;
    /// 0 by default).
    pub prompt_estimate_spread: f64,
    /// How often the proxy reads the engine's queue gauges from its `/metrics`
    /// (`upstream_metrics`), ns; `None`: it does not.
    pub upstream_metrics_interval_ns: Option<u64>,
    /// Idle time before the first request (P_idle is learned from it, as on a server that was
    /// idle before its first request), ns.
    pub warmup_ns: u64,
    /// The requests.
    pub requests: Vec<VirtualRequest>,
}

/// One request's figures beside its truth, micro-joules.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The plan's request.
    pub request: VirtualRequest,
    /// The engine's exact energy of the request.
    pub truth_uj: u64,
    /// Of it, above idle power.
    pub truth_active_uj: u64,
    /// Of it, the energy of steps in which it prefilled.
    pub truth_prefill_uj: u64,
    /// Completion tokens the engine produced (all choices).
    pub completion_tokens: u64,
    /// The final record's energy (`/requests/{id}`), `None` if no record was written.
    pub record_uj: Option<u64>,
    /// The record's active energy.
    pub record_active_uj: Option<u64>,
    /// The record's prefill energy.
    pub record_prefill_uj: Option<u64>,
    /// The figure on the response (JSON headers, or a stream's trailers and usage-chunk `energy`):
    /// `None` for clients that left.
    pub provisional_uj: Option<u64>,
    /// The response's active figure.
    pub provisional_active_uj: Option<u64>,
    /// The record's status.
    pub status: Option<crate::ledger::RecordStatus>,
    /// The figure a response would carry with `response_energy = "settled"`: the record's when
    /// it was written within the default wait bound after the response ended, else the
    /// provisional one (`None` for clients that left).
    pub settled_uj: Option<u64>,
    /// How long after the response ended its record was written, ns.
    pub settled_wait_ns: Option<u64>,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// One row per planned request.
    pub rows: Vec<Row>,
    /// The ledger's books at the end.
    pub totals: crate::ledger::LedgerTotals,
    /// Energy the engine drew up to the latest counter update the sampler read (what the meter
    /// could measure; idle time after the last step included), µJ (truth, before meter noise).
    pub engine_total_uj: u64,
    /// The calibration at the end.
    pub calibration: crate::ledger::CalibrationReport,
    /// P_idle at the end, mW.
    pub p_idle_mw: Option<u64>,
    /// The ledger's prefill rate and per-request decode rate at the end, tokens per second.
    pub rates: (f64, f64),
}

impl RunResult {
    /// Whether `attributed + idle + unattributed == measured` exactly, with nothing pending.
    pub fn books_exact(&self) -> bool {
        let t = &self.totals;
        t.pending_uj == 0 && t.attributed_uj + t.idle_uj + t.unattributed_uj == t.measured_uj
    }
}

/// Virtual time of the sampler's first reading, ns.
const START_NS: u64 = 1_000_000_000;

struct Live {
    guard: Option<InFlightGuard>,
    progress: Arc<RequestProgress>,
    engine_id: u64,
    arrival_ns: u64,
    scheduled_ns: u64,
    first_token_ns: u64,
    done: bool,
}

/// `response_energy_max_wait_ms`'s default, ns.
const SETTLED_MAX_WAIT_NS: u64 = crate::config::defaults::RESPONSE_ENERGY_MAX_WAIT_MS * 1_000_000;

/// Runs `scenario` through the real accounting. Deterministic: the same scenario gives the same
/// result.
pub fn run(scenario: &Scenario, config: AccountingConfig) -> Result<RunResult, AccountingError> {
    let clock = Clock::new();
    let in_flight = Arc::new(InFlight::new());
    let mut accounting = Accounting::new(config, in_flight.clone(), clock)?;
    let shared = accounting.shared();
    let mut engine = Engine::new(scenario.engine.clone());
    let energy = EnergyClock {
        idle_mw: scenario.engine.cost.idle_mw,
        at_ns: START_NS,
        pj: 0,
        step: None,
    };
    let m = scenario.meter;
    let sample = m.sample_interval_ns.max(1);
    let sim_counter = Counter::new(&m, scenario.seed, START_NS);
    // What the engine drew up to the latest counter update the sampler has read.
    let mut drawn_by_read_pj = 0u128;
    // The real sampler core over a meter reading the simulated counter: it learns the counter's
    // period, spreads its increments and announces intervals as `joulegate serve` does.
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sampler = SamplerCore::new(
        MeterSet {
            meters: vec![Box::new(SimMeter::from_shared_counter(
                "sim",
                counter.clone(),
            ))],
            unavailable: Vec::new(),
        },
        std::time::Duration::from_nanos(sample),
    );
    sampler.round(START_NS);
    // The start-up alignment `joulegate serve` runs (a burst of reads that finds the counter's
    // update phase; reads then start half an interval after its updates), through the same code
    // over the virtual clock.
    let mut burst = StartupBurst {
        now: START_NS,
        counter: sim_counter,
        energy,
        shared: counter.clone(),
    };
    let (_never_stop, stop) = std::sync::mpsc::sync_channel::<()>(1);
    let aligned = sampler
        .align_start(&mut burst, &stop)
        .expect("the virtual clock never stops the burst");
    let StartupBurst {
        now: burst_end,
        counter: mut sim_counter,
        mut energy,
        ..
    } = burst;
    // Unaligned, the reads keep their schedule from the baseline reading, the burst's slots
    // skipped (as `serve`'s sampler thread does).
    let mut next_read = aligned.unwrap_or_else(|| {
        Schedule::new(START_NS, std::time::Duration::from_nanos(sample)).next_deadline(burst_end)
    });

    // Traffic starts after the warm-up, and never during the burst.
    let first_at = (START_NS + scenario.warmup_ns).max(burst_end);
    // The proxy's prompt estimates' spread: its own sequence, so the other draws stay as they are.
    let mut prompt_noise = Noise(scenario.seed ^ 0x9b0d);
    let mut order: Vec<usize> = (0..scenario.requests.len()).collect();
    order.sort_by_key(|&i| (scenario.requests[i].at_ns, i));
    let mut next_arrival = 0usize;
    let mut aborts: Vec<(u64, usize)> = scenario
        .requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((first_at + r.at_ns + r.abort_after_ns?, i)))
        .collect();
    aborts.sort_unstable();
    let mut next_abort = 0usize;

    let mut live: Vec<Option<Live>> = (0..scenario.requests.len()).map(|_| None).collect();
    let mut by_engine_id: HashMap<u64, usize> = HashMap::new();
    let mut rows: Vec<Row> = scenario
        .requests
        .iter()
        .map(|r| Row {
            request: *r,
            truth_uj: 0,
            truth_active_uj: 0,
            truth_prefill_uj: 0,
            completion_tokens: 0,
            record_uj: None,
            record_active_uj: None,
            record_prefill_uj: None,
            provisional_uj: None,
            provisional_active_uj: None,
            status: None,
            settled_uj: None,
            settled_wait_ns: None,
        })
        .collect();
    let mut next_scrape = scenario
        .upstream_metrics_interval_ns
        .map_or(u64::MAX, |i| first_at + i.max(1));
    let mut step: Option<(u64, StepReport)> = None;
    let mut awaiting_record: Vec<(usize, u64, u64)> = Vec::new();
    let mut waiting: Vec<usize> = Vec::new();
    let mut done = 0usize;
    let mut drain_deadline = u64::MAX;
    let mut drain_started = u64::MAX;
    let mut all_done_at = u64::MAX;

    loop {
        let step_end = step.as_ref().map_or(u64::MAX, |(end, _)| *end);
        let arrival = order
            .get(next_arrival)
            .map_or(u64::MAX, |&i| first_at + scenario.requests[i].at_ns);
        let abort = aborts.get(next_abort).map_or(u64::MAX, |a| a.0);
        let now = step_end
            .min(arrival)
            .min(abort)
            .min(sim_counter.next_update)
            .min(next_read)
            .min(next_scrape);
        if now >= drain_deadline {
            // Everything retired: stop once the ledger holds nothing (a tick announced before
            // the counter's last update waits for its fill; the prefill pool keeps its balance
            // for ten idle ticks), within three seconds of idle.
            if shared.stats().totals.pending_uj == 0 || now >= drain_started + 3_000_000_000 {
                break;
            }
            drain_deadline = now + sample;
        }
        if now == step_end {
            let (end, report) = step.take().expect("a step is running");
            energy.advance(end);
            for e in &report.emitted {
                let Some(&i) = by_engine_id.get(&e.id) else {
                    continue;
                };
                let Some(l) = live[i].as_mut() else { continue };
                if l.done {
                    continue;
                }
                let r = &scenario.requests[i];
                let tokens = u64::from(e.generated) * u64::from(r.n);
                if l.first_token_ns == 0 {
                    l.first_token_ns = end;
                }
                if r.stream {
                    // vLLM's continuous usage: exact prompt and cumulative completion per chunk.
                    l.progress.set_prompt_exact(u64::from(r.prompt.max(1)));
                    l.progress.observe_completion(tokens, end);
                }
                if e.finished {
                    if !r.stream {
                        l.progress.set_prompt_exact(u64::from(r.prompt.max(1)));
                        l.progress.observe_completion(tokens, end);
                    }
                    l.progress.completion_exact.store(true, Relaxed);
                    if scenario.per_request_metrics && r.n == 1 {
                        // vLLM's `metrics`: queue, scheduled -> first token, first -> last token.
                        l.progress.set_engine_times(
                            Some(l.scheduled_ns.saturating_sub(l.arrival_ns)),
                            Some(l.first_token_ns.saturating_sub(l.scheduled_ns)),
                            Some(end.saturating_sub(l.first_token_ns)),
                        );
                    }
                    l.progress.finish(Outcome::Ok, end);
                    let figures = l.progress.energy_now(end, &in_flight.rates);
                    rows[i].provisional_uj = Some(figures.energy_uj);
                    awaiting_record.push((i, end, l.progress.meta.id));
                    rows[i].provisional_active_uj = Some(figures.active_uj);
                    l.done = true;
                    l.guard = None;
                    done += 1;
                }
            }
        } else if now == arrival {
            let i = order[next_arrival];
            next_arrival += 1;
            let r = &scenario.requests[i];
            let id = in_flight.next_id();
            let meta = RequestMeta {
                id,
                model: Some("sim".into()),
                endpoint: Endpoint::ChatCompletions,
                key_hash: None,
                tag: None,
                stream: r.stream,
                arrival_ns: now,
                // The proxy's estimate from the body's size is rough; the exact count follows.
                estimated_prompt_tokens: prompt_estimate(
                    r.prompt,
                    scenario.prompt_estimate_spread,
                    &mut prompt_noise,
                ),
                choices: r.n.max(1),
                max_tokens: Some(u64::from(r.max_tokens)),
            };
            let guard = in_flight.register(meta, clock);
            let progress = guard.progress().clone();
            if r.stream {
                progress.progress_visible.store(true, Relaxed);
            }
            engine.add(id, r.prompt, r.max_tokens, r.n);
            by_engine_id.insert(id, i);
            waiting.push(i);
            live[i] = Some(Live {
                guard: Some(guard),
                progress,
                engine_id: id,
                arrival_ns: now,
                scheduled_ns: 0,
                first_token_ns: 0,
                done: false,
            });
        } else if now == abort {
            let i = aborts[next_abort].1;
            next_abort += 1;
            if let Some(l) = live[i].as_mut().filter(|l| !l.done) {
                engine.abort(l.engine_id);
                l.progress.finish(Outcome::Aborted, now);
                l.done = true;
                l.guard = None;
                done += 1;
            }
        } else if now == next_scrape {
            // The engine's queue gauges as a scrape of its `/metrics` reads them.
            let (waiting, running) = engine.queue_depths();
            in_flight.engine_queue.push(EngineQueueReading {
                at_ns: now,
                waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
                running,
            });
            next_scrape += scenario.upstream_metrics_interval_ns.unwrap_or(u64::MAX);
        } else if now == sim_counter.next_update {
            sim_counter.update(now, &energy);
        } else {
            counter.store(sim_counter.uj, Relaxed);
            drawn_by_read_pj = sim_counter.true_pj;
            for tick in sampler.round(now) {
                accounting.process_tick(&tick);
                // Settled mode: a response waits for its record, at most the default bound.
                awaiting_record.retain(|&(i, end, id)| {
                    let Some(rec) = shared.record(id) else {
                        return true;
                    };
                    let wait = now.saturating_sub(end);
                    rows[i].settled_wait_ns = Some(wait);
                    rows[i].settled_uj = if wait <= SETTLED_MAX_WAIT_NS {
                        Some((rec.energy_joules * 1e6).round() as u64)
                    } else {
                        rows[i].provisional_uj
                    };
                    false
                });
            }
            next_read += sample;
            if done == scenario.requests.len() && next_arrival == order.len() {
                all_done_at = all_done_at.min(now);
                if in_flight.is_empty() && drain_deadline == u64::MAX {
                    // Everything retired: a little idle after, then stop.
                    drain_deadline = now + 2 * sample;
                    drain_started = now;
                } else if drain_deadline == u64::MAX && now > all_done_at + 60e9 as u64 {
                    // A bound on the wait for accounting to retire the last ones (a queue
                    // saturated for minutes ends long after the last arrival: bounding from
                    // there cut the last answer's record off).
                    break;
                }
            }
        }
        // Start the next step as soon as the engine is free and has work.
        if step.is_none() && engine.has_work() {
            energy.advance(now);
            if let Some(report) = engine.step() {
                energy.start_step(now, report.duration_ns, report.energy_uj);
                waiting.retain(|&i| {
                    let Some(l) = live[i].as_mut() else {
                        return false;
                    };
                    match engine.truth(l.engine_id).map(|t| t.phase) {
                        Some(Phase::Waiting) => true,
                        _ => {
                            l.scheduled_ns = now;
                            false
                        }
                    }
                });
                step = Some((now + report.duration_ns.max(1), report));
            }
        }
    }

    for (i, row) in rows.iter_mut().enumerate() {
        let Some(l) = live[i].as_ref() else { continue };
        if let Some(t) = engine.truth(l.engine_id) {
            row.truth_uj = t.total_uj();
            row.truth_active_uj = t.active_uj;
            row.truth_prefill_uj = t.prefill_uj;
            row.completion_tokens = t.completion_tokens;
        }
        if let Some(rec) = shared.record(l.progress.meta.id) {
            row.record_uj = Some((rec.energy_joules * 1e6).round() as u64);
            row.record_active_uj = Some((rec.active_joules * 1e6).round() as u64);
            row.record_prefill_uj = Some((rec.prefill_joules * 1e6).round() as u64);
            row.status = Some(rec.status);
        }
    }
    Ok(RunResult {
        rows,
        totals: shared.stats().totals,
        calibration: shared.stats().calibration,
        p_idle_mw: shared.stats().p_idle_mw,
        rates: (
            shared.stats().prefill_tokens_per_s,
            shared.stats().decode_tokens_per_s,
        ),
        engine_total_uj: (drawn_by_read_pj / 1_000_000) as u64,
    })
}

/// The proxy's estimate of a prompt from its request body's size (as `serve` makes it, the
/// body's bytes over four): 10 % high, and off by up to `spread` more either way per request
/// (one draw of `noise` each, in arrival order).
fn prompt_estimate(prompt: u32, spread: f64, noise: &mut Noise) -> u64 {
    (f64::from(prompt) * (1.1 + spread.max(0.0) * noise.next())).max(1.0) as u64
}
