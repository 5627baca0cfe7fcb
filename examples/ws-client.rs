//! A tiny WebSocket client for trying wsgate:
//! `cargo run --example ws-client -- [--ca certs/dev.crt] [--stay] URL [MESSAGE]`.
//!
//! `user:pass@` in the URL is sent as HTTP Basic. Prints the handshake status, the
//! server's first message and the echo of MESSAGE; with `--stay`, then every message that
//! arrives (pushes, broadcasts) and the close code and reason, until the connection ends.

use std::sync::Arc;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut ca = None;
    let stay = args.iter().any(|a| a == "--stay");
    args.retain(|a| a != "--stay");
    if args.first().map(String::as_str) == Some("--ca") && args.len() > 1 {
        ca = Some(args.remove(1));
        args.remove(0);
    }
    let Some(url) = args.first().cloned() else {
        eprintln!(
            "usage: ws-client [--ca CERT.pem] [--stay] ws[s]://[user:pass@]host:port/path [message]"
        );
        std::process::exit(2);
    };
    let message = args.get(1).cloned().unwrap_or_else(|| "ping".into());
    if let Err(e) = run(&url, &message, ca, stay).await {
        eprintln!("ws-client: {e}");
        std::process::exit(1);
    }
}

async fn run(
    url: &str,
    message: &str,
    ca: Option<String>,
    stay: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let parsed: http::Uri = url.parse()?;
    let authority = parsed
        .authority()
        .ok_or("URL needs a host")?
        .as_str()
        .to_string();
    let (creds, host) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c.to_string()), h.to_string()),
        None => (None, authority.clone()),
    };
    let clean = url.replacen(&authority, &host, 1);
    let mut req = clean.as_str().into_client_request()?;
    if let Some(c) = creds {
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        );
        req.headers_mut().insert("authorization", value.parse()?);
    }
    let connector = match ca {
        Some(path) => {
            let pem = std::fs::read(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                roots.add(cert?)?;
            }
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Connector::Rustls(Arc::new(cfg)))
        }
        None => None,
    };
    let (mut ws, resp) = match connect_async_tls_with_config(req, None, false, connector).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            return Err(refusal(resp.status(), &body).into());
        }
        Err(e) => return Err(e.into()),
    };
    println!("connected: HTTP {}", resp.status());
    if let Some(Ok(first)) = ws.next().await {
        println!("server says: {first}");
    }
    ws.send(Message::text(message)).await?;
    if let Some(Ok(echo)) = ws.next().await {
        println!("echo: {echo}");
    }
    if stay {
        while let Some(msg) = ws.next().await {
            match msg? {
                Message::Close(Some(f)) => {
                    println!("closed: {} {}", u16::from(f.code), f.reason);
                    return Ok(());
                }
                Message::Close(None) => {
                    println!("closed");
                    return Ok(());
                }
                Message::Text(t) => println!("server says: {t}"),
                Message::Binary(b) => println!("server says: {} bytes", b.len()),
                _ => {}
            }
        }
        return Ok(());
    }
    ws.close(None).await?;
    Ok(())
}

/// `refused: HTTP 401 Unauthorized`, plus what the body adds to the status line: wsgate's
/// bodies repeat it (`401 Unauthorized`), sometimes with a reason (`400 Bad Request: why`).
fn refusal(status: http::StatusCode, body: &str) -> String {
    let body = body.trim();
    let status_text = status.to_string();
    let extra = body
        .strip_prefix(status_text.as_str())
        .unwrap_or(body)
        .trim();
    let extra = extra.strip_prefix(':').unwrap_or(extra).trim();
    if extra.is_empty() {
        format!("refused: HTTP {status_text}")
    } else {
        format!("refused: HTTP {status_text}: {extra}")
    }
}

#[cfg(test)]
mod tests {
    use super::refusal;
    use http::StatusCode;

    #[test]
    fn status_once_then_what_the_body_adds() {
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, "401 Unauthorized\n"),
            "refused: HTTP 401 Unauthorized"
        );
        assert_eq!(
            refusal(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: missing or invalid Sec-WebSocket-Key\n"
            ),
            "refused: HTTP 400 Bad Request: missing or invalid Sec-WebSocket-Key"
        );
        assert_eq!(
            refusal(StatusCode::FORBIDDEN, "go away"),
            "refused: HTTP 403 Forbidden: go away"
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, ""),
            "refused: HTTP 502 Bad Gateway"
        );
    }
}
