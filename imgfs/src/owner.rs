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

use std::fmt;

use crate::error::{Error, Result};
use crate::records::{SnapshotKind, SnapshotRecord};
use crate::store::Store;

/// The label holding the owning mount process's pid.
pub const PID_LABEL: &str = "imgfs.mount.pid";
/// The label holding the owning mount process's start time (`process_start_time`).
pub const START_LABEL: &str = "imgfs.mount.start";

/// The start time of process `pid` in clock ticks after boot (`/proc/PID/stat`'s starttime,
/// which anyone may read), or `None` if there is no such process or it is a zombie, which
/// serves nothing.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after the last
    // ')' are plain: state is field 3, starttime field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
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
        self.new_snapshot(key, parent, SnapshotKind::Active, labels)
    }

    /// Gives up this process's ownership of the active snapshot `key`: it stays when the
    /// process ends. Works on a disk too full for other writes, since failing would lose the
    /// snapshot to the next writer.
    pub fn release_owned(&self, key: &str) -> Result<()> {
        self.edit_labels(key, drop_owner_labels, true)
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
        Ok(abandoned)
    }
}
