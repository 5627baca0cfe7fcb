//! The splice: bytes both ways between client and upstream until both sides are done.
//!
//! One future drives both directions (no split, no lock). A tunnel holds no buffer of its
//! own: each poll reads into a per-thread scratch buffer and writes straight through, and
//! only bytes the other side cannot take yet are copied to the heap until they are written.
//! An idle tunnel therefore costs only its sockets and a few words of state.
//! A half-close (EOF one way) is forwarded as a write shutdown while the other way keeps
//! flowing. Byte counts are kept in a local and published to the shared counters in
//! batches. The per-direction step is where frame tracking (close codes, size limits) will
//! hook in.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::RouteMetrics;
use crate::registry::{CloseReason, StopReason, TunnelInfo};
use crate::upstream::UpstreamStream;
use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per-thread scratch buffer: one large read per readiness event, at no per-tunnel cost.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Publish byte counts at least this often (in bytes) on long transfers.
const FLUSH_EVERY: u64 = 64 * 1024;
/// ... or every this many chunks.
const FLUSH_CHUNKS: u32 = 32;

thread_local! {
    // Borrowed only inside one poll call, so it is never held across an await.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// Who ended the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions reached EOF (a clean close).
    Closed,
    /// An I/O error on either side.
    Error,
    /// The gateway stopped it (idle, drain deadline, kick, expiry...).
    Stopped(StopReason),
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
    /// Why it ended (metrics, access log, events).
    pub reason: CloseReason,
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

/// Copies both ways until both directions end, an error occurs, or the registry asks
/// the tunnel to stop (idle timeout, drain deadline) through `info`.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    metrics: &RouteMetrics,
    info: Arc<TunnelInfo>,
) -> SpliceReport
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    metrics.active.inc();
    let _guard = ActiveGuard(metrics, Instant::now());
    let mut tunnel = Tunnel {
        client,
        upstream,
        c2u: Direction::new(metrics.bytes_c2u.clone(), true),
        u2c: Direction::new(metrics.bytes_u2c.clone(), false),
        info,
        first: None,
    };
    let ended = (&mut tunnel).await;
    tunnel.c2u.publish();
    tunnel.u2c.publish();
    if ended != Ended::Closed {
        // Best effort and bounded: tell both peers we are done rather than leaving them
        // to time out. Boxed: it runs once at the end, so its timer needn't live inline in
        // every idle tunnel's future.
        let Tunnel {
            client, upstream, ..
        } = &mut tunnel;
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async {
            let _ = poll_fn(|cx| Pin::new(&mut *client).poll_shutdown(cx)).await;
            let _ = poll_fn(|cx| Pin::new(&mut *upstream).poll_shutdown(cx)).await;
        }))
        .await;
    }
    let closed_by = match ended {
        Ended::Stopped(_) => ClosedBy::Gateway,
        _ => tunnel.first.unwrap_or(ClosedBy::Client),
    };
    let reason = match (ended, closed_by) {
        (Ended::Stopped(r), _) => r.close_reason(),
        (Ended::Error, _) => CloseReason::Error,
        (Ended::Closed, ClosedBy::Upstream) => CloseReason::Upstream,
        (Ended::Closed, _) => CloseReason::Client,
    };
    SpliceReport {
        ended,
        client_to_upstream: tunnel.info.client_to_upstream.load(Ordering::Relaxed),
        upstream_to_client: tunnel.info.upstream_to_client.load(Ordering::Relaxed),
        closed_by,
        reason,
    }
}

/// The steady state of a tunnel, as a plain struct rather than an `async` block: its size
/// is what an idle tunnel costs, so it holds only the two sides, two small direction
/// states and the registry entry.
struct Tunnel<C, U> {
    client: C,
    upstream: U,
    c2u: Direction,
    u2c: Direction,
    info: Arc<TunnelInfo>,
    first: Option<ClosedBy>,
}

