//! The accounting rig: the simulated vLLM (`sim::MockUpstream`, engine timing, so every response has
//! a ground truth) behind the real proxy service on 127.0.0.1:0, with the accounting state machine
//! driven by hand. Ticks are fed by the test, so a request's record appears after a known number of
//! ticks instead of after some wall-clock time: nothing polls, nothing sleeps.
//!
//! The proxy is the same `ProxyState` / `ProxyService` / `serve_connections` that `App::start`
//! wires; only the sampler thread and the accounting thread are left out (the rig is both).

#![allow(dead_code)] // shared by tests/accounting.rs and tests/openai_sdk.rs, which use different parts

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use joulegate::accounting::{Accounting, AccountingConfig, AccountingStats};
use joulegate::app::App;
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use joulegate::ledger::RequestRecord;
use joulegate::meter::sim::SimMeter;
use joulegate::meter::MeterSet;
use joulegate::observe::parse_public_id;
use joulegate::proxy::listen::{serve_connections, ConnLimits};
use joulegate::proxy::service::{ProxyService, ProxyState};
use joulegate::sim::{MockBuilder, MockHandle, MockUpstream, RunnerConfig, Timing};
use joulegate::tick::{DeviceDelta, Tick};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Simulated seconds per wall second of the mock's engine: a few tokens take well under a
/// millisecond of wall time, yet every step is accounted with its ground-truth energy.
pub const TIME_SCALE: f64 = 200.0;

/// Most ticks a finished request may need before accounting retires it (settlement lag is one or
/// two ticks; the bound only turns a bug into a clear failure instead of a hang).
const MAX_SETTLE_TICKS: usize = 20;

/// Wall time between the ticks [`Rig::drive`] feeds.
const DRIVE_PERIOD: Duration = Duration::from_millis(2);

/// Most ticks [`Rig::drive`] feeds before giving up (about ten seconds of wall time).
const MAX_DRIVEN_TICKS: usize = 5_000;

/// Simulated meter power of the hand-fed ticks: 100 W is 0.1 µJ per ns.
const TICK_UJ_PER_NS_DIV: u64 = 10;

/// A mock builder with engine timing (ground truth per response) at [`TIME_SCALE`].
pub fn engine_mock() -> MockBuilder {
    MockUpstream::builder().timing(Timing::Engine(RunnerConfig {
        time_scale: TIME_SCALE,
        ..RunnerConfig::default()
    }))
}

/// Starts a mock on 127.0.0.1:0.
pub async fn spawn_mock(builder: MockBuilder) -> MockHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    builder.spawn(listener).expect("mock starts")
}

/// Whether the proxy has an energy meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metering {
    /// A working meter; the rig feeds its ticks.
    Measured,
    /// No meter at all: energy is `unavailable`.
    None,
}

/// Mock upstream + proxy + hand-driven accounting.
pub struct Rig {
    /// The simulated vLLM behind the proxy.
    pub mock: MockHandle,
    /// The proxy's listener.
    pub proxy: SocketAddr,
    /// The proxy's shared state (in-flight registry, clock).
    pub state: Arc<ProxyState>,
    acc: Accounting,
    seq: u64,
    last_end_ns: u64,
    measured_uj: u64,
    stop: Option<oneshot::Sender<()>>,
}

