//! Writing overlay snapshots as tars through `layer::writer`, so they come out byte for byte as
//! imgfs's do: an upper dir as an OCI layer (`write_layer`), or a whole stack of layer dirs
//! merged as overlayfs would show it (`write_tree`), without mounting anything.
//!
//! For a layer only the upper dir is walked (index, metacopy and redirect_dir are off, so it
//! holds full copies of everything that changed); the lower layers are only asked whether a
//! whiteout or an opaque mark hides anything, so that the layer lists the same entries imgfs's
//! would. Within a directory the opaque marker comes first, then whiteouts, then entries by
//! name, each directory followed by its contents.

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer::writer::{EntryMeta, LayerWriter};
use crate::layer::{ExportReport, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::records::FileKind;
use crate::{Error, Result};

use super::sys;
use super::{io_err, lookup, os};

/// Writes the layer whose changes are in `upper` (none for a view) over `lowers`, nearest
/// first.
pub(crate) fn write_layer(
    upper: Option<&Path>,
    lowers: &[PathBuf],
    out: &mut dyn Write,
) -> Result<ExportReport> {
    let mut w = Walker {
        w: LayerWriter::new(out),
        lowers,
    };
    if let Some(upper) = upper {
        let all: Vec<usize> = (0..lowers.len()).collect();
        w.dir(upper, Path::new(""), &all)?;
    }
    let (_, report) = w.w.finish().map_err(write_err)?;
    Ok(report)
}

/// Writes the whole tree that the stack `layers` (nearest first) shows when merged.
pub(crate) fn write_tree(layers: &[PathBuf], out: &mut dyn Write) -> Result<ExportReport> {
    let mut w = Walker {
        w: LayerWriter::new(out),
        lowers: layers,
    };
    let all: Vec<usize> = (0..layers.len()).collect();
    w.merged(Path::new(""), &all)?;
    let (_, report) = w.w.finish().map_err(write_err)?;
    Ok(report)
}

fn write_err(e: io::Error) -> Error {
    io_err("write layer", e)
}

struct Walker<'a, W: Write> {
    w: LayerWriter<W>,
    lowers: &'a [PathBuf],
}

fn tar_path(rel: &Path, name: &[u8]) -> Vec<u8> {
    let mut p = rel.as_os_str().as_bytes().to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl<W: Write> Walker<'_, W> {
    /// Writes the contents of directory `rel` of `upper`; `merging` are the lower layers whose
    /// `rel` shows through it.
    fn dir(&mut self, upper: &Path, rel: &Path, merging: &[usize]) -> Result<()> {
        let abs = upper.join(rel);
        let ctx = |e| io_err(format!("read {}", abs.display()), e);
        let mut list: Vec<(Vec<u8>, Metadata)> = Vec::new();
        for ent in std::fs::read_dir(&abs).map_err(ctx)? {
            let ent = ent.map_err(ctx)?;
            let m = std::fs::symlink_metadata(ent.path()).map_err(ctx)?;
            list.push((ent.file_name().as_bytes().to_vec(), m));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::new();
        for (name, m) in list {
            let path = abs.join(os(&name));
            if sys::is_whiteout(&path, &m).map_err(ctx)? {
                // A whiteout that hides nothing (overlayfs leaves some behind) is no change.
                if self.lower(merging, rel, &name)?.is_some() {
                    let mut p = tar_path(rel, WHITEOUT_PREFIX);
                    p.extend_from_slice(&name);
                    self.marker(&p)?;
                }
            } else {
                entries.push((name, m));
            }
        }
        for (name, m) in entries {
            let p = tar_path(rel, &name);
            let path = abs.join(os(&name));
            self.entry(&path, &p, &m)?;
            if m.is_dir() {
                let child = rel.join(os(&name));
                let lower = self.lower(merging, rel, &name)?.filter(|h| h.meta.is_dir());
                let opaque = sys::is_opaque(&path).map_err(ctx)?;
                if opaque && lower.is_some() {
                    let mut marker = p.clone();
                    marker.push(b'/');
                    marker.extend_from_slice(OPAQUE_MARKER);
                    self.marker(&marker)?;
                }
                let below = match lower {
                    Some(h) if !opaque => h.merging,
                    _ => Vec::new(),
                };
                self.dir(upper, &child, &below)?;
            }
        }
        Ok(())
    }

    fn lower(&self, merging: &[usize], rel: &Path, name: &[u8]) -> Result<Option<super::Hit>> {
        lookup(self.lowers, merging, rel, os(name))
            .map_err(|e| io_err(format!("look up {}", rel.join(os(name)).display()), e))
    }

    /// A whiteout or opaque marker.
    fn marker(&mut self, path: &[u8]) -> Result<()> {
        self.w.marker(path).map_err(write_err)
    }

    /// Writes directory `rel` of the merge of `merging` (indexes into the stack, nearest
    /// first) and everything below it: what overlayfs would show there.
    fn merged(&mut self, rel: &Path, merging: &[usize]) -> Result<()> {
        let mut names = BTreeSet::new();
        for &i in merging {
            let abs = self.lowers[i].join(rel);
            let ctx = |e| io_err(format!("read {}", abs.display()), e);
            for ent in std::fs::read_dir(&abs).map_err(ctx)? {
                names.insert(ent.map_err(ctx)?.file_name().as_bytes().to_vec());
            }
        }
        for name in names {
            let Some(hit) = self.lower(merging, rel, &name)? else {
                continue; // hidden by a whiteout
            };
            let path = self.lowers[hit.layer].join(rel).join(os(&name));
            self.entry(&path, &tar_path(rel, &name), &hit.meta)?;
            if hit.meta.is_dir() {
                self.merged(&rel.join(os(&name)), &hit.merging)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, abs: &Path, path: &[u8], m: &Metadata) -> Result<()> {
        let kind = sys::file_kind(m);
        let meta = EntryMeta {
            kind,
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
            rdev: m.rdev(),
            size: m.len(),
        };
        if kind != FileKind::Dir
            && m.nlink() > 1
            && self
                .w
                .hard_link((m.dev(), m.ino()), path, &meta)
                .map_err(write_err)?
        {
            return Ok(());
        }
        let ctx = |e| io_err(format!("read {}", abs.display()), e);
        let xattrs = sys::layer_xattrs(abs).map_err(ctx)?;
        let target = if kind == FileKind::Symlink {
            std::fs::read_link(abs)
                .map_err(ctx)?
                .into_os_string()
                .into_vec()
        } else {
            Vec::new()
        };
        let mut content: Box<dyn io::Read> = if kind == FileKind::File {
            Box::new(std::fs::File::open(abs).map_err(ctx)?)
        } else {
            Box::new(io::empty())
        };
        self.w
            .entry(path, &meta, &xattrs, &target, &mut content)
            .map_err(write_err)
    }
}
