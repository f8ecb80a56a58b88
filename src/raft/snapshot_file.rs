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

use std::fs::File;
use std::io::{Read, Write};
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

    /// Writes `data` durably as the file for `meta` and returns its record (not yet stored).
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<SnapshotRecord> {
        let file = file_name(meta);
        let temporary = self.dir.join(format!("{file}{TEMPORARY}"));
        let mut out = File::create(&temporary)?;
        out.write_all(data)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&temporary, self.dir.join(&file))?;
        super::log_store::sync_dir(&self.dir)?;
        Ok(SnapshotRecord {
            meta: meta.clone(),
            file,
            len: data.len() as u64,
            crc32: crc32fast::hash(data),
        })
    }

    /// Reads the data `record` names, checking its length and checksum.
    pub fn read(&self, record: &SnapshotRecord) -> std::io::Result<Vec<u8>> {
        let path = self.dir.join(&record.file);
        let mut file = File::open(&path)?;
        let len = file.metadata()?.len();
        if len != record.len {
            return Err(corrupt(
                &path,
                format!("{len} bytes, expected {}", record.len),
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut data)?;
        let crc32 = crc32fast::hash(&data);
        if crc32 != record.crc32 {
            return Err(corrupt(
                &path,
                format!("checksum {crc32:08x}, expected {:08x}", record.crc32),
            ));
        }
        Ok(data)
    }

    /// Removes every snapshot file but `keep` (temporary ones too). Best effort: a file
    /// left behind only takes space until the next snapshot.
    pub fn remove_all_but(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(PREFIX) && Some(name) != keep {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = name, error = %e, "could not remove an old snapshot file");
                }
            }
        }
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

fn corrupt(path: &Path, what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("snapshot file {} is corrupt: {what}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        files.remove_all_but(Some(&new.file));
        assert_eq!(files.read(&new)?, b"new state");
        assert!(files.read(&old).is_err(), "the old file was kept");
        let left = std::fs::read_dir(dir.path().join("snapshots"))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()?;
        assert_eq!(left, vec![new.file]);
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