impl Rig {
    /// Starts `mock`, then a proxy in front of it configured from `tweak`ed serve arguments
    /// (defaults: absent `include_usage` = false, injection and the `energy` object on).
    pub async fn start(
        mock: MockBuilder,
        metering: Metering,
        tweak: impl FnOnce(&mut ServeArgs),
    ) -> Rig {
        let mock = spawn_mock(mock).await;
        let mut args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(mock.url()),
            absent_include_usage: Some("false".into()),
            upstream_forces_usage: Some("false".into()),
            // The rig drives accounting by hand; readings of the engine's gauges would come on the
            // wall clock (the live tests read them).
            upstream_metrics: Some("off".into()),
            ..ServeArgs::default()
        };
        tweak(&mut args);
        let config = Config::resolve(&args, &Default::default(), None).expect("valid config");
        // The meter only tells the data plane that energy is measured: the rig, not a sampler,
        // produces the ticks.
        let meters = match metering {
            Metering::Measured => MeterSet {
                meters: vec![Box::new(SimMeter::constant(100.0))],
                unavailable: Vec::new(),
            },
            Metering::None => MeterSet::default(),
        };
        let app = App::build_with_meters(config, meters);
        let state = app.state().clone();
        drop(app);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = listener.local_addr().expect("proxy addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_connections(
            listener,
            ProxyService::new(state.clone()),
            ConnLimits {
                max_connections: 256,
                grace: Duration::from_secs(1),
            },
            async {
                let _ = stopped.await;
            },
        ));
        let mut config = AccountingConfig::default();
        // The hand-fed ticks draw a constant 100 W, which no fit explains: settle at the lag,
        // without waiting for a calibration that will not come.
        config.ledger.calibration_hold_ticks = 0;
        let acc =
            Accounting::new(config, state.in_flight.clone(), state.clock).expect("accounting");
        let last_end_ns = state.clock.now_ns();
        Rig {
            mock,
            proxy,
            state,
            acc,
            seq: 0,
            last_end_ns,
            measured_uj: 0,
            stop: Some(stop),
        }
    }

    /// Feeds one tick from the previous one's end to now, 100 W worth of energy (or an
    /// unavailable interval with `measured: false`).
    pub fn tick(&mut self, measured: bool) {
        let end = self.state.clock.now_ns().max(self.last_end_ns + 1);
        let delta = measured.then(|| (end - self.last_end_ns) / TICK_UJ_PER_NS_DIV);
        self.seq += 1;
        let tick = Tick {
            seq: self.seq,
            start_ns: self.last_end_ns,
            end_ns: end,
            delta_uj: delta,
            devices: vec![DeviceDelta {
                device: "sim".into(),
                delta_uj: delta,
            }],
            phase: joulegate::tick::TickPhase::Whole,
        };
        self.acc.process_tick(&tick);
        self.last_end_ns = end;
        self.measured_uj += delta.unwrap_or(0);
    }

    /// The figures accounting publishes.
    pub fn stats(&self) -> AccountingStats {
        self.acc.shared().stats()
    }

    /// Ticks until the request with public id `public_id` (`jg-…`) is retired; its record.
    pub fn settle(&mut self, public_id: &str) -> Arc<RequestRecord> {
        let key = parse_public_id(public_id).expect("x-energy-request-id is a jg- id");
        for _ in 0..MAX_SETTLE_TICKS {
            if let Some(r) = self.acc.shared().record(key) {
                return r;
            }
            self.tick(true);
        }
        panic!("{public_id} not retired after {MAX_SETTLE_TICKS} ticks");
    }

    /// The record of `public_id` if accounting has retired it, without ticking.
    pub fn record(&self, public_id: &str) -> Option<Arc<RequestRecord>> {
        let key = parse_public_id(public_id).expect("x-energy-request-id is a jg- id");
        self.acc.shared().record(key)
    }

    /// Runs `exchange` (a client call whose response waits for settled figures) to its end while
    /// playing the sampler: a measured tick every [`DRIVE_PERIOD`] of wall time. The period only
    /// paces the ticks (how many a request needs varies); pass or fail never depends on it, and
    /// the tick bound only turns a hang into a clear failure.
    pub async fn drive<F: std::future::Future>(&mut self, exchange: F) -> F::Output {
        tokio::pin!(exchange);
        for _ in 0..MAX_DRIVEN_TICKS {
            tokio::select! {
                out = &mut exchange => return out,
                _ = tokio::time::sleep(DRIVE_PERIOD) => self.tick(true),
            }
        }
        panic!("the exchange did not end within {MAX_DRIVEN_TICKS} ticks");
    }

    /// Retires the finished request `public_id` without a meter: the accounting timer, called as
    /// if its no-tick grace had passed (no waiting on the wall clock).
    pub fn settle_without_ticks(&mut self, public_id: &str) -> Arc<RequestRecord> {
        let key = parse_public_id(public_id).expect("x-energy-request-id is a jg- id");
        let later = self.state.clock.now_ns()
            + AccountingConfig::default().tickless_retire_after.as_nanos() as u64
            + 1;
        self.acc.on_timer(later);
        self.acc
            .shared()
            .record(key)
            .unwrap_or_else(|| panic!("{public_id} not retired by the timer"))
    }

    /// Ticks until nothing is in flight or held, then checks the books: attributed + idle +
    /// unattributed equals exactly what the ticks measured.
    pub fn assert_conservation(&mut self) -> AccountingStats {
        for _ in 0..MAX_SETTLE_TICKS {
            let s = self.stats();
            if s.in_flight == 0 && s.totals.pending_uj == 0 && s.totals.held_ticks == 0 {
                break;
            }
            self.tick(true);
        }
        let s = self.stats();
        assert_eq!(s.in_flight, 0, "requests still in flight: {s:?}");
        assert_eq!(s.totals.pending_uj, 0, "energy still pending: {s:?}");
        assert_eq!(s.totals.measured_uj, self.measured_uj, "measured: {s:?}");
        assert_eq!(
            s.totals.attributed_uj + s.totals.idle_uj + s.totals.unattributed_uj,
            s.totals.measured_uj,
            "books do not balance: {s:?}"
        );
        s
    }

    /// Stops the proxy listener and the mock.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.mock.shutdown().await;
    }
}
