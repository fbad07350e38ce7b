//! Which process owns an active snapshot, and the removal of those whose owner is gone.
//!
//! `imgfs mount --writable` of a committed snapshot prepares a child, `SNAPSHOT.mount-PID`,
//! that nobody else knows of. A clean end (unmount, signal, a failed session) keeps the child
//! active on purpose and says so, for the user to remount or commit it; a SIGKILL or a crash
//! leaves it with nobody to say so, pinning its data. So the child is prepared with two labels
//! naming its process (`imgfs.mount.pid`, and `imgfs.mount.start`, the process's start time,
//! so that a reused pid is not taken for it), which the clean ends and the commit drop. A
//! snapshot still labelled after its process is gone was abandoned: the next writer removes it
//! (`Store::remove_abandoned_mounts`). While a writable mount lives it holds the store's writer
//! lock, so no other process can remove anything; the liveness check is what keeps a read-only
//! look (fsck) from calling a live mount's snapshot abandoned.
//!
//! Finding such a snapshot means opening the store, which replays its metadata log: after a
//! build that is tens of milliseconds to a few hundred, too much for every img command to pay.
//! So an owner also leaves a marker, `OWNERS_DIR/PID` in the store's root, holding its start
//! time: `may_have_abandoned_mounts` reads those files only, and the store is opened when one
//! names a process that is gone. Markers are hints, written before the labels and removed after
//! them: a marker without labels costs one needless look, after which it is removed.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::records::{SnapshotKind, SnapshotRecord};
use crate::store::Store;

/// The label holding the owning mount process's pid.
pub const PID_LABEL: &str = "imgfs.mount.pid";
/// The label holding the owning mount process's start time (`process_start_time`).
pub const START_LABEL: &str = "imgfs.mount.start";

/// The start time of process `pid` in clock ticks after boot (`/proc/PID/stat`'s starttime,
/// which anyone may read), or `None` if there is no such process or it is a zombie, which
/// serves nothing. A killed process's main thread can be a zombie while its other threads are
/// still exiting and still hold its files (a store's lock among them): that process is not
/// gone yet.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = fields_after_comm(&stat)?;
    if fields.first() == Some(&"Z") && !other_threads_live(pid) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process `pid` has a thread besides its main one that is not a zombie.
fn other_threads_live(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        t.file_name().to_str() != Some(&pid.to_string())
            && std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                fields_after_comm(&stat)
                    .is_some_and(|f| f.first().is_some_and(|state| *state != "Z"))
            })
    })
}

/// The fields of a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) line after the command
/// name, which may hold spaces and parentheses: those after the last ')' are plain, the state
/// (field 3) first, the start time (field 22) at index 19.
fn fields_after_comm(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

/// An active snapshot whose owning mount process is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbandonedMount {
    pub snapshot: String,
    pub pid: u32,
}

impl fmt::Display for AbandonedMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snapshot {} left by imgfs mount process {}, which is gone",
            self.snapshot, self.pid
        )
    }
}

/// The directory of the owners' markers, in a store's root.
const OWNERS_DIR: &str = "owners";

fn marker_path(root: &Path, pid: u32) -> PathBuf {
    root.join(OWNERS_DIR).join(pid.to_string())
}

/// Records that process `pid`, started at `start`, owns snapshots of the store at `root`.
fn write_marker(root: &Path, pid: u32, start: u64) -> Result<()> {
    let dir = root.join(OWNERS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create owners directory", e))?;
    crate::atomic::write_atomically(&marker_path(root, pid), 0o644, |f| {
        f.write_all(start.to_string().as_bytes())
    })
    .map_err(|e| Error::io("write owner marker", e))
}

/// Removes process `pid`'s marker from the store at `root`, if any: a lost removal costs only
/// a later look.
pub fn remove_marker(root: &Path, pid: u32) {
    let _ = std::fs::remove_file(marker_path(root, pid));
}

/// The owners' markers of the store at `root` whose process is gone, by pid.
fn dead_markers(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(root.join(OWNERS_DIR)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let start: u64 = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (process_start_time(pid) != Some(start)).then_some(pid)
        })
        .collect()
}

