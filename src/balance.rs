//! Upstream pools: which server of a route gets the next connection, and passive health.
//!
//! A server whose connect fails is skipped for `upstream_retry`, and the handshake moves
//! on to the next candidate. Counters are atomics: picking a server takes no lock.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Balance, UpstreamConfig};

/// One upstream server with its live state.
#[derive(Debug)]
pub struct Server {
    /// Its configuration.
    pub config: UpstreamConfig,
    /// `host:port` (IPv6 in brackets), for logs.
    pub addr: String,
    active: AtomicUsize,
    // Milliseconds since `Pool::epoch` until which the server is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
}

impl Server {
    /// Open connections through this server (least-connections input).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// The servers of one route and the policy that orders them.
#[derive(Debug)]
pub struct Pool {
    servers: Vec<Arc<Server>>,
    balance: Balance,
    next: AtomicUsize,
    retry: Duration,
    epoch: Instant,
}

/// Counts one open connection on a server until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Server>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool over `servers` (non-empty, validated by the config).
    pub fn new(servers: &[UpstreamConfig], balance: Balance, retry: Duration) -> Self {
        Pool {
            servers: servers
                .iter()
                .map(|c| {
                    Arc::new(Server {
                        addr: format_addr(c),
                        config: c.clone(),
                        active: AtomicUsize::new(0),
                        down_until_ms: AtomicU64::new(0),
                    })
                })
                .collect(),
            balance,
            next: AtomicUsize::new(0),
            retry,
            epoch: Instant::now(),
        }
    }

    /// All servers, in configuration order.
    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn healthy(&self, s: &Server, now: u64) -> bool {
        s.down_until_ms.load(Ordering::Relaxed) <= now
    }

    /// Servers in the order to try them for one handshake: the policy's choice first,
    /// then the other healthy ones, then those marked down (better a retry than a 502).
    pub fn candidates(&self, client: IpAddr) -> Vec<Arc<Server>> {
        let n = self.servers.len();
        let mut order: Vec<usize> = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n).map(|i| (start + i) % n).collect()
            }
            Balance::LeastConnections => {
                // Ties go round-robin so equal servers share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                let mut v: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
                v.sort_by_key(|&i| self.servers[i].active());
                v
            }
            Balance::ClientIp => {
                // Rendezvous hashing: a server going down moves only its own clients.
                let mut v: Vec<(u64, usize)> = (0..n)
                    .map(|i| (rendezvous(client, &self.servers[i].addr), i))
                    .collect();
                v.sort_by_key(|e| std::cmp::Reverse(e.0));
                v.into_iter().map(|(_, i)| i).collect()
            }
        };
        let now = self.now_ms();
        // Stable partition: healthy first, keeping the policy's order within each group.
        order.sort_by_key(|&i| !self.healthy(&self.servers[i], now));
        order.into_iter().map(|i| self.servers[i].clone()).collect()
    }

    /// Skips `server` for the retry period after a failed connect.
    pub fn mark_failed(&self, server: &Server) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(self.retry.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        server.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Marks `server` healthy again after a successful connect.
    pub fn mark_ok(&self, server: &Server) {
        if server.down_until_ms.load(Ordering::Relaxed) != 0 {
            server.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a connection on `server` until the guard drops.
    pub fn track(&self, server: &Arc<Server>) -> ActiveGuard {
        server.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(server.clone())
    }
}

fn rendezvous(client: IpAddr, server: &str) -> u64 {
    // SipHash with fixed keys: stable for the life of the process, which is what
    // stickiness needs; it is not a security boundary.
    let mut h = std::hash::DefaultHasher::new();
    client.hash(&mut h);
    server.hash(&mut h);
    h.finish()
}

/// `host:port`, IPv6 literals in brackets.
pub fn format_addr(u: &UpstreamConfig) -> String {
    if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(port: u16) -> UpstreamConfig {
        UpstreamConfig {
            tls: false,
            host: "127.0.0.1".into(),
            port,
            url: format!("ws://127.0.0.1:{port}"),
        }
    }

    fn ports(v: &[Arc<Server>]) -> Vec<u16> {
        v.iter().map(|s| s.config.port).collect()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn round_robin_rotates() {
        let p = Pool::new(
            &[up(1), up(2), up(3)],
            Balance::RoundRobin,
            Duration::from_secs(10),
        );
        assert_eq!(ports(&p.candidates(IP))[0], 1);
        assert_eq!(ports(&p.candidates(IP))[0], 2);
        assert_eq!(ports(&p.candidates(IP))[0], 3);
        assert_eq!(ports(&p.candidates(IP))[0], 1);
        assert_eq!(p.candidates(IP).len(), 3);
    }

    #[test]
    fn failed_server_goes_last_until_retry() {
        let p = Pool::new(
            &[up(1), up(2)],
            Balance::RoundRobin,
            Duration::from_secs(10),
        );
        let first = p.candidates(IP)[0].clone();
        p.mark_failed(&first);
        for _ in 0..4 {
            let c = p.candidates(IP);
            assert_ne!(c[0].config.port, first.config.port);
            assert_eq!(c.len(), 2, "a down server is still a last resort");
        }
        p.mark_ok(&first);
        let seen: Vec<u16> = (0..2).map(|_| p.candidates(IP)[0].config.port).collect();
        assert!(seen.contains(&first.config.port));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_period_expires() {
        let p = Pool::new(&[up(1), up(2)], Balance::ClientIp, Duration::from_millis(0));
        let preferred = p.candidates(IP)[0].clone();
        p.mark_failed(&preferred);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(p.candidates(IP)[0].config.port, preferred.config.port);
    }

    #[test]
    fn least_connections_prefers_idle_server() {
        let p = Pool::new(
            &[up(1), up(2)],
            Balance::LeastConnections,
            Duration::from_secs(10),
        );
        let busy = p.servers()[0].clone();
        let _g1 = p.track(&busy);
        let _g2 = p.track(&busy);
        for _ in 0..3 {
            assert_eq!(p.candidates(IP)[0].config.port, 2);
        }
        drop(_g1);
        drop(_g2);
        assert_eq!(busy.active(), 0);
    }

    #[test]
    fn client_ip_is_sticky_and_spreads() {
        let p = Pool::new(
            &[up(1), up(2), up(3)],
            Balance::ClientIp,
            Duration::from_secs(10),
        );
        let a = p.candidates(IP)[0].config.port;
        for _ in 0..10 {
            assert_eq!(p.candidates(IP)[0].config.port, a);
        }
        let mut used = std::collections::HashSet::new();
        for i in 0..64u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
            used.insert(p.candidates(ip)[0].config.port);
        }
        assert_eq!(used.len(), 3, "64 clients should reach all 3 servers");
    }
}
