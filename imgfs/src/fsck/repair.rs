//! Repair: the fixes the checks collect, and applying them in a crash-safe order.

use std::path::PathBuf;

use super::{Checker, Report};
use crate::error::Result;
use crate::ids::PackId;
use crate::meta::Batch;
use crate::records::ChunkRecord;

/// A repair, applied only when repair was asked for.
pub(super) enum Fix {
    /// A put in the repair batch.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deleting a chunk record no extent names (in the batch). `punch` says whether its bytes can
    /// be freed too: only when they lie in the synced part of a recorded pack and no other chunk
    /// record shares them.
    DropChunk {
        rec: ChunkRecord,
        key: Vec<u8>,
        punch: bool,
    },
    RemovePack(PackId),
    RemoveScratch(PathBuf),
}

impl Checker<'_> {
    /// Applies the fixes (with `repair`) and sorts the problems into fixed and remaining. The
    /// metadata fixes go in one synced batch before any file is removed or punched, so a crash
    /// part-way leaves records that still describe every byte on disk.
    pub(super) fn finish(self) -> Result<Report> {
        let mut report = Report {
            counts: self.counts,
            ..Report::default()
        };
        if !self.repair {
            report.problems = self.found.into_iter().map(|(p, _)| p).collect();
            return Ok(report);
        }
        let store = self.store;
        let mut batch = Batch::default();
        let mut release = Vec::new();
        for fix in self
            .found
            .iter()
            .filter_map(|(_, f)| f.as_ref())
            .chain(&self.extra)
        {
            match fix {
                Fix::Put { key, value } => batch.put(key, value),
                Fix::DropChunk { rec, key, punch } => {
                    batch.delete(key);
                    if *punch {
                        release.push(*rec);
                    }
                }
                Fix::RemovePack(_) | Fix::RemoveScratch(_) => {}
            }
        }
        if !batch.is_empty() {
            tracing::warn!(writes = batch.len(), "fsck: repairing metadata");
            store.meta().write_to_free(batch, true)?;
        }
        store.chunks().release_chunks(&release)?;
        for (problem, fix) in self.found {
            let done = match &fix {
                None => false,
                Some(Fix::Put { .. } | Fix::DropChunk { .. }) => true,
                Some(Fix::RemovePack(pack)) => store.packs().remove_pack(*pack)?,
                Some(Fix::RemoveScratch(path)) => {
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(path)
                    } else {
                        std::fs::remove_file(path)
                    };
                    match removed {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "fsck: cannot remove scratch space");
                            false
                        }
                    }
                }
            };
            if done {
                tracing::info!(%problem, "fsck: repaired");
                report.repaired.push(problem);
            } else {
                report.problems.push(problem);
            }
        }
        Ok(report)
    }
}
