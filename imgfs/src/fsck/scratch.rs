//! Check 7 for scratch space: a scratch file per active snapshot, nothing else.

use super::repair::Fix;
use super::{Checker, Problem};
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::records::SnapshotKind;

impl Checker<'_> {
    /// Check 7 for scratch space: a file per active snapshot, nothing else.
    pub(super) fn scratch(&mut self) -> Result<()> {
        let dir = self.store.root().join("scratch");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut entries = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
            entries.push(entry.path());
        }
        entries.sort();
        for path in entries {
            let owner = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .and_then(|id| self.snapshots.get(&SnapshotId(id)));
            let problem = match owner {
                None => Problem::OrphanScratch { path: path.clone() },
                Some(rec) if matches!(rec.kind, SnapshotKind::Committed | SnapshotKind::View) => {
                    Problem::StaleScratch {
                        path: path.clone(),
                        snapshot: rec.name.clone(),
                        kind: rec.kind,
                    }
                }
                Some(_) => continue,
            };
            let fix = self.snapshots_known.then_some(Fix::RemoveScratch(path));
            self.fixable(problem, fix);
        }
        Ok(())
    }
}
