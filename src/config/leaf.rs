//! Leaf values: how one string (or a one-or-many list) becomes a typed value, for serde
//! (`#[serde(with = ...)]`) and for the schema (`#[schemars(with = ...)]`, a `format` name).
//!
//! Each `format` has one checker in [`check_format`], which the schema walk runs to report
//! the precise message (from `validate.rs`) under the value's YAML path; serde runs the same
//! parser afterwards on values that already passed, so its errors are never shown.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::jwt_rules::{ALGORITHMS, alg_name, parse_algorithm};
use super::types::{OriginPattern, UpstreamConfig, WebhookUrl};
use super::{duration as dur, validate};

/// Stands in for a required `bind` that was missing or invalid; port 0 conflicts with nothing.
pub(crate) const PLACEHOLDER_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Runs the checker of schema format `format` on `s`; `None` for a format we do not check.
pub(crate) fn check_format(format: &str, s: &str) -> Option<Result<(), String>> {
    fn ok<T>(r: Result<T, String>) -> Result<(), String> {
        r.map(|_| ())
    }
    Some(match format {
        "duration" => ok(dur::parse(s)),
        // A zero timeout would fail every connection.
        "positive-duration" => dur::parse(s).and_then(|d| {
            if d.is_zero() {
                Err("must be greater than 0s".to_string())
            } else {
                Ok(())
            }
        }),
        "socket-address" => ok(validate::bind_addr(s)),
        "route-path" => validate::route_path(s),
        "upstream-url" => ok(validate::upstream_url(s)),
        "webhook-url" => ok(validate::webhook_url(s)),
        "jwks-url" => ok(jwks_url(s)),
        "auth-url" => ok(validate::auth_url(s)),
        "upstream-header" => validate::upstream_header(s),
        "http-method" => validate::http_method(s),
        "cidr" => ok(validate::cidr(s)),
        "origin" => ok(validate::origin(s)),
        "jwt-algorithm" => ok(parse_algorithm(s)),
        "realm" => validate::realm(s),
        "query-param" => validate::query_param(s),
        "acme-domain" => super::acme::domain(s),
        "acme-email" => super::acme::email(s),
        "acme-directory" => super::acme::directory(s),
        _ => return None,
    })
}

/// A secret string: deserialized as is, never printed by `{:?}`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

macro_rules! string_schema {
    ($(#[$doc:meta])* $name:ident, $json:tt) => {
        $(#[$doc])*
        pub(crate) struct $name;
        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($json)
            }
        }
    };
}

string_schema!(
    /// `30s`, `5m`, `1h`, `500ms`, `1m30s`.
    DurationStr, {"type": "string", "format": "duration"});
string_schema!(
    /// A duration longer than 0s.
    PositiveDuration, {"type": "string", "format": "positive-duration"});
string_schema!(
    /// `IP:port`.
    Bind, {"type": "string", "format": "socket-address"});
string_schema!(
    /// A file name, relative to the config file's folder.
    FilePath, {"type": "string", "minLength": 1});
string_schema!(
    /// Any non-empty string.
    NonEmpty, {"type": "string", "minLength": 1});
string_schema!(
    /// A canonical path prefix.
    RoutePath, {"type": "string", "format": "route-path"});
string_schema!(
    /// `ws://`, `wss://` (or `http://`, `https://`) host and port, no path.
    UpstreamUrl, {"type": "string", "format": "upstream-url"});
string_schema!(
    /// `http://` or `https://` host, port, path and query.
    WebhookUrlStr, {"type": "string", "format": "webhook-url"});
string_schema!(
    /// A DNS name an ACME CA can issue for (no wildcard, no IP).
    AcmeDomain, {"type": "string", "format": "acme-domain"});
string_schema!(
    /// An e-mail address for an ACME account.
    AcmeEmail, {"type": "string", "format": "acme-email"});
string_schema!(
    /// An ACME directory URL (https://, or http:// to a loopback address).
    AcmeDirectory, {"type": "string", "format": "acme-directory"});
string_schema!(
    /// `http://` or `https://` URL of a JWKS.
    JwksUrlStr, {"type": "string", "format": "jwks-url"});
string_schema!(
    /// `http://` or `https://` URL of a forward-auth service.
    AuthUrlStr, {"type": "string", "format": "auth-url"});
string_schema!(
    /// A response header name copied onto upstream requests.
    UpstreamHeader, {"type": "string", "format": "upstream-header"});
string_schema!(
    /// An HTTP method such as GET.
    HttpMethod, {"type": "string", "format": "http-method"});
