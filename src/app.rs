//! The application: built from a [`Config`] without binding anything, then served on listeners the
//! caller bound (the binary binds, the library serves; tests bind 127.0.0.1:0), until a shutdown
//! future resolves, then drained (linkerd's app shape, mini-redis `server::run`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accounting::{Accounting, AccountingConfig};
use crate::admin::{AdminService, AdminState};
use crate::clock::Clock;
use crate::config::{Config, ResponseEnergy};
use crate::ledger::LedgerConfig;
use crate::meter::{build_meters, default_meters, MeterSet};
use crate::observe::InFlight;
use crate::openai::request::ViewConfig;
use crate::openai::semantics::UsageSemantics;
use crate::proxy::admission::{Admission, AdmissionConfig};
use crate::proxy::bodies::InspectBudget;
use crate::proxy::energy::Carbon;
use crate::proxy::inspect::{InspectConfig, KeyHasher, SharedSemantics};
use crate::proxy::listen::{serve_connections, serve_connections_with, ConnLimits, ConnOptions};
use crate::proxy::probe;
use crate::proxy::service::{ProxyService, ProxyState};
use crate::proxy::upstream::Upstream;
use crate::request_log::{RequestLog, RequestLogConfig};
use crate::sampler::{Sampler, SamplerConfig};

/// The two listeners `serve` needs.
#[derive(Debug)]
pub struct Listeners {
    /// Where clients connect.
    pub proxy: TcpListener,
    /// Where operators and Prometheus connect.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses of the configuration.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let proxy = TcpListener::bind(config.listen)
            .await
            .map_err(|e| annotate(e, "listen", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| annotate(e, "admin_listen", config.admin_listen))?;
        Ok(Listeners { proxy, admin })
    }
}

fn annotate(err: std::io::Error, key: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("cannot bind `{key}` {addr}: {err}"))
}

