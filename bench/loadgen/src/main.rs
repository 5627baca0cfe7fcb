//! wsgate benchmark load generator and echo backend (see bench/run.sh).
//!
//! Modes (each prints one JSON line with its results on stdout):
//! - `echo --bind ADDR`          minimal WebSocket echo server (raw frames, cheap per byte)
//! - `rate`      N connections, total R msg/s of 128 B, RTT percentiles
//! - `bulk`      16 KiB messages each way as fast as possible, MB/s
//! - `idle`      open N connections from several 127.0.0.x sources and hold them, RSS/conn
//! - `handshake` connect, upgrade, close in a loop, handshakes/s and CPU/handshake
//!
//! `--h2 N` (wss:// only) carries the WebSockets as HTTP/2 extended CONNECT streams (RFC 8441),
//! N streams per HTTP/2 connection, instead of one HTTP/1.1 connection each.
//!
//! `--pid P1,P2` names the proxy's processes: their utime+stime (/proc/PID/stat, all
//! threads) and VmRSS are read at the start and end of the measured window.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow_lite::{bail, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over any byte stream (TCP, TLS or an HTTP/2 stream).
type Ws = WebSocketStream<Box<dyn Stream>>;
type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// Tiny error helper so the crate needs no anyhow.
mod anyhow_lite {
    pub type Error = Box<dyn std::error::Error + Send + Sync>;
    pub type Result<T, E = Error> = std::result::Result<T, E>;
    macro_rules! bail {
        ($($t:tt)*) => { return Err(format!($($t)*).into()) };
    }
    pub(crate) use bail;
}

#[derive(Parser)]
#[command(about = "wsgate benchmark load generator and echo backend")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

mod relay;
mod relay_uring;

/// How `loadgen relay` waits for its sockets.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Engine {
    /// Readiness with epoll (mio), read/write per socket.
    Epoll,
    /// io_uring: multishot receives into provided buffers, one enter per batch.
    Uring,
}

#[derive(Subcommand)]
enum Cmd {
    /// The floor: a minimal one-thread TCP relay (no HTTP) in front of --to, epoll or io_uring.
    Relay {
        #[arg(long)]
        bind: std::net::SocketAddr,
        #[arg(long)]
        to: std::net::SocketAddr,
        /// `uring` exits non-zero with one line where io_uring is blocked (no silent fallback:
        /// a bench target must measure what it is named after).
        #[arg(long, value_enum, default_value_t = Engine::Epoll)]
        engine: Engine,
        /// io_uring: provided buffers in the ring (a power of two, ≤ 1024).
        #[arg(long, default_value_t = 512)]
        uring_bufs: u16,
        /// io_uring: bytes per provided buffer (one receive fills at most one).
        #[arg(long, default_value_t = 32768)]
        uring_buf_size: u32,
    },
    /// WebSocket echo backend.
    Echo {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Fixed rate of 128 B echoes over N connections; RTT percentiles.
    Rate {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Total messages per second over all connections.
        #[arg(long, default_value_t = 20000)]
        rate: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Max throughput: messages of SIZE bytes each way, pipelined.
    Bulk {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 16384)]
        size: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 4.0)]
        duration: f64,
    },
    /// Open N connections (one echo each) and hold them; proxy RSS per connection.
    Idle {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 9500)]
        conns: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to wait after the last open before reading RSS.
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
        /// Seconds to hold the connections after measuring.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Give up opening after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Connect, upgrade, close, repeat.
    Handshake {
        #[command(flatten)]
        t: Target,
        /// Concurrent loops.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 4.0)]
        duration: f64,
        /// Upper bound on handshakes in the measured window.
        #[arg(long, default_value_t = 1_000_000)]
        max: u64,
    },
}

