//! The probes: HTTP (status code, with pooled keep-alive connections), TCP (connect) and
//! gRPC (`grpc.health.v1.Health/Check` over a cached channel per target).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// GET `path`; healthy when the status is in `expected`.
    Http {
        /// Request path.
        path: String,
        /// Healthy statuses.
        expected: Vec<u32>,
        /// Host header (the target address when `None`).
        host: Option<String>,
        /// Extra headers.
        headers: BTreeMap<String, String>,
    },
    /// TCP connect.
    Tcp,
    /// gRPC health check for `service` ("" = the whole server).
    Grpc {
        /// Service name in the request.
        service: String,
    },
}

impl ProbeKind {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ProbeKind::Http { .. } => "http",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Grpc { .. } => "grpc",
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Healthy?
    pub ok: bool,
    /// Short reason, used as the transition reason (`HTTP 503`, `connect refused`, …).
    pub reason: String,
}

impl ProbeOutcome {
    fn ok(reason: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.into(),
        }
    }
    fn fail(reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.into(),
        }
    }
}

/// The deepest cause of an error, in words a person expects.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    let text = deepest.to_string();
    if text.contains("Connection refused") {
        "connect refused".to_string()
    } else if text.contains("Connection reset") {
        "connection reset".to_string()
    } else {
        text
    }
}

/// Shared probe machinery: one pooled HTTP client and a gRPC channel per target.
#[derive(Clone)]
pub struct Prober {
    /// Keep-alive pool shared by every HTTP probe.
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    /// gRPC channels by `host:port`; tonic reconnects them as needed.
    grpc: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self {
            http,
            grpc: Arc::default(),
        }
    }
}

impl Prober {
    /// Probes `addr` (`host:port`) once, within `timeout`.
    pub async fn probe(&self, kind: &ProbeKind, addr: &str, timeout: Duration) -> ProbeOutcome {
        let run = async {
            match kind {
                ProbeKind::Http {
                    path,
                    expected,
                    host,
                    headers,
                } => {
                    self.http_probe(addr, path, expected, host.as_deref(), headers)
                        .await
                }
                ProbeKind::Tcp => match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => ProbeOutcome::ok("connected"),
                    Err(e) => ProbeOutcome::fail(describe(&e)),
                },
                ProbeKind::Grpc { service } => self.grpc_probe(addr, service).await,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::fail(format!(
                "timeout after {}",
                crate::model::DurationSpec::from_millis(timeout.as_millis() as u64)
            )),
        }
    }

    async fn http_probe(
        &self,
        addr: &str,
        path: &str,
        expected: &[u32],
        host: Option<&str>,
        headers: &BTreeMap<String, String>,
    ) -> ProbeOutcome {
        let mut request = hyper::Request::get(format!("http://{addr}{path}"))
            .header(hyper::header::HOST, host.unwrap_or(addr))
            .header(hyper::header::USER_AGENT, "bowline-health-check");
        for (k, v) in headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = match request.body(Empty::<Bytes>::new()) {
            Ok(r) => r,
            Err(e) => return ProbeOutcome::fail(format!("bad request: {e}")),
        };
        match self.http.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Dropping the body unread would close the connection; drain it (bounded by
                // the probe timeout) so the connection goes back to the pool.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                if expected.contains(&u32::from(status)) {
                    ProbeOutcome::ok(format!("HTTP {status}"))
                } else {
                    ProbeOutcome::fail(format!("HTTP {status}"))
                }
            }
            Err(e) => ProbeOutcome::fail(describe(&e)),
        }
    }

    async fn grpc_probe(&self, addr: &str, service: &str) -> ProbeOutcome {
        let channel = {
            let mut channels = self.grpc.lock().unwrap_or_else(|e| e.into_inner());
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => match Channel::from_shared(format!("http://{addr}")) {
                    Ok(endpoint) => {
                        let c = endpoint
                            .connect_timeout(Duration::from_secs(5))
                            .connect_lazy();
                        channels.insert(addr.to_string(), c.clone());
                        c
                    }
                    Err(e) => return ProbeOutcome::fail(format!("bad address: {e}")),
                },
            }
        };
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        match HealthClient::new(channel).check(request).await {
            Ok(response) => match ServingStatus::try_from(response.into_inner().status) {
                Ok(ServingStatus::Serving) => ProbeOutcome::ok("SERVING"),
                Ok(other) => ProbeOutcome::fail(other.as_str_name().to_string()),
                Err(_) => ProbeOutcome::fail("unknown serving status"),
            },
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::Unavailable => format!("gRPC UNAVAILABLE: {}", status.message()),
                    code => format!("gRPC {code:?}: {}", status.message()),
                };
                let reason = if reason.contains("Connection refused")
                    || reason.contains("tcp connect error")
                {
                    "connect refused".to_string()
                } else {
                    reason
                };
                ProbeOutcome::fail(reason)
            }
        }
    }

    /// Forgets gRPC channels of targets no longer probed.
    pub fn retain_grpc(&self, keep: impl Fn(&str) -> bool) {
        self.grpc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }
}
