//! The application: built from a [`Config`] without binding anything, then served on listeners the
//! caller bound (the binary binds, the library serves; tests bind 127.0.0.1:0), until a shutdown
//! future resolves, then drained (linkerd's app shape, mini-redis `server::run`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminService;
use crate::config::Config;
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
        let state = Arc::new(ProxyState {
            upstream,
            max_body_bytes: config.max_body_bytes,
        });
        App {
            proxy: ProxyService::new(state),
            admin: AdminService::new(),
            config,
        }
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
        let admin = serve_connections(listeners.admin, self.admin, admin_limits, stopped(stop_rx));
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            let _ = stop_tx.send(true);
        };
        tokio::join!(proxy, admin, signal);
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}
