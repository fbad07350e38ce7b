//! What changed between two snapshots, computed from change indexes rather than tree walks.
//!
//! The candidates are the directory entries and inodes that the snapshots between the two trees
//! wrote (their `X` keys). Each candidate name is compared in both trees; only directories that
//! are new or replaced are walked, because an OCI layer has to spell out all of their contents.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::ids::{Ino, SnapshotId};
use crate::meta::key::Base;
use crate::records::FileKind;
use crate::tree::Tree;

/// How a path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One changed path, as `imgfs diff` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: Vec<u8>,
    pub kind: ChangeKind,
}

/// One entry of a layer, in layer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// The inode at this path, as the top tree has it.
    Entry { ino: Ino },
    /// The name at this path is deleted (`.wh.name`).
    Whiteout,
    /// The directory at this path hides everything lower layers had in it (`.wh..wh..opq`).
    Opaque,
}

/// A path as components, each ranked so that within a directory the opaque marker comes first,
/// then whiteouts, then entries by name (the OCI spec asks for whiteouts before siblings).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LayerPath(Vec<(u8, Vec<u8>)>);

impl LayerPath {
    fn child(&self, name: &[u8], rank: u8) -> LayerPath {
        let mut v = self.0.clone();
        v.push((rank, name.to_vec()));
        LayerPath(v)
    }

    /// The path as it is written in a tar, with whiteout prefixes applied.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (rank, name)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            match rank {
                0 => out.extend_from_slice(OPAQUE_MARKER),
                1 => {
                    out.extend_from_slice(WHITEOUT_PREFIX);
                    out.extend_from_slice(name);
                }
                _ => out.extend_from_slice(name),
            }
        }
        out
    }

    fn plain(&self) -> Vec<u8> {
        self.0
            .iter()
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>()
            .join(&b'/')
    }
}

const RANK_OPAQUE: u8 = 0;
const RANK_WHITEOUT: u8 = 1;
const RANK_ENTRY: u8 = 2;

/// Computes the layer that turns `base` (or an empty tree) into `top`. `snaps` are the snapshots
/// whose changes separate the two trees; with `parents`, every directory above a changed path is
/// included too, as layer tars do.
pub(crate) fn plan(
    top: &Tree,
    base: Option<&Tree>,
    snaps: &[SnapshotId],
    parents: bool,
) -> Result<Vec<(LayerPath, Item)>> {
    let meta = &top.store().meta();
    let mut candidates: BTreeSet<(Ino, Vec<u8>)> = BTreeSet::new();
    let mut inodes: BTreeSet<Ino> = BTreeSet::new();
    for &snap in snaps {
        for base in meta.changes(snap) {
            match base? {
                Base::Dentry { dir, name } => {
                    candidates.insert((dir, name));
                }
                Base::Inode(ino) => {
                    inodes.insert(ino);
                }
                Base::Extent { .. } => {}
            }
        }
    }
    for ino in inodes {
        if ino == Ino::ROOT {
            continue;
        }
        for tree in [Some(top), base].into_iter().flatten() {
            if let Ok(inode) = tree.inode(ino) {
                for l in inode.links {
                    candidates.insert((l.dir, l.name));
                }
            }
        }
    }

    let mut paths = PathCache::default();
    let mut items: BTreeMap<LayerPath, Item> = BTreeMap::new();
    for (dir, name) in candidates {
        let Some(dir_path) = paths.path_of(top, dir)? else {
            continue;
        };
        let t = top.entry(dir, &name)?;
        let b = match base {
            Some(base) => base.entry(dir, &name)?,
            None => None,
        };
        let here = dir_path.child(&name, RANK_ENTRY);
        match (t, b) {
            (None, None) => {}
            (None, Some(_)) => {
                items.insert(dir_path.child(&name, RANK_WHITEOUT), Item::Whiteout);
            }
            (Some((ino, kind)), b) => {
                let same = b.is_some_and(|(bino, _)| bino == ino);
                if same {
                    let base = base.expect("an entry in base means there is a base");
                    if !same_in_layer(&top.inode(ino)?, &base.inode(ino)?) {
                        items.insert(here, Item::Entry { ino });
                    }
                    continue;
                }
                items.insert(here.clone(), Item::Entry { ino });
                if kind == FileKind::Dir {
                    if matches!(b, Some((_, FileKind::Dir))) {
                        items.insert(here.child(b"", RANK_OPAQUE), Item::Opaque);
                    }
                    walk(top, ino, &here, &mut items)?;
                }
            }
        }
    }
    if parents {
        let mut extra = Vec::new();
        for path in items.keys() {
            let mut at = Ino::ROOT;
            let comps = &path.0;
            for i in 0..comps.len().saturating_sub(1) {
                let prefix = LayerPath(comps[..=i].to_vec());
                let Some((ino, _)) = top.entry(at, &comps[i].1)? else {
                    break;
                };
                if !items.contains_key(&prefix) {
                    extra.push((prefix, Item::Entry { ino }));
                }
                at = ino;
            }
        }
        items.extend(extra);
    }
    Ok(items.into_iter().collect())
}

