//! Accept loops shared by the proxy and admin listeners: bounded connections, HTTP/1.1 and h2c on
//! the same port, a bounded wait for request heads (slowloris), the request-head screen
//! ([`super::screen`], proxy listener), accept errors backed off (never fatal), graceful drain on
//! shutdown.
//! (hyper-util's `server_graceful.rs` example, mini-redis `server::run`.)

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::screen::Screened;
use super::BoxError;

/// Runs one connection to its end; its slot is freed then.
fn spawn_connection<C, E>(connection: C, permit: tokio::sync::OwnedSemaphorePermit)
where
    C: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "connection ended with an error");
        }
        drop(permit);
    });
}

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections served at once; the next accept waits for a slot.
    pub max_connections: usize,
    /// How long open connections may finish their requests after shutdown starts.
    pub grace: Duration,
}

/// Per-connection protocol settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Longest time a client may take to send a complete HTTP/1 request head (hyper's
    /// `header_read_timeout`; it also bounds an idle keep-alive connection). After it the
    /// connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// Read HTTP/1 requests through [`super::screen::Screened`] (the proxy listener).
    pub screen_heads: bool,
}

impl Default for ConnOptions {
    /// hyper's default head timeout (30 s), no screen.
    fn default() -> Self {
        ConnOptions {
            header_read_timeout: Duration::from_secs(30),
            screen_heads: false,
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `service` on `listener` until `shutdown` resolves, then drains within `limits.grace`,
/// with the default [`ConnOptions`].
pub async fn serve_connections<S, B>(
    listener: TcpListener,
    service: S,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_connections_with(listener, service, limits, ConnOptions::default(), shutdown).await
}

/// [`serve_connections`] with explicit per-connection options.
pub async fn serve_connections_with<S, B>(
    listener: TcpListener,
    service: S,
    limits: ConnLimits,
    options: ConnOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No `Date` of our own: the upstream's headers (uvicorn sends one) pass as they are.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(super::screen::CONNECTION_BUF_BYTES)
        .auto_date_header(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .auto_date_header(false);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = BACKOFF_START;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    backoff = BACKOFF_START;
                    stream
                }
                Err(err) => {
                    // EMFILE and friends: wait and retry rather than end the server.
                    tracing::warn!(error = %err, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if options.screen_heads {
            let connection = builder
                .serve_connection(TokioIo::new(Screened::new(stream)), service.clone())
                .into_owned();
            spawn_connection(graceful.watch(connection), permit);
        } else {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service.clone())
                .into_owned();
            spawn_connection(graceful.watch(connection), permit);
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace_ms = limits.grace.as_millis() as u64, "grace period over; closing remaining connections");
        }
    }
}
