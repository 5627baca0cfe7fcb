//! The floor on io_uring (issue 13 lever 4): the same relay as `relay.rs`, one thread, but
//! every socket has one multishot receive (`RecvMulti`) drawing from a provided buffer ring,
//! the bytes are sent straight out of the buffer they landed in (no copy in user space), and
//! the loop makes one `io_uring_enter` (`submit_and_wait`) per batch across all tunnels.
//!
//! One send is in flight per direction: two sends on the same stream socket may complete out
//! of order once one of them waits for space, and linking them (`IO_LINK`) does not stop the
//! chain on a short send. At one message per tunnel per batch (the echo benchmarks) there is
//! nothing to link anyway; a direction with more queued sends its next chunk on completion.
//!
//! Accepting is not what this floor measures: the listener is watched with a multishot poll
//! and accepted with std, and the upstream connect is a blocking loopback connect.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Provided-buffer group id of the one buffer ring.
const BGID: u16 = 0;
/// Entries of the buffer ring (a power of two, at most 32768).
const RING: usize = 1024;
/// SQ entries; the CQ gets the kernel's default (twice as many) plus overflow backlog.
const SQ_ENTRIES: u32 = 4096;
/// Re-arm receives stopped by ENOBUFS only once this many buffers are back.
const REARM_AT: u32 = 16;
/// Buffers one direction may hold before its receive is cancelled: without a cap, a
/// direction whose peer does not read (the echo backend, itself blocked writing back to us)
/// takes the whole pool and the tunnel deadlocks. With 512 buffers, 128 directions can be
/// stalled at once before the pool runs dry.
const CAP: usize = 4;

const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 0;
const SEND: u64 = 1;
const CANCEL: u64 = 2;

fn ud(id: u64, side: usize, kind: u64) -> u64 {
    (id << 3) | ((side as u64) << 2) | kind
}

/// `struct io_uring_buf`; the kernel reads the ring's tail from `resv` of entry 0.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: AtomicU16,
}

/// The ring the kernel reads (page-aligned, as `IORING_REGISTER_PBUF_RING` wants).
#[repr(C, align(4096))]
struct RingMem([BufEntry; RING]);

/// Provided buffers: the ring and the memory it points into, both leaked so they outlive
/// the io_uring instance (whose teardown in the kernel is asynchronous).
struct Bufs {
    ring: &'static mut RingMem,
    /// Start of `n * size` bytes only the kernel writes and reads; never turned into a
    /// reference in user space (the relay does not look at the bytes it moves).
    base: *mut u8,
    size: u32,
    tail: u16,
    /// Buffers currently in the ring (free for the kernel to fill).
    free: u32,
}

impl Bufs {
    fn new(n: u16, size: u32) -> Self {
        let ring = Box::leak(Box::new(RingMem(std::array::from_fn(|_| BufEntry {
            addr: 0,
            len: 0,
            bid: 0,
            resv: AtomicU16::new(0),
        }))));
        let base = Box::leak(vec![0u8; n as usize * size as usize].into_boxed_slice()).as_mut_ptr();
        let mut b = Bufs {
            ring,
            base,
            size,
            tail: 0,
            free: 0,
        };
        for bid in 0..n {
            b.put(bid);
        }
        b.publish();
        b
    }

    fn addr(&self, bid: u16, off: u32) -> *const u8 {
        self.base
            .wrapping_add(bid as usize * self.size as usize + off as usize)
            .cast_const()
    }

    /// Gives `bid` back to the kernel (visible after `publish`).
    fn put(&mut self, bid: u16) {
        let addr = self.addr(bid, 0) as u64;
        let e = &mut self.ring.0[self.tail as usize & (RING - 1)];
        e.addr = addr;
        e.len = self.size;
        e.bid = bid;
        self.tail = self.tail.wrapping_add(1);
        self.free += 1;
    }

