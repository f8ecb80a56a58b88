//! What makes a node stop on its own: its Raft core stopped on a fatal error (a failed log
//! write or sync reported to openraft), or the leader's log sync thread failed.
//!
//! Either way the node can no longer apply or acknowledge anything, yet its listeners would
//! keep answering: a client could keep reaching a node that only fails, and a leader whose
//! sync thread failed kept its leadership, so the others never elected a successor. Like
//! etcd on a failed fsync, the node stops instead and exits with an error, for its
//! supervisor to restart it (the log then reloads from what is on disk).

use tokio::sync::watch;

use super::{NodeAddr, NodeId};

/// How often the Raft core's state is looked at. openraft publishes its metrics after every
/// pass of its core loop (each append, reply and apply); waiting on each publication woke
/// this task, on the main thread, once per ~11 writes under load (a context switch, and a
/// futex wake for the core that published). A fatal error is rare and this node stops
/// anyway: noticing it within a tenth of a second is soon enough.
const CHECK_CORE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Resolves with the reason once either failure happens; never resolves while the node is
/// healthy.
pub async fn node_failure(
    raft: watch::Receiver<openraft::RaftMetrics<NodeId, NodeAddr>>,
    mut log: watch::Receiver<Option<String>>,
) -> String {
    let core_stopped = async {
        let mut tick = tokio::time::interval(CHECK_CORE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(fatal) = &raft.borrow().running_state {
                return format!("raft stopped: {fatal}");
            }
            if raft.has_changed().is_err() {
                return "raft stopped".to_string();
            }
        }
    };
    let log_failed = async {
        let reason = log
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The log store is gone: only at shutdown, which is not a failure.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        reason = core_stopped => reason,
        reason = log_failed => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn channels() -> (
        watch::Sender<openraft::RaftMetrics<NodeId, NodeAddr>>,
        watch::Sender<Option<String>>,
    ) {
        (
            watch::channel(openraft::RaftMetrics::new_initial(1)).0,
            watch::channel(None).0,
        )
    }

    #[tokio::test]
    async fn a_healthy_node_has_no_failure() {
        let (raft, log) = channels();
        let mut failure = Box::pin(node_failure(raft.subscribe(), log.subscribe()));
        assert!((&mut failure).now_or_never().is_none());
        raft.send_modify(|m| m.current_term = 2);
        assert!((&mut failure).now_or_never().is_none());
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn a_failed_log_sync_is_a_failure() -> TestResult {
        let (raft, log) = channels();
        let failure = tokio::spawn(node_failure(raft.subscribe(), log.subscribe()));
        log.send_replace(Some("raft log fdatasync failed: EIO".to_string()));
        assert_eq!(failure.await?, "raft log fdatasync failed: EIO");
        Ok(())
    }

    #[tokio::test]
    async fn a_fatal_error_in_raft_is_a_failure() -> TestResult {
        let (raft, log) = channels();
        let failure = tokio::spawn(node_failure(raft.subscribe(), log.subscribe()));
        raft.send_modify(|m| m.running_state = Err(openraft::error::Fatal::Panicked));
        let reason = failure.await?;
        assert!(reason.starts_with("raft stopped: "), "{reason}");
        Ok(())
    }

    #[tokio::test]
    async fn a_core_gone_without_a_word_is_a_failure() -> TestResult {
        let (raft, log) = channels();
        let failure = tokio::spawn(node_failure(raft.subscribe(), log.subscribe()));
        drop(raft);
        assert_eq!(failure.await?, "raft stopped");
        Ok(())
    }
}
