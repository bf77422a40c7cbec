//! The network keys: the proxy and admin listeners, the upstream, body and inspection bounds,
//! connection and admission limits, and the timeouts (`listen` .. `max_buffered_response_bytes`).

use std::net::SocketAddr;

use super::layer::{invalid, parse_addr, positive, Layer};
use crate::cli::ServeArgs;
use crate::config::{defaults, ConfigError, FileConfig, Origin, UpstreamUrl};

/// The network keys, validated; durations still in milliseconds.
pub(super) struct Network {
    pub(super) listen: SocketAddr,
    pub(super) admin_listen: SocketAddr,
    pub(super) admin_origin: Origin,
    pub(super) upstream: UpstreamUrl,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_inspect_bytes: u64,
    pub(super) max_inspect_total_bytes: u64,
    pub(super) max_connections: u64,
    pub(super) max_inflight_requests: u64,
    pub(super) max_inflight_tokens: u64,
    pub(super) max_queue: u64,
    pub(super) queue_timeout_ms: u64,
    pub(super) admission_default_max_tokens: u64,
    pub(super) connect_timeout_ms: u64,
    pub(super) header_timeout_ms: u64,
    pub(super) upstream_idle_timeout_ms: u64,
    pub(super) header_read_timeout_ms: u64,
    pub(super) shutdown_grace_ms: u64,
    pub(super) max_buffered_response_bytes: u64,
}

