//! Connection events: `connected` when a tunnel opens, `disconnected` when it ends.
//!
//! Two ways out, both fed by [`Events::connected`] / [`Events::disconnected`], which the
//! handler calls as a tunnel opens and when its splice returns:
//! - a route's webhook (`routes[].events.webhook`): a bounded queue per route, drained by one
//!   task that POSTs each event as JSON, retries a little, then drops and counts;
//! - `GET /events` on the admin listener: a Server-Sent Events stream of every route, fed by
//!   one broadcast channel; a subscriber that falls behind loses events (counted).
//!
//! Neither ever waits on the tunnel's path: a full queue or a lagging subscriber loses the
//! event, not time. With no webhook on the route and no subscriber, emitting costs two
//! loads and builds nothing. Delivery is at most once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EventsConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::proxy::response::ProxyBody;
use crate::registry::TunnelInfo;
use crate::runtime::Route;
use crate::splice::SpliceReport;

/// Events an SSE subscriber may fall behind by before it loses some.
pub const SSE_BUFFER: usize = 1024;
/// Most SSE subscribers at once (also never more than half of `admin.max_connections`).
pub const MAX_SSE_SUBSCRIBERS: usize = 64;
/// A comment this often keeps idle SSE streams open through proxies that cut quiet ones.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Delivery attempts per event before it is dropped.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each later one.
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(100);
/// A webhook's answer body is read (so the connection can carry the next event) up to this.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What happened to a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The tunnel opened (101 relayed, registered).
    Connected,
    /// The tunnel ended.
    Disconnected,
}

impl Kind {
    /// The `event` field and the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connected => "connected",
            Kind::Disconnected => "disconnected",
        }
    }
}

/// How a tunnel ended (the `disconnected` fields).
#[derive(Debug, Clone, Copy)]
struct End {
    reason: &'static str,
    duration_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// One event. It borrows the tunnel's registry entry rather than copying its strings, so
/// emitting allocates the event and nothing else.
#[derive(Debug)]
pub struct Event {
    kind: Kind,
    info: Arc<TunnelInfo>,
    at: SystemTime,
    end: Option<End>,
}

impl Event {
    /// `connected` or `disconnected`.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The tunnel's route.
    pub fn route(&self) -> &str {
        &self.info.route
    }
}

/// The JSON shape (see the README's "Connection events").
#[derive(Serialize)]
struct Wire<'a> {
    event: &'static str,
    id: u64,
    route: &'a str,
    user: Option<&'a str>,
    client: IpAddr,
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_out: Option<u64>,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            event: self.kind.as_str(),
            id: self.info.id,
            route: &self.info.route,
            user: self.info.user.as_deref(),
            client: self.info.client.to_canonical(),
            at: humantime::format_rfc3339_millis(self.at).to_string(),
            reason: self.end.map(|e| e.reason),
            duration_ms: self.end.map(|e| e.duration_ms),
            bytes_in: self.end.map(|e| e.bytes_in),
            bytes_out: self.end.map(|e| e.bytes_out),
        }
        .serialize(s)
    }
}

/// The process-wide hub: the SSE channel and its subscriber cap.
pub struct Events {
    sse: broadcast::Sender<Arc<Event>>,
    // One permit per open stream; all free = nobody listens (one atomic load to tell).
    streams: Arc<Semaphore>,
    max_streams: usize,
    lagged: IntCounter,
    queued: IntGauge,
}

/// How many SSE subscribers `config` allows: [`MAX_SSE_SUBSCRIBERS`], and at most half of
/// the admin connections, so streams can never take the slots `/metrics` scrapes need.
pub fn max_streams(config: &Config) -> usize {
    let admin = config
        .admin
        .as_ref()
        .map_or(crate::config::DEFAULT_ADMIN_MAX_CONNECTIONS, |a| {
            a.max_connections
        });
    (admin / 2).clamp(1, MAX_SSE_SUBSCRIBERS)
}

impl Events {
    /// A hub allowing `max_streams` SSE subscribers at once.
    pub fn new(metrics: &Metrics, max_streams: usize) -> Self {
        let (sse, _) = broadcast::channel(SSE_BUFFER);
        Events {
            sse,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            lagged: metrics.events_dropped("lagged"),
            queued: metrics.events_queued(),
        }
    }

    /// A tunnel of `route` opened (call once it is registered).
    pub fn connected(&self, route: &Route, info: &Arc<TunnelInfo>) {
        self.emit(route.events.as_ref(), || Event {
            kind: Kind::Connected,
            info: info.clone(),
            at: info.opened,
            end: None,
        });
    }

