//! Writing a snapshot as an OCI layer tar: its diff from its parent, or its whole tree.
//!
//! Entries go out in layer order (`diff::LayerPath`) through `writer::LayerWriter`, which fixes
//! the bytes.

use std::io::{Read, Write};

use super::diff::{Item, plan, plan_full};
use super::writer::{EntryMeta, LayerWriter};
use crate::error::{Error, Result};
use crate::ids::Ino;
use crate::records::FileKind;
use crate::store::Store;
use crate::tree::Tree;

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// sha256 of the tar written: the layer's diff id.
    pub diff_id: String,
    pub entries: u64,
    pub bytes: u64,
}

/// Writes the layer of snapshot `name` to `out`: its changes from its parent, or with `full` its
/// whole tree. The cost of a diff export is O(what the snapshot changed).
pub fn export_layer<W: Write>(
    store: &Store,
    name: &str,
    full: bool,
    out: W,
) -> Result<ExportReport> {
    let top = store.tree_read_only(name)?;
    let parent = match top.record().parent {
        Some(p) if !full => Some(store.tree_read_only(&store.record(p)?.name)?),
        _ => None,
    };
    let items = match (&parent, full) {
        (_, true) | (None, _) => plan_full(&top)?,
        (Some(p), false) => plan(&top, Some(p), &[top.record().id], true)?,
    };
    let mut w = LayerWriter::new(out);
    let io = |e: std::io::Error| Error::io("write layer", e);
    for (path, item) in &items {
        let bytes = path.to_bytes();
        match item {
            Item::Whiteout | Item::Opaque => w.marker(&bytes).map_err(io)?,
            Item::Entry { ino } => write_entry(&top, &mut w, *ino, &bytes)?,
        }
    }
    let (_, report) = w.finish().map_err(io)?;
    Ok(report)
}

fn write_entry<W: Write>(tree: &Tree, w: &mut LayerWriter<W>, ino: Ino, path: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::io("write layer", e);
    let inode = tree.inode(ino)?;
    let meta = EntryMeta {
        kind: inode.kind,
        perm: inode.perm,
        uid: inode.uid,
        gid: inode.gid,
        mtime: inode.mtime.sec,
        rdev: inode.rdev,
        size: inode.size,
    };
    if inode.kind != FileKind::Dir
        && inode.links.len() > 1
        && w.hard_link((ino.0, 0), path, &meta).map_err(io)?
    {
        return Ok(());
    }
    let size = if inode.kind == FileKind::File {
        inode.size
    } else {
        0
    };
    // The tar writer copies 8 KiB at a time, and each `Tree::read` looks the file's extents and
    // chunks up again: reading up to 1 MiB at once makes that once per 16 chunks.
    let mut reader = std::io::BufReader::with_capacity(
        size.clamp(1, 1 << 20) as usize,
        FileReader {
            tree,
            ino,
            pos: 0,
            size,
            error: None,
        },
    );
    let r = w.entry(path, &meta, &inode.xattrs, &inode.target, &mut reader);
    if let Some(e) = reader.into_inner().error {
        return Err(e);
    }
    r.map_err(io)
}

/// Reads a file's content from a tree, for the tar builder.
struct FileReader<'a> {
    tree: &'a Tree,
    ino: Ino,
    pos: u64,
    size: u64,
    error: Option<Error>,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size {
            return Ok(0);
        }
        let want = buf.len().min(1 << 20).min((self.size - self.pos) as usize) as u32;
        match self.tree.read(self.ino, self.pos, want) {
            Ok(data) => {
                buf[..data.len()].copy_from_slice(&data);
                self.pos += data.len() as u64;
                Ok(data.len())
            }
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(std::io::Error::other(msg))
            }
        }
    }
}
