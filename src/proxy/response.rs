//! The one place where refusals become HTTP responses (status, headers, body, outcome).

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::metrics::Outcome;
use crate::upstream::UpstreamError;

/// The body type of every response wsgate sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A body from static bytes.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a request was refused before reaching (or instead of) the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed request (bad path, bad WebSocket headers).
    BadRequest(&'static str),
    /// `Sec-WebSocket-Version` other than 13.
    UpgradeRequired,
    /// No route matched.
    NotFound,
    /// Missing or bad credentials; carries the Basic challenge when the route accepts Basic.
    Unauthorized {
        /// `WWW-Authenticate` value.
        challenge: Option<String>,
    },
    /// No credentials at all on a route that accepts Basic: the same 401 with the challenge,
    /// counted apart because browsers send `user:pass` only after it.
    Challenged {
        /// `WWW-Authenticate` value.
        challenge: String,
    },
    /// Too many password verifications in flight.
    Busy,
    /// Refused by policy (a browser `Origin` not on the route's list).
    Forbidden,
    /// The client IP exceeded its handshake rate; retry after this many seconds.
    TooManyRequests {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// Upstream unreachable or broken.
    BadGateway,
    /// The upstream answered 101 but not a WebSocket handshake for the key sent (h2c, a
    /// missing or wrong `Sec-WebSocket-Accept`): never spliced.
    NotWebSocket,
    /// Upstream too slow.
    GatewayTimeout,
    /// The user already holds `max_connections_per_user` on the route (`on_user_limit: reject`).
    UserLimit,
    /// A forward-auth service refused: its status (401/403) and headers, passed on.
    AuthDenied(crate::auth::AuthReply),
    /// A forward-auth service could not judge (timeout, failure, 5xx).
    AuthUnavailable,
}

impl Refusal {
    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Unauthorized { .. } | Refusal::Challenged { .. } => StatusCode::UNAUTHORIZED,
            Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BadGateway | Refusal::NotWebSocket => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::UserLimit => StatusCode::CONFLICT,
            Refusal::AuthDenied(reply) => reply.status,
            Refusal::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `wsgate_handshakes_total` outcome label.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::BadRequest(_) | Refusal::UpgradeRequired => Outcome::BadRequest,
            Refusal::NotFound => Outcome::NotFound,
            Refusal::Unauthorized { .. } => Outcome::Unauthorized,
            Refusal::Challenged { .. } => Outcome::Challenged,
            Refusal::Busy | Refusal::TooManyRequests { .. } | Refusal::UserLimit => {
                Outcome::Limited
            }
            Refusal::Forbidden => Outcome::Forbidden,
            Refusal::BadGateway | Refusal::AuthUnavailable => Outcome::UpstreamError,
            Refusal::AuthDenied(reply) if reply.status == StatusCode::FORBIDDEN => {
                Outcome::Forbidden
            }
            Refusal::AuthDenied(_) => Outcome::Unauthorized,
            Refusal::NotWebSocket => Outcome::UpstreamRejected,
            Refusal::GatewayTimeout => Outcome::Timeout,
        }
    }

    /// A complete HTTP/1.1 response that closes the connection.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let text = match &self {
            Refusal::BadRequest(why) => format!("400 Bad Request: {why}\n"),
            Refusal::UserLimit => {
                "409 Conflict: this user already has the most connections this route allows\n"
                    .to_owned()
            }
            other => format!(
                "{} {}\n",
                other.status().as_u16(),
                other.status().canonical_reason().unwrap_or("")
            ),
        };
        let mut resp = Response::new(full(text));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            Refusal::Unauthorized {
                challenge: Some(challenge),
            }
            | Refusal::Challenged { challenge } => {
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    h.insert(WWW_AUTHENTICATE, v);
                }
            }
            Refusal::UpgradeRequired => {
                h.insert("sec-websocket-version", HeaderValue::from_static("13"));
            }
            Refusal::Busy => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::TooManyRequests { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            Refusal::AuthDenied(reply) => {
                for (name, value) in reply.headers {
                    h.append(name, value);
                }
            }
            _ => {}
        }
        resp
    }
}

impl From<&UpstreamError> for Refusal {
    fn from(e: &UpstreamError) -> Self {
        if e.is_timeout() {
            Refusal::GatewayTimeout
        } else {
            Refusal::BadGateway
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_carries_challenge_and_closes() {
        let r = Refusal::Unauthorized {
            challenge: Some("Basic realm=\"wsgate\"".into()),
        }
        .into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"wsgate\"");
        assert_eq!(r.headers()["connection"], "close");
    }

    #[test]
    fn challenged_is_the_same_401_with_its_own_outcome() {
        let r = Refusal::Challenged {
            challenge: "Basic realm=\"wsgate\"".into(),
        };
        assert_eq!(r.outcome(), Outcome::Challenged);
        let r = r.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"wsgate\"");
        assert_eq!(r.headers()["connection"], "close");
    }

    #[test]
    fn auth_service_refusals_keep_status_and_headers() {
        let reply = crate::auth::AuthReply {
            status: StatusCode::FORBIDDEN,
            headers: vec![(http::header::LOCATION, HeaderValue::from_static("/login"))],
        };
        let r = Refusal::AuthDenied(reply);
        assert_eq!(r.outcome(), Outcome::Forbidden);
        let r = r.into_response();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["location"], "/login");
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(Refusal::AuthUnavailable.status(), 503);
        assert_eq!(Refusal::AuthUnavailable.outcome(), Outcome::UpstreamError);
    }

    #[test]
    fn statuses_and_outcomes() {
        assert_eq!(Refusal::NotFound.status(), 404);
        assert_eq!(Refusal::BadGateway.status(), 502);
        assert_eq!(Refusal::GatewayTimeout.outcome(), Outcome::Timeout);
        assert_eq!(Refusal::UpgradeRequired.status(), 426);
        assert_eq!(
            Refusal::UpgradeRequired.into_response().headers()["sec-websocket-version"],
            "13"
        );
    }
}
