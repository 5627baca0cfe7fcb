//! Accept loops: one per configured listener. Each accepted socket gets a connection
//! permit, an optional TLS handshake under a timeout, then `proxy::conn::serve`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{NO_ROUTE, Outcome};
use crate::proxy::Shared;
use crate::proxy::handler::{ClientConn, Handler};
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
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))
}

/// Accepts until draining starts. Survives transient errors (EMFILE included).
pub async fn accept_loop(
    listener: BoundListener,
    state: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.metrics.handshake(NO_ROUTE, Outcome::Limited);
            tracing::warn!(client = %peer.ip(), "connection limit reached, closing new connection");
            drop(stream);
            continue;
        };
        let runtime = state.load_full();
        let shared2 = shared.clone();
        let index = listener.index;
        shared.tracker.spawn(async move {
            handle_connection(stream, peer, index, runtime, shared2, Arc::new(permit)).await;
        });
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let timeouts = runtime.config.timeouts.clone();
    let tls = runtime.listener_tls.get(index).cloned().flatten();
    let draining = shared.draining.clone();
    match tls {
        None => {
            let handler = Handler::new(
                runtime,
                ClientConn { peer, tls: false },
                shared,
                Some(permit),
            );
            crate::proxy::conn::serve(stream, handler, timeouts.request_header, draining).await;
        }
        Some(cfg) => {
            let accept = TlsAcceptor::from(cfg).accept(stream);
            let tls_stream = match tokio::time::timeout(timeouts.tls_handshake, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer.ip(), error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer.ip(), "TLS handshake timed out");
                    return;
                }
            };
            let handler = Handler::new(
                runtime,
                ClientConn { peer, tls: true },
                shared,
                Some(permit),
            );
            crate::proxy::conn::serve(tls_stream, handler, timeouts.request_header, draining).await;
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