/// Resolves and validates the listeners, the upstream and the proxy's limits and timeouts, in the order [`crate::config::Config::resolve`] always did.
pub(super) fn resolve(
    l: &Layer<'_>,
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Network, ConfigError> {
    let listen = parse_addr(
        "listen",
        l.pick(
            &args.listen,
            &file.listen,
            defaults::LISTEN.into(),
            "listen",
            "JOULEGATE_LISTEN",
        ),
    )?;
    let (admin_raw, admin_origin) = l.pick(
        &args.admin_listen,
        &file.admin_listen,
        defaults::ADMIN_LISTEN.into(),
        "admin-listen",
        "JOULEGATE_ADMIN_LISTEN",
    );
    let admin_listen = parse_addr("admin_listen", (admin_raw, admin_origin.clone()))?;
    if listen == admin_listen && listen.port() != 0 {
        return Err(invalid(
            "admin_listen",
            admin_listen,
            Origin::Flag { flag: "admin-listen", env: "JOULEGATE_ADMIN_LISTEN" },
            "must differ from `listen` (the upstream's own /metrics stays reachable through the proxy port)",
        ));
    }
    let (upstream_raw, upstream_origin) = l.pick(
        &args.upstream,
        &file.upstream,
        defaults::UPSTREAM.into(),
        "upstream",
        "JOULEGATE_UPSTREAM",
    );
    let upstream = UpstreamUrl::parse(&upstream_raw)
        .map_err(|reason| invalid("upstream", &upstream_raw, upstream_origin, reason))?;
    // 0 turns the cap off (so that a flag or variable can undo a file's value).
    let max_body_bytes = l
        .pick(
            &args.max_body_bytes.map(Some),
            &file.max_body_bytes.map(Some),
            None,
            "max-body-bytes",
            "JOULEGATE_MAX_BODY_BYTES",
        )
        .0
        .filter(|&n| n > 0);
    let (max_inspect_bytes, inspect_origin) = l.pick(
        &args.max_inspect_bytes,
        &file.max_inspect_bytes,
        defaults::MAX_INSPECT_BYTES,
        "max-inspect-bytes",
        "JOULEGATE_MAX_INSPECT_BYTES",
    );
    if !(1..=defaults::MAX_INSPECT_BYTES_LIMIT).contains(&max_inspect_bytes) {
        return Err(invalid(
            "max_inspect_bytes",
            max_inspect_bytes,
            inspect_origin,
            format!("must be within 1..={}", defaults::MAX_INSPECT_BYTES_LIMIT),
        ));
    }
    let (max_inspect_total_bytes, total_origin) = l.pick(
        &args.max_inspect_total_bytes,
        &file.max_inspect_total_bytes,
        defaults::MAX_INSPECT_TOTAL_BYTES,
        "max-inspect-total-bytes",
        "JOULEGATE_MAX_INSPECT_TOTAL_BYTES",
    );
    if max_inspect_total_bytes < max_inspect_bytes {
        return Err(invalid(
            "max_inspect_total_bytes",
            max_inspect_total_bytes,
            total_origin,
            format!("must be at least max_inspect_bytes ({max_inspect_bytes})"),
        ));
    }
    let max_connections = positive(
        "max_connections",
        l.pick(
            &args.max_connections,
            &file.max_connections,
            defaults::MAX_CONNECTIONS,
            "max-connections",
            "JOULEGATE_MAX_CONNECTIONS",
        ),
    )?;
    let max_inflight_requests = l
        .pick(
            &args.max_inflight_requests,
            &file.max_inflight_requests,
            defaults::MAX_INFLIGHT_REQUESTS,
            "max-inflight-requests",
            "JOULEGATE_MAX_INFLIGHT_REQUESTS",
        )
        .0;
    let max_inflight_tokens = l
        .pick(
            &args.max_inflight_tokens,
            &file.max_inflight_tokens,
            defaults::MAX_INFLIGHT_TOKENS,
            "max-inflight-tokens",
            "JOULEGATE_MAX_INFLIGHT_TOKENS",
        )
        .0;
    let (max_queue, queue_origin) = l.pick(
        &args.max_queue,
        &file.max_queue,
        defaults::MAX_QUEUE,
        "max-queue",
        "JOULEGATE_MAX_QUEUE",
    );
    if max_queue > defaults::MAX_QUEUE_LIMIT {
        return Err(invalid(
            "max_queue",
            max_queue,
            queue_origin,
            format!("must be within 0..={}", defaults::MAX_QUEUE_LIMIT),
        ));
    }
    let (queue_timeout_ms, timeout_origin) = l.pick(
        &args.queue_timeout_ms,
        &file.queue_timeout_ms,
        defaults::QUEUE_TIMEOUT_MS,
        "queue-timeout-ms",
        "JOULEGATE_QUEUE_TIMEOUT_MS",
    );
    if !(1..=defaults::QUEUE_TIMEOUT_MS_LIMIT).contains(&queue_timeout_ms) {
        return Err(invalid(
            "queue_timeout_ms",
            queue_timeout_ms,
            timeout_origin,
            format!("must be within 1..={}", defaults::QUEUE_TIMEOUT_MS_LIMIT),
        ));
    }
    let admission_default_max_tokens = l
        .pick(
            &args.admission_default_max_tokens,
            &file.admission_default_max_tokens,
            defaults::ADMISSION_DEFAULT_MAX_TOKENS,
            "admission-default-max-tokens",
            "JOULEGATE_ADMISSION_DEFAULT_MAX_TOKENS",
        )
        .0;
    let connect_timeout_ms = positive(
        "connect_timeout_ms",
        l.pick(
            &args.connect_timeout_ms,
            &file.connect_timeout_ms,
            defaults::CONNECT_TIMEOUT_MS,
            "connect-timeout-ms",
            "JOULEGATE_CONNECT_TIMEOUT_MS",
        ),
    )?;
    let header_timeout_ms = positive(
        "upstream_header_timeout_ms",
        l.pick(
            &args.upstream_header_timeout_ms,
            &file.upstream_header_timeout_ms,
            defaults::UPSTREAM_HEADER_TIMEOUT_MS,
            "upstream-header-timeout-ms",
            "JOULEGATE_UPSTREAM_HEADER_TIMEOUT_MS",
        ),
    )?;
    let upstream_idle_timeout_ms = positive(
        "upstream_idle_timeout_ms",
        l.pick(
            &args.upstream_idle_timeout_ms,
            &file.upstream_idle_timeout_ms,
            defaults::UPSTREAM_IDLE_TIMEOUT_MS,
            "upstream-idle-timeout-ms",
            "JOULEGATE_UPSTREAM_IDLE_TIMEOUT_MS",
        ),
    )?;
    let header_read_timeout_ms = positive(
        "header_read_timeout_ms",
        l.pick(
            &args.header_read_timeout_ms,
            &file.header_read_timeout_ms,
            defaults::HEADER_READ_TIMEOUT_MS,
            "header-read-timeout-ms",
            "JOULEGATE_HEADER_READ_TIMEOUT_MS",
        ),
    )?;
    let (shutdown_grace_ms, _) = l.pick(
        &args.shutdown_grace_ms,
        &file.shutdown_grace_ms,
        defaults::SHUTDOWN_GRACE_MS,
        "shutdown-grace-ms",
        "JOULEGATE_SHUTDOWN_GRACE_MS",
    );
    let max_buffered_response_bytes = l
        .pick(
            &args.max_buffered_response_bytes,
            &file.max_buffered_response_bytes,
            defaults::MAX_BUFFERED_RESPONSE_BYTES,
            "max-buffered-response-bytes",
            "JOULEGATE_MAX_BUFFERED_RESPONSE_BYTES",
        )
        .0;
    Ok(Network {
        listen,
        admin_listen,
        admin_origin,
        upstream,
        max_body_bytes,
        max_inspect_bytes,
        max_inspect_total_bytes,
        max_connections,
        max_inflight_requests,
        max_inflight_tokens,
        max_queue,
        queue_timeout_ms,
        admission_default_max_tokens,
        connect_timeout_ms,
        header_timeout_ms,
        upstream_idle_timeout_ms,
        header_read_timeout_ms,
        shutdown_grace_ms,
        max_buffered_response_bytes,
    })
}
