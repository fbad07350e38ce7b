//! Applying one operation to either side: the plain directory through the kernel, an imgfs tree
//! through `Tree`, and which pairs of different errnos are both right.

use std::ffi::CString;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use imgfs::{FileKind, Ino, NewNode, RenameMode, SetAttr, Tree};

use super::ops::{Op, fill};
use super::snap::cstr;

pub(super) fn os_errno(e: io::Error) -> i32 {
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
pub(super) fn apply_plain(root: &Path, op: &Op) -> Result<(), i32> {
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
pub(super) fn apply_tree(t: &Tree, op: &Op) -> imgfs::Result<()> {
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
pub(super) fn both_allowed(op: &Op, plain: i32, tree: i32) -> bool {
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
