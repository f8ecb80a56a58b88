//! `bowline bench health`: N endpoints probed over HTTP at a fixed interval against real
//! local listeners; reports the leader's probe schedule lag (p50/p99 from its histogram),
//! probe rate, CPU and RSS over a measurement window.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster::LocalCluster;
use super::{cpu_seconds, write_json, CommonArgs};
use crate::client::{Client, ClientOptions};
use crate::proto::v1 as pb;

/// Flags of `bowline bench health`.
#[derive(Debug, Args)]
pub struct HealthBenchArgs {
    /// Endpoints to probe.
    #[arg(long = "targets", default_value_t = 10_000)]
    pub targets: usize,
    /// Probe interval (e.g. 1s).
    #[arg(long, default_value = "1s")]
    pub interval: crate::model::DurationSpec,
    /// Measurement window in seconds, after every target is scheduled.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Local HTTP listeners serving the probes.
    #[arg(long, default_value_t = 16)]
    pub listeners: usize,
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The result.
#[derive(Debug, Serialize)]
pub struct HealthBenchResult {
    /// Endpoints probed.
    pub targets: usize,
    /// Probe interval in milliseconds.
    pub interval_ms: u64,
    /// Probes per second completed by the leader during the window.
    pub probes_per_second: f64,
    /// Median schedule lag (upper bound of its histogram bucket), milliseconds.
    pub lag_p50_ms: f64,
    /// 99th percentile schedule lag (bucket upper bound), milliseconds.
    pub lag_p99_ms: f64,
    /// Leader CPU, in cores (1.0 = one core busy).
    pub leader_cpu_cores: f64,
    /// Leader resident memory at the end, MiB.
    pub leader_rss_mib: f64,
    /// Probe failures seen in the window (the listeners always answer 200).
    pub failed_probes: u64,
}

async fn serve_ok(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
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
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if socket.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn metric_sum(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(upper bound, cumulative count)` of a histogram's buckets.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - before
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, b)| *b),
            )
        })
        .collect();
    let total = deltas.last().map_or(0.0, |(_, c)| *c);
    if total == 0.0 {
        return 0.0;
    }
    deltas
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::INFINITY, |(le, _)| *le)
}

/// Runs `bowline bench health`.
pub async fn run(args: &HealthBenchArgs) -> anyhow::Result<()> {
    if !args.common.bench_endpoints.is_empty() {
        anyhow::bail!("bench health measures the leader process, so it starts its own cluster; drop --bench-endpoints");
    }
    let targets = if args.common.quick {
        args.targets.min(500)
    } else {
        args.targets
    };
    let seconds = if args.common.quick {
        args.seconds.min(5)
    } else {
        args.seconds
    };
    eprintln!("starting a local three-node cluster …");
    let cluster = LocalCluster::start(3, &[]).await?;
    let client =
        Client::new(&cluster.client_addrs, ClientOptions::default()).map_err(anyhow::Error::msg)?;

    let mut ports = Vec::new();
    for _ in 0..args.listeners.max(1) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        tokio::spawn(serve_ok(listener));
    }

    // 20 services share the endpoints, all with an HTTP check.
    let services = 20usize;
    for s in 0..services {
        let name = format!("bench-health-{s}");
        let request = pb::RegisterServiceRequest {
            service: Some(pb::Service {
                name: name.clone(),
                ..Default::default()
            }),
            expected_revision: None,
        };
        client
            .registry_write(|mut c| {
                let request = request.clone();
                async move { c.register_service(request).await }
            })
            .await?;
        let spec = format!(
            r#"{{"http":{{"path":"/healthz"}},"interval":"{}","timeout":"{}","healthyThreshold":1,"unhealthyThreshold":1}}"#,
            args.interval,
            crate::model::DurationSpec::from_millis((args.interval.as_millis() / 2).max(1))
        );
        let request = pb::PutConfigRequest {
            object: Some(pb::ConfigObject {
                kind: pb::ConfigKind::HealthCheck as i32,
                name,
                spec_json: spec,
                ..Default::default()
            }),
            expected_revision: None,
        };
        client
            .config_write(|mut c| {
                let request = request.clone();
                async move { c.put_config(request).await }
            })
            .await?;
    }
    eprintln!("registering {targets} endpoints …");
    let mut tasks = Vec::new();
    let writers = 32usize;
    for w in 0..writers {
        let client = client.clone();
        let ports = ports.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < targets {
                let request = pb::RegisterEndpointRequest {
                    endpoint: Some(pb::Endpoint {
                        id: format!("e{i}"),
                        service: format!("bench-health-{}", i % services),
                        address: "127.0.0.1".into(),
                        port: u32::from(ports[i % ports.len()]),
                        weight: Some(1),
                        ..Default::default()
                    }),
                    expected_revision: None,
                };
                client
                    .registry_write(|mut c| {
                        let request = request.clone();
                        async move { c.register_endpoint(request).await }
                    })
                    .await?;
                i += writers;
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let status = client
        .cluster(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await?;
    let leader = (status.leader_id as usize).saturating_sub(1);
    let admin = cluster.admin_addrs[leader].clone();
    let pid = cluster.pid(leader);
    // Wait until the leader's prober has every target, then one more interval so each has
    // been scheduled once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = crate::cli::http_get(&admin, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        if metric_sum(&text, "bowline_health_targets", "") as usize >= targets {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the prober did not pick up every target within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(args.interval.as_std() * 2).await;

    eprintln!("measuring for {seconds} s …");
    let before = crate::cli::http_get(&admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = crate::cli::http_get(&admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid).unwrap_or(0.0) - cpu_before) / elapsed;
    let probes = metric_sum(&after, "bowline_health_probes_total", "kind=\"http\"")
        - metric_sum(&before, "bowline_health_probes_total", "kind=\"http\"");
    let failed = metric_sum(&after, "bowline_health_probes_total", "result=\"fail\"")
        - metric_sum(&before, "bowline_health_probes_total", "result=\"fail\"");
    let lag_before = buckets(&before, "bowline_health_schedule_lag_seconds");
    let lag_after = buckets(&after, "bowline_health_schedule_lag_seconds");
    let result = HealthBenchResult {
        targets,
        interval_ms: args.interval.as_millis(),
        probes_per_second: probes / elapsed,
        lag_p50_ms: quantile(&lag_before, &lag_after, 0.50) * 1000.0,
        lag_p99_ms: quantile(&lag_before, &lag_after, 0.99) * 1000.0,
        leader_cpu_cores: cpu,
        leader_rss_mib: super::rss_mib(pid),
        failed_probes: failed as u64,
    };
    println!(
        "{:>8} {:>9} {:>10} {:>12} {:>12} {:>10} {:>9} {:>7}",
        "TARGETS", "INTERVAL", "PROBES/S", "LAG P50", "LAG P99", "CPU", "RSS", "FAILED"
    );
    println!(
        "{:>8} {:>9} {:>10.0} {:>10}ms {:>10}ms {:>9.2}c {:>6.0}MiB {:>7}",
        result.targets,
        args.interval.to_string(),
        result.probes_per_second,
        format!("≤{}", result.lag_p50_ms),
        format!("≤{}", result.lag_p99_ms),
        result.leader_cpu_cores,
        result.leader_rss_mib,
        result.failed_probes
    );
    write_json(&args.common.json, &result)?;
    drop(cluster);
    Ok(())
}
