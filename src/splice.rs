//! The splice: bytes both ways between client and upstream until both sides are done.
//!
//! Each direction is its own loop so that a half-close (EOF one way) is forwarded as a
//! write shutdown while the other way keeps flowing. Byte counts are kept in a local
//! and published to the shared counters in batches, so a chunk costs one add.
//! The loop is the place where frame tracking (close codes, size limits) will hook in.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::IntCounter;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
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
    /// No bytes either way for `timeouts.tunnel_idle`.
    Idle,
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
    /// Which side ended it first.
    pub closed_by: ClosedBy,
}

/// Which side ended a tunnel first (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client closed (or failed) first.
    Client,
    /// The upstream closed (or failed) first.
    Upstream,
    /// The gateway closed it (idle timeout, drain deadline).
    Gateway,
}

impl ClosedBy {
    /// Log value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Gateway => "gateway",
        }
    }
}

const NOBODY: u8 = 0;
const CLIENT: u8 = 1;
const UPSTREAM: u8 = 2;

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

/// Copies both ways until both directions end, an error occurs, the tunnel is idle for
/// `idle` (zero = never), or `stop` fires.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    metrics: &RouteMetrics,
    idle: Duration,
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
    // Totals double as the activity signal for the idle check: one relaxed add per chunk
    // on an uncontended cache line, no timer reset per chunk.
    let c2u = AtomicU64::new(0);
    let u2c = AtomicU64::new(0);
    let first = AtomicU8::new(NOBODY);
    let ended = {
        let forward = pump(
            &mut client_r,
            &mut up_w,
            &metrics.bytes_c2u,
            &c2u,
            &first,
            CLIENT,
        );
        let backward = pump(
            &mut up_r,
            &mut client_w,
            &metrics.bytes_u2c,
            &u2c,
            &first,
            UPSTREAM,
        );
        tokio::select! {
            r = async { tokio::try_join!(forward, backward) } => match r {
                Ok(_) => Ended::Closed,
                Err(_) => Ended::Error,
            },
            _ = idle_watch(idle, &c2u, &u2c) => Ended::Idle,
            _ = stop.cancelled() => Ended::Shutdown,
        }
    };
    if ended != Ended::Closed {
        // Best effort: tell both peers we are done rather than leaving them to time out.
        let _ = client_w.shutdown().await;
        let _ = up_w.shutdown().await;
    }
    let closed_by = match (ended, first.load(Ordering::Relaxed)) {
        (Ended::Idle | Ended::Shutdown, _) => ClosedBy::Gateway,
        (_, UPSTREAM) => ClosedBy::Upstream,
        _ => ClosedBy::Client,
    };
    SpliceReport {
        ended,
        client_to_upstream: c2u.load(Ordering::Relaxed),
        upstream_to_client: u2c.load(Ordering::Relaxed),
        closed_by,
    }
}

/// Plain TCP on both sides: the same splice, but no buffer is held while the tunnel is
/// idle. Each direction waits for readiness, reads into a per-thread scratch buffer and
/// writes straight through; only bytes the peer cannot take yet are copied to the heap.
/// `client_pre`/`upstream_pre` are bytes hyper had already read past the HTTP heads.
pub async fn splice_tcp(
    client: TcpStream,
    upstream: TcpStream,
    client_pre: Bytes,
    upstream_pre: Bytes,
    metrics: &RouteMetrics,
    idle: Duration,
    stop: CancellationToken,
) -> SpliceReport {
    metrics.active.inc();
    let _guard = ActiveGuard(metrics, Instant::now());
    let c2u = AtomicU64::new(0);
    let u2c = AtomicU64::new(0);
    let first = AtomicU8::new(NOBODY);
    let ended = {
        let forward = pump_tcp(
            &client,
            &upstream,
            client_pre,
            &metrics.bytes_c2u,
            &c2u,
            &first,
            CLIENT,
        );
        let backward = pump_tcp(
            &upstream,
            &client,
            upstream_pre,
            &metrics.bytes_u2c,
            &u2c,
            &first,
            UPSTREAM,
        );
        tokio::select! {
            r = async { tokio::try_join!(forward, backward) } => match r {
                Ok(_) => Ended::Closed,
                Err(_) => Ended::Error,
            },
            _ = idle_watch(idle, &c2u, &u2c) => Ended::Idle,
            _ = stop.cancelled() => Ended::Shutdown,
        }
    };
    if ended != Ended::Closed {
        let _ = SockRef::from(&client).shutdown(Shutdown::Write);
        let _ = SockRef::from(&upstream).shutdown(Shutdown::Write);
    }
    let closed_by = match (ended, first.load(Ordering::Relaxed)) {
        (Ended::Idle | Ended::Shutdown, _) => ClosedBy::Gateway,
        (_, UPSTREAM) => ClosedBy::Upstream,
        _ => ClosedBy::Client,
    };
    SpliceReport {
        ended,
        client_to_upstream: c2u.load(Ordering::Relaxed),
        upstream_to_client: u2c.load(Ordering::Relaxed),
        closed_by,
    }
}