#[derive(Args, Clone)]
struct Target {
    /// ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (HOST is the TLS server name).
    #[arg(long)]
    url: String,
    /// Address to connect to (default: the URL's host:port resolved as an IP).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// PEM CA certificate to trust for wss://.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Basic credentials user:password.
    #[arg(long)]
    basic: Option<String>,
    /// JWT sent as ?token=.
    #[arg(long)]
    token: Option<String>,
    /// Proxy PIDs whose CPU time and RSS are read around the measured window.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Spread connections over 127.0.0.1 .. 127.0.0.N as source addresses.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Free-form label echoed into the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// WebSockets over HTTP/2 (wss:// only): this many extended CONNECT streams per HTTP/2
    /// connection; 0 = one HTTP/1.1 connection per WebSocket.
    #[arg(long, default_value_t = 0)]
    h2: usize,
}

/// Everything needed to open one connection.
struct Conn {
    url: String,
    host: String,
    path: String,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: Option<String>,
    sources: u8,
    next_src: std::sync::atomic::AtomicU32,
    /// Streams per HTTP/2 connection (0 = HTTP/1.1).
    h2_streams: usize,
    /// The HTTP/2 connection new streams go on, and how many it has carried.
    h2: tokio::sync::Mutex<Option<(H2Sender, usize)>>,
}

