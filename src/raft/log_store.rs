//! The Raft log and vote in sled.
//!
//! Trees: `raft_log` (big-endian index → bincode entry) and `raft_meta` (vote, committed,
//! last purged). An append is reported durable to openraft only after sled has flushed
//! (fsync'd) it, which is what makes an acknowledged write survive a crash of every node.

use std::fmt::Debug;
use std::ops::RangeBounds;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};

use super::codec;
use super::{Entry, LogId, NodeId, StorageError, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The log store. Cheap to clone: sled handles are reference counted, and openraft's log
/// reader is just another clone.
#[derive(Clone)]
pub struct SledLogStore {
    /// The database, for `flush_async` (sled flushes every tree at once).
    db: sled::Db,
    /// Index → entry.
    log: sled::Tree,
    /// Vote, committed log id, last purged log id.
    meta: sled::Tree,
    /// Appends waiting to be reported durable, in log order (see [`group_commit`]).
    flushes: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Reports appends durable, many per fsync. `append` writes its entries into sled and hands
/// the callback here at once, so openraft can replicate (and accept more writes) while the
/// disk works; this thread takes every callback queued so far, flushes once, and fires them
/// in order. One fsync covers all of them because sled flushes everything written before it.
fn group_commit(db: sled::Db, pending: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let flushed = db.flush().map(|_| ());
        for callback in batch {
            let result = match &flushed {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn read_err(subject: ErrorSubject<NodeId>, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::from_io_error(
        subject,
        ErrorVerb::Read,
        std::io::Error::other(e.to_string()),
    )
}

fn write_err(subject: ErrorSubject<NodeId>, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::from_io_error(
        subject,
        ErrorVerb::Write,
        std::io::Error::other(e.to_string()),
    )
}

impl SledLogStore {
    /// Opens (or creates) the log trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let (flushes, pending) = std::sync::mpsc::channel();
        let flusher_db = db.clone();
        // The thread ends when the last clone of the store (the last sender) is dropped.
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || group_commit(flusher_db, pending))?;
        Ok(Self {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flushes,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(|e| read_err(ErrorSubject::Store, e))?
        else {
            return Ok(None);
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|e| read_err(ErrorSubject::Store, e))
    }

    async fn put_meta_durable<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| write_err(ErrorSubject::Store, e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| write_err(ErrorSubject::Store, e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| write_err(ErrorSubject::Store, e))?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(KEY_LAST_PURGED)
    }

    /// Index of the last entry in the log, if any (used by status).
    pub fn last_index(&self) -> Option<u64> {
        self.log
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
    }

    /// Index of the last purged entry (used by status and metrics).
    pub fn purged_index(&self) -> Option<u64> {
        self.last_purged().ok().flatten().map(|l| l.index)
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    // An entry we cannot decode is fatal: openraft stops the node instead of guessing.
    codec::decode(bytes).map_err(|e| read_err(ErrorSubject::Logs, e))
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        let iter = match end {
            Some(end) if end < start => return Ok(Vec::new()),
            Some(end) => self.log.range(index_key(start)..=index_key(end)),
            None => self.log.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (_, value) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            entries.push(decode_entry(&value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self
            .log
            .last()
            .map_err(|e| read_err(ErrorSubject::Logs, e))?
        {
            Some((_, value)) => Some(decode_entry(&value)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        // A vote must be durable before it is granted, or a restarted node could vote twice
        // in one term.
        self.put_meta_durable(KEY_VOTE, vote).await.map_err(|e| {
            StorageError::from_io_error(
                ErrorSubject::Vote,
                ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on purpose: losing it only means re-learning the commit index from the
        // leader; it lets a restarted node re-apply what it had committed at once.
        let bytes = codec::encode(&committed).map_err(|e| write_err(ErrorSubject::Store, e))?;
        self.meta
            .insert(KEY_COMMITTED, bytes)
            .map_err(|e| write_err(ErrorSubject::Store, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| write_err(ErrorSubject::Logs, e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| write_err(ErrorSubject::Logs, e))?;
        // Durable before acknowledged: openraft counts this node towards a commit quorum only
        // once the callback fires, which the group-commit thread does after its fsync.
        if let Err(std::sync::mpsc::SendError(callback)) = self.flushes.send(callback) {
            // No flusher (it cannot outlive the store, but never report unflushed data durable).
            let flushed = self.db.flush_async().await.map(|_| ());
            callback.log_io_completed(flushed.map_err(std::io::Error::other));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| write_err(ErrorSubject::Logs, e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| write_err(ErrorSubject::Logs, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if we crash midway, leftover entries below it are
        // ignored rather than a hole appearing above it.
        self.put_meta_durable(KEY_LAST_PURGED, &log_id).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| write_err(ErrorSubject::Logs, e))?;
        Ok(())
    }
}
