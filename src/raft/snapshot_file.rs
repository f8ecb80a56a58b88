//! Snapshot data in a plain file beside the sled database; sled keeps only the record that
//! names the file.
//!
//! Kept as one sled value, a snapshot of 75–80 MB was copied twice more than written: once
//! to prepend its metadata, once into sled's own buffer, each a fresh allocation that page
//! faulted (two thirds of a snapshot's CPU was system time). A file is written from the
//! encoded buffer itself, and read back into one buffer.
//!
//! A file is written under a temporary name, synced, renamed and its directory synced before
//! the record names it, so the record never names a partial file. Files no record names
//! (an older snapshot, or one a crash left before its record was written) are removed.
//!
//! A snapshot being built is encoded straight into its file, never into one buffer: half the
//! CPU of encoding a 50–90 MB state into memory was the kernel clearing the buffer's fresh
//! pages. Openraft is handed open files (`SnapshotData` is a file), so sending a snapshot to
//! a follower reads it from disk in chunks too.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{NodeAddr, NodeId};

type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";
const TEMPORARY: &str = ".tmp";

/// What sled keeps for the current snapshot: its metadata and where its data is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// openraft's metadata (last log id, membership, id).
    pub meta: SnapshotMeta,
    /// The data file's name in the snapshot directory.
    pub file: String,
    /// The data's length in bytes.
    pub len: u64,
    /// CRC-32 of the data, checked when it is read back.
    pub crc32: u32,
}

/// The directory of snapshot data files.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// The snapshot files in `dir`, which is created if missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes what `encode` writes into a synced temporary file for `meta`; nothing names it
    /// until [`PreparedSnapshot::commit`].
    pub fn prepare(
        &self,
        meta: &SnapshotMeta,
        encode: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<PreparedSnapshot> {
        let file = file_name(meta);
        let temporary = self.dir.join(format!("{file}{TEMPORARY}"));
        let written = File::create(&temporary).and_then(|created| {
            // The checksum sits under the buffer, so it runs over whole buffers: the encoder
            // writes each field on its own, a few bytes at a time, and checksumming those one
            // by one made encoding a third slower (66 MB of state: 107 ms against 82 ms).
            let mut out = BufWriter::with_capacity(
                BUFFER_BYTES,
                ChecksumWriter {
                    inner: created,
                    crc32: crc32fast::Hasher::new(),
                    len: 0,
                },
            );
            encode(&mut out)?;
            let ChecksumWriter { inner, crc32, len } =
                out.into_inner().map_err(|e| e.into_error())?;
            inner.sync_all()?;
            Ok((crc32, len))
        });
        let (crc32, len) = match written {
            Ok(written) => written,
            Err(e) => {
                // Saves leave temporary files alone (one may be in the making): a failed one
                // would stay until the next start.
                let _ = std::fs::remove_file(&temporary);
                return Err(e);
            }
        };
        Ok(PreparedSnapshot {
            dir: self.dir.clone(),
            temporary,
            record: SnapshotRecord {
                meta: meta.clone(),
                file,
                len,
                crc32: crc32.finalize(),
            },
        })
    }

    /// Opens the data `record` names, without checking it (see [`Self::verify`]).
    pub fn open_file(&self, record: &SnapshotRecord) -> std::io::Result<File> {
        File::open(self.dir.join(&record.file))
    }

    /// Checks `file`, opened from `record`, against its length and checksum (read in
    /// chunks, so a large file never sits in memory whole); returns it rewound to its start.
    pub fn verify(&self, record: &SnapshotRecord, file: File) -> std::io::Result<File> {
        self.check_len(record, file.metadata()?.len())?;
        let mut reader = BufReader::with_capacity(BUFFER_BYTES, file);
        let mut crc32 = crc32fast::Hasher::new();
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            crc32.update(chunk);
            let n = chunk.len();
            reader.consume(n);
        }
        self.check_crc32(record, crc32.finalize())?;
        let mut file = reader.into_inner();
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }

    /// A new empty file in the snapshot directory that no name refers to: it disappears
    /// when closed, whatever happens meanwhile (a snapshot being received, or one built
    /// while a newer one was installed).
    pub fn scratch(&self) -> std::io::Result<File> {
        static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{PREFIX}scratch-{n}{TEMPORARY}"));
        // The counter makes names unique in this process, which alone uses the directory
        // (sled's lock); files a crash left were removed at start.
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(file),
        }
    }

    /// Reads the data `record` names, checking its length and checksum.
    pub fn read(&self, record: &SnapshotRecord) -> std::io::Result<Vec<u8>> {
        let mut file = self.open_file(record)?;
        let len = file.metadata()?.len();
        self.check_len(record, len)?;
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut data)?;
        self.check_crc32(record, crc32fast::hash(&data))?;
        Ok(data)
    }

    fn check_len(&self, record: &SnapshotRecord, len: u64) -> std::io::Result<()> {
        if len == record.len {
            return Ok(());
        }
        Err(self.corrupt(record, format!("{len} bytes, expected {}", record.len)))
    }

    fn check_crc32(&self, record: &SnapshotRecord, crc32: u32) -> std::io::Result<()> {
        if crc32 == record.crc32 {
            return Ok(());
        }
        Err(self.corrupt(
            record,
            format!("checksum {crc32:08x}, expected {:08x}", record.crc32),
        ))
    }

    fn corrupt(&self, record: &SnapshotRecord, what: String) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "snapshot file {} is corrupt: {what}",
                self.dir.join(&record.file).display()
            ),
        )
    }

    /// Removes every snapshot file but `keep`, and temporary ones when `temporary_too` (at
    /// start, when no snapshot is being written). Best effort: a file left behind only takes
    /// space until the next snapshot.
    pub fn remove_all_but(&self, keep: Option<&str>, temporary_too: bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let temporary = name.ends_with(TEMPORARY);
            if name.starts_with(PREFIX) && Some(name) != keep && (temporary_too || !temporary) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = name, error = %e, "could not remove an old snapshot file");
                }
            }
        }
    }
}

