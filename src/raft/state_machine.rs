//! The replicated state machine: applies committed entries to the in-memory
//! [`RegistryState`]. Only snapshots are written to disk (a file in `snapshots/`, named by
//! a record in sled's `snapshot` tree, both synced before the log below them may be
//! purged; see `snapshot_file.rs`); after a restart the node loads its
//! latest snapshot and openraft re-applies the log after it, so the state is rebuilt from
//! the same durable log every acknowledged write is in.
//!
//! Applies used to write every change into a sled tree as well; under `bench put` that was
//! a quarter of each node's CPU (sled batches and its IO threads), for a copy that the log
//! already makes recoverable.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard, TryLockError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta};
use tokio::sync::watch;

use super::codec;
use super::snapshot_file::{PreparedSnapshot, SnapshotFiles, SnapshotRecord};
use super::{Entry, LogId, NodeAddr, NodeId, StorageError, StoredMembership, TypeConfig};
use crate::command::EntryResults;
use crate::store::{apply_command, RegistryState};
use crate::telemetry::Metrics;
use crate::watch::{HubConfig, WatchHub};

/// The current snapshot's [`SnapshotRecord`].
const KEY_SNAPSHOT_RECORD: &[u8] = b"record";
/// Where versions before the snapshot files kept the current snapshot, metadata and data in
/// one value. Read when there is no record; removed when the first record is stored.
const KEY_LEGACY_SNAPSHOT: &[u8] = b"current";

/// What a node has applied, shared with readers.
#[derive(Debug, Default)]
pub struct AppliedData {
    /// The registry and config store.
    pub state: RegistryState,
    /// Last applied log id (the store revision is its index).
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
}

/// A read handle on a node's applied state. Cheap to clone.
///
/// The lock is a `std::sync::RwLock`: every critical section is a short in-memory copy or
/// update and never spans an `.await`, so an async lock would only add overhead.
#[derive(Clone)]
pub struct AppliedState {
    /// The state itself.
    inner: Arc<RwLock<AppliedData>>,
    /// Publishes the applied index after every apply, for waiters (follower reads).
    applied_index: watch::Sender<u64>,
    /// Change events for watchers, published under the state write lock.
    hub: Arc<WatchHub>,
}

impl AppliedState {
    /// Runs `f` with the state and its store revision.
    pub fn read<T>(&self, f: impl FnOnce(&RegistryState, u64) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&guard.state, guard.state.revision)
    }

    /// The applied log index now (at least the store revision).
    pub fn applied_index(&self) -> u64 {
        *self.applied_index.borrow()
    }

    /// A receiver that sees every new applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// The watch hub fed by this state.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Waits until this node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<u64, watch::error::RecvError> {
        // Usually already there (always on a leader after its read index); a receiver costs
        // two contended atomic updates, so look first.
        let applied = *self.applied_index.borrow();
        if applied >= index {
            return Ok(applied);
        }
        let mut rx = self.applied_index.subscribe();
        let seen = rx.wait_for(|applied| *applied >= index).await?;
        Ok(*seen)
    }
}

/// The openraft state machine: the state in memory, its snapshots in files named in sled.
#[derive(Clone)]
pub struct StateMachineStore {
    /// For the flush when a snapshot is saved or installed.
    db: sled::Db,
    /// The current snapshot's record.
    snapshots: sled::Tree,
    /// The snapshots' data files.
    snapshot_files: SnapshotFiles,
    /// Held while a snapshot is stored: a snapshot built from the state before an install
    /// may finish storing after it, and must neither replace it nor have its file removed
    /// while it is being named.
    save_lock: Arc<Mutex<()>>,
    /// Shared with readers.
    applied: AppliedState,
    /// Counter that makes snapshot ids unique within a process.
    snapshot_seq: Arc<AtomicU64>,
    /// Bytes of the current snapshot's state, for the size-based snapshot trigger.
    snapshot_bytes: Arc<AtomicU64>,
    /// The highest log index on disk on this node, if applies must wait for it (see
    /// [`Self::apply_only_synced`]).
    durable_log: Option<watch::Receiver<u64>>,
}

