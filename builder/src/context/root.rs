//! Writes inside a mounted image root. Every path is resolved with openat2(RESOLVE_IN_ROOT), so an
//! absolute symlink in the image (`/app -> /etc`) means the image's `/etc`, never the host's, and
//! every write is made relative to a directory fd without following a symlink in the last
//! component.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

/// Owner and permission bits (including setuid, setgid and sticky) of something written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds; None leaves the time of creation.
    pub mtime: Option<(i64, i64)>,
}

/// Extended attributes as (name, value), sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The extended attributes of a path, not following a symlink at its end; a file system
/// without xattr support has none. BuildKit copies them (file capabilities live there).
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Xattrs> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let not_supported = |e: &io::Error| e.raw_os_error() == Some(libc::EOPNOTSUPP);
    // SAFETY: a null buffer of size 0 asks only for the size of the list.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        let e = io::Error::last_os_error();
        return if not_supported(&e) {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    let mut names = vec![0u8; size as usize];
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: the buffer is valid for names.len() bytes.
    let size = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(size as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        // SAFETY: as above, a size query, then a read into a buffer of that size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODATA) {
                continue;
            }
            return Err(e);
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: the buffer is valid for value.len() bytes.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

fn set_xattrs(fd: &OwnedFd, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in xattrs {
        let cname = CString::new(name.as_slice())?;
        // SAFETY: fd is open, the name is NUL-terminated and the value valid for its length.
        let rc = unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // A destination without xattr support loses them, as BuildKit's copy allows.
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The root of an image file system, opened once; paths are relative to it, `/`-separated and
/// already cleaned (see `in_root`).
pub(crate) struct RootDir {
    fd: OwnedFd,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Turns an in-image path (absolute or not) into a cleaned path relative to the root, with no
/// `..` left: `..` at the root stays at the root, as in the kernel.
pub(crate) fn in_root(path: &str) -> String {
    let c = crate::dockerignore::clean(&format!("/{path}"));
    c.trim_start_matches('/').to_string()
}

/// Splits a cleaned relative path into its parent and last component.
pub(crate) fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(at) => (&rel[..at], &rel[at + 1..]),
        None => ("", rel),
    }
}

fn nix_path(rel: &str) -> &str {
    if rel.is_empty() { "." } else { rel }
}

impl RootDir {
    pub fn open(path: &Path) -> io::Result<RootDir> {
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty())?;
        Ok(RootDir { fd })
    }

    /// Opens a path inside the root, following symlinks as the image would see them.
    fn resolve(&self, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&self.fd, nix_path(rel), how)
    }

    /// The directory at `rel` (symlinks followed inside the root), None when nothing is there.
    pub fn open_dir(&self, rel: &str) -> io::Result<Option<OwnedFd>> {
        match self.resolve(rel, DIR_FLAGS) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `rel` is a directory or a symlink that leads to one inside the root.
    pub fn is_dir(&self, rel: &str) -> io::Result<bool> {
        match self.resolve(rel, DIR_FLAGS) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a file for reading inside the root (symlinks followed inside it).
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        Ok(File::from(
            self.resolve(rel, OFlag::O_RDONLY | OFlag::O_CLOEXEC)?,
        ))
    }

    /// The path `rel` leads to inside the root with every symlink in it followed, the last one
    /// included, the way the image sees it (continuity's RootPath, which BuildKit resolves COPY
    /// destinations with): an absolute target starts again at the root, `..` stops at it, and a
    /// dangling link yields the path it points to, so it can be created.
    pub fn resolve_path(&self, rel: &str) -> io::Result<String> {
        let mut todo: Vec<String> = rel.split('/').rev().map(str::to_string).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        let mut missing = false;
        while let Some(comp) = todo.pop() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            if missing {
                cur.push(comp);
                continue;
            }
            let parent = self.resolve(&cur.join("/"), DIR_FLAGS);
            let parent = match parent {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    missing = true;
                    cur.push(comp);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match lstat_at(&parent, &comp)? {
                None => missing = true,
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    hops += 1;
                    if hops > 40 {
                        return Err(Errno::ELOOP.into());
                    }
                    let target = nix::fcntl::readlinkat(&parent, comp.as_str())?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    todo.extend(target.split('/').rev().map(str::to_string));
                    continue;
                }
                Some(_) => {}
            }
            cur.push(comp);
        }
        Ok(cur.join("/"))
    }

    /// Opens the directory `rel`, creating missing components with mode 0755 and the given
    /// owner (BuildKit's MkdirAll with the `--chown` user); existing ones are left as they are.
    pub fn mkdir_all(&self, rel: &str, uid: u32, gid: u32) -> io::Result<OwnedFd> {
        let rel = self.resolve_path(rel)?;
        let mut cur = self.resolve("", DIR_FLAGS)?;
        let mut prefix = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            // Resolve the whole prefix from the root each time, so a symlink in the image
            // is followed the way the image sees it rather than relative to `cur`.
            match self.resolve(&prefix, DIR_FLAGS) {
                Ok(fd) => cur = fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(&cur, comp, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let fd = openat(&cur, comp, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())?;
                    fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
                    // mkdir is subject to the umask; Docker's parents are exactly 0755.
                    fchmod(&fd, Mode::from_bits_truncate(0o755))?;
                    cur = fd;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(cur)
    }

    /// Makes `new_name` in `new_dir` a hard link to the file at `old_rel` inside the root.
    pub fn hard_link(&self, old_rel: &str, new_dir: &OwnedFd, new_name: &str) -> io::Result<()> {
        let (old_parent, old_name) = split(old_rel);
        let old_dir = self
            .open_dir(old_parent)?
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        remove_non_dir(new_dir, new_name)?;
        linkat(&old_dir, old_name, new_dir, new_name, AtFlags::empty())?;
        Ok(())
    }
}

/// The entry `name` in `dir` without following a symlink, None when absent.
pub(crate) fn lstat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_dir_stat(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Removes `name` from `dir` so something else can take its place; a directory there is an
/// error (EISDIR) rather than being removed with everything in it.
pub(crate) fn remove_non_dir(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match lstat_at(dir, name)? {
        None => Ok(()),
        Some(st) if is_dir_stat(&st) => Err(Errno::EISDIR.into()),
        Some(_) => Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?),
    }
}

/// Removes whatever is at `name` in `dir`, a directory with everything in it included, as
/// Docker's untar does before an archive entry takes a directory's place.
pub(crate) fn remove_any(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match lstat_at(dir, name)? {
        None => Ok(()),
        // std's remove_dir_all never follows symlinks below its start; the start is reached
        // through the fd, so no path outside the root is named.
        Some(st) if is_dir_stat(&st) => {
            std::fs::remove_dir_all(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
        }
        Some(_) => Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?),
    }
}

fn apply_meta(fd: &OwnedFd, meta: &Meta, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    // chown first: it clears setuid, setgid and file capabilities, which come back after it.
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    set_xattrs(fd, xattrs)?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))?;
    if let Some((s, ns)) = meta.mtime {
        let t = TimeSpec::new(s, ns);
        futimens(fd, &t, &t)?;
    }
    Ok(())
}

