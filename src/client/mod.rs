//! A Rust client for the Bowline API with endpoint failover: it tries the nodes it was given
//! in turn, moving on when one is unreachable or has no leader, and sticks to the last one
//! that answered. Used by the CLI, the tests and the benchmarks.

pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::config_client::ConfigClient;
use crate::proto::v1::registry_client::RegistryClient;

/// Client options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Give up on a call (across all retries) after this long.
    pub total_timeout: Duration,
    /// Give up on one attempt against one node after this long.
    pub attempt_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            total_timeout: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

/// A connection to a Bowline cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    /// `host:port` of each node's client listener.
    endpoints: Arc<Vec<String>>,
    /// One lazily-connected channel per endpoint.
    channels: Arc<Vec<Channel>>,
    /// Index of the endpoint that last answered.
    preferred: Arc<AtomicUsize>,
    /// Timeouts.
    options: ClientOptions,
}

/// Whether a failed call may be retried on another node.
pub fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || (status.code() == Code::Unknown
        && ["transport", "h2 protocol", "connection", "broken pipe"]
            .iter()
            .any(|s| status.message().contains(s)))
}

impl Client {
    /// A client for the given endpoints (`host:port`, comma-separated lists are split).
    pub fn new(endpoints: &[String], options: ClientOptions) -> Result<Self, String> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().trim_start_matches("http://").to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("no endpoints given".to_string());
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            let channel = Channel::from_shared(format!("http://{e}"))
                .map_err(|err| format!("bad endpoint {e}: {err}"))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push(channel);
        }
        Ok(Self {
            endpoints: Arc::new(endpoints),
            channels: Arc::new(channels),
            preferred: Arc::new(AtomicUsize::new(0)),
            options,
        })
    }

    /// The endpoints this client uses.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A client pinned to one endpoint (no failover), for tests that must talk to a node.
    pub fn pinned(&self, index: usize) -> Client {
        Client {
            endpoints: Arc::new(vec![self.endpoints[index].clone()]),
            channels: Arc::new(vec![self.channels[index].clone()]),
            preferred: Arc::new(AtomicUsize::new(0)),
            options: self.options.clone(),
        }
    }

    /// Runs `call` against the preferred node, failing over on retryable errors until the
    /// total timeout. Non-retryable errors are returned at once.
    pub async fn with_failover<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.failover(call, true).await
    }

    /// Like [`with_failover`](Self::with_failover), for calls that change state: only
    /// errors that prove the call was not applied (`UNAVAILABLE`) are retried. A timeout is
    /// returned to the caller, who knows whether repeating the write is safe.
    pub async fn with_failover_write<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.failover(call, false).await
    }

    async fn failover<T, F, Fut>(&self, call: F, retry_ambiguous: bool) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.total_timeout;
        let n = self.channels.len();
        let mut index = self.preferred.load(Ordering::Relaxed) % n;
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0usize;
        loop {
            let budget = self
                .options
                .attempt_timeout
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .max(Duration::from_millis(1));
            let attempt = tokio::time::timeout(budget, call(self.channels[index].clone())).await;
            let error = match attempt {
                Ok(Ok(value)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(status)) if !is_retryable(&status) => return Err(status),
                Ok(Err(status)) if !retry_ambiguous && status.code() != Code::Unavailable => {
                    return Err(status)
                }
                Ok(Err(status)) => status,
                Err(_) if !retry_ambiguous => {
                    return Err(Status::deadline_exceeded(format!(
                        "{} did not answer within {budget:?}; the write may or may not have been applied",
                        self.endpoints[index]
                    )))
                }
                Err(_) => Status::deadline_exceeded(format!(
                    "{} did not answer within {budget:?}",
                    self.endpoints[index]
                )),
            };
            attempts += 1;
            if tokio::time::Instant::now() + backoff >= deadline {
                return Err(Status::new(
                    error.code(),
                    format!(
                        "{} (after {attempts} attempts across {n} endpoints)",
                        error.message()
                    ),
                ));
            }
            index = (index + 1) % n;
            if attempts.is_multiple_of(n) {
                // A whole round failed: the cluster is probably electing; back off a little.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Registry calls with failover: `client.registry(|mut c| async move { c.get_service(..).await })`.
    /// Mutating registry calls, with failover only on errors that prove nothing was applied.
    pub async fn registry_write<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(RegistryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_failover_write(|ch| {
            let fut = f(RegistryClient::new(ch));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Read-only registry calls with failover.
    pub async fn registry<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(RegistryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_failover(|ch| {
            let fut = f(RegistryClient::new(ch));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Config calls with failover.
    /// Mutating config calls, with failover only on errors that prove nothing was applied.
    pub async fn config_write<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(ConfigClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_failover_write(|ch| {
            let fut = f(ConfigClient::new(ch));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Read-only config calls with failover.
    pub async fn config<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(ConfigClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_failover(|ch| {
            let fut = f(ConfigClient::new(ch));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Cluster calls with failover.
    /// Mutating cluster calls, with failover only on errors that prove nothing was applied.
    pub async fn cluster_write<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_failover_write(|ch| {
            let fut = f(ClusterClient::new(ch));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Read-only cluster calls with failover.
    pub async fn cluster<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_failover(|ch| {
            let fut = f(ClusterClient::new(ch));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }
}
