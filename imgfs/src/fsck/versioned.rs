//! Checks 2, 3 and 6 over the versioned keys: inode, dentry and extent versions decode, belong to
//! a snapshot and are in its change index; entries lead to inodes; dirty extents have scratch.

use std::collections::HashMap;

use super::{Checker, Problem, Refs};
use crate::error::Result;
use crate::ids::{DataId, Ino, SnapshotId};
use crate::meta::key::{self, Base, Key};
use crate::records::{Dentry, Extent, FileKind, Inode, SnapshotKind};

impl Checker<'_> {
    /// Checks 2, 3 and 6, and the reference counting half of 4: every inode, dentry and extent
    /// version decodes, belongs to a snapshot, is in its change index; entries lead to inodes the
    /// snapshot sees; dirty extents are in active snapshots and have their scratch file.
    pub(super) fn versioned(&mut self) -> Result<()> {
        let meta = self.meta;
        let mut scratch_seen: HashMap<(SnapshotId, DataId), bool> = HashMap::new();
        for tag in [key::INODE, key::DENTRY, key::EXTENT] {
            let mut scan = meta.prefix(&[tag]);
            while let Some((k, v)) = scan.next_entry()? {
                let Some(Key::Version { base: parsed, snap }) = Key::parse(k) else {
                    self.bad_key(k);
                    if tag == key::EXTENT {
                        self.extents_known = false;
                    }
                    continue;
                };
                if !self.snapshots.contains_key(&snap) {
                    self.problem(Problem::UnknownSnapshot {
                        what: parsed.to_string(),
                        snapshot: snap,
                    });
                }
                if meta.get(&parsed.change(snap))?.is_none() {
                    self.problem(Problem::MissingChange {
                        what: parsed.to_string(),
                        snapshot: self.name_of(snap),
                    });
                }
                match parsed {
                    Base::Inode(ino) => {
                        self.counts.inode_versions += 1;
                        self.note_id(ino.0);
                        match Inode::decode(v) {
                            Ok(inode) => {
                                self.note_id(inode.data.map_or(0, |d| d.0));
                                if let Some(pack) = inode.object {
                                    self.objects.push((snap, ino, inode.data, inode.size, pack));
                                }
                            }
                            Err(e) => self.bad_value(snap, &parsed, e),
                        }
                    }
                    Base::Dentry { dir, .. } => {
                        self.counts.dentry_versions += 1;
                        self.note_id(dir.0);
                        match Dentry::decode(v) {
                            Ok(Dentry::Entry { ino, kind }) => {
                                self.note_id(ino.0);
                                self.check_entry(snap, &parsed, ino, kind)?;
                            }
                            Ok(Dentry::Deleted) => {}
                            Err(e) => self.bad_value(snap, &parsed, e),
                        }
                    }
                    Base::Extent { data, index } => {
                        self.counts.extent_versions += 1;
                        self.note_id(data.0);
                        match Extent::decode(v) {
                            Ok(Extent::Stored { digest, len }) => {
                                let importing = self
                                    .snapshots
                                    .get(&snap)
                                    .is_some_and(|r| r.kind == SnapshotKind::Importing);
                                let refs = self.refs.entry(digest).or_insert(Refs {
                                    count: 0,
                                    first: (snap, data, index, len),
                                    importing_only: true,
                                });
                                refs.count += 1;
                                refs.importing_only &= importing;
                            }
                            Ok(Extent::Dirty { .. }) => {
                                self.check_dirty(snap, &parsed, data, &mut scratch_seen)
                            }
                            Ok(Extent::Zero) => {}
                            Err(e) => {
                                self.extents_known = false;
                                self.bad_value(snap, &parsed, e);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Check 3: the inode an entry names has a version visible from the entry's snapshot.
    fn check_entry(
        &mut self,
        snap: SnapshotId,
        what: &Base,
        ino: Ino,
        kind: FileKind,
    ) -> Result<()> {
        let Some(chain) = self.chains.get(&snap) else {
            // The snapshot has no record (reported): there is no chain to look through.
            return Ok(());
        };
        match self.meta.visible(&key::inode_base(ino), chain)? {
            None => self.problem(Problem::DanglingEntry {
                snapshot: self.name_of(snap),
                what: what.to_string(),
                ino,
            }),
            // An inode version that does not decode is reported by the inode scan.
            Some((_, v)) => {
                if let Ok(inode) = Inode::decode(&v)
                    && inode.kind != kind
                {
                    self.problem(Problem::EntryKindMismatch {
                        snapshot: self.name_of(snap),
                        what: what.to_string(),
                        ino,
                        entry: kind,
                        inode: inode.kind,
                    });
                }
            }
        }
        Ok(())
    }

    /// Check 6. Importing snapshots may hold dirty extents too: they are writable trees like
    /// active ones, and an unfinished import is already reported on its own.
    fn check_dirty(
        &mut self,
        snap: SnapshotId,
        what: &Base,
        data: DataId,
        seen: &mut HashMap<(SnapshotId, DataId), bool>,
    ) {
        let Some(kind) = self.snapshots.get(&snap).map(|r| r.kind) else {
            return;
        };
        if !matches!(kind, SnapshotKind::Active | SnapshotKind::Importing) {
            self.problem(Problem::DirtyOutsideActive {
                snapshot: self.name_of(snap),
                kind,
                what: what.to_string(),
            });
            return;
        }
        let path = self.store.scratch_path(snap);
        let exists = *seen.entry((snap, data)).or_insert_with(|| path.is_file());
        if !exists {
            self.problem(Problem::MissingScratch {
                snapshot: self.name_of(snap),
                what: what.to_string(),
                path,
            });
        }
    }
}
