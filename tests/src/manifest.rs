//! Canonical, comparable descriptions of directory trees (`Manifest`), so tests can check what an
//! import, export or extraction produced without caring how it was produced.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// How many differences `assert_same` prints before it gives up; a broken import usually differs
/// everywhere, and the first few lines say what went wrong.
const MAX_REPORTED_DIFFERENCES: usize = 50;

/// The SELinux label is assigned by the host's policy, not carried by the tree, so two correct
/// copies of a tree on different hosts (or file systems) may disagree on it.
const IGNORED_XATTRS: &[&[u8]] = &[b"security.selinux"];

/// The type of a directory entry, as `lstat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::CharDevice => "char",
            Kind::BlockDevice => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        })
    }
}

/// A device number split into its major and minor parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    /// Splits a raw `st_rdev`.
    pub fn from_rdev(rdev: u64) -> DeviceNumber {
        DeviceNumber {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Everything a manifest records about one path. Fields that only make sense for some kinds are
/// `None` for the others, so that comparing two entries never trips over meaningless values such
/// as the size of a directory (which depends on the file system).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only.
    pub size: Option<u64>,
    /// Lowercase hex sha256 of the content; regular files only.
    pub sha256: Option<String>,
    /// Symlinks only; stored as raw bytes, so targets that are not UTF-8 survive.
    pub symlink_target: Option<PathBuf>,
    /// Character and block devices only.
    pub device: Option<DeviceNumber>,
    /// Every extended attribute except the ones in `IGNORED_XATTRS`, sorted by name.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// For entries that share an inode with another entry of the same manifest: the first path of
    /// that group in manifest order. Every member, including the first, carries the label.
    pub hardlink_group: Option<PathBuf>,
    /// Modification time in whole seconds; `None` means "not compared" (see
    /// `Manifest::without_mtime`).
    pub mtime: Option<i64>,
}

impl Entry {
    /// A regular file with the given content, owned by root, with no mtime.
    pub fn file(mode: u32, content: &[u8]) -> Entry {
        Entry {
            size: Some(content.len() as u64),
            sha256: Some(hex::encode(Sha256::digest(content))),
            mode,
            ..Entry::bare(Kind::File)
        }
    }

    /// A directory owned by root, with no mtime.
    pub fn dir(mode: u32) -> Entry {
        Entry {
            mode,
            ..Entry::bare(Kind::Dir)
        }
    }

    /// A symlink owned by root; Linux always reports symlinks as mode 0777.
    pub fn symlink(target: impl Into<PathBuf>) -> Entry {
        Entry {
            mode: 0o777,
            symlink_target: Some(target.into()),
            ..Entry::bare(Kind::Symlink)
        }
    }

    /// A character or block device node owned by root.
    pub fn device(kind: Kind, mode: u32, major: u32, minor: u32) -> Entry {
        assert!(
            matches!(kind, Kind::CharDevice | Kind::BlockDevice),
            "a device entry must be a char or block device, not {kind}"
        );
        Entry {
            mode,
            device: Some(DeviceNumber { major, minor }),
            ..Entry::bare(kind)
        }
    }

    /// A fifo owned by root.
    pub fn fifo(mode: u32) -> Entry {
        Entry {
            mode,
            ..Entry::bare(Kind::Fifo)
        }
    }

    /// Sets the owner; for chaining after one of the constructors.
    pub fn owned_by(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Adds an extended attribute; for chaining after one of the constructors.
    pub fn with_xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.xattrs.insert(name.into(), value.to_vec());
        self
    }

    /// Sets the mtime; for chaining after one of the constructors.
    pub fn with_mtime(mut self, mtime: i64) -> Entry {
        self.mtime = Some(mtime);
        self
    }

    fn bare(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: None,
            sha256: None,
            symlink_target: None,
            device: None,
            xattrs: BTreeMap::new(),
            hardlink_group: None,
            mtime: None,
        }
    }

    /// Describes one path on disk without following it if it is a symlink. The hard-link group is
    /// left empty because only the whole tree can tell who shares an inode.
    fn read(path: &Path) -> anyhow::Result<(Entry, fs::Metadata)> {
        let meta =
            fs::symlink_metadata(path).with_context(|| format!("failed to lstat {path:?}"))?;
        let file_type = meta.file_type();
        let kind = if file_type.is_file() {
            Kind::File
        } else if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_symlink() {
            Kind::Symlink
        } else if file_type.is_char_device() {
            Kind::CharDevice
        } else if file_type.is_block_device() {
            Kind::BlockDevice
        } else if file_type.is_fifo() {
            Kind::Fifo
        } else if file_type.is_socket() {
            Kind::Socket
        } else {
            bail!(
                "{path:?} has an unknown file type (mode {:#o})",
                meta.mode()
            );
        };
        let mut entry = Entry {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            xattrs: read_xattrs(path)?,
            mtime: Some(meta.mtime()),
            ..Entry::bare(kind)
        };
        match kind {
            Kind::File => {
                entry.size = Some(meta.size());
                entry.sha256 = Some(sha256_of_file(path)?);
            }
            Kind::Symlink => {
                let target =
                    fs::read_link(path).with_context(|| format!("failed to readlink {path:?}"))?;
                entry.symlink_target = Some(target);
            }
            Kind::CharDevice | Kind::BlockDevice => {
                entry.device = Some(DeviceNumber::from_rdev(meta.rdev()));
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
        Ok((entry, meta))
    }

    /// Lists how `self` (left) and `other` (right) differ, one field per string, without the path.
    fn diff(&self, other: &Entry) -> Vec<String> {
        let mut out = Vec::new();
        if self.kind != other.kind {
            // The other fields follow from the kind, so listing them too would only be noise.
            out.push(format!("kind {} != {}", self.kind, other.kind));
            return out;
        }
        if self.mode != other.mode {
            out.push(format!("mode {:#o} != {:#o}", self.mode, other.mode));
        }
        if (self.uid, self.gid) != (other.uid, other.gid) {
            out.push(format!(
                "owner {}:{} != {}:{}",
                self.uid, self.gid, other.uid, other.gid
            ));
        }
        if self.size != other.size {
            out.push(format!(
                "size {} != {}",
                show_opt(&self.size),
                show_opt(&other.size)
            ));
        }
        if self.sha256 != other.sha256 {
            out.push(format!(
                "sha256 {} != {}",
                show_opt(&self.sha256),
                show_opt(&other.sha256)
            ));
        }
        if self.symlink_target != other.symlink_target {
            out.push(format!(
                "symlink target {:?} != {:?}",
                self.symlink_target, other.symlink_target
            ));
        }
        if self.device != other.device {
            out.push(format!(
                "device {} != {}",
                show_opt(&self.device),
                show_opt(&other.device)
            ));
        }
        let names: std::collections::BTreeSet<_> =
            self.xattrs.keys().chain(other.xattrs.keys()).collect();
        for name in names {
            let (left, right) = (self.xattrs.get(name), other.xattrs.get(name));
            if left != right {
                out.push(format!(
                    "xattr {name:?} {} != {}",
                    show_bytes(left),
                    show_bytes(right)
                ));
            }
        }
        if self.hardlink_group != other.hardlink_group {
            out.push(format!(
                "hardlink group {:?} != {:?}",
                self.hardlink_group, other.hardlink_group
            ));
        }
        // A missing mtime means the caller asked not to compare it, so it matches anything.
        if let (Some(left), Some(right)) = (self.mtime, other.mtime)
            && left != right
        {
            out.push(format!("mtime {left} != {right}"));
        }
        out
    }
}

impl fmt::Display for Entry {
    /// One line, fields in a fixed order, optional ones only when present; stable enough for
    /// golden files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04o} {}:{}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if let Some(size) = self.size {
            write!(f, " size={size}")?;
        }
        if let Some(sha) = &self.sha256 {
            write!(f, " sha256={sha}")?;
        }
        if let Some(target) = &self.symlink_target {
            write!(f, " -> {}", target.as_os_str().as_bytes().escape_ascii())?;
        }
        if let Some(dev) = self.device {
            write!(f, " dev={dev}")?;
        }
        for (name, value) in &self.xattrs {
            write!(
                f,
                " xattr:{}=\"{}\"",
                name.as_bytes().escape_ascii(),
                value.escape_ascii()
            )?;
        }
        if let Some(group) = &self.hardlink_group {
            write!(f, " link={}", group.as_os_str().as_bytes().escape_ascii())?;
        }
        if let Some(mtime) = self.mtime {
            write!(f, " mtime={mtime}")?;
        }
        Ok(())
    }
}

