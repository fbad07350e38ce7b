//! The one tar writer that every layer and whole-tree export goes through, whichever backend
//! the tree comes from, so the same tree gives the same bytes (and the same diff id).
//!
//! The format: entries in the order the caller gives (layer order, `diff::LayerPath`), GNU
//! headers with numeric owners, no user or group names and no time but the mtime's seconds,
//! hard links as tar links to the first name written, extended attributes as PAX
//! `SCHILY.xattr.*` records, directories named with a trailing slash. Sockets are left out, as
//! `tar -c` leaves them out.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::HashingWriter;
use super::export::ExportReport;
use crate::records::FileKind;

/// What the header of an entry says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryMeta {
    pub(crate) kind: FileKind,
    pub(crate) perm: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Seconds; times before 1970 are written as 0.
    pub(crate) mtime: i64,
    /// The device number of a device node.
    pub(crate) rdev: u64,
    /// The content's length, for a regular file.
    pub(crate) size: u64,
}

/// Writes a layer tar and computes its diff id on the way.
pub(crate) struct LayerWriter<W: Write> {
    builder: tar::Builder<HashingWriter<W>>,
    /// The first name written of each multiply linked file, by the caller's identity for it.
    first_name: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
}

fn header(kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn with_meta(kind: tar::EntryType, m: &EntryMeta) -> tar::Header {
    let mut h = header(kind);
    h.set_mode(m.perm & 0o7777);
    h.set_uid(m.uid as u64);
    h.set_gid(m.gid as u64);
    h.set_mtime(m.mtime.max(0) as u64);
    h.set_size(0);
    h
}

fn os(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

impl<W: Write> LayerWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        LayerWriter {
            builder: tar::Builder::new(HashingWriter::new(out)),
            first_name: HashMap::new(),
            entries: 0,
        }
    }

    /// A whiteout or opaque marker: an empty regular file.
    pub(crate) fn marker(&mut self, path: &[u8]) -> io::Result<()> {
        self.entries += 1;
        let mut h = header(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        self.builder.append_data(&mut h, os(path), io::empty())
    }

    /// For a file with more than one name, identified by `link`: writes `path` as a hard link
    /// to the first name written and returns true, or, the first time, remembers `path` as that
    /// name and returns false (the caller then writes the entry).
    pub(crate) fn hard_link(
        &mut self,
        link: (u64, u64),
        path: &[u8],
        m: &EntryMeta,
    ) -> io::Result<bool> {
        if let Some(first) = self.first_name.get(&link) {
            self.entries += 1;
            let mut h = with_meta(tar::EntryType::Link, m);
            self.builder.append_link(&mut h, os(path), os(first))?;
            return Ok(true);
        }
        self.first_name.insert(link, path.to_vec());
        Ok(false)
    }

    /// Writes one entry: `xattrs` as PAX records, `target` for a symlink, and for a regular
    /// file `m.size` bytes of `content` (an active snapshot may be written while it is read:
    /// the header's size wins).
    pub(crate) fn entry(
        &mut self,
        path: &[u8],
        m: &EntryMeta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        target: &[u8],
        content: &mut dyn Read,
    ) -> io::Result<()> {
        self.entries += 1;
        let kind = match m.kind {
            FileKind::File => tar::EntryType::Regular,
            FileKind::Dir => tar::EntryType::Directory,
            FileKind::Symlink => tar::EntryType::Symlink,
            FileKind::CharDev => tar::EntryType::Char,
            FileKind::BlockDev => tar::EntryType::Block,
            FileKind::Fifo => tar::EntryType::Fifo,
            FileKind::Socket => return Ok(()),
        };
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(n, v)| {
                    (
                        format!("SCHILY.xattr.{}", String::from_utf8_lossy(n)),
                        v.as_slice(),
                    )
                })
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut h = with_meta(kind, m);
        match m.kind {
            FileKind::CharDev | FileKind::BlockDev => {
                h.set_device_major(libc::major(m.rdev))?;
                h.set_device_minor(libc::minor(m.rdev))?;
                self.builder.append_data(&mut h, os(path), io::empty())
            }
            FileKind::Symlink => self.builder.append_link(&mut h, os(path), os(target)),
            FileKind::File => {
                h.set_size(m.size);
                self.builder
                    .append_data(&mut h, os(path), content.take(m.size))
            }
            FileKind::Dir => {
                let mut p = path.to_vec();
                p.push(b'/');
                self.builder.append_data(&mut h, os(&p), io::empty())
            }
            _ => self.builder.append_data(&mut h, os(path), io::empty()),
        }
    }

    /// Ends the tar and returns the output with what was written.
    pub(crate) fn finish(self) -> io::Result<(W, ExportReport)> {
        let w = self.builder.into_inner()?;
        let (mut out, diff_id, bytes) = w.finish();
        out.flush()?;
        Ok((
            out,
            ExportReport {
                diff_id,
                entries: self.entries,
                bytes,
            },
        ))
    }
}
