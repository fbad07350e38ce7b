//! `LayerBuilder`: OCI layer tars described entry by entry in tests, plus the tree GNU tar would
//! make of them (`expected_manifest`); hostile archives live in the `hostile` submodule.
//!
//! Everything here goes through the `tar` crate's path-checking API, so a well-formed description
//! yields a well-formed tar. Archives that break the rules on purpose are written byte by byte,
//! through `LayerBuilder::raw_*` or the ready-made makers in `hostile`.

pub mod hostile;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::manifest::{Entry, Kind, Manifest};

/// The mtime given to entries that do not set one: fixed, so that the same description always
/// yields the same bytes (and digests), and far from both 0 and "now", so a test can tell a
/// preserved mtime from a reset or a fresh one.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// The name prefix OCI uses to mark a deleted path: `dir/.wh.name` deletes `dir/name`.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// The file whose presence in a directory hides everything below it in lower layers.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The tar block size; headers and data are padded to it.
const BLOCK: usize = 512;

/// Builds a layer tar from a list of described entries, in the order they are added.
///
/// Entry methods consume and return the builder so a layer reads as one expression. Modifiers
/// (`owner`, `mtime`, `mode`, `xattr`, `with_xattrs`) change the entry added last; they were
/// preferred over a "state for the next entries" design because a test then reads top to bottom
/// with each entry's properties written next to it. Paths are relative; a trailing slash is added
/// to directory names as Docker and BuildKit do.
///
/// The builder panics on descriptions the `tar` crate rejects (absolute paths, `..`): a
/// description is test code, and a mistake in it is a bug to fix, not an error to handle. Use the
/// `raw_*` methods to put such names into an archive on purpose.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    items: Vec<Item>,
}

#[derive(Clone, Debug)]
enum Item {
    Entry(EntrySpec),
    /// Pre-built blocks copied verbatim into the archive.
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
struct EntrySpec {
    path: PathBuf,
    body: Body,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum Body {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Hardlink(PathBuf),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    /// Adds a directory.
    pub fn dir(self, path: impl AsRef<Path>, mode: u32) -> LayerBuilder {
        self.entry(path, Body::Dir, mode)
    }

    /// Adds a regular file with the given content.
    pub fn file(
        self,
        path: impl AsRef<Path>,
        mode: u32,
        content: impl AsRef<[u8]>,
    ) -> LayerBuilder {
        self.entry(path, Body::File(content.as_ref().to_vec()), mode)
    }

    /// Adds a symlink; the target is stored as given, absolute or not.
    pub fn symlink(self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> LayerBuilder {
        self.entry(path, Body::Symlink(target.as_ref().to_path_buf()), 0o777)
    }

    /// Adds a hard link to `target`, a path (relative to the layer root) added earlier.
    pub fn hardlink(self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> LayerBuilder {
        self.entry(path, Body::Hardlink(target.as_ref().to_path_buf()), 0o644)
    }

    /// Adds a character device node, mode 0600 unless `mode` follows.
    pub fn char_dev(self, path: impl AsRef<Path>, major: u32, minor: u32) -> LayerBuilder {
        self.entry(path, Body::CharDevice(major, minor), 0o600)
    }

    /// Adds a block device node, mode 0600 unless `mode` follows.
    pub fn block_dev(self, path: impl AsRef<Path>, major: u32, minor: u32) -> LayerBuilder {
        self.entry(path, Body::BlockDevice(major, minor), 0o600)
    }

    /// Adds a fifo, mode 0644 unless `mode` follows.
    pub fn fifo(self, path: impl AsRef<Path>) -> LayerBuilder {
        self.entry(path, Body::Fifo, 0o644)
    }

    /// Marks `path` as deleted: adds the empty file `parent/.wh.name`.
    pub fn whiteout(self, path: impl AsRef<Path>) -> LayerBuilder {
        let path = path.as_ref();
        let name = path
            .file_name()
            .unwrap_or_else(|| panic!("cannot white out {path:?}: it has no file name"));
        let mut marker = std::ffi::OsString::from(WHITEOUT_PREFIX);
        marker.push(name);
        let marker = path.parent().unwrap_or(Path::new("")).join(marker);
        self.entry(marker, Body::File(Vec::new()), 0o644)
    }

    /// Marks directory `dir` as opaque: adds the empty file `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: impl AsRef<Path>) -> LayerBuilder {
        let marker = dir.as_ref().join(OPAQUE_MARKER);
        self.entry(marker, Body::File(Vec::new()), 0o644)
    }

    /// Sets the owner of the entry added last (entries default to 0:0).
    pub fn owner(mut self, uid: u32, gid: u32) -> LayerBuilder {
        let spec = self.last_entry("owner");
        spec.uid = uid;
        spec.gid = gid;
        self
    }

    /// Sets the mtime (seconds since the epoch) of the entry added last (default `DEFAULT_MTIME`).
    pub fn mtime(mut self, mtime: u64) -> LayerBuilder {
        self.last_entry("mtime").mtime = mtime;
        self
    }

    /// Sets the permission bits of the entry added last, e.g. for a device node.
    pub fn mode(mut self, mode: u32) -> LayerBuilder {
        self.last_entry("mode").mode = mode;
        self
    }

    /// Attaches an extended attribute to the entry added last, written as a PAX
    /// `SCHILY.xattr.<name>` record in an extended header just before the entry.
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> LayerBuilder {
        let value = value.as_ref().to_vec();
        self.last_entry("xattr")
            .xattrs
            .push((name.to_owned(), value));
        self
    }

    /// `xattr` for several attributes at once.
    pub fn with_xattrs<N, V>(mut self, xattrs: impl IntoIterator<Item = (N, V)>) -> LayerBuilder
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let spec = self.last_entry("with_xattrs");
        for (name, value) in xattrs {
            spec.xattrs
                .push((name.as_ref().to_owned(), value.as_ref().to_vec()));
        }
        self
    }

    /// Adds a regular file whose name is written into the header verbatim (at most 100 bytes),
    /// bypassing every check: `../x`, `/abs/x` and `a/../../x` all go through.
    pub fn raw_file(self, name: impl AsRef<[u8]>, mode: u32, content: &[u8]) -> LayerBuilder {
        let header = raw_header(
            name.as_ref(),
            EntryType::Regular,
            mode,
            content.len() as u64,
            b"",
        );
        self.raw(padded(header.as_bytes(), content))
    }

    /// Adds a symlink whose name and target are written verbatim.
    pub fn raw_symlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> LayerBuilder {
        let header = raw_header(name.as_ref(), EntryType::Symlink, 0o777, 0, target.as_ref());
        self.raw(header.as_bytes().to_vec())
    }

    /// Adds a hard link whose name and target are written verbatim, e.g. a target outside the
    /// layer (`../../etc/passwd`) or one that the archive never contains.
    pub fn raw_hardlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> LayerBuilder {
        let header = raw_header(name.as_ref(), EntryType::Link, 0o644, 0, target.as_ref());
        self.raw(header.as_bytes().to_vec())
    }

    /// Appends bytes verbatim at this point of the archive. They should be whole 512-byte blocks
    /// unless breaking the block structure is the point of the test.
    pub fn raw(mut self, bytes: Vec<u8>) -> LayerBuilder {
        self.items.push(Item::Raw(bytes));
        self
    }

    /// The tar: every item in order, then the two zero blocks that end an archive.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing a tar into memory cannot fail for a valid description");
        out
    }