/// A sorted description of every entry below a root directory (the root itself excluded).
///
/// Paths are relative to the root and kept as `PathBuf`, i.e. raw bytes, so names that are not
/// UTF-8 are described and compared exactly. The order is `Path`'s: component by component, so a
/// directory is always followed directly by its contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Manifest {
    /// An empty manifest, to fill with `insert` when describing the expected result of a test.
    pub fn new() -> Manifest {
        Manifest::default()
    }

    /// Describes the tree below `root` without following symlinks (neither inside the tree nor
    /// `root` itself, which must be a directory).
    pub fn of_dir(root: &Path) -> anyhow::Result<Manifest> {
        let root_meta =
            fs::symlink_metadata(root).with_context(|| format!("failed to lstat {root:?}"))?;
        if !root_meta.is_dir() {
            bail!("{root:?} is not a directory");
        }
        let mut entries = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        for item in walkdir::WalkDir::new(root)
            .min_depth(1)
            .follow_links(false)
            .follow_root_links(false)
        {
            let item = item.with_context(|| format!("failed to walk {root:?}"))?;
            let relative = item
                .path()
                .strip_prefix(root)
                .expect("walkdir yields paths below its root")
                .to_path_buf();
            let (entry, meta) = Entry::read(item.path())?;
            // Directories cannot be hard links, and their link count only counts subdirectories.
            if meta.nlink() > 1 && entry.kind != Kind::Dir {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(relative.clone());
            }
            entries.insert(relative, entry);
        }
        let mut manifest = Manifest { entries };
        // An inode whose other names live outside the tree is not a group *within* the tree, and
        // labelling it would make a copy of the tree differ from the tree for no visible reason.
        for paths in inodes.into_values().filter(|paths| paths.len() > 1) {
            manifest.link_group(&paths);
        }
        Ok(manifest)
    }

    /// Labels `paths` as one hard-link group, named after its first path in manifest order.
    fn link_group(&mut self, paths: &[PathBuf]) {
        let label = paths.iter().min().expect("a group is never empty").clone();
        for path in paths {
            if let Some(entry) = self.entries.get_mut(path) {
                entry.hardlink_group = Some(label.clone());
            }
        }
    }

    /// Drops every mtime, so comparisons ignore them (a `None` mtime matches anything).
    pub fn without_mtime(mut self) -> Manifest {
        for entry in self.entries.values_mut() {
            entry.mtime = None;
        }
        self
    }

    /// Keeps only the entries for which `keep` returns true, for example to drop paths a test
    /// does not control.
    pub fn retain(mut self, mut keep: impl FnMut(&Path, &Entry) -> bool) -> Manifest {
        self.entries.retain(|path, entry| keep(path, entry));
        self
    }

    /// Adds or replaces the entry for `path` (relative to the root). Hard-link groups are not
    /// derived from inserted entries; set `Entry::hardlink_group` yourself.
    pub fn insert(&mut self, path: impl AsRef<Path>, entry: Entry) -> &mut Manifest {
        self.entries.insert(normalize(path.as_ref()), entry);
        self
    }

    /// The entry for `path` (relative to the root), if there is one.
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        self.entries.get(&normalize(path.as_ref()))
    }

    /// All entries in manifest order.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Entry)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path.as_path(), entry))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the manifest has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Human-readable differences between `self` (left) and `other` (right), in manifest order,
    /// one line per differing path or field. Empty means the trees are the same.
    pub fn diff(&self, other: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        let mut left = self.entries.iter().peekable();
        let mut right = other.entries.iter().peekable();
        loop {
            // A merge of two sorted sequences: each step consumes the smaller path, or both.
            let order = match (left.peek(), right.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((l, _)), Some((r, _))) => l.cmp(r),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (path, entry) = left.next().expect("peeked");
                    out.push(format!(
                        "{}: only in left ({})",
                        show_path(path),
                        entry.kind
                    ));
                }
                std::cmp::Ordering::Greater => {
                    let (path, entry) = right.next().expect("peeked");
                    out.push(format!(
                        "{}: only in right ({})",
                        show_path(path),
                        entry.kind
                    ));
                }
                std::cmp::Ordering::Equal => {
                    let (path, l) = left.next().expect("peeked");
                    let (_, r) = right.next().expect("peeked");
                    for field in l.diff(r) {
                        out.push(format!("{}: {field}", show_path(path)));
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for Manifest {
    /// One line per entry: the escaped path, then the entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, entry) in &self.entries {
            writeln!(f, "{} {entry}", show_path(path))?;
        }
        Ok(())
    }
}

/// Panics, listing the first differences, unless the two manifests describe the same tree.
#[track_caller]
pub fn assert_same(left: &Manifest, right: &Manifest) {
    let differences = left.diff(right);
    if differences.is_empty() {
        return;
    }
    let shown = differences.len().min(MAX_REPORTED_DIFFERENCES);
    let mut message = format!(
        "manifests differ in {} places (left {} entries, right {} entries):\n",
        differences.len(),
        left.len(),
        right.len()
    );
    for line in &differences[..shown] {
        message.push_str("  ");
        message.push_str(line);
        message.push('\n');
    }
    if differences.len() > shown {
        message.push_str(&format!("  ... and {} more\n", differences.len() - shown));
    }
    panic!("{message}");
}

/// Reads every extended attribute of `path` itself (`llistxattr`/`lgetxattr`: a symlink's own
/// attributes, never its target's).
fn read_xattrs(path: &Path) -> anyhow::Result<BTreeMap<OsString, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A file system without xattr support has, by definition, none to compare.
        Err(err) if err.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(err) => return Err(err).with_context(|| format!("failed to list xattrs of {path:?}")),
    };
    for name in names {
        if IGNORED_XATTRS.contains(&name.as_bytes()) {
            continue;
        }
        let value = xattr::get(path, &name)
            .with_context(|| format!("failed to read xattr {name:?} of {path:?}"))?;
        // The attribute can vanish between list and get only if someone changes the tree under
        // us; then the manifest describes the later state, which is as good as the earlier one.
        if let Some(value) = value {
            out.insert(name, value);
        }
    }
    Ok(out)
}

fn sha256_of_file(path: &Path) -> anyhow::Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("failed to open {path:?}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).with_context(|| format!("failed to read {path:?}")),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Drops `.` components and repeated or trailing slashes, so `./a//b/` and `a/b` name one entry.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn show_path(path: &Path) -> String {
    path.as_os_str().as_bytes().escape_ascii().to_string()
}

fn show_opt<T: fmt::Display>(value: &Option<T>) -> String {
    match value {
        Some(value) => value.to_string(),
        None => "none".to_owned(),
    }
}

fn show_bytes(value: Option<&Vec<u8>>) -> String {
    match value {
        Some(value) => format!("\"{}\"", value.escape_ascii()),
        None => "missing".to_owned(),
    }
}
