//! The Raft log: append-only segment files of checksummed records, with the vote and the
//! log's bookkeeping (committed, last purged) in sled's `raft_meta` tree.
//!
//! Why files and not a sled tree: under `bench put` the leader appended one entry per client
//! write, and every group-commit flush of sled went through its IO thread pool (a `pwrite`
//! plus `sync_file_range` per flush, ~6,000 a second, with 60,000 context switches a second).
//! Half of the leader's CPU went there and puts sat at 2,500/s whatever the concurrency.
//! Here an append is one `write` of its encoded entries and one `fdatasync` (see
//! [`sync_appended`] for where it runs).
//!
//! Layout: `DIR/NNNNNNNNNNNNNNNNNNNN.seg`, named after the first index written to it, each
//! record `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is the bincode
//! entry. Every unpurged entry is also held in memory, encoded, so replication and the state
//! machine read the log without touching the disk.
//!
//! Segments are zero-filled to their full size before they take appends (by a background
//! thread, one spare ahead), so an append overwrites blocks the file already has and its
//! `fdatasync` need not commit a new file size or allocation through the filesystem
//! journal: on this machine's ext4 that cut a 3 KiB append's `fdatasync` from ~180 to
//! ~135 µs alone and from ~345 to ~235 µs with three nodes syncing at once (the Python loop
//! in docs/benchmarks.md). Records therefore end at the end of the file or at a zero
//! length, followed only by zeros; a sealed segment is cut back to its records.
//!
//! Recovery: a record that is short or fails its checksum at the end of the last segment is
//! a write torn by a crash. It was never reported durable (that happens only after its
//! `fdatasync`), so the segment is cut back to the last whole record. The same damage
//! anywhere else is corruption, and the node refuses to start rather than guess.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, Vote};

use super::codec;
use super::{Entry, LogId, NodeId, StorageError, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// A segment is sealed and a new one started once it grows past this. Each is zero-filled
/// to this size before use (~10 ms here), one spare ahead, so every node start writes
/// twice this; small enough that the test suite's hundreds of node starts stay cheap.
const SEGMENT_BYTES: u64 = 16 << 20;
/// `len` and `crc32`.
const RECORD_HEADER_BYTES: usize = 8;
/// A length above this is damage, not an entry (client requests are far smaller).
const MAX_RECORD_BYTES: usize = 64 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
/// The zero-filled file that becomes the next segment.
const SPARE_NAME: &str = "next.prealloc";
/// Zeros written per call while filling a spare.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// One entry held in memory.
struct Slot {
    log_id: LogId,
    /// The encoded entry, exactly as written to its segment.
    bytes: Arc<[u8]>,
    /// The first index of the segment it lives in (its name).
    segment: u64,
    /// Where its record starts in that segment.
    offset: u64,
}

/// A segment file.
struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

/// The in-memory log and the open segments, behind one mutex. Every critical section is an
/// in-memory update or one `write`; none spans an `.await`.
struct Log {
    dir: PathBuf,
    /// Unpurged entries, contiguous by index.
    slots: VecDeque<Slot>,
    /// Segments by first index; the last one takes appends.
    segments: Vec<Segment>,
    /// Files sealed (or cut) since the last sync, which the next one must sync
    /// too before reporting anything durable.
    unsynced: Vec<Arc<File>>,
    /// Last purged log id, mirrored from `raft_meta`.
    last_purged: Option<LogId>,
    /// The spare segment being zero-filled, if one is.
    spare: Option<std::sync::mpsc::Receiver<std::io::Result<File>>>,
    /// [`SEGMENT_BYTES`], but for tests.
    segment_bytes: u64,
}

/// Which appended entries are on disk. The leader reports its own appends to openraft
/// before their `fdatasync` (see [`FileLogStore::append`]), so openraft's commit index may
/// run ahead of what this node has synced; everything a client or another node can observe
/// is held back to [`Durability::index`] instead.
struct Durability {
    /// Highest log index known synced.
    index: tokio::sync::watch::Sender<u64>,
    /// Bumped by every truncation, so a sync that started before one cannot vouch for the
    /// entries that replaced what it synced.
    generation: AtomicU64,
    /// Wakes the flusher thread.
    flush: std::sync::mpsc::Sender<()>,
    /// The term this node leads once its vote for itself is committed; 0 when it does not
    /// lead (no leader is elected in term 0).
    leading_term: AtomicU64,
    /// Set when the flusher's sync failed: appends are then synced inline, so the failure
    /// reaches openraft (which stops the node) instead of leaving it a leader that never
    /// applies.
    flusher_failed: AtomicBool,
    /// Why the flusher's sync failed, for the node to stop on at once: a leader that takes
    /// no new write would otherwise never reach the inline sync that stops it, and would
    /// neither apply nor step down.
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// Set when a commit index sent to followers was capped: once the sync catches up,
    /// [`FileLogStore::commit_capped_then_synced`] wakes whoever sends them the rest, or
    /// the last write before a quiet spell would reach followers a heartbeat late.
    commit_capped: AtomicBool,
    synced_after_cap: tokio::sync::Notify,
}

impl Durability {
    /// Records that entries up to `index` are synced, unless a truncation since `generation`
    /// replaced some of them. Takes the log's lock, which truncations hold too.
    fn synced(&self, log: &Mutex<Log>, generation: u64, index: u64) {
        let _log = lock(log);
        if self.generation.load(Ordering::Acquire) == generation {
            self.index.send_if_modified(|d| {
                let raised = index > *d;
                *d = (*d).max(index);
                raised
            });
        }
    }

    /// Wakes [`FileLogStore::commit_capped_then_synced`] if a commit index was capped since
    /// the last wake; called once the synced index has moved past the cap.
    fn wake_if_capped(&self) {
        if self.commit_capped.swap(false, Ordering::AcqRel) {
            self.synced_after_cap.notify_one();
        }
    }
}

/// Syncs what the leader appended without waiting for it, grouping every append that
/// arrived meanwhile into one `fdatasync`. Runs until the store is dropped.
fn run_flusher(
    log: Arc<Mutex<Log>>,
    durability: Arc<Durability>,
    wake: std::sync::mpsc::Receiver<()>,
) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        let (generation, upto) = {
            let log = lock(&log);
            (
                durability.generation.load(Ordering::Acquire),
                log.last_log_id().map_or(0, |l| l.index),
            )
        };
        match sync_appended(&log) {
            Ok(()) => {
                durability.synced(&log, generation, upto);
                durability.wake_if_capped();
            }
            // Nothing after this point is reported durable, so applies and client answers
            // stop; the next inline sync reports the failure to openraft.
            Err(e) => {
                tracing::error!(error = %e, "raft log fdatasync failed");
                durability.flusher_failed.store(true, Ordering::Release);
                durability
                    .failure
                    .send_replace(Some(format!("raft log fdatasync failed: {e}")));
            }
        }
    }
}

