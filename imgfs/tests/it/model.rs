//! Model-based property tests: random sequences of file operations applied both to an active imgfs
//! snapshot (through `Tree`) and to a plain directory (through the kernel), which must agree on
//! every result and on the whole tree after every commit; committed snapshots must keep reading
//! exactly as they did when they were committed, after the store is reopened, and after each
//! newer snapshot is removed.
//!
//! The plain directory is the model: the kernel's file systems are the reference for POSIX
//! behaviour, so this needs no hand-written model of rename or truncate that could share imgfs's
//! misunderstandings. The cost is that the test needs root (lchown, `trusted.` xattrs) and a file
//! system with user xattrs under the temporary directory.
//!
//! What the kernel or `Tree`'s caller decides rather than `Tree` is kept out of the generated
//! sequences, so that a disagreement says something about imgfs: permission checks and user
//! xattrs on symlinks (the VFS refuses them before a FUSE file system is asked), clearing setuid
//! on chown (the kernel sends it as a mode change), and the group of new entries in setgid
//! directories (`Tree::mknod` takes the owner its caller gives). Symlink targets are relative and
//! never contain `..`: the plain directory cannot be made a chroot, so a target that climbs out
//! of it would resolve differently from imgfs's chroot-like `Tree::resolve` for a dull reason.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgfs::{FileKind, Ino, NewNode, RenameMode, SetAttr, Store, StoreOptions, Tree};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

/// Small chunks make chunk boundaries frequent: writes of up to 20 KiB span up to six of them.
const CHUNK: u64 = 4096;

// ---- operations ----

/// Permission bits, printed in octal so that failing sequences read like `ls -l`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Perm(u32);

impl fmt::Debug for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// One step of a sequence. Generated with `Pick`s, which become concrete paths (slash-separated,
/// relative to the tree's root) when the step runs; failures print both.
#[derive(Clone, Debug)]
enum Op<P = String> {
    Create {
        path: P,
        perm: Perm,
    },
    Mkdir {
        path: P,
        perm: Perm,
    },
    /// The target is a relative path without `..`, so it cannot leave the plain directory.
    Symlink {
        path: P,
        target: P,
    },
    /// Writes `len` bytes at `offset`; the byte at file position `p` is `fill(seed, p)`.
    Write {
        path: P,
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// Reads up to `len` bytes at `offset` (following a symlink) and compares what comes back.
    Read {
        path: P,
        offset: u64,
        len: u32,
    },
    Truncate {
        path: P,
        size: u64,
    },
    Unlink {
        path: P,
    },
    Rmdir {
        path: P,
    },
    Rename {
        from: P,
        to: P,
        mode: RenameMode,
    },
    Link {
        from: P,
        to: P,
    },
    /// chmod(2), which follows a symlink in the last component.
    Chmod {
        path: P,
        perm: Perm,
    },
    /// lchown(2), which does not.
    Chown {
        path: P,
        uid: u32,
        gid: u32,
    },
    /// setxattr(2), which follows a symlink in the last component: Linux refuses user xattrs on
    /// symlinks in the VFS, before a FUSE file system would be asked.
    SetXattr {
        path: P,
        name: &'static str,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: P,
        name: &'static str,
    },
    /// Commits the active snapshot and continues in a new active child of it.
    Commit,
    /// Closes the store and opens it again, then continues in the same active snapshot.
    Reopen,
}

impl<P> Op<P> {
    /// The same operation on other paths.
    fn map<Q>(&self, mut f: impl FnMut(&P) -> Q) -> Op<Q> {
        match self {
            Op::Create { path, perm } => Op::Create {
                path: f(path),
                perm: *perm,
            },
            Op::Mkdir { path, perm } => Op::Mkdir {
                path: f(path),
                perm: *perm,
            },
            Op::Symlink { path, target } => Op::Symlink {
                path: f(path),
                target: f(target),
            },
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => Op::Write {
                path: f(path),
                offset: *offset,
                len: *len,
                seed: *seed,
            },
            Op::Read { path, offset, len } => Op::Read {
                path: f(path),
                offset: *offset,
                len: *len,
            },
            Op::Truncate { path, size } => Op::Truncate {
                path: f(path),
                size: *size,
            },
            Op::Unlink { path } => Op::Unlink { path: f(path) },
            Op::Rmdir { path } => Op::Rmdir { path: f(path) },
            Op::Rename { from, to, mode } => Op::Rename {
                from: f(from),
                to: f(to),
                mode: *mode,
            },
            Op::Link { from, to } => Op::Link {
                from: f(from),
                to: f(to),
            },
            Op::Chmod { path, perm } => Op::Chmod {
                path: f(path),
                perm: *perm,
            },
            Op::Chown { path, uid, gid } => Op::Chown {
                path: f(path),
                uid: *uid,
                gid: *gid,
            },
            Op::SetXattr { path, name, value } => Op::SetXattr {
                path: f(path),
                name,
                value: value.clone(),
            },
            Op::RemoveXattr { path, name } => Op::RemoveXattr {
                path: f(path),
                name,
            },
            Op::Commit => Op::Commit,
            Op::Reopen => Op::Reopen,
        }
    }
}

/// Where a generated operation acts. Most made-up paths name nothing, so most operations pick
/// what they act on from what exists when they run; shrinking then moves towards the first
/// existing path rather than towards a path that fails with ENOENT.
#[derive(Clone)]
enum Pick {
    /// A path made up from the names a, b, c and d, up to three deep.
    Path(String),
    /// The `n`-th existing path (modulo how many there are) in name order, the root left out.
    Existing(usize),
    /// `name` in the `n`-th existing directory (modulo how many there are), the root first.
    In(usize, &'static str),
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Path(p) => write!(f, "{p:?}"),
            Pick::Existing(n) => write!(f, "existing#{n}"),
            Pick::In(n, name) => write!(f, "dir#{n}/{name}"),
        }
    }
}

