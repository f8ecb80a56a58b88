//! Small tools for containers and demos: `bowline ready` (a healthcheck for images with no
//! shell or curl) and `bowline echo` (a demo backend that answers with its name).

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Flags of `bowline ready`.
#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// Admin address of the node to check.
    #[arg(long, default_value = "127.0.0.1:7301", env = "BOWLINE_ADMIN_ADDR")]
    pub admin_addr: String,
    /// Path to check: /readyz (caught up, leader known) or /healthz (alive).
    #[arg(long, default_value = "/readyz")]
    pub path: String,
}

/// Runs `bowline ready`: exit 0 when the node answers 200.
pub async fn ready(args: &ReadyArgs) -> anyhow::Result<()> {
    match super::http_get(&args.admin_addr, &args.path).await {
        Some((200, body)) => {
            print!("{body}");
            Ok(())
        }
        Some((status, body)) => anyhow::bail!(
            "{} {}: {status} {}",
            args.admin_addr,
            args.path,
            body.trim()
        ),
        None => anyhow::bail!("{}: no answer", args.admin_addr),
    }
}

/// Flags of `bowline echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Name to answer with.
    #[arg(long, env = "ECHO_NAME", default_value = "echo")]
    pub name: String,
    /// Version to answer with.
    #[arg(long, env = "ECHO_VERSION", default_value = "v1")]
    pub version: String,
}

/// Runs `bowline echo`: answers every HTTP/1.1 request with `NAME VERSION` (keep-alive).
pub async fn echo(args: &EchoArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let body = format!("{} {}\n", args.name, args.version);
    eprintln!(
        "echo: {} answering {:?} on {}",
        args.name,
        body.trim(),
        args.listen
    );
    let stop = super::serve::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (mut socket, _) = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let _ = socket.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut pending = Vec::new();
            loop {
                let Ok(n) = socket.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                // Bounded: a client that never ends its headers is dropped.
                if pending.len() > 64 * 1024 {
                    return;
                }
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