/// An entry's payload, decoded for apply.
enum Decoded {
    Blank,
    Commands(Vec<crate::command::Command>),
    Membership(openraft::Membership<NodeId, NodeAddr>),
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

impl StateMachineStore {
    /// Opens the state trees with default watch limits (for tests and tools).
    pub fn open(db: &sled::Db, snapshot_dir: &Path) -> Result<Self, StorageError> {
        let metrics =
            Metrics::new(0).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        Self::open_with(db, snapshot_dir, HubConfig::default(), metrics)
    }

    /// Opens the state trees and loads the applied state into memory; the watch hub starts
    /// at the loaded revision, with no history before it.
    pub fn open_with(
        db: &sled::Db,
        snapshot_dir: &Path,
        hub_config: HubConfig,
        metrics: Metrics,
    ) -> Result<Self, StorageError> {
        let read = |e: sled::Error| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e);
        let snapshots = db.open_tree("snapshot").map_err(read)?;
        let snapshot_files = SnapshotFiles::open(snapshot_dir)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let mut applied = AppliedData::default();
        let mut snapshot_bytes = 0;
        let current = current_snapshot(
            &snapshots,
            &snapshot_files,
            SnapshotFiles::read,
            |_, bytes| Ok(bytes.to_vec()),
        )?;
        // A crash between a file's rename and its record leaves a file nobody names.
        snapshot_files.remove_all_but(
            current
                .as_ref()
                .and_then(|c| c.record.as_ref())
                .map(|r| r.file.as_str()),
            true,
        );
        if let Some(CurrentSnapshot { meta, data, .. }) = current {
            let decode_err = |e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
            snapshot_bytes = data.len() as u64;
            applied.state = codec::decode(&data).map_err(decode_err)?;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
        }
        // Older versions kept a copy of every object in the `state` tree; the log after the
        // snapshot rebuilds it now, so the copy only takes space.
        if db.tree_names().iter().any(|n| n.as_ref() == b"state") {
            db.drop_tree("state").map_err(read)?;
        }
        let index = applied.last_applied.map_or(0, |l| l.index);
        let (applied_index, _) = watch::channel(index);
        let hub = Arc::new(WatchHub::new(hub_config, applied.state.revision, metrics));
        Ok(Self {
            db: db.clone(),
            snapshots,
            snapshot_files,
            save_lock: Arc::default(),
            applied: AppliedState {
                inner: Arc::new(RwLock::new(applied)),
                applied_index,
                hub,
            },
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            snapshot_bytes: Arc::new(AtomicU64::new(snapshot_bytes)),
            durable_log: None,
        })
    }

    /// Applies an entry only once this node's log has it on disk (`durable_log` follows the
    /// highest synced index). The leader's log reports its appends to openraft before they
    /// are synced, so openraft may call an entry committed while one follower alone holds
    /// it on disk; waiting here keeps every effect of such an entry (state, watch events,
    /// the client's answer) back until a majority has it.
    pub fn apply_only_synced(mut self, durable_log: watch::Receiver<u64>) -> Self {
        self.durable_log = Some(durable_log);
        self
    }

    /// The size of the current snapshot's state in bytes, kept up to date as snapshots are
    /// built and installed.
    pub fn snapshot_bytes(&self) -> Arc<AtomicU64> {
        self.snapshot_bytes.clone()
    }

    /// The read handle for the API layer.
    pub fn applied_state(&self) -> AppliedState {
        self.applied.clone()
    }

    /// Index of the current snapshot, if any (for status).
    pub fn snapshot_index(&self) -> Option<u64> {
        current_meta(&self.snapshots)
            .ok()
            .flatten()?
            .last_log_id
            .map(|l| l.index)
    }

    /// Stores `data` as the current snapshot, on disk before this returns, unless a newer
    /// snapshot is already stored; returns whether it stored it. Runs off the async threads
    /// (see `build_snapshot`).
    async fn save_snapshot(
        &self,
        meta: SnapshotMeta<NodeId, NodeAddr>,
        data: Vec<u8>,
    ) -> Result<bool, StorageError> {
        let (db, snapshots, files, lock) = (
            self.db.clone(),
            self.snapshots.clone(),
            self.snapshot_files.clone(),
            self.save_lock.clone(),
        );
        let len = data.len() as u64;
        let index = meta.last_log_id.map(|l| l.index);
        let started = std::time::Instant::now();
        let stored = run_blocking(move || {
            let write = snapshot_error(Some(&meta), ErrorVerb::Write);
            let prepared = files
                .prepare(&meta, |out| out.write_all(&data))
                .map_err(|e| write(e.to_string()))?;
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (_, stored) = store_snapshot(&db, &snapshots, &files, prepared)?;
            Ok(stored)
        })
        .await?;
        self.snapshot_stored(index, stored, len);
        tracing::debug!(
            stored,
            ms = started.elapsed().as_millis() as u64,
            "saved snapshot"
        );
        Ok(stored)
    }

