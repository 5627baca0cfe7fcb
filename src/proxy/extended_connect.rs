//! WebSockets over HTTP/2 (RFC 8441): what differs from an HTTP/1.1 upgrade, and only that.
//!
//! The handler runs an extended CONNECT through the same phases as an HTTP/1.1 upgrade; the
//! upstream leg is always an HTTP/1.1 upgrade. These helpers translate at the two ends: the
//! upstream request gets the `GET` and the `Sec-WebSocket-Key` that HTTP/2 requests don't
//! carry, and the client stream gets a `200` instead of the upstream's `101`.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use crate::proxy::response::{ProxyBody, full};

/// The `:protocol` of a WebSocket extended CONNECT.
const WEBSOCKET: &str = "websocket";

/// Whether `req` is an HTTP/2 extended CONNECT for a WebSocket (RFC 8441 §4).
pub fn is_websocket_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == WEBSOCKET)
}

/// A fresh `Sec-WebSocket-Key` for the upstream leg: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn new_key() -> HeaderValue {
    use base64::Engine;
    let nonce: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    // Base64 is always a valid header value.
    HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// Turns the HTTP/1.1 upgrade sent upstream into what the upstream expects: `GET` with a key
/// of the gateway's making (an HTTP/2 request has none, and a client-sent one is not trusted).
pub fn to_upstream<B>(req: &mut Request<B>) {
    *req.method_mut() = Method::GET;
    req.headers_mut()
        .insert(header::SEC_WEBSOCKET_KEY, new_key());
}

/// The client stream's answer to an upstream `101`: `200` with the negotiated
/// `Sec-WebSocket-Protocol`/`-Extensions` and the upstream's other headers, without the
/// HTTP/1.1 handshake headers (`Sec-WebSocket-Accept` answers the gateway's key, not the
/// client's) and without a length (a 2xx to CONNECT has none, RFC 9110 §9.3.6).
pub fn client_response(mut headers: HeaderMap) -> Response<ProxyBody> {
    crate::proxy::handler::strip_hop_by_hop(&mut headers);
    for name in [
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: Option<&'static str>) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("https://example.com/ws");
        if let Some(p) = protocol {
            req = req.extension(hyper::ext::Protocol::from_static(p));
        }
        req.body(()).unwrap()
    }

    #[test]
    fn only_a_websocket_extended_connect_counts() {
        assert!(is_websocket_connect(&connect(Some("websocket"))));
        assert!(!is_websocket_connect(&connect(None)));
        assert!(!is_websocket_connect(&connect(Some("connect-udp"))));
        let mut h1 = connect(Some("websocket"));
        *h1.version_mut() = Version::HTTP_11;
        assert!(!is_websocket_connect(&h1));
    }

    #[test]
    fn keys_are_fresh_16_byte_nonces() {
        use base64::Engine;
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.as_bytes())
            .unwrap();
        assert_eq!(raw.len(), 16);
    }

    #[test]
    fn the_200_keeps_negotiation_and_drops_the_handshake() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("sec-websocket-accept", HeaderValue::from_static("x"));
        h.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        let resp = client_response(h);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
        for gone in ["upgrade", "connection", "sec-websocket-accept"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }
}