/// The content a write puts at file position `pos`: position-dependent, so that bytes landing at
/// the wrong offset show, and all zeros for seed 0, so that all-zero chunks (stored as holes)
/// come up often.
fn fill(seed: u8, pos: u64) -> u8 {
    if seed == 0 {
        0
    } else {
        (pos % 251) as u8 ^ seed
    }
}

fn name() -> impl Strategy<Value = &'static str> {
    select(&["a", "b", "c", "d"][..])
}

fn path() -> impl Strategy<Value = String> {
    // Shallow paths more often: most deep ones name nothing, and failures on them are dull.
    prop_oneof![
        3 => name().prop_map(String::from),
        2 => (name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
        1 => (name(), name(), name()).prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
    ]
}

/// Something that probably exists.
fn existing() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => (0usize..64).prop_map(Pick::Existing),
        1 => path().prop_map(Pick::Path),
    ]
}

/// A name that probably does not exist yet, in a directory that does.
fn fresh() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => (0usize..64, name()).prop_map(|(n, name)| Pick::In(n, name)),
        1 => (0usize..64).prop_map(Pick::Existing),
        1 => path().prop_map(Pick::Path),
    ]
}

/// A name that may or may not exist: the target of a rename or a symlink.
fn either() -> impl Strategy<Value = Pick> {
    prop_oneof![fresh(), existing()]
}

fn perm() -> impl Strategy<Value = Perm> {
    // No setuid or setgid (see the top of this file for why). The sticky bit changes nothing
    // here, since root may remove anything.
    (0u32..=0o777, any::<bool>()).prop_map(|(p, sticky)| Perm(p | if sticky { 0o1000 } else { 0 }))
}

/// Offsets and sizes around chunk boundaries, and anywhere up to six chunks.
fn position() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..6 * CHUNK,
        (0u64..6, -2i64..=2).prop_map(|(k, d)| (k * CHUNK).saturating_add_signed(d)),
        Just(0),
    ]
}