string_schema!(
    /// An IP or a CIDR.
    Cidr, {"type": "string", "format": "cidr"});
string_schema!(
    /// `scheme://host[:port]` or `scheme://*.domain[:port]`.
    Origin, {"type": "string", "format": "origin"});
string_schema!(
    /// A realm for `WWW-Authenticate`.
    Realm, {"type": "string", "format": "realm"});
string_schema!(
    /// A query parameter name.
    QueryParam, {"type": "string", "format": "query-param"});

/// A WebSocket close code the gateway may send (which ones: `semantic`).
pub(crate) struct CloseCode;

impl JsonSchema for CloseCode {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "CloseCode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 1000, "maximum": 4999})
    }
}

/// A JWT algorithm name.
pub(crate) struct Alg;

impl JsonSchema for Alg {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Alg".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
        json_schema!({"type": "string", "format": "jwt-algorithm", "enum": names})
    }
}

/// One value, or a non-empty list of them.
pub(crate) struct OneOrMany<T>(PhantomData<T>);

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("OneOrMany_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<T>();
        json_schema!({"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]})
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrManyDe<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrManyDe<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrManyDe::One(x) => vec![x],
            OneOrManyDe::Many(v) => v,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    OneOrManyDe::<String>::deserialize(d).map(OneOrManyDe::into_vec)
}

/// Durations as strings.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        dur::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Optional durations as strings.
pub(crate) mod opt_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| humantime::format_duration(d).to_string())
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| dur::parse(&s).map_err(D::Error::custom))
            .transpose()
    }
}

/// Bind addresses (IP literals only).
pub(crate) mod bind {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        validate::bind_addr(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `trusted_proxies`: IPs and CIDRs.
pub(crate) mod cidrs {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<Vec<ipnet::IpNet>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<ipnet::IpNet>>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .map(|v| {
                v.iter()
                    .map(|s| validate::cidr(s).map_err(D::Error::custom))
                    .collect()
            })
            .transpose()
    }
}

/// A route's `upstream`: one URL or a pool.
pub(crate) mod upstreams {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[UpstreamConfig], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|u| &u.url))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<UpstreamConfig>, D::Error> {
        one_or_many(d)?
            .iter()
            .map(|u| validate::upstream_url(u).map_err(D::Error::custom))
            .collect()
    }
}

/// `routes[].events.webhook`.
pub(crate) mod webhook {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &WebhookUrl, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.url)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WebhookUrl, D::Error> {
        validate::webhook_url(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A JWKS URL: the webhook URL rules, with messages that don't speak of webhooks.
pub(crate) fn jwks_url(s: &str) -> Result<WebhookUrl, String> {
    validate::webhook_url(s).map_err(|e| {
        e.replace(
            "\"https://hooks.internal/wsgate\"",
            "\"https://idp.example/jwks.json\"",
        )
        .replace("webhook URL", "URL")
    })
}

/// `auth.*.jwks_url`.
pub(crate) mod opt_jwks_url {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<WebhookUrl>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|u| u.url.as_str()).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<WebhookUrl>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| jwks_url(&s).map_err(D::Error::custom))
            .transpose()
    }
}

/// `auth.NAME.url` of a forward-auth authenticator.
pub(crate) mod auth_url {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &WebhookUrl, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.url)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WebhookUrl, D::Error> {
        validate::auth_url(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// JWT `algorithms`: one name or a list.
pub(crate) mod algorithms {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &[jsonwebtoken::Algorithm],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| alg_name(*a)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<jsonwebtoken::Algorithm>, D::Error> {
        one_or_many(d)?
            .iter()
            .map(|n| parse_algorithm(n).map(|(_, a)| a).map_err(D::Error::custom))
            .collect()
    }
}

/// JWT `audience`: one value or a list.
pub(crate) mod audience {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<Vec<String>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        Option::<OneOrManyDe<String>>::deserialize(d).map(|o| o.map(OneOrManyDe::into_vec))
    }
}

/// A route's `auth`: one authenticator name or a list.
pub(crate) mod names {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        one_or_many(d)
    }
}

/// A route's `origins`.
pub(crate) mod origins {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<Vec<OriginPattern>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| {
                v.iter()
                    .map(|o| match o {
                        OriginPattern::Exact(e) => e.clone(),
                        OriginPattern::Wildcard { scheme, suffix } => format!("{scheme}*{suffix}"),
                    })
                    .collect::<Vec<_>>()
            })
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<OriginPattern>>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .map(|v| {
                v.iter()
                    .map(|s| validate::origin(s).map_err(D::Error::custom))
                    .collect()
            })
            .transpose()
    }
}