impl Conn {
    fn new(t: &Target) -> Result<Conn> {
        let mut url = t.url.clone();
        if let Some(tok) = &t.token {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("token=");
            url.push_str(tok);
        }
        let (scheme, rest) = url.split_once("://").ok_or("url without scheme")?;
        let (scheme, rest) = (scheme.to_string(), rest.to_string());
        let tls = match scheme.as_str() {
            "ws" => false,
            "wss" => true,
            _ => bail!("url scheme must be ws or wss"),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest.as_str(), "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>()?),
            None => (hostport.to_string(), if tls { 443 } else { 80 }),
        };
        let addr = match t.connect {
            Some(a) => a,
            None => {
                let ip: IpAddr = if host == "localhost" {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    host.parse()?
                };
                SocketAddr::new(ip, port)
            }
        };
        let tls = if tls {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(ca) = &t.ca {
                use rustls_pki_types::pem::PemObject;
                for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
                    roots.add(c?)?;
                }
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots)
                .with_no_client_auth();
            // Full handshakes every time, as in the reference figures.
            cfg.resumption = rustls::client::Resumption::disabled();
            cfg.alpn_protocols = if t.h2 > 0 {
                vec![b"h2".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            Some(Arc::new(cfg))
        } else {
            None
        };
        if t.h2 > 0 && tls.is_none() {
            bail!("--h2 needs a wss:// URL (HTTP/2 is offered by ALPN)");
        }
        let auth = t.basic.as_ref().map(|b| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b.as_bytes())
            )
        });
        Ok(Conn {
            url,
            host,
            path: path.to_string(),
            addr,
            tls,
            auth,
            sources: t.sources.max(1),
            next_src: Default::default(),
            h2_streams: t.h2,
            h2: Default::default(),
        })
    }

    /// TCP connect from the next 127.0.0.x source address (bound before connect).
    async fn tcp(&self) -> Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        if self.addr.ip().is_loopback() {
            let i = self.next_src.fetch_add(1, Ordering::Relaxed) % self.sources as u32;
            let src = Ipv4Addr::new(127, 0, 0, 1 + i as u8);
            // Let connect() pick the port per destination, so sources are not limited to
            // one ephemeral range shared across destinations.
            let one: libc::c_int = 1;
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&one) as libc::socklen_t,
                );
            }
            sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
        }
        let s = sock.connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// A WebSocket (tokio-tungstenite) connection.
    async fn ws(&self) -> Result<Ws> {
        let cfg = WebSocketConfig::default().read_buffer_size(4096);
        if self.h2_streams > 0 {
            let s = self.h2_stream().await?;
            return Ok(WebSocketStream::from_raw_socket(s, Role::Client, Some(cfg)).await);
        }
        let s = self.stream().await?;
        let mut req = self.url.as_str().into_client_request()?;
        if let Some(a) = &self.auth {
            req.headers_mut().insert("authorization", a.parse()?);
        }
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, s, Some(cfg)).await?;
        Ok(ws)
    }

    /// A TCP connection, inside TLS for wss://.
    async fn stream(&self) -> Result<Box<dyn Stream>> {
        let tcp = self.tcp().await?;
        Ok(match &self.tls {
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())?;
                Box::new(
                    tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, tcp)
                        .await?,
                )
            }
            None => Box::new(tcp),
        })
    }

    /// An HTTP/2 connection (ALPN h2) whose server allows extended CONNECT.
    async fn h2_connect(&self) -> Result<H2Sender> {
        let s = self.stream().await?;
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(s))
                .await?;
        // The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) follow the handshake; hyper reads
        // them in a task of its own, which wakes nobody here: look every millisecond.
        let mut conn = Box::pin(conn);
        let mut enabled = false;
        for _ in 0..5000 {
            if tokio::time::timeout(Duration::from_millis(1), conn.as_mut())
                .await
                .is_ok()
            {
                break;
            }
            if conn.is_extended_connect_protocol_enabled() {
                enabled = true;
                break;
            }
        }
        if !enabled {
            bail!("the server did not enable extended CONNECT (RFC 8441)");
        }
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A WebSocket's byte stream: an extended CONNECT stream on the current HTTP/2
    /// connection, or on a new one once it carries `h2_streams`.
    async fn h2_stream(&self) -> Result<Box<dyn Stream>> {
        let mut sender = {
            let mut cur = self.h2.lock().await;
            match cur.as_mut() {
                Some((s, n)) if *n < self.h2_streams && !s.is_closed() => {
                    *n += 1;
                    s.clone()
                }
                _ => {
                    let s = self.h2_connect().await?;
                    *cur = Some((s.clone(), 1));
                    s
                }
            }
        };
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!(
                "https://{}:{}{}",
                self.host,
                self.addr.port(),
                self.path
            ))
            .header("sec-websocket-version", "13")
            .extension(hyper::ext::Protocol::from_static("websocket"));
        if let Some(a) = &self.auth {
            req = req.header("authorization", a.as_str());
        }
        sender.ready().await?;
        let mut resp = sender
            .send_request(req.body(http_body_util::Empty::new())?)
            .await?;
        if resp.status() != http::StatusCode::OK {
            bail!("extended CONNECT refused: {}", resp.status());
        }
        let up = hyper::upgrade::on(&mut resp).await?;
        Ok(Box::new(hyper_util::rt::TokioIo::new(up)))
    }

    /// A raw byte stream after a hand-made upgrade (for bulk: no per-frame client work).
    async fn raw(&self) -> Result<(Box<dyn Stream>, Vec<u8>)> {
        if self.h2_streams > 0 {
            return Ok((self.h2_stream().await?, Vec::new()));
        }
        let mut s = self.stream().await?;
        let mut head = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            self.path,
            self.host,
            self.addr.port()
        );
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        let end = loop {
            if s.read_buf(&mut buf).await? == 0 {
                bail!("EOF during upgrade");
            }
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16384 {
                bail!("huge response head");
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&buf[..end.min(80)])
            );
        }
        Ok((s, buf[end..].to_vec()))
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- /proc readings

#[derive(Clone, Copy, Default)]
struct ProcSnap {
    cpu_ticks: u64,
    rss_kib: u64,
}

fn clk_tck() -> u64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

