//! TLS streams on rustls' unbuffered API: the listeners' (server side) and the `wss://`
//! upstreams' (client side).
//!
//! tokio-rustls drives rustls' buffered connection, which keeps a 4 KiB receive buffer
//! per connection for its whole life (rustls never shrinks it below one read). Here rustls
//! only holds the session: records are read into and sealed in per-thread scratch
//! buffers, and a connection owns bytes only while they are in flight (a partial record,
//! plaintext the reader had no room for, ciphertext the socket did not take). An idle
//! TLS tunnel therefore holds no buffer at all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most plaintext sealed per write: four full records, so bulk writes go out as one
/// batch of records in one syscall.
const SEAL_PLAINTEXT: usize = 4 * 16 * 1024;
/// Room for `SEAL_PLAINTEXT` once sealed (each TLS 1.3 record adds 22 bytes, TLS 1.2 up to 29).
const SEAL_LEN: usize = SEAL_PLAINTEXT + 4 * 64;
/// The per-thread read buffer: a partial record or handshake message carried over, plus
/// one read. rustls joins handshake messages of up to 64 KiB across records.
const OPEN_LEN: usize = 96 * 1024;
/// The least a read may ask the socket for.
const MIN_READ: usize = 16 * 1024;

thread_local! {
    /// Ciphertext being read and decrypted on this thread.
    static OPEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Ciphertext being sealed and written on this thread.
    static SEAL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A rustls unbuffered connection, server or client side.
pub trait Session {
    /// rustls' side-specific connection data.
    type Data;
    /// rustls' `process_tls_records` for this side.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// What both sides share: handshake progress, ALPN.
    fn common(&self) -> &CommonState;
}

impl Session for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

impl Session for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

/// A listener's TLS connection (server side).
pub type ServerTlsStream = TlsStream<UnbufferedServerConnection>;
/// A `wss://` upstream's TLS connection (client side).
pub type ClientTlsStream = TlsStream<UnbufferedClientConnection>;

/// A TLS connection over TCP, after its handshake.
pub struct TlsStream<S> {
    io: TcpStream,
    conn: S,
    /// Received bytes rustls has not consumed yet (an unfinished record); usually empty.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader had no room for, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext the socket has not taken yet, from `out_at` on.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer's close_notify arrived: reads end once `plain` is drained.
    peer_closed: bool,
    /// The TCP stream ended.
    eof: bool,
    /// Our close_notify is queued: nothing more may be written.
    write_closed: bool,
}

/// What one turn of rustls' state machine came to.
enum Turn {
    /// Decrypted data went to the reader (or into `plain`).
    Plaintext,
    /// rustls produced or consumed something; turn again.
    Again,
    /// rustls needs more bytes from the peer.
    NeedData,
    /// The data (or close_notify) was sealed: this many ciphertext bytes.
    Sealed(usize),
    /// The peer's close_notify was read.
    PeerClosed,
    /// Both close_notify alerts have passed.
    Closed,
}

/// What a turn may seal once rustls allows application data.
#[derive(Clone, Copy)]
enum Seal<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Accepts a TLS connection: runs the handshake on `io` with `config`.
pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<ServerTlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    handshake(io, conn).await
}

/// Connects over `io` to the server called `name`: runs the handshake with `config`.
pub async fn connect(
    io: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<ClientTlsStream> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    handshake(io, conn).await
}

