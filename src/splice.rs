//! The splice: bytes both ways between client and upstream until both sides are done.
//!
//! One future drives both directions (no split, no lock). A tunnel holds no buffer of its
//! own: each poll reads into a per-thread scratch buffer and writes straight through, and
//! only bytes the other side cannot take yet are copied to the heap until they are written.
//! An idle tunnel therefore costs only its sockets and a few words of state.
//! A half-close (EOF one way) is forwarded as a write shutdown while the other way keeps
//! flowing. Byte counts are kept in a local and published to the shared counters in
//! batches.
//!
//! With frame tracking on (the route's `track_frames`), each direction feeds what it reads
//! to a [`FrameTracker`] that follows frame boundaries without copying payloads. That is
//! what lets the gateway put its own frames into the stream (close frames with codes,
//! keepalive pings, pushed messages) only where a frame ends, drop the pongs that answer its
//! pings, enforce `max_message_bytes`, count messages, and tell who sent the first close
//! frame. Bytes of the peers' frames are never rewritten.

use std::borrow::Cow;
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
use tokio::time::{Instant, Sleep};

use crate::config::CloseCodes;
use crate::frames::{self, ControlFrame, Event, FrameTracker, OpCode, Violation};
use crate::metrics::RouteMetrics;
use crate::registry::{CloseReason, StopReason, TunnelInfo};
use crate::upstream::UpstreamStream;
use bytes::Bytes;
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

/// What the splice needs from the route's configuration.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Follow frame boundaries (`track_frames`).
    pub track: bool,
    /// `max_message_bytes`, or [`frames::NO_LIMIT`].
    pub max_message: u64,
    /// How long a gateway-initiated close waits for the peers' close frames.
    pub close_wait: Duration,
    /// The close code for each reason the gateway ends a tunnel.
    pub codes: CloseCodes,
    /// Move bytes between plain TCP sides with splice(2) (the route's `splice`).
    pub splice: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            track: true,
            max_message: frames::NO_LIMIT,
            close_wait: Duration::from_secs(1),
            codes: CloseCodes::default(),
            splice: true,
        }
    }
}

impl SessionOptions {
    /// The close code and reason for a stop, honouring the configured codes.
    fn close_for(&self, reason: StopReason) -> (u16, &'static str) {
        let (_, text) = reason.close_frame();
        let c = &self.codes;
        let code = match reason {
            StopReason::Idle => c.idle,
            StopReason::Shutdown => c.shutdown,
            StopReason::Kicked => c.kicked,
            StopReason::Evicted => c.evicted,
            StopReason::Expired => c.expired,
            StopReason::Lifetime => c.lifetime,
        };
        (code, text)
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions reached EOF (a clean close), or a peer's close frame was answered.
    Closed,
    /// An I/O error on either side.
    Error,
    /// The gateway stopped it (idle, drain deadline, kick, expiry...).
    Stopped(StopReason),
    /// A message exceeded `max_message_bytes`.
    TooBig,
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
    /// The client sent the first close frame (or, untracked, closed or failed first).
    Client,
    /// The upstream did.
    Upstream,
    /// The gateway closed it (idle timeout, drain deadline, kick...).
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
/// the tunnel to stop (idle timeout, drain deadline, kick...) through `info`. `deflate`
/// says whether the handshake negotiated permessage-deflate.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    metrics: &RouteMetrics,
    info: Arc<TunnelInfo>,
    opts: &SessionOptions,
    deflate: bool,
) -> SpliceReport
where
    C: AsyncRead + AsyncWrite + RawTcp + Unpin,
    U: AsyncRead + AsyncWrite + RawTcp + Unpin,
{
    metrics.active.inc();
    let _guard = ActiveGuard(metrics, Instant::now());
    let tracker = |dir| {
        if opts.track {
            FrameTracker::new(dir, deflate)
        } else {
            FrameTracker::off(dir)
        }
    };
    info.set_tracked(opts.track);
    let mut tunnel = Tunnel {
        client,
        upstream,
        c2u: Direction::new(tracker(frames::Direction::ClientToServer)),
        u2c: Direction::new(tracker(frames::Direction::ServerToClient)),
        info,
        opts,
        metrics,
        first: None,
        first_close: None,
        aux: None,
    };
    let ended = (&mut tunnel).await;
    tunnel.info.set_tracked(false);
    tunnel.c2u.publish(metrics);
    tunnel.u2c.publish(metrics);
    for (dir, lost) in [(&tunnel.c2u, "client"), (&tunnel.u2c, "upstream")] {
        if let Some(v) = dir.lost_label() {
            metrics.untrackable(v);
            tracing::info!(
                route = %metrics.route,
                id = tunnel.info.id,
                from = lost,
                violation = v,
                "stopped following WebSocket frames; the tunnel goes on as a byte pipe"
            );
        }
    }
    // After a complete close handshake a plain socket needs no shutdown: the drop below
    // sends its FIN (TLS sides still get their close_notify).
    let over = ended == Ended::Closed && tunnel.c2u.has(SAW_CLOSE) && tunnel.u2c.has(SAW_CLOSE);
    let shut_client = !(over && tunnel.client.splice_writer().is_some());
    let shut_upstream = !(over && tunnel.upstream.splice_writer().is_some());
    let idle = !tunnel.c2u.has_pending() && !tunnel.u2c.has_pending();
    if (ended != Ended::Closed || !(tunnel.c2u.finished_writing() && tunnel.u2c.finished_writing()))
        && !(idle && !shut_client && !shut_upstream)
    {
        // Best effort and bounded: deliver what is still queued (a close frame, often),
        // then tell both peers we are done rather than leaving them to time out. Boxed: it
        // runs once at the end, so its timer needn't live inline in every idle tunnel's
        // future.
        let Tunnel {
            client,
            upstream,
            c2u,
            u2c,
            ..
        } = &mut tunnel;
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async {
            let _ = poll_fn(|cx| u2c.flush_pending(cx, &mut *client)).await;
            let _ = poll_fn(|cx| c2u.flush_pending(cx, &mut *upstream)).await;
            if shut_client {
                let _ = poll_fn(|cx| Pin::new(&mut *client).poll_shutdown(cx)).await;
            }
            if shut_upstream {
                let _ = poll_fn(|cx| Pin::new(&mut *upstream).poll_shutdown(cx)).await;
            }
        }))
        .await;
    }
    let closed_by = match ended {
        Ended::Stopped(_) | Ended::TooBig => ClosedBy::Gateway,
        _ => tunnel
            .first_close
            .or(tunnel.first)
            .unwrap_or(ClosedBy::Client),
    };
    let reason = match (ended, closed_by) {
        (Ended::Stopped(r), _) => r.close_reason(),
        (Ended::TooBig, _) => CloseReason::TooBig,
        (Ended::Error, _) => CloseReason::Error,
        (Ended::Closed, ClosedBy::Upstream) => CloseReason::Upstream,
        (Ended::Closed, _) => CloseReason::Client,
    };
    metrics.closed(reason);
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
/// states and the registry entry. Rare state (a close in progress, frames waiting for a
/// boundary) lives behind one pointer.
struct Tunnel<'a, C, U> {
    client: C,
    upstream: U,
    c2u: Direction,
    u2c: Direction,
    info: Arc<TunnelInfo>,
    opts: &'a SessionOptions,
    metrics: &'a RouteMetrics,
    /// Who hung up (or failed) first at TCP level.
    first: Option<ClosedBy>,
    /// Who sent the first close frame.
    first_close: Option<ClosedBy>,
    aux: Option<Box<Aux>>,
}

