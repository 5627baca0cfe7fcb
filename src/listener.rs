//! Accept loops: one per configured listener. Each accepted socket gets its permits
//! (global, pending-handshake, per-IP), then an optional PROXY header, an optional TLS
//! handshake under a timeout, then `proxy::conn::serve`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::{NO_ROUTE, Outcome};
use crate::proxy::Shared;
use crate::proxy::handler::{ClientConn, ConnPermits, Handler};
use crate::runtime::Runtime;

/// A bound listener and its position in `config.listeners` (to find its TLS config).
pub struct BoundListener {
    /// Index into `config.listeners` / `Runtime::listener_tls`.
    pub index: usize,
    /// The socket.
    pub tcp: TcpListener,
}

/// Binds a listening socket; errors name the address.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(4096)
    });
    socket.map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))
}

/// Accepts until draining starts. Survives transient errors (EMFILE included).
pub async fn accept_loop(
    listener: BoundListener,
    state: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.draining.cancelled() => break,
            r = listener.tcp.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) if is_per_connection_error(&e) => continue,
            Err(e) => {
                // Out of fds or memory: wait for connections to finish rather than spin.
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = shared.draining.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let runtime = state.load_full();
        let tls = runtime.listener_tls.get(listener.index).cloned().flatten();
        let Ok(connection) = shared.connections.clone().try_acquire_owned() else {
            refuse(&shared, stream, peer, tls.is_none(), "max_connections", 503);
            continue;
        };
        let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
            refuse(
                &shared,
                stream,
                peer,
                tls.is_none(),
                "max_pending_handshakes",
                503,
            );
            continue;
        };
        let shared2 = shared.clone();
        let state2 = state.clone();
        let index = listener.index;
        shared.tracker.spawn(async move {
            handle_connection(
                stream, peer, index, runtime, state2, shared2, connection, pending,
            )
            .await;
        });
    }
}

/// Counts and logs a connection refused by a limit; plain clients get a short HTTP answer.
fn refuse(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    plain: bool,
    limit: &'static str,
    status: u16,
) {
    shared.metrics.handshake(NO_ROUTE, Outcome::Limited);
    tracing::warn!(target: "wsgate::access", client = %peer.ip(), limit, status, "connection refused by a limit");
    if plain {
        // Best effort and bounded: a client that doesn't read just gets closed.
        shared.tracker.spawn(async move {
            let mut stream = stream;
            let msg: &[u8] = if status == 429 {
                b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg)).await;
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_connection(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    index: usize,
    runtime: Arc<Runtime>,
    state: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
    connection: OwnedSemaphorePermit,
    pending: OwnedSemaphorePermit,
) {
    // Counted from here on every path out, like the slot it mirrors.
    let open = shared.metrics.client_connection_opened();
    let _ = stream.set_nodelay(true);
    let timeouts = runtime.config.timeouts.clone();
    let Some(listener) = runtime.config.listeners.get(index) else {
        return;
    };
    if listener.proxy_protocol {
        let trusted = runtime.config.trusted_proxies.as_deref();
        if !crate::forwarded::proxy_header_allowed(peer.ip(), trusted) {
            tracing::info!(target: "wsgate::access", client = %peer.ip(), "PROXY header from a peer outside trusted_proxies refused");
            shared.metrics.handshake(NO_ROUTE, Outcome::BadRequest);
            return;
        }
        let header = crate::proxy_protocol::read_header(&mut stream);
        match tokio::time::timeout(timeouts.request_header, header).await {
            Ok(Ok(Some(addr))) => peer = addr,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::info!(target: "wsgate::access", client = %peer.ip(), error = %e, "PROXY header refused");
                shared.metrics.handshake(NO_ROUTE, Outcome::BadRequest);
                return;
            }
            Err(_) => {
                shared.metrics.handshake(NO_ROUTE, Outcome::Timeout);
                return;
            }
        }
    }
    let limits = &runtime.config.limits;
    let tls = runtime.listener_tls.get(index).cloned().flatten();
    // A trusted proxy's connection carries many clients: the handler counts each upgrade
    // on the client it names instead.
    let trusted = runtime.config.trusted_proxies.as_deref();
    let ip_slot = if crate::limits::slot_at_accept(peer, trusted) {
        let key = crate::limits::ClientKey::new(peer.ip(), limits.ipv6_prefix);
        let Some(slot) = shared
            .limits
            .try_connect(key, limits.max_connections_per_ip)
        else {
            refuse(
                &shared,
                stream,
                peer,
                tls.is_none(),
                "max_connections_per_ip",
                429,
            );
            return;
        };
        Some(slot)
    } else {
        None
    };
    let permits = ConnPermits {
        connection,
        open,
        ip_slot,
        pending: Mutex::new(Some(pending)),
    };
    let draining = shared.draining.clone();
    match tls {
        None => {
            let metrics = shared.metrics.clone();
            let handler = Handler::new(state, ClientConn { peer, tls: false }, shared, permits);
            crate::proxy::conn::serve(stream, handler, timeouts.request_header, draining, &metrics)
                .await;
        }
        Some(cfg) => {
            let accept = crate::tls_stream::accept(stream, cfg);
            let tls_stream = match tokio::time::timeout(timeouts.tls_handshake, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer.ip(), error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.handshake(NO_ROUTE, Outcome::Timeout);
                    tracing::info!(target: "wsgate::access", client = %peer.ip(), "TLS handshake timed out");
                    return;
                }
            };
            // A TLS-ALPN-01 validation ends with the handshake (RFC 8737 §3): no HTTP follows.
            if tls_stream.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                return;
            }
            let metrics = shared.metrics.clone();
            let h2 = tls_stream.alpn_protocol() == Some(crate::tls::ALPN_H2);
            let http2 = runtime
                .config
                .listeners
                .get(index)
                .map(|l| l.http2.clone())
                .unwrap_or_default();
            let handler = Handler::new(state, ClientConn { peer, tls: true }, shared, permits);
            if h2 {
                crate::proxy::conn::serve_h2(
                    tls_stream,
                    handler,
                    &http2,
                    timeouts.request_header,
                    draining,
                    &metrics,
                )
                .await;
            } else {
                crate::proxy::conn::serve(
                    tls_stream,
                    handler,
                    timeouts.request_header,
                    draining,
                    &metrics,
                )
                .await;
            }
        }
    }
}

/// Errors that concern only the one connection being accepted (skip it, go on).
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