async fn handshake<S: Session>(io: TcpStream, conn: S) -> io::Result<TlsStream<S>> {
    let mut tls = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        out_at: 0,
        peer_closed: false,
        eof: false,
        write_closed: false,
    };
    // The handshake is short-lived: plain Vecs are fine here.
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let mut consumed = 0;
        let turn = tls.turn(&mut inbuf, &mut consumed, None, None);
        inbuf.drain(..consumed);
        match turn {
            Ok(Turn::Again) => {}
            Ok(Turn::NeedData) if tls.conn.common().is_handshaking() => {
                if !tls.outgoing.is_empty() {
                    tls.io.write_all(&tls.outgoing).await?;
                    tls.outgoing = Vec::new();
                }
                if inbuf.len() >= OPEN_LEN - MIN_READ {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS handshake message too large",
                    ));
                }
                inbuf.reserve(MIN_READ);
                if tls.io.read_buf(&mut inbuf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tls handshake eof",
                    ));
                }
            }
            // Application data may already follow the client's Finished: it stays queued
            // in rustls (or in `inbuf`) for the first read.
            Ok(_) if !tls.conn.common().is_handshaking() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
            Err(e) => {
                tls.send_alert();
                return Err(e);
            }
        }
    }
    // Session tickets and the rest of the server's flight.
    if !tls.outgoing.is_empty() {
        tls.io.write_all(&tls.outgoing).await?;
        tls.outgoing = Vec::new();
    }
    if !inbuf.is_empty() {
        tls.incoming = inbuf;
    }
    Ok(tls)
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl<S: Session> TlsStream<S> {
    /// The protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.common().alpn_protocol()
    }

    /// One step of rustls over `bytes` (received ciphertext). `consumed` grows by what
    /// rustls is done with; the caller removes that from the front before the next turn.
    /// Decrypted data goes into `read` while it has room, then into `self.plain`.
    fn turn(
        &mut self,
        bytes: &mut [u8],
        consumed: &mut usize,
        mut read: Option<&mut ReadBuf<'_>>,
        seal: Option<(Seal<'_>, &mut Vec<u8>)>,
    ) -> io::Result<Turn> {
        let status = self.conn.process(&mut bytes[*consumed..]);
        let mut discard = status.discard;
        let turn = match status.state {
            Err(e) => Err(tls_error(e)),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut result = Ok(Turn::Plaintext);
                while let Some(record) = traffic.next_record() {
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            result = Err(tls_error(e));
                            break;
                        }
                    };
                    discard += record.discard;
                    let payload = record.payload;
                    match read.as_deref_mut() {
                        Some(r) if self.plain.is_empty() => {
                            let n = payload.len().min(r.remaining());
                            r.put_slice(&payload[..n]);
                            self.plain.extend_from_slice(&payload[n..]);
                        }
                        _ => self.plain.extend_from_slice(payload),
                    }
                }
                result
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                let at = self.outgoing.len();
                let mut need = 1024;
                loop {
                    self.outgoing.resize(at + need, 0);
                    match encode.encode(&mut self.outgoing[at..]) {
                        Ok(n) => {
                            self.outgoing.truncate(at + n);
                            break Ok(Turn::Again);
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => need = required_size,
                        Err(e) => {
                            self.outgoing.truncate(at);
                            break Err(io::Error::other(e));
                        }
                    }
                }
            }
            // The bytes are in `outgoing` already: whoever flushes next sends them.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Ok(Turn::Again)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Turn::NeedData),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match seal {
                None => Ok(Turn::NeedData),
                Some((what, out)) => loop {
                    let sealed = match what {
                        Seal::Data(data) => traffic.encrypt(data, out),
                        Seal::CloseNotify => traffic.queue_close_notify(out),
                    };
                    match sealed {
                        Ok(n) => break Ok(Turn::Sealed(n)),
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) if required_size > out.len() => out.resize(required_size, 0),
                        Err(e) => break Err(io::Error::other(e)),
                    }
                },
            },
            Ok(ConnectionState::PeerClosed) => Ok(Turn::PeerClosed),
            Ok(ConnectionState::Closed) => Ok(Turn::Closed),
            // 0-RTT is never enabled, and later states are not ours to guess at.
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS connection state",
            )),
        };
        *consumed += discard;
        if matches!(turn, Ok(Turn::PeerClosed)) {
            self.peer_closed = true;
        }
        turn
    }

    /// After a TLS error: encodes the alert rustls queued and sends it if the socket
    /// takes it right away. Best effort; the connection is closed either way.
    fn send_alert(&mut self) {
        // One turn only: the alert is the first thing rustls hands out after an error,
        // and turning further would deframe again.
        let mut consumed = 0;
        let _ = self.turn(&mut [], &mut consumed, None, None);
        let pending = &self.outgoing[self.out_at..];
        if !pending.is_empty() {
            let _ = self.io.try_write(pending);
        }
        self.outgoing = Vec::new();
        self.out_at = 0;
    }

    /// Turns rustls over the bytes in hand (`self.incoming`, then `open[..len]` if given)
    /// until it needs more or the reader got something. Leftover ciphertext ends up in
    /// `self.incoming`.
    fn run_records(
        &mut self,
        open: Option<(&mut [u8], usize)>,
        read: &mut ReadBuf<'_>,
    ) -> io::Result<Turn> {
        // The Vec's capacity stays while the connection is busy (a bulk stream leaves a
        // partial record after most reads); the read that parks frees it.
        let mut held = std::mem::take(&mut self.incoming);
        match open {
            Some((open, len)) => {
                let (result, consumed) = self.drive(&mut open[..len], read);
                if result.is_ok() {
                    held.clear();
                    held.extend_from_slice(&open[consumed..len]);
                    self.incoming = held;
                }
                result
            }
            None => {
                let (result, consumed) = self.drive(&mut held, read);
                if result.is_ok() {
                    held.drain(..consumed);
                    self.incoming = held;
                }
                result
            }
        }
    }

    /// The turns of `run_records` over `bytes`; also says how many bytes rustls is done with.
    fn drive(&mut self, bytes: &mut [u8], read: &mut ReadBuf<'_>) -> (io::Result<Turn>, usize) {
        let mut consumed = 0;
        let mut delivered = false;
        let result = loop {
            match self.turn(bytes, &mut consumed, Some(read), None) {
                Ok(Turn::Plaintext) => {
                    delivered = true;
                    // Keep decrypting while the reader has room and whole records wait.
                    if read.remaining() == 0 || !self.plain.is_empty() {
                        break Ok(Turn::Plaintext);
                    }
                }
                Ok(Turn::Again) => {}
                Ok(Turn::NeedData) if delivered => break Ok(Turn::Plaintext),
                Ok(Turn::PeerClosed) if delivered => break Ok(Turn::Plaintext),
                other => break other,
            }
        };
        (result, consumed)
    }

    /// Sends what `outgoing` holds; Ready once it is empty. Its capacity stays for the next
    /// write's tail (a bulk stream leaves one after most writes): `poll_flush` frees it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_at..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_at += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.outgoing.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals `what` in the per-thread buffer and writes it; what the socket does not take
    /// now stays in `outgoing`.
    fn seal_and_write(&mut self, cx: &mut Context<'_>, what: Seal<'_>) -> io::Result<()> {
        SEAL.with(|cell| {
            let mut scratch = cell.borrow_mut();
            if scratch.len() < SEAL_LEN {
                scratch.resize(SEAL_LEN, 0);
            }
            let mut held = std::mem::take(&mut self.incoming);
            let mut consumed = 0;
            let sealed = loop {
                let turn = self.turn(&mut held, &mut consumed, None, Some((what, &mut scratch)));
                match turn {
                    Ok(Turn::Sealed(n)) => break Ok(n),
                    // Records read earlier but not yet decrypted: their plaintext waits
                    // in `plain` for the reader.
                    Ok(Turn::Again | Turn::Plaintext | Turn::PeerClosed) => {}
                    Ok(Turn::NeedData | Turn::Closed) => {
                        break Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "TLS connection closed for writing",
                        ));
                    }
                    Err(e) => break Err(e),
                }
            };
            held.drain(..consumed);
            self.incoming = if held.is_empty() { Vec::new() } else { held };
            let n = sealed?;
            let mut off = 0;
            // Records rustls queued first (a key update) keep their place in line.
            if self.out_at == self.outgoing.len() {
                while off < n {
                    match Pin::new(&mut self.io).poll_write(cx, &scratch[off..n]) {
                        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(w)) => off += w,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => break,
                    }
                }
            }
            self.outgoing.extend_from_slice(&scratch[off..n]);
            Ok(())
        })
    }
}

