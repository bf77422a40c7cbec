//! The accounting glue: receives sampler ticks, snapshots the in-flight registry, applies each tick
//! to the ledger, publishes energy back into the requests' atomics and retires finished, settled
//! requests into the bounded record ring (and the optional log and export channels).
//!
//! Owns the accounting thread and the [`AccountingShared`] state readers use. It must not block the
//! data plane: it only reads the registry and stores into atomics. [`Accounting::process_tick`] and
//! [`Accounting::on_timer`] are synchronous so tests drive them by hand; the thread only calls them.
//! With no meter there are no ticks: the timer still retires finished requests (status
//! `unavailable`) so that the registry never grows without bound.

pub mod aggregate;
pub mod history;
mod retire;
use retire::publish;
pub mod series;
pub mod shared;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use aggregate::{Aggregate, Aggregates, LabelTable, RecordEnergy};
pub use history::{History, HistoryPoint};
pub use shared::{AccountingShared, AccountingStats, RecordRing, StatusCounts};

use crate::clock::Clock;
use crate::ledger::{
    FinalRequest, Ledger, LedgerConfig, LedgerConfigError, Observation, RequestEnergy,
    RequestRecord, TickSpan, WorkKind,
};
use crate::observe::{InFlight, Outcome, RequestProgress};
use crate::tick::{Tick, TickPhase};

