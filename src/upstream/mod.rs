//! The upstream leg: connect (TCP, optionally TLS), send one request, read the response head.
//! WebSocket upgrades go through [`handshake`]; plain HTTP requests through hyper's client.
//!
//! One connection per client request: an upgraded WebSocket owns its upstream socket
//! for life, and plain HTTP requests on routes are rare (Socket.IO polling, health checks).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::tls_stream::ClientTlsStream;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;

pub mod handshake;

/// Why the upstream leg failed; mapped to 502/504 in `proxy::response`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect or TLS handshake failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// Connect did not finish in time.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// The response head did not arrive in time.
    #[error("upstream {0} did not answer in time")]
    ResponseTimeout(String),
    /// The upstream broke HTTP (garbage, early close).
    #[error("upstream {addr} protocol error: {source}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The upstream's answer to an upgrade is not valid HTTP/1.1 (or exceeds a bound).
    #[error("upstream {addr} protocol error: {why}")]
    Malformed {
        /// `host:port`.
        addr: String,
        /// What was wrong.
        why: &'static str,
    },
    /// Reading or writing the upgrade exchange failed.
    #[error("upstream {addr} connection failed: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: io::Error,
    },
}

impl UpstreamError {
    /// Whether this is a timeout (504) rather than a failure (502).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_)
        )
    }
}

/// A connected upstream socket, plain or TLS.
#[derive(Debug)]
pub enum UpstreamStream {
    /// ws://
    Plain(TcpStream),
    /// wss://
    Tls(Box<ClientTlsStream>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Connects to an upstream, TLS included, within `timeout`.
pub async fn connect(
    upstream: &UpstreamConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<UpstreamStream, UpstreamError> {
    let addr = format!("{}:{}", upstream.host, upstream.port);
    let connect = async {
        let tcp = TcpStream::connect((upstream.host.as_str(), upstream.port))
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Small WebSocket frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if !upstream.tls {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let Some(client_config) = tls else {
            return Err(UpstreamError::Connect {
                addr: addr.clone(),
                source: io::Error::other("no TLS client configuration for wss:// upstream"),
            });
        };
        let name =
            ServerName::try_from(upstream.host.clone()).map_err(|e| UpstreamError::Connect {
                addr: addr.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
        let stream = crate::tls_stream::connect(tcp, client_config.clone(), name)
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::ConnectTimeout(addr)),
    }
}

/// Sends one request over a fresh HTTP/1.1 connection and waits for the response head.
///
/// The connection task runs with upgrades enabled, so a 101 response can be turned
/// into the upstream half of the splice with `hyper::upgrade::on`.
pub async fn send<B>(
    stream: UpstreamStream,
    addr: &str,
    req: Request<B>,
    timeout: Duration,
) -> Result<Response<Incoming>, UpstreamError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Protocol {
                addr: addr.to_owned(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Protocol {
                addr: addr.to_owned(),
                source,
            })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::ResponseTimeout(addr.to_owned())),
    }
}