impl<S: Session + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.plain_at < this.plain.len() {
            let n = (this.plain.len() - this.plain_at).min(buf.remaining());
            buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
            this.plain_at += n;
            if this.plain_at == this.plain.len() {
                this.plain = Vec::new();
                this.plain_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Whole records may be waiting from an earlier read.
            if !this.incoming.is_empty() {
                match this.run_records(None, buf) {
                    Ok(Turn::Plaintext) => return Poll::Ready(Ok(())),
                    Ok(Turn::PeerClosed) => return Poll::Ready(Ok(())),
                    Ok(Turn::Closed) => return Poll::Ready(Ok(())),
                    Ok(_) => {}
                    Err(e) => {
                        this.send_alert();
                        return Poll::Ready(Err(e));
                    }
                }
            }
            // Anything rustls wants sent (session tickets, a key update, alerts).
            if this.out_at < this.outgoing.len() {
                match this.poll_drain(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => this.outgoing = Vec::new(),
                    Poll::Pending => {}
                }
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            let step = OPEN.with(|cell| -> Poll<io::Result<Option<Turn>>> {
                let mut open = cell.borrow_mut();
                if open.len() < OPEN_LEN {
                    open.resize(OPEN_LEN, 0);
                }
                let carried = this.incoming.len();
                if carried > OPEN_LEN - MIN_READ {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS message too large",
                    )));
                }
                let mut rb = ReadBuf::new(&mut open[carried..]);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                let got = rb.filled().len();
                if got == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(None));
                }
                open[..carried].copy_from_slice(&this.incoming);
                this.incoming.clear();
                this.run_records(Some((&mut open[..], carried + got)), buf)
                    .map(Some)
                    .into()
            });
            match step {
                Poll::Pending => {
                    // Idle: nothing held but what a partial record needs.
                    if this.incoming.capacity() > this.incoming.len() {
                        this.incoming.shrink_to_fit();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(None)) => {}
                Poll::Ready(Ok(Some(Turn::Plaintext | Turn::PeerClosed | Turn::Closed))) => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(Some(_))) => {}
                Poll::Ready(Err(e)) => {
                    this.send_alert();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<S: Session + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS connection closed for writing",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(SEAL_PLAINTEXT);
        this.seal_and_write(cx, Seal::Data(&data[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // Caught up (the splice flushes when its reader has nothing more): nothing is held.
        this.outgoing = Vec::new();
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_drain(cx))?;
            this.write_closed = true;
            // A connection rustls already closed has no close_notify left to send.
            if let Err(e) = this.seal_and_write(cx, Seal::CloseNotify)
                && e.kind() != io::ErrorKind::BrokenPipe
            {
                return Poll::Ready(Err(e));
            }
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as BufferedTls;

    fn configs() -> (Arc<ServerConfig>, TlsConnector) {
        let (server, client) = config_pair();
        (server, TlsConnector::from(client))
    }

    /// A server config and a client config that trusts (only) its certificate.
    fn config_pair() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = ck.cert.der().clone();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    async fn buffered_client(connector: &TlsConnector, tcp: TcpStream) -> BufferedTls<TcpStream> {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    /// A connected pair: (client, server) over real loopback TCP.
    async fn pair() -> (BufferedTls<TcpStream>, ServerTlsStream) {
        let (server_cfg, connector) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, server_cfg).await.unwrap()
        });
        let client = buffered_client(&connector, TcpStream::connect(addr).await.unwrap()).await;
        (client, server.await.unwrap())
    }

    /// Echoes through a deliberately small read buffer, so records outgrow the reader.
    async fn echo(mut s: ServerTlsStream) {
        let mut buf = [0u8; 100];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
            }
        }
        let _ = s.shutdown().await;
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn large_messages_cross_both_ways_through_a_small_read_buffer() {
        let (mut client, server) = pair().await;
        tokio::spawn(echo(server));
        let sent = pattern(300 * 1024);
        let (mut r, mut w) = tokio::io::split(&mut client);
        let writer = async {
            w.write_all(&sent).await.unwrap();
            w.flush().await.unwrap();
        };
        let mut got = vec![0u8; sent.len()];
        let reader = r.read_exact(&mut got);
        let (_, read) = tokio::join!(writer, reader);
        read.unwrap();
        assert!(got == sent, "the echo differs from what was sent");
    }

    #[tokio::test]
    async fn records_arriving_in_seven_byte_pieces_are_put_back_together() {
        let (server_cfg, connector) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            echo(accept(tcp, server_cfg).await.unwrap()).await;
        });
        // A relay that hands the server the client's bytes (handshake included) in
        // 7-byte writes, so record headers and handshake messages split across reads.
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = front.accept().await.unwrap();
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (mut cr, mut cw) = c.split();
            let (mut sr, mut sw) = s.split();
            let up = async {
                let mut buf = [0u8; 4096];
                loop {
                    let n = cr.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    for piece in buf[..n].chunks(7) {
                        sw.write_all(piece).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let _ = sw.shutdown().await;
            };
            let down = tokio::io::copy(&mut sr, &mut cw);
            let _ = tokio::join!(up, down);
        });
        let mut client =
            buffered_client(&connector, TcpStream::connect(front_addr).await.unwrap()).await;
        let sent = pattern(700);
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0u8; sent.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn close_notify_ends_reads_cleanly_both_ways() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap(); // close_notify, then FIN
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        server
            .write_all(b"reply after the peer's close")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply after the peer's close");
    }

    #[tokio::test]
    async fn a_tcp_eof_without_close_notify_is_an_unexpected_eof() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"partial").await.unwrap();
        client.flush().await.unwrap();
        client.get_mut().0.shutdown().await.unwrap(); // FIN, no close_notify
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"partial");
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn plain_http_instead_of_a_hello_is_refused_with_an_alert() {
        let (server_cfg, _) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, server_cfg).await.map(|_| ())
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    }

    #[tokio::test]
    async fn the_client_side_talks_to_a_buffered_rustls_server_and_idles_bufferless() {
        let (server_cfg, client_cfg) = config_pair();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server: tokio-rustls' buffered connection, echoing.
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = tokio_rustls::TlsAcceptor::from(server_cfg)
                .accept(tcp)
                .await
                .unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
                }
            }
            let _ = s.shutdown().await;
        });
        let mut client = connect(
            TcpStream::connect(addr).await.unwrap(),
            client_cfg,
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .await
        .unwrap();
        for size in [5, 70_000] {
            let sent = pattern(size);
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0u8; size];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == sent);
            assert_read_parks(&mut client).await;
            assert_eq!(held(&client), 0, "after a {size}-byte exchange");
        }
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// Polls one read and checks that it parks (nothing to read, the idle point).
    async fn assert_read_parks<S: Session + Unpin>(s: &mut TlsStream<S>) {
        poll_fn(|cx| {
            let mut b = [0u8; 16];
            let mut rb = ReadBuf::new(&mut b);
            assert!(Pin::new(&mut *s).poll_read(cx, &mut rb).is_pending());
            Poll::Ready(())
        })
        .await;
    }

    /// Bytes the connection owns outside rustls.
    fn held<S>(s: &TlsStream<S>) -> usize {
        s.incoming.capacity() + s.plain.capacity() + s.outgoing.capacity()
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut client, mut server) = pair().await;
        for size in [10, 20_000, 100_000] {
            let sent = pattern(size);
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0u8; size];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            server.flush().await.unwrap();
            let mut back = vec![0u8; size];
            client.read_exact(&mut back).await.unwrap();
            assert!(back == sent);
            // Nothing more to read: the read parks, and with it every buffer goes.
            assert_read_parks(&mut server).await;
            assert_eq!(held(&server), 0, "after a {size}-byte exchange");
        }
        // Half a record in flight: only that half is held.
        // A raw prefix of a record header + some bytes, sent on the client's socket.
        client
            .get_mut()
            .0
            .write_all(&[0x17, 0x03, 0x03, 0x01, 0x00, 1, 2, 3])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_read_parks(&mut server).await;
        assert_eq!(held(&server), 8, "a partial record is all that is held");
    }
}
