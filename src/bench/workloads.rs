//! The control-plane workloads `bowline chaos` runs through a fault, each recording what it
//! saw for the checks afterwards: writers (every acknowledged write), watchers (every
//! delivered revision), a health-check target that goes down at the fault (when probing
//! resumed), and, for partitions, linearizable reads against the cut-off node.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use tonic::Code;

use crate::client::watch::WatchItem;
use crate::client::{Client, ClientOptions};
use crate::proto::v1 as pb;

/// Upper bound on waiting for any one thing to happen (a leader, a catch-up, a timing).
pub const WAIT: Duration = Duration::from_secs(30);

/// The service whose single endpoint the leader health-checks; it goes down at the fault.
const PROBED_SERVICE: &str = "chaos-probed";

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The service registered, looked up afterwards.
    pub name: String,
    /// Revision of the write, which every watcher must deliver.
    pub revision: u64,
    /// Node that acknowledged it (a cut-off node must not).
    pub node: u64,
    /// When the write was sent (writes sent after the fault time the gap).
    pub started: Instant,
    /// When it was acknowledged.
    pub acked: Instant,
}

/// Acknowledgements collected by every writer.
type Acks = Arc<Mutex<Vec<Ack>>>;

/// Registers `service`; returns the acknowledgement.
pub async fn register(client: &Client, service: pb::Service) -> Result<Ack, tonic::Status> {
    let name = service.name.clone();
    let request = pb::RegisterServiceRequest {
        service: Some(service),
        expected_revision: None,
    };
    let started = Instant::now();
    let r = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await?;
    let header = r.header.unwrap_or_default();
    Ok(Ack {
        name,
        revision: header.revision,
        node: header.node_id,
        started,
        acked: Instant::now(),
    })
}

/// Registers the service `name` with nothing else set.
pub async fn write(client: &Client, name: &str) -> Result<Ack, tonic::Status> {
    let service = pb::Service {
        name: name.to_string(),
        ..Default::default()
    };
    register(client, service).await
}