    /// Keeps the size of a snapshot that was stored, for the size-based trigger.
    fn snapshot_stored(&self, index: Option<u64>, stored: bool, len: u64) {
        if stored {
            self.snapshot_bytes.store(len, Ordering::Relaxed);
        } else {
            tracing::info!(?index, "a newer snapshot is stored already; kept it");
        }
    }
}

/// Makes a storage error about the snapshot `meta` (or the current one) from a message.
fn snapshot_error(
    meta: Option<&SnapshotMeta<NodeId, NodeAddr>>,
    verb: ErrorVerb,
) -> impl Fn(String) -> StorageError + '_ {
    move |e| io_err(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e)
}

/// The current snapshot's metadata: from its record, or from the single value older
/// versions stored.
fn current_meta(
    snapshots: &sled::Tree,
) -> Result<Option<SnapshotMeta<NodeId, NodeAddr>>, StorageError> {
    if let Some(record) = current_record(snapshots)? {
        return Ok(Some(record.meta));
    }
    legacy_snapshot(snapshots, |meta, _| meta)
}

/// What `take` makes of the snapshot an older version kept in sled (meta and data in one
/// value), if there is one.
fn legacy_snapshot<T>(
    snapshots: &sled::Tree,
    take: impl FnOnce(SnapshotMeta<NodeId, NodeAddr>, &[u8]) -> T,
) -> Result<Option<T>, StorageError> {
    let read = snapshot_error(None, ErrorVerb::Read);
    let Some(bytes) = snapshots
        .get(KEY_LEGACY_SNAPSHOT)
        .map_err(|e| read(e.to_string()))?
    else {
        return Ok(None);
    };
    let (meta, data): (SnapshotMeta<NodeId, NodeAddr>, &[u8]) =
        codec::decode_borrowed(&bytes).map_err(|e| read(e.to_string()))?;
    Ok(Some(take(meta, data)))
}

/// The current snapshot's record, if one was stored.
fn current_record(snapshots: &sled::Tree) -> Result<Option<SnapshotRecord>, StorageError> {
    let read = snapshot_error(None, ErrorVerb::Read);
    snapshots
        .get(KEY_SNAPSHOT_RECORD)
        .map_err(|e| read(e.to_string()))?
        .map(|bytes| codec::decode(&bytes).map_err(|e| read(e.to_string())))
        .transpose()
}

/// The current snapshot as found on disk.
struct CurrentSnapshot<T> {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    /// Its data, as the caller takes it (the bytes, or an open file).
    data: T,
    /// The record naming its file; none for a snapshot an older version stored in sled.
    record: Option<SnapshotRecord>,
}

/// The current snapshot, its data taken by `from_file` from its file, or by `from_legacy`
/// from the bytes an older version stored in sled.
fn current_snapshot<T>(
    snapshots: &sled::Tree,
    files: &SnapshotFiles,
    from_file: impl FnOnce(&SnapshotFiles, &SnapshotRecord) -> std::io::Result<T>,
    from_legacy: impl FnOnce(&SnapshotFiles, &[u8]) -> std::io::Result<T>,
) -> Result<Option<CurrentSnapshot<T>>, StorageError> {
    if let Some(record) = current_record(snapshots)? {
        let data = from_file(files, &record)
            .map_err(|e| snapshot_error(Some(&record.meta), ErrorVerb::Read)(e.to_string()))?;
        return Ok(Some(CurrentSnapshot {
            meta: record.meta.clone(),
            data,
            record: Some(record),
        }));
    }
    let Some((meta, data)) =
        legacy_snapshot(snapshots, |meta, bytes| (meta, from_legacy(files, bytes)))?
    else {
        return Ok(None);
    };
    let data = data.map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Read)(e.to_string()))?;
    Ok(Some(CurrentSnapshot {
        meta,
        data,
        record: None,
    }))
}

