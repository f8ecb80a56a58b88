//! The leader-only prober. A supervisor follows Raft leadership; while this node leads (and
//! hears from a quorum) it runs one prober for the current term:
//!
//! 1. barrier: a linearizable read, so the node has applied everything committed before;
//! 2. `ClaimProber { term }` through the log, which fences out every older prober;
//! 3. probes on a timer queue with bounded concurrency, thresholds per endpoint, TTL
//!    heartbeats and `deregisterAfter`; transitions are proposed in one `ApplyHealth` batch
//!    per tick. Counters start from zero and statuses from the replicated state, so a new
//!    leader does not flap anything, and every target is probed within one interval.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::heartbeat::HeartbeatTable;
use super::probe::{ProbeKind, ProbeOutcome, Prober};
use super::tracker::Tracker;
use crate::command::{Applied, ApplyError, Command, EndpointRemoval, HealthTransition};
use crate::model::{ConfigKind, ConfigSpec, HealthStatus};
use crate::raft::consensus::Consensus;
use crate::raft::network::{ForwardReply, ForwardRequest};
use crate::store::{EndpointKey, RegistryState};
use crate::telemetry::Metrics;

/// Probes in flight at once.
const MAX_CONCURRENT_PROBES: usize = 512;
/// How often observed transitions are proposed.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Least time between two rebuilds of the target list from the state.
const RESYNC_EVERY: Duration = Duration::from_millis(200);

/// The leader-side health checker. Cheap to clone.
#[derive(Clone)]
pub struct HealthChecker {
    /// Raft access (leadership, barrier, local proposals).
    pub consensus: Consensus,
    /// Metrics.
    pub metrics: Metrics,
    /// TTL heartbeats received by this node.
    pub heartbeats: Arc<HeartbeatTable>,
    /// A leader that has not heard from a quorum for this long pauses probing.
    pub quorum_timeout_ms: u64,
}

/// How a target is checked.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    /// Active probe.
    Probe {
        kind: ProbeKind,
        addr: String,
        timeout: Duration,
    },
    /// Heartbeats within `ttl`.
    Ttl { ttl: Duration },
}

#[derive(Debug)]
struct Target {
    check: Check,
    interval: Duration,
    jitter: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    deregister_after: Option<Duration>,
    /// Replicated status (or the one just proposed).
    status: HealthStatus,
    /// When that status began (Unix ms).
    since_ms: u64,
    tracker: Tracker,
    /// Distinguishes queue entries of a replaced target.
    generation: u64,
    in_flight: bool,
    removal_requested: bool,
}

struct ProbeDone {
    key: EndpointKey,
    generation: u64,
    outcome: ProbeOutcome,
}

fn now_ms() -> u64 {
    crate::api::now_ms()
}