/// True if a layer tar would describe both versions of an inode alike. Access and change times
/// are not in a layer, so an inode only touched (say, a directory that gained and lost an entry
/// and got its mtime back, as the builder's mount points do) is not a change.
fn same_in_layer(a: &crate::records::Inode, b: &crate::records::Inode) -> bool {
    a.kind == b.kind
        && a.perm == b.perm
        && a.uid == b.uid
        && a.gid == b.gid
        && a.size == b.size
        && a.rdev == b.rdev
        && a.mtime == b.mtime
        && a.data == b.data
        && a.target == b.target
        && a.links == b.links
        && a.xattrs == b.xattrs
}

/// Every entry below directory `dir`, depth first in name order.
fn walk(
    tree: &Tree,
    dir: Ino,
    path: &LayerPath,
    items: &mut BTreeMap<LayerPath, Item>,
) -> Result<()> {
    for e in tree.readdir(dir)? {
        let p = path.child(&e.name, RANK_ENTRY);
        items.insert(p.clone(), Item::Entry { ino: e.ino });
        if e.kind == FileKind::Dir {
            walk(tree, e.ino, &p, items)?;
        }
    }
    Ok(())
}

/// The whole tree, for a full (flattened) export.
pub(crate) fn plan_full(tree: &Tree) -> Result<Vec<(LayerPath, Item)>> {
    let mut items = BTreeMap::new();
    walk(tree, Ino::ROOT, &LayerPath(Vec::new()), &mut items)?;
    Ok(items.into_iter().collect())
}

/// Paths of directories in a tree, found by following back-links up to the root.
#[derive(Default)]
struct PathCache {
    known: HashMap<Ino, Option<LayerPath>>,
}

impl PathCache {
    /// The path of directory `dir`, or `None` if it is not reachable (deleted, or below a
    /// deleted directory).
    fn path_of(&mut self, tree: &Tree, dir: Ino) -> Result<Option<LayerPath>> {
        if dir == Ino::ROOT {
            return Ok(Some(LayerPath(Vec::new())));
        }
        if let Some(p) = self.known.get(&dir) {
            return Ok(p.clone());
        }
        let mut seen = HashSet::new();
        let path = self.resolve(tree, dir, &mut seen)?;
        self.known.insert(dir, path.clone());
        Ok(path)
    }

    fn resolve(
        &mut self,
        tree: &Tree,
        dir: Ino,
        seen: &mut HashSet<Ino>,
    ) -> Result<Option<LayerPath>> {
        if !seen.insert(dir) {
            return Err(Error::Corrupt(format!(
                "directory {dir} is its own ancestor"
            )));
        }
        let inode = match tree.inode(dir) {
            Ok(i) => i,
            Err(Error::Stale(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(link) = inode.links.first() else {
            return Ok(None);
        };
        if tree.entry(link.dir, &link.name)?.map(|(i, _)| i) != Some(dir) {
            return Ok(None);
        }
        let parent = if link.dir == Ino::ROOT {
            Some(LayerPath(Vec::new()))
        } else if let Some(p) = self.known.get(&link.dir) {
            p.clone()
        } else {
            let p = self.resolve(tree, link.dir, seen)?;
            self.known.insert(link.dir, p.clone());
            p
        };
        Ok(parent.map(|p| p.child(&link.name, RANK_ENTRY)))
    }
}

/// Lists what changed from `base` (or an empty tree) to `top`, using the change indexes of the
/// snapshots between them and their common ancestor.
pub fn changes(top: &Tree, base: Option<&Tree>) -> Result<Vec<Change>> {
    let store = top.store();
    let top_chain = store.chain(top.record())?;
    let base_ids: HashSet<SnapshotId> = match base {
        Some(b) => store.chain(b.record())?.ids().iter().copied().collect(),
        None => HashSet::new(),
    };
    let top_ids: HashSet<SnapshotId> = top_chain.ids().iter().copied().collect();
    let snaps: Vec<SnapshotId> = top_ids.symmetric_difference(&base_ids).copied().collect();
    let plan = plan(top, base, &snaps, false)?;
    let mut out = Vec::new();
    for (path, item) in plan {
        let plain = path.plain();
        let kind = match item {
            Item::Opaque => continue,
            Item::Whiteout => ChangeKind::Deleted,
            Item::Entry { .. } => match base {
                Some(b) if b.resolve(&plain, false).is_ok() => ChangeKind::Modified,
                _ => ChangeKind::Added,
            },
        };
        out.push(Change { path: plain, kind });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