/// Writes a regular file `name` in `dir` from `content`, replacing a non-directory there.
pub(crate) fn write_file(
    dir: &OwnedFd,
    name: &str,
    content: &mut dyn Read,
    meta: &Meta,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<()> {
    remove_non_dir(dir, name)?;
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let file = File::from(fd);
    // Blocks of zeros become holes: a sparse file in an image stays sparse on disk.
    imgfs::layer::copy_sparse(content, &file)?;
    apply_meta(&OwnedFd::from(file), meta, xattrs)
}

/// Creates the symlink `name -> target` in `dir`, replacing a non-directory there.
pub(crate) fn write_symlink(
    dir: &OwnedFd,
    name: &str,
    target: &Path,
    meta: &Meta,
) -> io::Result<()> {
    remove_non_dir(dir, name)?;
    symlinkat(target, dir, name)?;
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if let Some((s, ns)) = meta.mtime {
        let t = TimeSpec::new(s, ns);
        utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)?;
    }
    Ok(())
}

/// Creates a fifo or device node `name` in `dir`, replacing a non-directory there.
pub(crate) fn write_node(
    dir: &OwnedFd,
    name: &str,
    kind: SFlag,
    rdev: u64,
    meta: &Meta,
) -> io::Result<()> {
    remove_non_dir(dir, name)?;
    mknodat(
        dir,
        name,
        kind,
        Mode::from_bits_truncate(0o600),
        rdev as libc::dev_t,
    )?;
    // The node is ours and not a symlink, so going through its name is safe.
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    nix::sys::stat::fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(meta.mode & 0o7777),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    if let Some((s, ns)) = meta.mtime {
        let t = TimeSpec::new(s, ns);
        utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)?;
    }
    Ok(())
}

/// Opens the directory `name` in `dir`, creating it (or replacing a non-directory) first, and
/// gives it `meta`'s owner and mode. Its time is left to the caller, to be set once the
/// directory's contents are written.
pub(crate) fn ensure_dir(
    dir: &OwnedFd,
    name: &str,
    meta: &Meta,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<OwnedFd> {
    match lstat_at(dir, name)? {
        Some(st) if is_dir_stat(&st) => {}
        Some(_) => {
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
            mkdirat(dir, name, Mode::from_bits_truncate(0o700))?;
        }
        None => mkdirat(dir, name, Mode::from_bits_truncate(0o700))?,
    }
    let fd = openat(dir, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())?;
    apply_meta(
        &fd,
        &Meta {
            mtime: None,
            ..*meta
        },
        xattrs,
    )?;
    Ok(fd)
}

/// Sets a directory's modification (and access) time through its fd.
pub(crate) fn set_mtime(fd: &impl AsFd, mtime: (i64, i64)) -> io::Result<()> {
    let t = TimeSpec::new(mtime.0, mtime.1);
    Ok(futimens(fd, &t, &t)?)
}
