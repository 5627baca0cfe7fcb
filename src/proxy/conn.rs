//! Serves one client connection (HTTP/1.1, with upgrades) until it ends or the drain asks.
//!
//! HTTP/1.1 is served directly rather than through hyper-util's auto (h1/h2 sniffing)
//! builder: sniffing wraps the socket, which would stop the splice from recovering the
//! plain `TcpStream` of an upgraded connection. HTTP/2 (RFC 8441) will be chosen by ALPN.

use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, NO_ROUTE, Outcome};
use crate::proxy::handler::Handler;

/// Largest request head accepted; hyper answers 431 beyond it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves HTTP on `io` until the client is done, with a graceful stop on `draining`.
pub async fn serve<I>(
    io: I,
    handler: Handler,
    header_timeout: Duration,
    draining: CancellationToken,
    metrics: &Metrics,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handler.clone().handle(req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // max_header_size is the hard limit on the head; max_buf_size alone is only checked
        // between reads and lets a head grow past it.
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES + 8 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                // hyper refuses these before any request reaches the handler; count them
                // like the handler's refusals (no route is known yet).
                if e.is_timeout() {
                    metrics.handshake(NO_ROUTE, Outcome::Timeout);
                    tracing::info!(target: "wsgate::access", "request head not received in time, connection closed");
                } else if e.is_parse_too_large() {
                    metrics.handshake(NO_ROUTE, Outcome::Limited);
                    tracing::info!(target: "wsgate::access", status = 431, "request head too large");
                } else {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            }
        }
        _ = draining.cancelled() => {
            // Idle keep-alive connections close now; an in-flight request finishes first.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error while draining");
            }
        }
    }
}