/// The log store. Cheap to clone: openraft's log reader is just another clone.
#[derive(Clone)]
pub struct FileLogStore {
    log: Arc<Mutex<Log>>,
    durability: Arc<Durability>,
    /// This node, to tell its own leadership from a vote for another node.
    id: NodeId,
    /// For durable meta writes (sled flushes every tree at once).
    db: sled::Db,
    /// Vote, committed log id, last purged log id.
    meta: sled::Tree,
}

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(subject: ErrorSubject<NodeId>, e: impl ToString) -> StorageError {
    io_error(subject, ErrorVerb::Read, e)
}

fn write_err(subject: ErrorSubject<NodeId>, e: impl ToString) -> StorageError {
    io_error(subject, ErrorVerb::Write, e)
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes everything appended so far durable: the active segment, and any segment sealed
/// since the last sync.
///
/// Called inline by `append` on a follower (openraft 0.9's core awaits each append's flush
/// before it does anything else, so a sync thread there would batch nothing and only add
/// two thread wake-ups per write: puts at concurrency 1 ran at 854–933 ops/s with one,
/// 1,000–1,005 inline), and by the sync thread for the leader's own appends, which the
/// core no longer waits for (see [`FileLogStore::append`]).
fn sync_appended(log: &Mutex<Log>) -> std::io::Result<()> {
    let files = {
        let mut log = lock(log);
        let mut files = std::mem::take(&mut log.unsynced);
        if let Some(active) = log.segments.last() {
            files.push(active.file.clone());
        }
        files
    };
    files.iter().try_for_each(|f| f.sync_data())
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_segment_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Creates `path` as `bytes` zero bytes that are on disk (written, not merely allocated: on
/// ext4 a write into an allocated but unwritten extent still journals its conversion).
fn fill_spare(path: &Path, bytes: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; FILL_CHUNK_BYTES];
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(FILL_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], written)?;
        written += n as u64;
        // A chunk at a time: one flush of the whole file queued the nodes' log syncs behind
        // it (put p99 at concurrency 256 rose from ~38 to ~58 ms across a segment roll).
        file.sync_data()?;
    }
    file.sync_all()?;
    Ok(file)
}

