//! PROXY protocol v1/v2 (HAProxy's) on listeners that opt in: the load balancer in front
//! tells us the real client address before the first TLS or HTTP byte.
//!
//! Bytes are read exactly up to the end of the header, so nothing needs to be pushed back
//! for the TLS/HTTP layers. Parsing itself is done by the `ppp` crate.

use std::net::SocketAddr;

use ppp::{HeaderResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// v2 signature (12 bytes).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Largest v2 header accepted (addresses + TLVs); real ones are far smaller.
const V2_MAX: usize = 16 + 2048;

/// Why a PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Reading failed or the peer closed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY header at all, or a malformed one.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
}

/// Reads one PROXY v1 or v2 header and returns the client address it carries.
///
/// `Ok(None)` for `LOCAL` (v2) or `UNKNOWN` (v1) headers: health checks from the balancer
/// itself, where the socket peer is the right address.
pub async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIGNATURE {
        let mut rest = [0u8; 4];
        stream.read_exact(&mut rest).await?;
        buf.extend_from_slice(&rest);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if 16 + len > V2_MAX {
            return Err(ProxyHeaderError::Invalid(format!(
                "v2 header of {len} bytes is too long"
            )));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await?;
    } else if buf.starts_with(b"PROXY ") {
        // v1 ends at CRLF; read byte by byte so no request byte is consumed.
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Invalid("v1 header without CRLF".into()));
            }
            stream.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
    } else {
        return Err(ProxyHeaderError::Invalid(
            "the connection did not start with a PROXY header".into(),
        ));
    }
    parse(&buf)
}

fn parse(buf: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match HeaderResult::parse(buf) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => {
            if h.command == v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            })
        }
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        let _ = cursor.read_to_end(&mut rest).await;
        (r, rest)
    }

    #[tokio::test]
    async fn v1_tcp4_and_rest_untouched() {
        let (r, rest) =
            read(b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r.unwrap(), Some("203.0.113.9:51234".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (r, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::1]:1000".parse().unwrap()));
        let (r, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_proxy_ipv4() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "198.51.100.7:4000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (r, rest) = read(&bytes).await;
        assert_eq!(r.unwrap(), Some("198.51.100.7:4000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        assert!(read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.0.is_err());
        assert!(read(b"PROXY TCP4 nonsense\r\n").await.0.is_err());
        assert!(
            read(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(40))
                .await
                .0
                .is_err()
        );
        assert!(read(b"PROXY").await.0.is_err(), "truncated");
    }
}
