//! A meter slower than the sampler, end to end: `serve --meter counter-file:PATH` set up as the
//! binary does (config resolved from flags, meters built from the spec), a counter file the test
//! writes by hand every 100 ms of virtual time with 1 % noise at 300 W, the default 50 ms sampling
//! driven round by round through [`SamplerCore`], ticks fed to the real accounting, and the figures
//! read back over the admin listener's `/stats` and `/metrics`. Nothing sleeps: time is the
//! argument of each round.

mod common;
#[allow(dead_code)]
#[path = "admin/exposition.rs"]
mod exposition;
#[allow(dead_code)]
#[path = "admin/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use joulegate::accounting::{Accounting, AccountingConfig};
use joulegate::admin::{AdminService, AdminState};
use joulegate::app::App;
use joulegate::cli::ServeArgs;
use joulegate::config::Config;
use joulegate::meter::{build_meters, MeterSet};
use joulegate::proxy::listen::{serve_connections, ConnLimits};
use joulegate::sampler::SamplerCore;
use tokio::net::TcpListener;

const MS: u64 = 1_000_000;

/// A 300 W device whose counter file is rewritten every 100 ms, each increment off by up to ±1 %.
struct SlowCounter {
    value_uj: u64,
    next_update_ns: u64,
    rng: u64,
}

impl SlowCounter {
    /// The counter's value at `t_ns` after the start (updates are applied in order).
    fn at(&mut self, t_ns: u64) -> u64 {
        while self.next_update_ns <= t_ns {
            self.rng = self
                .rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
            // 300 W over 100 ms is 30 J.
            self.value_uj += (30_000_000.0 * (1.0 + 0.01 * (2.0 * u - 1.0))).round() as u64;
            self.next_update_ns += 100 * MS;
        }
        self.value_uj
    }
}

#[tokio::test]
async fn a_100ms_counter_sampled_every_50ms_learns_p_idle_and_never_reads_zero_watts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("energy_uj");
    std::fs::write(&path, "0\n").expect("write counter");
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        meters: vec![format!("counter-file:{}", path.display())],
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &Default::default(), None).expect("valid config");
    assert_eq!(
        config.sample_interval,
        Duration::from_millis(50),
        "the default"
    );
    let meters = build_meters(&config.meters).expect("counter file builds");
    let mut core = SamplerCore::with_period(
        meters,
        config.sample_interval,
        config.meter_period_ms.map(Duration::from_millis),
    );
    let app = App::build_with_meters(config.clone(), MeterSet::default());
    let state = app.state().clone();
    drop(app);
    let mut acc = Accounting::new(
        AccountingConfig::default(),
        state.in_flight.clone(),
        state.clock,
    )
    .expect("accounting");
    let admin_state = Arc::new(AdminState {
        accounting: acc.shared(),
        sampler: Some(core.status()),
        meters_unavailable: Vec::new(),
        in_flight: state.in_flight.clone(),
        clock: state.clock,
        config,
        upstream: state.upstream.clone(),
        request_log: None,
        #[cfg(feature = "otel")]
        otel: None,
        upstream_version: state.upstream_version.clone(),
        upstream_facts: state.facts.clone(),
        upstream_semantics: state.inspect.semantics.clone(),
        request_bodies: state.bodies.clone(),
        admission: state.admission.clone(),
        engine_gauges: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_connections(
        listener,
        AdminService::new(admin_state),
        ConnLimits {
            max_connections: 16,
            grace: Duration::from_secs(1),
        },
        async {
            let _ = stopped.await;
        },
    ));

    // Ten seconds of idle, round by round. The counter's phase is off the reads by 37 ms.
    let mut counter = SlowCounter {
        value_uj: 0,
        next_update_ns: 37 * MS,
        rng: 14,
    };
    let t0 = state.clock.now_ns();
    let mut zero_watts_after_learning = 0;
    let mut first_learned = None;
    let shared = acc.shared();
    let (mut last_off, mut lumpy_ticks) = (0, 0);
    for k in 0..=200u64 {
        let t = k * 50 * MS;
        std::fs::write(&path, format!("{}\n", counter.at(t))).expect("write counter");
        for tick in core.round(t0 + t) {
            // Announcements carry no energy (it follows as a fill). Once the period is learned
            // every energy tick carries the power of the span it lies in.
            if tick.phase == joulegate::tick::TickPhase::Announce {
                acc.process_tick(&tick);
                continue;
            }
            let w = tick.delta_uj.unwrap_or(0) as f64 * 1e3 / (tick.end_ns - tick.start_ns) as f64;
            if tick.start_ns >= t0 + 1_000 * MS && (w / 300.0 - 1.0).abs() > 0.015 {
                lumpy_ticks += 1;
            }
            acc.process_tick(&tick);
        }
        let power = core.status().snapshot().devices[0].power_w;
        // From the second counter update on, the power is that of the span it covered.
        if t >= 200 * MS && power.is_none_or(|w| w == 0.0) {
            zero_watts_after_learning += 1;
        }
        let p_idle = shared.stats().p_idle_mw;
        if let (None, Some(mw)) = (first_learned, p_idle) {
            first_learned = Some((t / MS, mw));
        }
        if p_idle.is_none_or(|mw| (mw as f64 / 300_000.0 - 1.0).abs() >= 0.03) {
            last_off = t / MS;
        }
    }
    eprintln!(
        "P_idle first learned at {first_learned:?} (ms, mW); within 3 % from {} ms on",
        last_off + 50
    );
    assert_eq!(lumpy_ticks, 0, "ticks off the spread timeline");
    assert_eq!(
        zero_watts_after_learning, 0,
        "power_w read 0 W while the counter moved"
    );

    let stats = support::admin_json(admin, "/stats").await;
    let p_idle = stats["idle"]["p_idle_w"].as_f64().expect("P_idle learned");
    assert_eq!(stats["idle"]["source"], "learned");
    assert!((p_idle / 300.0 - 1.0).abs() < 0.03, "P_idle {p_idle} W");
    let device = &stats["devices"][0];
    assert_eq!(device["update_period_ms"].as_f64(), Some(100.0));
    assert_eq!(device["update_period_source"], "learned");
    assert_eq!(device["updates_every_read"], false);
    let power = device["power_w"].as_f64().expect("device power");
    eprintln!("after 10 s of idle: P_idle {p_idle} W, power_w {power} W");
    assert!((power / 300.0 - 1.0).abs() < 0.03, "power_w {power} W");

    let metrics = support::metrics(admin, None).await;
    let label = format!("counter-file:{}", path.display());
    let period = exposition::sum(
        &metrics,
        "joulegate_meter_update_period_seconds",
        &[("device", &label)],
    );
    assert!(exposition::close(period, 0.1), "{period}");
    let watts = exposition::sum(&metrics, "joulegate_power_watts", &[("device", &label)]);
    assert!(exposition::close(watts, power), "{watts} vs {power}");
    let _ = stop.send(());
}