    /// A tunnel of `route` ended after `duration`, as `report` says.
    pub fn disconnected(
        &self,
        route: &Route,
        info: &Arc<TunnelInfo>,
        report: &SpliceReport,
        duration: Duration,
    ) {
        self.emit(route.events.as_ref(), || Event {
            kind: Kind::Disconnected,
            info: info.clone(),
            at: SystemTime::now(),
            end: Some(End {
                reason: report.reason.as_str(),
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                bytes_in: report.client_to_upstream,
                bytes_out: report.upstream_to_client,
            }),
        });
    }

    fn emit(&self, webhook: Option<&Webhook>, make: impl FnOnce() -> Event) {
        // Not `receiver_count()`: that takes the channel's lock on every tunnel's open and close.
        let listening = self.streams.available_permits() < self.max_streams;
        if webhook.is_none() && !listening {
            return;
        }
        let event = Arc::new(make());
        if listening {
            // Fails only when the last subscriber left meanwhile: nobody to tell.
            let _ = self.sse.send(event.clone());
        }
        if let Some(w) = webhook {
            w.push(event);
        }
    }

    /// A `text/event-stream` body of every event (of `route` only, when given) until `stop`
    /// fires; `None` when the subscriber cap is reached.
    pub fn subscribe(&self, route: Option<String>, stop: CancellationToken) -> Option<ProxyBody> {
        let slot = self.streams.clone().try_acquire_owned().ok()?;
        let sub = Subscription {
            rx: self.sse.subscribe(),
            route,
            stop,
            keepalive: tokio::time::interval_at(
                tokio::time::Instant::now() + SSE_KEEPALIVE,
                SSE_KEEPALIVE,
            ),
            lagged: self.lagged.clone(),
            state: State::Starting,
            _slot: slot,
        };
        let frames = futures_util::stream::unfold(sub, |mut sub| async move {
            let bytes = sub.next_chunk().await?;
            Some((Ok::<_, hyper::Error>(Frame::data(bytes)), sub))
        });
        Some(StreamBody::new(frames).boxed_unsync())
    }

    /// Waits (up to `within`) for the webhook queues to empty, so the last events of a
    /// drain are delivered before the process exits.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.queued.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Streaming,
    // The admin listener is stopping: hand out what is buffered, then end.
    Flushing,
}

/// One SSE subscriber.
struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    route: Option<String>,
    stop: CancellationToken,
    keepalive: tokio::time::Interval,
    lagged: IntCounter,
    state: State,
    _slot: OwnedSemaphorePermit,
}

impl Subscription {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.state {
                State::Starting => {
                    // Something to read at once tells the client the stream is live.
                    self.state = State::Streaming;
                    return Some(Bytes::from_static(b": wsgate events\n\n"));
                }
                State::Flushing => match self.rx.try_recv() {
                    Ok(event) => {
                        if let Some(chunk) = self.render(&event) {
                            return Some(chunk);
                        }
                    }
                    Err(TryRecvError::Lagged(n)) => return Some(self.missed(n)),
                    Err(_) => return None,
                },
                State::Streaming => {
                    tokio::select! {
                        biased;
                        r = self.rx.recv() => match r {
                            Ok(event) => {
                                if let Some(chunk) = self.render(&event) {
                                    return Some(chunk);
                                }
                            }
                            Err(RecvError::Lagged(n)) => return Some(self.missed(n)),
                            Err(RecvError::Closed) => return None,
                        },
                        _ = self.stop.cancelled() => self.state = State::Flushing,
                        _ = self.keepalive.tick() => {
                            return Some(Bytes::from_static(b": keepalive\n\n"));
                        }
                    }
                }
            }
        }
    }

    fn render(&self, event: &Event) -> Option<Bytes> {
        if self.route.as_deref().is_some_and(|r| r != event.route()) {
            return None;
        }
        let json = serde_json::to_string(event).ok()?;
        Some(Bytes::from(format!(
            "event: {}\ndata: {json}\n\n",
            event.kind.as_str()
        )))
    }

    fn missed(&self, n: u64) -> Bytes {
        self.lagged.inc_by(n);
        Bytes::from(format!(": missed {n} events (reading too slowly)\n\n"))
    }
}

/// A route's webhook: its queue and the task that drains it, started at the first event.
pub struct Webhook {
    target: Arc<Target>,
    capacity: usize,
    queue: OnceLock<mpsc::Sender<Arc<Event>>>,
    full: AtomicBool,
    queue_full: IntCounter,
    failed: IntCounter,
    queued: IntGauge,
}