fn spread(key: &EndpointKey, interval: Duration) -> Duration {
    // A stable offset per endpoint spreads probes over the interval instead of bursting.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

fn host_port(address: &str, port: u32) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The targets the state asks for: endpoints with a TTL, and endpoints of services with a
/// `HealthCheck`.
fn desired_targets(state: &RegistryState) -> Vec<(EndpointKey, Target)> {
    let mut out = Vec::new();
    for (key, e) in &state.endpoints {
        let spec = match state
            .config(ConfigKind::HealthCheck, &key.0, &key.1)
            .map(|c| &*c.stored.value)
        {
            Some(ConfigSpec::HealthCheck(h)) => Some(h),
            _ => None,
        };
        let deregister_after = spec.and_then(|h| h.deregister_after).map(|d| d.as_std());
        let base = |check, interval, jitter, ht, ut| Target {
            check,
            interval,
            jitter,
            healthy_threshold: ht,
            unhealthy_threshold: ut,
            deregister_after,
            status: e.value.health.status,
            since_ms: e.value.health.since_ms,
            tracker: Tracker::default(),
            generation: 0,
            in_flight: false,
            removal_requested: false,
        };
        if let Some(ttl) = e.value.ttl {
            let ttl = ttl.as_std();
            let interval = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
            out.push((
                key.clone(),
                base(Check::Ttl { ttl }, interval, Duration::ZERO, 1, 1),
            ));
        } else if let Some(h) = spec {
            let kind = if let Some(http) = &h.http {
                ProbeKind::Http {
                    path: http.path.clone(),
                    expected: http.expected_statuses.clone(),
                    host: http.host.clone(),
                    headers: http.headers.clone(),
                }
            } else if let Some(grpc) = &h.grpc {
                ProbeKind::Grpc {
                    service: grpc.service.clone(),
                }
            } else {
                ProbeKind::Tcp
            };
            let check = Check::Probe {
                kind,
                addr: host_port(&e.value.address, e.value.port),
                timeout: h.timeout.as_std(),
            };
            out.push((
                key.clone(),
                base(
                    check,
                    h.interval.as_std(),
                    h.jitter.map_or(Duration::ZERO, |j| j.as_std()),
                    h.healthy_threshold,
                    h.unhealthy_threshold,
                ),
            ));
        }
    }
    out
}

/// One term's prober.
struct TermProber {
    checker: HealthChecker,
    term: u64,
    prober: Prober,
    takeover: Instant,
    targets: HashMap<EndpointKey, Target>,
    queue: BTreeMap<(Instant, u64), (EndpointKey, u64)>,
    seq: u64,
    next_generation: u64,
    transitions: Vec<HealthTransition>,
    removals: Vec<EndpointRemoval>,
}

impl TermProber {
    fn schedule(&mut self, key: EndpointKey, generation: u64, due: Instant) {
        self.seq += 1;
        self.queue.insert((due, self.seq), (key, generation));
    }

    fn resync(&mut self) {
        let desired = self
            .checker
            .consensus
            .applied
            .read(|state, _| desired_targets(state));
        let now = Instant::now();
        let mut keep = std::collections::HashSet::with_capacity(desired.len());
        for (key, mut fresh) in desired {
            keep.insert(key.clone());
            match self.targets.get_mut(&key) {
                Some(t) if t.check == fresh.check && t.interval == fresh.interval => {
                    // Same check: keep counters and schedule; the replicated status wins.
                    t.healthy_threshold = fresh.healthy_threshold;
                    t.unhealthy_threshold = fresh.unhealthy_threshold;
                    t.deregister_after = fresh.deregister_after;
                    t.jitter = fresh.jitter;
                    if t.status != fresh.status || t.since_ms != fresh.since_ms {
                        t.status = fresh.status;
                        t.since_ms = fresh.since_ms;
                        t.removal_requested = false;
                    }
                }
                _ => {
                    self.next_generation += 1;
                    fresh.generation = self.next_generation;
                    let due = now + spread(&key, fresh.interval);
                    self.schedule(key.clone(), fresh.generation, due);
                    self.targets.insert(key, fresh);
                }
            }
        }
        self.targets.retain(|k, _| keep.contains(k));
        self.checker.heartbeats.retain(|k| keep.contains(k));
        let addrs: std::collections::HashSet<String> = self
            .targets
            .values()
            .filter_map(|t| match &t.check {
                Check::Probe { addr, .. } => Some(addr.clone()),
                Check::Ttl { .. } => None,
            })
            .collect();
        self.prober.retain_grpc(|a| addrs.contains(a));
        self.checker
            .metrics
            .health_targets
            .set(self.targets.len() as i64);
    }

    fn observe(&mut self, key: &EndpointKey, ok: bool, reason: String) {
        let Some(t) = self.targets.get_mut(key) else {
            return;
        };
        if let Some(status) =
            t.tracker
                .observe(ok, t.status, t.healthy_threshold, t.unhealthy_threshold)
        {
            let at_ms = now_ms();
            t.status = status;
            t.since_ms = at_ms;
            t.removal_requested = false;
            self.transitions.push(HealthTransition {
                namespace: key.0.clone(),
                service: key.1.clone(),
                id: key.2.clone(),
                status,
                reason,
                at_ms,
            });
        }
    }

    fn dispatch_due(&mut self, results: &mpsc::Sender<ProbeDone>, permits: &Arc<Semaphore>) {
        let now = Instant::now();
        while let Some((&(due, seq), _)) = self.queue.first_key_value() {
            if due > now {
                break;
            }
            let Some((key, generation)) = self.queue.remove(&(due, seq)) else {
                break;
            };
            let Some(t) = self.targets.get_mut(&key) else {
                continue;
            };
            if t.generation != generation {
                continue;
            }
            let mut next = due + t.interval;
            if !t.jitter.is_zero() {
                next += spread(
                    &(key.0.clone(), key.1.clone(), format!("{}{seq}", key.2)),
                    t.jitter,
                );
            }
            if next <= now {
                next = now + t.interval; // fell behind: skip, don't burst
            }
            match t.check.clone() {
                Check::Ttl { ttl } => {
                    let last = self.checker.heartbeats.last(&key);
                    let observation = match last {
                        Some(at) if now.duration_since(at) <= ttl => {
                            Some((true, "heartbeat received".to_string()))
                        }
                        // A new leader gives every TTL endpoint one TTL of grace.
                        None if now.duration_since(self.takeover) <= ttl => None,
                        _ => Some((
                            false,
                            format!(
                                "TTL expired: no heartbeat for {}",
                                crate::model::DurationSpec::from_millis(ttl.as_millis() as u64)
                            ),
                        )),
                    };
                    self.checker
                        .metrics
                        .health_schedule_lag
                        .observe(now.duration_since(due).as_secs_f64());
                    if let Some((ok, reason)) = observation {
                        self.checker
                            .metrics
                            .health_probes
                            .with_label_values(&["ttl", if ok { "ok" } else { "fail" }])
                            .inc();
                        self.observe(&key, ok, reason);
                    }
                }
                Check::Probe {
                    kind,
                    addr,
                    timeout,
                } => {
                    if t.in_flight {
                        // The previous probe has not finished (timeout < interval, but the
                        // permit queue may be long): do not pile up.
                        self.schedule(key, generation, next);
                        continue;
                    }
                    t.in_flight = true;
                    let prober = self.prober.clone();
                    let results = results.clone();
                    let permits = permits.clone();
                    let metrics = self.checker.metrics.clone();
                    let key2 = key.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = permits.acquire_owned().await else {
                            return;
                        };
                        let started = Instant::now();
                        metrics
                            .health_schedule_lag
                            .observe(started.duration_since(due).as_secs_f64());
                        let outcome = prober.probe(&kind, &addr, timeout).await;
                        metrics
                            .health_probe_duration
                            .with_label_values(&[kind.label()])
                            .observe(started.elapsed().as_secs_f64());
                        metrics
                            .health_probes
                            .with_label_values(&[
                                kind.label(),
                                if outcome.ok { "ok" } else { "fail" },
                            ])
                            .inc();
                        let _ = results
                            .send(ProbeDone {
                                key: key2,
                                generation,
                                outcome,
                            })
                            .await;
                    });
                }
            }
            self.schedule(key, generation, next);
        }
    }

    fn collect_removals(&mut self) {
        let now = now_ms();
        for (key, t) in &mut self.targets {
            let Some(after) = t.deregister_after else {
                continue;
            };
            if t.status == HealthStatus::Unhealthy
                && !t.removal_requested
                && now.saturating_sub(t.since_ms) >= after.as_millis() as u64
            {
                t.removal_requested = true;
                self.removals.push(EndpointRemoval {
                    namespace: key.0.clone(),
                    service: key.1.clone(),
                    id: key.2.clone(),
                    unhealthy_since_ms: t.since_ms,
                });
            }
        }
    }

    /// Proposes the batch. `Err` means this prober is done (deposed or stopped).
    async fn flush(&mut self) -> Result<(), String> {
        if self.transitions.is_empty() && self.removals.is_empty() {
            return Ok(());
        }
        let transitions = std::mem::take(&mut self.transitions);
        let removals = std::mem::take(&mut self.removals);
        let command = Command::ApplyHealth {
            term: self.term,
            transitions: transitions.clone(),
            removals: removals.clone(),
        };
        let reply = self
            .checker
            .consensus
            .execute_local(ForwardRequest::Write(command))
            .await;
        match reply {
            Ok(ForwardReply::Written {
                result: Ok(Applied::Health { .. }),
                ..
            }) => {
                for t in &transitions {
                    self.checker
                        .metrics
                        .health_transitions
                        .with_label_values(&[t.status.as_str()])
                        .inc();
                    tracing::info!(endpoint = %format!("{}/{}/{}", t.namespace, t.service, t.id), status = %t.status, reason = %t.reason, "health transition");
                }
                Ok(())
            }
            Ok(ForwardReply::Written {
                result: Err(ApplyError::FailedPrecondition(why)),
                ..
            }) => {
                self.checker.metrics.health_stale_batches.inc();
                Err(format!("deposed: {why}"))
            }
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(crate::raft::network::ConsensusError::Unavailable(why)) => {
                // No quorum right now: keep the batch (bounded) and try again.
                if transitions.len() + self.transitions.len() < 100_000 {
                    let mut kept = transitions;
                    kept.append(&mut self.transitions);
                    self.transitions = kept;
                    let mut kept = removals;
                    kept.append(&mut self.removals);
                    self.removals = kept;
                }
                tracing::warn!(%why, "health batch not committed; will retry");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn run(mut self) {
        // 1. Barrier: everything committed before this term is applied here.
        if let Err(e) = self.checker.consensus.read_barrier().await {
            tracing::warn!(error = %e, term = self.term, "health prober: barrier failed");
            return;
        }
        // 2. Claim the term; from now on older probers' batches are refused.
        let claim = Command::ClaimProber { term: self.term };
        match self
            .checker
            .consensus
            .execute_local(ForwardRequest::Write(claim))
            .await
        {
            Ok(ForwardReply::Written { result: Ok(_), .. }) => {}
            other => {
                tracing::warn!(reply = ?other, term = self.term, "health prober: claim refused");
                return;
            }
        }
        self.takeover = Instant::now();
        tracing::info!(term = self.term, "health prober started");
        let (results_tx, mut results) = mpsc::channel::<ProbeDone>(8192);
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let mut last_resync: Option<(u64, Instant)> = None;
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        loop {
            let now = Instant::now();
            let applied = self.checker.consensus.applied.applied_index();
            let stale = last_resync
                .is_none_or(|(rev, at)| rev != applied && now.duration_since(at) >= RESYNC_EVERY);
            if stale {
                self.resync();
                last_resync = Some((applied, now));
            }
            self.dispatch_due(&results_tx, &permits);
            while let Ok(done) = results.try_recv() {
                self.finish(done);
            }
            if now >= next_flush {
                self.collect_removals();
                if let Err(why) = self.flush().await {
                    tracing::info!(term = self.term, %why, "health prober stopped");
                    return;
                }
                next_flush = Instant::now() + FLUSH_EVERY;
            }
            let next_due = self.queue.first_key_value().map(|((due, _), _)| *due);
            let wake = [
                Some(next_flush),
                next_due,
                Some(Instant::now() + RESYNC_EVERY),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + FLUSH_EVERY);
            tokio::select! {
                Some(done) = results.recv() => self.finish(done),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn finish(&mut self, done: ProbeDone) {
        let Some(t) = self.targets.get_mut(&done.key) else {
            return;
        };
        if t.generation != done.generation {
            return;
        }
        t.in_flight = false;
        self.observe(&done.key, done.outcome.ok, done.outcome.reason);
    }
}

impl HealthChecker {
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.consensus.raft.metrics();
        let m = metrics.borrow();
        let leader =
            m.current_leader == Some(self.consensus.id) && m.state == openraft::ServerState::Leader;
        // A leader cut off from its quorum may be deposed already: stop probing rather
        // than observe for nothing (its batches could not commit anyway).
        let cut_off = m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms > self.quorum_timeout_ms);
        (leader && !cut_off).then_some(m.current_term)
    }

    fn start(&self, term: u64) -> JoinHandle<()> {
        let metrics = self.metrics.clone();
        let prober = TermProber {
            checker: self.clone(),
            term,
            prober: Prober::default(),
            takeover: Instant::now(),
            targets: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            next_generation: 0,
            transitions: Vec::new(),
            removals: Vec::new(),
        };
        tokio::spawn(async move {
            metrics.health_prober_active.set(1);
            prober.run().await;
            metrics.health_prober_active.set(0);
        })
    }

    /// Follows leadership until `stop` flips: starts a prober when this node leads, stops it
    /// (before anything else happens) when it does not.
    pub async fn supervise(self, mut stop: watch::Receiver<bool>) {
        // Leadership lives in the server metrics, which change only with the vote, state or
        // membership. The full metrics change on every Raft loop pass (each append or
        // heartbeat), and waking on them cost every node a context switch per entry. The
        // tick re-checks the quorum acknowledgement, which only the full metrics carry.
        let mut leadership = self.consensus.raft.server_metrics();
        let mut running: Option<(u64, JoinHandle<()>)> = None;
        loop {
            let wanted = self.leading_term();
            let keep = matches!((&running, wanted), (Some((t, h)), Some(w)) if *t == w && !h.is_finished());
            if !keep {
                if let Some((term, handle)) = running.take() {
                    handle.abort();
                    let _ = handle.await;
                    self.metrics.health_prober_active.set(0);
                    tracing::info!(term, "health prober stopped (leadership changed)");
                }
                if let Some(term) = wanted {
                    running = Some((term, self.start(term)));
                }
            }
            tokio::select! {
                _ = leadership.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => break,
            }
        }
        if let Some((_, handle)) = running {
            handle.abort();
            self.metrics.health_prober_active.set(0);
        }
    }
}