/// Buffer for writing and checking snapshot files.
const BUFFER_BYTES: usize = 1 << 20;

/// A snapshot file written and synced under its temporary name.
#[derive(Debug)]
pub struct PreparedSnapshot {
    dir: PathBuf,
    temporary: PathBuf,
    record: SnapshotRecord,
}

impl PreparedSnapshot {
    /// Gives the file its name (and syncs the directory); returns the record to store.
    pub fn commit(self) -> std::io::Result<SnapshotRecord> {
        std::fs::rename(&self.temporary, self.dir.join(&self.record.file))?;
        super::log_store::sync_dir(&self.dir)?;
        Ok(self.record)
    }

    /// Opens the data for reading and removes its name: for a snapshot that will not be
    /// stored (a newer one was), but must still be handed to openraft.
    pub fn discard(self) -> std::io::Result<File> {
        let file = File::open(&self.temporary)?;
        std::fs::remove_file(&self.temporary)?;
        Ok(file)
    }

    /// The record the file will have.
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }
}

/// Counts and checksums what passes through to `inner`.
struct ChecksumWriter<W> {
    inner: W,
    crc32: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc32.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The file name for `meta`: its id, with anything but letters, digits and `-` replaced.
fn file_name(meta: &SnapshotMeta) -> String {
    let id: String = meta
        .snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{PREFIX}{id}{SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SnapshotFiles {
        /// Writes `data` durably as the file for `meta` and returns its record.
        fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<SnapshotRecord> {
            self.prepare(meta, |out| out.write_all(data))?.commit()
        }
    }

    fn meta(id: &str) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: id.to_string(),
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn written_data_reads_back_and_only_the_kept_file_stays() -> TestResult {
        let dir = tempfile::tempdir()?;
        let files = SnapshotFiles::open(&dir.path().join("snapshots"))?;
        let old = files.write(&meta("T1-N1-5-0"), b"old state")?;
        let new = files.write(&meta("T1-N1-9-1"), b"new state")?;
        assert_ne!(old.file, new.file);
        files.remove_all_but(Some(&new.file), true);
        assert_eq!(files.read(&new)?, b"new state");
        assert!(files.read(&old).is_err(), "the old file was kept");
        let left = std::fs::read_dir(dir.path().join("snapshots"))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()?;
        assert_eq!(left, vec![new.file]);
        Ok(())
    }

    #[test]
    fn a_discarded_or_scratch_file_reads_but_has_no_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let files = SnapshotFiles::open(dir.path())?;
        let prepared = files.prepare(&meta("late"), |out| out.write_all(b"late state"))?;
        assert_eq!(prepared.record().len, 10);
        let mut data = String::new();
        prepared.discard()?.read_to_string(&mut data)?;
        assert_eq!(data, "late state");
        let mut scratch = files.scratch()?;
        scratch.write_all(b"chunk")?;
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            0,
            "a file kept a name"
        );
        Ok(())
    }

    #[test]
    fn a_snapshot_that_fails_while_encoding_leaves_no_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let files = SnapshotFiles::open(dir.path())?;
        let failed = files.prepare(&meta("broken"), |out| {
            out.write_all(b"half a state")?;
            Err(std::io::Error::other("no space left"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "a file was left");
        Ok(())
    }

    #[test]
    fn a_changed_byte_or_length_is_reported_as_corrupt() -> TestResult {
        let dir = tempfile::tempdir()?;
        let files = SnapshotFiles::open(dir.path())?;
        let record = files.write(&meta("a/b c"), b"some state")?;
        assert_eq!(record.file, "snapshot-a_b_c.bin");
        let path = dir.path().join(&record.file);
        std::fs::write(&path, b"some stata")?;
        let error = files.read(&record).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("checksum"), "{error}");
        std::fs::write(&path, b"some")?;
        let error = files.read(&record).unwrap_err();
        assert!(
            error.to_string().contains("4 bytes, expected 10"),
            "{error}"
        );
        Ok(())
    }
}