/// Whether the store at `root` may hold snapshots whose owning process is gone, read from the
/// owners' markers without opening the store: `false` means there are none.
pub fn may_have_abandoned_mounts(root: &Path) -> bool {
    !dead_markers(root).is_empty()
}

/// Removes the markers of owners that are gone, once a look at the store found none of their
/// snapshots (`Store::abandoned_mounts` empty): a process that is gone prepares nothing more.
pub fn remove_dead_markers(root: &Path) {
    for pid in dead_markers(root) {
        remove_marker(root, pid);
    }
}

/// The pid an owned snapshot's labels name, if they do.
pub(crate) fn owner_pid(labels: &[(String, String)]) -> Option<u32> {
    let (_, v) = labels.iter().find(|(k, _)| k == PID_LABEL)?;
    v.parse().ok()
}

/// Takes the owner labels out of `labels` (a commit ends the ownership).
pub(crate) fn drop_owner_labels(labels: &mut Vec<(String, String)>) {
    labels.retain(|(k, _)| k != PID_LABEL && k != START_LABEL);
}

/// The pid of `rec`'s owner if it is an active snapshot whose owner is gone. Labels that do
/// not parse name no one, and keep the snapshot.
fn abandoned_by(rec: &SnapshotRecord) -> Option<u32> {
    if rec.kind != SnapshotKind::Active {
        return None;
    }
    let label = |name: &str| -> Option<u64> {
        let (_, v) = rec.labels.iter().find(|(k, _)| k == name)?;
        v.parse().ok()
    };
    let pid = u32::try_from(label(PID_LABEL)?).ok()?;
    let start = label(START_LABEL)?;
    (process_start_time(pid) != Some(start)).then_some(pid)
}

impl Store {
    /// Prepares the active snapshot `key` on `parent` (as `prepare`) owned by this process:
    /// if the process ends without `release_owned` or a commit, the next writer removes it.
    pub fn prepare_owned(&self, key: &str, parent: Option<&str>) -> Result<SnapshotRecord> {
        let pid = std::process::id();
        let start = process_start_time(pid).ok_or_else(|| {
            Error::Invalid(format!(
                "cannot read the start time of this process ({pid})"
            ))
        })?;
        let labels = vec![
            (PID_LABEL.to_string(), pid.to_string()),
            (START_LABEL.to_string(), start.to_string()),
        ];
        write_marker(self.root(), pid, start)?;
        self.new_snapshot(key, parent, SnapshotKind::Active, labels)
    }

    /// Gives up this process's ownership of the active snapshot `key`: it stays when the
    /// process ends. Works on a disk too full for other writes, since failing would lose the
    /// snapshot to the next writer.
    pub fn release_owned(&self, key: &str) -> Result<()> {
        self.edit_labels(key, drop_owner_labels, true)?;
        remove_marker(self.root(), std::process::id());
        Ok(())
    }

    /// The active snapshots whose owning process is gone, oldest first. Works on a store
    /// opened read-only, where a live owner's snapshots are told apart by its pid and start
    /// time.
    pub fn abandoned_mounts(&self) -> Result<Vec<AbandonedMount>> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|rec| {
                let pid = abandoned_by(&rec)?;
                Some(AbandonedMount {
                    snapshot: rec.name,
                    pid,
                })
            })
            .collect())
    }

    /// Removes the active snapshots whose owning process is gone, and returns them. Needs a
    /// store opened for writing; an active snapshot has no children, so each goes alone.
    pub fn remove_abandoned_mounts(&self) -> Result<Vec<AbandonedMount>> {
        if self.is_read_only() {
            return Err(Error::NotPermitted(format!(
                "removing abandoned snapshots of store {} opened read-only",
                self.root().display()
            )));
        }
        let abandoned = self.abandoned_mounts()?;
        for a in &abandoned {
            self.remove(&a.snapshot)?;
        }
        // Every snapshot of a gone owner is removed now: its marker has nothing left to say.
        remove_dead_markers(self.root());
        Ok(abandoned)
    }
}
