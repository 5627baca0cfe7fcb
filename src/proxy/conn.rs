//! Serves one client connection until it ends or the drain asks: HTTP/1.1 (with upgrades),
//! or HTTP/2 with extended CONNECT (RFC 8441) when TLS negotiated `h2`.
//!
//! The protocol is chosen by ALPN, not by hyper-util's auto (h1/h2 sniffing) builder:
//! sniffing wraps the socket, which would stop the splice from recovering the plain
//! `TcpStream` of an upgraded HTTP/1.1 connection.

use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Metrics, NO_ROUTE, Outcome};
use crate::proxy::handler::Handler;

/// Largest request head accepted; hyper answers 431 beyond it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// HTTP/2 receive window of each stream: what one WebSocket can have in flight towards the
/// gateway (and what a stalled one holds in memory). Small messages never come near it;
/// a stream moving bulk data gets 256 KiB per round trip.
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// HTTP/2 frame size: the default 16 KiB, so a stream sending large messages yields the
/// connection to the others every 16 KiB (a small message is one frame either way).
pub const H2_MAX_FRAME: u32 = 16 * 1024;

/// Largest HTTP/2 connection window (RFC 9113 §6.9.1).
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;

/// The connection's receive window: room for every stream's full window, so streams that
/// stop reading (a slow upstream) can never use up the window the others need.
pub fn h2_connection_window(max_concurrent_streams: u32) -> u32 {
    max_concurrent_streams
        .saturating_mul(H2_STREAM_WINDOW)
        .clamp(H2_STREAM_WINDOW, H2_MAX_WINDOW)
}

/// Spawns HTTP/2 stream tasks on the drain's tracker, like every other connection task.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// Serves HTTP/2 on `io` (TLS negotiated `h2`), with a graceful stop on `draining`.
pub async fn serve_h2<I>(
    io: I,
    handler: Handler,
    settings: &crate::config::Http2Config,
    header_timeout: Duration,
    draining: CancellationToken,
    metrics: &Metrics,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    metrics.client_connection_protocol(crate::metrics::Protocol::H2);
    let first_request = handler.clone();
    let service = service_fn(move |req| handler.clone().handle(req));
    let conn = hyper::server::conn::http2::Builder::new(Tracked(first_request.tracker().clone()))
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(h2_connection_window(settings.max_concurrent_streams))
        .max_frame_size(H2_MAX_FRAME)
        // What the gateway queues per stream towards a client that reads slowly before the
        // upstream is paused: one window's worth.
        .max_send_buf_size(H2_STREAM_WINDOW as usize)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // HTTP/2 has no request-head timeout of its own: a connection that sends no request in
    // time is closed, as HTTP/1.1's header_read_timeout does.
    let head = tokio::time::sleep(header_timeout);
    tokio::pin!(head);
    let mut head_armed = true;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
                }
                return;
            }
            _ = head.as_mut(), if head_armed => {
                head_armed = false;
                if first_request.awaiting_first_request() {
                    metrics.handshake(NO_ROUTE, Outcome::Timeout);
                    tracing::info!(target: "wsgate::access", "no HTTP/2 request received in time, connection closed");
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = draining.cancelled() => {
                // GOAWAY: no new streams; open ones (tunnels included, which the drain
                // deadline stops) finish first.
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/2 client connection ended with an error while draining");
                }
                return;
            }
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client is done, with a graceful stop on `draining`.
pub async fn serve<I>(
    io: I,
    handler: Handler,
    header_timeout: Duration,
    draining: CancellationToken,
    metrics: &Metrics,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    metrics.client_connection_protocol(crate::metrics::Protocol::Http1);
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