fn op() -> impl Strategy<Value = Op<Pick>> {
    let len = prop_oneof![0usize..64, 0usize..20 * 1024, Just(CHUNK as usize)];
    let xname = || select(&["user.a", "user.b", "trusted.t"][..]);
    let mode = select(
        &[
            RenameMode::Replace,
            RenameMode::NoReplace,
            RenameMode::Exchange,
        ][..],
    );
    let id = || select(&[0u32, 1000, 65534][..]);
    prop_oneof![
        4 => (fresh(), perm()).prop_map(|(path, perm)| Op::Create { path, perm }),
        3 => (fresh(), perm()).prop_map(|(path, perm)| Op::Mkdir { path, perm }),
        2 => (fresh(), either()).prop_map(|(path, target)| Op::Symlink { path, target }),
        8 => (existing(), position(), len, any::<u8>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        2 => (existing(), position(), 0u32..3 * CHUNK as u32)
            .prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        3 => (existing(), position()).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => existing().prop_map(|path| Op::Unlink { path }),
        2 => existing().prop_map(|path| Op::Rmdir { path }),
        5 => (existing(), either(), mode)
            .prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        2 => (existing(), fresh()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (existing(), perm()).prop_map(|(path, perm)| Op::Chmod { path, perm }),
        1 => (existing(), id(), id()).prop_map(|(path, uid, gid)| Op::Chown { path, uid, gid }),
        2 => (existing(), xname(), vec(any::<u8>(), 0..16))
            .prop_map(|(path, name, value)| Op::SetXattr { path, name, value }),
        1 => (existing(), xname()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

// ---- what a tree looks like ----

/// Everything compared about one name in a tree.
#[derive(Clone, PartialEq, Eq)]
struct Node {
    kind: FileKind,
    perm: u32,
    uid: u32,
    gid: u32,
    /// Not compared for directories: a plain directory's size is its file system's business.
    size: u64,
    nlink: u32,
    content: Vec<u8>,
    target: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Every path of the tree that names the same inode, this one included, sorted.
    names: Vec<String>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} perm=0o{:o} uid={} gid={} size={} nlink={} content=<{} bytes> target={:?} \
             xattrs={:?} names={:?}",
            self.kind,
            self.perm,
            self.uid,
            self.gid,
            self.size,
            self.nlink,
            self.content.len(),
            String::from_utf8_lossy(&self.target),
            self.xattrs,
            self.names,
        )
    }
}

/// A whole tree by path; the root is "".
type Snap = BTreeMap<String, Node>;

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Fills in `Node::names` from the inode number each path was found with.
fn link_names(nodes: Vec<(String, u64, Node)>) -> Snap {
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (path, ino, _) in &nodes {
        by_ino.entry(*ino).or_default().push(path.clone());
    }
    nodes
        .into_iter()
        .map(|(path, ino, mut node)| {
            node.names = by_ino[&ino].clone();
            node.names.sort();
            (path, node)
        })
        .collect()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The xattrs of `p` itself (not of a symlink's target), without `security.` ones, which the
/// host's LSM may add.
fn plain_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cstr(p);
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: `c` is NUL-terminated and `names` is a writable buffer of the length passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    let mut out = BTreeMap::new();
    for name in names[..n as usize].split(|&b| b == 0) {
        if name.is_empty() || name.starts_with(b"security.") {
            continue;
        }
        let cname = CString::new(name).expect("xattr name without NUL");
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: as above, for `c`, `cname` and `value`.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            len >= 0,
            "lgetxattr {}: {}",
            p.display(),
            io::Error::last_os_error()
        );
        value.truncate(len as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

/// Reads a plain directory tree as the model sees it.
fn plain_snap(root: &Path) -> Snap {
    fn walk(root: &Path, rel: &str, out: &mut Vec<(String, u64, Node)>) {
        let p = root.join(rel);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            assert!(ft.is_file(), "{}: unexpected file type", p.display());
            FileKind::File
        };
        out.push((
            rel.to_string(),
            md.ino(),
            Node {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if kind == FileKind::Dir { 0 } else { md.size() },
                nlink: md.nlink() as u32,
                content: if kind == FileKind::File {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                },
                target: if kind == FileKind::Symlink {
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else {
                    Vec::new()
                },
                xattrs: plain_xattrs(&p),
                names: Vec::new(),
            },
        ));
        if kind == FileKind::Dir {
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                walk(root, &join(rel, &name), out);
            }
        }
    }
    let mut nodes = Vec::new();
    walk(root, "", &mut nodes);
    link_names(nodes)
}

/// Reads an imgfs tree through its public API, checking on the way that listings, lookups and
/// attributes agree with each other.
fn tree_snap(t: &Tree) -> Result<Snap, String> {
    fn walk(
        t: &Tree,
        ino: Ino,
        rel: &str,
        out: &mut Vec<(String, u64, Node)>,
    ) -> imgfs::Result<Result<(), String>> {
        let attr = t.getattr(ino)?;
        let mut xattrs = BTreeMap::new();
        for name in t.listxattr(ino)? {
            let value = t.getxattr(ino, &name)?;
            xattrs.insert(name, value);
        }
        let content = if attr.kind == FileKind::File {
            let c = t.read(ino, 0, u32::try_from(attr.size).expect("small file"))?;
            if c.len() as u64 != attr.size {
                return Ok(Err(format!(
                    "{rel:?}: read returned {} bytes of a {}-byte file",
                    c.len(),
                    attr.size
                )));
            }
            c
        } else {
            Vec::new()
        };
        out.push((
            rel.to_string(),
            ino.0,
            Node {
                kind: attr.kind,
                perm: attr.perm,
                uid: attr.uid,
                gid: attr.gid,
                size: if attr.kind == FileKind::Dir {
                    0
                } else {
                    attr.size
                },
                nlink: attr.nlink,
                content,
                target: if attr.kind == FileKind::Symlink {
                    t.readlink(ino)?
                } else {
                    Vec::new()
                },
                xattrs,
                names: Vec::new(),
            },
        ));
        if attr.kind == FileKind::Dir {
            for e in t.readdir(ino)? {
                let name = String::from_utf8(e.name.clone()).expect("generated names are utf-8");
                let path = join(rel, &name);
                let (lino, linode) = t.lookup(ino, &e.name)?;
                if lino != e.ino || linode.kind != e.kind {
                    return Ok(Err(format!(
                        "{path:?}: readdir says inode {} {:?}, lookup says inode {} {:?}",
                        e.ino, e.kind, lino, linode.kind
                    )));
                }
                if let Err(msg) = walk(t, e.ino, &path, out)? {
                    return Ok(Err(msg));
                }
            }
        }
        Ok(Ok(()))
    }
    let mut nodes = Vec::new();
    walk(t, Ino::ROOT, "", &mut nodes).map_err(|e| format!("reading the tree failed: {e}"))??;
    Ok(link_names(nodes))
}

/// Describes how `actual` differs from `expected`, or `None` if they are the same.
fn diff(expected: &Snap, actual: &Snap) -> Option<String> {
    let mut out = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => out.push(format!("  missing {path:?}: {e:?}")),
            Some(a) if a != e => {
                out.push(format!(
                    "  {path:?}\n    expected {e:?}\n    actual   {a:?}"
                ));
                if a.content != e.content {
                    let at = a
                        .content
                        .iter()
                        .zip(&e.content)
                        .position(|(x, y)| x != y)
                        .unwrap_or(a.content.len().min(e.content.len()));
                    out.push(format!(
                        "    content first differs at byte {at} (chunk {})",
                        at as u64 / CHUNK
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            out.push(format!("  unexpected {path:?}: {a:?}"));
        }
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

// ---- applying operations ----

fn os_errno(e: io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("io error without an errno: {e}"))
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: NUL-terminated strings and a readable buffer of the length passed.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(os_errno(io::Error::last_os_error()))
    }
}

fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: NUL-terminated strings.
    let r = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(os_errno(io::Error::last_os_error()))
    }
}

/// Applies `op` to the plain directory `root`.
fn apply_plain(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &str| root.join(rel);
    let r: io::Result<()> = match op {
        Op::Create { path, perm } => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perm.0)
            .open(p(path))
            // The umask applies at creation; imgfs's mknod takes the mode as given.
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(perm.0))),
        Op::Mkdir { path, perm } => DirBuilder::new()
            .mode(perm.0)
            .create(p(path))
            .and_then(|()| std::fs::set_permissions(p(path), PermissionsExt::from_mode(perm.0))),
        Op::Symlink { path, target } => std::os::unix::fs::symlink(target, p(path)),
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let buf: Vec<u8> = (0..*len as u64).map(|i| fill(*seed, offset + i)).collect();
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.write_all_at(&buf, *offset))
        }
        Op::Truncate { path, size } => OpenOptions::new()
            .write(true)
            .open(p(path))
            .and_then(|f| f.set_len(*size)),
        Op::Unlink { path } => std::fs::remove_file(p(path)),
        Op::Rmdir { path } => std::fs::remove_dir(p(path)),
        Op::Rename { from, to, mode } => {
            let flags = match mode {
                RenameMode::Replace => nix::fcntl::RenameFlags::empty(),
                RenameMode::NoReplace => nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                RenameMode::Exchange => nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            };
            return nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &p(from),
                nix::fcntl::AT_FDCWD,
                &p(to),
                flags,
            )
            .map_err(|e| e as i32);
        }
        Op::Link { from, to } => std::fs::hard_link(p(from), p(to)),
        Op::Chmod { path, perm } => {
            std::fs::set_permissions(p(path), std::fs::Permissions::from_mode(perm.0))
        }
        Op::Chown { path, uid, gid } => std::os::unix::fs::lchown(p(path), Some(*uid), Some(*gid)),
        Op::SetXattr { path, name, value } => return setxattr(&p(path), name, value),
        Op::RemoveXattr { path, name } => return removexattr(&p(path), name),
        Op::Read { .. } | Op::Commit | Op::Reopen => unreachable!("not a change"),
    };
    r.map_err(os_errno)
}

