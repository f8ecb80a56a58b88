//! A throwaway local cluster for benchmarks and chaos runs: `bowline serve` children on free
//! loopback ports with fresh data directories (removed on drop), which can be killed,
//! paused, restarted and wiped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// A running local cluster.
pub struct LocalCluster {
    /// Client addresses, one per node.
    pub client_addrs: Vec<String>,
    /// Admin addresses, one per node.
    pub admin_addrs: Vec<String>,
    /// `serve` arguments per node, to restart it the same way.
    args: Vec<Vec<String>>,
    /// Node processes (None while a node is down).
    children: Vec<Option<Child>>,
    /// Data directories' parent, removed on drop.
    dir: PathBuf,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    /// Starts `n` nodes (extra `serve` flags appended) and waits until every node is ready.
    pub async fn start(n: u64, extra: &[String]) -> anyhow::Result<LocalCluster> {
        let dir = std::env::temp_dir().join(format!("bowline-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut peers = Vec::new();
        let mut client_addrs = Vec::new();
        let mut admin_addrs = Vec::new();
        for _ in 0..n {
            peers.push(format!("127.0.0.1:{}", free_port()?));
            client_addrs.push(format!("127.0.0.1:{}", free_port()?));
            admin_addrs.push(format!("127.0.0.1:{}", free_port()?));
        }
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}={p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let args = (0..n as usize)
            .map(|i| {
                let mut a = vec![
                    "serve".to_string(),
                    format!("--id={}", i + 1),
                    format!(
                        "--data-dir={}",
                        dir.join(format!("node-{}", i + 1)).display()
                    ),
                    format!("--peer-addr={}", peers[i]),
                    format!("--client-addr={}", client_addrs[i]),
                    format!("--admin-addr={}", admin_addrs[i]),
                    format!("--initial-cluster={initial}"),
                ];
                a.extend(extra.iter().cloned());
                a
            })
            .collect();
        let mut cluster = LocalCluster {
            client_addrs,
            admin_addrs,
            args,
            children: (0..n).map(|_| None).collect(),
            dir,
        };
        for i in 0..n as usize {
            cluster.spawn(i, &[])?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Starts node `i` (again) with its arguments plus `more`.
    pub fn spawn(&mut self, i: usize, more: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{}.log", i + 1)))?;
        let child = Command::new(std::env::current_exe()?)
            .args(&self.args[i])
            .args(more)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start a bowline node")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (i, admin) in self.admin_addrs.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            loop {
                if matches!(crate::cli::http_get(admin, "/readyz").await, Some((200, _))) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "node {} not ready in time (logs in {})",
                        i + 1,
                        self.dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(child) = &self.children[i] {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGSTOPs node `i` (a long GC pause, a frozen VM).
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONTs node `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// SIGTERMs node `i` and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        if let Some(mut child) = self.children[i].take() {
            let _ = child.wait();
        }
    }

    /// Deletes node `i`'s data directory (the node must be down).
    pub fn wipe(&self, i: usize) -> std::io::Result<()> {
        std::fs::remove_dir_all(self.data_dir(i))
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{}", i + 1))
    }

    /// Process id of node `i` (0 when down).
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].as_ref().map_or(0, Child::id)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.resume(i);
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
