//! Zero-copy bulk for plain tunnels: splice(2) socket → pipe → socket.
//!
//! The splice ([`crate::splice`]) moves bytes between two plain TCP sockets through a pipe
//! instead of its user-space scratch buffer, so payload bytes never cross into user space.
//! Pipes are pooled per thread: a direction takes one for a poll and gives it back as soon as
//! it is empty, so an idle tunnel holds no pipe (and no buffer). Only a tunnel whose
//! destination cannot take the bytes yet keeps its pipe, holding them until they are written.
//!
//! When the kernel refuses splice(2) (`EINVAL`, `ENOSYS`, a seccomp `EPERM`...), the process
//! logs it once and every tunnel goes back to the copy path.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipes by state: `in_use` (held by a tunnel) and `pooled` (idle, kept for reuse).
pub const SPLICE_PIPES: &str = "wsgate_splice_pipes";
/// Bytes moved socket → pipe → socket without a user-space copy.
pub const SPLICE_BYTES_TOTAL: &str = "wsgate_splice_bytes_total";

/// How much one splice(2) moves at most: the pipe's capacity. 64 KiB is the kernel's default
/// size, so no `F_SETPIPE_SZ` (one syscall less per new pipe, no pipe-user-pages budget).
pub const PIPE_SIZE: usize = 64 * 1024;
/// Idle pipes each thread keeps; more are closed (two file descriptors each).
const POOL_MAX: usize = 8;
const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

struct Stats {
    in_use: IntGauge,
    pooled: IntGauge,
    bytes: IntCounter,
    pipes: IntGaugeVec,
}

/// Process-wide like the pools themselves; every gateway's registry exports them.
static STATS: LazyLock<Result<Stats, prometheus::Error>> = LazyLock::new(|| {
    let pipes = IntGaugeVec::new(
        Opts::new(
            SPLICE_PIPES,
            "Pipes for splice(2): in_use (held by a tunnel), pooled (idle, kept per thread).",
        ),
        &["state"],
    )?;
    let bytes = IntCounter::new(
        SPLICE_BYTES_TOTAL,
        "Bytes moved between plain sockets by splice(2), without a user-space copy.",
    )?;
    Ok(Stats {
        in_use: pipes.get_metric_with_label_values(&["in_use"])?,
        pooled: pipes.get_metric_with_label_values(&["pooled"])?,
        bytes,
        pipes,
    })
});

fn stats() -> Option<&'static Stats> {
    STATS.as_ref().ok()
}

/// Registers the splice metrics with a gateway's registry.
pub fn register(registry: &Registry) -> Result<(), prometheus::Error> {
    let s = STATS
        .as_ref()
        .map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    registry.register(Box::new(s.pipes.clone()))?;
    registry.register(Box::new(s.bytes.clone()))?;
    Ok(())
}

static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// False once the kernel refused splice(2): every tunnel copies from then on.
pub fn available() -> bool {
    !UNSUPPORTED.load(Ordering::Relaxed)
}

/// Whether `e` means splice(2) cannot work here at all (rather than a failed connection);
/// if so, turns splice off for the process, logging it once.
pub fn refused(e: &io::Error) -> bool {
    let Some(errno) = Errno::from_io_error(e) else {
        return false;
    };
    if ![Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP, Errno::PERM].contains(&errno) {
        return false;
    }
    if !UNSUPPORTED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "splice(2) refused by the kernel; plain tunnels copy through user space from now on");
    }
    true
}

struct Fds {
    read: OwnedFd,
    write: OwnedFd,
}

/// The thread's idle pipes.
struct Pool(Vec<Fds>);

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(s) = stats() {
            s.pooled.sub(self.0.len() as i64);
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
}

/// A pipe taken from the pool, and the bytes it holds. Dropped empty, it goes back to the
/// pool; dropped with bytes in it (a tunnel ending mid-transfer), it is closed.
pub struct Pipe {
    fds: Option<Fds>,
    len: usize,
}