/// Applies `op` to an imgfs tree, resolving paths the way the kernel would before it asks a FUSE
/// file system: symlinks are followed in every component but the last, and in the last one
/// exactly where the system call follows them.
fn apply_tree(t: &Tree, op: &Op) -> imgfs::Result<()> {
    let parent = |rel: &'_ str| -> imgfs::Result<(Ino, Vec<u8>)> {
        let (dir, name) = t.resolve_parent(rel.as_bytes())?;
        // The kernel's walk fails with ENOTDIR here, before it looks at the second path of a
        // rename or link; `resolve_parent` does not check the last directory it walked into
        // (see `resolve_parent_below_a_file_is_not_a_directory`).
        if t.getattr(dir)?.kind != FileKind::Dir {
            return Err(imgfs::Error::NotDir(rel.to_string()));
        }
        Ok((dir, name.to_vec()))
    };
    match op {
        Op::Create { path, perm } => {
            let (dir, name) = parent(path)?;
            t.mknod(dir, &name, &NewNode::new(FileKind::File, perm.0, 0, 0))?;
        }
        Op::Mkdir { path, perm } => {
            let (dir, name) = parent(path)?;
            t.mknod(dir, &name, &NewNode::new(FileKind::Dir, perm.0, 0, 0))?;
        }
        Op::Symlink { path, target } => {
            let (dir, name) = parent(path)?;
            let mut node = NewNode::new(FileKind::Symlink, 0o777, 0, 0);
            node.target = target.as_bytes().to_vec();
            t.mknod(dir, &name, &node)?;
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let ino = t.resolve(path.as_bytes(), true)?;
            let buf: Vec<u8> = (0..*len as u64).map(|i| fill(*seed, offset + i)).collect();
            t.write(ino, *offset, &buf)?;
        }
        Op::Truncate { path, size } => {
            let ino = t.resolve(path.as_bytes(), true)?;
            t.setattr(
                ino,
                &SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                },
            )?;
        }
        Op::Unlink { path } => {
            let (dir, name) = parent(path)?;
            t.unlink(dir, &name)?;
        }
        Op::Rmdir { path } => {
            let (dir, name) = parent(path)?;
            t.rmdir(dir, &name)?;
        }
        Op::Rename { from, to, mode } => {
            let (odir, oname) = parent(from)?;
            let (ndir, nname) = parent(to)?;
            t.rename(odir, &oname, ndir, &nname, *mode)?;
        }
        Op::Link { from, to } => {
            let ino = t.resolve(from.as_bytes(), false)?;
            let (dir, name) = parent(to)?;
            t.link(ino, dir, &name)?;
        }
        Op::Chmod { path, perm } => {
            let ino = t.resolve(path.as_bytes(), true)?;
            t.setattr(
                ino,
                &SetAttr {
                    perm: Some(perm.0),
                    ..SetAttr::default()
                },
            )?;
        }
        Op::Chown { path, uid, gid } => {
            let ino = t.resolve(path.as_bytes(), false)?;
            t.setattr(
                ino,
                &SetAttr {
                    uid: Some(*uid),
                    gid: Some(*gid),
                    ..SetAttr::default()
                },
            )?;
        }
        Op::SetXattr { path, name, value } => {
            let ino = t.resolve(path.as_bytes(), true)?;
            t.setxattr(ino, name.as_bytes(), value)?;
        }
        Op::RemoveXattr { path, name } => {
            let ino = t.resolve(path.as_bytes(), true)?;
            t.removexattr(ino, name.as_bytes())?;
        }
        Op::Read { .. } | Op::Commit | Op::Reopen => unreachable!("not a change"),
    }
    Ok(())
}