    /// `finish`, gzip-compressed as in an `application/vnd.oci.image.layer.v1.tar+gzip` blob.
    pub fn finish_gzip(self) -> Vec<u8> {
        gzip(&self.finish())
    }

    /// Writes the tar to `out`. Errors are I/O errors from `out`, or a description the `tar`
    /// crate rejects.
    pub fn write_to(self, out: impl Write) -> io::Result<()> {
        let mut builder = tar::Builder::new(out);
        for item in &self.items {
            match item {
                Item::Raw(bytes) => builder.get_mut().write_all(bytes)?,
                Item::Entry(spec) => append_entry(&mut builder, spec).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("failed to write {:?} into the layer: {err}", spec.path),
                    )
                })?,
            }
        }
        builder.into_inner()?.flush()
    }

    /// The manifest of the tree GNU tar (`gnutar::extract_with_gnu_tar`) makes of this layer in an
    /// empty directory: described entries only (not parent directories that were never added, nor
    /// `raw_*` items), later entries for a path replacing earlier ones, whiteout and opaque markers
    /// as the plain empty files GNU tar leaves, and hard links as a group sharing their target's
    /// metadata.
    pub fn expected_manifest(&self) -> Manifest {
        let mut entries: HashMap<PathBuf, Entry> = HashMap::new();
        // Hard-link groups by member; an entry that later replaces a member leaves the group,
        // just as tar unlinks the old name before creating the new file.
        let mut group_of: HashMap<PathBuf, usize> = HashMap::new();
        let mut groups: Vec<Vec<PathBuf>> = Vec::new();
        for item in &self.items {
            let Item::Entry(spec) = item else { continue };
            let path = normalize(&spec.path);
            if let Some(group) = group_of.remove(&path) {
                groups[group].retain(|member| member != &path);
            }
            let entry = match &spec.body {
                Body::Hardlink(target) => {
                    let target = normalize(target);
                    let entry = entries.get(&target).cloned().unwrap_or_else(|| {
                        panic!("hard link {path:?} points at {target:?}, which was not described")
                    });
                    let group = *group_of.entry(target.clone()).or_insert_with(|| {
                        groups.push(vec![target.clone()]);
                        groups.len() - 1
                    });
                    groups[group].push(path.clone());
                    group_of.insert(path.clone(), group);
                    entry
                }
                body => spec_entry(spec, body),
            };
            entries.insert(path, entry);
        }
        for members in groups.iter().filter(|members| members.len() > 1) {
            let label = members.iter().min().expect("group is not empty").clone();
            for member in members {
                if let Some(entry) = entries.get_mut(member) {
                    entry.hardlink_group = Some(label.clone());
                }
            }
        }
        let mut manifest = Manifest::new();
        for (path, entry) in entries {
            manifest.insert(path, entry);
        }
        manifest
    }

    fn entry(mut self, path: impl AsRef<Path>, body: Body, mode: u32) -> LayerBuilder {
        self.items.push(Item::Entry(EntrySpec {
            path: path.as_ref().to_path_buf(),
            body,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
        }));
        self
    }

    fn last_entry(&mut self, what: &str) -> &mut EntrySpec {
        match self.items.last_mut() {
            Some(Item::Entry(spec)) => spec,
            _ => {
                panic!("`{what}` modifies the entry added last, but the last item is not an entry")
            }
        }
    }
}

