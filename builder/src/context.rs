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
mod root;
mod user;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::stat::SFlag;
use sha2::{Digest, Sha256};

pub use archive::ArchiveError;
pub use user::{User, UserError, resolve_chown, resolve_user};

use crate::dockerignore::{MatchInfo, Matcher, PatternError, glob_regex};
use root::{Meta, RootDir, in_root};

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

/// A directory COPY/ADD read from: the context (with `.dockerignore` applied) or a stage's root
/// file system (`COPY --from`, everything visible).
#[derive(Clone, Copy)]
pub struct SourceTree<'a> {
    root: &'a Path,
    included: Option<&'a BTreeSet<String>>,
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

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

impl<'a> SourceTree<'a> {
    /// A stage's root file system as a COPY --from source: `.dockerignore` does not apply.
    pub fn stage(root: &'a Path) -> SourceTree<'a> {
        SourceTree {
            root,
            included: None,
        }
    }

    fn visible(&self, rel: &str) -> bool {
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
    fn entries(&self, src: &ResolvedSource) -> Result<Vec<Entry>, ContextError> {
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

struct Entry {
    /// Relative to the source (empty for a file source).
    rel: String,
    /// Relative to the tree's root.
    tree_rel: String,
    depth: usize,
    meta: fs::Metadata,
}

fn mtime_of(meta: &fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

/// The last component of a source's name: what a copy into a directory is called.
fn base_name(name: &str) -> &str {
    root::split(name).1
}

/// A content hash of resolved sources for the build cache: sha256 over each source's name and,
/// for each file below it in sorted order, relative path, file type, permission bits, and the
/// sha256 of the content or the symlink target. Times, ownership and the context's location
/// on disk are left out, as in BuildKit's content-based cache keys, so a fresh checkout hits
/// the cache. File contents are hashed on several threads.
pub fn content_hash(tree: &SourceTree<'_>, resolved: &Resolved) -> Result<String, ContextError> {
    let mut lists = Vec::new();
    for src in &resolved.sources {
        lists.push(tree.entries(src)?);
    }
    let files: Vec<&Entry> = lists
        .iter()
        .flatten()
        .filter(|e| e.meta.file_type().is_file())
        .collect();
    let digests = digest_files(tree.root, &files)?;
    let mut digest_of: HashMap<&str, [u8; 32]> = HashMap::new();
    for (entry, digest) in files.iter().zip(digests) {
        digest_of.insert(entry.tree_rel.as_str(), digest);
    }

    let mut h = Sha256::new();
    let put = |h: &mut Sha256, bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(&mut h, if resolved.dest_is_dir { b"dir" } else { b"any" });
    for (src, entries) in resolved.sources.iter().zip(&lists) {
        put(&mut h, b"source");
        put(&mut h, base_name(&src.name).as_bytes());
        put(&mut h, if src.is_dir { b"d" } else { b"f" });
        for e in entries {
            let ft = e.meta.file_type();
            put(&mut h, e.rel.as_bytes());
            put(&mut h, &(e.meta.mode() & 0o7777).to_le_bytes());
            if !ft.is_symlink() {
                // Capabilities and other xattrs are copied, so they are part of the content.
                let host = tree.root.join(&e.tree_rel);
                for (name, value) in root::read_xattrs(&host).map_err(io_err(host))? {
                    put(&mut h, b"xattr");
                    put(&mut h, &name);
                    put(&mut h, &value);
                }
            }
            if ft.is_file() {
                put(&mut h, b"file");
                put(&mut h, &digest_of[e.tree_rel.as_str()]);
            } else if ft.is_dir() {
                put(&mut h, b"dir");
            } else if ft.is_symlink() {
                let host = tree.root.join(&e.tree_rel);
                let target = fs::read_link(&host).map_err(io_err(host))?;
                put(&mut h, b"symlink");
                put(&mut h, target.as_os_str().as_encoded_bytes());
            } else {
                put(&mut h, b"node");
                put(&mut h, &e.meta.rdev().to_le_bytes());
            }
        }
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn digest_files(root: &Path, files: &[&Entry]) -> Result<Vec<[u8; 32]>, ContextError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<[u8; 32]>>> = Mutex::new(vec![None; files.len()]);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
        .min(files.len().max(1));
    let errors: Mutex<Vec<ContextError>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files.len() {
                        break;
                    }
                    let path = root.join(&files[i].tree_rel);
                    match digest_file(&path, &mut buf) {
                        Ok(d) => results.lock().expect("no panics while locked")[i] = Some(d),
                        Err(e) => {
                            errors
                                .lock()
                                .expect("no panics while locked")
                                .push(io_err(path)(e));
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().expect("threads joined").pop() {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .expect("threads joined")
        .into_iter()
        .map(|d| d.expect("every file digested when no error"))
        .collect())
}

fn digest_file(path: &Path, buf: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut h = Sha256::new();
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// A `--chmod` value: octal, or chmod(1)'s symbolic form (`u=rwX,go=rX`), which BuildKit's
/// Dockerfile frontend accepts in recent versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<ChmodClause>),
}

/// One `who op perms` clause of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodClause {
    /// Bits of the classes named (u: 0o4700, g: 0o2070, o: 0o1007 masks).
    who: u32,
    op: char,
    perms: String,
}

impl Chmod {
    pub fn parse(value: &str) -> Result<Chmod, ContextError> {
        let bad = || ContextError::BadChmod {
            value: value.to_string(),
        };
        if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
            let mode = u32::from_str_radix(value, 8).map_err(|_| bad())?;
            return if mode > 0o7777 {
                Err(bad())
            } else {
                Ok(Chmod::Octal(mode))
            };
        }
        let mut clauses = Vec::new();
        for part in value.split(',') {
            let who_end = part.find(|c: char| !"ugoa".contains(c)).ok_or_else(bad)?;
            let mut who = 0;
            for c in part[..who_end].chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    _ => 0o7777,
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let rest = &part[who_end..];
            // Several ops may follow one who: `u+x-w`.
            let mut ops = rest
                .char_indices()
                .filter(|(_, c)| "+-=".contains(*c))
                .peekable();
            if ops.peek().map(|(i, _)| *i) != Some(0) {
                return Err(bad());
            }
            let starts: Vec<(usize, char)> = ops.collect();
            for (k, (at, op)) in starts.iter().enumerate() {
                let end = starts.get(k + 1).map(|(i, _)| *i).unwrap_or(rest.len());
                let perms = &rest[at + 1..end];
                if !perms.chars().all(|c| "rwxXst".contains(c)) {
                    return Err(bad());
                }
                clauses.push(ChmodClause {
                    who,
                    op: *op,
                    perms: perms.to_string(),
                });
            }
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file or directory gets, given its mode in the source.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for c in clauses {
                    let mut bits = 0;
                    for p in c.perms.chars() {
                        bits |= match p {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            't' => 0o1000,
                            _ => 0,
                        };
                    }
                    let bits = bits & c.who;
                    mode = match c.op {
                        '+' => mode | bits,
                        '-' => mode & !bits,
                        _ => (mode & !(c.who & 0o7777)) | bits,
                    };
                }
                mode
            }
        }
    }
}

/// How COPY/ADD writes what it copies.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown` already resolved (see `resolve_chown`); None is 0:0.
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<Chmod>,
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
/// `--chown` user.
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

/// ADD of local sources: tar archives (plain or gzip) are unpacked into `dest`, keeping the
/// ownership and modes they record and overwriting existing files; other files and
/// directories are copied as COPY copies them.
pub fn add_into(
    tree: &SourceTree<'_>,
    resolved: &Resolved,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), ContextError> {
    let root = RootDir::open(dest_root).map_err(io_err(dest_root))?;
    let mut links = HashMap::new();
    for src in &resolved.sources {
        let host = tree.root.join(&src.path);
        if !src.is_dir && archive::is_archive(&host).map_err(io_err(&host))?.is_some() {
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

#[cfg(test)]
mod tests;