/// Appends one record for `bytes` to `out`.
fn encode_record(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What reading a segment found.
struct ParsedSegment {
    /// `(offset, payload)` of every whole record.
    records: Vec<(u64, Vec<u8>)>,
    /// Where the whole records end.
    valid_len: u64,
    /// Whether only zeros follow them (a preallocated tail), if anything does.
    clean_end: bool,
}

/// Splits a segment's bytes into records, stopping at a zero length (the preallocated tail)
/// or at the first short or damaged record.
fn parse_segment(data: &[u8]) -> ParsedSegment {
    let mut records = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= RECORD_HEADER_BYTES {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or([0; 4])) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or([0; 4]));
        let start = at + RECORD_HEADER_BYTES;
        if len == 0 || len > MAX_RECORD_BYTES || data.len() - start < len {
            break;
        }
        let payload = &data[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push((at as u64, payload.to_vec()));
        at = start + len;
    }
    ParsedSegment {
        records,
        valid_len: at as u64,
        clean_end: data[at..].iter().all(|&b| b == 0),
    }
}

impl Log {
    /// Loads every segment in `dir`, cutting a torn tail off the last one.
    fn load(dir: &Path, last_purged: Option<LogId>) -> Result<Self, StorageError> {
        Self::load_with_segments_of(dir, last_purged, SEGMENT_BYTES)
    }

