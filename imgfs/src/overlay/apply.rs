//! Extracting an OCI layer tar into a new overlay upper dir, converting OCI whiteouts and opaque
//! markers into overlayfs's, with the same rules as imgfs's importer.
//!
//! Nothing is mounted: parent paths are resolved through the stack of layer dirs the way
//! overlayfs would merge them (symlinks followed inside the stack, `..` stopping at its root),
//! and the directories on the way are copied up into the new dir. Every write then happens
//! through a directory fd opened with openat2 beneath the new dir, refusing symlinks, and names
//! a single component: a layer cannot write outside its own dir whatever it contains.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer::{ImportLimits, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::{Error, Result};

use super::sys::{self, check, cstr, fd_path, open_dir_beneath};
use super::{io_err, lookup, os};

/// What an extraction produced.
pub(crate) struct Extracted {
    pub(crate) diff_id: String,
    pub(crate) entries: u64,
    pub(crate) tar_bytes: u64,
}

/// Extracts the layer read from `input` into `layers[0]`, an empty dir, on top of the
/// committed layers `layers[1..]` (nearest first).
pub(crate) fn extract(
    layers: &[PathBuf],
    input: &mut dyn Read,
    limits: &ImportLimits,
) -> Result<Extracted> {
    let upper =
        File::open(&layers[0]).map_err(|e| io_err(format!("open {}", layers[0].display()), e))?;
    let mut x = Extractor {
        layers,
        upper,
        dir_times: BTreeMap::new(),
    };
    let read = crate::layer::import::read_layer(input, limits, &mut |entry, path| {
        x.entry(entry, path, limits)
    })?;
    x.set_dir_times()?;
    Ok(Extracted {
        diff_id: read.diff_id,
        entries: read.entries,
        tar_bytes: read.tar_bytes,
    })
}

fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory of the merged tree, by its path without symlinks.
struct Dir {
    rel: PathBuf,
    /// The layers whose copy of the directory takes part in the merge, nearest first; holds 0
    /// (the new layer) once the directory is copied up.
    merging: Vec<usize>,
}

impl Dir {
    fn lowers(&self) -> Vec<usize> {
        self.merging.iter().copied().filter(|&i| i != 0).collect()
    }
}

#[derive(Clone, Copy)]
struct Times {
    atime: (i64, u32),
    mtime: (i64, u32),
}

/// Mode, owner, times and xattrs of an entry, from its header and PAX records.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Times,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Extractor<'a> {
    /// The new layer first, then its ancestors, nearest first.
    layers: &'a [PathBuf],
    upper: File,
    /// Directory times to set once everything is in place, since creating an entry changes its
    /// directory's mtime (tar -x defers them the same way).
    dir_times: BTreeMap<PathBuf, Times>,
}

