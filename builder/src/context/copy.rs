//! The copies of COPY and ADD (`copy_into`, `copy_heredoc`) and WORKDIR's directories
//! (`mkdir_in_root`), written into an image root only through `root::RootDir`'s
//! openat2(RESOLVE_IN_ROOT) directory fds.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::SFlag;

use super::chmod::Chmod;
use super::resolve::{Entry, Resolved, ResolvedSource, SourceTree, base_name};
use super::root::{self, Meta, RootDir, in_root};
use super::{ContextError, archive, io_err, join, mtime_of};

/// How COPY/ADD writes what it copies.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown` already resolved (see `resolve_chown`); None is 0:0.
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<Chmod>,
    /// ADD's behaviour: a source that is a tar archive (plain or compressed) is unpacked into
    /// `dest`, keeping the ownership and modes it records and overwriting existing files,
    /// instead of being copied as a file.
    pub unpack_archives: bool,
}

impl CopyOptions {
    fn owner(&self) -> (u32, u32) {
        self.chown.unwrap_or((0, 0))
    }

    fn meta(&self, meta: &fs::Metadata, is_dir: bool) -> Meta {
        let (uid, gid) = self.owner();
        let mode = meta.mode() & 0o7777;
        Meta {
            mode: self.chmod.as_ref().map_or(mode, |c| c.apply(mode, is_dir)),
            uid,
            gid,
            mtime: Some(mtime_of(meta)),
        }
    }
}

fn dest_err(dest: &str) -> impl Fn(io::Error) -> ContextError + '_ {
    move |e| ContextError::Dest {
        dest: dest.to_string(),
        reason: e.to_string(),
    }
}

/// Where one source goes: the directory to write in and the name to write, or the directory
/// whose contents are replaced for a directory source.
fn target_for(
    root: &RootDir,
    dest: &str,
    dest_is_dir: bool,
    src: &ResolvedSource,
) -> io::Result<(String, String)> {
    // Symlinks in the destination are followed inside the root, the last one too: BuildKit
    // resolves the destination with RootPath before copying, so `COPY x /link` writes to the
    // link's target in the image.
    let dest_rel = root.resolve_path(&in_root(dest))?;
    let names_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
    let into_dir = dest_is_dir || names_dir || dest_rel.is_empty() || root.is_dir(&dest_rel)?;
    if into_dir {
        Ok((dest_rel, base_name(&src.name).to_string()))
    } else {
        let (parent, name) = root::split(&dest_rel);
        Ok((parent.to_string(), name.to_string()))
    }
}

/// Copies resolved sources into `dest` inside the image root `dest_root` (an absolute in-image
/// path, already joined with WORKDIR), with Docker's rules: a directory source copies its
/// contents; a file goes into `dest` when it ends in `/` or `/.`, is an existing directory
/// (symlinks followed inside the root), or several sources were named or matched, and
/// otherwise becomes `dest`. Missing directories on the way are created 0755, owned by the
/// `--chown` user. With `opts.unpack_archives` (ADD), tar archives are unpacked into `dest`
/// instead.
pub fn copy_into(
    tree: &SourceTree<'_>,
    resolved: &Resolved,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), ContextError> {
    let root = RootDir::open(dest_root).map_err(io_err(dest_root))?;
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    for src in &resolved.sources {
        let host = tree.root.join(&src.path);
        if opts.unpack_archives
            && !src.is_dir
            && archive::is_archive(&host).map_err(io_err(&host))?.is_some()
        {
            let (uid, gid) = opts.owner();
            let dest_rel = in_root(dest);
            root.mkdir_all(&dest_rel, uid, gid)
                .map_err(dest_err(dest))?;
            let file = File::open(&host).map_err(io_err(&host))?;
            let stream = archive::decompress(file, &src.name)?;
            archive::unpack(stream, &root, &dest_rel, true, &src.name)?;
            continue;
        }
        copy_one(
            tree,
            src,
            resolved.dest_is_dir,
            &root,
            dest,
            opts,
            &mut links,
        )?;
    }
    Ok(())
}

