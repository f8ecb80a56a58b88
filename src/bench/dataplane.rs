//! The data-plane workload of `bowline chaos`: two `bowline echo` backends on loopback,
//! registered as the endpoints of a service, a real Envoy bootstrapped by `bowline proxy
//! bootstrap` against one control-plane node, and bounded HTTP load through that Envoy,
//! counting requests and failures. It also tells when a config change has reached Envoy.
//! Every child process is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use super::cluster::{free_port, DieWithParent};
use super::workloads::{register, register_endpoint_until};
use crate::client::Client;
use crate::proto::v1 as pb;

/// The service the backends are endpoints of; Envoy routes `Host: chaos-web` to it.
pub const SERVICE: &str = "chaos-web";

/// Longest a single request through Envoy may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How many failure descriptions to keep for the report.
const KEPT_FAILURES: usize = 5;

type Http = HttpClient<HttpConnector, Empty<Bytes>>;

/// The Envoy binary from `BOWLINE_ENVOY`, if set.
pub fn envoy_from_env() -> Option<PathBuf> {
    std::env::var_os("BOWLINE_ENVOY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What the load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadCounts {
    /// Requests sent through Envoy.
    pub requests: u64,
    /// Requests without a 200 answer within [`REQUEST_TIMEOUT`].
    pub failed: u64,
    /// The first few failures, described.
    pub first_failures: Vec<String>,
}

/// Counters shared with the load tasks.
#[derive(Default)]
struct Shared {
    requests: AtomicU64,
    failed: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

/// Running backends, Envoy, and the load through it.
pub struct DataPlane {
    /// The backends Envoy balances over.
    backends: Vec<Backend>,
    /// The Envoy process (None only while starting).
    envoy: Option<Child>,
    /// Envoy's admin port on 127.0.0.1, polled to see config arrive.
    admin_port: u16,
    /// Envoy's outbound listener on 127.0.0.1, where the load goes.
    listen_port: u16,
    /// Logs and the bootstrap; removed on drop.
    dir: PathBuf,
    /// Keep-alive HTTP/1.1 client shared by the load tasks and admin polls.
    http: Http,
    /// Counts of the load so far.
    shared: Arc<Shared>,
    /// Tells the load tasks to finish.
    stop: Arc<AtomicBool>,
    /// The load tasks.
    load: Vec<tokio::task::JoinHandle<()>>,
}

/// One GET with a deadline; returns the status and body.
async fn get(http: &Http, uri: &str, host: &str) -> Result<(u16, Bytes), String> {
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let exchange = async {
        let response = http.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// The endpoint for backend `k` at `port`, with `weight`.
fn endpoint(k: usize, port: u16, weight: u32) -> pb::Endpoint {
    pb::Endpoint {
        id: format!("backend-{k}"),
        service: SERVICE.to_string(),
        address: "127.0.0.1".to_string(),
        port: u32::from(port),
        weight: Some(weight),
        ..Default::default()
    }
}

/// Tells when Envoy's admin `/clusters` shows a backend with a given weight.
#[derive(Clone)]
pub struct WeightWatch {
    http: Http,
    /// `/clusters` on Envoy's admin port.
    uri: String,
    /// The line Envoy prints for the backend once it has the weight.
    line: String,
}

impl WeightWatch {
    /// Polls until Envoy shows the weight; returns when, or None at `deadline`.
    pub async fn wait(self, deadline: Instant) -> Option<Instant> {
        while Instant::now() < deadline {
            if let Ok((200, body)) = get(&self.http, &self.uri, "127.0.0.1").await {
                if String::from_utf8_lossy(&body).contains(&self.line) {
                    return Some(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// One backend: `bowline echo` on a loopback port answering `backend-K v1`.
struct Backend {
    /// Port on 127.0.0.1.
    port: u16,
    /// The `bowline echo` process.
    child: Option<Child>,
}

impl Backend {
    /// Starts `bowline echo` and waits until it accepts connections.
    async fn start(exe: &Path, k: usize, dir: &Path) -> anyhow::Result<Backend> {
        let port = free_port()?;
        let name = format!("backend-{k}");
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(exe)
            .args([
                "echo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                &name,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .die_with_parent()
            .spawn()
            .context("start a bowline echo backend")?;
        let mut backend = Backend {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(backend);
            }
            let exited = match backend.child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if exited {
                bail!(
                    "`bowline echo` {name} exited at start (log in {})",
                    dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("bowline echo {name} did not listen on 127.0.0.1:{port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl DataPlane {
    /// Starts the backends, registers them, starts Envoy (`envoy`) bootstrapped against
    /// `control_plane` (a node's client address), and waits until requests through Envoy
    /// reach both backends.
    pub async fn start(
        envoy: &Path,
        client: &Client,
        control_plane: &str,
    ) -> anyhow::Result<DataPlane> {
        let dir = std::env::temp_dir().join(format!("bowline-chaos-envoy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut plane = DataPlane {
            backends: Vec::new(),
            envoy: None,
            admin_port: free_port()?,
            listen_port: free_port()?,
            dir,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            shared: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            load: Vec::new(),
        };
        let exe = std::env::current_exe()?;
        for k in 0..2 {
            plane
                .backends
                .push(Backend::start(&exe, k, &plane.dir).await?);
        }

        let service = pb::Service {
            name: SERVICE.to_string(),
            ports: vec![pb::ServicePort {
                name: "http".to_string(),
                port: 8080,
                protocol: "http".to_string(),
            }],
            ..Default::default()
        };
        register(client, service)
            .await
            .context("register the data-plane service")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        for k in 0..plane.backends.len() {
            register_endpoint_until(
                std::slice::from_ref(client),
                endpoint(k, plane.backends[k].port, 1),
                deadline,
            )
            .await?;
        }

        let bootstrap = tokio::process::Command::new(&exe)
            .args([
                "--endpoints",
                control_plane,
                "-o",
                "json",
                "proxy",
                "bootstrap",
            ])
            .args(["--service", "chaos-client", "--node-id", "chaos-envoy"])
            .args(["--listen-port", &plane.listen_port.to_string()])
            .args(["--admin-port", &plane.admin_port.to_string()])
            .output()
            .await
            .context("run bowline proxy bootstrap")?;
        if !bootstrap.status.success() {
            bail!(
                "bowline proxy bootstrap failed: {}",
                String::from_utf8_lossy(&bootstrap.stderr).trim()
            );
        }
        let config = plane.dir.join("envoy.json");
        std::fs::write(&config, &bootstrap.stdout)?;
        let log = std::fs::File::create(plane.dir.join("envoy.log"))?;
        // Base ids must differ between Envoys on one host, also across parallel runs.
        let base_id = u64::from(std::process::id()) * 10 + 7;
        plane.envoy = Some(
            Command::new(envoy)
                .arg("-c")
                .arg(&config)
                .args(["--base-id", &base_id.to_string(), "--disable-hot-restart"])
                .args(["--concurrency", "1", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .die_with_parent()
                .spawn()
                .with_context(|| format!("start Envoy {}", envoy.display()))?,
        );

        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < plane.backends.len() {
            if let Ok((200, body)) = get(&plane.http, &plane.uri(), SERVICE).await {
                seen.insert(body);
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy did not route to both backends within 30 s (saw {seen:?}); log: {}",
                    plane.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(plane)
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listen_port)
    }

    /// Starts `connections` request loops, each paced to one request per `every`.
    pub fn start_load(&mut self, connections: usize, every: Duration) {
        for _ in 0..connections {
            let (http, uri, shared, stop) = (
                self.http.clone(),
                self.uri(),
                self.shared.clone(),
                self.stop.clone(),
            );
            self.load.push(tokio::spawn(async move {
                let mut pace = tokio::time::interval(every);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Bounded even if nobody stops it: 10^6 requests.
                for _ in 0..1_000_000u32 {
                    pace.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    shared.requests.fetch_add(1, Ordering::Relaxed);
                    let failure = match get(&http, &uri, SERVICE).await {
                        Ok((200, _)) => continue,
                        Ok((status, body)) => {
                            format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())
                        }
                        Err(e) => e,
                    };
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    let mut kept = shared
                        .first_failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if kept.len() < KEPT_FAILURES {
                        kept.push(failure);
                    }
                }
            }));
        }
    }

    /// Stops the load and returns what it saw.
    pub async fn finish_load(&mut self) -> LoadCounts {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.load.drain(..) {
            // Each request is bounded by REQUEST_TIMEOUT, so this ends.
            let _ = task.await;
        }
        LoadCounts {
            requests: self.shared.requests.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            first_failures: self
                .shared
                .first_failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Port of backend `k`.
    pub fn backend_port(&self, k: usize) -> u16 {
        self.backends[k].port
    }

    /// The endpoint of backend `k`, with a new weight: a config change to push to Envoy.
    pub fn reweighted(&self, k: usize, weight: u32) -> pb::Endpoint {
        endpoint(k, self.backend_port(k), weight)
    }

    /// A watch for backend `k` having `weight` in Envoy.
    pub fn weight_watch(&self, k: usize, weight: u32) -> WeightWatch {
        WeightWatch {
            http: self.http.clone(),
            uri: format!("http://127.0.0.1:{}/clusters", self.admin_port),
            line: format!(
                "{SERVICE}.default::127.0.0.1:{}::weight::{weight}",
                self.backend_port(k)
            ),
        }
    }

    /// The last lines of Envoy's log, for failure reports.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.load {
            task.abort();
        }
        if let Some(child) = &mut self.envoy {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
