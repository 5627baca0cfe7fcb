//! The upstream half of a WebSocket upgrade, without a general-purpose HTTP client.
//!
//! An upgrade is one request and one response head on a fresh connection that then becomes
//! the tunnel, so the request head is written with a single write and the response head is
//! parsed with `httparse` straight off the socket: no connection task, no channel between
//! tasks, no upgrade hand-off. Bytes the upstream sent right behind its 101 are returned
//! with the stream and replayed first. A refusal (any other final status) is read with its
//! body, bounded, so it can be relayed to the client as the upstream sent it.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{UpstreamError, UpstreamStream};

/// Largest response head accepted, as for client request heads.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 100;
/// Largest refusal body relayed to the client; a bigger one is a 502.
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;
/// First read buffer: a 101 head is a few hundred bytes.
const FIRST_READ: usize = 2 * 1024;

/// What the upstream answered to the upgrade request.
#[derive(Debug)]
pub struct UpgradeResponse {
    /// The final status (1xx other than 101 are skipped).
    pub status: StatusCode,
    /// The response's headers, in the upstream's order.
    pub headers: HeaderMap,
    /// After a 101: the connection and the bytes already read past the head, which belong
    /// to the WebSocket stream. Otherwise the refusal's body.
    pub rest: Rest,
}

/// The part of an [`UpgradeResponse`] after its head.
#[derive(Debug)]
pub enum Rest {
    /// A 101: the tunnel's upstream socket and its read-ahead.
    Switched(UpstreamStream, Bytes),
    /// Any other final status: its body, complete.
    Body(Bytes),
}

/// Writes `req`'s head to `stream` and reads the response head (and a refusal's body).
/// The caller bounds the whole exchange with its response timeout.
pub async fn upgrade(
    mut stream: UpstreamStream,
    addr: &str,
    req: &Request<()>,
) -> Result<UpgradeResponse, UpstreamError> {
    let head = request_head(req).map_err(|why| malformed(addr, why))?;
    stream.write_all(&head).await.map_err(|e| broken(addr, e))?;
    stream.flush().await.map_err(|e| broken(addr, e))?;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        let parsed = loop {
            if let Some(parsed) = parse_head(&buf).map_err(|why| malformed(addr, why))? {
                break parsed;
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(malformed(addr, "response head too large"));
            }
            read_more(&mut stream, &mut buf, addr).await?;
        };
        let (len, status, headers) = parsed;
        buf.advance(len);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The read-ahead is usually empty: then no allocation stays with the tunnel.
            let ahead = if buf.is_empty() {
                Bytes::new()
            } else {
                buf.split().freeze()
            };
            return Ok(UpgradeResponse {
                status,
                headers,
                rest: Rest::Switched(stream, ahead),
            });
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: interim answers, the final one follows.
            continue;
        }
        let body = read_body(&mut stream, &mut buf, &headers, status, addr).await?;
        return Ok(UpgradeResponse {
            status,
            headers,
            rest: Rest::Body(body),
        });
    }
}

/// The request head as it goes on the wire: request line, headers, blank line.
fn request_head(req: &Request<()>) -> Result<Vec<u8>, &'static str> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let size = req.method().as_str().len()
        + target.len()
        + 16
        + req
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        // `http` already refuses CR, LF and NUL in values; a name is always a token.
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if target.is_empty() {
        return Err("empty request target");
    }
    Ok(head)
}

type Head = (usize, StatusCode, HeaderMap);

/// Parses a complete response head at the start of `buf`; `None` while it is partial.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    if resp.version != Some(1) {
        // A 101 only exists in HTTP/1.1; an HTTP/1.0 server cannot switch protocols.
        return Err("response is not HTTP/1.1");
    }
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("malformed response status")?;
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "malformed header name")?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| "malformed header value")?;
        headers.append(name, value);
    }
    Ok(Some((len, status, headers)))
}

