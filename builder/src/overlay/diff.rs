//! Writing an overlay upper dir as an OCI layer tar, byte for byte in imgfs's export format.
//!
//! Only the upper dir is walked (index, metacopy and redirect_dir are off, so it holds full
//! copies of everything that changed); the lower layers are only asked whether a whiteout or an
//! opaque mark hides anything, so that the layer lists the same entries imgfs's would. The
//! format follows `imgfs::layer::export`: entries in layer order (within a directory the opaque
//! marker, then whiteouts, then entries by name, each directory followed by its contents), GNU
//! headers with numeric owners and no names, hard links as tar links to the first name written,
//! xattrs as PAX `SCHILY.xattr.*` records.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use imgfs::layer::{ExportReport, OPAQUE_MARKER, WHITEOUT_PREFIX};
use imgfs::{Error, Result};
use sha2::{Digest, Sha256};

use super::sys;
use super::{io_err, lookup, os};

/// Writes the layer whose changes are in `upper` (none for a view) over `lowers`, nearest
/// first.
pub(crate) fn write_layer(
    upper: Option<&Path>,
    lowers: &[PathBuf],
    out: &mut dyn Write,
) -> Result<ExportReport> {
    let mut w = LayerWriter {
        builder: tar::Builder::new(HashingWriter {
            inner: out,
            hasher: Sha256::new(),
            count: 0,
        }),
        first_name: HashMap::new(),
        entries: 0,
        lowers,
    };
    if let Some(upper) = upper {
        let all: Vec<usize> = (0..lowers.len()).collect();
        w.dir(upper, Path::new(""), &all)?;
    }
    let hw = w.builder.into_inner().map_err(write_err)?;
    hw.inner.flush().map_err(write_err)?;
    Ok(ExportReport {
        diff_id: format!("sha256:{}", hex::encode(hw.hasher.finalize())),
        entries: w.entries,
        bytes: hw.count,
    })
}

fn write_err(e: io::Error) -> Error {
    io_err("write layer", e)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct LayerWriter<'a, W: Write> {
    builder: tar::Builder<HashingWriter<W>>,
    /// The first name written of each multiply linked inode, by (device, inode).
    first_name: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    lowers: &'a [PathBuf],
}

fn header(kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn tar_path(rel: &Path, name: &[u8]) -> Vec<u8> {
    let mut p = rel.as_os_str().as_bytes().to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl<W: Write> LayerWriter<'_, W> {
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

    /// A whiteout or opaque marker: an empty regular file.
    fn marker(&mut self, path: &[u8]) -> Result<()> {
        self.entries += 1;
        let mut h = header(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        self.builder
            .append_data(&mut h, os(path), io::empty())
            .map_err(write_err)
    }

    fn entry(&mut self, abs: &Path, path: &[u8], m: &Metadata) -> Result<()> {
        self.entries += 1;
        let ft = m.file_type();
        let perm = m.mode() & 0o7777;
        let mtime = m.mtime().max(0) as u64;
        if !ft.is_dir() && m.nlink() > 1 {
            if let Some(first) = self.first_name.get(&(m.dev(), m.ino())) {
                let mut h = header(tar::EntryType::Link);
                h.set_mode(perm);
                h.set_uid(m.uid() as u64);
                h.set_gid(m.gid() as u64);
                h.set_mtime(mtime);
                h.set_size(0);
                return self
                    .builder
                    .append_link(&mut h, os(path), os(first))
                    .map_err(write_err);
            }
            self.first_name.insert((m.dev(), m.ino()), path.to_vec());
        }
        let ctx = |e| io_err(format!("read {}", abs.display()), e);
        let xattrs = sys::layer_xattrs(abs).map_err(ctx)?;
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
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(write_err)?;
        }
        let kind = if ft.is_file() {
            tar::EntryType::Regular
        } else if ft.is_dir() {
            tar::EntryType::Directory
        } else if ft.is_symlink() {
            tar::EntryType::Symlink
        } else if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            return Ok(()); // tar cannot carry sockets; tar -c skips them too
        };
        let mut h = header(kind);
        h.set_mode(perm);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mtime(mtime);
        h.set_size(0);
        if ft.is_char_device() || ft.is_block_device() {
            h.set_device_major(libc::major(m.rdev()))
                .map_err(write_err)?;
            h.set_device_minor(libc::minor(m.rdev()))
                .map_err(write_err)?;
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(abs).map_err(ctx)?;
            return self
                .builder
                .append_link(&mut h, os(path), &target)
                .map_err(write_err);
        }
        if ft.is_file() {
            h.set_size(m.len());
            // An active snapshot may be written while it is read; the header's size wins.
            let f = std::fs::File::open(abs).map_err(ctx)?;
            return self
                .builder
                .append_data(&mut h, os(path), io::Read::take(f, m.len()))
                .map_err(write_err);
        }
        if ft.is_dir() {
            let mut p = path.to_vec();
            p.push(b'/');
            return self
                .builder
                .append_data(&mut h, os(&p), io::empty())
                .map_err(write_err);
        }
        self.builder
            .append_data(&mut h, OsStr::from_bytes(path), io::empty())
            .map_err(write_err)
    }
}