/// A copy of `bytes` in a scratch file, rewound to its start.
fn scratch_copy(files: &SnapshotFiles, bytes: &[u8]) -> std::io::Result<File> {
    let mut file = files.scratch()?;
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Runs `f` on tokio's blocking pool. Encoding or storing a state of a few hundred thousand
/// services takes a second or more; on the Raft runtime's one thread that held up
/// heartbeats and appends for as long, and a follower whose own thread it was campaigned
/// when it got the thread back (seen with ~250,000 services, a leader change per snapshot).
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
}

/// Makes the prepared snapshot the current one unless the stored one is newer; returns its
/// data opened for reading and whether it was stored (if not, its file is gone once the data
/// is closed). The log below a snapshot is purged once this returns, so the file and the
/// record naming it are both on disk first; the file the record named before is removed
/// only after that. Called under the save lock.
fn store_snapshot(
    db: &sled::Db,
    snapshots: &sled::Tree,
    files: &SnapshotFiles,
    prepared: PreparedSnapshot,
) -> Result<(File, bool), StorageError> {
    let meta = prepared.record().meta.clone();
    let write = snapshot_error(Some(&meta), ErrorVerb::Write);
    if current_meta(snapshots)?.is_some_and(|current| current.last_log_id > meta.last_log_id) {
        let data = prepared.discard().map_err(|e| write(e.to_string()))?;
        return Ok((data, false));
    }
    let record = prepared.commit().map_err(|e| write(e.to_string()))?;
    let mut batch = sled::Batch::default();
    batch.insert(
        KEY_SNAPSHOT_RECORD,
        codec::encode(&record).map_err(|e| write(e.to_string()))?,
    );
    batch.remove(KEY_LEGACY_SNAPSHOT);
    snapshots
        .apply_batch(batch)
        .map_err(|e| write(e.to_string()))?;
    db.flush().map_err(|e| write(e.to_string()))?;
    // A snapshot being built meanwhile keeps its temporary file.
    files.remove_all_but(Some(&record.file), false);
    let data = files.open_file(&record).map_err(|e| write(e.to_string()))?;
    Ok((data, true))
}