/// True where the plain directory and imgfs failed differently and both are right.
///
/// POSIX (System Interfaces, 2.3 Error Numbers): "If more than one error occurs in processing a
/// function call, any one of the possible errors may be returned, as the order of detection is
/// undefined." Linux checks the namespace conditions of rename and link in an order of its own;
/// imgfs checks them in another. Each pair below is accepted only where both conditions hold,
/// which the pair itself shows: each side reports a condition it found true.
fn both_allowed(op: &Op, plain: i32, tree: i32) -> bool {
    use libc::{EEXIST, EINVAL, EISDIR, ENOENT, ENOTEMPTY, EPERM};
    match op {
        // rename("a/x", "a"): the target is an ancestor of the source, so it is a non-empty
        // directory (Linux: ENOTEMPTY), and the source is not a directory (imgfs: EISDIR).
        Op::Rename {
            mode: RenameMode::Replace,
            ..
        } => (plain, tree) == (ENOTEMPTY, EISDIR),
        // rename("a", "a/b/c", NOREPLACE) with a/b/c present: Linux finds the target exists
        // (EEXIST) before it finds the source is an ancestor of the target (imgfs: EINVAL).
        Op::Rename {
            mode: RenameMode::NoReplace,
            ..
        } => (plain, tree) == (EEXIST, EINVAL),
        // The same with RENAME_EXCHANGE and no target: ENOENT first on Linux, EINVAL in imgfs.
        Op::Rename {
            mode: RenameMode::Exchange,
            ..
        } => (plain, tree) == (ENOENT, EINVAL),
        // link(dir, existing): Linux finds the new name taken (EEXIST) before it looks at the
        // source's type; imgfs refuses the hard link to a directory (EPERM) first.
        Op::Link { .. } => (plain, tree) == (EEXIST, EPERM),
        _ => false,
    }
}

/// One run: a store, its active snapshot, the plain directory, what each committed snapshot
/// looked like when it was committed, and the operations run so far.
struct Harness {
    _dir: tempfile::TempDir,
    plain: PathBuf,
    store_root: PathBuf,
    store: Option<Store>,
    tree: Option<Tree>,
    active: String,
    committed: Vec<(String, Snap)>,
    log: Vec<String>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        // imgfs's base snapshot starts with a 0755 root owned by root.
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::lchown(&plain, Some(0), Some(0)).unwrap();
        let store_root = dir.path().join("store");
        let store = Store::create(
            &store_root,
            StoreOptions {
                chunk_size: CHUNK as u32,
            },
        )
        .unwrap();
        let active = "active-0".to_string();
        store.prepare(&active, None).unwrap();
        let tree = store.tree(&active).unwrap();
        Harness {
            _dir: dir,
            plain,
            store_root,
            store: Some(store),
            tree: Some(tree),
            active,
            committed: Vec::new(),
            log: Vec::new(),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("an open store")
    }

    fn tree(&self) -> &Tree {
        self.tree.as_ref().expect("an active tree")
    }