impl Pipe {
    /// A pipe from this thread's pool, or a new one; `None` when none can be made (out of
    /// file descriptors: the caller copies instead).
    pub fn take() -> Option<Pipe> {
        let pooled = POOL.with_borrow_mut(|p| p.0.pop());
        let fds = match pooled {
            Some(f) => {
                if let Some(s) = stats() {
                    s.pooled.dec();
                }
                f
            }
            None => {
                let (read, write) =
                    rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
                        .map_err(|e| tracing::debug!(error = %e, "no pipe for splice(2)"))
                        .ok()?;
                Fds { read, write }
            }
        };
        if let Some(s) = stats() {
            s.in_use.inc();
        }
        Some(Pipe {
            fds: Some(fds),
            len: 0,
        })
    }

    /// Bytes in the pipe, not yet written out.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the pipe holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves up to `max` bytes from `src` into the pipe, which must be empty (so a
    /// would-block means "nothing to read", never "pipe full"). `Ok(0)` is EOF.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let Some(fds) = &self.fds else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let max = max.min(PIPE_SIZE - self.len);
        loop {
            ready!(src.poll_read_ready(cx))?;
            // A would-block clears the readiness, so the next turn waits for the socket.
            match src.try_io(Interest::READABLE, || {
                rustix::pipe::splice(src, None, &fds.write, None, max, FLAGS)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => {
                    self.len += n;
                    if let Some(s) = stats() {
                        s.bytes.inc_by(n as u64);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what the pipe holds into `dst`; ready once the pipe is empty.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, dst: &TcpStream) -> Poll<io::Result<()>> {
        let Some(fds) = &self.fds else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while self.len > 0 {
            ready!(dst.poll_write_ready(cx))?;
            match dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&fds.read, None, dst, None, self.len, FLAGS)
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.len -= n.min(self.len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the bytes out of the pipe into memory (when splicing them on was refused).
    pub fn take_bytes(&mut self) -> io::Result<Vec<u8>> {
        let Some(fds) = &self.fds else {
            return Ok(Vec::new());
        };
        let mut out = vec![0u8; self.len];
        let mut off = 0;
        while off < out.len() {
            match rustix::io::read(&fds.read, &mut out[off..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => off += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.len = 0;
        Ok(out)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let s = stats();
        if let Some(s) = s {
            s.in_use.dec();
        }
        let Some(fds) = self.fds.take() else {
            return;
        };
        if self.len != 0 {
            // Bytes of a tunnel that ended mid-transfer: nobody will read them.
            return;
        }
        // `try_with`: the thread may be exiting, its pool already gone.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.0.len() < POOL_MAX {
                p.0.push(fds);
                if let Some(s) = s {
                    s.pooled.inc();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn fill_then_drain_moves_bytes_and_the_empty_pipe_goes_back() {
        let (mut src_peer, src) = pair().await;
        let (dst, mut dst_peer) = pair().await;
        src_peer.write_all(b"zero copy").await.unwrap();
        let mut pipe = Pipe::take().unwrap();
        let n = poll_fn(|cx| pipe.poll_fill(cx, &src, 1024)).await.unwrap();
        assert_eq!((n, pipe.len()), (9, 9));
        poll_fn(|cx| pipe.poll_drain(cx, &dst)).await.unwrap();
        assert!(pipe.is_empty());
        let mut got = [0u8; 9];
        dst_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"zero copy");
        drop(pipe);
        assert!(
            POOL.with_borrow(|p| p.0.len()) >= 1,
            "empty pipe not pooled"
        );
        // EOF reads as 0.
        drop(src_peer);
        let mut pipe = Pipe::take().unwrap();
        assert_eq!(
            poll_fn(|cx| pipe.poll_fill(cx, &src, 1024)).await.unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn bytes_can_be_taken_back_out_of_a_pipe() {
        let (mut src_peer, src) = pair().await;
        src_peer.write_all(b"fallback").await.unwrap();
        let mut pipe = Pipe::take().unwrap();
        poll_fn(|cx| pipe.poll_fill(cx, &src, 1024)).await.unwrap();
        assert_eq!(pipe.take_bytes().unwrap(), b"fallback");
        assert!(pipe.is_empty());
    }
}