/// Registers (or re-registers) an endpoint, retrying any failure until `deadline`, moving
/// to the next client after each: a re-registration is idempotent, so repeating one whose
/// outcome was ambiguous (a timeout) is safe, and the next node may have a leader when the
/// last one did not.
pub async fn register_endpoint_until(
    clients: &[Client],
    endpoint: pb::Endpoint,
    deadline: Instant,
) -> anyhow::Result<()> {
    let request = pb::RegisterEndpointRequest {
        endpoint: Some(endpoint),
        expected_revision: None,
    };
    for attempt in 0..10_000usize {
        let result = clients[attempt % clients.len()]
            .registry_write(|mut c| {
                let request = request.clone();
                async move { c.register_endpoint(request).await }
            })
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(status) if Instant::now() >= deadline => {
                bail!("register endpoint: {}", status.message())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    bail!("register endpoint: out of attempts")
}

/// A watcher from revision 1 on the given endpoints, recording every event's revision.
pub struct Watcher {
    /// Revisions delivered, in delivery order.
    events: Arc<Mutex<Vec<u64>>>,
    /// The stream reader, aborted once checked.
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub fn start(endpoints: &[String]) -> anyhow::Result<Watcher> {
        let client =
            Client::new(endpoints, ClientOptions::default()).map_err(anyhow::Error::msg)?;
        let events = Arc::new(Mutex::new(Vec::<u64>::new()));
        let sink = events.clone();
        let mut stream = client.watch(pb::WatchRequest {
            kinds: vec![pb::ObjectKind::Service as i32],
            start_revision: Some(1),
            progress_interval_ms: 500,
            ..Default::default()
        });
        let task = tokio::spawn(async move {
            while let Some(Ok(item)) = stream.next().await {
                if let WatchItem::Events(batch) = item {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch.iter().map(|e| e.revision));
                }
            }
        });
        Ok(Watcher { events, task })
    }

    fn last(&self) -> u64 {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
            .unwrap_or(0)
    }

    /// Waits (bounded) until `last` is delivered, stops, and returns (gaps, disorder)
    /// against the acknowledged revisions.
    pub async fn check(self, acked: &BTreeSet<u64>) -> (usize, usize) {
        let last = acked.iter().next_back().copied().unwrap_or(0);
        let deadline = Instant::now() + WAIT;
        while self.last() < last && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task.abort();
        let seen = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let disorder = seen.windows(2).filter(|w| w[1] <= w[0]).count();
        let seen: BTreeSet<u64> = seen.into_iter().collect();
        (acked.iter().filter(|r| !seen.contains(r)).count(), disorder)
    }
}

/// Writers: each registers distinct services through its own client until stopped,
/// recording every acknowledgement.
pub struct Writers {
    /// Every acknowledgement so far.
    acks: Acks,
    /// Tells the writers to finish after their current write.
    stop: Arc<AtomicBool>,
    /// One task per writer.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    pub fn start(clients: Vec<Client>, round: usize) -> Writers {
        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(w, client)| {
                let (acks, stop) = (acks.clone(), stop.clone());
                tokio::spawn(async move {
                    for seq in 0..1_000_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match write(&client, &format!("c{round}-w{w}-{seq}")).await {
                            Ok(ack) => acks.lock().unwrap_or_else(|e| e.into_inner()).push(ack),
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            })
            .collect();
        Writers { acks, stop, tasks }
    }

    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        acks
    }
}

/// A TCP port the leader health-checks; closing it at the fault makes the next probe that
/// a working prober runs fail, so the transition to unhealthy times when probing resumed.
pub struct ProbeTarget {
    /// Owns the listener: aborting it closes the port.
    task: tokio::task::JoinHandle<()>,
}

impl ProbeTarget {
    /// Listens on `host_ip` (where nodes reach this process), registers it with a TCP
    /// health check every 200 ms, and waits until it is healthy.
    pub async fn start(client: &Client, host_ip: &str) -> anyhow::Result<ProbeTarget> {
        let listener = tokio::net::TcpListener::bind((host_ip, 0)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let target = ProbeTarget { task };
        write(client, PROBED_SERVICE).await?;
        let check = pb::PutConfigRequest {
            object: Some(pb::ConfigObject {
                kind: pb::ConfigKind::HealthCheck as i32,
                name: PROBED_SERVICE.to_string(),
                spec_json: r#"{"tcp":{},"interval":"200ms","timeout":"150ms","healthyThreshold":1,"unhealthyThreshold":1}"#.to_string(),
                ..Default::default()
            }),
            expected_revision: None,
        };
        client
            .config_write(|mut c| {
                let request = check.clone();
                async move { c.put_config(request).await }
            })
            .await?;
        let endpoint = pb::Endpoint {
            id: "target".to_string(),
            service: PROBED_SERVICE.to_string(),
            address: host_ip.to_string(),
            port: u32::from(port),
            ..Default::default()
        };
        register_endpoint_until(
            std::slice::from_ref(client),
            endpoint,
            Instant::now() + WAIT,
        )
        .await?;
        if Self::wait_for(client, "healthy", Instant::now() + WAIT)
            .await
            .is_none()
        {
            bail!("the health-check target never became healthy");
        }
        Ok(target)
    }

    /// Stops answering: every probe from now on fails.
    pub fn close(&self) {
        self.task.abort();
    }

    /// Polls until the target's status is `status`; returns when, or None at `deadline`.
    pub async fn wait_for(client: &Client, status: &str, deadline: Instant) -> Option<Instant> {
        while Instant::now() < deadline {
            let listing = client
                .registry(|mut c| async move {
                    c.list_endpoints(pb::ListEndpointsRequest {
                        service: PROBED_SERVICE.to_string(),
                        ..Default::default()
                    })
                    .await
                })
                .await;
            let now = Instant::now();
            let current = listing.ok().and_then(|l| l.endpoints.into_iter().next());
            if current
                .and_then(|e| e.health)
                .is_some_and(|h| h.status == status)
            {
                return Some(now);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for ProbeTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the stale-read checker saw while a node was cut off.
#[derive(Debug, Default)]
pub struct CutReads {
    /// Writes the majority acknowledged during the cut.
    pub markers: Vec<Ack>,
    /// Reads that answered without a marker acknowledged before they began.
    pub stale: usize,
    /// Reads that failed or timed out, as they should while the node is cut off.
    pub refused: usize,
}

/// Until `healed` is set: writes a marker through the majority and, once acknowledged,
/// reads it linearizably from the cut-off node. The read must fail or time out; if it
/// succeeds it must see the marker, or the node served a stale read.
pub async fn read_while_cut(
    majority: Client,
    cut_off: Client,
    round: usize,
    healed: Arc<AtomicBool>,
) -> CutReads {
    let mut seen = CutReads::default();
    for k in 0..10_000u32 {
        if healed.load(Ordering::Relaxed) {
            break;
        }
        let Ok(marker) = write(&majority, &format!("c{round}-marker-{k}")).await else {
            // The majority is still electing.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if healed.load(Ordering::Relaxed) {
            // The read below might legitimately succeed now.
            seen.markers.push(marker);
            break;
        }
        match read_marker(&cut_off, &marker).await {
            Ok(true) => {}
            Ok(false) => seen.stale += 1,
            Err(_) => seen.refused += 1,
        }
        seen.markers.push(marker);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// A linearizable read of `marker` on `client`: Ok(true) when it is there, Ok(false) when
/// the node answered without it (stale), Err when the read failed.
pub async fn read_marker(client: &Client, marker: &Ack) -> Result<bool, tonic::Status> {
    let name = marker.name.clone();
    let read = client
        .registry(|mut c| {
            let name = name.clone();
            async move {
                c.get_service(pb::GetServiceRequest {
                    name,
                    consistency: pb::Consistency::Linearizable as i32,
                    ..Default::default()
                })
                .await
            }
        })
        .await;
    match read {
        Ok(r) => Ok(r.service.is_some() && r.header.is_some_and(|h| h.revision >= marker.revision)),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(s),
    }
}

/// After the cut heals: polls linearizable reads of the last marker on the formerly cut-off
/// node until one succeeds with it. Returns when (None at the deadline) and how many
/// answered without it.
pub async fn wait_rejoined(cut_off: &Client, marker: &Ack) -> (Option<Instant>, usize) {
    let deadline = Instant::now() + WAIT;
    let mut stale = 0;
    while Instant::now() < deadline {
        match read_marker(cut_off, marker).await {
            Ok(true) => return (Some(Instant::now()), stale),
            Ok(false) => stale += 1,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (None, stale)
}