/// Where and how one webhook is reached.
struct Target {
    server: UpstreamConfig,
    authority: String,
    path_and_query: String,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a webhook could not be built: the key to blame and the message.
pub type BuildError = (&'static str, String);

impl Webhook {
    /// Builds a route's webhook (loads its CA, or the system roots for https://).
    pub fn build(cfg: &EventsConfig, metrics: &Metrics) -> Result<Self, BuildError> {
        let url = &cfg.webhook;
        let tls = match (&cfg.ca, url.tls) {
            (_, false) => None,
            (Some(ca), true) => {
                Some(crate::tls::client_config_with_ca_file(ca).map_err(|e| ("ca", e))?)
            }
            (None, true) => Some(crate::tls::upstream_client_config().map_err(|e| ("webhook", e))?),
        };
        Ok(Webhook {
            target: Arc::new(Target {
                server: UpstreamConfig {
                    tls: url.tls,
                    host: url.host.clone(),
                    port: url.port,
                    url: url.url.clone(),
                },
                authority: url.authority.clone(),
                path_and_query: url.path_and_query.clone(),
                timeout: cfg.timeout,
                tls,
            }),
            capacity: cfg.queue,
            queue: OnceLock::new(),
            full: AtomicBool::new(false),
            queue_full: metrics.events_dropped("queue_full"),
            failed: metrics.events_dropped("delivery_failed"),
            queued: metrics.events_queued(),
        })
    }

    fn sender(&self) -> Option<&mpsc::Sender<Arc<Event>>> {
        if let Some(tx) = self.queue.get() {
            return Some(tx);
        }
        // Started here rather than at build: `wsgate check` builds routes without a runtime,
        // and a reload's new routes cost nothing until they see traffic.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.capacity);
            runtime.spawn(deliver(
                self.target.clone(),
                rx,
                self.failed.clone(),
                self.queued.clone(),
            ));
            tx
        }))
    }

    fn push(&self, event: Arc<Event>) {
        let sent = self.sender().map(|tx| tx.try_send(event));
        if let Some(Ok(())) = sent {
            self.queued.inc();
            if self.full.swap(false, Ordering::Relaxed) {
                tracing::info!(webhook = %self.target.authority, "webhook queue has room again");
            }
            return;
        }
        self.queue_full.inc();
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                webhook = %self.target.authority,
                capacity = self.capacity,
                "webhook queue full: dropping connection events until it drains"
            );
        }
    }
}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Delivers a route's events in order, one at a time; ends when the route is gone (its
/// sender dropped) and the queue is empty.
async fn deliver(
    target: Arc<Target>,
    mut rx: mpsc::Receiver<Arc<Event>>,
    failed: IntCounter,
    queued: IntGauge,
) {
    let mut conn: Option<Connection> = None;
    let mut failing = false;
    while let Some(event) = rx.recv().await {
        let result = match serde_json::to_vec(&*event) {
            Ok(body) => post_with_retries(&target, &mut conn, Bytes::from(body)).await,
            Err(e) => Err(format!("cannot encode the event: {e}")),
        };
        queued.dec();
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(webhook = %target.authority, "webhook delivers again");
            }
            Ok(()) => {}
            Err(error) => {
                failed.inc();
                if !failing {
                    failing = true;
                    tracing::warn!(
                        webhook = %target.authority,
                        %error,
                        attempts = WEBHOOK_ATTEMPTS,
                        "webhook delivery failed: dropping connection events until it answers"
                    );
                }
            }
        }
    }
}

async fn post_with_retries(
    target: &Target,
    conn: &mut Option<Connection>,
    body: Bytes,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..WEBHOOK_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(WEBHOOK_BACKOFF * 2u32.pow(attempt - 1)).await;
        }
        match tokio::time::timeout(target.timeout, post(target, conn, body.clone())).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {:?}", target.timeout),
        }
        // Whatever state it is in, a failed connection is not reused.
        *conn = None;
    }
    Err(last)
}

