//! A demo WebSocket echo server for trying wsgate: `cargo run --example echo-upstream [ADDR]`.
//!
//! Greets each client with who wsgate says it is (`X-Auth-User`) and echoes every message.
#![allow(clippy::result_large_err)] // tungstenite's handshake callback fixes the error type

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo-upstream: listening on ws://{addr}");
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let mut user = String::from("anonymous");
            let mut path = String::new();
            let cb = |req: &Request, resp: Response| {
                path = req.uri().to_string();
                if let Some(u) = req
                    .headers()
                    .get("x-auth-user")
                    .and_then(|v| v.to_str().ok())
                {
                    user = u.to_string();
                }
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                return;
            };
            eprintln!("echo-upstream: {peer} opened {path} as {user}");
            if ws
                .send(Message::text(format!("hello {user}, you reached {path}")))
                .await
                .is_err()
            {
                return;
            }
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}
