//! What a killed img leaves behind, and how the next img removes it.
//!
//! An `img build` killed by SIGKILL (or a crash) leaves its running container (runc, the step's
//! processes), its mounts and its active snapshots. Each build records itself first in
//! `<state>/owners/<pid>.json` (`Owner`), with its start time so that a reused pid is not taken
//! for it, and removes the record when it ends. Every img command that opens the state calls
//! `remove` under the state lock: for each record whose process is gone it kills and deletes
//! the containers named after it (`img-PID-N`), and removes its snapshots (`build-PID-N-…`) from
//! the backend it used. The mounts under `<state>/tmp` are detached by `State::open` already.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use imgfs::SnapshotKind;
use imgfs::owner::process_start_time;

use crate::state::{BackendKind, State};

/// An img process that may leave containers and snapshots behind.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerRecord {
    pub pid: u32,
    /// `/proc/PID/stat`'s starttime, as in `MountRecord`.
    pub start_time: u64,
    /// The backend its snapshots are in.
    pub backend: BackendKind,
}

impl OwnerRecord {
    pub fn alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// This process's record; dropping it removes the record.
#[derive(Debug)]
pub struct Owner {
    path: PathBuf,
}

fn owners_dir(state: &State) -> PathBuf {
    state.dir().join("owners")
}

impl Owner {
    /// Records this process as the owner of the containers and snapshots it is about to make in
    /// `backend`.
    pub fn register(state: &State, backend: BackendKind) -> io::Result<Owner> {
        let pid = std::process::id();
        let start_time = process_start_time(pid)
            .ok_or_else(|| io::Error::other("cannot read this process's start time"))?;
        let record = OwnerRecord {
            pid,
            start_time,
            backend,
        };
        let dir = owners_dir(state);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{pid}.json"));
        imgfs::atomic::write_atomically(&path, 0o644, |f| {
            serde_json::to_writer(f, &record).map_err(io::Error::other)
        })?;
        Ok(Owner { path })
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `remove` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// What one dead img left.
    Build {
        pid: u32,
        containers: usize,
        snapshots: usize,
    },
    /// The snapshot a killed `imgfs mount --writable` of the fuse backend's store prepared.
    Mount(imgfs::AbandonedMount),
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        match self {
            Removed::Build {
                pid,
                containers,
                snapshots,
            } => write!(
                f,
                "removed {} and {} left by img process {pid}, which is gone",
                plural(*containers, "container"),
                plural(*snapshots, "snapshot"),
            ),
            Removed::Mount(a) => write!(f, "removed {a}"),
        }
    }
}

/// Removes what img processes that are gone left behind, and returns what, per process (only
/// those that left something), then the snapshots of killed `imgfs mount` processes in the
/// fuse backend's store. The caller holds the state lock, so no build runs meanwhile; live
/// owners' things are kept all the same. What cannot be removed now (a backend a writable
/// `img mount` holds) keeps its record, for the next command to try again.
pub fn remove(state: &State) -> Vec<Removed> {
    let records = read_records(&owners_dir(state));
    let (live, dead): (Vec<_>, Vec<_>) = records.into_iter().partition(|(_, r)| r.alive());
    let me = std::process::id();
    let live: Vec<u32> = live.iter().map(|(_, r)| r.pid).chain([me]).collect();
    // What each dead img left, by pid.
    #[derive(Default)]
    struct Left {
        containers: usize,
        snapshots: usize,
    }
    let mut left: std::collections::BTreeMap<u32, Left> = Default::default();
    // Containers first: they hold the mounts the snapshots are under. A container whose owner
    // left no record (an older img) is as stale, since its owner does not hold the lock.
    if state.dir().join("runc").is_dir() {
        match state.executor() {
            Ok(exec) => {
                for owner in exec.remove_containers(&|pid| !live.contains(&pid)) {
                    left.entry(owner).or_default().containers += 1;
                }
            }
            Err(e) => tracing::warn!("cannot look for containers left by a dead img: {e}"),
        }
    }
    for (path, rec) in dead {
        match remove_snapshots(state, &rec) {
            Ok(n) => {
                if n > 0 {
                    left.entry(rec.pid).or_default().snapshots += n;
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => tracing::warn!(
                pid = rec.pid,
                "cannot remove the snapshots left by a dead img: {e}"
            ),
        }
    }
    let mut removed: Vec<Removed> = left
        .into_iter()
        .map(|(pid, left)| Removed::Build {
            pid,
            containers: left.containers,
            snapshots: left.snapshots,
        })
        .collect();
    match state.remove_abandoned_mounts() {
        Ok(mounts) => removed.extend(mounts.into_iter().map(Removed::Mount)),
        Err(e) => tracing::warn!("cannot remove the snapshots of killed imgfs mounts: {e}"),
    }
    removed
}

/// Removes the snapshots of dead owner `rec` (children first); how many.
fn remove_snapshots(state: &State, rec: &OwnerRecord) -> Result<usize, String> {
    if !state.backend_exists(rec.backend) {
        return Ok(0);
    }
    let backend = state.backend(rec.backend).map_err(|e| e.to_string())?;
    let prefix = format!("build-{}-", rec.pid);
    let mut removed = 0;
    let snapshots = backend.walk().map_err(|e| e.to_string())?;
    for info in snapshots.iter().rev() {
        if info.kind != SnapshotKind::Committed && info.name.starts_with(&prefix) {
            backend
                .remove(&info.name)
                .map_err(|e| format!("snapshot {}: {e}", info.name))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn read_records(dir: &Path) -> Vec<(PathBuf, OwnerRecord)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, OwnerRecord)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let rec = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            Some((path, rec))
        })
        .collect();
    out.sort_by_key(|(_, r)| r.pid);
    out
}