thread_local! {
    // One scratch buffer per worker thread, borrowed only inside a single poll.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BUF_SIZE].into_boxed_slice());
}

/// Writes all of `data` to `w`, waiting for writability as needed.
async fn write_all_tcp(w: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

enum Step {
    /// Readiness was spurious.
    Again,
    /// EOF from the reader.
    Eof,
    /// `n` bytes moved; `rest` could not be written yet.
    Moved(usize, Option<Vec<u8>>),
}

async fn pump_tcp(
    r: &TcpStream,
    w: &TcpStream,
    pre: Bytes,
    counter: &IntCounter,
    total: &AtomicU64,
    first: &AtomicU8,
    side: u8,
) -> io::Result<()> {
    let mut tally = Tally {
        counter,
        total,
        unpublished: 0,
        chunks: 0,
    };
    let result = async {
        if !pre.is_empty() {
            write_all_tcp(w, &pre).await?;
            tally.add(pre.len());
        }
        drop(pre);
        loop {
            r.readable().await?;
            let step = SCRATCH.with_borrow_mut(|buf| -> io::Result<Step> {
                let n = match r.try_read(buf) {
                    Ok(0) => return Ok(Step::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
                    Err(e) => return Err(e),
                };
                let mut off = 0;
                while off < n {
                    match w.try_write(&buf[off..n]) {
                        Ok(k) => off += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Step::Moved(n, Some(buf[off..n].to_vec())));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(Step::Moved(n, None))
            })?;
            match step {
                Step::Again => continue,
                Step::Eof => {
                    let _ =
                        first.compare_exchange(NOBODY, side, Ordering::Relaxed, Ordering::Relaxed);
                    return SockRef::from(w).shutdown(Shutdown::Write);
                }
                Step::Moved(n, rest) => {
                    if let Some(rest) = rest {
                        write_all_tcp(w, &rest).await?;
                    }
                    tally.add(n);
                }
            }
        }
    }
    .await;
    if result.is_err() {
        let _ = first.compare_exchange(NOBODY, side, Ordering::Relaxed, Ordering::Relaxed);
    }
    result
}

/// A stream that first yields bytes already read from it (hyper's read-ahead past the
/// HTTP head), then reads from the stream itself.
pub struct Prebuffered<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Prebuffered<T> {
    /// Wraps `inner`, replaying `pre` first.
    pub fn new(inner: T, pre: Bytes) -> Self {
        Prebuffered { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prebuffered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prebuffered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Resolves once no byte moved either way for `idle`; never when `idle` is zero.
async fn idle_watch(idle: Duration, a: &AtomicU64, b: &AtomicU64) {
    if idle.is_zero() {
        return std::future::pending().await;
    }
    // Check four times per period: a tunnel is closed between 1 and 1.25 periods idle.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut last = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() >= idle {
            return;
        }
    }
}

/// Local byte tally, published in batches and on drop (so a cancelled pump still counts).
struct Tally<'a> {
    counter: &'a IntCounter,
    total: &'a AtomicU64,
    unpublished: u64,
    chunks: u32,
}

impl Tally<'_> {
    #[inline]
    fn add(&mut self, n: usize) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
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

async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    counter: &IntCounter,
    total: &AtomicU64,
    first: &AtomicU8,
    side: u8,
) -> io::Result<()>
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
    let result = async {
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                // Remember who hung up first, then pass the half-close on.
                let _ = first.compare_exchange(NOBODY, side, Ordering::Relaxed, Ordering::Relaxed);
                return w.shutdown().await;
            }
            w.write_all(&buf[..n]).await?;
            // TLS writers may hold a record back until flushed; for TCP this is free.
            w.flush().await?;
            tally.add(n);
        }
    }
    .await;
    if result.is_err() {
        let _ = first.compare_exchange(NOBODY, side, Ordering::Relaxed, Ordering::Relaxed);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prebuffered_replays_then_reads_through() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut p = Prebuffered::new(b, Bytes::from_static(b"hello"));
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_watch_fires_only_without_traffic() {
        let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
        let started = tokio::time::Instant::now();
        idle_watch(Duration::from_secs(4), &a, &b).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(4) && waited <= Duration::from_secs(5),
            "{waited:?}"
        );

        // Traffic every second keeps it from firing for as long as it lasts.
        let started = tokio::time::Instant::now();
        let watch = idle_watch(Duration::from_secs(4), &a, &b);
        let traffic = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                a.fetch_add(1, Ordering::Relaxed);
            }
            std::future::pending::<()>().await
        };
        tokio::select! { _ = watch => {}, _ = traffic => {} }
        assert!(
            started.elapsed() >= Duration::from_secs(14),
            "{:?}",
            started.elapsed()
        );
    }
}
