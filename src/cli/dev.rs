//! `bowline dev`: a local cluster of `bowline serve` child processes on loopback, with data
//! in a local folder. Writes `DATA_DIR/cluster.json`, restarts a node that dies (so the
//! five-minute tour can kill a leader and watch it come back), and stops every node cleanly
//! on Ctrl-C or SIGTERM. The next run restarts from the same data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::telemetry::LogFormat;

/// Flags of `bowline dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Folder for every node's data and log.
    #[arg(long, default_value = "./bowline-data")]
    pub data_dir: PathBuf,
    /// Node N listens on client BASE+N, peer BASE+100+N, admin BASE+200+N.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Seconds before a node that died is started again (0 = never).
    #[arg(long, default_value_t = 5)]
    pub restart_after: u64,
    /// Extra flags passed to every `bowline serve` (for example `--snapshot-every=100`).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

/// One node as written to `cluster.json`.
#[derive(Debug, Clone, Serialize)]
struct DevNode {
    id: u64,
    client_addr: String,
    peer_addr: String,
    admin_addr: String,
    data_dir: PathBuf,
    log_file: PathBuf,
    pid: u32,
}

#[derive(Debug, Serialize)]
struct ClusterFile<'a> {
    endpoints: String,
    nodes: &'a [DevNode],
}

/// A minimal HTTP/1.0 GET, enough to poll `/readyz` without an HTTP client dependency.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status: u16 = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

fn spawn(
    node: &DevNode,
    initial_cluster: &str,
    log_format: LogFormat,
    extra: &[String],
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locate the bowline binary")?;
    std::fs::create_dir_all(&node.data_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_file)
        .with_context(|| format!("open {}", node.log_file.display()))?;
    let format = match log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    Command::new(exe)
        .arg("serve")
        .arg(format!("--id={}", node.id))
        .arg(format!("--data-dir={}", node.data_dir.display()))
        .arg(format!("--peer-addr={}", node.peer_addr))
        .arg(format!("--client-addr={}", node.client_addr))
        .arg(format!("--admin-addr={}", node.admin_addr))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--log-format={format}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start node {}", node.id))
}

fn write_cluster_file(dir: &Path, nodes: &[DevNode]) -> anyhow::Result<()> {
    let endpoints = nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let text = serde_json::to_string_pretty(&ClusterFile { endpoints, nodes })?;
    let tmp = dir.join("cluster.json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("cluster.json"))?;
    Ok(())
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to a child we own; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Runs `bowline dev`.
pub async fn run(args: &DevArgs, log_format: LogFormat) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let port = |offset: u64| -> anyhow::Result<u16> {
        u16::try_from(args.base_port as u64 + offset).context("--base-port too high")
    };
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        nodes.push(DevNode {
            id,
            client_addr: format!("127.0.0.1:{}", port(id)?),
            peer_addr: format!("127.0.0.1:{}", port(100 + id)?),
            admin_addr: format!("127.0.0.1:{}", port(200 + id)?),
            data_dir: data_dir.join(format!("node-{id}")),
            log_file: data_dir.join(format!("node-{id}.log")),
            pid: 0,
        });
    }
    let initial_cluster = nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.peer_addr))
        .collect::<Vec<_>>()
        .join(",");

    let mut children = Vec::new();
    for node in &mut nodes {
        let child = spawn(node, &initial_cluster, log_format, &args.serve_args)?;
        node.pid = child.id().unwrap_or(0);
        children.push(Some(child));
    }
    write_cluster_file(&data_dir, &nodes)?;

    eprintln!("starting {} nodes in {} …", nodes.len(), data_dir.display());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ready = vec![false; nodes.len()];
    while ready.iter().any(|r| !r) && tokio::time::Instant::now() < deadline {
        for (i, node) in nodes.iter().enumerate() {
            if !ready[i] && matches!(http_get(&node.admin_addr, "/readyz").await, Some((200, _))) {
                ready[i] = true;
                eprintln!(
                    "  node {} ready (client {}, admin {})",
                    node.id, node.client_addr, node.admin_addr
                );
            }
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "node {} exited during start-up ({status}); see {}",
                    nodes[i].id,
                    nodes[i].log_file.display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if ready.iter().any(|r| !r) {
        eprintln!(
            "warning: not every node became ready within 60 s; see the logs in {}",
            data_dir.display()
        );
    }
    let endpoints = nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "\nBowline dev cluster is up: {} nodes, data in {}\n\n  export BOWLINE_ENDPOINTS={endpoints}\n  bowline cluster status\n  bowline apply -f examples/mesh.yaml\n  bowline get services\n\nNode logs: {}/node-N.log   Node pids: {}/cluster.json\nCtrl-C stops the cluster; running `bowline dev` again resumes from the same data.",
        nodes.len(),
        data_dir.display(),
        data_dir.display(),
        data_dir.display(),
    );

    // Supervise: restart nodes that die, until a stop signal.
    let stop = super::serve::shutdown_signal();
    tokio::pin!(stop);
    let mut died_at: Vec<Option<tokio::time::Instant>> = vec![None; nodes.len()];
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        for i in 0..nodes.len() {
            if let Some(child) = children[i].as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("node {} exited ({status})", nodes[i].id);
                    children[i] = None;
                    died_at[i] = Some(tokio::time::Instant::now());
                }
            } else if args.restart_after > 0
                && died_at[i]
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(args.restart_after))
            {
                let child = spawn(&nodes[i], &initial_cluster, log_format, &args.serve_args)?;
                nodes[i].pid = child.id().unwrap_or(0);
                eprintln!("restarted node {} (pid {})", nodes[i].id, nodes[i].pid);
                children[i] = Some(child);
                died_at[i] = None;
                write_cluster_file(&data_dir, &nodes)?;
            }
        }
    }

    eprintln!("stopping {} nodes …", nodes.len());
    for child in children.iter().flatten() {
        terminate(child);
    }
    for (i, child) in children.iter_mut().enumerate() {
        if let Some(child) = child {
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => eprintln!("  node {} stopped", nodes[i].id),
                Err(_) => {
                    eprintln!("  node {} did not stop in 10 s; killing it", nodes[i].id);
                    let _ = child.kill().await;
                }
            }
        }
    }
    Ok(())
}