    fn load_with_segments_of(
        dir: &Path,
        last_purged: Option<LogId>,
        segment_bytes: u64,
    ) -> Result<Self, StorageError> {
        let subject = ErrorSubject::Logs;
        std::fs::create_dir_all(dir).map_err(|e| write_err(subject.clone(), e))?;
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| read_err(subject.clone(), e))? {
            let item = item.map_err(|e| read_err(subject.clone(), e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name == SPARE_NAME {
                // Possibly half filled when the node stopped; a new one is made below.
                std::fs::remove_file(item.path()).map_err(|e| write_err(subject.clone(), e))?;
            } else if let Some(first) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push(first);
            }
        }
        names.sort_unstable();
        let purged_up_to = last_purged.map(|l| l.index);
        let mut log = Log {
            dir: dir.to_path_buf(),
            slots: VecDeque::new(),
            segments: Vec::new(),
            unsynced: Vec::new(),
            last_purged,
            spare: None,
            segment_bytes,
        };
        let count = names.len();
        for (position, first_index) in names.into_iter().enumerate() {
            let path = segment_path(dir, first_index);
            let data = std::fs::read(&path).map_err(|e| read_err(subject.clone(), e))?;
            let parsed = parse_segment(&data);
            if !parsed.clean_end {
                if position + 1 != count {
                    return Err(read_err(
                        subject,
                        format!(
                            "raft log segment {} is damaged at byte {} and is not the last one; \
                             restore this node from a backup or wipe it and let it rejoin",
                            path.display(),
                            parsed.valid_len
                        ),
                    ));
                }
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = parsed.valid_len,
                    dropped_bytes = data.len() as u64 - parsed.valid_len,
                    "cutting a torn write off the end of the raft log (never reported durable)"
                );
                let file = open_segment_file(&path).map_err(|e| write_err(subject.clone(), e))?;
                file.set_len(parsed.valid_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| write_err(subject.clone(), e))?;
            }
            for (offset, payload) in parsed.records {
                let entry: Entry =
                    codec::decode(&payload).map_err(|e| read_err(subject.clone(), e))?;
                if purged_up_to.is_some_and(|p| entry.log_id.index <= p) {
                    continue;
                }
                if let Some(prev) = log.slots.back() {
                    if entry.log_id.index != prev.log_id.index + 1 {
                        return Err(read_err(
                            subject,
                            format!(
                                "raft log has entry {} after entry {} in {}",
                                entry.log_id.index,
                                prev.log_id.index,
                                path.display()
                            ),
                        ));
                    }
                }
                log.slots.push_back(Slot {
                    log_id: entry.log_id,
                    bytes: payload.into(),
                    segment: first_index,
                    offset,
                });
            }
            let file = open_segment_file(&path).map_err(|e| read_err(subject.clone(), e))?;
            log.segments.push(Segment {
                first_index,
                path,
                file: Arc::new(file),
                len: parsed.valid_len,
            });
        }
        if log.segments.is_empty() {
            // A new node: its first segment must be preallocated too (the benchmark suites
            // measure fresh clusters), so it is filled now rather than in the background.
            let path = dir.join(SPARE_NAME);
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = tx.send(fill_spare(&path, segment_bytes));
            log.spare = Some(rx);
        } else {
            log.prepare_spare();
        }
        Ok(log)
    }

    /// Starts zero-filling the next segment on a thread of its own.
    fn prepare_spare(&mut self) {
        let path = self.dir.join(SPARE_NAME);
        let bytes = self.segment_bytes;
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("log prealloc".to_string())
            .spawn(move || {
                let _ = tx.send(fill_spare(&path, bytes));
            });
        match spawned {
            Ok(_) => self.spare = Some(rx),
            Err(e) => tracing::warn!(error = %e, "cannot start preallocating the next log segment"),
        }
    }

    /// The spare segment, if it is ready: still being filled, or failed, means none.
    fn take_spare(&mut self) -> Option<File> {
        use std::sync::mpsc::TryRecvError;
        let outcome = self.spare.as_ref()?.try_recv();
        match outcome {
            Ok(Ok(file)) => {
                self.spare = None;
                Some(file)
            }
            Ok(Err(e)) => {
                self.spare = None;
                tracing::warn!(error = %e, "could not preallocate a log segment; the next one grows as it is written");
                None
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.spare = None;
                None
            }
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.slots.front().map(|s| s.log_id.index)
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.log_id)
    }

    /// The segment that takes the next append of `bytes` bytes starting at `index`: the
    /// active one, or a new one once it is full (or there is none).
    fn segment_for_append(&mut self, index: u64, bytes: u64) -> std::io::Result<usize> {
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.len > 0 && s.len + bytes > self.segment_bytes);
        if full {
            let path = segment_path(&self.dir, index);
            let file = match self.take_spare() {
                Some(spare) => {
                    std::fs::rename(self.dir.join(SPARE_NAME), &path)?;
                    self.prepare_spare();
                    spare
                }
                None => {
                    let file = open_segment_file(&path)?;
                    file.set_len(0)?;
                    file
                }
            };
            // The new name must survive a crash before anything in it is reported durable.
            sync_dir(&self.dir)?;
            if let Some(sealed) = self.segments.last() {
                // Its zero tail is disk space only the active segment needs.
                sealed.file.set_len(sealed.len)?;
                self.unsynced.push(sealed.file.clone());
            }
            self.segments.push(Segment {
                first_index: index,
                path,
                file: Arc::new(file),
                len: 0,
            });
        }
        Ok(self.segments.len() - 1)
    }

    /// Writes `entries` (index, log id, encoded) to the active segment in one `write`.
    fn append(&mut self, entries: Vec<(LogId, Vec<u8>)>) -> std::io::Result<()> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        if let Some(last) = self.last_log_id() {
            if first.index != last.index + 1 {
                return Err(std::io::Error::other(format!(
                    "append of entry {} after entry {}",
                    first.index, last.index
                )));
            }
        }
        let total: usize = entries
            .iter()
            .map(|(_, b)| b.len() + RECORD_HEADER_BYTES)
            .sum();
        let at = self.segment_for_append(first.index, total as u64)?;
        let segment = &mut self.segments[at];
        let mut buf = Vec::with_capacity(total);
        let mut offset = segment.len;
        let mut slots = Vec::with_capacity(entries.len());
        for (log_id, bytes) in entries {
            encode_record(&bytes, &mut buf);
            slots.push(Slot {
                log_id,
                bytes: bytes.into(),
                segment: segment.first_index,
                offset,
            });
            offset = segment.len + buf.len() as u64;
        }
        segment.file.write_all_at(&buf, segment.len)?;
        segment.len += buf.len() as u64;
        self.slots.extend(slots);
        Ok(())
    }

    /// Deletes every entry from `index` on, on disk and in memory.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let Some(first) = self.first_index() else {
            return Ok(());
        };
        let keep = index.saturating_sub(first) as usize;
        let Some(cut) = self.slots.get(keep) else {
            return Ok(());
        };
        let (cut_segment, cut_offset) = (cut.segment, cut.offset);
        // Later segments first, newest first: a crash part-way leaves a contiguous prefix.
        while self
            .segments
            .last()
            .is_some_and(|s| s.first_index > cut_segment)
        {
            if let Some(segment) = self.segments.pop() {
                std::fs::remove_file(&segment.path)?;
            }
        }
        sync_dir(&self.dir)?;
        if let Some(segment) = self.segments.last_mut() {
            segment.file.set_len(cut_offset)?;
            segment.file.sync_all()?;
            segment.len = cut_offset;
        }
        self.slots.truncate(keep);
        Ok(())
    }

    /// Forgets every entry up to `log_id` and deletes segments that hold nothing newer.
    fn purge(&mut self, log_id: LogId) -> std::io::Result<()> {
        while self
            .slots
            .front()
            .is_some_and(|s| s.log_id.index <= log_id.index)
        {
            self.slots.pop_front();
        }
        self.last_purged = Some(log_id);
        // A segment is wholly purged when the next one starts at or below the purge point
        // + 1; the active segment is never deleted.
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].first_index <= log_id.index + 1 {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The encoded entries in `start..=end` that are held.
    fn range(&self, start: u64, end: Option<u64>) -> Vec<Arc<[u8]>> {
        let (Some(first), Some(last)) = (self.first_index(), self.last_log_id()) else {
            return Vec::new();
        };
        let start = start.max(first);
        let end = end.map_or(last.index, |e| e.min(last.index));
        if end < start {
            return Vec::new();
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        self.slots
            .range(from..=to)
            .map(|s| s.bytes.clone())
            .collect()
    }
}

impl FileLogStore {
    /// Opens (or creates) the log in `dir`, with its meta in `db`. A log still held in the
    /// `raft_log` sled tree by an older Bowline is moved into segments first.
    pub fn open(dir: &Path, db: &sled::Db, id: NodeId) -> Result<Self, StorageError> {
        let meta = db
            .open_tree("raft_meta")
            .map_err(|e| read_err(ErrorSubject::Store, e))?;
        let last_purged = get_meta::<LogId>(&meta, KEY_LAST_PURGED)?;
        let mut log = Log::load(dir, last_purged)?;
        migrate_sled_log(db, &mut log)?;
        // A process killed after a write but before its sync leaves the data in the page
        // cache, readable but not yet durable: sync once before anything relies on it.
        let last = log.last_log_id().map_or(0, |l| l.index);
        let log = Arc::new(Mutex::new(log));
        sync_appended(&log).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        let (flush, wake) = std::sync::mpsc::channel();
        let durability = Arc::new(Durability {
            index: tokio::sync::watch::channel(last).0,
            generation: AtomicU64::new(0),
            flush,
            leading_term: AtomicU64::new(0),
            flusher_failed: AtomicBool::new(false),
            failure: tokio::sync::watch::channel(None).0,
            commit_capped: AtomicBool::new(false),
            synced_after_cap: tokio::sync::Notify::new(),
        });
        let (flusher_log, flusher_durability) = (log.clone(), durability.clone());
        std::thread::Builder::new()
            .name("raft log sync".to_string())
            .spawn(move || run_flusher(flusher_log, flusher_durability, wake))
            .map_err(|e| write_err(ErrorSubject::Logs, e))?;
        Ok(Self {
            log,
            durability,
            id,
            db: db.clone(),
            meta,
        })
    }

    /// Becomes `Some(reason)` when the log's sync thread failed: the node must stop.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.durability.failure.subscribe()
    }

    /// Follows the highest log index that is on disk here.
    pub fn durable_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durability.index.subscribe()
    }

    /// Waits until a commit index was capped by [`Self::clamp_commit`] and the sync has
    /// since caught up: the moment to send followers the full commit index.
    pub async fn commit_capped_then_synced(&self) {
        self.durability.synced_after_cap.notified().await
    }

    /// `commit`, lowered to what this node has synced: the commit index a leader sends its
    /// followers. openraft counts the leader's own appends before they are synced, so its
    /// commit index alone may cover an entry that one follower holds on disk and nobody
    /// else; a follower that applied it could show a write a crash then loses.
    pub fn clamp_commit(&self, commit: Option<LogId>) -> Option<LogId> {
        let commit = commit?;
        let durable = *self.durability.index.borrow();
        if commit.index <= durable {
            return Some(commit);
        }
        self.durability.commit_capped.store(true, Ordering::Release);
        // The sync may have published in between and missed the flag.
        if *self.durability.index.borrow() >= commit.index {
            self.durability.wake_if_capped();
        }
        let log = lock(&self.log);
        match log.first_index() {
            Some(first) if durable >= first => {
                log.slots.get((durable - first) as usize).map(|s| s.log_id)
            }
            _ => log.last_purged.filter(|p| p.index <= durable),
        }
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

    /// Index of the last entry in the log, if any (used by status).
    pub fn last_index(&self) -> Option<u64> {
        lock(&self.log).last_log_id().map(|l| l.index)
    }

    /// Index of the last purged entry (used by status and metrics).
    pub fn purged_index(&self) -> Option<u64> {
        lock(&self.log).last_purged.map(|l| l.index)
    }

    /// Encoded bytes of the held entries after `index`.
    pub fn bytes_after(&self, index: u64) -> u64 {
        lock(&self.log)
            .slots
            .iter()
            .rev()
            .take_while(|s| s.log_id.index > index)
            .map(|s| s.bytes.len() as u64)
            .sum()
    }

    /// The highest index up to which the log can be purged so that the entries kept at or
    /// below `upto` hold at most `keep_bytes`; `None` if they already do.
    pub fn purge_point(&self, upto: u64, keep_bytes: u64) -> Option<u64> {
        let log = lock(&self.log);
        let mut kept = 0;
        for slot in log.slots.iter().rev().skip_while(|s| s.log_id.index > upto) {
            kept += slot.bytes.len() as u64;
            if kept > keep_bytes {
                return Some(slot.log_id.index);
            }
        }
        None
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let Some(bytes) = meta
        .get(key)
        .map_err(|e| read_err(ErrorSubject::Store, e))?
    else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|e| read_err(ErrorSubject::Store, e))
}