/// What a tunnel rarely needs.
#[derive(Default)]
struct Aux {
    /// Frames for the client waiting for a boundary outside a fragmented message (pushed
    /// messages, and a keepalive ping).
    staged: Option<Staged>,
    /// A gateway-initiated close in progress.
    closing: Option<Closing>,
}

struct Staged {
    want: Want,
    /// The payload of the ping in `bytes`, to recognise the client's pong.
    ping: Option<[u8; frames::PING_PAYLOAD_LEN]>,
}

struct Closing {
    ended: Ended,
    /// Close frame for the client, until written.
    to_client: Option<Want>,
    /// Close frame for the upstream (masked), until written.
    to_upstream: Option<Want>,
    /// The client sent its close frame (answer) or its reading side ended.
    client_done: bool,
    upstream_done: bool,
    deadline: Pin<Box<Sleep>>,
}

impl<C, U> Tunnel<'_, C, U> {
    /// Starts a gateway-initiated close: close frames to both peers at their next frame
    /// boundaries, then wait (bounded) for their answers. Without tracking there is no
    /// boundary to put a frame at: the caller closes TCP at once.
    fn begin_close(&mut self, ended: Ended, code: u16, text: &str) -> bool {
        let client_ok = !self.u2c.tracker.is_untrackable() && !self.u2c.finished_writing();
        let upstream_ok = !self.c2u.tracker.is_untrackable() && !self.c2u.finished_writing();
        if !client_ok && !upstream_ok {
            return false;
        }
        let aux = self.aux.get_or_insert_with(Box::default);
        // Pushed messages not yet sent are dropped: the client is about to be closed.
        aux.staged = None;
        aux.closing = Some(Closing {
            ended,
            to_client: client_ok.then(|| Want::control(&frames::close_frame(code, text, None))),
            to_upstream: upstream_ok.then(|| {
                Want::control(&frames::close_frame(
                    code,
                    text,
                    Some(frames::random_mask()),
                ))
            }),
            client_done: !client_ok || self.c2u.finished(),
            upstream_done: !upstream_ok || self.u2c.finished(),
            deadline: Box::pin(tokio::time::sleep(self.opts.close_wait)),
        });
        true
    }

    /// Builds the frames waiting for the client: queued messages and a requested ping.
    fn stage(&mut self) {
        let wants_ping = self.info.take_ping_request();
        let has_mail = self.info.has_mail();
        if !wants_ping && !has_mail {
            return;
        }
        if self.u2c.tracker.is_untrackable() {
            return;
        }
        let aux = self.aux.get_or_insert_with(Box::default);
        if aux.closing.is_some() {
            return;
        }
        let (mut bytes, mut ping) = match aux.staged.take() {
            Some(s) => (Vec::from(s.want.bytes), s.ping),
            None => (Vec::new(), None),
        };
        if wants_ping && ping.is_none() {
            let payload: [u8; frames::PING_PAYLOAD_LEN] = rand::random();
            bytes.extend_from_slice(&frames::ping_frame(&payload, None));
            ping = Some(payload);
        }
        while let Some(msg) = self.info.next_message() {
            bytes.extend_from_slice(&frames::data_frame(msg.kind, &msg.payload, None));
        }
        aux.staged = Some(Staged {
            want: Want {
                bytes: Bytes::from(bytes),
                data: true,
            },
            ping,
        });
    }
}

