//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`, and `POST /reload` (from
//! loopback only), on its own port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Shared;
use crate::proxy::response::{ProxyBody, full};

/// What `POST /reload` needs: the reloader and the config file to re-read.
#[derive(Clone)]
pub struct ReloadTarget {
    /// Swaps the runtime state.
    pub reloader: crate::Reloader,
    /// The config file given at start-up.
    pub path: PathBuf,
}

/// Serves admin requests until `stop` fires (after the drain, so `/readyz` can say 503).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reload: Option<ReloadTarget>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let reload = reload.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(respond(&req, &shared, peer, reload).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn respond(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
    reload: Option<ReloadTarget>,
) -> Response<ProxyBody> {
    if req.uri().path() == "/reload" {
        return reload_endpoint(req, peer, reload).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(full(shared.metrics.render()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.draining.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn reload_endpoint(
    req: &Request<Incoming>,
    peer: SocketAddr,
    reload: Option<ReloadTarget>,
) -> Response<ProxyBody> {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
    }
    // A reload re-reads files as root-owned config; only local operators may trigger it.
    if !peer.ip().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "reload is accepted from loopback only\n",
        );
    }
    let Some(target) = reload else {
        return text(
            StatusCode::CONFLICT,
            "this gateway was not started from a config file\n",
        );
    };
    let result =
        tokio::task::spawn_blocking(move || target.reloader.reload_from(&target.path)).await;
    match result {
        Ok(Ok(())) => {
            tracing::info!("configuration reloaded (POST /reload)");
            text(StatusCode::OK, "reloaded\n")
        }
        Ok(Err(e)) => {
            tracing::error!("reload refused, old configuration stays: {e}");
            let mut resp = Response::new(full(format!(
                "reload refused, old configuration stays:\n{e}\n"
            )));
            *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            resp
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload failed\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