/// Moves a log kept in sled (Bowline before segment files) into segments, then empties the
/// tree. Safe to repeat: the tree is cleared only after the segment is synced, and a node
/// that crashes in between finds its entries in both and keeps the segment's.
fn migrate_sled_log(db: &sled::Db, log: &mut Log) -> Result<(), StorageError> {
    let subject = ErrorSubject::Logs;
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == b"raft_log".as_slice())
    {
        return Ok(());
    }
    let tree = db
        .open_tree("raft_log")
        .map_err(|e| read_err(subject.clone(), e))?;
    if tree.is_empty() {
        return Ok(());
    }
    let held = log.last_log_id().map(|l| l.index);
    let purged = log.last_purged.map(|l| l.index);
    let mut entries = Vec::new();
    for item in tree.iter() {
        let (_, value) = item.map_err(|e| read_err(subject.clone(), e))?;
        let entry: Entry = codec::decode(&value).map_err(|e| read_err(subject.clone(), e))?;
        let index = entry.log_id.index;
        if held.is_some_and(|h| index <= h) || purged.is_some_and(|p| index <= p) {
            continue;
        }
        entries.push((entry.log_id, value.to_vec()));
    }
    let count = entries.len();
    log.append(entries)
        .and_then(|()| log.segments.last().map_or(Ok(()), |s| s.file.sync_data()))
        .map_err(|e| write_err(subject.clone(), e))?;
    tree.clear().map_err(|e| write_err(subject.clone(), e))?;
    db.flush().map_err(|e| write_err(subject, e))?;
    tracing::info!(
        entries = count,
        "moved the raft log from sled into segment files"
    );
    Ok(())
}