/// Reads a refusal's body: by Content-Length, chunked, or to EOF, at most
/// [`MAX_REFUSAL_BODY`] bytes.
async fn read_body(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    headers: &HeaderMap,
    status: StatusCode,
    addr: &str,
) -> Result<Bytes, UpstreamError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Bytes::new());
    }
    let chunked = headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
    });
    if chunked {
        return read_chunked(stream, buf, addr).await;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (Some(v), None) => {
            let len: usize = v
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| malformed(addr, "malformed Content-Length"))?;
            if len > MAX_REFUSAL_BODY {
                return Err(malformed(addr, "refusal body too large"));
            }
            while buf.len() < len {
                read_more(stream, buf, addr).await?;
            }
            Ok(buf.split_to(len).freeze())
        }
        (Some(_), Some(_)) => Err(malformed(addr, "more than one Content-Length")),
        (None, _) => {
            // No framing: the body ends with the connection (RFC 9112 §6.3).
            loop {
                if buf.len() > MAX_REFUSAL_BODY {
                    return Err(malformed(addr, "refusal body too large"));
                }
                buf.reserve(4096);
                match stream.read_buf(buf).await {
                    Ok(0) => return Ok(buf.split().freeze()),
                    Ok(_) => {}
                    Err(e) => return Err(broken(addr, e)),
                }
            }
        }
    }
}

/// Decodes a chunked body with `httparse`'s chunk-size parser; trailers are dropped.
async fn read_chunked(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    addr: &str,
) -> Result<Bytes, UpstreamError> {
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((skip, size))) => break (skip, size),
                Ok(httparse::Status::Partial) => {
                    if buf.len() > 1024 {
                        return Err(malformed(addr, "malformed chunk size"));
                    }
                    read_more(stream, buf, addr).await?;
                }
                Err(_) => return Err(malformed(addr, "malformed chunk size")),
            }
        };
        buf.advance(skip);
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size == 0 {
            // Trailer fields up to the final blank line; the body is complete without them.
            loop {
                if let Some(end) = find(buf, b"\r\n") {
                    let line_empty = end == 0;
                    buf.advance(end + 2);
                    if line_empty {
                        return Ok(body.freeze());
                    }
                } else {
                    if buf.len() > MAX_HEAD_BYTES {
                        return Err(malformed(addr, "trailers too large"));
                    }
                    read_more(stream, buf, addr).await?;
                }
            }
        }
        if body.len().saturating_add(size) > MAX_REFUSAL_BODY {
            return Err(malformed(addr, "refusal body too large"));
        }
        while buf.len() < size + 2 {
            read_more(stream, buf, addr).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(malformed(addr, "malformed chunk"));
        }
        buf.advance(size + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One more read into `buf`; EOF before the message is complete is an error.
async fn read_more(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    addr: &str,
) -> Result<(), UpstreamError> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(FIRST_READ);
    }
    match stream.read_buf(buf).await {
        Ok(0) => Err(malformed(
            addr,
            "connection closed before the response was complete",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(broken(addr, e)),
    }
}

fn malformed(addr: &str, why: &'static str) -> UpstreamError {
    UpstreamError::Malformed {
        addr: addr.to_owned(),
        why,
    }
}

fn broken(addr: &str, source: std::io::Error) -> UpstreamError {
    UpstreamError::Io {
        addr: addr.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_is_one_buffer_in_header_order() {
        let req = Request::builder()
            .method("GET")
            .uri("/chat?room=1")
            .header("host", "up:1")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let head = request_head(&req).unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /chat?room=1 HTTP/1.1\r\nhost: up:1\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn heads_parse_complete_partial_and_bad() {
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX: 1\r\nX: 2\r\n\r\nABC";
        let (len, status, headers) = parse_head(ok).unwrap().unwrap();
        assert_eq!(&ok[len..], b"ABC");
        assert_eq!(status, 101);
        assert_eq!(headers.get_all("x").iter().count(), 2);
        assert!(parse_head(b"HTTP/1.1 101 Swi").unwrap().is_none());
        assert!(parse_head(b"HTTP/1.0 101 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 101 OK\r\nBad Name: x\r\n\r\n").is_err());
    }
}