impl<C, U> Future for Tunnel<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let t = self.get_mut();
        // Register before checking, so a stop that lands in between still wakes us.
        t.info.register_waker(cx.waker());
        if let Some(reason) = t.info.stop_reason() {
            return Poll::Ready(Ended::Stopped(reason));
        }
        let info = &*t.info;
        let a = t.c2u.poll(cx, &mut t.client, &mut t.upstream, info);
        let b = t.u2c.poll(cx, &mut t.upstream, &mut t.client, info);
        if t.first.is_none() {
            // Remember who hung up (or failed) first, for the access log.
            if t.c2u.finished() {
                t.first = Some(ClosedBy::Client);
            } else if t.u2c.finished() {
                t.first = Some(ClosedBy::Upstream);
            }
        }
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => Poll::Ready(Ended::Error),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ended::Closed),
            _ => Poll::Pending,
        }
    }
}

/// One direction of the copy. Byte counts go to the tunnel's own atomics at once (the
/// registry and idle sweeper read them) and to the shared route counter in batches.
struct Direction {
    /// Bytes read but not yet accepted by the writer (rare: only under backpressure).
    pending: Option<Box<(Vec<u8>, usize)>>,
    state: DirState,
    client_to_upstream: bool,
    chunks: u32,
    unpublished: u64,
    counter: IntCounter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirState {
    Copying,
    /// The reader hit EOF; pending bytes are flushed, then the writer is shut down.
    ShuttingDown,
    Done,
}

enum Read {
    Pending,
    Eof,
    Moved(usize),
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.publish();
    }
}

impl Direction {
    fn new(counter: IntCounter, client_to_upstream: bool) -> Self {
        Direction {
            pending: None,
            state: DirState::Copying,
            client_to_upstream,
            chunks: 0,
            unpublished: 0,
            counter,
        }
    }

    #[inline]
    fn add(&mut self, n: usize, info: &TunnelInfo) {
        let total = if self.client_to_upstream {
            &info.client_to_upstream
        } else {
            &info.upstream_to_client
        };
        total.fetch_add(n as u64, Ordering::Relaxed);
        self.unpublished += n as u64;
        self.chunks += 1;
        // Batching keeps the shared route counter off the per-chunk path, while chatty
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

    /// The reader side has ended (EOF or error) and nothing more will be read.
    fn finished(&self) -> bool {
        self.state != DirState::Copying
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        info: &TunnelInfo,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let result = self.poll_inner(cx, r, w, info);
        if let Poll::Ready(Err(_)) = result {
            self.state = DirState::Done;
        }
        result
    }

    fn poll_inner<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        info: &TunnelInfo,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some(pending) = &mut self.pending {
                let (buf, off) = &mut **pending;
                while *off < buf.len() {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[*off..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *off += n;
                }
                self.pending = None;
            }
            match self.state {
                DirState::Done => return Poll::Ready(Ok(())),
                DirState::ShuttingDown => {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.state = DirState::Done;
                    return Poll::Ready(Ok(()));
                }
                DirState::Copying => {}
            }
            let step = SCRATCH.with_borrow_mut(|scratch| self.read_and_write(cx, r, w, scratch))?;
            match step {
                Read::Moved(n) => self.add(n, info),
                Read::Eof => self.state = DirState::ShuttingDown,
                Read::Pending => {
                    // Nothing to read: push out anything a TLS writer still buffers, so
                    // a small message isn't held back until the next one.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut *w).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Reads once into `scratch` and writes as much as the writer takes right now; the
    /// rest is copied into `pending`.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        scratch: &mut [u8],
    ) -> io::Result<Read>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut rb = ReadBuf::new(scratch);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Pending => return Ok(Read::Pending),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) => {}
        }
        let data = rb.filled();
        if data.is_empty() {
            return Ok(Read::Eof);
        }
        let mut off = 0;
        while off < data.len() {
            match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.pending = Some(Box::new((data[off..].to_vec(), 0)));
                    break;
                }
            }
        }
        Ok(Read::Moved(data.len()))
    }
}

/// Either side of a tunnel, unwrapped from hyper's `Upgraded` where its type is known,
/// so the splice is one instantiation and reads skip hyper's boxed wrapper. TLS
/// streams are boxed: they are large, and the plain variant keeps the tunnel small.
pub enum Side {
    /// Plain TCP (client or upstream).
    Tcp(Prebuffered<TcpStream>),
    /// TLS client of a `wss://` listener.
    ServerTls(Box<Prebuffered<tokio_rustls::server::TlsStream<TcpStream>>>),
    /// TLS to a `wss://` upstream.
    ClientTls(Box<Prebuffered<tokio_rustls::client::TlsStream<TcpStream>>>),
    /// Anything else, still behind hyper's wrapper.
    Upgraded(TokioIo<Upgraded>),
}