impl RaftLogReader<TypeConfig> for FileLogStore {
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
        let encoded = lock(&self.log).range(start, end);
        // Decoded outside the lock; an entry we cannot decode is fatal, and openraft stops
        // the node instead of guessing.
        encoded
            .iter()
            .map(|bytes| codec::decode(bytes).map_err(|e| read_err(ErrorSubject::Logs, e)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = lock(&self.log);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: log.last_log_id().or(log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        // Until the new vote is saved, this node's appends are synced before they are
        // reported (a vote for another node ends this node's leadership).
        let leading = vote.is_committed() && vote.leader_id().voted_for() == Some(self.id);
        if !leading {
            self.durability.leading_term.store(0, Ordering::Release);
        }
        // A vote must be durable before it is granted, or a restarted node could vote twice
        // in one term.
        self.put_meta_durable(KEY_VOTE, vote).await.map_err(|e| {
            StorageError::from_io_error(
                ErrorSubject::Vote,
                ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        })?;
        if leading {
            self.durability
                .leading_term
                .store(vote.leader_id().term, Ordering::Release);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get_meta(&self.meta, KEY_VOTE)
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
        let committed = get_meta::<Option<LogId>>(&self.meta, KEY_COMMITTED)?.flatten();
        // A leader saves a commit index its own log may not have synced (see `append`); if
        // it crashed before the sync, that index is past its log and is not kept.
        let last = lock(&self.log).last_log_id().map(|l| l.index);
        Ok(committed.filter(|c| last.is_some_and(|l| c.index <= l)))
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
        let mut has_membership = false;
        let encoded = entries
            .into_iter()
            .map(|entry| {
                has_membership |= matches!(entry.payload, EntryPayload::Membership(_));
                codec::encode(&entry)
                    .map(|bytes| (entry.log_id, bytes))
                    .map_err(|e| write_err(ErrorSubject::Logs, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let leading_term = self.durability.leading_term.load(Ordering::Acquire);
        // The leader's own entries of its term, membership changes aside, are reported
        // appended before they are synced, so openraft replicates them while the sync runs
        // (it waits for this report before it sends anything) instead of after: etcd's
        // leader, too, writes its log and sends to followers in parallel. Nothing observable
        // depends on the report: the state machine applies an entry only once it is synced
        // here (`durable_index`), followers learn a commit index no higher than that
        // (`clamp_commit`), and a client is answered only after apply. So an acknowledged
        // write is still on disk on a majority: this node and a follower that synced it
        // before acknowledging it.
        let early = leading_term != 0
            && encoded
                .iter()
                .all(|(log_id, _)| log_id.leader_id.term == leading_term)
            && !has_membership
            && !self.durability.flusher_failed.load(Ordering::Acquire);
        let (generation, last) = {
            let mut log = lock(&self.log);
            log.append(encoded)
                .map_err(|e| write_err(ErrorSubject::Logs, e))?;
            (
                self.durability.generation.load(Ordering::Acquire),
                log.last_log_id().map_or(0, |l| l.index),
            )
        };
        if early {
            callback.log_io_completed(Ok(()));
            let _ = self.durability.flush.send(());
            return Ok(());
        }
        // Durable before acknowledged: openraft counts this node towards a commit quorum only
        // once the callback fires, after the fdatasync.
        let synced = sync_appended(&self.log);
        if synced.is_ok() {
            self.durability.synced(&self.log, generation, last);
        }
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = lock(&self.log);
        self.durability.generation.fetch_add(1, Ordering::AcqRel);
        self.durability.index.send_if_modified(|d| {
            let lowered = *d >= log_id.index;
            *d = (*d).min(log_id.index.saturating_sub(1));
            lowered
        });
        log.truncate(log_id.index)
            .map_err(|e| write_err(ErrorSubject::Logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if we crash midway, leftover entries below it are
        // skipped on load rather than a hole appearing above it.
        self.put_meta_durable(KEY_LAST_PURGED, &log_id).await?;
        lock(&self.log)
            .purge(log_id)
            .map_err(|e| write_err(ErrorSubject::Logs, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(payload, &mut out);
        out
    }

    #[test]
    fn parse_segment_reads_whole_records() {
        let mut data = record(b"one");
        data.extend(record(b"two"));
        let parsed = parse_segment(&data);
        assert_eq!(parsed.valid_len, data.len() as u64);
        assert_eq!(
            parsed.records,
            vec![(0, b"one".to_vec()), (11, b"two".to_vec())]
        );
    }

    #[test]
    fn parse_segment_stops_at_a_torn_tail() {
        let mut data = record(b"one");
        let whole = data.len() as u64;
        data.extend(&record(b"two")[..9]);
        let parsed = parse_segment(&data);
        assert_eq!(parsed.valid_len, whole);
        assert_eq!(parsed.records.len(), 1);
    }

    #[test]
    fn parse_segment_stops_at_a_bad_checksum() {
        let mut data = record(b"one");
        let whole = data.len() as u64;
        let mut second = record(b"two");
        let last = second.len() - 1;
        second[last] ^= 0xff;
        data.extend(second);
        data.extend(record(b"three"));
        let parsed = parse_segment(&data);
        assert_eq!(parsed.valid_len, whole);
        assert_eq!(parsed.records.len(), 1);
    }

    #[test]
    fn parse_segment_ends_cleanly_at_a_zero_filled_tail() {
        let mut data = record(b"one");
        let whole = data.len() as u64;
        data.extend([0u8; 100]);
        let parsed = parse_segment(&data);
        assert_eq!(parsed.valid_len, whole);
        assert_eq!(parsed.records.len(), 1);
        assert!(parsed.clean_end);
    }

    #[test]
    fn parse_segment_does_not_call_data_after_a_zero_length_a_clean_end() {
        let mut data = record(b"one");
        data.extend([0u8; 8]);
        data.extend(record(b"two"));
        let parsed = parse_segment(&data);
        assert_eq!(parsed.records.len(), 1);
        assert!(!parsed.clean_end);
    }

    fn blank(index: u64) -> (LogId, Vec<u8>) {
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        };
        (entry.log_id, codec::encode(&entry).unwrap())
    }

    /// Waits until the spare being filled in the background is ready, and leaves it there.
    fn wait_for_spare(log: &mut Log) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let spare = loop {
            if let Some(file) = log.take_spare() {
                break file;
            }
            assert!(log.spare.is_some(), "no spare is being prepared");
            assert!(std::time::Instant::now() < deadline, "spare not ready");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(Ok(spare)).unwrap();
        log.spare = Some(rx);
    }

    #[test]
    fn appends_overwrite_preallocated_segments_and_every_entry_survives_a_reload() {
        const SEGMENT: u64 = 4096;
        let dir = tempfile::tempdir().unwrap();
        let log = Mutex::new(Log::load_with_segments_of(dir.path(), None, SEGMENT).unwrap());
        lock(&log).append(vec![blank(1)]).unwrap();
        let first = segment_path(dir.path(), 1);
        assert_eq!(
            std::fs::metadata(&first).unwrap().len(),
            SEGMENT,
            "preallocated"
        );
        // Fill past the first segment; the roll takes the spare prepared in the background.
        wait_for_spare(&mut lock(&log));
        let mut index = 2;
        while lock(&log).segments.len() < 2 {
            lock(&log).append(vec![blank(index)]).unwrap();
            index += 1;
        }
        sync_appended(&log).unwrap();
        let sealed = std::fs::metadata(&first).unwrap().len();
        assert_eq!(
            sealed,
            lock(&log).segments[0].len,
            "sealed: cut back to its records"
        );
        let active = std::fs::metadata(segment_path(dir.path(), index - 1)).unwrap();
        assert_eq!(
            active.len(),
            SEGMENT,
            "the new segment was the preallocated spare"
        );
        drop(log);

        let reloaded = Log::load_with_segments_of(dir.path(), None, SEGMENT).unwrap();
        let indexes: Vec<u64> = reloaded.slots.iter().map(|s| s.log_id.index).collect();
        assert_eq!(indexes, (1..index).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_write_in_a_preallocated_segment_is_cut_off_on_reload() {
        const SEGMENT: u64 = 4096;
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::load_with_segments_of(dir.path(), None, SEGMENT).unwrap();
        log.append(vec![blank(1), blank(2)]).unwrap();
        let end = log.segments[0].len;
        // A crash tore the next write: its header never reached the disk, later bytes did.
        log.segments[0]
            .file
            .write_all_at(b"garbage", end + 40)
            .unwrap();
        drop(log);
        let reloaded = Log::load_with_segments_of(dir.path(), None, SEGMENT).unwrap();
        assert_eq!(reloaded.slots.len(), 2);
        assert_eq!(reloaded.segments[0].len, end);
        let on_disk = std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .len();
        assert_eq!(on_disk, end, "the torn bytes are gone");
    }

    fn open_store() -> (tempfile::TempDir, FileLogStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let store = FileLogStore::open(&dir.path().join("raft-log"), &db, 1).unwrap();
        (dir, store)
    }

    fn log_id(index: u64) -> LogId {
        blank(index).0
    }

    #[test]
    fn the_commit_sent_to_followers_never_passes_what_this_node_has_synced() {
        let (_dir, store) = open_store();
        // Written as a leader's early-reported append is: not synced yet.
        lock(&store.log)
            .append(vec![blank(1), blank(2), blank(3)])
            .unwrap();
        store.durability.index.send_replace(1);
        assert_eq!(store.clamp_commit(Some(log_id(3))), Some(log_id(1)));
        assert_eq!(store.clamp_commit(Some(log_id(1))), Some(log_id(1)));
        assert_eq!(store.clamp_commit(None), None);
        store.durability.index.send_replace(3);
        assert_eq!(store.clamp_commit(Some(log_id(3))), Some(log_id(3)));
    }

    #[test]
    fn the_flusher_syncs_early_reported_appends_and_a_truncation_lowers_the_synced_index() {
        let (_dir, mut store) = open_store();
        let durable = store.durable_index();
        lock(&store.log)
            .append(vec![blank(1), blank(2), blank(3)])
            .unwrap();
        assert_eq!(
            *durable.borrow(),
            0,
            "nothing is synced until the flusher runs"
        );
        store.durability.flush.send(()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut synced = durable.clone();
        let wait = async {
            let limit = std::time::Duration::from_secs(30);
            tokio::time::timeout(limit, synced.wait_for(|index| *index >= 3))
                .await
                .is_ok_and(|r| r.is_ok())
        };
        assert!(runtime.block_on(wait), "the flusher never synced");
        runtime.block_on(store.truncate(log_id(2))).unwrap();
        assert_eq!(*durable.borrow(), 1);
    }

    #[test]
    fn a_saved_commit_index_past_the_log_is_not_read_back() {
        let (_dir, mut store) = open_store();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        lock(&store.log).append(vec![blank(1), blank(2)]).unwrap();
        runtime
            .block_on(store.save_committed(Some(log_id(2))))
            .unwrap();
        assert_eq!(
            runtime.block_on(store.read_committed()).unwrap(),
            Some(log_id(2))
        );
        // A leader that crashed before syncing entry 3 had saved it as committed.
        runtime
            .block_on(store.save_committed(Some(log_id(3))))
            .unwrap();
        assert_eq!(runtime.block_on(store.read_committed()).unwrap(), None);
    }

    #[test]
    fn parse_segment_rejects_an_absurd_length() {
        let mut data = Vec::new();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&[0; 32]);
        let parsed = parse_segment(&data);
        assert_eq!(parsed.valid_len, 0);
        assert!(parsed.records.is_empty());
    }

    #[tokio::test]
    async fn a_failed_sync_on_the_sync_thread_is_reported_as_the_nodes_failure(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, store) = open_store();
        let mut failure = store.failure();
        assert!(failure.borrow().is_none());
        // fsync on a pipe fails (EINVAL), as a sync on a failing disk would.
        let (reader, _writer) = std::io::pipe()?;
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        lock(&store.log).unsynced.push(Arc::new(pipe));
        store.durability.flush.send(())?;
        let reason = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            failure.wait_for(|f| f.is_some()),
        )
        .await??
        .clone();
        assert!(
            reason.is_some_and(|r| r.contains("raft log fdatasync failed")),
            "the sync thread's failure was not reported"
        );
        assert!(store.durability.flusher_failed.load(Ordering::Acquire));
        Ok(())
    }
}