    /// The concrete path a pick names now, read from the plain directory (which agrees with
    /// imgfs, or the run has already failed).
    fn pick(&self, pick: &Pick) -> String {
        fn walk(root: &Path, rel: &str, all: &mut Vec<String>, dirs: &mut Vec<String>) {
            let mut names: Vec<String> = std::fs::read_dir(root.join(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                let path = join(rel, &name);
                all.push(path.clone());
                if std::fs::symlink_metadata(root.join(&path))
                    .unwrap()
                    .is_dir()
                {
                    dirs.push(path.clone());
                    walk(root, &path, all, dirs);
                }
            }
        }
        let (mut all, mut dirs) = (Vec::new(), vec![String::new()]);
        match pick {
            Pick::Path(p) => p.clone(),
            Pick::Existing(n) => {
                walk(&self.plain, "", &mut all, &mut dirs);
                // With nothing there yet, name something that does not exist.
                all.get(n % all.len().max(1)).cloned().unwrap_or("a".into())
            }
            Pick::In(n, name) => {
                walk(&self.plain, "", &mut all, &mut dirs);
                join(&dirs[n % dirs.len()], name)
            }
        }
    }

    /// Runs one operation on both sides and compares the results.
    fn step(&mut self, op: &Op) -> Result<(), String> {
        self.log.push(format!("{op:?}"));
        match op {
            Op::Commit => return self.commit(),
            Op::Reopen => return self.reopen(),
            Op::Read { path, offset, len } => return self.read(path, *offset, *len),
            _ => {}
        }
        let plain = apply_plain(&self.plain, op);
        let tree = apply_tree(self.tree(), op);
        let tree_errno = tree.as_ref().map_err(|e| e.errno()).copied();
        match (plain, tree_errno) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(p), Err(t)) if p == t || both_allowed(op, p, t) => Ok(()),
            (p, _) => Err(format!(
                "{op:?}: the plain directory says {}, imgfs says {}",
                show_errno(p),
                match tree {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("{} ({e})", errno_name(e.errno())),
                }
            )),
        }
    }

    /// Reads a range on both sides; both must fail alike or return the same bytes.
    fn read(&self, path: &str, offset: u64, len: u32) -> Result<(), String> {
        let plain = std::fs::File::open(self.plain.join(path))
            .and_then(|f| {
                let mut buf = vec![0u8; len as usize];
                let mut n = 0;
                // pread returns short counts only at the end of the file.
                loop {
                    let k = f.read_at(&mut buf[n..], offset + n as u64)?;
                    n += k;
                    if k == 0 || n == buf.len() {
                        break;
                    }
                }
                buf.truncate(n);
                Ok(buf)
            })
            .map_err(os_errno);
        let t = self.tree();
        let tree = t
            .resolve(path.as_bytes(), true)
            .and_then(|ino| t.read(ino, offset, len));
        match (&plain, &tree) {
            (Ok(p), Ok(t)) if p == t => Ok(()),
            (Err(p), Err(t)) if *p == t.errno() => Ok(()),
            (Ok(p), Ok(t)) => Err(format!(
                "read {path:?} at {offset}: the plain directory returns {} bytes, imgfs {} \
                 bytes, first difference at byte {}",
                p.len(),
                t.len(),
                p.iter()
                    .zip(t)
                    .position(|(x, y)| x != y)
                    .unwrap_or(p.len().min(t.len()))
            )),
            _ => Err(format!(
                "read {path:?} at {offset}: the plain directory says {}, imgfs says {}",
                show_errno(plain.map(drop)),
                match tree {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("{} ({e})", errno_name(e.errno())),
                }
            )),
        }
    }

    /// Commits the active snapshot, checks the committed tree and the new child against the
    /// plain directory, and checks that every earlier commit still reads as it did.
    fn commit(&mut self) -> Result<(), String> {
        let name = format!("snap-{}", self.committed.len());
        drop(self.tree.take());
        self.store()
            .commit(&name, &self.active)
            .map_err(|e| format!("commit {name}: {e}"))?;
        self.active = format!("active-{}", self.committed.len() + 1);
        self.store()
            .prepare(&self.active, Some(&name))
            .map_err(|e| format!("prepare on {name}: {e}"))?;
        self.tree = Some(self.store().tree(&self.active).unwrap());
        self.committed.push((name, plain_snap(&self.plain)));
        self.check()
    }

    /// Compares the active tree with the plain directory, and every committed snapshot with what
    /// it looked like when it was committed.
    fn check(&self) -> Result<(), String> {
        check_tree(
            &format!("active {}", self.active),
            self.tree(),
            &plain_snap(&self.plain),
        )?;
        for (name, snap) in &self.committed {
            let t = self
                .store()
                .tree(name)
                .map_err(|e| format!("open {name}: {e}"))?;
            check_tree(&format!("committed {name}"), &t, snap)?;
        }
        Ok(())
    }

    /// Closes and reopens the store, and checks everything again: nothing may live only in the
    /// memory of the process that wrote it.
    fn reopen(&mut self) -> Result<(), String> {
        drop(self.tree.take());
        // The old store must be gone first: it holds the store's lock.
        drop(self.store.take());
        let store = Store::open(&self.store_root).map_err(|e| format!("reopen: {e}"))?;
        self.tree = Some(store.tree(&self.active).unwrap());
        self.store = Some(store);
        self.check()
    }

    /// Removes the active snapshot, then the committed ones newest first, checking after each
    /// removal that the older ones still read as they did: chunks they share with a removed
    /// snapshot must survive it.
    fn remove_all(&mut self) -> Result<(), String> {
        drop(self.tree.take());
        let store = self.store.take().expect("an open store");
        store
            .remove(&self.active)
            .map_err(|e| format!("remove {}: {e}", self.active))?;
        while let Some((name, _)) = self.committed.pop() {
            store
                .usage(&name)
                .map_err(|e| format!("usage of {name}: {e}"))?;
            store
                .remove(&name)
                .map_err(|e| format!("remove {name}: {e}"))?;
            for (older, snap) in &self.committed {
                let t = store
                    .tree(older)
                    .map_err(|e| format!("open {older} after removing {name}: {e}"))?;
                check_tree(
                    &format!("committed {older} after removing {name}"),
                    &t,
                    snap,
                )?;
            }
        }
        Ok(())
    }

    /// Runs `ops`, checks the trees, reopens the store, checks them again, and removes every
    /// snapshot.
    fn run(&mut self, ops: impl IntoIterator<Item = Op<Pick>>) -> Result<(), String> {
        let result = (|| {
            for op in ops {
                let op = op.map(|p| self.pick(p));
                self.step(&op)?;
            }
            self.check()?;
            self.log
                .push("(check, reopen, check, remove every snapshot)".into());
            self.reopen()?;
            self.remove_all()
        })();
        result.map_err(|e| format!("{e}\nthe sequence as run:\n  {}", self.log.join("\n  ")))
    }
}