fn snap(pids: &[u32]) -> ProcSnap {
    let mut s = ProcSnap::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
                let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                s.cpu_ticks += ut + st;
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for l in status.lines() {
                if let Some(v) = l.strip_prefix("VmRSS:") {
                    s.rss_kib += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
    }
    s
}

fn cpu_us(a: ProcSnap, b: ProcSnap) -> f64 {
    (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 * 1e6 / clk_tck() as f64
}

fn secs(f: f64) -> Duration {
    Duration::from_secs_f64(f.max(0.0))
}

// ---------------------------------------------------------------- main

fn main() {
    let cli = Cli::parse();
    if let Cmd::Relay {
        bind,
        to,
        engine,
        uring_bufs,
        uring_buf_size,
    } = cli.cmd
    {
        let res = match engine {
            Engine::Epoll => relay::run(bind, to),
            Engine::Uring => relay_uring::run(bind, to, uring_bufs, uring_buf_size),
        };
        if let Err(e) = res {
            eprintln!("loadgen relay: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Echo { bind } => echo(bind).await,
            Cmd::Relay { .. } => unreachable!("handled before the runtime starts"),
            Cmd::Rate {
                t,
                conns,
                rate,
                size,
                warmup,
                duration,
            } => run_rate(t, conns, rate, size, warmup, duration).await,
            Cmd::Bulk {
                t,
                conns,
                size,
                warmup,
                duration,
            } => run_bulk(t, conns, size, warmup, duration).await,
            Cmd::Idle {
                t,
                conns,
                concurrency,
                settle,
                hold,
                timeout,
            } => run_idle(t, conns, concurrency, settle, hold, timeout).await,
            Cmd::Handshake {
                t,
                concurrency,
                warmup,
                duration,
                max,
            } => run_handshake(t, concurrency, warmup, duration, max).await,
        }
    });
    // Do not wait for lingering tasks (held connections are dropped with the runtime).
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Err(e) = res {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// Opens `n` WebSocket connections, `conc` at a time.
async fn open_many(c: &Arc<Conn>, n: usize, conc: usize, deadline: Instant) -> (Vec<Ws>, u64) {
    let sem = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        if Instant::now() > deadline {
            break;
        }
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            tokio::time::timeout(Duration::from_secs(10), c.ws()).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(Ok(ws))) => out.push(ws),
            Ok(Ok(Err(e))) => {
                errors += 1;
                first_err.get_or_insert(e.to_string());
            }
            _ => errors += 1,
        }
    }
    if let Some(e) = first_err {
        eprintln!("loadgen: {errors} connection errors, first: {e}");
    }
    (out, errors)
}

async fn echo_once(ws: &mut Ws, payload: &tokio_tungstenite::tungstenite::Bytes) -> Result<()> {
    ws.send(Message::Binary(payload.clone())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(_))) => return Ok(()),
            Some(Ok(Message::Close(_))) | None => bail!("closed"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

// ---------------------------------------------------------------- rate

async fn run_rate(
    t: Target,
    conns: usize,
    rate: u64,
    size: usize,
    warmup: f64,
    duration: f64,
) -> Result<()> {
    let c = Arc::new(Conn::new(&t)?);
    let (wss, errors) = open_many(&c, conns, 32, Instant::now() + secs(30.0)).await;
    if wss.len() != conns {
        bail!("opened {} of {conns} connections", wss.len());
    }
    let payload = tokio_tungstenite::tungstenite::Bytes::from(vec![0x5au8; size]);
    let start = Instant::now() + Duration::from_millis(50);
    let m_start = start + secs(warmup);
    let m_end = m_start + secs(duration);
    let mut txs = Vec::with_capacity(conns);
    let mut tasks = Vec::with_capacity(conns);
    for mut ws in wss {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        txs.push(tx);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rtts: Vec<u32> = Vec::new();
            let mut errs = 0u64;
            while rx.recv().await.is_some() {
                let t0 = Instant::now();
                if echo_once(&mut ws, &payload).await.is_err() {
                    errs += 1;
                    break;
                }
                if t0 >= m_start && t0 < m_end {
                    rtts.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
            (rtts, errs)
        }));
    }
    // Pacer: a plain thread with fine-grained sleeps spreads the sends evenly (tokio's
    // timer has 1 ms granularity, which would send in bursts of rate/1000).
    let pacer = std::thread::spawn(move || {
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let mut next = start;
        let mut i = 0usize;
        let mut sent = 0u64;
        while next < m_end {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let _ = txs[i].send(());
            sent += 1;
            i = (i + 1) % txs.len();
            next += gap;
        }
        sent
    });
    tokio::time::sleep_until(m_start.into()).await;
    let a = snap(&t.pid);
    tokio::time::sleep_until(m_end.into()).await;
    let b = snap(&t.pid);
    let scheduled = tokio::task::spawn_blocking(move || pacer.join().unwrap())
        .await
        .unwrap();
    let mut all: Vec<u32> = Vec::new();
    let mut errs = errors;
    for task in tasks {
        let (r, e) = task.await?;
        all.extend(r);
        errs += e;
    }
    all.sort_unstable();
    let n = all.len() as f64;
    let cpu = cpu_us(a, b);
    let out = json!({
        "mode": "rate", "label": t.label, "url": t.url, "conns": conns,
        "target_rate": rate, "size": size, "duration_s": duration,
        "scheduled": scheduled, "messages": all.len(), "achieved_rate": n / duration,
        "errors": errs,
        "rtt_us": {"p50": percentile(&all, 0.5), "p90": percentile(&all, 0.9),
                   "p99": percentile(&all, 0.99), "p999": percentile(&all, 0.999),
                   "max": percentile(&all, 1.0)},
        "proxy_cpu_us": cpu,
        "proxy_cpu_us_per_msg": if n > 0.0 && !t.pid.is_empty() { cpu / n } else { 0.0 },
        "proxy_cpu_util": cpu / 1e6 / duration,
        "proxy_rss_kib": b.rss_kib,
    });
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------- bulk

/// One client→server binary frame of `size` bytes, masked, ready to write as is.
fn masked_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0x82u8];
    if size < 126 {
        f.push(0x80 | size as u8);
    } else if size <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(size as u64).to_be_bytes());
    }
    let key = [0x12u8, 0x34, 0x56, 0x78];
    f.extend_from_slice(&key);
    f.extend((0..size).map(|i| (i as u8) ^ key[i % 4]));
    f
}