/// Gzips `bytes` at the default level.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(bytes)
        .expect("gzip into memory cannot fail");
    encoder.finish().expect("gzip into memory cannot fail")
}

/// A ustar header with `name` and `link_name` copied in byte for byte, which the `tar` crate's
/// setters would refuse for `..` or absolute names; the checksum is set last.
pub fn raw_header(name: &[u8], kind: EntryType, mode: u32, size: u64, link_name: &[u8]) -> Header {
    let mut header = Header::new_ustar();
    let old = header.as_old_mut();
    assert!(
        name.len() <= old.name.len() && link_name.len() <= old.linkname.len(),
        "raw names are limited to {} bytes",
        old.name.len()
    );
    old.name[..name.len()].copy_from_slice(name);
    old.linkname[..link_name.len()].copy_from_slice(link_name);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(DEFAULT_MTIME);
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_cksum();
    header
}

/// A header followed by `data`, zero-padded to whole blocks.
fn padded(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + data.len() + BLOCK);
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
    out
}

fn append_entry<W: Write>(builder: &mut tar::Builder<W>, spec: &EntrySpec) -> io::Result<()> {
    if !spec.xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = spec
            .xattrs
            .iter()
            .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
            .collect();
        builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let mut header = Header::new_ustar();
    header.set_mode(spec.mode);
    header.set_uid(spec.uid.into());
    header.set_gid(spec.gid.into());
    header.set_mtime(spec.mtime);
    header.set_size(0);
    match &spec.body {
        Body::Dir => {
            header.set_entry_type(EntryType::Directory);
            let mut name = spec.path.clone().into_os_string();
            name.push("/");
            builder.append_data(&mut header, name, io::empty())
        }
        Body::File(content) => {
            header.set_entry_type(EntryType::Regular);
            header.set_size(content.len() as u64);
            builder.append_data(&mut header, &spec.path, content.as_slice())
        }
        Body::Symlink(target) => {
            header.set_entry_type(EntryType::Symlink);
            builder.append_link(&mut header, &spec.path, target)
        }
        Body::Hardlink(target) => {
            header.set_entry_type(EntryType::Link);
            builder.append_link(&mut header, &spec.path, target)
        }
        Body::CharDevice(major, minor) | Body::BlockDevice(major, minor) => {
            let kind = match spec.body {
                Body::CharDevice(..) => EntryType::Char,
                _ => EntryType::Block,
            };
            header.set_entry_type(kind);
            header.set_device_major(*major)?;
            header.set_device_minor(*minor)?;
            builder.append_data(&mut header, &spec.path, io::empty())
        }
        Body::Fifo => {
            header.set_entry_type(EntryType::Fifo);
            builder.append_data(&mut header, &spec.path, io::empty())
        }
    }
}

/// The manifest entry for a described (non-hard-link) entry.
fn spec_entry(spec: &EntrySpec, body: &Body) -> Entry {
    let entry = match body {
        Body::Dir => Entry::dir(spec.mode),
        Body::File(content) => Entry::file(spec.mode, content),
        Body::Symlink(target) => Entry::symlink(target.clone()),
        Body::CharDevice(major, minor) => {
            Entry::device(Kind::CharDevice, spec.mode, *major, *minor)
        }
        Body::BlockDevice(major, minor) => {
            Entry::device(Kind::BlockDevice, spec.mode, *major, *minor)
        }
        Body::Fifo => Entry::fifo(spec.mode),
        Body::Hardlink(_) => unreachable!("hard links are resolved by the caller"),
    };
    let mtime = i64::try_from(spec.mtime).expect("mtime fits in i64");
    spec.xattrs.iter().fold(
        entry.owned_by(spec.uid, spec.gid).with_mtime(mtime),
        |entry, (name, value)| entry.with_xattr(name, value),
    )
}

fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// `len` bytes in which no 64 KiB chunk repeats (xorshift64 from `seed`): file content that
/// neither dedups nor reads as zeros.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A layer as one line per entry: path, type, mode, owner, mtime, size or link target.
pub fn listing(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut line = format!(
            "{} {:?} {:o} {}:{} {} {}",
            String::from_utf8_lossy(&e.path_bytes()),
            h.entry_type(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            h.size().unwrap(),
        );
        if let Some(t) = e.link_name_bytes() {
            line.push_str(&format!(" -> {}", String::from_utf8_lossy(&t)));
        }
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                line.push_str(&format!(" {}={:?}", x.key().unwrap(), x.value_bytes()));
            }
        }
        out.push(line);
    }
    out
}