async fn post(target: &Target, conn: &mut Option<Connection>, body: Bytes) -> Result<(), String> {
    let sender = match conn {
        Some(c) if !c.is_closed() => c,
        _ => {
            let stream =
                crate::upstream::connect(&target.server, target.tls.as_ref(), target.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
            let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = driver.await;
            });
            conn.insert(sender)
        }
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::post(target.path_and_query.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("wsgate/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookUrl;
    use crate::registry::CloseReason;

    fn info(id: u64, route: &str, user: Option<&str>) -> Arc<TunnelInfo> {
        Arc::new(TunnelInfo::new(
            id,
            route.into(),
            user.map(Into::into),
            [127, 0, 0, 1].into(),
        ))
    }

    fn connected(id: u64, route: &str) -> Event {
        Event {
            kind: Kind::Connected,
            info: info(id, route, None),
            at: SystemTime::UNIX_EPOCH,
            end: None,
        }
    }

    fn webhook(metrics: &Metrics, queue: usize) -> Webhook {
        let url = WebhookUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 9,
            authority: "127.0.0.1:9".into(),
            path_and_query: "/".into(),
            url: "http://127.0.0.1:9/".into(),
        };
        let cfg = EventsConfig {
            webhook: url,
            queue,
            ..EventsConfig::default()
        };
        Webhook::build(&cfg, metrics).unwrap()
    }

    async fn chunk(body: &mut ProxyBody) -> Option<String> {
        let frame = body.frame().await?.unwrap();
        Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
    }

    #[test]
    fn json_shapes() {
        let t = info(7, "/chat", Some("alice"));
        let c = Event {
            kind: Kind::Connected,
            info: t.clone(),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1500),
            end: None,
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"event": "connected", "id": 7, "route": "/chat", "user": "alice",
                "client": "127.0.0.1", "at": "1970-01-01T00:00:01.500Z"})
        );
        let d = Event {
            kind: Kind::Disconnected,
            info: info(8, "/chat", None),
            at: SystemTime::UNIX_EPOCH,
            end: Some(End {
                reason: CloseReason::Kicked.as_str(),
                duration_ms: 42,
                bytes_in: 1,
                bytes_out: 2,
            }),
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"event": "disconnected", "id": 8, "route": "/chat", "user": null,
                "client": "127.0.0.1", "at": "1970-01-01T00:00:00.000Z", "reason": "kicked",
                "duration_ms": 42, "bytes_in": 1, "bytes_out": 2})
        );
    }

    #[test]
    fn a_webhook_secret_stays_out_of_debug_output() {
        let url = crate::config::WebhookUrl {
            tls: true,
            host: "h".into(),
            port: 443,
            authority: "h".into(),
            path_and_query: "/hook?key=s3cret".into(),
            url: "https://h/hook?key=s3cret".into(),
        };
        assert_eq!(format!("{url:?}"), "WebhookUrl(https://h/hook?<redacted>)");
    }

    #[test]
    fn nobody_listening_builds_nothing() {
        let events = Events::new(&Metrics::new().unwrap(), 4);
        events.emit(None, || panic!("built an event nobody receives"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts() {
        let metrics = Metrics::new().unwrap();
        let hook = webhook(&metrics, 2);
        let events = Events::new(&metrics, 4);
        // No await in between: the delivery task has not taken any event yet.
        for id in 0..5 {
            events.emit(Some(&hook), || connected(id, "/ws"));
        }
        assert_eq!(metrics.events_dropped("queue_full").get(), 3);
        assert_eq!(metrics.events_queued().get(), 2);
        assert_eq!(metrics.events_dropped("delivery_failed").get(), 0);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_and_counted() {
        let metrics = Metrics::new().unwrap();
        let events = Events::new(&metrics, 4);
        let stop = CancellationToken::new();
        let mut body = events.subscribe(None, stop.clone()).unwrap();
        assert_eq!(chunk(&mut body).await.unwrap(), ": wsgate events\n\n");
        for id in 0..(SSE_BUFFER as u64 + 5) {
            events.emit(None, || connected(id, "/ws"));
        }
        assert_eq!(
            chunk(&mut body).await.unwrap(),
            ": missed 5 events (reading too slowly)\n\n"
        );
        assert_eq!(metrics.events_dropped("lagged").get(), 5);
        let next = chunk(&mut body).await.unwrap();
        assert!(
            next.starts_with("event: connected\ndata: {\"event\":\"connected\",\"id\":5,"),
            "{next}"
        );
    }

    #[tokio::test]
    async fn the_stream_filters_flushes_and_ends_on_stop() {
        let events = Events::new(&Metrics::new().unwrap(), 1);
        let stop = CancellationToken::new();
        let mut body = events.subscribe(Some("/b".into()), stop.clone()).unwrap();
        assert!(
            events.subscribe(None, stop.clone()).is_none(),
            "over the cap"
        );
        chunk(&mut body).await.unwrap();
        events.emit(None, || connected(1, "/a"));
        events.emit(None, || connected(2, "/b"));
        stop.cancel();
        let only = chunk(&mut body).await.unwrap();
        assert!(only.contains("\"id\":2,\"route\":\"/b\""), "{only}");
        assert!(
            chunk(&mut body).await.is_none(),
            "the stream goes on after stop"
        );
        drop(body);
        assert!(
            events.subscribe(None, stop).is_some(),
            "an ended stream gives its slot back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_streams_get_a_keepalive_comment() {
        let events = Events::new(&Metrics::new().unwrap(), 1);
        let mut body = events.subscribe(None, CancellationToken::new()).unwrap();
        chunk(&mut body).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(chunk(&mut body).await.unwrap(), ": keepalive\n\n");
        assert_eq!(started.elapsed(), SSE_KEEPALIVE);
    }
}
