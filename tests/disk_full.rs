//! A node whose disk fills up stops itself instead of lingering as a leader that can no
//! longer write, the others carry on, and no acknowledged write is lost. The disk is real:
//! each node's data directory is a size-limited tmpfs (needs root to mount), and the
//! leader's is filled to the last byte while clients write, so its own writes fail with
//! `ENOSPC` as they would on a full disk.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bowline::proto::v1 as pb;
use common::*;

/// A tmpfs mounted on a node's data directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .map_err(|e| format!("run mount: {e}"))?;
        if !status.success() {
            return Err(format!(
                "mounting a tmpfs at {} failed ({status}): this test needs root",
                dir.display()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that it also works while a node still holds files open.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a file in `dir` until the filesystem has no byte left; returns its path.
fn fill(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).map_err(|e| format!("create filler: {e}"))?;
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0xa5u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(n) if n == chunk => continue,
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(format!("fill {}: {e}", dir.display())),
            }
        }
    }
    Ok(path)
}

/// A service carrying as much metadata as one object may (15 values of 1,000 bytes), so each
/// write grows the leader's files by ~15 KiB and one of them soon needs space that is not
/// there (in practice sled's, after a few hundred writes; log segments are preallocated).
fn heavy_service(name: &str) -> pb::Service {
    let mut service = service(name);
    service.metadata = (0..15)
        .map(|k| {
            let unit = format!("{name}:{k}:");
            (
                format!("k{k}"),
                unit.repeat(1000 / unit.len() + 1)[..1000].to_string(),
            )
        })
        .collect();
    service
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_disk_fills_up_stops_and_no_acknowledged_write_is_lost() -> Result<(), String>
{
    let mut cluster = Cluster::prepare(3, Tuning::default());
    let mut mounts = Vec::new();
    for node in &cluster.nodes {
        mounts.push(Tmpfs::mount(&node.data_dir, 128)?);
    }
    cluster.start_prepared().await;
    let leader = cluster.wait_for_leader().await;
    let li = cluster.index_of(leader);
    let filler = fill(&cluster.nodes[li].data_dir)?;

    let client = cluster.client_with_timeouts(Duration::from_secs(5), Duration::from_secs(2));

    // Writers record every acknowledged write, until told to stop (at most 3,000 each).
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, acknowledged, stop) = (client.clone(), acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..3_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let name = format!("full-{w}-{i}");
                let request = pb::RegisterServiceRequest {
                    service: Some(heavy_service(&name)),
                    expected_revision: None,
                };
                let written = client
                    .registry(|mut c| {
                        let request = request.clone();
                        async move { c.register_service(request).await }
                    })
                    .await;
                if written.is_ok() {
                    acknowledged
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(name);
                }
            }
        }));
    }
    let acked = || acknowledged.lock().unwrap_or_else(|e| e.into_inner()).len();

    // The leader runs out of space and stops by itself.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while cluster.is_running(li) {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "node {leader} still runs on a full disk after {} acknowledged writes\n{}",
                acked(),
                cluster.log_tails()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cluster.nodes[li]
        .child
        .as_mut()
        .and_then(|c| c.try_wait().ok().flatten())
        .ok_or("the stopped node's exit status is unknown")?;
    let log = std::fs::read_to_string(&cluster.nodes[li].log_file).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(1),
        "the node must exit with an error, not be killed: {status}"
    );
    // The exit message is the one line not from the logger (sled's flusher may still log
    // after it).
    let exit_message = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        log.contains("can no longer serve")
            && exit_message.starts_with("error: raft stopped")
            && exit_message.contains("No space left on device"),
        "the node's exit message does not say why it stopped ({exit_message}):\n{}",
        cluster.log_tails()
    );

    // The other two elect a leader and keep acknowledging writes.
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let before = acked();
    Cluster::eventually("writes acknowledged by the new leader", || async {
        (acked() >= before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.map_err(|e| e.to_string())?;
    }
    let names = acknowledged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();

    // Every acknowledged write is there, whole.
    for name in &names {
        let found = get_service(&client, name, pb::Consistency::Linearizable)
            .await
            .map_err(|e| format!("read {name}: {e}"))?;
        assert_eq!(
            found.map(|s| s.metadata),
            Some(heavy_service(name).metadata),
            "acknowledged write {name} is missing or changed"
        );
    }

    // With space again, the node restarts from its disk and catches up.
    std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
    cluster.spawn(li);
    let node = cluster.client_for(li);
    for name in &names {
        Cluster::eventually(&format!("{name} on the restarted node"), || async {
            get_service(&node, name, pb::Consistency::Stale)
                .await
                .ok()
                .flatten()
        })
        .await;
    }
    for i in 0..cluster.nodes.len() {
        cluster.kill(i);
    }
    drop(mounts);
    Ok(())
}