/// Why the application could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A meter spec could not be turned into a meter (bad wrap file, unreadable replay trace).
    #[error("meter: {0}")]
    Meter(#[from] crate::meter::BuildError),
    /// The sampler thread could not start.
    #[error("sampler: {0}")]
    Sampler(#[from] crate::sampler::SamplerError),
    /// The accounting thread could not start.
    #[error("accounting: {0}")]
    Accounting(#[from] crate::accounting::AccountingError),
    /// A ledger setting is unusable.
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerConfigError),
    /// The request log could not be opened or started.
    #[error("request log: {0}")]
    RequestLog(#[from] crate::request_log::RequestLogError),
    /// The OpenTelemetry exporter could not start.
    #[cfg(feature = "otel")]
    #[error("OpenTelemetry: {0}")]
    Otel(#[from] crate::otel::OtelError),
}

/// A built application, ready to serve.
#[derive(Debug)]
pub struct App {
    config: Config,
    state: Arc<ProxyState>,
    meters: MeterSet,
}

impl App {
    /// Builds every part from the configuration and opens the meters; binds nothing, spawns nothing.
    pub fn build(config: Config) -> Result<App, AppError> {
        let meters = if config.meters.is_empty() {
            default_meters()
        } else {
            build_meters(&config.meters)?
        };
        Ok(Self::build_with_meters(config, meters))
    }

    /// Builds with meters made by the caller (the demo's simulated engine, tests).
    pub fn build_with_meters(config: Config, meters: MeterSet) -> App {
        let upstream = Upstream::new(
            config.upstream.clone(),
            config.connect_timeout,
            config.upstream_header_timeout,
            config.max_body_bytes,
        )
        .with_idle_timeout(config.upstream_idle_timeout);
        let semantics = Arc::new(SharedSemantics::new(
            UsageSemantics {
                absent_include_usage: config.absent_include_usage.unwrap_or(false),
                force_include_usage: config.upstream_forces_usage.unwrap_or(false),
            },
            config.upstream_forces_usage.is_none(),
        ));
        let key_salt = match &config.key_salt {
            Some(salt) => salt.as_bytes().to_vec(),
            None => random_salt(),
        };
        let state = Arc::new(ProxyState {
            upstream,
            max_body_bytes: config.max_body_bytes,
            bodies: Arc::new(InspectBudget::new(
                config.max_inspect_bytes,
                config.max_inspect_total_bytes,
            )),
            max_buffered_response_bytes: config.max_buffered_response_bytes,
            in_flight: Arc::new(InFlight::new()),
            clock: Clock::new(),
            inspect: InspectConfig {
                view: ViewConfig {
                    bytes_per_token: config.bytes_per_token,
                },
                inject_usage: config.inject_usage,
                energy_in_usage: config.energy_in_usage,
                semantics,
                key_hasher: KeyHasher::new(&key_salt),
            },
            carbon: Carbon {
                intensity_g_per_kwh: config.carbon_intensity_g_per_kwh,
                pue: config.pue,
            },
            energy_measured: !meters.meters.is_empty(),
            settle_wait: (config.response_energy == ResponseEnergy::Settled)
                .then_some(config.response_energy_max_wait),
            upstream_version: Arc::default(),
            facts: Arc::default(),
            admission: Arc::new(Admission::new(AdmissionConfig {
                max_inflight_requests: config.max_inflight_requests,
                max_inflight_tokens: config.max_inflight_tokens,
                max_queue: config.max_queue,
                queue_timeout: config.queue_timeout,
                default_max_tokens: config.admission_default_max_tokens,
            })),
        });
        App {
            state,
            meters,
            config,
        }
    }

    /// The state shared by the proxy's connections.
    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }
}

/// The accounting settings a configuration implies.
fn accounting_config(c: &Config) -> AccountingConfig {
    {
        let mut ledger = LedgerConfig {
            p_idle_mw: c.idle_watts.map(|w| (w * 1000.0).round() as u64),
            ..LedgerConfig::default()
        };
        ledger.calibration.default_alpha_j = c.prefill_joules_per_token;
        ledger.calibration.default_beta_j = c.decode_joules_per_token;
        ledger.calibration.default_gamma_j = c.context_joules_per_token;
        // The lag in ticks at the sampler's interval (at least one).
        let interval = c.sample_interval.as_nanos().max(1);
        ledger.settle_ticks = usize::try_from(c.settle_lag.as_nanos().div_ceil(interval))
            .unwrap_or(usize::MAX)
            .clamp(1, 10_000);
        // Settled-mode responses wait for their records: a hold would make the first seconds'
        // responses wait out `response_energy_max_wait_ms` and go out estimated.
        ledger.calibration_hold_ticks = if c.response_energy == ResponseEnergy::Settled {
            0
        } else {
            usize::try_from(c.calibration_hold.as_nanos().div_ceil(interval))
                .unwrap_or(usize::MAX)
                .min(10_000)
        };
        AccountingConfig {
            ledger,
            record_capacity: c.record_capacity,
            // The request-log writer takes this channel; without one there is no channel at all.
            record_channel_capacity: if c.request_log.is_some() { 4096 } else { 0 },
            // The OpenTelemetry exporter's queue (`otel_queue`); the config refuses `otel_*`
            // keys in a build without the exporter, so this is 0 there.
            export_channel_capacity: c.otel.as_ref().map_or(0, |o| o.queue),
            max_labels: c.max_label_values,
            carbon_intensity_g_per_kwh: c.carbon_intensity_g_per_kwh,
            pue: c.pue,
            ..AccountingConfig::default()
        }
    }
}

impl App {
    /// Starts the sampler and accounting threads, serves both listeners until `shutdown` resolves,
    /// then drains in-flight requests within the configured grace period. The threads stop when
    /// this returns.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let running = self.start(listeners)?;
        shutdown.await;
        running.shutdown();
        running.wait().await;
        Ok(())
    }

    /// Starts everything on the current tokio runtime and returns at once with a handle (for the
    /// demo, tests and benches, which read accounting directly).
    pub fn start(self, listeners: Listeners) -> Result<Running, AppError> {
        let App {
            config,
            state,
            meters,
        } = self;
        let unavailable = meters.unavailable.clone();
        for u in &unavailable {
            tracing::warn!(meter = %u.spec, reason = %u.reason, "meter unavailable");
        }
        let (sampler, ticks) = if meters.meters.is_empty() {
            tracing::warn!("no working energy meter: energy is reported as unavailable");
            // A receiver whose sender is gone: accounting retires requests on its timer alone.
            let (_, rx) = std::sync::mpsc::sync_channel(1);
            (None, rx)
        } else {
            let sampler_config = SamplerConfig {
                interval: config.sample_interval,
                meter_period: config.meter_period_ms.map(std::time::Duration::from_millis),
                align_phase: true,
                ..SamplerConfig::default()
            };
            let (sampler, rx) = Sampler::spawn(meters, sampler_config, state.clock)?;
            (Some(sampler), rx)
        };
        let mut accounting = Accounting::spawn(
            accounting_config(&config),
            state.in_flight.clone(),
            ticks,
            state.clock,
        )?;
        // The request log drains the record channel accounting offers finished records to.
        let request_log = match (&config.request_log, accounting.take_record_receiver()) {
            (Some(path), Some(records)) => Some(RequestLog::spawn(
                RequestLogConfig {
                    path: path.clone(),
                    max_bytes: config.request_log_max_bytes,
                    files: config.request_log_files,
                },
                records,
            )?),
            _ => None,
        };
        #[cfg(feature = "otel")]
        let otel = match (&config.otel, accounting.take_export_receiver()) {
            (Some(otel), Some(records)) => Some(crate::otel::OtelExporter::spawn(
                otel.clone(),
                records,
                crate::otel::Sources {
                    accounting: accounting.shared(),
                    sampler: sampler.as_ref().map(|s| s.status().clone()),
                    clock: state.clock,
                },
            )?),
            _ => None,
        };
        let engine_gauges = Arc::new(crate::proxy::engine_gauges::ReaderStatus::default());
        let admin_state = Arc::new(AdminState {
            accounting: accounting.shared(),
            sampler: sampler.as_ref().map(|s| s.status().clone()),
            meters_unavailable: unavailable,
            in_flight: state.in_flight.clone(),
            clock: state.clock,
            config: config.clone(),
            upstream: state.upstream.clone(),
            request_log: request_log.as_ref().map(|l| l.status().clone()),
            #[cfg(feature = "otel")]
            otel: otel.as_ref().map(|o| o.status().clone()),
            upstream_version: state.upstream_version.clone(),
            upstream_facts: state.facts.clone(),
            upstream_semantics: state.inspect.semantics.clone(),
            request_bodies: state.bodies.clone(),
            admission: state.admission.clone(),
            engine_gauges: engine_gauges.clone(),
        });
        let proxy_addr = listeners.proxy.local_addr().ok();
        let admin_addr = listeners.admin.local_addr().ok();
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = ConnLimits {
            max_connections: config.max_connections,
            grace: config.shutdown_grace,
        };
        let admin_limits = ConnLimits {
            max_connections: 64,
            grace: config.shutdown_grace,
        };
        let proxy = serve_connections_with(
            listeners.proxy,
            ProxyService::new(state.clone()),
            limits,
            ConnOptions {
                header_read_timeout: config.header_read_timeout,
                screen_heads: true,
            },
            stopped(stop_rx.clone()),
        );
        if config.absent_include_usage.is_none() || config.upstream_forces_usage.is_none() {
            tokio::spawn(probe::detect_usage_semantics(
                state.clone(),
                config.absent_include_usage.is_none(),
                stopped(stop_rx.clone()),
            ));
        }
        if config.upstream_metrics {
            tokio::spawn(crate::proxy::engine_gauges::read_periodically(
                state.upstream.clone(),
                state.in_flight.clone(),
                state.clock,
                config.upstream_metrics_interval,
                admin_state.engine_gauges.clone(),
                stopped(stop_rx.clone()),
            ));
        }
        let admin = serve_connections(
            listeners.admin,
            AdminService::new(admin_state.clone()),
            admin_limits,
            stopped(stop_rx),
        );
        let task = tokio::spawn(async move {
            tokio::join!(proxy, admin);
            // The threads outlive the listeners so the last requests are settled and retired.
            drop(accounting);
            // After accounting: its channel is closed, so the log writes what is queued and stops.
            drop(request_log);
            // Likewise: the exporter sends what is queued and the final counters, then stops.
            // Its last POSTs wait on the network (bounded by a short timeout): joined off the
            // runtime, which may be the one serving the receiver (an in-process collector, tests).
            #[cfg(feature = "otel")]
            if let Some(otel) = otel {
                let _ = tokio::task::spawn_blocking(move || drop(otel)).await;
            }
            drop(sampler);
        });
        Ok(Running {
            admin: admin_state,
            state,
            stop: stop_tx,
            task,
            proxy_addr,
            admin_addr,
        })
    }
}

/// A started application.
#[derive(Debug)]
pub struct Running {
    /// What the admin endpoints read: accounting's books and records, meter health.
    pub admin: Arc<AdminState>,
    /// The data plane's shared state (in-flight registry, clock).
    pub state: Arc<ProxyState>,
    /// The proxy listener's address.
    pub proxy_addr: Option<SocketAddr>,
    /// The admin listener's address.
    pub admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the graceful shutdown: listeners close, in-flight requests drain within the grace.
    pub fn shutdown(&self) {
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        let _ = self.stop.send(true);
    }

    /// Waits until the drain is over and the background threads have stopped.
    pub async fn wait(self) {
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "server task failed");
        }
    }
}

/// A per-process random salt (std's `RandomState` is seeded from the OS's randomness).
fn random_salt() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut salt = Vec::with_capacity(16);
    for i in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        salt.extend_from_slice(&h.finish().to_le_bytes());
    }
    salt
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;

    fn ledger_of(args: ServeArgs) -> LedgerConfig {
        let config = Config::resolve(&args, &Default::default(), None).expect("valid config");
        accounting_config(&config).ledger
    }

    #[test]
    fn the_hold_for_the_calibration_is_in_ticks_and_off_in_settled_mode() {
        let args = || ServeArgs {
            sample_interval_ms: Some(50),
            settle_lag_ms: Some(3_000),
            calibration_hold_ms: Some(10_000),
            ..ServeArgs::default()
        };
        let l = ledger_of(args());
        assert_eq!((l.settle_ticks, l.calibration_hold_ticks), (60, 200));
        let l = ledger_of(ServeArgs {
            response_energy: Some("settled".into()),
            ..args()
        });
        assert_eq!((l.settle_ticks, l.calibration_hold_ticks), (60, 0));
    }
}