async fn run_bulk(t: Target, conns: usize, size: usize, warmup: f64, duration: f64) -> Result<()> {
    let c = Arc::new(Conn::new(&t)?);
    let frame = masked_frame(size);
    let mut batch = Vec::new();
    while batch.len() < 64 * 1024 {
        batch.extend_from_slice(&frame);
    }
    let batch = Arc::new(batch);
    let rx_bytes = Arc::new(AtomicU64::new(0));
    let tx_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (s, leftover) = c.raw().await?;
        rx_bytes.fetch_add(leftover.len() as u64, Ordering::Relaxed);
        let (mut r, mut w) = tokio::io::split(s);
        let (batch, txb, rxb, stop2, stop3) = (
            batch.clone(),
            tx_bytes.clone(),
            rx_bytes.clone(),
            stop.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                if w.write_all(&batch).await.is_err() {
                    break;
                }
                txb.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while !stop3.load(Ordering::Relaxed) {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        rxb.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(secs(warmup)).await;
    let (a, rx0, tx0, t0) = (
        snap(&t.pid),
        rx_bytes.load(Ordering::Relaxed),
        tx_bytes.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(secs(duration)).await;
    let (b, rx1, tx1, el) = (
        snap(&t.pid),
        rx_bytes.load(Ordering::Relaxed),
        tx_bytes.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    // Server frames carry a 4-byte header for 16 KiB payloads: count payload only.
    let hdr = if size < 126 {
        2
    } else if size <= 0xffff {
        4
    } else {
        10
    };
    let payload_share = size as f64 / (size + hdr) as f64;
    let rx_mbps = (rx1 - rx0) as f64 * payload_share / el / 1e6;
    let tx_mbps = (tx1 - tx0) as f64 * (size as f64 / frame.len() as f64) / el / 1e6;
    let cpu = cpu_us(a, b);
    let out = json!({
        "mode": "bulk", "label": t.label, "url": t.url, "conns": conns, "size": size,
        "duration_s": el, "mb_per_s_each_way": rx_mbps, "tx_mb_per_s": tx_mbps,
        "proxy_cpu_util": cpu / 1e6 / el,
        "proxy_cpu_us_per_mb": if rx_mbps > 0.0 && !t.pid.is_empty() { cpu / (rx_mbps * el) } else { 0.0 },
        "proxy_rss_kib": b.rss_kib,
    });
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------- idle

async fn run_idle(
    t: Target,
    conns: usize,
    conc: usize,
    settle: f64,
    hold: f64,
    timeout: f64,
) -> Result<()> {
    let c = Arc::new(Conn::new(&t)?);
    let payload = tokio_tungstenite::tungstenite::Bytes::from(vec![0x5au8; 128]);
    let before = snap(&t.pid);
    let t0 = Instant::now();
    let (mut wss, errors) = open_many(&c, conns, conc, t0 + secs(timeout)).await;
    // One echo per connection, so both legs have carried a message (as a real idle
    // client that said hello would have).
    let mut echo_errors = 0;
    {
        let mut futs = futures_util::stream::iter(wss.iter_mut().map(|ws| {
            let p = payload.clone();
            async move { tokio::time::timeout(Duration::from_secs(10), echo_once(ws, &p)).await }
        }))
        .buffer_unordered(conc.max(1));
        while let Some(r) = futs.next().await {
            if !matches!(r, Ok(Ok(()))) {
                echo_errors += 1;
            }
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let mid = snap(&t.pid);
    tokio::time::sleep(secs(settle)).await;
    let after = snap(&t.pid);
    let n = wss.len();
    let kib_per_conn = if n > 0 {
        after.rss_kib.saturating_sub(before.rss_kib) as f64 / n as f64
    } else {
        0.0
    };
    let out = json!({
        "mode": "idle", "label": t.label, "url": t.url, "requested": conns, "open": n,
        "errors": errors, "echo_errors": echo_errors, "open_s": open_s,
        "rss_before_kib": before.rss_kib, "rss_after_kib": after.rss_kib,
        "rss_kib_per_conn": kib_per_conn,
        "proxy_cpu_us_per_open": if n > 0 { cpu_us(before, mid) / n as f64 } else { 0.0 },
    });
    println!("{out}");
    tokio::time::sleep(secs(hold)).await;
    // Close politely (close frame, then the server hangs up first), so the TIME_WAIT
    // sockets land on the listening sides rather than eating ephemeral ports.
    let closing = futures_util::stream::iter(wss.into_iter().map(|mut ws| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            ws.close(None).await?;
            while let Some(m) = ws.next().await {
                m?;
            }
            Ok::<_, anyhow_lite::Error>(())
        })
        .await;
    }))
    .buffer_unordered(256)
    .collect::<Vec<()>>();
    let _ = tokio::time::timeout(Duration::from_secs(20), closing).await;
    Ok(())
}

// ---------------------------------------------------------------- handshake

async fn run_handshake(t: Target, conc: usize, warmup: f64, duration: f64, max: u64) -> Result<()> {
    let c = Arc::new(Conn::new(&t)?);
    // One priming handshake first (fills e.g. wsgate's Basic cache: one bcrypt, not one
    // per concurrent loop).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut ws = c.ws().await?;
        ws.close(None).await?;
        while let Some(Ok(_)) = ws.next().await {}
        Ok::<_, anyhow_lite::Error>(())
    })
    .await;
    let start = Instant::now();
    let m_start = start + secs(warmup);
    let m_end = m_start + secs(duration);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_err = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (c, done, errors, first_err) =
            (c.clone(), done.clone(), errors.clone(), first_err.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            while Instant::now() < m_end && done.load(Ordering::Relaxed) < max {
                let t0 = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut ws = c.ws().await?;
                    let hs = t0.elapsed();
                    ws.close(None).await?;
                    while let Some(m) = ws.next().await {
                        if m.is_err() {
                            break;
                        }
                    }
                    Ok::<_, anyhow_lite::Error>(hs)
                })
                .await;
                match r {
                    Ok(Ok(hs)) => {
                        if t0 >= m_start && t0 < m_end {
                            done.fetch_add(1, Ordering::Relaxed);
                            lat.push(hs.as_micros() as u32);
                        }
                    }
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep_until(m_start.into()).await;
    let a = snap(&t.pid);
    let n0 = done.load(Ordering::Relaxed);
    tokio::time::sleep_until(m_end.into()).await;
    let b = snap(&t.pid);
    let n1 = done.load(Ordering::Relaxed);
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    lat.sort_unstable();
    let n = (n1 - n0) as f64;
    let cpu = cpu_us(a, b);
    if let Some(e) = first_err.lock().unwrap().as_ref() {
        eprintln!("loadgen: handshake errors, first: {e}");
    }
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0);
    let out = json!({
        "mode": "handshake", "label": t.label, "url": t.url, "concurrency": conc,
        "duration_s": duration, "handshakes": n1 - n0, "per_s": n / duration,
        "errors": errors.load(Ordering::Relaxed),
        "upgrade_p50_us": p50,
        "proxy_cpu_us_per_handshake": if n > 0.0 && !t.pid.is_empty() { cpu / n } else { 0.0 },
        "proxy_cpu_util": cpu / 1e6 / duration,
        "proxy_rss_kib": b.rss_kib,
    });
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------- echo backend

async fn echo(bind: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(bind).await?;
    eprintln!("loadgen echo listening on {bind}");
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of fds, etc.: back off instead of spinning.
                eprintln!("loadgen echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let _ = echo_conn(s).await;
        });
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn echo_conn(mut s: TcpStream) -> Result<()> {
    let mut inbuf: Vec<u8> = Vec::with_capacity(2048);
    let end = loop {
        if s.read_buf(&mut inbuf).await? == 0 {
            return Ok(());
        }
        if let Some(i) = find(&inbuf, b"\r\n\r\n") {
            break i + 4;
        }
        if inbuf.len() > 32768 {
            bail!("huge request head");
        }
    };
    let head = String::from_utf8_lossy(&inbuf[..end]).into_owned();
    let Some(key) = header_value(&head, "sec-websocket-key") else {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            .await?;
        return Ok(());
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(resp.as_bytes()).await?;
    inbuf.drain(..end);
    let mut out: Vec<u8> = Vec::new();
    loop {
        // Parse every complete frame in the buffer.
        let mut pos = 0;
        let mut close = false;
        loop {
            let b = &inbuf[pos..];
            if b.len() < 2 {
                break;
            }
            let (b0, b1) = (b[0], b[1]);
            let masked = b1 & 0x80 != 0;
            let (len, mut off) = match b1 & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                l => (l as usize, 2),
            };
            let key = if masked {
                if b.len() < off + 4 {
                    break;
                }
                let k = [b[off], b[off + 1], b[off + 2], b[off + 3]];
                off += 4;
                Some(k)
            } else {
                None
            };
            if b.len() < off + len {
                break;
            }
            let opcode = b0 & 0x0f;
            let out_b0 = match opcode {
                0x9 => (b0 & 0xf0) | 0xA, // ping -> pong
                0xA => {
                    pos += off + len;
                    continue;
                }
                _ => b0,
            };
            out.push(out_b0);
            if len < 126 {
                out.push(len as u8);
            } else if len <= 0xffff {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            let start = out.len();
            out.extend_from_slice(&b[off..off + len]);
            if let Some(k) = key {
                unmask(&mut out[start..], k);
            }
            pos += off + len;
            if opcode == 0x8 {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
            if out.capacity() > 256 * 1024 {
                out.shrink_to(4096);
            }
        }
        if close {
            let _ = s.shutdown().await;
            return Ok(());
        }
        inbuf.drain(..pos);
        let spare = inbuf.capacity() - inbuf.len();
        if spare < 4096 {
            inbuf.reserve(inbuf.len().clamp(4096, 256 * 1024));
        }
        if s.read_buf(&mut inbuf).await? == 0 {
            return Ok(());
        }
    }
}

fn unmask(buf: &mut [u8], key: [u8; 4]) {
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().unwrap()) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let rem = chunks.into_remainder();
    for (i, b) in rem.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}