impl<C, U> Future for Tunnel<'_, C, U>
where
    C: AsyncRead + AsyncWrite + RawTcp + Unpin,
    U: AsyncRead + AsyncWrite + RawTcp + Unpin,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let t = self.get_mut();
        // Register before checking, so a stop that lands in between still wakes us.
        t.info.register_waker(cx.waker());
        let closing = t.aux.as_ref().is_some_and(|a| a.closing.is_some());
        if !closing {
            let stop = if t.c2u.has(TOO_BIG) || t.u2c.has(TOO_BIG) {
                Some((
                    Ended::TooBig,
                    t.opts.codes.too_big,
                    "message too big".to_string(),
                ))
            } else {
                t.info.stop_reason().map(|reason| {
                    let (code, text) = t.info.close_override().unwrap_or_else(|| {
                        let (c, s) = t.opts.close_for(reason);
                        (c, s.to_string())
                    });
                    (Ended::Stopped(reason), code, text)
                })
            };
            if let Some((ended, code, text)) = stop
                && !t.begin_close(ended, code, &text)
            {
                return Poll::Ready(ended);
            }
            t.stage();
        }
        let (want_c2u, want_u2c) = match t.aux.as_deref() {
            Some(Aux {
                closing: Some(c), ..
            }) => (c.to_upstream.as_ref(), c.to_client.as_ref()),
            Some(Aux {
                staged: Some(s), ..
            }) => (None, Some(&s.want)),
            _ => (None, None),
        };
        let max = t.opts.max_message;
        let info = &*t.info;
        let m = t.metrics;
        let zc = t.opts.splice && crate::zerocopy::available();
        if t.u2c.has(SAW_CLOSE) {
            t.c2u.set(OTHER_CLOSED);
        }
        if t.c2u.has(SAW_CLOSE) {
            t.u2c.set(OTHER_CLOSED);
        }
        let a = t.c2u.poll(
            cx,
            &mut t.client,
            &mut t.upstream,
            (info, m),
            (max, zc),
            want_c2u,
        );
        let b = t.u2c.poll(
            cx,
            &mut t.upstream,
            &mut t.client,
            (info, m),
            (max, zc),
            want_u2c,
        );
        t.after_poll();
        if let Some(closing) = t.aux.as_mut().and_then(|a| a.closing.as_mut()) {
            // A gateway close ends when both peers answered (or stopped sending), when the
            // wait is over, or on an error; data from the peers is no longer forwarded.
            let failed = matches!(a, Poll::Ready(Err(_))) || matches!(b, Poll::Ready(Err(_)));
            let answered = closing.client_done && closing.upstream_done;
            if failed || answered || closing.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(closing.ended);
            }
            return Poll::Pending;
        }
        if (t.c2u.has(TOO_BIG) || t.u2c.has(TOO_BIG))
            && t.aux.as_ref().is_none_or(|a| a.closing.is_none())
        {
            // Start the 1009 close on the next turn (the check at the top).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let both = t.c2u.has(SAW_CLOSE) && t.u2c.has(SAW_CLOSE);
        if (both && (t.c2u.finished() || t.u2c.finished()))
            || (t.c2u.has(SAW_CLOSE) && t.u2c.finished())
            || (t.u2c.has(SAW_CLOSE) && t.c2u.finished())
        {
            // A side that received a close frame hung up (answered or not), or both close
            // frames passed and either side hung up: the WebSocket is over, so don't wait
            // for the other side to hang up too (RFC 6455 has the server close TCP first;
            // clients often keep theirs open until they notice).
            if t.first.is_none() {
                t.first = Some(if t.c2u.finished() {
                    ClosedBy::Client
                } else {
                    ClosedBy::Upstream
                });
            }
            return Poll::Ready(Ended::Closed);
        }
        if t.first.is_none() {
            // Remember who hung up (or failed) first, for the access log.
            if t.c2u.finished() {
                t.first = Some(ClosedBy::Client);
            } else if t.u2c.finished() {
                t.first = Some(ClosedBy::Upstream);
            }
        }
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => {
                // After a close frame each way, a reset (or a TLS peer that skips
                // close_notify, as browsers do) is a normal end, not an error.
                if t.c2u.has(SAW_CLOSE) && t.u2c.has(SAW_CLOSE) {
                    Poll::Ready(Ended::Closed)
                } else {
                    Poll::Ready(Ended::Error)
                }
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ended::Closed),
            _ => Poll::Pending,
        }
    }
}

impl<C, U> Tunnel<'_, C, U> {
    /// Takes what the directions noticed while copying.
    fn after_poll(&mut self) {
        if self.first_close.is_none() {
            if self.c2u.has(SAW_CLOSE) {
                self.first_close = Some(ClosedBy::Client);
            } else if self.u2c.has(SAW_CLOSE) {
                self.first_close = Some(ClosedBy::Upstream);
            }
        }
        if self.c2u.take(SAW_PONG) {
            self.info.pong_received();
        }
        let Some(aux) = self.aux.as_deref_mut() else {
            return;
        };
        if let Some(c) = &mut aux.closing {
            if self.c2u.take(INJECTED) {
                c.to_upstream = None;
            }
            if self.u2c.take(INJECTED) {
                c.to_client = None;
            }
            // An answer is the peer's close frame after ours went out; a reader that ended
            // answers too.
            c.client_done |=
                self.c2u.finished() || (c.to_client.is_none() && self.c2u.has(SAW_CLOSE));
            c.upstream_done |=
                self.u2c.finished() || (c.to_upstream.is_none() && self.u2c.has(SAW_CLOSE));
            if self.c2u.tracker.is_untrackable() {
                c.to_upstream = None;
                c.upstream_done = true;
            }
            if self.u2c.tracker.is_untrackable() {
                c.to_client = None;
                c.client_done = true;
            }
        } else if self.u2c.take(INJECTED) {
            if let Some(Staged {
                ping: Some(payload),
                ..
            }) = aux.staged.take()
            {
                self.c2u.tracker.expect_pong(&payload);
            }
        } else if self.u2c.tracker.is_untrackable() {
            aux.staged = None;
        }
        if aux.staged.is_none() && aux.closing.is_none() {
            self.aux = None;
        }
    }
}

/// Bytes a direction should put into its writer at the next suitable frame boundary.
struct Want {
    bytes: Bytes,
    /// Data frames may not land inside a fragmented message; control frames may.
    data: bool,
}

impl Want {
    fn control(f: &ControlFrame) -> Want {
        Want {
            bytes: Bytes::copy_from_slice(f.as_bytes()),
            data: false,
        }
    }
}

/// One direction of the copy. Byte counts go to the tunnel's own atomics at once (the
/// registry and idle sweeper read them) and to the shared route counter in batches.
/// 64 bytes: every idle tunnel holds two.
struct Direction {
    /// Bytes read but not yet accepted by the writer (rare: only under backpressure).
    pending: Option<Box<Pending>>,
    /// The start of a frame that may be the pong answering our ping, held back until it is
    /// settled (client → upstream only).
    held: Option<Box<Held>>,
    tracker: FrameTracker,
    unpublished: u64,
    messages: u32,
    chunks: u8,
    state: DirState,
    /// `INJECTED`, `DISCARD`, `SAW_CLOSE`, `SAW_PONG`, `TOO_BIG`.
    flags: u8,
    /// Why framing was lost: 1 + index in [`LOST`], 0 = not lost.
    lost: u8,
}

/// The wanted frame was written (the tunnel clears it).
const INJECTED: u8 = 1;
/// Our close frame went into this direction's writer: the reader is still read (for the
/// peer's answer) but nothing more is forwarded.
const DISCARD: u8 = 2;
/// A close frame came from this direction's reader.
const SAW_CLOSE: u8 = 4;
/// The pong answering our ping came from this reader (the tunnel clears it).
const SAW_PONG: u8 = 8;
/// A message from this reader exceeded the limit.
const TOO_BIG: u8 = 16;
/// Bulk is flowing on a plain tunnel. Untracked: splice instead of copying. Tracked: the
/// last data frame's payload was spliced, so read little at its end, and the next large
/// payload is not pulled into user space with the header before it.
const BULK: u8 = 32;
/// A close frame went the other way (the tunnel sets it): once this reader's close frame
/// passes too, the WebSocket is over and a plain writer needs no shutdown of its own.
const OTHER_CLOSED: u8 = 64;

