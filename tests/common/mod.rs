//! Test harness: real `bowline serve` processes on loopback, each with its own data
//! directory, started and SIGKILLed like an operator (or a crash) would.

#![allow(dead_code)]

pub mod mesh;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bowline::client::{Client, ClientOptions};
use bowline::proto::v1 as pb;

/// Timeout for waiting on a condition in tests; generous because CI machines are shared.
pub const WAIT: Duration = Duration::from_secs(60);

/// A free loopback port, never one this process has handed out before (the crate's own
/// helper, shared with the benchmark harness).
pub fn free_port() -> u16 {
    bowline::bench::cluster::free_port().expect("pick a free loopback port")
}

/// One node process.
pub struct NodeProc {
    pub id: u64,
    pub peer_addr: String,
    pub client_addr: String,
    pub admin_addr: String,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub child: Option<Child>,
    /// `new` or `existing`.
    pub cluster_state: &'static str,
}

/// Raft and compaction flags for a test cluster.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub snapshot_every: u64,
    pub logs_to_keep: u64,
    /// More `bowline serve` flags.
    pub extra_args: Vec<String>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            snapshot_every: 10_000,
            logs_to_keep: 1_000,
            extra_args: Vec::new(),
        }
    }
}

/// A cluster of real processes. Dropping it SIGKILLs every node.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub dir: tempfile::TempDir,
    pub initial_cluster: String,
    pub tuning: Tuning,
}

pub fn bowline_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bowline")
}

