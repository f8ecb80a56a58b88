//! A throwaway local cluster for benchmarks: three `bowline serve` children on free loopback
//! ports with fresh data directories, removed on drop.

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
    /// Node processes.
    children: Vec<Child>,
    /// Data directories' parent, removed on drop.
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
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
        let exe = std::env::current_exe()?;
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
        let mut children = Vec::new();
        for i in 0..n as usize {
            let log = std::fs::File::create(dir.join(format!("node-{}.log", i + 1)))?;
            let child = Command::new(&exe)
                .arg("serve")
                .arg(format!("--id={}", i + 1))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("node-{}", i + 1)).display()
                ))
                .arg(format!("--peer-addr={}", peers[i]))
                .arg(format!("--client-addr={}", client_addrs[i]))
                .arg(format!("--admin-addr={}", admin_addrs[i]))
                .arg(format!("--initial-cluster={initial}"))
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start a bowline node")?;
            children.push(child);
        }
        let cluster = LocalCluster {
            client_addrs,
            admin_addrs,
            children,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for admin in &cluster.admin_addrs {
            loop {
                if matches!(crate::cli::http_get(admin, "/readyz").await, Some((200, _))) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "local cluster not ready within 60 s (logs in {})",
                        cluster.dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{}", i + 1))
    }

    /// Process id of node `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