/// Where splice(2) starts to pay: tracked, payloads of data frames larger than this are
/// spliced; untracked, a read this large switches to splicing and a splice smaller than
/// this switches back. Smaller messages are cheaper copied: a splice costs an extra
/// syscall per transfer (readiness is cleared only by a would-block) and a pipe round trip.
const SPLICE_MIN: u64 = 16 * 1024;
/// Longest WebSocket frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Bytes a writer has not taken yet.
enum Pending {
    /// Copied bytes and how many of them are written.
    Bytes(Vec<u8>, usize),
    /// Spliced bytes, still in the tunnel's pipe.
    Pipe(crate::zerocopy::Pipe),
}

/// What one splice(2) step did.
enum Spliced {
    Eof,
    Moved(usize),
    /// Splicing isn't possible now (no pipe, or the kernel refused): copy instead.
    Copy,
}

/// Labels of [`Violation`]s, indexed by `Direction::lost - 1`.
const LOST: [&str; 12] = [
    "reserved_opcode",
    "rsv2_rsv3",
    "rsv1_without_deflate",
    "rsv1_on_continuation",
    "rsv1_on_control",
    "fragmented_control",
    "control_too_long",
    "length_top_bit",
    "unmasked",
    "masked",
    "continuation_without_message",
    "data_inside_message",
];

fn lost_code(v: Violation) -> u8 {
    LOST.iter()
        .position(|l| *l == v.as_str())
        .map_or(u8::MAX, |i| i as u8 + 1)
}

/// Up to 14 held-back bytes (a pong frame's 2 + 4 header and 8 payload bytes).
struct Held {
    len: u8,
    buf: [u8; 14],
}

impl Held {
    fn new(bytes: &[u8]) -> Option<Box<Held>> {
        let mut buf = [0u8; 14];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Box::new(Held {
            len: bytes.len() as u8,
            buf,
        }))
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
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

/// What one chunk showed, gathered from the tracker's events.
struct Scan {
    /// Looking for a place for data frames (outside fragmented messages) or any boundary.
    want: Option<bool>,
    in_msg: bool,
    cut: Option<usize>,
    frame_start: isize,
    too_big_at: Option<isize>,
    pong: Option<(isize, usize)>,
    close: bool,
    messages: u32,
    lost: Option<Violation>,
}

impl Scan {
    fn on(&mut self, ev: Event) {
        match ev {
            Event::FrameStart(f) => {
                self.frame_start = f.payload_at as isize - isize::from(f.header_len);
                if matches!(f.opcode, OpCode::Text | OpCode::Binary) && !f.fin {
                    self.in_msg = true;
                }
            }
            Event::FrameEnd { opcode, fin, end } => {
                if !opcode.is_control() && fin {
                    self.in_msg = false;
                }
                if self.cut.is_none()
                    && self.too_big_at.is_none()
                    && let Some(data) = self.want
                    && (!data || !self.in_msg)
                {
                    self.cut = Some(end);
                }
            }
            Event::MessageEnd { .. } => self.messages += 1,
            Event::MessageTooBig { .. } => {
                if self.too_big_at.is_none() {
                    self.too_big_at = Some(self.frame_start);
                }
            }
            Event::Close { .. } => self.close = true,
            Event::Pong { start, end } => self.pong = Some((start, end)),
            Event::Untrackable { reason, .. } => self.lost = Some(reason),
        }
    }
}

impl Direction {
    fn new(tracker: FrameTracker) -> Self {
        Direction {
            pending: None,
            held: None,
            tracker,
            unpublished: 0,
            messages: 0,
            chunks: 0,
            state: DirState::Copying,
            flags: 0,
            lost: 0,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }

    fn take(&mut self, flag: u8) -> bool {
        let had = self.has(flag);
        self.flags &= !flag;
        had
    }

    fn lost_label(&self) -> Option<&'static str> {
        let i = usize::from(self.lost).checked_sub(1)?;
        Some(LOST.get(i).copied().unwrap_or("unknown"))
    }

    fn client_to_upstream(&self) -> bool {
        self.tracker.direction() == frames::Direction::ClientToServer
    }

    #[inline]
    fn add(&mut self, n: usize, info: &TunnelInfo, m: &RouteMetrics) {
        let total = if self.client_to_upstream() {
            &info.client_to_upstream
        } else {
            &info.upstream_to_client
        };
        total.fetch_add(n as u64, Ordering::Relaxed);
        self.unpublished += n as u64;
        self.chunks += 1;
        // Batching keeps the shared route counter off the per-chunk path, while chatty
        // small-message tunnels still show up within a few dozen messages.
        if self.unpublished >= FLUSH_EVERY
            || u32::from(self.chunks) >= FLUSH_CHUNKS
            || self.messages >= 1 << 30
        {
            self.publish(m);
        }
    }

    fn publish(&mut self, m: &RouteMetrics) {
        let (bytes, msgs) = if self.client_to_upstream() {
            (&m.bytes_c2u, &m.messages_c2u)
        } else {
            (&m.bytes_u2c, &m.messages_u2c)
        };
        if self.unpublished > 0 {
            bytes.inc_by(self.unpublished);
        }
        if self.messages > 0 {
            msgs.inc_by(u64::from(self.messages));
        }
        self.unpublished = 0;
        self.messages = 0;
        self.chunks = 0;
    }

    /// The reader side has ended (EOF or error) and nothing more will be read.
    fn finished(&self) -> bool {
        self.state != DirState::Copying
    }

    /// Bytes wait for the writer.
    fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The writer was shut down (or failed): nothing can be written to it any more.
    fn finished_writing(&self) -> bool {
        self.state == DirState::Done
    }

