//! The application: built from a [`Config`] without binding anything, then served on listeners the
//! caller bound (the binary binds, the library serves; tests bind 127.0.0.1:0), until a shutdown
//! future resolves, then drained (linkerd's app shape, mini-redis `server::run`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use http_body_util::{BodyExt, Empty};

use crate::admin::AdminService;
use crate::clock::Clock;
use crate::config::Config;
use crate::observe::InFlight;
use crate::openai::request::ViewConfig;
use crate::openai::semantics::UsageSemantics;
use crate::proxy::energy::Carbon;
use crate::proxy::inspect::{InspectConfig, SharedSemantics};
use crate::proxy::listen::{serve_connections, ConnLimits};
use crate::proxy::service::{ProxyService, ProxyState};
use crate::proxy::upstream::Upstream;

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

/// A built application, ready to serve.
#[derive(Debug)]
pub struct App {
    config: Config,
    state: Arc<ProxyState>,
    proxy: ProxyService,
    admin: AdminService,
}

impl App {
    /// Builds every part from the configuration; binds nothing, spawns nothing.
    pub fn build(config: Config) -> App {
        let upstream = Upstream::new(
            config.upstream.clone(),
            config.connect_timeout,
            config.upstream_header_timeout,
            config.max_body_bytes,
        );
        let clock = Clock::new();
        let in_flight = Arc::new(InFlight::new());
        let semantics = SharedSemantics::new(match config.absent_include_usage {
            Some(absent) => UsageSemantics {
                absent_include_usage: absent,
                ..UsageSemantics::default()
            },
            None => UsageSemantics::default(),
        });
        let key_salt = match &config.key_salt {
            Some(salt) => salt.as_bytes().to_vec(),
            None => random_salt(),
        };
        let state = Arc::new(ProxyState {
            upstream,
            max_body_bytes: config.max_body_bytes,
            max_buffered_response_bytes: config.max_buffered_response_bytes,
            in_flight,
            clock,
            inspect: InspectConfig {
                view: ViewConfig {
                    bytes_per_token: config.bytes_per_token,
                },
                inject_usage: config.inject_usage,
                energy_in_usage: config.energy_in_usage,
                semantics,
                key_salt,
            },
            carbon: Carbon {
                intensity_g_per_kwh: config.carbon_intensity_g_per_kwh,
                pue: config.pue,
            },
        });
        App {
            proxy: ProxyService::new(state.clone()),
            admin: AdminService::new(),
            state,
            config,
        }
    }

    /// The state shared by the proxy's connections.
    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// Serves both listeners until `shutdown` resolves, then drains in-flight requests within the
    /// configured grace period.
    pub async fn serve(self, listeners: Listeners, shutdown: impl Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = ConnLimits {
            max_connections: self.config.max_connections,
            grace: self.config.shutdown_grace,
        };
        let admin_limits = ConnLimits {
            max_connections: 64,
            grace: self.config.shutdown_grace,
        };
        let proxy = serve_connections(
            listeners.proxy,
            self.proxy,
            limits,
            stopped(stop_rx.clone()),
        );
        if self.config.absent_include_usage.is_none() {
            tokio::spawn(detect_usage_semantics(
                self.state.clone(),
                stopped(stop_rx.clone()),
            ));
        }
        let admin = serve_connections(listeners.admin, self.admin, admin_limits, stopped(stop_rx));
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            let _ = stop_tx.send(true);
        };
        tokio::join!(proxy, admin, signal);
    }
}

/// Reads the upstream's `/version` to learn how it treats an absent `include_usage`, retrying
/// every 2 s until it answers (vLLM may still be loading its model when the proxy starts). Until
/// then the current vLLM behaviour (absent = false) is assumed.
async fn detect_usage_semantics(state: Arc<ProxyState>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let request = http::Request::get("/version")
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .map_err(|e| e.to_string());
        if let (Ok(mut request), Ok(uri)) = (
            request,
            state
                .upstream
                .uri_for(&"/version".parse().unwrap_or_default()),
        ) {
            *request.uri_mut() = uri;
            if let Ok(response) = state.upstream.send(request).await {
                let ok = response.status().is_success();
                if let Ok(body) = response.into_body().collect().await {
                    if let Some(semantics) = ok
                        .then(|| UsageSemantics::from_version_body(&body.to_bytes()))
                        .flatten()
                    {
                        tracing::info!(
                            absent_include_usage = semantics.absent_include_usage,
                            "upstream version read"
                        );
                        state.inspect.semantics.set(semantics);
                        return;
                    }
                }
                tracing::info!("upstream has no usable /version; assuming vLLM >= 0.32 stream_options semantics");
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            () = &mut stop => return,
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
