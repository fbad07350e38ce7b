//! The build context: files sent to the build, `.dockerignore` applied, COPY/ADD sources resolved, hashed and copied.
//!
//! Sources are read from a host directory (the context, or a stage's root file system for
//! `COPY --from`) and resolved lexically inside it, so `..` and symlinks never leave it. Writes go
//! into a mounted image root only through `root::RootDir`, which resolves every path with
//! openat2(RESOLVE_IN_ROOT).
//!
//! Semantics checked against buildah 1.28 (`FROM scratch` builds, vfs driver) where Docker's
//! reference is silent, and BuildKit's behaviour where they differ:
//! - a source that is a symlink is followed (inside the root) and keeps the link's name:
//!   `COPY link.txt /d/` gives `/d/link.txt` with the target's content; a link to a directory
//!   copies the directory's contents; an absolute link resolves inside the context;
//! - symlinks below a copied directory are copied as symlinks;
//! - hard links between copied files stay hard links (buildah and BuildKit agree);
//! - missing destination directories are created 0755 and owned by the `--chown` user (root
//!   without it); `--chmod` applies to copied files and directories, not to created parents;
//! - a wildcard that matches nothing is fine next to other sources, but an instruction whose
//!   sources all match nothing fails (buildah: "no such file or directory"; Docker's classic
//!   builder: "No source files were specified");
//! - a wildcard that matches one file copies it to a non-directory `dest` as that file
//!   (buildah: `COPY payload* /wcdest` makes the file `/wcdest`);
//! - an existing destination directory keeps its own mode and owner when a directory is copied
//!   into it (buildah: `COPY --chown=5:5 d /etc` leaves a 0700 root `/etc` as it was);
//! - a destination that is a symlink in the image is followed inside the root, the last
//!   component included, as BuildKit resolves it (buildah 1.28 instead makes a dangling link's
//!   target a directory and copies into it);
//! - setuid/setgid bits of context files are kept (BuildKit copies the full mode; buildah 1.28
//!   drops them, which is the departure from Docker's reference).

mod archive;
mod chmod;
mod copy;
mod hash;
mod resolve;
mod root;
mod user;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use archive::ArchiveError;

/// Unpacks a plain tar of a whole file tree (a snapshot's export) into the directory `dir`,
/// with owners, modes, times, extended attributes, hard links, fifos and devices, and holes
/// for blocks of zeros. Devices the process may not make are skipped with a warning each.
pub fn unpack_tree(reader: impl Read, dir: &Path, name: &str) -> Result<(), ArchiveError> {
    let root = RootDir::open(dir).map_err(|source| ArchiveError::Read {
        archive: name.to_string(),
        source,
    })?;
    archive::unpack(reader, &root, "", true, name)
}
pub use chmod::{Chmod, ChmodClause};
pub use copy::{CopyOptions, copy_heredoc, copy_into, mkdir_in_root};
pub use hash::content_hash;
pub use resolve::{Resolved, ResolvedSource, SourceTree, check_add_source};
pub use user::{User, UserError, resolve_chown, resolve_user};

use crate::dockerignore::{MatchInfo, Matcher, PatternError};
use root::{RootDir, in_root};

/// Why a context could not be read or a COPY/ADD could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(
        "file not found in build context or excluded by .dockerignore: stat {source_path}: file does not exist"
    )]
    NotInContext { source_path: String },
    #[error("stat {source_path}: file does not exist in the source stage")]
    NotInStage { source_path: String },
    #[error("no source files were specified")]
    NoSources,
    #[error("invalid source pattern {pattern:?}")]
    BadSourcePattern { pattern: String },
    #[error("ADD {url}: remote URLs are not supported offline")]
    RemoteUnsupported { url: String },
    #[error("invalid --chmod value {value:?}")]
    BadChmod { value: String },
    #[error("cannot copy to {dest}: {reason}")]
    Dest { dest: String, reason: String },
    #[error("{path}: {source}", path = path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Ignore(#[from] PatternError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ContextError {
    let path = path.into();
    move |source| ContextError::Io { path, source }
}

/// A build context on disk: a directory and the set of paths `.dockerignore` lets through.
pub struct Context {
    root: PathBuf,
    /// Included paths relative to the root (`a/b`), with every parent of an included path.
    included: BTreeSet<String>,
    /// Keeps a context unpacked from a tar alive as long as the context.
    _unpacked: Option<tempfile::TempDir>,
}

impl Context {
    /// Reads the context directory `dir`, excluding what `matcher` excludes. Directories are
    /// skipped whole when no `!` exception could re-include something below them.
    pub fn from_dir(dir: &Path, matcher: &Matcher) -> Result<Context, ContextError> {
        let root = fs::canonicalize(dir).map_err(io_err(dir))?;
        let mut included = BTreeSet::new();
        index_dir(&root, "", &MatchInfo::default(), matcher, &mut included)?;
        Ok(Context {
            root,
            included,
            _unpacked: None,
        })
    }

    /// Unpacks a context sent as a tar stream (plain or gzip, as `docker build -` accepts) into
    /// a temporary directory, then applies `<dockerfile>.dockerignore` or `.dockerignore` found
    /// in it. Entries cannot land outside the directory: `..` names are refused, and absolute
    /// names and symlinks are resolved inside it.
    pub fn from_tar(reader: impl Read, dockerfile: &str) -> Result<Context, ContextError> {
        let tmp = tempfile::tempdir().map_err(io_err("temporary directory"))?;
        let root = RootDir::open(tmp.path()).map_err(io_err(tmp.path()))?;
        let stream = archive::decompress(reader, "build context")?;
        archive::unpack(stream, &root, "", false, "build context")?;
        let dockerfile_path = tmp.path().join(in_root(dockerfile));
        let matcher = Matcher::for_dockerfile(tmp.path(), &dockerfile_path)?;
        let mut ctx = Context::from_dir(tmp.path(), &matcher)?;
        ctx._unpacked = Some(tmp);
        Ok(ctx)
    }

    /// The context directory on disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a context-relative path is part of the context.
    pub fn is_included(&self, rel: &str) -> bool {
        let rel = in_root(rel);
        rel.is_empty() || self.included.contains(&rel)
    }

    /// The context as a source of COPY/ADD.
    pub fn source_tree(&self) -> SourceTree<'_> {
        SourceTree {
            root: &self.root,
            included: Some(&self.included),
        }
    }
}

fn index_dir(
    root: &Path,
    rel: &str,
    parent_info: &MatchInfo,
    matcher: &Matcher,
    out: &mut BTreeSet<String>,
) -> Result<bool, ContextError> {
    let dir = root.join(rel);
    let mut any = false;
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let (excluded, info) = matcher.matches_with_parent(&child, parent_info);
        let file_type = entry.file_type().map_err(io_err(entry.path()))?;
        if file_type.is_dir() {
            if excluded && matcher.can_skip_dir(&child) {
                continue;
            }
            // An excluded directory is still sent when an exception re-includes something in
            // it (Docker's reference; buildah 1.28 drops such files).
            if index_dir(root, &child, &info, matcher, out)? || !excluded {
                out.insert(child);
                any = true;
            }
        } else if !excluded {
            out.insert(child);
            any = true;
        }
    }
    Ok(any)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn mtime_of(meta: &fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

#[cfg(test)]
mod tests;