impl Side {
    /// The client side of an upgraded connection.
    pub fn client(u: Upgraded) -> Side {
        match u.downcast::<TokioIo<TcpStream>>() {
            Ok(p) => Side::Tcp(Prebuffered::new(p.io.into_inner(), p.read_buf)),
            Err(u) => match u.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
                Ok(p) => Side::ServerTls(Box::new(Prebuffered::new(p.io.into_inner(), p.read_buf))),
                Err(u) => Side::Upgraded(TokioIo::new(u)),
            },
        }
    }

    /// The upstream side of an upgraded connection.
    pub fn upstream(u: Upgraded) -> Side {
        match u.downcast::<TokioIo<UpstreamStream>>() {
            Ok(p) => match p.io.into_inner() {
                UpstreamStream::Plain(tcp) => Side::Tcp(Prebuffered::new(tcp, p.read_buf)),
                UpstreamStream::Tls(tls) => {
                    Side::ClientTls(Box::new(Prebuffered::new(*tls, p.read_buf)))
                }
            },
            Err(u) => Side::Upgraded(TokioIo::new(u)),
        }
    }
}

macro_rules! side_dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Side::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Side::ServerTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Side::ClientTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Side::Upgraded($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Side {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        side_dispatch!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Side {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        side_dispatch!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        side_dispatch!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        side_dispatch!(self, s => s.poll_shutdown(cx))
    }
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
        // `pre` is a view into hyper's whole read buffer (8 KiB or more): keep only the
        // bytes themselves, so an idle tunnel doesn't pin that buffer for its lifetime.
        let pre = if pre.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&pre)
        };
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
            if this.pre.is_empty() {
                this.pre = Bytes::new();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
}