impl Cluster {
    /// Starts `n` nodes that bootstrap a new cluster, and waits for a leader.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, Tuning::default()).await
    }

    /// Starts `n` nodes with the given tuning, and waits for a leader.
    pub async fn start_with(n: u64, tuning: Tuning) -> Cluster {
        let mut cluster = Self::prepare(n, tuning);
        cluster.start_prepared().await;
        cluster
    }

    /// Starts every node of a [`prepare`](Self::prepare)d cluster and waits for a leader.
    pub async fn start_prepared(&mut self) {
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        self.wait_for_leader().await;
    }

    /// A cluster of `n` nodes that bootstrap a new cluster, none started yet: a test can set
    /// up their data directories first.
    pub fn prepare(n: u64, tuning: Tuning) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(Self::node(&dir, id, "new"));
        }
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            nodes,
            dir,
            initial_cluster,
            tuning,
        }
    }

    fn node(dir: &tempfile::TempDir, id: u64, state: &'static str) -> NodeProc {
        NodeProc {
            id,
            peer_addr: format!("127.0.0.1:{}", free_port()),
            client_addr: format!("127.0.0.1:{}", free_port()),
            admin_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.path().join(format!("node-{id}")),
            log_file: dir.path().join(format!("node-{id}.log")),
            child: None,
            cluster_state: state,
        }
    }

    /// Adds a node process that will join an existing cluster (not yet a member).
    pub fn add_joining_node(&mut self, id: u64) -> usize {
        let node = Self::node(&self.dir, id, "existing");
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        self.spawn(index);
        index
    }

    /// Starts (or restarts) node `i` from its data directory.
    pub fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_file)
            .expect("open node log");
        let child = Command::new(bowline_bin())
            .arg("serve")
            .arg(format!("--id={}", node.id))
            .arg(format!("--data-dir={}", node.data_dir.display()))
            .arg(format!("--peer-addr={}", node.peer_addr))
            .arg(format!("--client-addr={}", node.client_addr))
            .arg(format!("--admin-addr={}", node.admin_addr))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-state={}", node.cluster_state))
            .arg(format!("--snapshot-every={}", self.tuning.snapshot_every))
            .arg(format!("--logs-to-keep={}", self.tuning.logs_to_keep))
            .args(&self.tuning.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn bowline serve");
        self.nodes[i].child = Some(child);
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `i` and waits for it to exit; returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("node is running");
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait child") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} ignored SIGTERM",
                self.nodes[i].id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether node `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// A client over every node's client address, with failover.
    pub fn client(&self) -> Client {
        let endpoints: Vec<String> = self.nodes.iter().map(|n| n.client_addr.clone()).collect();
        Client::new(&endpoints, ClientOptions::default()).expect("client")
    }

    /// A client over every node's client address with the given timeouts: short ones let
    /// writers notice a crash quickly.
    pub fn client_with_timeouts(&self, total: Duration, attempt: Duration) -> Client {
        let endpoints: Vec<String> = self.nodes.iter().map(|n| n.client_addr.clone()).collect();
        let options = ClientOptions {
            total_timeout: total,
            attempt_timeout: attempt,
            ..ClientOptions::default()
        };
        Client::new(&endpoints, options).expect("client")
    }

    /// A client that talks only to node `i`.
    pub fn client_for(&self, i: usize) -> Client {
        let options = ClientOptions {
            total_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        Client::new(&[self.nodes[i].client_addr.clone()], options).expect("client")
    }

    /// Node index by id.
    pub fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("known node id")
    }

    /// Status as reported by node `i` (no retries beyond the client's).
    pub async fn status(&self, i: usize) -> Option<pb::StatusResponse> {
        let client = Client::new(
            &[self.nodes[i].client_addr.clone()],
            ClientOptions {
                total_timeout: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
        )
        .ok()?;
        client
            .cluster(|mut c| async move { c.status(pb::StatusRequest {}).await })
            .await
            .ok()
    }

    /// Waits until every running node agrees on one leader that is itself running; returns its id.
    pub async fn wait_for_leader(&mut self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut leaders = Vec::new();
            let mut all_answered = true;
            for i in 0..self.nodes.len() {
                if !self.is_running(i) {
                    continue;
                }
                match self.status(i).await {
                    Some(s) => leaders.push(s.leader_id),
                    None => all_answered = false,
                }
            }
            if all_answered
                && !leaders.is_empty()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                let leader = leaders[0];
                let li = self.index_of(leader);
                if self.is_running(li) {
                    return leader;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader within {WAIT:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `check` until it returns `Some`, or panics with `what` after [`WAIT`].
    pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The tail of every node's log, for failure reports.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log_file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(30);
            out.push_str(&format!(
                "--- node {} ({}) ---\n",
                node.id,
                node.log_file.display()
            ));
            for line in &lines[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A service request with one HTTP port.
pub fn service(name: &str) -> pb::Service {
    pb::Service {
        name: name.to_string(),
        namespace: "default".to_string(),
        ports: vec![pb::ServicePort {
            name: "http".to_string(),
            port: 8080,
            protocol: "http".to_string(),
        }],
        ..Default::default()
    }
}

/// An endpoint request.
pub fn endpoint(service: &str, id: &str, port: u32) -> pb::Endpoint {
    pb::Endpoint {
        id: id.to_string(),
        service: service.to_string(),
        namespace: "default".to_string(),
        address: "127.0.0.1".to_string(),
        port,
        weight: Some(1),
        ..Default::default()
    }
}

/// Registers a service through `client`; returns the revision.
pub async fn register_service(client: &Client, name: &str) -> Result<u64, tonic::Status> {
    let request = pb::RegisterServiceRequest {
        service: Some(service(name)),
        expected_revision: None,
    };
    let r = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Reads one service; `Ok(None)` when it does not exist.
pub async fn get_service(
    client: &Client,
    name: &str,
    consistency: pb::Consistency,
) -> Result<Option<pb::Service>, tonic::Status> {
    let request = pb::GetServiceRequest {
        namespace: "default".to_string(),
        name: name.to_string(),
        consistency: consistency as i32,
    };
    match client
        .registry(|mut c| {
            let request = request.clone();
            async move { c.get_service(request).await }
        })
        .await
    {
        Ok(r) => Ok(r.service),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// Lists every service name (linearizable).
pub async fn service_names(client: &Client) -> Vec<String> {
    let r = client
        .registry(|mut c| async move { c.list_services(pb::ListServicesRequest::default()).await })
        .await
        .expect("list services");
    r.services.into_iter().map(|s| s.name).collect()
}

/// A minimal HTTP/1.0 GET against an admin port: `(status, body)`.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the first sample of `name` (with any labels) in a `/metrics` page.
pub fn metric_sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs the `bowline` CLI against the cluster; returns (exit code, stdout, stderr).
pub fn cli(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let endpoints = cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new(bowline_bin())
        .args(args)
        .env("BOWLINE_ENDPOINTS", endpoints)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bowline");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait bowline");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Applies a multi-document resource file through the API (as `bowline apply -f` does).
pub async fn apply(client: &Client, yaml: &str) {
    for resource in bowline::model::parse_documents(yaml).expect("valid test yaml") {
        match resource {
            bowline::model::Resource::Service(s) => {
                let request = pb::RegisterServiceRequest {
                    service: Some(pb::Service {
                        name: s.name.clone(),
                        namespace: s.namespace.clone(),
                        ports: s
                            .ports
                            .iter()
                            .map(|p| pb::ServicePort {
                                name: p.name.clone(),
                                port: p.port,
                                protocol: p.protocol.to_string(),
                            })
                            .collect(),
                        depends_on: s.depends_on.clone(),
                        labels: s.labels.clone().into_iter().collect(),
                        metadata: s.metadata.clone().into_iter().collect(),
                        ..Default::default()
                    }),
                    expected_revision: None,
                };
                client
                    .registry_write(|mut c| {
                        let request = request.clone();
                        async move { c.register_service(request).await }
                    })
                    .await
                    .unwrap();
            }
            bowline::model::Resource::Endpoint(e) => {
                let mut endpoint = endpoint(&e.service, &e.id, e.port);
                endpoint.labels = e.labels.clone().into_iter().collect();
                if e.health.status != bowline::model::HealthStatus::Unknown {
                    endpoint.health = Some(pb::Health {
                        status: e.health.status.to_string(),
                        ..Default::default()
                    });
                }
                let request = pb::RegisterEndpointRequest {
                    endpoint: Some(endpoint),
                    expected_revision: None,
                };
                client
                    .registry_write(|mut c| {
                        let request = request.clone();
                        async move { c.register_endpoint(request).await }
                    })
                    .await
                    .unwrap();
            }
            bowline::model::Resource::Config {
                namespace,
                name,
                spec,
            } => {
                let request = pb::PutConfigRequest {
                    object: Some(pb::ConfigObject {
                        kind: bowline::api::convert::kind_to_proto(spec.kind()) as i32,
                        namespace,
                        name,
                        spec_json: spec.to_json(),
                        ..Default::default()
                    }),
                    expected_revision: None,
                };
                client
                    .config_write(|mut c| {
                        let request = request.clone();
                        async move { c.put_config(request).await }
                    })
                    .await
                    .unwrap();
            }
        }
    }
}