impl Extractor<'_> {
    fn upper_path(&self, rel: &Path) -> PathBuf {
        self.layers[0].join(rel)
    }

    fn open(&self, rel: &Path) -> Result<File> {
        open_dir_beneath(&self.upper, rel)
            .map_err(|e| io_err(format!("open {}", self.upper_path(rel).display()), e))
    }

    /// Resolves directory components through the merged tree. With `create`, every directory
    /// on the way ends up in the new layer: copied up from a lower layer, or made (0755, root)
    /// where missing, as tar -x makes missing parents.
    fn resolve(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Dir> {
        let all: Vec<usize> = (0..self.layers.len()).collect();
        let mut stack: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        let mut queue: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut budget = 40u32;
        while let Some(c) = queue.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            let rel: PathBuf = stack.iter().map(|(n, _)| os(n)).collect();
            let merging = stack.last().map_or(&all, |(_, m)| m).clone();
            let hit = lookup(self.layers, &merging, &rel, os(&c))
                .map_err(|e| io_err(format!("look up {}", rel.join(os(&c)).display()), e))?;
            match hit {
                None if create => {
                    let dfd = self.open(&rel)?;
                    mkdirat(&dfd, &c, 0o755)?;
                    let now = now();
                    self.dir_times.insert(
                        rel.join(os(&c)),
                        Times {
                            atime: now,
                            mtime: now,
                        },
                    );
                    stack.push((c, vec![0]));
                }
                None => return Err(Error::NotFound(shown(&c))),
                Some(h) if h.meta.is_dir() => {
                    let mut m = h.merging;
                    if create && h.layer != 0 {
                        self.copy_up(&rel, &c, h.layer)?;
                        m.insert(0, 0);
                    }
                    stack.push((c, m));
                }
                Some(h) if h.meta.file_type().is_symlink() => {
                    budget = budget
                        .checked_sub(1)
                        .ok_or_else(|| Error::Loop(shown(&c)))?;
                    let at = self.layers[h.layer].join(&rel).join(os(&c));
                    let target = std::fs::read_link(&at)
                        .map_err(|e| io_err(format!("read link {}", at.display()), e))?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                Some(_) => return Err(Error::NotDir(shown(&c))),
            }
        }
        Ok(Dir {
            rel: stack.iter().map(|(n, _)| os(n)).collect(),
            merging: stack.last().map_or(all, |(_, m)| m.clone()),
        })
    }

    /// Copies the entry `name` of directory `rel` from layer `from` into the new layer, as
    /// overlayfs copies up: a directory without its contents, anything else whole.
    fn copy_up(&mut self, rel: &Path, name: &[u8], from: usize) -> Result<()> {
        let src = self.layers[from].join(rel).join(os(name));
        let m = std::fs::symlink_metadata(&src)
            .map_err(|e| io_err(format!("stat {}", src.display()), e))?;
        let dfd = self.open(rel)?;
        let ctx = |e| io_err(format!("copy up {}", src.display()), e);
        let ft = m.file_type();
        if ft.is_dir() {
            mkdirat(&dfd, name, 0o700)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(ctx)?;
            symlinkat(&dfd, name, target.as_os_str().as_bytes())?;
        } else if ft.is_file() {
            let mut from = File::open(&src).map_err(ctx)?;
            let to = create_file(&dfd, name)?;
            crate::layer::copy_sparse(&mut from, &to).map_err(ctx)?;
        } else {
            mknodat(&dfd, name, m.mode() & libc::S_IFMT, m.rdev())?;
        }
        let attrs = Attrs {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            times: Times {
                atime: (m.atime(), m.atime_nsec() as u32),
                mtime: (m.mtime(), m.mtime_nsec() as u32),
            },
            xattrs: sys::layer_xattrs(&src).map_err(ctx)?,
        };
        self.set_attrs(&dfd, rel, name, ft.is_symlink(), ft.is_dir(), &attrs)
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        limits: &ImportLimits,
    ) -> Result<()> {
        let comps = crate::layer::import::components(path, limits)?;
        let Some((name, dirs)) = comps.split_last() else {
            // The root directory itself: take its attributes.
            if entry.header().entry_type().is_dir() {
                let attrs = attrs(entry)?;
                let dfd = self.open(Path::new(""))?;
                self.set_attrs(&dfd, Path::new(""), b".", false, true, &attrs)?;
            }
            return Ok(());
        };
        let dir = self.resolve(dirs, true)?;
        let dfd = self.open(&dir.rel)?;

        if name.as_slice() == OPAQUE_MARKER {
            return self.opaque(&dir);
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if matches!(target, b"" | b"." | b"..") {
                return Err(Error::Invalid(format!("whiteout of {:?}", shown(target))));
            }
            // A whiteout deletes the name in the lower layers only; one this layer added stays.
            if self.upper_entry(&dir.rel, target)?.is_none()
                && self.in_lowers(&dir, target)?.is_some()
            {
                mknodat(&dfd, target, libc::S_IFCHR, 0)?;
            }
            return Ok(());
        }

        let header = entry.header().clone();
        let kind = header.entry_type();
        let is_dir = match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Symlink
            | tar::EntryType::Char
            | tar::EntryType::Block
            | tar::EntryType::Fifo => false,
            tar::EntryType::Directory => true,
            tar::EntryType::Link => return self.hard_link(entry, &dir, &dfd, name, limits),
            other => {
                tracing::warn!(entry = %shown(path), kind = ?other, "skipping tar entry of unsupported type");
                return Ok(());
            }
        };
        let attrs = attrs(entry)?;
        let existing = self.upper_entry(&dir.rel, name)?;
        if is_dir && existing.as_ref().is_some_and(|m| m.is_dir()) {
            // A directory that exists keeps its contents; the layer only sets its attributes.
            return self.set_attrs(&dfd, &dir.rel, name, false, true, &attrs);
        }
        let replaced = existing.is_some();
        if let Some(m) = existing {
            self.remove_upper(&dfd, &dir.rel, name, m.is_dir())?;
        }
        match kind {
            tar::EntryType::Directory => {
                mkdirat(&dfd, name, 0o700)?;
                // A directory this layer deleted (or replaced) and made again hides the lower
                // one's contents.
                if replaced && self.in_lowers(&dir, name)?.is_some_and(|m| m.is_dir()) {
                    let path = fd_path(&dfd, os(name));
                    let opaque = format!("{}opaque", sys::overlay_prefix());
                    sys::lsetxattr(&path, opaque.as_bytes(), b"y").map_err(|e| {
                        io_err(
                            format!("mark {} opaque", dir.rel.join(os(name)).display()),
                            e,
                        )
                    })?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::Invalid("symlink without a target".into()))?
                    .into_owned();
                symlinkat(&dfd, name, &target)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let fmt = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                match mknodat(&dfd, name, fmt, libc::makedev(major, minor)) {
                    // Only root of the initial user namespace makes devices; in an ordinary
                    // user's namespace they are left out, as Docker's and containerd's untar
                    // do there (a base image's /dev/console, say), but not quietly. The
                    // layer's blob keeps them for the images built on it.
                    Err(Error::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EPERM) && fmt != libc::S_IFIFO =>
                    {
                        tracing::warn!(
                            "skipping device {} ({} {major}:{minor}): no permission to make \
                             devices here",
                            dir.rel.join(os(name)).display(),
                            if fmt == libc::S_IFCHR {
                                "char"
                            } else {
                                "block"
                            },
                        );
                        return Ok(());
                    }
                    r => r?,
                }
            }
            _ => {
                let (mut content, expected) = crate::layer::import::file_content(entry, limits)?;
                let f = create_file(&dfd, name)?;
                let written = crate::layer::copy_sparse(&mut content, &f).map_err(|e| {
                    io_err(format!("write {}", dir.rel.join(os(name)).display()), e)
                })?;
                if written != expected {
                    return Err(Error::Layer(format!(
                        "truncated: header says {expected} bytes, the layer has {written}"
                    )));
                }
            }
        }
        self.set_attrs(
            &dfd,
            &dir.rel,
            name,
            kind == tar::EntryType::Symlink,
            is_dir,
            &attrs,
        )
    }

    /// The entry `name` of `rel` in the new layer, whiteouts included.
    fn upper_entry(&self, rel: &Path, name: &[u8]) -> Result<Option<std::fs::Metadata>> {
        let p = self.upper_path(rel).join(os(name));
        match std::fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("stat {}", p.display()), e)),
        }
    }

    /// What the layers below the new one have at `name` in `dir`, if anything.
    fn in_lowers(&self, dir: &Dir, name: &[u8]) -> Result<Option<std::fs::Metadata>> {
        lookup(self.layers, &dir.lowers(), &dir.rel, os(name))
            .map(|h| h.map(|h| h.meta))
            .map_err(|e| io_err(format!("look up {}", dir.rel.join(os(name)).display()), e))
    }

    fn remove_upper(&mut self, dfd: &File, rel: &Path, name: &[u8], is_dir: bool) -> Result<()> {
        let p = self.upper_path(rel).join(os(name));
        if is_dir {
            // rel has no symlinks (openat2 just opened it refusing them), and remove_dir_all
            // does not follow the ones inside.
            std::fs::remove_dir_all(&p)
                .map_err(|e| io_err(format!("remove {}", p.display()), e))?;
            let gone = rel.join(os(name));
            self.dir_times.retain(|k, _| !k.starts_with(&gone));
            return Ok(());
        }
        let n = cstr(name).map_err(|e| io_err("remove", e))?;
        // SAFETY: n is NUL-terminated; dfd is an open directory.
        check(unsafe { libc::unlinkat(dfd.as_raw_fd(), n.as_ptr(), 0) })
            .map_err(|e| io_err(format!("remove {}", p.display()), e))
    }

    /// `.wh..wh..opq` in `dir`: nothing lower layers have in it shows through any more.
    fn opaque(&mut self, dir: &Dir) -> Result<()> {
        if !dir.rel.as_os_str().is_empty() {
            let opaque = format!("{}opaque", sys::overlay_prefix());
            let path = self.upper_path(&dir.rel);
            return sys::lsetxattr(&path, opaque.as_bytes(), b"y")
                .map_err(|e| io_err(format!("mark {} opaque", path.display()), e));
        }
        // overlayfs ignores the opaque mark on the root of a layer, so the root's lower
        // entries get one whiteout each instead.
        let mut names = std::collections::BTreeSet::new();
        for &i in &dir.lowers() {
            let d = self.layers[i].clone();
            let list =
                std::fs::read_dir(&d).map_err(|e| io_err(format!("read {}", d.display()), e))?;
            for ent in list {
                let ent = ent.map_err(|e| io_err(format!("read {}", d.display()), e))?;
                names.insert(ent.file_name().as_bytes().to_vec());
            }
        }
        let dfd = self.open(Path::new(""))?;
        for name in names {
            if self.upper_entry(Path::new(""), &name)?.is_none()
                && self.in_lowers(dir, &name)?.is_some()
            {
                mknodat(&dfd, &name, libc::S_IFCHR, 0)?;
            }
        }
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &Dir,
        dfd: &File,
        name: &[u8],
        limits: &ImportLimits,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| Error::Invalid("hard link without a target".into()))?
            .into_owned();
        let shown_target = shown(&target);
        let missing = || Error::NotFound(format!("hard link target {shown_target}"));
        let tcomps = crate::layer::import::components(&target, limits)?;
        let Some((tname, tdirs)) = tcomps.split_last() else {
            return Err(Error::NotPermitted(format!(
                "hard link to directory {shown_target}"
            )));
        };
        let tdir = self.resolve(tdirs, false).map_err(|_| missing())?;
        let hit = lookup(self.layers, &tdir.merging, &tdir.rel, os(tname))
            .map_err(|e| io_err(format!("look up {shown_target}"), e))?
            .ok_or_else(missing)?;
        if hit.meta.is_dir() {
            return Err(Error::NotPermitted(format!(
                "hard link to directory {shown_target}"
            )));
        }
        let tdir = if hit.layer != 0 {
            // A link to a lower file copies it up first, as link(2) on the mount would.
            let tdir = self.resolve(tdirs, true)?;
            self.copy_up(&tdir.rel, tname, hit.layer)?;
            tdir
        } else {
            tdir
        };
        let tdfd = self.open(&tdir.rel)?;
        if let Some(m) = self.upper_entry(&dir.rel, name)? {
            let t = self.upper_entry(&tdir.rel, tname)?.ok_or_else(missing)?;
            if (m.dev(), m.ino()) == (t.dev(), t.ino()) {
                return Ok(());
            }
            self.remove_upper(dfd, &dir.rel, name, m.is_dir())?;
        }
        let (from, to) = (
            cstr(tname).map_err(|e| io_err("link", e))?,
            cstr(name).map_err(|e| io_err("link", e))?,
        );
        // SAFETY: both names are NUL-terminated single components; both fds are open dirs.
        check(unsafe {
            libc::linkat(
                tdfd.as_raw_fd(),
                from.as_ptr(),
                dfd.as_raw_fd(),
                to.as_ptr(),
                0,
            )
        })
        .map_err(|e| io_err(format!("link {}", dir.rel.join(os(name)).display()), e))
    }

    /// Sets owner, mode, xattrs and times of `name` in the directory open as `dfd`, in the
    /// order that keeps them: chown clears setuid bits and capabilities, so it goes first.
    fn set_attrs(
        &mut self,
        dfd: &File,
        rel: &Path,
        name: &[u8],
        symlink: bool,
        dir: bool,
        a: &Attrs,
    ) -> Result<()> {
        let shown_path = rel.join(os(name));
        let ctx = |what: &str, e| io_err(format!("{what} {}", shown_path.display()), e);
        let n = cstr(name).map_err(|e| ctx("name", e))?;
        let fd = dfd.as_raw_fd();
        // SAFETY: n is NUL-terminated and fd an open directory, for all calls below.
        check(unsafe { libc::fchownat(fd, n.as_ptr(), a.uid, a.gid, libc::AT_SYMLINK_NOFOLLOW) })
            .map_err(|e| ctx("chown", e))?;
        if !symlink {
            // SAFETY: as above; the entry was made by this extraction and is not a symlink.
            check(unsafe { libc::fchmodat(fd, n.as_ptr(), a.mode, 0) })
                .map_err(|e| ctx("chmod", e))?;
        }
        if !a.xattrs.is_empty() {
            let path = fd_path(dfd, os(name));
            for (k, v) in &a.xattrs {
                sys::lsetxattr(&path, k, v).map_err(|e| ctx("set xattr on", e))?;
            }
        }
        if dir {
            self.dir_times.insert(shown_path, a.times);
            return Ok(());
        }
        set_times(dfd, name, a.times).map_err(|e| ctx("set times of", e))
    }

    fn set_dir_times(&self) -> Result<()> {
        for (rel, times) in self.dir_times.iter().rev() {
            let (parent, name) = match (rel.parent(), rel.file_name()) {
                (Some(p), Some(n)) => (p, n.as_bytes()),
                _ => (Path::new(""), b".".as_slice()),
            };
            // A directory that a later entry replaced by something else keeps no times.
            let Ok(dfd) = open_dir_beneath(&self.upper, parent) else {
                continue;
            };
            match set_times(&dfd, name, *times) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("set times of {}", rel.display()), e)),
            }
        }
        Ok(())
    }
}