/// The tunnel's own contract, on in-memory pipes: byte-exactness under backpressure,
/// half-close each way, a stop that races a blocked write, and errors on either side.
#[cfg(test)]
mod tunnel_tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::StopReason;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn info() -> Arc<TunnelInfo> {
        Arc::new(TunnelInfo::new(
            1,
            "/t".into(),
            None,
            std::net::Ipv4Addr::LOCALHOST.into(),
        ))
    }

    /// (client peer, upstream peer, gateway's client side, gateway's upstream side), with
    /// pipes of `cap` bytes so that writes block as soon as a reader falls behind.
    fn pipes(cap: usize) -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
        let (client, gate_c) = duplex(cap);
        let (upstream, gate_u) = duplex(cap);
        (client, upstream, gate_c, gate_u)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A peer that sends `data` then half-closes while reading everything it is sent.
    async fn send_and_drain(peer: DuplexStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(peer);
        let writer = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, n) = tokio::join!(writer, r.read_to_end(&mut got));
        n.unwrap();
        got
    }

    #[tokio::test]
    async fn bytes_are_exact_both_ways_under_backpressure() {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        // A 64-byte pipe against a 64 KiB scratch read: nearly every chunk hits the
        // pending-copy path.
        let (client, upstream, gc, gu) = pipes(64);
        let info = info();
        let tunnel = tokio::spawn({
            let rm = rm.clone();
            let info = info.clone();
            async move { splice(gc, gu, &rm, info).await }
        });
        let up_data = pattern(300_000, 7);
        let down_data = pattern(200_000, 99);
        let c_task = tokio::spawn(send_and_drain(client, up_data.clone()));
        let u_task = tokio::spawn(send_and_drain(upstream, down_data.clone()));
        let at_upstream = u_task.await.unwrap();
        let at_client = c_task.await.unwrap();
        let report = tunnel.await.unwrap();
        assert!(at_upstream == up_data, "client → upstream bytes differ");
        assert!(at_client == down_data, "upstream → client bytes differ");
        assert_eq!(report.ended, Ended::Closed);
        assert_eq!(report.client_to_upstream, up_data.len() as u64);
        assert_eq!(report.upstream_to_client, down_data.len() as u64);
        assert_eq!(
            rm.bytes_c2u.get(),
            up_data.len() as u64,
            "batched counter flushed"
        );
        assert_eq!(rm.bytes_u2c.get(), down_data.len() as u64);
        assert_eq!(rm.active.get(), 0);
    }

    async fn half_close(client_first: bool) {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        let (client, upstream, gc, gu) = pipes(1024);
        let tunnel = tokio::spawn({
            let rm = rm.clone();
            let info = info();
            async move { splice(gc, gu, &rm, info).await }
        });
        // `a` hangs up its sending side first; `b` must see EOF and still be able to answer.
        let (mut a, mut b) = if client_first {
            (client, upstream)
        } else {
            (upstream, client)
        };
        a.write_all(b"last words").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), b.read_to_end(&mut got))
            .await
            .expect("EOF was not forwarded")
            .unwrap();
        assert_eq!(got, b"last words");
        assert!(
            !tunnel.is_finished(),
            "one closed direction ended the tunnel"
        );
        b.write_all(b"reply after half-close").await.unwrap();
        let mut buf = [0u8; 64];
        let n = a.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"reply after half-close");
        b.shutdown().await.unwrap();
        assert_eq!(
            a.read(&mut buf).await.unwrap(),
            0,
            "second EOF not forwarded"
        );
        let report = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("tunnel did not end after both EOFs")
            .unwrap();
        assert_eq!(report.ended, Ended::Closed);
        let first = if client_first {
            ClosedBy::Client
        } else {
            ClosedBy::Upstream
        };
        assert_eq!(report.closed_by, first);
    }

    #[tokio::test]
    async fn client_half_close_keeps_the_other_way_open() {
        half_close(true).await;
    }

    #[tokio::test]
    async fn upstream_half_close_keeps_the_other_way_open() {
        half_close(false).await;
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_tunnel_blocked_on_a_write() {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        let (mut client, upstream, gc, gu) = pipes(64);
        let info = info();
        let tunnel = tokio::spawn({
            let rm = rm.clone();
            let info = info.clone();
            async move { splice(gc, gu, &rm, info).await }
        });
        // The client never reads: the tunnel's write towards it blocks with bytes pending,
        // and the upstream's own write blocks behind it.
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        let writer = tokio::spawn(async move { up_w.write_all(&pattern(4096, 1)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!tunnel.is_finished());
        assert!(
            !writer.is_finished(),
            "backpressure did not reach the upstream"
        );
        info.stop(StopReason::Shutdown);
        let report = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("a stop did not end a tunnel blocked on a write")
            .unwrap();
        assert_eq!(report.ended, Ended::Stopped(StopReason::Shutdown));
        assert_eq!(report.closed_by, ClosedBy::Gateway);
        assert_eq!(rm.active.get(), 0);
        // Both peers learn the tunnel is over: EOF after whatever was already delivered.
        let mut sink = Vec::new();
        client.read_to_end(&mut sink).await.unwrap();
        assert!(sink.len() <= 4096);
        let mut buf = [0u8; 8];
        assert_eq!(up_r.read(&mut buf).await.unwrap(), 0);
        assert!(
            writer.await.unwrap().is_err(),
            "the blocked upstream write was not released"
        );
    }

    /// A side whose reads or writes fail (a reset connection).
    struct Broken {
        read_fails: bool,
        inner: DuplexStream,
    }

    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.read_fails {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            Pin::new(&mut this.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn errors_on_either_side_end_the_tunnel() {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        // Client read fails.
        let (_client, mut upstream, gc, gu) = pipes(1024);
        let broken = Broken {
            read_fails: true,
            inner: gc,
        };
        let report = tokio::time::timeout(Duration::from_secs(5), splice(broken, gu, &rm, info()))
            .await
            .unwrap();
        assert_eq!(
            (report.ended, report.closed_by),
            (Ended::Error, ClosedBy::Client)
        );
        let mut buf = [0u8; 8];
        assert_eq!(
            upstream.read(&mut buf).await.unwrap(),
            0,
            "upstream not told"
        );
        // Upstream write fails while the client sends.
        let (mut client, _upstream, gc, gu) = pipes(1024);
        let broken = Broken {
            read_fails: false,
            inner: gu,
        };
        client.write_all(b"hello").await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), splice(gc, broken, &rm, info()))
            .await
            .unwrap();
        assert_eq!(report.ended, Ended::Error);
        assert_eq!(rm.active.get(), 0);
    }
}
