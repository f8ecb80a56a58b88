//! A throwaway three-member etcd cluster on loopback, for side-by-side benchmarks: the
//! distribution's `etcd` binary (Debian's `etcd-server`, 3.4), fresh data directories,
//! fsync on and etcd's default timing (heartbeat 100 ms, election 1000 ms), as a user
//! would run it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tonic::transport::{Channel, Endpoint};

use super::cluster::{free_port, DieWithParent};
use crate::proto::etcd::maintenance_client::MaintenanceClient;
use crate::proto::etcd::StatusRequest;

/// The etcd binary: `$BOWLINE_ETCD`, else `etcd` on `PATH`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("BOWLINE_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// Whether an etcd binary can be started here.
pub fn etcd_available() -> bool {
    Command::new(etcd_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running local etcd cluster.
pub struct EtcdCluster {
    /// Client addresses (host:port), one per member.
    pub client_addrs: Vec<String>,
    args: Vec<Vec<String>>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

/// A lazily connected channel to `addr` (host:port), for either system. Its writes are
/// coalesced, as Bowline's own peer connections' are: otherwise h2 writes each request's
/// HEADERS, DATA and end of stream separately, and the load generator spent two `writev`s
/// per put, CPU the servers under test on this two-core machine then lacked.
pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .connect_with_connector_lazy(crate::transport::CoalescingConnector))
}

impl EtcdCluster {
    /// Starts `n` members and waits until they agree on a leader.
    pub async fn start(n: usize, extra: &[String]) -> anyhow::Result<EtcdCluster> {
        if !etcd_available() {
            bail!(
                "etcd not found: install Debian's etcd-server (apt-get install etcd-server) or set BOWLINE_ETCD"
            );
        }
        let dir = std::env::temp_dir().join(format!("bowline-bench-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut peers = Vec::new();
        let mut client_addrs = Vec::new();
        for _ in 0..n {
            peers.push(format!("127.0.0.1:{}", free_port()?));
            client_addrs.push(format!("127.0.0.1:{}", free_port()?));
        }
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}=http://{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let args = (0..n)
            .map(|i| {
                let mut a = vec![
                    format!("--name=m{}", i + 1),
                    format!("--data-dir={}", dir.join(format!("m{}", i + 1)).display()),
                    format!("--listen-client-urls=http://{}", client_addrs[i]),
                    format!("--advertise-client-urls=http://{}", client_addrs[i]),
                    format!("--listen-peer-urls=http://{}", peers[i]),
                    format!("--initial-advertise-peer-urls=http://{}", peers[i]),
                    format!("--initial-cluster={initial}"),
                    "--initial-cluster-state=new".to_string(),
                    "--initial-cluster-token=bowline-bench".to_string(),
                    "--log-level=error".to_string(),
                ];
                a.extend(extra.iter().cloned());
                a
            })
            .collect();
        let mut cluster = EtcdCluster {
            client_addrs,
            args,
            children: (0..n).map(|_| None).collect(),
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_leader(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Starts member `i` (again) with its arguments.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{}.log", i + 1)))?;
        let child = Command::new(etcd_binary())
            .args(&self.args[i])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .die_with_parent()
            .spawn()
            .context("start an etcd member")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// The index of the member every running member names as leader, once they agree.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "etcd elected no leader in time (logs in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader's index, if every member that answers names the same one.
    pub async fn leader(&self) -> Option<usize> {
        let mut member_ids = vec![0u64; self.children.len()];
        let mut named = None;
        for (i, addr) in self.client_addrs.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            let mut client = MaintenanceClient::new(channel(addr).ok()?);
            // A member that does not answer (stopping after SIGTERM, say) has no say.
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_millis(500), client.status(StatusRequest {}))
                    .await
            else {
                continue;
            };
            let status = status.into_inner();
            member_ids[i] = status.header?.member_id;
            if status.leader == 0 || named.is_some_and(|l| l != status.leader) {
                return None;
            }
            named = Some(status.leader);
        }
        let named = named?;
        member_ids.iter().position(|id| *id == named)
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs member `i` (a planned stop: etcd hands leadership off first) without waiting
    /// for it to exit.
    pub fn terminate(&self, i: usize) {
        if let Some(child) = &self.children[i] {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{}", i + 1))
    }

    /// Process id of member `i` (0 when down).
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].as_ref().map_or(0, Child::id)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
