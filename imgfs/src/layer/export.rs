//! Writing a snapshot as an OCI layer tar: its diff from its parent, or its whole tree.
//!
//! The output is deterministic: entries in layer order (`diff::LayerPath`), GNU headers with
//! numeric owners and no user or group names, hard links as tar links to the first name written,
//! extended attributes as PAX `SCHILY.xattr.*` records.

use std::io::{Read, Write};

use super::HashingWriter;
use super::diff::{Item, plan, plan_full};
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
    let mut builder = tar::Builder::new(HashingWriter::new(out));
    let mut first_name: std::collections::HashMap<Ino, Vec<u8>> = std::collections::HashMap::new();
    let mut entries = 0u64;
    let io = |e: std::io::Error| Error::io("write layer", e);
    for (path, item) in &items {
        let bytes = path.to_bytes();
        entries += 1;
        match item {
            Item::Whiteout | Item::Opaque => {
                let mut h = header(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                builder
                    .append_data(&mut h, os(&bytes), std::io::empty())
                    .map_err(io)?;
            }
            Item::Entry { ino } => write_entry(&top, &mut builder, *ino, &bytes, &mut first_name)?,
        }
    }
    let w = builder.into_inner().map_err(io)?;
    let (mut out, diff_id, bytes) = w.finish();
    out.flush().map_err(io)?;
    Ok(ExportReport {
        diff_id,
        entries,
        bytes,
    })
}

fn header(kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn os(b: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(b))
}

fn write_entry<W: Write>(
    tree: &Tree,
    builder: &mut tar::Builder<W>,
    ino: Ino,
    path: &[u8],
    first_name: &mut std::collections::HashMap<Ino, Vec<u8>>,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("write layer", e);
    let inode = tree.inode(ino)?;
    if inode.kind != FileKind::Dir && inode.links.len() > 1 {
        if let Some(first) = first_name.get(&ino) {
            let mut h = header(tar::EntryType::Link);
            h.set_mode(inode.perm);
            h.set_uid(inode.uid as u64);
            h.set_gid(inode.gid as u64);
            h.set_mtime(inode.mtime.sec.max(0) as u64);
            h.set_size(0);
            return builder.append_link(&mut h, os(path), os(first)).map_err(io);
        }
        first_name.insert(ino, path.to_vec());
    }
    if !inode.xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = inode
            .xattrs
            .iter()
            .map(|(n, v)| {
                (
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(n)),
                    v.as_slice(),
                )
            })
            .collect();
        builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(io)?;
    }
    let kind = match inode.kind {
        FileKind::File => tar::EntryType::Regular,
        FileKind::Dir => tar::EntryType::Directory,
        FileKind::Symlink => tar::EntryType::Symlink,
        FileKind::CharDev => tar::EntryType::Char,
        FileKind::BlockDev => tar::EntryType::Block,
        FileKind::Fifo => tar::EntryType::Fifo,
        FileKind::Socket => return Ok(()), // tar cannot carry sockets; tar -c skips them too
    };
    let mut h = header(kind);
    h.set_mode(inode.perm);
    h.set_uid(inode.uid as u64);
    h.set_gid(inode.gid as u64);
    h.set_mtime(inode.mtime.sec.max(0) as u64);
    h.set_size(0);
    if matches!(inode.kind, FileKind::CharDev | FileKind::BlockDev) {
        h.set_device_major(libc::major(inode.rdev)).map_err(io)?;
        h.set_device_minor(libc::minor(inode.rdev)).map_err(io)?;
    }
    match inode.kind {
        FileKind::Symlink => builder
            .append_link(&mut h, os(path), os(&inode.target))
            .map_err(io),
        FileKind::File => {
            h.set_size(inode.size);
            let reader = FileReader {
                tree,
                ino,
                pos: 0,
                size: inode.size,
                error: None,
            };
            let mut reader = reader;
            let r = builder.append_data(&mut h, os(path), &mut reader);
            if let Some(e) = reader.error {
                return Err(e);
            }
            r.map_err(io)
        }
        FileKind::Dir => {
            let mut p = path.to_vec();
            p.push(b'/');
            builder
                .append_data(&mut h, os(&p), std::io::empty())
                .map_err(io)
        }
        _ => builder
            .append_data(&mut h, os(path), std::io::empty())
            .map_err(io),
    }
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
