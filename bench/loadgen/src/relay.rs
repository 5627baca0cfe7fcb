//! The floor: the smallest useful TCP relay, one thread, one epoll loop (mio), no HTTP.
//!
//! Every accepted connection gets a non-blocking connect to the target and bytes are copied
//! both ways through one shared 64 KiB buffer; only bytes a socket cannot take yet are kept
//! per connection. The WebSocket upgrade passes through untouched (the echo backend answers
//! it), so the loadgen measures this exactly like a proxy. Level-triggered readiness is not
//! available in mio, so each side is drained until WouldBlock (edge-triggered, as nginx).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Pair {
    client: TcpStream,
    upstream: TcpStream,
    /// Bytes read from the client that the upstream has not taken yet (and the reverse).
    to_upstream: Vec<u8>,
    to_client: Vec<u8>,
    client_eof: bool,
    upstream_eof: bool,
}

/// Runs the relay forever (until killed).
pub fn run(bind: SocketAddr, to: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(bind)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut pairs: HashMap<usize, Pair> = HashMap::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A tracer attaching (strace, perf) interrupts the wait: not a reason to stop.
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut client, _)) => {
                            let mut upstream = TcpStream::connect(to)?;
                            let _ = client.set_nodelay(true);
                            let _ = upstream.set_nodelay(true);
                            let id = next;
                            next += 2;
                            let both = Interest::READABLE | Interest::WRITABLE;
                            poll.registry().register(&mut client, Token(id), both)?;
                            poll.registry()
                                .register(&mut upstream, Token(id + 1), both)?;
                            pairs.insert(
                                id,
                                Pair {
                                    client,
                                    upstream,
                                    to_upstream: Vec::new(),
                                    to_client: Vec::new(),
                                    client_eof: false,
                                    upstream_eof: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let id = ev.token().0 & !1;
            let Some(p) = pairs.get_mut(&id) else {
                continue;
            };
            // Either side's readiness: move what can move both ways.
            let ok = pump(
                &mut p.client,
                &mut p.upstream,
                &mut p.to_upstream,
                &mut p.client_eof,
                &mut buf,
            ) && pump(
                &mut p.upstream,
                &mut p.client,
                &mut p.to_client,
                &mut p.upstream_eof,
                &mut buf,
            );
            // Either side hanging up ends the pair once what it sent is delivered (as nginx
            // does for upgraded connections): no half-close bookkeeping on the floor.
            if !ok
                || (p.client_eof && p.to_upstream.is_empty())
                || (p.upstream_eof && p.to_client.is_empty())
            {
                if let Some(mut p) = pairs.remove(&id) {
                    let _ = poll.registry().deregister(&mut p.client);
                    let _ = poll.registry().deregister(&mut p.upstream);
                }
            }
        }
    }
}

/// Copies `from` → `to` until `from` would block; false when the pair must close.
fn pump(
    from: &mut TcpStream,
    to: &mut TcpStream,
    pending: &mut Vec<u8>,
    eof: &mut bool,
    buf: &mut [u8],
) -> bool {
    if !pending.is_empty() {
        match write_some(to, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(_) => return false,
        }
        if !pending.is_empty() {
            return true;
        }
    }
    while !*eof {
        match from.read(buf) {
            Ok(0) => *eof = true,
            Ok(n) => match write_some(to, &buf[..n]) {
                Ok(w) if w == n => {}
                Ok(w) => {
                    pending.extend_from_slice(&buf[w..n]);
                    return true;
                }
                Err(_) => return false,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes as much of `data` as the socket takes now.
fn write_some(to: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match to.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // Connect still in progress: the first writable event retries.
            Err(e) if e.kind() == ErrorKind::NotConnected => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
