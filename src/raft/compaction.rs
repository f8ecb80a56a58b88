//! Snapshots and log purges by size, beside openraft's count of entries.
//!
//! openraft 0.9 snapshots every N entries and keeps M entries below a snapshot. Since writes
//! are batched, an entry holds anything from one write to hundreds, so counting entries no
//! longer bounds the disk: at 64 writes per entry, 100,000 entries are 6.4 million writes.
//! This task watches the bytes the log holds and asks for a snapshot, or a purge, once they
//! pass the configured sizes.
//!
//! A snapshot encodes the whole state, so with a fixed trigger the work per write grew with
//! the state: at 1 GiB of state and 64 MiB of log, every write paid for sixteen bytes of
//! snapshot per byte of log. The trigger is therefore at least the last snapshot's size:
//! never more than one byte of snapshot per byte of log, while the log between snapshots
//! stays within one snapshot's worth (the disk holds the state about three times over at
//! most, plus the entries kept below the snapshot).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Take a snapshot once the log after the last one holds this many bytes, or as many
    /// as the last snapshot, whichever is more.
    pub snapshot_after_bytes: u64,
    /// Purge entries below the last snapshot beyond this many bytes.
    pub keep_below_snapshot_bytes: u64,
}

impl LogSizeLimits {
    /// Whether `since_snapshot` bytes of log call for a snapshot when the last one held
    /// `last_snapshot` bytes.
    pub fn snapshot_due(&self, since_snapshot: u64, last_snapshot: u64) -> bool {
        since_snapshot > self.snapshot_after_bytes.max(last_snapshot)
    }
}

/// Runs until aborted. `last_snapshot` follows the size of the current snapshot.
pub async fn compact_by_size(
    raft: Raft,
    log: FileLogStore,
    limits: LogSizeLimits,
    last_snapshot: Arc<AtomicU64>,
) {
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
        let last_snapshot = last_snapshot.load(Ordering::Relaxed);
        if !waiting && limits.snapshot_due(since_snapshot, last_snapshot) {
            tracing::info!(
                bytes = since_snapshot,
                last_snapshot_bytes = last_snapshot,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_is_the_configured_size_or_the_last_snapshot_whichever_is_more() {
        let limits = LogSizeLimits {
            snapshot_after_bytes: 64 << 20,
            keep_below_snapshot_bytes: 64 << 20,
        };
        // No snapshot yet, or a small one: the configured size.
        assert!(!limits.snapshot_due(64 << 20, 0));
        assert!(limits.snapshot_due((64 << 20) + 1, 0));
        assert!(limits.snapshot_due((64 << 20) + 1, 10 << 20));
        // A 1 GiB state: not before the log holds as much again.
        assert!(!limits.snapshot_due(512 << 20, 1 << 30));
        assert!(!limits.snapshot_due(1 << 30, 1 << 30));
        assert!(limits.snapshot_due((1 << 30) + 1, 1 << 30));
    }
}