    /// Writes out `pending`, if any.
    fn write_pending<W: AsyncWrite + RawTcp + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        let Some(pending) = &mut self.pending else {
            return Poll::Ready(Ok(()));
        };
        if let Pending::Pipe(pipe) = &mut **pending {
            let drained = match w.splice_writer() {
                Some(tcp) => ready!(pipe.poll_drain(cx, tcp)),
                None => Err(io::ErrorKind::Unsupported.into()),
            };
            match drained {
                Ok(()) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::Unsupported || crate::zerocopy::refused(&e) =>
                {
                    // Nothing was written from the pipe: carry its bytes on as copies.
                    **pending = Pending::Bytes(pipe.take_bytes()?, 0);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if let Pending::Bytes(buf, off) = &mut **pending {
            while *off < buf.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[*off..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *off += n;
            }
        }
        // An emptied pipe goes back to the thread's pool here.
        self.pending = None;
        Poll::Ready(Ok(()))
    }

    /// Moves one pipe's worth (at most `max` bytes) from `r` to `w` with splice(2). Bytes
    /// `w` doesn't take now stay in the pipe, which the direction then keeps as `pending`.
    fn splice_step(
        &mut self,
        cx: &mut Context<'_>,
        r: &TcpStream,
        w: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<Spliced>> {
        let Some(mut pipe) = crate::zerocopy::Pipe::take() else {
            return Poll::Ready(Ok(Spliced::Copy));
        };
        let n = match ready!(pipe.poll_fill(cx, r, max)) {
            Ok(0) => return Poll::Ready(Ok(Spliced::Eof)),
            Ok(n) => n,
            Err(e) if crate::zerocopy::refused(&e) => return Poll::Ready(Ok(Spliced::Copy)),
            Err(e) => return Poll::Ready(Err(e)),
        };
        // Written at once in the common case (the pipe goes straight back to the pool);
        // otherwise the pipe waits as `pending` for the writer.
        match pipe.poll_drain(cx, w) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => self.pending = Some(Box::new(Pending::Pipe(pipe))),
            Poll::Ready(Err(e)) if crate::zerocopy::refused(&e) => {
                self.pending = Some(Box::new(Pending::Bytes(pipe.take_bytes()?, 0)));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        }
        Poll::Ready(Ok(Spliced::Moved(n)))
    }

    /// Writes out `pending` and flushes (used once at the end, before the shutdown).
    fn flush_pending<W: AsyncWrite + RawTcp + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        ready!(self.write_pending(cx, w))?;
        Pin::new(&mut *w).poll_flush(cx)
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        info: (&TunnelInfo, &RouteMetrics),
        limits: (u64, bool),
        want: Option<&Want>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + RawTcp + Unpin,
        W: AsyncWrite + RawTcp + Unpin,
    {
        let result = self.poll_inner(cx, r, w, info, limits, want);
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
        info: (&TunnelInfo, &RouteMetrics),
        (max, zc): (u64, bool),
        mut want: Option<&Want>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + RawTcp + Unpin,
        W: AsyncWrite + RawTcp + Unpin,
    {
        if self.has(INJECTED) {
            // Written already; the tunnel hasn't taken note yet.
            want = None;
        }
        loop {
            ready!(self.write_pending(cx, w))?;
            // A frame goes in as soon as the stream rests at a suitable boundary. After an
            // oversized frame the writer's stream was cut before that frame: a boundary.
            if let Some(wnt) = want
                && self.state != DirState::Done
                && self.held.is_none()
                && (self.tracker.at_frame_boundary() || self.has(TOO_BIG))
                && !(wnt.data && self.tracker.in_fragmented_message())
            {
                self.write_parts(cx, w, &[&wnt.bytes])?;
                self.mark_injected(wnt);
                want = None;
                continue;
            }
            match self.state {
                DirState::Done => return Poll::Ready(Ok(())),
                DirState::ShuttingDown => {
                    if self.has(DISCARD) {
                        // Our close frame ended this way; the final shutdown closes it.
                        return Poll::Ready(Ok(()));
                    }
                    if self.has(SAW_CLOSE) && self.has(OTHER_CLOSED) && w.splice_writer().is_some()
                    {
                        // Both close frames passed: the tunnel ends now and dropping the
                        // socket sends the FIN; a shutdown first would be one more syscall.
                        self.state = DirState::Done;
                        return Poll::Ready(Ok(()));
                    }
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.state = DirState::Done;
                    return Poll::Ready(Ok(()));
                }
                DirState::Copying => {}
            }
            let mut read_max = SCRATCH_SIZE;
            if zc
                && !self.has(DISCARD | TOO_BIG)
                && self.held.is_none()
                && let (Some(rt), Some(wt)) = (r.splice_reader(), w.splice_writer())
            {
                // Untracked, bulk is spliced; tracked, only the payload of a large data
                // frame, less its last byte, so the frame's end (and what the tracker does
                // there) goes through the copy path below.
                let left = self.tracker.data_payload_left();
                let untracked = self.tracker.is_untrackable();
                let splice_max = if untracked {
                    self.has(BULK).then_some(usize::MAX)
                } else if left > SPLICE_MIN {
                    Some(usize::try_from(left - 1).unwrap_or(usize::MAX))
                } else {
                    None
                };
                if let Some(splice_max) = splice_max {
                    match ready!(self.splice_step(cx, rt, wt, splice_max))? {
                        Spliced::Moved(n) => {
                            self.tracker.skip_payload(n as u64);
                            if untracked && (n as u64) < SPLICE_MIN {
                                self.take(BULK);
                            } else {
                                self.set(BULK);
                            }
                            self.add(n, info.0, info.1);
                            continue;
                        }
                        Spliced::Eof => {
                            self.state = DirState::ShuttingDown;
                            continue;
                        }
                        Spliced::Copy => {}
                    }
                } else if self.has(BULK) && !untracked {
                    // The end of a spliced payload: read up to the next frame's header,
                    // so a large payload behind it can be spliced too.
                    read_max = usize::try_from(left).unwrap_or(SCRATCH_SIZE) + MAX_HEADER;
                    read_max = read_max.min(SCRATCH_SIZE);
                    if left == 0 {
                        // A frame boundary with a small read: back to full reads unless
                        // the next payload is large again.
                        self.take(BULK);
                    }
                }
            }
            let step = SCRATCH.with_borrow_mut(|scratch| {
                self.read_and_write(cx, r, w, &mut scratch[..read_max], max, want)
            })?;
            if self.has(INJECTED) {
                want = None;
            }
            match step {
                Read::Moved(n) => {
                    if n as u64 >= SPLICE_MIN && self.tracker.is_untrackable() {
                        self.set(BULK);
                    }
                    self.add(n, info.0, info.1);
                }
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

    fn mark_injected(&mut self, want: &Want) {
        self.set(INJECTED);
        if !want.data {
            // Only close frames are wanted as control frames: nothing follows them.
            self.set(DISCARD);
        }
    }

    /// Writes `parts` in order as far as the writer takes them now; the rest is copied
    /// into `pending` (which must be empty).
    fn write_parts<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        parts: &[&[u8]],
    ) -> io::Result<()> {
        for (i, part) in parts.iter().enumerate() {
            let mut off = 0;
            while off < part.len() {
                match Pin::new(&mut *w).poll_write(cx, &part[off..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => {
                        let rest: usize = part.len() - off
                            + parts[i + 1..].iter().map(|p| p.len()).sum::<usize>();
                        let mut buf = Vec::with_capacity(rest);
                        buf.extend_from_slice(&part[off..]);
                        for p in &parts[i + 1..] {
                            buf.extend_from_slice(p);
                        }
                        self.pending = Some(Box::new(Pending::Bytes(buf, 0)));
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads once into `scratch` and writes as much as the writer takes right now; the
    /// rest is copied into `pending`. With tracking, the chunk is fed to the tracker first:
    /// a wanted frame is put in at the first suitable boundary, the pong answering our
    /// ping is left out, and forwarding stops before a frame that breaks the size limit.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        scratch: &mut [u8],
        max: u64,
        want: Option<&Want>,
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
            if let Some(held) = self.held.take()
                && !self.has(DISCARD)
            {
                // An unfinished frame at EOF: not our pong, so it is the peer's to deliver.
                self.write_parts(cx, w, &[held.bytes()])?;
            }
            return Ok(Read::Eof);
        }
        let n = data.len();
        if self.tracker.is_untrackable() {
            if !self.has(DISCARD) {
                self.write_parts(cx, w, &[data])?;
            }
            return Ok(Read::Moved(n));
        }
        let cut_already = self.has(TOO_BIG);
        let mut scan = Scan {
            want: want.map(|w| w.data),
            in_msg: self.tracker.in_fragmented_message(),
            cut: None,
            frame_start: 0,
            too_big_at: None,
            pong: None,
            close: false,
            messages: 0,
            lost: None,
        };
        self.tracker.feed(data, max, &mut |ev| scan.on(ev));
        self.messages += scan.messages;
        if scan.close {
            self.set(SAW_CLOSE);
        }
        if scan.pong.is_some() {
            self.set(SAW_PONG);
        }
        if let Some(v) = scan.lost {
            self.lost = lost_code(v);
        }
        // Held bytes come first: work on one buffer, offsets shifted by their length.
        let held = self.held.take();
        let h = held.as_ref().map_or(0, |b| b.bytes().len());
        let buf: Cow<'_, [u8]> = match &held {
            Some(b) => {
                let mut v = Vec::with_capacity(h + n);
                v.extend_from_slice(b.bytes());
                v.extend_from_slice(data);
                Cow::Owned(v)
            }
            None => Cow::Borrowed(data),
        };
        let at = |off: isize| (off + h as isize).clamp(0, (h + n) as isize) as usize;
        let mut end = h + n;
        if let Some(s) = scan.too_big_at {
            // Stop before the frame that broke the limit; if its head already went out
            // (split across reads), the peer sees a cut frame, then our close or a reset.
            end = at(s);
            self.set(TOO_BIG);
        }
        let hold = if scan.lost.is_none() && !self.has(TOO_BIG) {
            self.tracker.pending_pong_len()
        } else {
            0
        };
        if hold > 0 {
            let from = (h + n).saturating_sub(hold);
            self.held = Held::new(&buf[from..]);
            if self.held.is_some() {
                end = end.min(from);
            }
        }
        if self.has(DISCARD) || cut_already {
            // Nothing more after our close frame, nor after the start of an oversized
            // frame (the rest of it included).
            return Ok(Read::Moved(n));
        }
        let (skip_from, skip_to) = match scan.pong {
            Some((s, e)) => (at(s).min(end), at(e as isize).min(end)),
            None => (end, end),
        };
        let cut = scan.cut.map(|c| at(c as isize)).filter(|&c| c <= end);
        let mut parts: [&[u8]; 4] = [&[]; 4];
        let mut k = 0;
        // Segments in stream order: [0, skip_from) and [skip_to, end), with the wanted
        // frame at `cut` (never inside the skipped pong: both are frame boundaries).
        // A fixed array, not a Vec: this runs for every read of a tracked tunnel.
        const INJECT: (usize, usize) = (usize::MAX, 0);
        let (segs, nsegs): ([(usize, usize); 4], usize) = match cut {
            Some(c) if c <= skip_from => ([(0, c), INJECT, (c, skip_from), (skip_to, end)], 4),
            Some(c) => (
                [
                    (0, skip_from),
                    (skip_to, c.max(skip_to)),
                    INJECT,
                    (c.max(skip_to), end),
                ],
                4,
            ),
            None => ([(0, skip_from), (skip_to, end), (0, 0), (0, 0)], 2),
        };
        let wanted: &[u8] = match (cut, want) {
            (Some(_), Some(w)) => &w.bytes,
            _ => &[],
        };
        let mut injected = false;
        for &(from, to) in &segs[..nsegs] {
            if from == usize::MAX {
                if k < parts.len() {
                    parts[k] = wanted;
                    k += 1;
                    injected = true;
                }
                if want.is_some_and(|w| !w.data) {
                    // Nothing follows our close frame.
                    break;
                }
            } else if from < to && k < parts.len() {
                parts[k] = &buf[from..to];
                k += 1;
            }
        }
        self.write_parts(cx, w, &parts[..k])?;
        if injected && let Some(w) = want {
            self.mark_injected(w);
        }
        Ok(Read::Moved(n))
    }
}

/// Either side of a tunnel, unwrapped from hyper's `Upgraded` where its type is known,
/// so the splice is one instantiation and reads skip hyper's boxed wrapper. TLS
/// streams are boxed: they are large, and the plain variant keeps the tunnel small.
pub enum Side {
    /// Plain TCP (client or upstream).
    Tcp(Prebuffered<TcpStream>),
    /// TLS client of a `wss://` listener.
    ServerTls(Box<Prebuffered<crate::tls_stream::ServerTlsStream>>),
    /// TLS to a `wss://` upstream.
    ClientTls(Box<Prebuffered<crate::tls_stream::ClientTlsStream>>),
    /// Anything else, still behind hyper's wrapper.
    Upgraded(TokioIo<Upgraded>),
}

impl Side {
    /// The client side of an upgraded connection.
    pub fn client(u: Upgraded) -> Side {
        match u.downcast::<TokioIo<TcpStream>>() {
            Ok(p) => Side::Tcp(Prebuffered::new(p.io.into_inner(), p.read_buf)),
            Err(u) => match u.downcast::<TokioIo<crate::tls_stream::ServerTlsStream>>() {
                Ok(p) => Side::ServerTls(Box::new(Prebuffered::new(p.io.into_inner(), p.read_buf))),
                Err(u) => Side::Upgraded(TokioIo::new(u)),
            },
        }
    }

    /// The upstream side of a tunnel: its socket and the bytes read past the 101.
    pub fn from_upstream(stream: UpstreamStream, ahead: Bytes) -> Side {
        match stream {
            UpstreamStream::Plain(tcp) => Side::Tcp(Prebuffered::new(tcp, ahead)),
            UpstreamStream::Tls(tls) => Side::ClientTls(Box::new(Prebuffered::new(*tls, ahead))),
        }
    }
}

/// The plain TCP socket under a side, for splice(2); other sides (TLS, in-memory) have
/// none and are copied.
pub trait RawTcp {
    /// The socket to splice from: only once no read-ahead bytes are left to replay.
    fn splice_reader(&self) -> Option<&TcpStream> {
        None
    }
    /// The socket to splice into.
    fn splice_writer(&self) -> Option<&TcpStream> {
        None
    }
}

impl RawTcp for Side {
    fn splice_reader(&self) -> Option<&TcpStream> {
        match self {
            Side::Tcp(p) if p.pre.is_empty() => Some(&p.inner),
            _ => None,
        }
    }

    fn splice_writer(&self) -> Option<&TcpStream> {
        match self {
            Side::Tcp(p) => Some(&p.inner),
            _ => None,
        }
    }
}

#[cfg(test)]
impl RawTcp for tokio::io::DuplexStream {}

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
    /// These tests move arbitrary bytes, not WebSocket frames.
    fn untracked() -> SessionOptions {
        SessionOptions {
            track: false,
            ..SessionOptions::default()
        }
    }

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
            async move { splice(gc, gu, &rm, info, &untracked(), false).await }
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
            async move { splice(gc, gu, &rm, info, &untracked(), false).await }
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
            async move { splice(gc, gu, &rm, info, &untracked(), false).await }
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

    impl RawTcp for Broken {}

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
        let report = tokio::time::timeout(
            Duration::from_secs(5),
            splice(broken, gu, &rm, info(), &untracked(), false),
        )
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
        let report = tokio::time::timeout(
            Duration::from_secs(5),
            splice(gc, broken, &rm, info(), &untracked(), false),
        )
        .await
        .unwrap();
        assert_eq!(report.ended, Ended::Error);
        assert_eq!(rm.active.get(), 0);
    }
}

/// Frame-level behaviour on in-memory pipes, byte by byte where it matters: where injected
/// frames land, which pongs are kept from the upstream, and what a stop sends.
#[cfg(test)]
mod frame_tests {
    use super::*;
    use crate::frames::{MessageKind, close_frame, data_frame, ping_frame};
    use crate::metrics::Metrics;
    use crate::registry::Outgoing;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    struct Rig {
        client: DuplexStream,
        upstream: DuplexStream,
        info: Arc<TunnelInfo>,
        tunnel: tokio::task::JoinHandle<SpliceReport>,
    }

    fn rig() -> Rig {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        let (client, gc) = duplex(1 << 16);
        let (upstream, gu) = duplex(1 << 16);
        let info = Arc::new(TunnelInfo::new(
            1,
            "/t".into(),
            None,
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let tunnel = tokio::spawn({
            let info = info.clone();
            async move {
                // Long, so a test can tell "ended on the answers" from "waited it out".
                let opts = SessionOptions {
                    close_wait: Duration::from_secs(30),
                    ..SessionOptions::default()
                };
                splice(gc, gu, &rm, info, &opts, false).await
            }
        });
        Rig {
            client,
            upstream,
            info,
            tunnel,
        }
    }

    /// Reads exactly `n` bytes (5 s at most).
    async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("timed out reading")
            .unwrap();
        buf
    }

    /// Nothing arrives within 100 ms.
    async fn quiet(s: &mut DuplexStream) {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await;
        assert!(r.is_err(), "unexpected bytes: {r:?}");
    }

    fn text(s: &str) -> Outgoing {
        Outgoing {
            kind: MessageKind::Text,
            payload: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    #[tokio::test]
    async fn a_push_waits_for_the_end_of_a_fragmented_message() {
        let mut r = rig();
        let first = data_frame(MessageKind::Text, b"part1", None);
        let mut first = first.to_vec();
        first[0] &= 0x7f; // FIN clear: a fragmented message begins
        r.upstream.write_all(&first).await.unwrap();
        assert_eq!(read_n(&mut r.client, first.len()).await, first);
        // Wait until the tunnel marked itself tracked, then push mid-message.
        while !r.info.is_tracked() {
            tokio::task::yield_now().await;
        }
        r.info.push(text("pushed")).unwrap();
        // A ping may interleave; a data message may not.
        let ping = ping_frame(b"p", None);
        r.upstream.write_all(&ping).await.unwrap();
        assert_eq!(read_n(&mut r.client, ping.len()).await, ping.to_vec());
        quiet(&mut r.client).await;
        let mut last = vec![0x80, 5];
        last.extend_from_slice(b"part2");
        r.upstream.write_all(&last).await.unwrap();
        assert_eq!(read_n(&mut r.client, last.len()).await, last);
        let pushed = data_frame(MessageKind::Text, b"pushed", None);
        assert_eq!(read_n(&mut r.client, pushed.len()).await, pushed.to_vec());
        r.tunnel.abort();
    }

    #[tokio::test]
    async fn a_stop_mid_frame_sends_the_close_after_that_frame() {
        let mut r = rig();
        let frame = data_frame(MessageKind::Binary, &[7u8; 300], None);
        r.upstream.write_all(&frame[..100]).await.unwrap();
        assert_eq!(read_n(&mut r.client, 100).await, frame[..100].to_vec());
        r.info.stop(StopReason::Kicked);
        quiet(&mut r.client).await;
        // The upstream got its close at once (the client side was at a boundary).
        let up_close = read_n(&mut r.upstream, 2 + 4 + 8).await;
        assert_eq!(up_close[0], 0x88);
        assert_eq!(up_close[1], 0x80 | 8, "masked, 2 + 6 bytes");
        r.upstream.write_all(&frame[100..]).await.unwrap();
        assert_eq!(
            read_n(&mut r.client, frame.len() - 100).await,
            frame[100..].to_vec()
        );
        let close = close_frame(4000, "kicked", None);
        assert_eq!(read_n(&mut r.client, close.len()).await, close.to_vec());
        // Both answer; the tunnel ends without waiting for close_wait.
        r.client
            .write_all(&close_frame(4000, "", Some([1, 2, 3, 4])))
            .await
            .unwrap();
        r.upstream
            .write_all(&close_frame(4000, "", None))
            .await
            .unwrap();
        let report = tokio::time::timeout(Duration::from_secs(10), r.tunnel)
            .await
            .expect("tunnel waited for close_wait although both answered")
            .unwrap();
        assert_eq!(report.ended, Ended::Stopped(StopReason::Kicked));
        assert_eq!(report.reason, CloseReason::Kicked);
        assert_eq!(report.closed_by, ClosedBy::Gateway);
    }

    fn masked(frame: &[u8]) -> Vec<u8> {
        // Re-encode a short unmasked frame as a client would send it.
        let (op, payload) = (frame[0], &frame[2..]);
        let key = [9u8, 8, 7, 6];
        let mut out = vec![op, 0x80 | payload.len() as u8];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    #[tokio::test]
    async fn our_pong_is_dropped_whole_however_it_is_split() {
        let a = masked(&data_frame(MessageKind::Text, b"A", None));
        let b = masked(&data_frame(MessageKind::Text, b"B", None));
        for split in 0..=14 {
            let mut r = rig();
            while !r.info.is_tracked() {
                tokio::task::yield_now().await;
            }
            r.info.request_ping();
            let ping = read_n(&mut r.client, 10).await;
            assert_eq!(&ping[..2], &[0x89, 8]);
            let mut pong = vec![0x8A, 8];
            pong.extend_from_slice(&ping[2..]);
            let pong = masked(&pong);
            let mut stream = a.clone();
            stream.extend_from_slice(&pong);
            stream.extend_from_slice(&b);
            let cut = a.len() + split;
            r.client.write_all(&stream[..cut]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            r.client.write_all(&stream[cut..]).await.unwrap();
            let mut want = a.clone();
            want.extend_from_slice(&b);
            assert_eq!(
                read_n(&mut r.upstream, want.len()).await,
                want,
                "split at {split}"
            );
            quiet(&mut r.upstream).await;
            // Another pong (not answering our ping) is the peers' business: forwarded.
            let other = masked(&[0x8A, 2, b'h', b'i']);
            r.client.write_all(&other).await.unwrap();
            assert_eq!(read_n(&mut r.upstream, other.len()).await, other);
            r.tunnel.abort();
        }
    }

    #[tokio::test]
    async fn an_oversized_frame_arriving_in_pieces_never_reaches_the_upstream() {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        let (mut client, gc) = duplex(1 << 16);
        let (mut upstream, gu) = duplex(1 << 16);
        let info = Arc::new(TunnelInfo::new(
            1,
            "/t".into(),
            None,
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let tunnel = tokio::spawn(async move {
            let opts = SessionOptions {
                max_message: 10,
                ..SessionOptions::default()
            };
            splice(gc, gu, &rm, info, &opts, false).await
        });
        let ok = masked(&data_frame(MessageKind::Text, b"0123456789", None));
        // A 1000-byte frame: its header and a first piece, then the rest in a later read.
        let mut big = vec![0x82, 0x80 | 126, 0x03, 0xE8, 1, 2, 3, 4];
        big.extend_from_slice(&[0x55; 1000]);
        client.write_all(&ok).await.unwrap();
        client.write_all(&big[..108]).await.unwrap();
        assert_eq!(read_n(&mut upstream, ok.len()).await, ok);
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&big[108..]).await.unwrap();
        // Nothing of the oversized frame: the close frame comes next.
        let close = read_n(&mut upstream, 2 + 4 + 2 + "message too big".len()).await;
        assert_eq!(&close[..2], &[0x88, 0x80 | 17], "got {close:?}");
        drop(client);
        let report = tunnel.await.unwrap();
        assert_eq!(report.ended, Ended::TooBig);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_cut_before_its_frame() {
        let metrics = Metrics::new().unwrap();
        let rm = metrics.route("/t", false);
        let (mut client, gc) = duplex(1 << 16);
        let (mut upstream, gu) = duplex(1 << 16);
        let info = Arc::new(TunnelInfo::new(
            1,
            "/t".into(),
            None,
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let tunnel = tokio::spawn(async move {
            let opts = SessionOptions {
                max_message: 10,
                ..SessionOptions::default()
            };
            splice(gc, gu, &rm, info, &opts, false).await
        });
        let ok = masked(&data_frame(MessageKind::Text, b"0123456789", None));
        let big = masked(&data_frame(MessageKind::Text, b"0123456789X", None));
        client.write_all(&[ok.clone(), big].concat()).await.unwrap();
        assert_eq!(read_n(&mut upstream, ok.len()).await, ok);
        let close = read_n(&mut upstream, 2 + 4 + 2 + "message too big".len()).await;
        assert_eq!(&close[..2], &[0x88, 0x80 | 17]);
        let to_client = close_frame(1009, "message too big", None);
        assert_eq!(
            read_n(&mut client, to_client.len()).await,
            to_client.to_vec()
        );
        drop(client);
        let report = tunnel.await.unwrap();
        assert_eq!(report.ended, Ended::TooBig);
        assert_eq!(report.reason, CloseReason::TooBig);
    }
}
#[cfg(test)]
mod size_tests {
    /// An idle tunnel holds two of these: frame tracking must stay within its 64-byte
    /// budget per tunnel (two 32-byte trackers), the rest packed around them.
    #[test]
    fn a_direction_is_64_bytes() {
        assert_eq!(std::mem::size_of::<super::Direction>(), 64);
    }
}
