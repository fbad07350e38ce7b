//! What a tree looks like: every name with what is compared about it, read from the plain
//! directory or from an imgfs tree, and the differences between two such trees.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use imgfs::{FileKind, Ino, Tree};

use super::CHUNK;

/// Everything compared about one name in a tree.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Node {
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
pub(super) type Snap = BTreeMap<String, Node>;

pub(super) fn join(dir: &str, name: &str) -> String {
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

pub(super) fn cstr(p: &Path) -> CString {
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
pub(super) fn plain_snap(root: &Path) -> Snap {
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
pub(super) fn tree_snap(t: &Tree) -> Result<Snap, String> {
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
pub(super) fn diff(expected: &Snap, actual: &Snap) -> Option<String> {
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