fn check_tree(what: &str, t: &Tree, expected: &Snap) -> Result<(), String> {
    let actual = tree_snap(t).map_err(|e| format!("{what}: {e}"))?;
    match diff(expected, &actual) {
        None => Ok(()),
        Some(d) => Err(format!("{what} differs from the model:\n{d}")),
    }
}

fn errno_name(e: i32) -> String {
    format!("{} ({})", io::Error::from_raw_os_error(e), e)
}

fn show_errno(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => errno_name(e),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // A failure is turned into a named regression test below, which says what it pins;
        // proptest's own regression files would be written into the source tree by every run.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// False, after saying so, where the model tests cannot run: they need root for lchown and
/// `trusted.` xattrs. CI runs as root, so there they must run.
fn have_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the model tests need root (lchown, trusted xattrs)"
    );
    eprintln!("skipping a model test: it needs root (lchown, trusted xattrs)");
    false
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn imgfs_agrees_with_a_plain_directory(ops in vec(op(), 1..=40)) {
        if !have_root() {
            return Ok(());
        }
        Harness::new().run(ops).map_err(TestCaseError::fail)?;
    }
}

// ---- fixed sequences ----

/// Runs a concrete sequence, panicking on the first difference.
fn run(ops: &[Op]) {
    let ops = ops.iter().map(|op| op.map(|p| Pick::Path(p.clone())));
    if let Err(e) = Harness::new().run(ops) {
        panic!("{e}");
    }
}

/// The errnos the plain directory and imgfs fail the last of `ops` with, after running the
/// others; both must fail.
fn errnos(ops: &[Op]) -> (i32, i32) {
    let (last, setup) = ops.split_last().expect("an operation");
    let mut h = Harness::new();
    for op in setup {
        h.step(op).unwrap_or_else(|e| panic!("{e}"));
    }
    let plain = apply_plain(&h.plain, last).expect_err("the plain directory refuses");
    let tree = apply_tree(h.tree(), last).expect_err("imgfs refuses");
    (plain, tree.errno())
}

fn mkdir(path: &str) -> Op {
    Op::Mkdir {
        path: path.into(),
        perm: Perm(0o755),
    }
}

fn create(path: &str) -> Op {
    Op::Create {
        path: path.into(),
        perm: Perm(0o644),
    }
}

fn rename(from: &str, to: &str, mode: RenameMode) -> Op {
    Op::Rename {
        from: from.into(),
        to: to.into(),
        mode,
    }
}

// Each pair `both_allowed` accepts, shown to occur. If one of these fails because imgfs now
// reports what Linux does, drop its pair from `both_allowed`.

#[test]
fn rename_of_a_file_onto_its_nonempty_parent_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [
        mkdir("a"),
        create("a/x"),
        rename("a/x", "a", RenameMode::Replace),
    ];
    assert_eq!(errnos(&ops), (libc::ENOTEMPTY, libc::EISDIR));
    run(&ops);
}

#[test]
fn noreplace_of_a_directory_onto_a_name_below_it_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [
        mkdir("a"),
        mkdir("a/b"),
        rename("a", "a/b", RenameMode::NoReplace),
    ];
    assert_eq!(errnos(&ops), (libc::EEXIST, libc::EINVAL));
    run(&ops);
}