fn now() -> (i64, u32) {
    let t = crate::Timestamp::now();
    (t.sec, t.nsec)
}

fn set_times(dfd: &File, name: &[u8], t: Times) -> io::Result<()> {
    let n = cstr(name)?;
    let ts = |(sec, nsec): (i64, u32)| libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = [ts(t.atime), ts(t.mtime)];
    // SAFETY: n is NUL-terminated, times holds two timespecs.
    check(unsafe {
        libc::utimensat(
            dfd.as_raw_fd(),
            n.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn mkdirat(dfd: &File, name: &[u8], mode: u32) -> Result<()> {
    let n = cstr(name).map_err(|e| io_err("mkdir", e))?;
    // SAFETY: n is NUL-terminated; dfd is an open directory.
    check(unsafe { libc::mkdirat(dfd.as_raw_fd(), n.as_ptr(), mode) })
        .map_err(|e| io_err(format!("mkdir {}", shown(name)), e))
}

fn symlinkat(dfd: &File, name: &[u8], target: &[u8]) -> Result<()> {
    let n = cstr(name).map_err(|e| io_err("symlink", e))?;
    let t = cstr(target).map_err(|e| io_err(format!("symlink {}", shown(name)), e))?;
    // SAFETY: both strings are NUL-terminated; dfd is an open directory.
    check(unsafe { libc::symlinkat(t.as_ptr(), dfd.as_raw_fd(), n.as_ptr()) })
        .map_err(|e| io_err(format!("symlink {}", shown(name)), e))
}

fn mknodat(dfd: &File, name: &[u8], fmt: libc::mode_t, rdev: libc::dev_t) -> Result<()> {
    let n = cstr(name).map_err(|e| io_err("mknod", e))?;
    // SAFETY: n is NUL-terminated; dfd is an open directory.
    check(unsafe { libc::mknodat(dfd.as_raw_fd(), n.as_ptr(), fmt | 0o600, rdev) })
        .map_err(|e| io_err(format!("mknod {}", shown(name)), e))
}

/// Creates the regular file `name`, refusing to open anything that already exists.
fn create_file(dfd: &File, name: &[u8]) -> Result<File> {
    let n = cstr(name).map_err(|e| io_err("create", e))?;
    // SAFETY: n is NUL-terminated; dfd is an open directory.
    let fd = unsafe {
        libc::openat(
            dfd.as_raw_fd(),
            n.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    check(fd).map_err(|e| io_err(format!("create {}", shown(name)), e))?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn attrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Attrs> {
    let a = crate::layer::import::entry_attrs(entry)?;
    Ok(Attrs {
        mode: a.perm,
        uid: a.uid,
        gid: a.gid,
        times: Times {
            atime: (a.atime.sec, a.atime.nsec),
            mtime: (a.mtime.sec, a.mtime.nsec),
        },
        xattrs: a.xattrs,
    })
}
