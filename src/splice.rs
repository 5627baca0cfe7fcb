//! The splice: bytes both ways between client and upstream until both sides are done.
//!
//! Each direction is its own loop so that a half-close (EOF one way) is forwarded as a
//! write shutdown while the other way keeps flowing. Byte counts are kept in a local
//! and published to the shared counters in batches, so a chunk costs one add.
//! The loop is the place where frame tracking (close codes, size limits) will hook in.

use std::io;
use std::time::Instant;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::metrics::RouteMetrics;

/// Buffer per direction; large enough for a full TLS record.
const BUF_SIZE: usize = 16 * 1024;
/// Publish byte counts at least this often (in bytes) on long transfers.
const FLUSH_EVERY: u64 = 64 * 1024;
/// ... or every this many chunks.
const FLUSH_CHUNKS: u32 = 32;

/// Who ended the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions reached EOF (a clean close).
    Closed,
    /// An I/O error on either side.
    Error,
    /// The gateway stopped it (drain deadline).
    Shutdown,
}

/// What a finished tunnel reports for logs.
#[derive(Debug, Clone, Copy)]
pub struct SpliceReport {
    /// How it ended.
    pub ended: Ended,
    /// Bytes client → upstream.
    pub client_to_upstream: u64,
    /// Bytes upstream → client.
    pub upstream_to_client: u64,
}

/// Keeps `wsgate_connections_active` right however the tunnel ends (even on panic).
struct ActiveGuard<'a>(&'a RouteMetrics, Instant);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
        self.0
            .connection_duration
            .observe(self.1.elapsed().as_secs_f64());
    }
}

/// Copies both ways until both directions end, an error occurs, or `stop` fires.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    metrics: &RouteMetrics,
    stop: CancellationToken,
) -> SpliceReport
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    metrics.active.inc();
    let _guard = ActiveGuard(metrics, Instant::now());
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let mut c2u = 0u64;
    let mut u2c = 0u64;
    let ended = {
        let forward = pump(&mut client_r, &mut up_w, &metrics.bytes_c2u, &mut c2u);
        let backward = pump(&mut up_r, &mut client_w, &metrics.bytes_u2c, &mut u2c);
        tokio::select! {
            r = async { tokio::try_join!(forward, backward) } => match r {
                Ok(_) => Ended::Closed,
                Err(_) => Ended::Error,
            },
            _ = stop.cancelled() => Ended::Shutdown,
        }
    };
    if ended != Ended::Closed {
        // Best effort: tell both peers we are done rather than leaving them to time out.
        let _ = client_w.shutdown().await;
        let _ = up_w.shutdown().await;
    }
    SpliceReport {
        ended,
        client_to_upstream: c2u,
        upstream_to_client: u2c,
    }
}

/// Local byte tally, published in batches and on drop (so a cancelled pump still counts).
struct Tally<'a> {
    counter: &'a IntCounter,
    total: &'a mut u64,
    unpublished: u64,
    chunks: u32,
}

impl Tally<'_> {
    #[inline]
    fn add(&mut self, n: usize) {
        *self.total += n as u64;
        self.unpublished += n as u64;
        self.chunks += 1;
        // Batching keeps the shared atomic off the per-chunk path, while chatty
        // small-message tunnels still show up within a few dozen messages.
        if self.unpublished >= FLUSH_EVERY || self.chunks >= FLUSH_CHUNKS {
            self.publish();
        }
    }

    fn publish(&mut self) {
        if self.unpublished > 0 {
            self.counter.inc_by(self.unpublished);
        }
        self.unpublished = 0;
        self.chunks = 0;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

async fn pump<R, W>(r: &mut R, w: &mut W, counter: &IntCounter, total: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tally = Tally {
        counter,
        total,
        unpublished: 0,
        chunks: 0,
    };
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        // TLS writers may hold a record back until flushed; for TCP this is free.
        w.flush().await?;
        tally.add(n);
    }
}
