//! A throwaway local cluster for benchmarks and chaos runs: `bowline serve` children on free
//! loopback ports with fresh data directories (removed on drop), which can be killed,
//! paused, restarted and wiped; or, for partitions, each node in its own network namespace
//! (see [`Netns`]), where it can also be cut off from its peers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::netns::Netns;

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
    /// The nodes' namespaces, when they run in their own (dropped after the nodes are killed).
    netns: Option<Netns>,
}

/// Child processes of a benchmark or chaos run die with it.
pub trait DieWithParent {
    /// Has the child receive SIGKILL when the thread that started it exits, so a run killed
    /// by a signal (which skips every `Drop`) leaves no nodes, etcd members or Envoys behind.
    /// Children are started from the runtime's worker threads or the main thread, which live
    /// as long as the run. The child also gets transparent huge pages back (this process
    /// turned them off for itself), so etcd and Envoy run with the machine's setting.
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and
        // changes only the child's own settings (kept across exec).
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

/// A loopback port nothing listens on right now, and never one this process handed out
/// before (once released, the kernel may offer the same port again).
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
}

impl LocalCluster {
    /// Starts `n` nodes (extra `serve` flags appended) and waits until every node is ready.
    pub async fn start(n: u64, extra: &[String]) -> anyhow::Result<LocalCluster> {
        let mut peers = Vec::new();
        let mut client_addrs = Vec::new();
        let mut admin_addrs = Vec::new();
        for _ in 0..n {
            peers.push(format!("127.0.0.1:{}", free_port()?));
            client_addrs.push(format!("127.0.0.1:{}", free_port()?));
            admin_addrs.push(format!("127.0.0.1:{}", free_port()?));
        }
        Self::start_on(peers, client_addrs, admin_addrs, extra, None).await
    }

    /// Starts `n` nodes each in its own network namespace, at its own address with fixed
    /// ports, so that [`isolate`](Self::isolate) can cut a node off; needs root and `ip`.
    pub async fn start_partitionable(n: u64, extra: &[String]) -> anyhow::Result<LocalCluster> {
        let netns = Netns::create(n as usize)?;
        let addrs = |port: u16| {
            (0..n as usize)
                .map(|i| format!("{}:{port}", netns.node_ip(i)))
                .collect::<Vec<_>>()
        };
        let (peers, clients, admins) = (addrs(7300), addrs(7301), addrs(7302));
        Self::start_on(peers, clients, admins, extra, Some(netns)).await
    }

    async fn start_on(
        peers: Vec<String>,
        client_addrs: Vec<String>,
        admin_addrs: Vec<String>,
        extra: &[String],
        netns: Option<Netns>,
    ) -> anyhow::Result<LocalCluster> {
        let n = peers.len();
        let dir = std::env::temp_dir().join(format!("bowline-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}={p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let args = (0..n)
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
            netns,
        };
        for i in 0..n {
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
        let exe = std::env::current_exe()?;
        let mut command = match &self.netns {
            Some(netns) => {
                // `ip netns exec` execs the node in place, so the child's pid is the node's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns.namespace(i)]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let child = command
            .args(&self.args[i])
            .args(more)
            // The nodes' own log level; `BOWLINE_BENCH_LOG=info` shows elections and hand-offs.
            .env(
                "RUST_LOG",
                std::env::var("BOWLINE_BENCH_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .die_with_parent()
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

    /// SIGTERMs node `i` (a planned stop) without waiting for it to exit.
    pub fn terminate(&self, i: usize) {
        self.signal(i, libc::SIGTERM);
    }

    /// SIGSTOPs node `i` (a long GC pause, a frozen VM).
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONTs node `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// SIGTERMs node `i` and waits for it to exit (SIGKILL after 30 s). Polls rather than
    /// blocking in `wait`, so the workloads sharing the runtime keep running meanwhile.
    pub async fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        if let Some(mut child) = self.children[i].take() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = child.kill();
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

    /// The address nodes reach this process at (for probe targets the runner serves).
    pub fn host_ip(&self) -> String {
        self.netns
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), Netns::host_ip)
    }

    /// Cuts node `i` off from every other node, both ways; clients still reach it. Only for
    /// clusters started with [`start_partitionable`](Self::start_partitionable).
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        let peers: Vec<usize> = (0..self.len()).filter(|p| *p != i).collect();
        self.partitions()?.cut(i, &peers)
    }

    /// Undoes [`isolate`](Self::isolate).
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.partitions()?.heal(i)
    }

    fn partitions(&self) -> anyhow::Result<&Netns> {
        self.netns
            .as_ref()
            .context("this cluster runs on loopback; partitions need start_partitionable")
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