    fn publish(&self) {
        // Release: the entries written above are visible before the kernel sees the tail.
        self.ring.0[0].resv.store(self.tail, Ordering::Release);
    }
}

#[derive(Default)]
struct Dir {
    /// Received on this side, not yet taken by the other: (buffer id, offset, length).
    queue: VecDeque<(u16, u32, u32)>,
    /// A send of `queue.front()` is in flight.
    sending: bool,
    /// The multishot receive on this side is armed.
    recv_armed: bool,
    /// A cancel of that receive is on its way (the queue reached `CAP`).
    cancelling: bool,
    eof: bool,
}

struct Tunnel {
    /// 0: client, 1: upstream.
    socks: [TcpStream; 2],
    /// `dirs[s]`: bytes received on `socks[s]`, to be sent on `socks[1 - s]`.
    dirs: [Dir; 2],
    closing: bool,
}

impl Tunnel {
    fn in_flight(&self) -> bool {
        self.dirs.iter().any(|d| d.sending || d.recv_armed)
    }
}

struct Relay {
    ring: IoUring,
    bufs: Bufs,
    tunnels: HashMap<u64, Tunnel>,
    /// Sockets whose receive stopped for want of buffers.
    starved: Vec<(u64, usize)>,
    /// Sends queued in this batch whose completion may wait for the next real event.
    lazy: Vec<(u64, usize)>,
}

/// Builds the ring with the cheapest task-run mode the kernel allows; the error if none.
fn build_ring() -> io::Result<(IoUring, &'static str)> {
    if let Ok(r) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES)
    {
        return Ok((r, "single_issuer+defer_taskrun"));
    }
    if let Ok(r) = IoUring::builder().setup_coop_taskrun().build(SQ_ENTRIES) {
        return Ok((r, "coop_taskrun"));
    }
    Ok((IoUring::new(SQ_ENTRIES)?, "default"))
}

/// Runs the io_uring relay forever; an error if io_uring is not available here.
pub fn run(bind: SocketAddr, to: SocketAddr, nbufs: u16, buf_size: u32) -> io::Result<()> {
    if !nbufs.is_power_of_two() || nbufs as usize > RING {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("--uring-bufs must be a power of two ≤ {RING}"),
        ));
    }
    let (ring, mode) = build_ring().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "io_uring unavailable ({e}; seccomp or io_uring_disabled?): use --engine epoll"
            ),
        )
    })?;
    let bufs = Bufs::new(nbufs, buf_size);
    // SAFETY: the ring memory is leaked ('static, never moved or freed) and holds RING
    // entries, as the registration says.
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            std::ptr::from_ref::<RingMem>(bufs.ring) as u64,
            RING as u16,
            BGID,
            0,
        )
    }
    .map_err(|e| io::Error::new(e.kind(), format!("io_uring buffer ring: {e}")))?;
    eprintln!("loadgen relay: io_uring engine ({mode}), {nbufs} × {buf_size} B provided buffers");
    let listener = TcpListener::bind(bind)?;
    listener.set_nonblocking(true)?;
    let mut r = Relay {
        ring,
        bufs,
        tunnels: HashMap::new(),
        starved: Vec::new(),
        lazy: Vec::new(),
    };
    r.arm_accept(&listener)?;
    let mut next_id = 0u64;
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    loop {
        // Sends mostly complete inline while being submitted; waiting for one completion
        // would return at once with theirs and cost a second enter per hop. So wait for one
        // more than the lazy sends: a real event (a receive, a send that had to wait).
        let want = 1 + r.lazy_sends().min(SQ_ENTRIES as usize);
        // A tracer attaching interrupts the wait; EBUSY: completions to reap first.
        match r.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(
            r.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &cqes {
            if data == ACCEPT {
                if !cqueue::more(flags) {
                    r.arm_accept(&listener)?;
                }
                r.accept_all(&listener, to, &mut next_id)?;
                continue;
            }
            let (id, side, kind) = (data >> 3, ((data >> 2) & 1) as usize, data & 3);
            match kind {
                RECV => r.on_recv(id, side, res, flags)?,
                SEND => r.on_send(id, side, res)?,
                _ => {}
            }
            r.maybe_close(id)?;
        }
        r.bufs.publish();
        if !r.starved.is_empty() && r.bufs.free >= REARM_AT {
            for (id, side) in std::mem::take(&mut r.starved) {
                r.arm_recv(id, side)?;
            }
        }
    }
}