/// Settings of the accounting glue.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountingConfig {
    /// The attribution ledger.
    pub ledger: LedgerConfig,
    /// Finished-request records kept for `/requests` (oldest dropped, counted).
    pub record_capacity: usize,
    /// Capacity of the channel handing records to a log writer; 0 disables it.
    pub record_channel_capacity: usize,
    /// Capacity of the second channel, handing records to an exporter (OpenTelemetry); 0
    /// disables it. A full channel drops the record and counts it (`records_not_exported`).
    pub export_channel_capacity: usize,
    /// Distinct label values kept per dimension (model, key, tag); more fold into `other`.
    pub max_labels: usize,
    /// Carbon intensity, g CO2e per kWh; `None` leaves `co2_grams` null.
    pub carbon_intensity_g_per_kwh: Option<f64>,
    /// Power usage effectiveness multiplier for carbon.
    pub pue: f64,
    /// With no tick for this long, finished requests are retired as unmeasured.
    pub tickless_retire_after: Duration,
    /// How often the thread wakes without ticks (timer retirement, stop checks).
    pub poll_interval: Duration,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            ledger: LedgerConfig::default(),
            record_capacity: 10_000,
            record_channel_capacity: 4096,
            export_channel_capacity: 0,
            max_labels: 100,
            carbon_intensity_g_per_kwh: None,
            pue: 1.0,
            tickless_retire_after: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Why accounting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    /// The ledger settings are invalid.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerConfigError),
    /// A carbon setting is invalid.
    #[error("{name} must be a finite non-negative number, got {value}")]
    Carbon {
        /// The setting.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// `poll_interval` must be positive.
    #[error("poll_interval must be positive")]
    PollInterval,
    /// The OS refused the thread.
    #[error("cannot start the accounting thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The accounting state machine. Use [`Accounting::spawn`] to run it on its own thread, or call
/// [`Accounting::process_tick`] / [`Accounting::on_timer`] directly.
#[derive(Debug)]
pub struct Accounting {
    config: AccountingConfig,
    ledger: Ledger,
    in_flight: Arc<InFlight>,
    clock: Clock,
    shared: Arc<AccountingShared>,
    sink: Option<SyncSender<Arc<RequestRecord>>>,
    export: Option<SyncSender<Arc<RequestRecord>>>,
    last_tick_at_ns: u64,
    live: Vec<Arc<RequestProgress>>,
    observations: Vec<Observation>,
    /// Reader cursor into the registry's step clock, and the boundaries drained for this tick.
    step_cursor: u64,
    step_ends: Vec<u64>,
    /// The engine's queue gauges drained for this tick.
    queue_readings: Vec<crate::observe::EngineQueueReading>,
    finals: Vec<FinalRequest>,
    history: history::HistoryBuilder,
}

impl Accounting {
    /// Accounting over `in_flight`, with no log channel. See [`Accounting::with_log_channel`].
    pub fn new(
        config: AccountingConfig,
        in_flight: Arc<InFlight>,
        clock: Clock,
    ) -> Result<Self, AccountingError> {
        for (name, value) in [
            (
                "carbon_intensity_g_per_kwh",
                config.carbon_intensity_g_per_kwh.unwrap_or(0.0),
            ),
            ("pue", config.pue),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(AccountingError::Carbon { name, value });
            }
        }
        if config.poll_interval.is_zero() {
            return Err(AccountingError::PollInterval);
        }
        let accounting = Accounting {
            ledger: Ledger::new(config.ledger.clone())?,
            shared: Arc::new(AccountingShared::new(
                config.record_capacity,
                config.max_labels,
            )),
            config,
            in_flight,
            last_tick_at_ns: clock.now_ns(),
            clock,
            sink: None,
            export: None,
            live: Vec::new(),
            observations: Vec::new(),
            step_cursor: 0,
            step_ends: Vec::new(),
            queue_readings: Vec::new(),
            finals: Vec::new(),
            history: history::HistoryBuilder::default(),
        };
        // Responses that end before the first tick (a slow counter's first fill can take a second)
        // are priced per token at the configured weights rather than at nothing.
        accounting.publish_weights();
        Ok(accounting)
    }

    /// Creates the bounded log channel (`record_channel_capacity`, if non-zero) and returns its
    /// receiving end: every finished record is offered to it without blocking; when it is full the
    /// record is not logged and `records_not_logged` counts it.
    pub fn with_log_channel(&mut self) -> Option<Receiver<Arc<RequestRecord>>> {
        if self.config.record_channel_capacity == 0 {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(self.config.record_channel_capacity);
        self.sink = Some(tx);
        Some(rx)
    }

    /// Creates the bounded export channel (`export_channel_capacity`, if non-zero) and returns
    /// its receiving end; offered to like the log channel, its losses count as
    /// `records_not_exported`.
    pub fn with_export_channel(&mut self) -> Option<Receiver<Arc<RequestRecord>>> {
        if self.config.export_channel_capacity == 0 {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(self.config.export_channel_capacity);
        self.export = Some(tx);
        Some(rx)
    }

    /// The state readers use.
    pub fn shared(&self) -> Arc<AccountingShared> {
        self.shared.clone()
    }

    /// Starts the accounting thread over `ticks`. Dropping the handle stops and joins it.
    pub fn spawn(
        config: AccountingConfig,
        in_flight: Arc<InFlight>,
        ticks: Receiver<Tick>,
        clock: Clock,
    ) -> Result<AccountingHandle, AccountingError> {
        let mut acc = Accounting::new(config, in_flight, clock)?;
        let records = acc.with_log_channel();
        let exports = acc.with_export_channel();
        let shared = acc.shared();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("joulegate-accounting".into())
            .spawn(move || acc.run(ticks, &stop2))
            .map_err(AccountingError::Spawn)?;
        Ok(AccountingHandle {
            shared,
            stop,
            thread: Some(thread),
            records,
            exports,
        })
    }

    fn run(mut self, ticks: Receiver<Tick>, stop: &AtomicBool) {
        let poll = self.config.poll_interval;
        let mut connected = true;
        while !stop.load(Relaxed) {
            if connected {
                match ticks.recv_timeout(poll) {
                    Ok(t) => self.process_tick(&t),
                    Err(RecvTimeoutError::Timeout) => self.on_timer(self.clock.now_ns()),
                    Err(RecvTimeoutError::Disconnected) => connected = false,
                }
            } else {
                // No sampler (no meter): only the timer remains. Drop unparks us to stop at once.
                self.on_timer(self.clock.now_ns());
                std::thread::park_timeout(poll);
            }
        }
    }

    /// Applies one tick: snapshot, ledger, publish, retire. Synchronous; the thread calls it per
    /// tick and tests call it directly.
    pub fn process_tick(&mut self, tick: &Tick) {
        self.last_tick_at_ns = self.clock.now_ns();
        // Before the ledger applies it: a tick in a new second closes the previous one with the
        // books as they stood at its end.
        if let Some((point, devices)) = self.history.on_tick(tick) {
            self.shared.push_history(point, devices);
        }
        if tick.phase == TickPhase::Fill {
            // Energy of intervals announced earlier: no new interval, no new snapshot, unless
            // part of it lies after every announced one.
            let fill = self.ledger.fill(tick.start_ns, tick.end_ns, tick.delta_uj);
            match fill.after {
                Some((start_ns, end_ns, delta_uj)) => {
                    let rest = Tick {
                        start_ns,
                        end_ns,
                        delta_uj,
                        phase: TickPhase::Whole,
                        ..tick.clone()
                    };
                    self.apply_interval(&rest);
                }
                None => self.after_ledger(tick),
            }
            return;
        }
        self.apply_interval(tick);
    }

    /// A new interval: snapshot, ledger, then publish and retire.
    fn apply_interval(&mut self, tick: &Tick) {
        self.live.clear();
        self.live.extend(self.in_flight.all());
        self.observations.clear();
        self.observations
            .extend(self.live.iter().map(|p| Observation {
                progress: p.snapshot(),
                kind: WorkKind::of(p.meta.endpoint),
                choices: p.meta.choices.max(1),
            }));
        self.step_ends.clear();
        self.in_flight
            .steps
            .drain_since(&mut self.step_cursor, &mut self.step_ends);
        self.ledger.note_steps(&self.step_ends);
        self.queue_readings.clear();
        self.in_flight
            .engine_queue
            .drain_into(&mut self.queue_readings);
        self.ledger
            .note_engine_queue(&self.queue_readings, &self.observations);
        self.ledger.apply(TickSpan::from(tick), &self.observations);
        self.after_ledger(tick);
    }

    /// Publishes what the ledger now knows and retires what became final.
    fn after_ledger(&mut self, tick: &Tick) {
        if tick.phase != TickPhase::Announce {
            self.publish_rates(tick);
        }
        // Every tick, announced ones too: their provisional split (on an estimate) is in the
        // figures published next, and work up to them must not be priced again.
        self.in_flight
            .rates
            .covered_until_ns
            .store(self.ledger.covered_until_ns(), Relaxed);
        let settled_until = self.ledger.settled_until_ns();
        for (p, e) in self.live.iter().zip(self.ledger.observed_energy()) {
            if let Some(e) = e {
                publish(p, &e, settled_until);
            }
        }
        self.ledger.drain_final(&mut self.finals);
        let finals = std::mem::take(&mut self.finals);
        for f in &finals {
            self.retire(f, settled_until);
        }
        self.finals = finals;
        self.finals.clear();
        self.refresh_stats(tick.end_ns);
    }

    /// Publishes the per-token active energies in use (fitted when trusted, configured otherwise).
    fn publish_weights(&self) {
        let rates = &self.in_flight.rates;
        let calibration = self.ledger.calibration();
        let to_uj = |j: f64| {
            if j.is_finite() && j > 0.0 {
                (j * 1e6).round() as u64
            } else {
                0
            }
        };
        rates
            .prefill_uj_per_token
            .store(to_uj(calibration.alpha_j), Relaxed);
        rates
            .decode_uj_per_token
            .store(to_uj(calibration.beta_j), Relaxed);
    }

    /// Publishes the system rates the data plane uses to estimate work no tick has settled yet:
    /// recent total power (an exponential average over ticks, weight 1/4), idle power, and the
    /// per-token active energies in use (fitted when trusted, configured otherwise).
    fn publish_rates(&mut self, tick: &Tick) {
        let rates = &self.in_flight.rates;
        let dt = tick.end_ns.saturating_sub(tick.start_ns);
        if let (Some(delta), true) = (tick.delta_uj, dt > 0) {
            // uJ / ns = 1e3 W = 1e6 mW
            let power_mw =
                u64::try_from(u128::from(delta) * 1_000_000 / u128::from(dt)).unwrap_or(u64::MAX);
            let old = rates.power_mw.load(Relaxed);
            let new = if old == 0 {
                power_mw
            } else {
                old - old / 4 + power_mw / 4
            };
            rates.power_mw.store(new, Relaxed);
        }
        if let (Some(idle_mw), _) = self.ledger.p_idle() {
            rates.idle_mw.store(idle_mw, Relaxed);
        }
        self.publish_weights();
        let (prefill_per_s, decode_per_s) = self.ledger.answer_work_rates();
        // A prompt token's prior price at most the system's recent power over the engine's
        // prefill rate (mW / (tokens/s) = mJ a token): see `Ledger::token_prices_with`.
        let power_mw = rates.power_mw.load(Relaxed) as f64;
        let cap =
            (power_mw > 0.0 && prefill_per_s > 0.0).then(|| power_mw / prefill_per_s * 1000.0);
        rates.set_token_prices(self.ledger.published_token_prices(cap));
        rates.set_work_rates(prefill_per_s, decode_per_s);
    }

    /// Timer work without ticks: when no tick has come for `tickless_retire_after` (no meter, or
    /// the sampler stalled), finished requests are retired with the energy they have (status
    /// `unavailable` when none was measured) and live ones are marked unmeasured.
    pub fn on_timer(&mut self, now_ns: u64) {
        let quiet = now_ns.saturating_sub(self.last_tick_at_ns);
        if u128::from(quiet) < self.config.tickless_retire_after.as_nanos() {
            return;
        }
        // Nothing will settle the held ticks any more: settle them now, retire what that makes
        // final, then force the rest (their end was not measured: `estimated` at best).
        self.ledger.flush();
        let settled_until = self.ledger.settled_until_ns();
        self.ledger.drain_final(&mut self.finals);
        let finals = std::mem::take(&mut self.finals);
        for f in &finals {
            self.retire(f, settled_until);
        }
        self.finals = finals;
        self.finals.clear();
        for p in self.in_flight.all() {
            p.energy_available.store(false, Relaxed);
            if p.outcome() == Outcome::InFlight {
                continue;
            }
            let id = p.meta.id;
            let mut f = self.ledger.force_final(id).unwrap_or(FinalRequest {
                id,
                energy: RequestEnergy::default(),
                vanished: false,
            });
            // Its last part was not measured: never `ok`.
            f.energy.unavailable_ticks = f.energy.unavailable_ticks.max(1);
            self.retire(&f, settled_until);
        }
        let last = self.shared.stats().last_tick_end_ns;
        self.refresh_stats(last);
    }

    fn refresh_stats(&mut self, last_tick_end_ns: u64) {
        let totals = self.ledger.totals();
        let (p_idle_mw, p_idle_source) = self.ledger.p_idle();
        let calibration = self.ledger.calibration();
        let (prefill_rate, decode_rate) = self.ledger.rates();
        let in_flight = self.in_flight.len() as u64;
        let batch = self.ledger.batch();
        self.history.after_tick(totals, p_idle_mw, in_flight);
        self.shared.update_stats(|s| {
            s.batch = batch;
            s.totals = totals;
            s.p_idle_mw = p_idle_mw;
            s.p_idle_source = p_idle_source;
            s.calibration = calibration;
            s.prefill_tokens_per_s = prefill_rate;
            s.decode_tokens_per_s = decode_rate;
            s.in_flight = in_flight;
            s.last_tick_end_ns = last_tick_end_ns;
        });
    }
}

/// Owner of the accounting thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct AccountingHandle {
    shared: Arc<AccountingShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    records: Option<Receiver<Arc<RequestRecord>>>,
    exports: Option<Receiver<Arc<RequestRecord>>>,
}

impl AccountingHandle {
    /// The state readers use (cheap to clone, safe to share).
    pub fn shared(&self) -> Arc<AccountingShared> {
        self.shared.clone()
    }

    /// Takes the receiving end of the record log channel (once; `None` when disabled or taken).
    pub fn take_record_receiver(&mut self) -> Option<Receiver<Arc<RequestRecord>>> {
        self.records.take()
    }

    /// Takes the receiving end of the export channel (once; `None` when disabled or taken).
    pub fn take_export_receiver(&mut self) -> Option<Receiver<Arc<RequestRecord>>> {
        self.exports.take()
    }

    /// Stops the thread and waits for it (at most one `poll_interval`).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // A panic in the thread has already been reported; nothing more to do with it here.
            let _ = t.join();
        }
    }
}

impl Drop for AccountingHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