fn copy_one(
    tree: &SourceTree<'_>,
    src: &ResolvedSource,
    dest_is_dir: bool,
    root: &RootDir,
    dest: &str,
    opts: &CopyOptions,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<(), ContextError> {
    let (uid, gid) = opts.owner();
    let derr = dest_err(dest);
    let entries = tree.entries(src)?;
    if !src.is_dir {
        let (dir_rel, name) = target_for(root, dest, dest_is_dir, src).map_err(&derr)?;
        let dir = root.mkdir_all(&dir_rel, uid, gid).map_err(&derr)?;
        let entry = &entries[0];
        return write_entry(tree, entry, &dir, &dir_rel, &name, opts, root, links).map(|_| ());
    }
    let dest_rel = in_root(dest);
    let top = root.mkdir_all(&dest_rel, uid, gid).map_err(&derr)?;
    // stack[d] is the open directory at depth d; only as many fds as the tree is deep.
    let mut stack = vec![OpenDir {
        fd: top,
        rel: dest_rel,
        mtime: None,
    }];
    for entry in &entries {
        while stack.len() > entry.depth {
            stack.pop().expect("depth >= 1").finish()?;
        }
        let parent = stack.last().expect("the destination stays");
        let name = root::split(&entry.rel).1.to_string();
        let written = write_entry(
            tree,
            entry,
            &parent.fd,
            &parent.rel,
            &name,
            opts,
            root,
            links,
        )?;
        if let Some(fd) = written {
            let rel = join(&parent.rel, &name);
            stack.push(OpenDir {
                fd,
                rel,
                mtime: Some(mtime_of(&entry.meta)),
            });
        }
    }
    while let Some(dir) = stack.pop() {
        dir.finish()?;
    }
    Ok(())
}

/// A directory being filled by a copy, with the time to give it once it is complete (writing
/// its entries changes it).
struct OpenDir {
    fd: std::os::fd::OwnedFd,
    rel: String,
    mtime: Option<(i64, i64)>,
}

impl OpenDir {
    fn finish(self) -> Result<(), ContextError> {
        match self.mtime {
            Some(t) => root::set_mtime(&self.fd, t).map_err(io_err(format!("/{}", self.rel))),
            None => Ok(()),
        }
    }
}

/// Writes one entry as `name` in `dir` (which is `dir_rel` inside the root); returns the
/// directory's fd for a directory entry.
#[allow(clippy::too_many_arguments)]
fn write_entry(
    tree: &SourceTree<'_>,
    entry: &Entry,
    dir: &std::os::fd::OwnedFd,
    dir_rel: &str,
    name: &str,
    opts: &CopyOptions,
    root: &RootDir,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<Option<std::os::fd::OwnedFd>, ContextError> {
    let host = tree.root.join(&entry.tree_rel);
    let target_rel = join(dir_rel, name);
    let werr = |e: io::Error| ContextError::Dest {
        dest: format!("/{target_rel}"),
        reason: e.to_string(),
    };
    let ft = entry.meta.file_type();
    if ft.is_dir() {
        let xattrs = root::read_xattrs(&host).map_err(io_err(&host))?;
        return root::ensure_dir(dir, name, &opts.meta(&entry.meta, true), &xattrs)
            .map(Some)
            .map_err(werr);
    }
    if ft.is_symlink() {
        let target = fs::read_link(&host).map_err(io_err(&host))?;
        let (uid, gid) = opts.owner();
        let meta = Meta {
            mode: 0o777,
            uid,
            gid,
            mtime: Some(mtime_of(&entry.meta)),
        };
        root::write_symlink(dir, name, &target, &meta).map_err(werr)?;
        return Ok(None);
    }
    let key = (entry.meta.dev(), entry.meta.ino());
    if entry.meta.nlink() > 1 {
        if let Some(first) = links.get(&key) {
            root.hard_link(first, dir, name).map_err(werr)?;
            return Ok(None);
        }
        links.insert(key, target_rel.clone());
    }
    let meta = opts.meta(&entry.meta, false);
    if ft.is_file() {
        let mut file = File::open(&host).map_err(io_err(&host))?;
        let xattrs = root::read_xattrs(&host).map_err(io_err(&host))?;
        root::write_file(dir, name, &mut file, &meta, &xattrs).map_err(werr)?;
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_fifo() {
            SFlag::S_IFIFO
        } else if ft.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        root::write_node(dir, name, kind, entry.meta.rdev(), &meta).map_err(werr)?;
    }
    // Sockets cannot be copied and are skipped, as BuildKit skips them.
    Ok(None)
}

/// Writes a heredoc source (`COPY <<EOF /dest`) named `name` with mode 0644 (BuildKit's
/// default for heredoc files; `--chmod` replaces it), owned by `--chown` or root, with the same
/// destination rules as a file source.
pub fn copy_heredoc(
    dest_root: &Path,
    name: &str,
    content: &[u8],
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), ContextError> {
    let root = RootDir::open(dest_root).map_err(io_err(dest_root))?;
    let src = ResolvedSource {
        name: name.to_string(),
        path: String::new(),
        is_dir: false,
    };
    let derr = dest_err(dest);
    let (dir_rel, file_name) = target_for(&root, dest, false, &src).map_err(&derr)?;
    let (uid, gid) = opts.owner();
    let dir = root.mkdir_all(&dir_rel, uid, gid).map_err(&derr)?;
    let meta = Meta {
        mode: opts.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false)),
        uid,
        gid,
        mtime: None,
    };
    root::write_file(&dir, &file_name, &mut &content[..], &meta, &[]).map_err(&derr)?;
    Ok(())
}

/// Creates the directory `path` (absolute in the image) and its missing parents inside the image
/// root `dest_root`, owned by `uid:gid` and mode 0755, following symlinks inside the root only
/// (WORKDIR, and the working directory of a RUN step).
pub fn mkdir_in_root(dest_root: &Path, path: &str, uid: u32, gid: u32) -> Result<(), ContextError> {
    let root = RootDir::open(dest_root).map_err(io_err(dest_root))?;
    root.mkdir_all(&in_root(path), uid, gid)
        .map_err(dest_err(path))?;
    Ok(())
}