/// Takes the state's write lock without stalling the Raft runtime: if a reader holds it
/// (a snapshot being encoded, a large listing), the wait moves off the runtime's thread, so
/// heartbeats and appends go on meanwhile.
fn write_applied(lock: &RwLock<AppliedData>) -> RwLockWriteGuard<'_, AppliedData> {
    match lock.try_write() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            let wait = || lock.write().unwrap_or_else(|e| e.into_inner());
            let on_multi_thread_runtime = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if on_multi_thread_runtime {
                tokio::task::block_in_place(wait)
            } else {
                wait()
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = self.applied.inner.clone();
        let (db, snapshots, files, lock) = (
            self.db.clone(),
            self.snapshots.clone(),
            self.snapshot_files.clone(),
            self.save_lock.clone(),
        );
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let (meta, data, len, stored, encoded) = run_blocking(move || {
            // Encoded from a clone taken under the read lock and encoded after it is released:
            // the state's maps share their nodes with the clone (only what writes touch later
            // gets copied), so applies wait for a few pointer copies, not for the encoding.
            // Encoding under the lock stalled every write for as long: 349–575 ms with
            // 550,000–560,000 services (docs/benchmarks.md).
            let (state, last_applied, last_membership) = {
                let guard = applied.read().unwrap_or_else(|e| e.into_inner());
                (
                    guard.state.clone(),
                    guard.last_applied,
                    guard.membership.clone(),
                )
            };
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
                snapshot_id,
            };
            // Straight into the file (see `snapshot_file.rs`).
            let prepared = files
                .prepare(&meta, |out| {
                    codec::encode_into(&state, out)
                        .map(|_| ())
                        .map_err(std::io::Error::other)
                })
                .map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Write)(e.to_string()))?;
            // The clone's last references to nodes the state no longer shares go here, off
            // the Raft runtime.
            drop(state);
            let encoded = started.elapsed();
            let len = prepared.record().len;
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (data, stored) = store_snapshot(&db, &snapshots, &files, prepared)?;
            Ok((meta, data, len, stored, encoded))
        })
        .await?;
        let index = meta.last_log_id.map(|l| l.index);
        self.snapshot_stored(index, stored, len);
        tracing::info!(
            ?index,
            bytes = len,
            encode_ms = encoded.as_millis() as u64,
            store_ms = (started.elapsed() - encoded).as_millis() as u64,
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let guard = self.applied.inner.read().unwrap_or_else(|e| e.into_inner());
        Ok((guard.last_applied, guard.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryResults>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        // Decoded before the state is locked, so readers do not wait for it.
        let entries = entries
            .into_iter()
            .map(|entry| {
                let payload = match entry.payload {
                    EntryPayload::Blank => Decoded::Blank,
                    EntryPayload::Normal(proposal) => {
                        Decoded::Commands(proposal.command.into_commands().map_err(|e| {
                            io_err(ErrorSubject::Apply(entry.log_id), ErrorVerb::Read, e)
                        })?)
                    }
                    EntryPayload::Membership(membership) => Decoded::Membership(membership),
                };
                Ok((entry.log_id, payload))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        if let (Some(durable), Some((last, _))) = (&self.durable_log, entries.last()) {
            let last = last.index;
            if *durable.borrow() < last {
                durable
                    .clone()
                    .wait_for(|synced| *synced >= last)
                    .await
                    .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            }
        }
        let mut results = Vec::new();
        let last_index;
        {
            let mut guard = write_applied(&self.applied.inner);
            let applied = &mut *guard;
            for (log_id, payload) in entries {
                applied.last_applied = Some(log_id);
                let result = match payload {
                    Decoded::Blank => Vec::new(),
                    Decoded::Commands(commands) => {
                        let mut results = Vec::with_capacity(commands.len());
                        for command in commands {
                            // Every change takes the next revision, so the commands of one
                            // entry are told apart (and ordered) as if proposed one by one.
                            let revision = applied.state.revision + 1;
                            let (result, changes) =
                                apply_command(&mut applied.state, revision, command);
                            if !changes.is_empty() {
                                // Still under the write lock: see the lock order in `watch::hub`.
                                let events =
                                    crate::watch::events::published_events(revision, changes);
                                self.applied.hub.publish(revision, events);
                            }
                            results.push((applied.state.revision, result));
                        }
                        results
                    }
                    Decoded::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(log_id), membership);
                        Vec::new()
                    }
                };
                results.push(result);
            }
            last_index = applied.last_applied.map_or(0, |l| l.index);
        }
        self.applied.applied_index.send_replace(last_index);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let files = self.snapshot_files.clone();
        let file = run_blocking(move || {
            files
                .scratch()
                .map_err(|e| snapshot_error(None, ErrorVerb::Write)(e.to_string()))
        })
        .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let mut received = *snapshot;
        // Writes to a tokio file may still be in flight on the blocking pool.
        tokio::io::AsyncWriteExt::flush(&mut received)
            .await
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let mut received = received.into_std().await;
        let (state, data) = run_blocking(move || {
            let mut data = Vec::new();
            received
                .seek(SeekFrom::Start(0))
                .and_then(|_| received.read_to_end(&mut data))
                .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
            let state: RegistryState =
                codec::decode(&data).map_err(|e| io_err(subject, ErrorVerb::Read, e))?;
            Ok((state, data))
        })
        .await?;

        self.save_snapshot(meta.clone(), data).await?;

        let index = meta.last_log_id.map_or(0, |l| l.index);
        let replaced = {
            let mut guard = write_applied(&self.applied.inner);
            let revision = state.revision;
            let replaced = std::mem::replace(&mut guard.state, state);
            guard.last_applied = meta.last_log_id;
            guard.membership = meta.last_membership.clone();
            // Under the write lock, like publish: watchers cannot be served across the jump.
            self.applied.hub.reset(revision);
            replaced
        };
        // Freeing a large state takes a while too.
        tokio::task::spawn_blocking(move || drop(replaced));
        self.applied.applied_index.send_replace(index);
        tracing::info!(index, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let (snapshots, files, lock) = (
            self.snapshots.clone(),
            self.snapshot_files.clone(),
            self.save_lock.clone(),
        );
        // A large file takes a while to check: not on the Raft runtime's thread.
        let current = run_blocking(move || {
            let opened = {
                // Not while a save replaces the file it would open.
                let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
                current_snapshot(&snapshots, &files, SnapshotFiles::open_file, scratch_copy)?
            };
            // Checked after the lock is released: the open file outlives a save that
            // removes its name.
            let Some(CurrentSnapshot { meta, data, record }) = opened else {
                return Ok(None);
            };
            let data = match &record {
                Some(record) => files
                    .verify(record, data)
                    .map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Read)(e.to_string()))?,
                None => data,
            };
            Ok(Some((meta, data)))
        })
        .await?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A runtime like the Raft runtime: one worker thread.
    fn one_worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn open_store() -> (tempfile::TempDir, StateMachineStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = StateMachineStore::open(&db, &dir.path().join("snapshots")).unwrap();
        (dir, store)
    }

    /// Spawns a trivial task after `blocked` and reports whether the runtime ran it while
    /// `blocked` was still waiting for the state lock.
    fn runtime_runs_other_tasks_meanwhile(runtime: &tokio::runtime::Runtime) -> bool {
        let (ran, seen) = mpsc::channel();
        runtime.spawn(async move {
            let _ = ran.send(());
        });
        // A generous bound that only a stuck runtime thread reaches.
        seen.recv_timeout(Duration::from_secs(30)).is_ok()
    }

    fn blank_entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn an_entry_is_applied_only_once_the_log_has_synced_it() {
        let (_dir, store) = open_store();
        let (synced, durable) = watch::channel(0u64);
        let mut store = store.apply_only_synced(durable);
        let state = store.applied.inner.clone();
        let mut apply = Box::pin(store.apply(vec![blank_entry(1)]));
        assert!(
            futures::poll!(apply.as_mut()).is_pending(),
            "applied an entry the log had not synced"
        );
        assert_eq!(state.read().unwrap().last_applied, None);
        synced.send(1).unwrap();
        apply.await.unwrap();
        assert_eq!(state.read().unwrap().last_applied.map(|l| l.index), Some(1));
    }

    #[test]
    fn an_apply_waiting_for_a_reader_leaves_the_runtime_thread_to_other_tasks() {
        let runtime = one_worker_runtime();
        let (_dir, mut store) = open_store();
        let state = store.applied.inner.clone();
        let entry = blank_entry(1);
        // A long reader: a snapshot being encoded, a large listing.
        let reader = state.read().unwrap();
        // Spawned first, so the worker takes it first and waits for the lock in it.
        let apply = runtime.spawn(async move { store.apply(vec![entry]).await.map(|_| ()) });
        let others_ran = runtime_runs_other_tasks_meanwhile(&runtime);
        drop(reader);
        assert!(
            others_ran,
            "the runtime's thread was stuck behind the state lock"
        );
        runtime.block_on(apply).unwrap().unwrap();
        assert_eq!(state.read().unwrap().last_applied.map(|l| l.index), Some(1));
    }

    #[test]
    fn a_snapshot_is_encoded_off_the_runtime_thread() {
        let runtime = one_worker_runtime();
        let (_dir, store) = open_store();
        let state = store.applied.inner.clone();
        // Holding the write lock stands for a state that takes long to encode.
        let writer = state.write().unwrap();
        let mut builder = store.clone();
        let build = runtime.spawn(async move { builder.build_snapshot().await.map(|s| s.meta) });
        let others_ran = runtime_runs_other_tasks_meanwhile(&runtime);
        drop(writer);
        assert!(
            others_ran,
            "the runtime's thread was stuck encoding the snapshot"
        );
        let meta = runtime.block_on(build).unwrap().unwrap();
        let mut reader = store.clone();
        let current = runtime
            .block_on(reader.get_current_snapshot())
            .unwrap()
            .unwrap();
        assert_eq!(current.meta.snapshot_id, meta.snapshot_id);
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn snapshot_meta(index: u64, id: &str) -> SnapshotMeta<NodeId, NodeAddr> {
        SnapshotMeta {
            last_log_id: Some(blank_entry(index).log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: id.to_string(),
        }
    }

    fn data_at(revision: u64) -> Result<Vec<u8>, bincode::error::EncodeError> {
        codec::encode(&RegistryState {
            revision,
            ..RegistryState::default()
        })
    }

    async fn current_id(store: &StateMachineStore) -> Result<Option<String>, StorageError> {
        let mut reader = store.clone();
        Ok(reader
            .get_current_snapshot()
            .await?
            .map(|s| s.meta.snapshot_id))
    }

    fn file_names(dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    #[tokio::test]
    async fn a_built_snapshot_is_stored_in_one_file_and_handed_back_whole() -> TestResult {
        let (dir, mut store) = open_store();
        store
            .applied
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .revision = 42;
        let mut built = store.build_snapshot().await?;
        let mut data = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *built.snapshot, &mut data).await?;
        let state: RegistryState = codec::decode(&data)?;
        assert_eq!(state.revision, 42, "the handed-back data is the state");
        assert_eq!(
            store.snapshot_bytes().load(Ordering::Relaxed),
            data.len() as u64
        );
        let names = file_names(&dir.path().join("snapshots"))?;
        assert_eq!(names.len(), 1, "one file and no temporary one: {names:?}");
        let mut current = store
            .get_current_snapshot()
            .await?
            .ok_or("no current snapshot")?;
        let mut again = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *current.snapshot, &mut again).await?;
        assert_eq!(
            again, data,
            "the current snapshot reads back the same bytes"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_received_snapshot_is_installed_and_leaves_no_scratch_file() -> TestResult {
        let (dir, mut store) = open_store();
        let mut receiving = store.begin_receiving_snapshot().await?;
        tokio::io::AsyncWriteExt::write_all(&mut *receiving, &data_at(11)?).await?;
        store
            .install_snapshot(&snapshot_meta(11, "received"), receiving)
            .await?;
        assert_eq!(store.applied.read(|_, revision| revision), 11);
        assert_eq!(store.snapshot_index(), Some(11));
        assert_eq!(
            file_names(&dir.path().join("snapshots"))?,
            vec!["snapshot-received.bin".to_string()]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_stored_snapshot_is_loaded_again_after_a_restart() -> TestResult {
        let dir = tempfile::tempdir()?;
        let snapshot_dir = dir.path().join("snapshots");
        {
            let db = sled::open(dir.path().join("db"))?;
            let store = StateMachineStore::open(&db, &snapshot_dir)?;
            store
                .save_snapshot(snapshot_meta(7, "one"), data_at(7)?)
                .await?;
        }
        let db = sled::open(dir.path().join("db"))?;
        let store = StateMachineStore::open(&db, &snapshot_dir)?;
        assert_eq!(store.snapshot_index(), Some(7));
        assert_eq!(store.applied.read(|_, revision| revision), 7);
        assert_eq!(current_id(&store).await?.as_deref(), Some("one"));
        assert_eq!(file_names(&snapshot_dir)?.len(), 1, "one snapshot file");
        Ok(())
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() -> TestResult {
        let (dir, store) = open_store();
        store
            .save_snapshot(snapshot_meta(9, "newer"), data_at(9)?)
            .await?;
        // Built from the state before the newer one was installed, saved after it.
        store
            .save_snapshot(snapshot_meta(5, "older"), data_at(5)?)
            .await?;
        assert_eq!(store.snapshot_index(), Some(9));
        assert_eq!(current_id(&store).await?.as_deref(), Some("newer"));
        assert_eq!(
            store.snapshot_bytes().load(Ordering::Relaxed),
            data_at(9)?.len() as u64
        );
        assert_eq!(
            file_names(&dir.path().join("snapshots"))?,
            vec!["snapshot-newer.bin".to_string()]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_snapshot_an_older_version_kept_in_sled_is_loaded_then_replaced_by_a_file(
    ) -> TestResult {
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path().join("db"))?;
        let legacy = codec::encode(&(snapshot_meta(4, "legacy"), data_at(4)?.as_slice()))?;
        db.open_tree("snapshot")?
            .insert(KEY_LEGACY_SNAPSHOT, legacy)?;
        let store = StateMachineStore::open(&db, &dir.path().join("snapshots"))?;
        assert_eq!(store.applied.read(|_, revision| revision), 4);
        assert_eq!(store.snapshot_index(), Some(4));
        assert_eq!(current_id(&store).await?.as_deref(), Some("legacy"));
        store
            .save_snapshot(snapshot_meta(8, "file"), data_at(8)?)
            .await?;
        assert!(store.snapshots.get(KEY_LEGACY_SNAPSHOT)?.is_none());
        assert_eq!(current_id(&store).await?.as_deref(), Some("file"));
        Ok(())
    }
}
