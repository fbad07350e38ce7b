//! COPY/ADD sources: resolved inside a source tree (the context or a stage's root) with
//! BuildKit's wildcard and symlink rules (`SourceTree::resolve`), and listed for hashing and
//! copying (`SourceTree::entries`). Nothing here writes.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use super::root::{self, in_root};
use super::{ContextError, io_err, join};
use crate::dockerignore::glob_regex;

/// A directory COPY/ADD read from: the context (with `.dockerignore` applied) or a stage's root
/// file system (`COPY --from`, everything visible).
#[derive(Clone, Copy)]
pub struct SourceTree<'a> {
    pub(super) root: &'a Path,
    pub(super) included: Option<&'a BTreeSet<String>>,
}

/// One source after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The path as named (after wildcard expansion), relative to the tree; its last component
    /// names the copy.
    pub name: String,
    /// The real path after following symlinks inside the tree, relative to it.
    pub path: String,
    pub is_dir: bool,
}

/// The sources of one COPY/ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub sources: Vec<ResolvedSource>,
    /// Several sources were named or matched: the destination is a directory.
    pub dest_is_dir: bool,
}

const MAX_SYMLINKS: usize = 40;

fn has_wildcard(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

impl<'a> SourceTree<'a> {
    /// A stage's root file system as a COPY --from source: `.dockerignore` does not apply.
    pub fn stage(root: &'a Path) -> SourceTree<'a> {
        SourceTree {
            root,
            included: None,
        }
    }

    pub(super) fn visible(&self, rel: &str) -> bool {
        rel.is_empty() || self.included.is_none_or(|set| set.contains(rel))
    }

    fn not_found(&self, source_path: &str) -> ContextError {
        let source_path = source_path.to_string();
        if self.included.is_some() {
            ContextError::NotInContext { source_path }
        } else {
            ContextError::NotInStage { source_path }
        }
    }

    /// Follows `rel` component by component inside the tree, symlinks included (an absolute
    /// target starts again at the tree's root, `..` stops at it). None when a component is
    /// missing, excluded or not a directory.
    fn follow(&self, rel: &str) -> Result<Option<String>, ContextError> {
        let mut todo: Vec<String> = rel.split('/').rev().map(str::to_string).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(comp) = todo.pop() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(comp);
            let path = cur.join("/");
            if !self.visible(&path) {
                return Ok(None);
            }
            let host = self.root.join(&path);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(io_err(host)(e)),
            };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io_err(host)(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = fs::read_link(&host).map_err(io_err(&host))?;
                let target = target.to_string_lossy().into_owned();
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
        }
        Ok(Some(cur.join("/")))
    }

    fn is_dir(&self, rel: &str) -> Result<bool, ContextError> {
        let host = self.root.join(rel);
        Ok(fs::symlink_metadata(&host).map_err(io_err(&host))?.is_dir())
    }

    /// Resolves the sources of one COPY/ADD with BuildKit's rules: paths are relative to the
    /// tree's root whatever they start with, wildcards match per component with Go's
    /// filepath.Match, and symlinks are followed inside the tree.
    pub fn resolve<S: AsRef<str>>(&self, sources: &[S]) -> Result<Resolved, ContextError> {
        let mut out = Vec::new();
        for src in sources {
            let src = src.as_ref();
            let rel = in_root(src);
            if !has_wildcard(&rel) {
                let path = self.follow(&rel)?.ok_or_else(|| self.not_found(src))?;
                out.push(ResolvedSource {
                    name: rel,
                    is_dir: self.is_dir(&path)?,
                    path,
                });
                continue;
            }
            // (name so far, real path so far)
            let mut candidates = vec![(String::new(), String::new())];
            for comp in rel.split('/') {
                let mut next = Vec::new();
                if has_wildcard(comp) {
                    let re = glob_regex(comp).ok_or_else(|| ContextError::BadSourcePattern {
                        pattern: src.to_string(),
                    })?;
                    for (name, real) in &candidates {
                        let host = self.root.join(real);
                        let Ok(listing) = fs::read_dir(&host) else {
                            continue;
                        };
                        let mut names: Vec<String> = listing
                            .filter_map(Result::ok)
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| re.is_match(n))
                            .collect();
                        names.sort();
                        for n in names {
                            if let Some(r) = self.follow(&join(real, &n))? {
                                next.push((join(name, &n), r));
                            }
                        }
                    }
                } else {
                    for (name, real) in &candidates {
                        if let Some(r) = self.follow(&join(real, comp))? {
                            next.push((join(name, comp), r));
                        }
                    }
                }
                candidates = next;
            }
            for (name, path) in candidates {
                out.push(ResolvedSource {
                    name,
                    is_dir: self.is_dir(&path)?,
                    path,
                });
            }
        }
        if out.is_empty() {
            return Err(match sources.first() {
                Some(first) if sources.len() == 1 => self.not_found(first.as_ref()),
                _ => ContextError::NoSources,
            });
        }
        // A wildcard matching one file copies to `dest` as a file (buildah 1.28 and Docker's
        // classic builder agree); several matches or sources make `dest` a directory, as
        // BuildKit accepts `COPY *.py app` where the classic builder refused it.
        Ok(Resolved {
            dest_is_dir: out.len() > 1 || sources.len() > 1,
            sources: out,
        })
    }

    /// Everything a source stands for: the file itself, or a directory's visible entries in
    /// sorted pre-order, as (path relative to the source, path relative to the tree, depth).
    pub(super) fn entries(&self, src: &ResolvedSource) -> Result<Vec<Entry>, ContextError> {
        let host = self.root.join(&src.path);
        let meta = fs::symlink_metadata(&host).map_err(io_err(&host))?;
        if !src.is_dir {
            return Ok(vec![Entry {
                rel: String::new(),
                tree_rel: src.path.clone(),
                depth: 0,
                meta,
            }]);
        }
        let mut out = Vec::new();
        let mut walk = walkdir::WalkDir::new(&host)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter();
        while let Some(item) = walk.next() {
            let item = item.map_err(|e| {
                let path = e.path().map(Path::to_path_buf).unwrap_or(host.clone());
                ContextError::Io {
                    path,
                    source: e.into(),
                }
            })?;
            let rel = item
                .path()
                .strip_prefix(&host)
                .expect("walkdir stays below its root")
                .to_string_lossy()
                .into_owned();
            let tree_rel = join(&src.path, &rel);
            if !self.visible(&tree_rel) {
                if item.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            }
            let meta = item.metadata().map_err(|e| ContextError::Io {
                path: item.path().to_path_buf(),
                source: e.into(),
            })?;
            out.push(Entry {
                rel,
                tree_rel,
                depth: item.depth(),
                meta,
            });
        }
        Ok(out)
    }
}

pub(super) struct Entry {
    /// Relative to the source (empty for a file source).
    pub(super) rel: String,
    /// Relative to the tree's root.
    pub(super) tree_rel: String,
    pub(super) depth: usize,
    pub(super) meta: fs::Metadata,
}

/// The last component of a source's name: what a copy into a directory is called.
pub(super) fn base_name(name: &str) -> &str {
    root::split(name).1
}

/// Refuses ADD sources that are URLs or git repositories, which need the network.
pub fn check_add_source(src: &str) -> Result<(), ContextError> {
    let remote = ["http://", "https://", "git://", "git@", "ssh://"]
        .iter()
        .any(|p| src.starts_with(p));
    if remote {
        return Err(ContextError::RemoteUnsupported {
            url: src.to_string(),
        });
    }
    Ok(())
}