#[test]
fn exchange_of_a_directory_with_a_missing_name_below_it_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [mkdir("a"), rename("a", "a/b", RenameMode::Exchange)];
    assert_eq!(errnos(&ops), (libc::ENOENT, libc::EINVAL));
    run(&ops);
}

#[test]
fn hard_link_of_a_directory_onto_an_existing_name_may_fail_either_way() {
    if !have_root() {
        return;
    }
    let ops = [
        mkdir("a"),
        create("b"),
        Op::Link {
            from: "a".into(),
            to: "b".into(),
        },
    ];
    assert_eq!(errnos(&ops), (libc::EEXIST, libc::EPERM));
    run(&ops);
}

#[test]
fn data_across_chunk_boundaries_survives_commits_truncation_and_removal() {
    if !have_root() {
        return;
    }
    let write = |path: &str, offset, len, seed| Op::Write {
        path: path.into(),
        offset,
        len,
        seed,
    };
    let truncate = |size| Op::Truncate {
        path: "f".into(),
        size,
    };
    run(&[
        create("f"),
        write("f", CHUNK - 3, 20 * 1024, 7),
        Op::Commit,
        truncate(2 * CHUNK + 1),
        write("f", 3 * CHUNK + 5, 100, 9),
        Op::Link {
            from: "f".into(),
            to: "g".into(),
        },
        Op::Commit,
        truncate(0),
        write("g", CHUNK, 1, 0),
        Op::Reopen,
        write("g", 0, CHUNK as usize, 3),
    ]);
}

/// Regression tests for imgfs bugs this model test found. They call `Tree` directly, need no
/// root, and say in a comment where the cause was.
mod found_bugs {
    use imgfs::{FileKind, Ino, NewNode, RenameMode, Store, StoreOptions};

    /// Found by the model test as: create a, link a b, rename(a, b, RENAME_EXCHANGE), unlink a.
    /// Linux does nothing for an exchange (or any rename) of two names of one inode (vfs_rename
    /// returns early when source and target are the same inode; POSIX says so for rename(2)),
    /// so b remains with nlink 1. imgfs reports nlink 0 for b, and the commit then purges the
    /// inode as an orphan: b names a stale inode and the file's content is gone.
    ///
    /// Cause: the `RenameMode::Exchange` arm of `Tree::rename` lacks the `tino == sino` early
    /// return that the replace arm has. Its two `relink` calls each read the inode from the
    /// database rather than from the pending batch, so the second overwrites the first: the
    /// links become [(root, "a"), (root, "a")] instead of [(root, "a"), (root, "b")], and
    /// unlinking a removes both.
    #[test]
    fn exchange_of_two_names_of_one_inode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
        s.prepare("a", None).unwrap();
        let t = s.tree("a").unwrap();
        let file = NewNode::new(FileKind::File, 0o644, 0, 0);
        let (ino, _) = t.mknod(Ino::ROOT, b"a", &file).unwrap();
        t.write(ino, 0, b"hello").unwrap();
        t.link(ino, Ino::ROOT, b"b").unwrap();
        t.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", RenameMode::Exchange)
            .unwrap();
        let names: Vec<Vec<u8>> = t
            .inode(ino)
            .unwrap()
            .links
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            names,
            [b"a".to_vec(), b"b".to_vec()],
            "back-links after the exchange"
        );
        t.unlink(Ino::ROOT, b"a").unwrap();
        assert_eq!(t.getattr(ino).unwrap().nlink, 1, "b still names the file");
        drop(t);
        s.commit("A", "a").unwrap();
        let t = s.tree("A").unwrap();
        let (ino, _) = t.lookup(Ino::ROOT, b"b").unwrap();
        assert_eq!(t.read(ino, 0, 100).unwrap(), b"hello");
    }

    /// `Tree::resolve_parent(b"f/x")` where f is a regular file returns `Ok((f, "x"))`. Path
    /// resolution in the kernel fails with ENOTDIR there, and so does imgfs one level deeper
    /// (`resolve_parent(b"f/x/y")`), because `walk` only fails when it looks a name up in a
    /// non-directory. Callers get ENOTDIR later from the operation itself (mknod, rename and
    /// link check their directory), so the harm is small: an error reported late, after the
    /// second path of a rename or link was resolved, which can change which errno comes back.
    ///
    /// Cause: `resolve_parent` does not check that the last directory it walked into is one.
    #[test]
    fn resolve_parent_below_a_file_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
        s.prepare("a", None).unwrap();
        let t = s.tree("a").unwrap();
        let file = NewNode::new(FileKind::File, 0o644, 0, 0);
        t.mknod(Ino::ROOT, b"f", &file).unwrap();
        assert_eq!(
            t.resolve_parent(b"f/x/y").map_err(|e| e.errno()),
            Err(libc::ENOTDIR)
        );
        assert_eq!(
            t.resolve_parent(b"f/x").map_err(|e| e.errno()),
            Err(libc::ENOTDIR)
        );
    }
}