impl Relay {
    /// Queues an SQE, flushing the submission queue first if it is full.
    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points to (provided buffers, the listener and
            // tunnel sockets' fds) stays valid until its completion is reaped: buffers are
            // leaked, and a tunnel is dropped only when none of its operations is in flight.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// How many of this batch's sends nothing waits on (checked after the whole batch: an
    /// EOF later in the batch makes the close wait for the send). Such a completion only
    /// returns a buffer, so it may sit in the CQ until the next real event; anything that
    /// would wait on it later (more data, EOF, ENOBUFS) is such an event itself.
    fn lazy_sends(&mut self) -> usize {
        let mut n = 0;
        for (id, side) in self.lazy.drain(..) {
            if let Some(t) = self.tunnels.get(&id) {
                let d = &t.dirs[side];
                if !t.closing && d.sending && d.queue.len() == 1 && d.recv_armed && !d.eof {
                    n += 1;
                }
            }
        }
        n
    }

    fn arm_accept(&mut self, l: &TcpListener) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(l.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ACCEPT);
        self.push(e)
    }

    fn accept_all(&mut self, l: &TcpListener, to: SocketAddr, next: &mut u64) -> io::Result<()> {
        loop {
            let client = match l.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Out of fds and the like: the client goes, the relay stays.
                Err(e) => {
                    eprintln!("loadgen relay: accept: {e}");
                    return Ok(());
                }
            };
            let upstream = match TcpStream::connect(to) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("loadgen relay: connect {to}: {e}");
                    continue;
                }
            };
            for s in [&client, &upstream] {
                s.set_nonblocking(true)?;
                let _ = s.set_nodelay(true);
            }
            let id = *next;
            *next += 1;
            self.tunnels.insert(
                id,
                Tunnel {
                    socks: [client, upstream],
                    dirs: Default::default(),
                    closing: false,
                },
            );
            self.arm_recv(id, 0)?;
            self.arm_recv(id, 1)?;
        }
    }

    fn arm_recv(&mut self, id: u64, side: usize) -> io::Result<()> {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return Ok(());
        };
        let d = &mut t.dirs[side];
        if t.closing || d.eof || d.recv_armed || d.queue.len() >= CAP {
            return Ok(());
        }
        d.recv_armed = true;
        d.cancelling = false;
        let fd = t.socks[side].as_raw_fd();
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(ud(id, side, RECV));
        self.push(e)
    }

    fn on_recv(&mut self, id: u64, side: usize, res: i32, flags: u32) -> io::Result<()> {
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.bufs.free -= 1;
        }
        let Some(t) = self.tunnels.get_mut(&id) else {
            if let Some(b) = bid {
                self.bufs.put(b);
            }
            return Ok(());
        };
        let more = cqueue::more(flags);
        let d = &mut t.dirs[side];
        if !more {
            d.recv_armed = false;
        }
        if res > 0 {
            let Some(b) = bid else {
                return Err(io::Error::other("receive completion without a buffer"));
            };
            if t.closing {
                self.bufs.put(b);
                return Ok(());
            }
            d.queue.push_back((b, 0, res as u32));
            if more && d.queue.len() >= CAP && !d.cancelling {
                // Backpressure: stop taking buffers until the other side drains some.
                d.cancelling = true;
                let e = opcode::AsyncCancel::new(ud(id, side, RECV))
                    .build()
                    .user_data(ud(id, side, CANCEL));
                self.push(e)?;
            } else if !more {
                // The kernel ended the multishot (CQ overflow and the like): keep reading.
                self.arm_recv(id, side)?;
            }
            return self.kick_send(id, side);
        }
        if res == 0 {
            d.eof = true;
        } else if res == -libc::ENOBUFS {
            if !t.closing {
                self.starved.push((id, side));
            }
        } else if res == -libc::ECANCELED && d.cancelling {
            // Paused by backpressure; `on_send` re-arms once the queue drains.
        } else if !t.closing {
            self.close(id);
        }
        Ok(())
    }

    /// Sends the front of `dirs[side]` unless a send is already in flight.
    fn kick_send(&mut self, id: u64, side: usize) -> io::Result<()> {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return Ok(());
        };
        let d = &mut t.dirs[side];
        if t.closing || d.sending {
            return Ok(());
        }
        let Some(&(bid, off, len)) = d.queue.front() else {
            return Ok(());
        };
        d.sending = true;
        self.lazy.push((id, side));
        let fd = t.socks[1 - side].as_raw_fd();
        let e = opcode::Send::new(types::Fd(fd), self.bufs.addr(bid, off), len)
            // WAITALL: the kernel retries a short send itself instead of completing it.
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .user_data(ud(id, side, SEND));
        self.push(e)
    }

    fn on_send(&mut self, id: u64, side: usize, res: i32) -> io::Result<()> {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return Ok(());
        };
        let d = &mut t.dirs[side];
        d.sending = false;
        let Some(front) = d.queue.front_mut() else {
            return Ok(());
        };
        if res <= 0 {
            // The peer went away (or shutdown() during close): the tunnel ends.
            if !t.closing {
                self.close(id);
            } else if let Some((b, _, _)) = d.queue.pop_front() {
                self.bufs.put(b);
            }
            return Ok(());
        }
        let n = (res as u32).min(front.2);
        front.1 += n;
        front.2 -= n;
        if front.2 == 0 {
            let b = front.0;
            d.queue.pop_front();
            self.bufs.put(b);
        }
        if t.closing {
            if let Some((b, _, _)) = d.queue.pop_front() {
                self.bufs.put(b);
            }
            return Ok(());
        }
        if !d.recv_armed && d.queue.len() < CAP / 2 {
            // Paused (or starved, then possibly ENOBUFS again: cheap, and it cannot wedge).
            self.arm_recv(id, side)?;
        }
        self.kick_send(id, side)
    }

    /// Starts closing a tunnel: both sockets shut down, which completes its receives and
    /// fails its sends; the tunnel is dropped (fds closed) once nothing of it is in flight.
    fn close(&mut self, id: u64) {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        t.closing = true;
        for s in &t.socks {
            let _ = s.shutdown(Shutdown::Both);
        }
        let mut cancels = Vec::new();
        for (side, d) in t.dirs.iter_mut().enumerate() {
            let keep = usize::from(d.sending);
            for (b, _, _) in d.queue.drain(keep..) {
                self.bufs.put(b);
            }
            if d.recv_armed {
                cancels.push(ud(id, side, RECV));
            }
        }
        for target in cancels {
            // Belt and braces beside shutdown(); the result does not matter.
            let e = opcode::AsyncCancel::new(target)
                .build()
                .user_data(ud(id, 0, CANCEL));
            let _ = self.push(e);
        }
    }

    /// Either side at EOF with all it sent delivered ends the pair (as nginx does for
    /// upgraded connections, and as the epoll relay does).
    fn maybe_close(&mut self, id: u64) -> io::Result<()> {
        let Some(t) = self.tunnels.get(&id) else {
            return Ok(());
        };
        if !t.closing
            && t.dirs
                .iter()
                .any(|d| d.eof && d.queue.is_empty() && !d.sending)
        {
            self.close(id);
        }
        if let Some(t) = self.tunnels.get(&id) {
            if t.closing && !t.in_flight() {
                self.tunnels.remove(&id);
            }
        }
        Ok(())
    }
}
