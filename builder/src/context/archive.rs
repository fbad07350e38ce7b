//! Tar archives unpacked inside a root: the build context sent on stdin (`img build -`) and the
//! local archives `ADD` extracts. Every entry is written through `RootDir`, so no entry name,
//! hard link or earlier symlink in the archive can put a file outside the root.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use nix::sys::stat::SFlag;
use tar::EntryType;

use super::root::{self, Meta, RootDir};
use crate::dockerignore::clean;

/// Why an archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{archive}: entry {entry:?} points outside the destination")]
    Escape { archive: String, entry: String },
    #[error("{}", entry_message(archive, entry, source))]
    Entry {
        archive: String,
        entry: String,
        source: io::Error,
    },
    #[error("{archive}: {source}")]
    Read { archive: String, source: io::Error },
}

/// A full disk is said as imgfs says it (`no space left on device while ...`), naming the entry.
fn entry_message(archive: &str, entry: &str, source: &io::Error) -> String {
    if imgfs::space::is_no_space(source) {
        format!("no space left on device while unpacking {archive}: entry {entry:?}")
    } else {
        format!("{archive}: entry {entry:?}: {source}")
    }
}

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Whether a block of at least 512 bytes is a tar header: the checksum must add up, which is
/// what Docker's `IsArchive` effectively checks by reading a header.
pub(crate) fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == want
}

/// Opens a possibly compressed stream as a plain tar stream; bzip2, xz and zstd are named errors
/// because no crate for them is vendored here.
pub(crate) fn decompress<'a>(
    reader: impl Read + 'a,
    archive: &str,
) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf().map_err(|source| ArchiveError::Read {
        archive: archive.to_string(),
        source,
    })?;
    match sniff(head) {
        Compression::None => Ok(Box::new(reader)),
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(reader))),
        Compression::Bzip2 => Ok(Box::new(bzip2::read::MultiBzDecoder::new(reader))),
        Compression::Xz => Ok(Box::new(xz2::read::XzDecoder::new_multi_decoder(reader))),
        Compression::Zstd => Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(|source| {
                ArchiveError::Read {
                    archive: archive.to_string(),
                    source,
                }
            })?,
        )),
    }
}

/// Where an entry name lands under `dest_rel`, or None when it climbs out of it. A leading `/`
/// is relative to the destination, as Docker's untar treats it.
fn entry_target(dest_rel: &str, name: &str) -> Option<String> {
    let rel = clean(name.trim_start_matches('/'));
    if rel == ".." || rel.starts_with("../") {
        return None;
    }
    Some(match (dest_rel.is_empty(), rel.as_str()) {
        (_, ".") => dest_rel.to_string(),
        (true, r) => r.to_string(),
        (false, r) => format!("{dest_rel}/{r}"),
    })
}

/// Unpacks a plain tar stream into `dest_rel` inside `root`. With `keep_owner` the entries keep
/// the tar's uid and gid (ADD); otherwise they belong to root. Existing non-directories are
/// replaced; directory times are set after all entries are written.
pub(crate) fn unpack(
    reader: impl Read,
    root: &RootDir,
    dest_rel: &str,
    keep_owner: bool,
    archive_name: &str,
) -> Result<(), ArchiveError> {
    let read_err = |source| ArchiveError::Read {
        archive: archive_name.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut dir_times: Vec<(String, (i64, i64))> = Vec::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_err = |source| ArchiveError::Entry {
            archive: archive_name.to_string(),
            entry: name.clone(),
            source,
        };
        let escape = || ArchiveError::Escape {
            archive: archive_name.to_string(),
            entry: name.clone(),
        };
        let target = entry_target(dest_rel, &name).ok_or_else(escape)?;
        let header = entry.header().clone();
        let mtime = (header.mtime().unwrap_or(0) as i64, 0);
        let (uid, gid) = if keep_owner {
            (
                header.uid().unwrap_or(0) as u32,
                header.gid().unwrap_or(0) as u32,
            )
        } else {
            (0, 0)
        };
        let meta = Meta {
            mode: header.mode().unwrap_or(0o644),
            uid,
            gid,
            mtime: Some(mtime),
        };
        let kind = header.entry_type();
        // Docker's untar restores SCHILY.xattr.* pax records (file capabilities among them).
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(entry_err)? {
            for ext in pax {
                let ext = ext.map_err(entry_err)?;
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        if target == dest_rel {
            // The archive's own `./`: Docker would copy its metadata onto the destination;
            // the destination keeps what COPY/ADD gave it here instead.
            continue;
        }
        let (parent, leaf) = root::split(&target);
        let dir = root.mkdir_all(parent, 0, 0).map_err(entry_err)?;
        if kind != EntryType::Directory {
            root::remove_any(&dir, leaf).map_err(entry_err)?;
        }
        match kind {
            EntryType::Directory => {
                root::ensure_dir(&dir, leaf, &meta, &xattrs).map_err(entry_err)?;
                dir_times.push((target.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                root::write_file(&dir, leaf, &mut entry, &meta, &xattrs).map_err(entry_err)?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(entry_err)?
                    .ok_or_else(|| entry_err(io::ErrorKind::InvalidData.into()))?;
                root::write_symlink(&dir, leaf, &link, &meta).map_err(entry_err)?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(io::ErrorKind::InvalidData.into()))?;
                let link = String::from_utf8_lossy(&link).into_owned();
                let old = entry_target(dest_rel, &link).ok_or_else(escape)?;
                root.hard_link(&old, &dir, leaf).map_err(entry_err)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let rdev = libc::makedev(major, minor);
                match root::write_node(&dir, leaf, sflag, rdev, &meta) {
                    // Only root of the initial user namespace makes devices; elsewhere they are
                    // left out, as Docker's untar does in a user namespace, but not quietly.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) && kind != EntryType::Fifo => {
                        tracing::warn!(
                            "{archive_name}: skipping device {name} ({} {major}:{minor}): \
                             no permission to make devices here",
                            if kind == EntryType::Char {
                                "char"
                            } else {
                                "block"
                            }
                        );
                    }
                    r => r.map_err(entry_err)?,
                }
            }
            // Pax and GNU long-name headers are consumed by the tar crate; anything else
            // (sockets cannot be archived) is skipped as Docker's untar does.
            _ => {}
        }
    }
    // Children changed their parents' times; set directory times last, deepest first.
    for (rel, mtime) in dir_times.iter().rev() {
        if let Some(fd) = root.open_dir(rel).map_err(read_err)? {
            root::set_mtime(&fd, *mtime).map_err(read_err)?;
        }
    }
    Ok(())
}

/// Whether the file at `path` is an archive ADD should unpack: a tar, plain or compressed.
pub(crate) fn is_archive(path: &Path) -> io::Result<Option<Compression>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; 512];
    let n = read_full(&mut file, &mut head)?;
    let compression = sniff(&head[..n]);
    match compression {
        Compression::None => Ok(looks_like_tar(&head[..n]).then_some(Compression::None)),
        Compression::Gzip => {
            let file = std::fs::File::open(path)?;
            let mut dec = flate2::read::MultiGzDecoder::new(file);
            let mut block = [0u8; 512];
            let n = read_full(&mut dec, &mut block).unwrap_or(0);
            Ok(looks_like_tar(&block[..n]).then_some(Compression::Gzip))
        }
        // Without a decoder the inside cannot be checked; the magic number is taken as a tar,
        // and unpacking then names the missing support.
        other => Ok(Some(other)),
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
