//! Snapshots and log purges by size, beside openraft's count of entries.
//!
//! openraft 0.9 snapshots every N entries and keeps M entries below a snapshot. Since writes
//! are batched, an entry holds anything from one write to hundreds, so counting entries no
//! longer bounds the disk: at 64 writes per entry, 100,000 entries are 6.4 million writes.
//! This task watches the bytes the log holds and asks for a snapshot, or a purge, once they
//! pass the configured sizes.

use std::time::Duration;

use super::log_store::FileLogStore;
use super::Raft;

/// How often the sizes are checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After asking for a snapshot, wait this long for it before asking again.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(30);

/// Size limits for the log.
#[derive(Debug, Clone, Copy)]
pub struct LogSizeLimits {
    /// Take a snapshot once the log after the last one holds this many bytes.
    pub snapshot_after_bytes: u64,
    /// Purge entries below the last snapshot beyond this many bytes.
    pub keep_below_snapshot_bytes: u64,
}

/// Runs until aborted.
pub async fn compact_by_size(raft: Raft, log: FileLogStore, limits: LogSizeLimits) {
    let mut asked_for_snapshot: Option<(u64, tokio::time::Instant)> = None;
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshot = raft.metrics().borrow().snapshot.map_or(0, |l| l.index);
        let waiting = asked_for_snapshot.is_some_and(|(at_snapshot, asked)| {
            at_snapshot == snapshot && asked.elapsed() < SNAPSHOT_PATIENCE
        });
        let since_snapshot = log.bytes_after(snapshot);
        if !waiting && since_snapshot > limits.snapshot_after_bytes {
            tracing::info!(
                bytes = since_snapshot,
                "log since the last snapshot passed its size limit; taking a snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            asked_for_snapshot = Some((snapshot, tokio::time::Instant::now()));
        }
        if snapshot > 0 {
            if let Some(upto) = log.purge_point(snapshot, limits.keep_below_snapshot_bytes) {
                if raft.trigger().purge_log(upto).await.is_err() {
                    return;
                }
            }
        }
    }
}
