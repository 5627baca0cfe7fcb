//! Serves one client connection (HTTP/1.1, with upgrades) until it ends or the drain asks.

use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::proxy::handler::Handler;

/// Largest request head accepted; hyper answers 431 beyond it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves HTTP on `io` until the client is done, with a graceful stop on `draining`.
pub async fn serve<I>(
    io: I,
    handler: Handler,
    header_timeout: Duration,
    draining: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handler.clone().handle(req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "client connection ended with an error");
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
