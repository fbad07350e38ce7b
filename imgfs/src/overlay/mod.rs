//! The kernel overlayfs backend: snapshots as plain directories that overlayfs stacks,
//! implementing the `Snapshotter` verbs, mounts included.
//!
//! Layout under the root directory:
//! - `LOCK`: flocked by the one process that has the backend open, and holding its pid;
//! - `snapshots.json`: every snapshot record, replaced whole (`atomic::write_atomically`);
//! - `snapshots/<id>/fs`: what the snapshot changed from its parent (an overlay upper dir);
//! - `snapshots/<id>/work`: the overlay work dir of an active snapshot;
//! - `empty/`: the second lower dir of upper-less mounts.
//!
//! A snapshot keeps its id from `prepare` to `remove`, so `commit` only rewrites the record: the
//! active snapshot's upper dir becomes the committed snapshot's dir, and nothing is copied.
//!
//! Mounts use `index=off,metacopy=off,redirect_dir=off`, so every upper dir holds full copies of
//! what changed and no redirect xattrs: a layer diff is computed from the upper dir alone. The
//! price is that renaming a directory that comes from a lower layer fails with EXDEV, and tools
//! (mv, rename in most languages' libraries) fall back to copying it; and that a hard link to a
//! lower file is copied up as a separate file per name (index=off cannot keep the link).

mod apply;
mod diff;
pub(crate) mod sys;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::layer::{ExportReport, ImportLimits};
use crate::{
    AppliedLayer, Error, Result, SnapshotInfo, SnapshotKind, Snapshotter, Timestamp, Usage,
};
use serde::{Deserialize, Serialize};

use crate::snapshot::Mounted;

const RECORDS: &str = "snapshots.json";

/// Snapshots as directories under one root, stacked by the kernel's overlayfs when mounted.
pub struct OverlaySnapshotter {
    root: PathBuf,
    state: Mutex<State>,
    /// Ids of snapshots mounted by this process: they may not be committed or removed, and an
    /// active one may not be mounted twice.
    mounted: Arc<Mutex<HashSet<u64>>>,
    /// The store's lock; `None` when opened read-only.
    lock: Option<File>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Active,
    View,
    Committed,
    /// Being filled by `apply`; removed at the next open if the process died.
    Importing,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    parent: Option<u64>,
    kind: Kind,
    created_sec: i64,
    created_nsec: u32,
    labels: Vec<(String, String)>,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    /// By id, which is creation order, so parents come before children.
    records: BTreeMap<u64, Record>,
}

impl State {
    fn by_name(&self, name: &str) -> Option<&Record> {
        self.records.values().find(|r| r.name == name)
    }

    fn get(&self, name: &str) -> Result<&Record> {
        self.by_name(name)
            .ok_or_else(|| Error::NotFound(format!("snapshot {name}")))
    }
}

fn io_err(context: impl Into<String>, source: io::Error) -> Error {
    Error::Io {
        context: context.into(),
        source,
    }
}

impl OverlaySnapshotter {
    /// Creates an empty backend in `root`, which may exist but must not hold one.
    pub fn create(root: &Path) -> Result<OverlaySnapshotter> {
        std::fs::create_dir_all(root.join("snapshots"))
            .map_err(|e| io_err(format!("create {}", root.display()), e))?;
        sys::spread_subdirs(&root.join("snapshots"));
        if root.join(RECORDS).exists() {
            return Err(Error::Exists(format!(
                "overlayfs backend {}",
                root.display()
            )));
        }
        let lock = crate::lock::lock_dir(root)?;
        write_state(root, &State::default())?;
        drop(lock);
        OverlaySnapshotter::open(root)
    }

    /// Opens the backend in `root`. Only one process may have it open; a second gets
    /// `Error::Locked` naming the first one's pid. Rolls back what a crash left half done.
    pub fn open(root: &Path) -> Result<OverlaySnapshotter> {
        let s = OverlaySnapshotter::open_inner(root, false)?;
        s.recover()?;
        Ok(s)
    }

    /// Opens the backend in `root` to mount committed snapshots only, without its lock: another
    /// process may have it open meanwhile. The changing verbs fail.
    pub fn open_read_only(root: &Path) -> Result<OverlaySnapshotter> {
        OverlaySnapshotter::open_inner(root, true)
    }

    fn open_inner(root: &Path, read_only: bool) -> Result<OverlaySnapshotter> {
        let path = root.join(RECORDS);
        if !path.exists() {
            return Err(Error::NotFound(format!(
                "overlayfs backend {}",
                root.display()
            )));
        }
        let lock = if read_only {
            None
        } else {
            Some(crate::lock::lock_dir(root)?)
        };
        let bytes =
            std::fs::read(&path).map_err(|e| io_err(format!("read {}", path.display()), e))?;
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
        let empty = root.join("empty");
        if !read_only {
            std::fs::create_dir_all(&empty)
                .map_err(|e| io_err(format!("create {}", empty.display()), e))?;
        }
        Ok(OverlaySnapshotter {
            root: root.to_path_buf(),
            state: Mutex::new(state),
            mounted: Arc::default(),
            lock,
        })
    }

    fn writable(&self) -> Result<()> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(Error::ReadOnly(format!(
                "overlayfs backend {} is open read-only",
                self.root.display()
            ))),
        }
    }

    /// Opens the backend in `root`, creating it if it does not exist yet.
    pub fn open_or_create(root: &Path) -> Result<OverlaySnapshotter> {
        if root.join(RECORDS).exists() {
            OverlaySnapshotter::open(root)
        } else {
            OverlaySnapshotter::create(root)
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Drops imports that never finished, directories without a record (a crash between
    /// writing the records and removing the directory), and work dirs of committed snapshots.
    fn recover(&self) -> Result<()> {
        let mut state = self.state.lock().expect("poisoned");
        let before = state.records.len();
        state.records.retain(|_, r| r.kind != Kind::Importing);
        if state.records.len() != before {
            write_state(&self.root, &state)?;
        }
        let dir = self.root.join("snapshots");
        let list =
            std::fs::read_dir(&dir).map_err(|e| io_err(format!("read {}", dir.display()), e))?;
        for ent in list {
            let ent = ent.map_err(|e| io_err(format!("read {}", dir.display()), e))?;
            let id = ent.file_name().to_str().and_then(|s| s.parse::<u64>().ok());
            match id.and_then(|id| state.records.get(&id)) {
                None => remove_tree(&ent.path())?,
                Some(r) if r.kind != Kind::Active => {
                    let work = ent.path().join("work");
                    if work.exists() {
                        remove_tree(&work)?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn info(&self, state: &State, r: &Record) -> SnapshotInfo {
        SnapshotInfo {
            name: r.name.clone(),
            parent: r
                .parent
                .and_then(|p| state.records.get(&p))
                .map(|p| p.name.clone()),
            kind: match r.kind {
                Kind::Active => SnapshotKind::Active,
                Kind::View => SnapshotKind::View,
                Kind::Committed => SnapshotKind::Committed,
                Kind::Importing => SnapshotKind::Importing,
            },
            created: Timestamp {
                sec: r.created_sec,
                nsec: r.created_nsec,
            },
            labels: r.labels.clone(),
        }
    }

    /// The fs dirs of `id`'s ancestors, nearest first.
    fn lowers(&self, state: &State, parent: Option<u64>) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut at = parent;
        while let Some(id) = at {
            let r = state
                .records
                .get(&id)
                .ok_or_else(|| Error::Corrupt(format!("snapshot {id} has no record")))?;
            if out.len() > state.records.len() {
                return Err(Error::Corrupt(format!(
                    "snapshot {} has a parent cycle",
                    r.name
                )));
            }
            out.push(self.fs_dir(id));
            at = r.parent;
        }
        Ok(out)
    }

    /// Records a new snapshot and makes its directories. The record is written first: a crash
    /// after it leaves an empty snapshot, a crash before it an orphan dir that `open` removes.
    fn new_snapshot(
        &self,
        name: &str,
        parent: Option<&str>,
        kind: Kind,
    ) -> Result<(SnapshotInfo, u64)> {
        crate::snapshot::check_name(name)?;
        self.writable()?;
        let mut state = self.state.lock().expect("poisoned");
        if state.by_name(name).is_some() {
            return Err(Error::Exists(format!("snapshot {name}")));
        }
        let parent = match parent {
            None => None,
            Some(p) => {
                let rec = state.get(p)?;
                if rec.kind != Kind::Committed {
                    return Err(Error::Invalid(format!(
                        "snapshot {p} is not committed and cannot be a parent"
                    )));
                }
                Some(rec.id)
            }
        };
        state.next_id += 1;
        let id = state.next_id;
        let now = Timestamp::now();
        let rec = Record {
            id,
            name: name.to_string(),
            parent,
            kind,
            created_sec: now.sec,
            created_nsec: now.nsec,
            labels: Vec::new(),
        };
        let dir = self.snapshot_dir(id);
        let mk = |p: PathBuf| {
            std::fs::create_dir_all(&p).map_err(|e| io_err(format!("create {}", p.display()), e))
        };
        if kind != Kind::View {
            mk(dir.join("fs"))?;
        } else {
            mk(dir.clone())?;
        }
        if kind == Kind::Active {
            mk(dir.join("work"))?;
        }
        state.records.insert(id, rec.clone());
        if let Err(e) = write_state(&self.root, &state) {
            state.records.remove(&id);
            let _ = remove_tree(&dir);
            return Err(e);
        }
        Ok((self.info(&state, &rec), id))
    }

    fn is_mounted(&self, id: u64) -> bool {
        self.mounted.lock().expect("poisoned").contains(&id)
    }
}

fn write_state(root: &Path, state: &State) -> Result<()> {
    let path = root.join(RECORDS);
    let bytes = serde_json::to_vec_pretty(state).expect("records serialise");
    crate::atomic::write_atomically(&path, 0o644, |f| f.write_all(&bytes))
        .map_err(|e| io_err(format!("write {}", path.display()), e))
}

/// Removes a directory tree without following symlinks.
fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", path.display()), e)),
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn backend(&self) -> &'static str {
        "overlayfs"
    }

    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<SnapshotInfo> {
        Ok(self.new_snapshot(key, parent, Kind::Active)?.0)
    }

    fn view(&self, key: &str, parent: &str) -> Result<SnapshotInfo> {
        Ok(self.new_snapshot(key, Some(parent), Kind::View)?.0)
    }

    fn commit(&self, name: &str, key: &str) -> Result<SnapshotInfo> {
        crate::snapshot::check_name(name)?;
        self.writable()?;
        let mut state = self.state.lock().expect("poisoned");
        let rec = state.get(key)?.clone();
        if !matches!(rec.kind, Kind::Active | Kind::Importing) {
            return Err(Error::Invalid(format!("snapshot {key} is not active")));
        }
        if name != key && state.by_name(name).is_some() {
            return Err(Error::Exists(format!("snapshot {name}")));
        }
        if self.is_mounted(rec.id) {
            return Err(Error::Invalid(format!("snapshot {key} is mounted")));
        }
        // Writes through overlayfs land in the upper dir's page cache, and a volatile mount's
        // fsyncs never reached the disk: the records must not name a snapshot whose files
        // could still be lost. One syncfs costs less than an fsync per changed file (a walk
        // of the upper dir), at the price of also writing out other work on the file system.
        let fs = self.fs_dir(rec.id);
        File::open(&fs)
            .and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from))
            .map_err(|e| io_err(format!("sync {}", fs.display()), e))?;
        let mut done = rec.clone();
        done.kind = Kind::Committed;
        done.name = name.to_string();
        state.records.insert(rec.id, done.clone());
        if let Err(e) = write_state(&self.root, &state) {
            state.records.insert(rec.id, rec);
            return Err(e);
        }
        // A crash before this leaves a work dir that `open` removes.
        remove_tree(&self.snapshot_dir(rec.id).join("work"))?;
        Ok(self.info(&state, &done))
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.writable()?;
        let mut state = self.state.lock().expect("poisoned");
        let rec = state.get(key)?.clone();
        if let Some(child) = state.records.values().find(|r| r.parent == Some(rec.id)) {
            return Err(Error::Invalid(format!(
                "snapshot {key} has a child ({}); remove that first",
                child.name
            )));
        }
        if self.is_mounted(rec.id) {
            return Err(Error::Invalid(format!("snapshot {key} is mounted")));
        }
        state.records.remove(&rec.id);
        if let Err(e) = write_state(&self.root, &state) {
            state.records.insert(rec.id, rec);
            return Err(e);
        }
        remove_tree(&self.snapshot_dir(rec.id))
    }

    fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let state = self.state.lock().expect("poisoned");
        let rec = state.get(key)?;
        Ok(self.info(&state, rec))
    }

    fn walk(&self) -> Result<Vec<SnapshotInfo>> {
        let state = self.state.lock().expect("poisoned");
        Ok(state
            .records
            .values()
            .map(|r| self.info(&state, r))
            .collect())
    }

    /// Allocated bytes and inodes of the snapshot's own directory: what removing it frees.
    fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.state.lock().expect("poisoned").get(key)?.clone();
        let mut usage = Usage::default();
        if rec.kind == Kind::View {
            return Ok(usage);
        }
        let fs = self.fs_dir(rec.id);
        let mut seen = HashSet::new();
        for ent in walkdir::WalkDir::new(&fs).min_depth(1) {
            let ent = ent.map_err(|e| {
                let path = e.path().unwrap_or(&fs).display().to_string();
                io_err(format!("walk {path}"), e.into())
            })?;
            let m = ent
                .metadata()
                .map_err(|e| io_err(format!("stat {}", ent.path().display()), e.into()))?;
            if seen.insert((m.dev(), m.ino())) {
                usage.inodes += 1;
                usage.bytes += m.blocks() * 512;
            }
        }
        Ok(usage)
    }

    fn apply(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &mut dyn Read,
        limits: &ImportLimits,
    ) -> Result<AppliedLayer> {
        let (_, id) = self.new_snapshot(name, parent, Kind::Importing)?;
        let layers = {
            let state = self.state.lock().expect("poisoned");
            let mut l = vec![self.fs_dir(id)];
            l.extend(self.lowers(&state, state.records[&id].parent)?);
            l
        };
        // As at commit: the records must not name a layer whose files could still be lost.
        let fs = self.fs_dir(id);
        let extracted = apply::extract(&layers, layer, limits).and_then(|out| {
            File::open(&fs)
                .and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from))
                .map_err(|e| io_err(format!("sync {}", fs.display()), e))?;
            Ok(out)
        });
        let mut state = self.state.lock().expect("poisoned");
        match extracted {
            Ok(out) => {
                let rec = state.records.get_mut(&id).expect("importing record stays");
                rec.kind = Kind::Committed;
                rec.labels.push(("diff_id".into(), out.diff_id.clone()));
                let rec = rec.clone();
                write_state(&self.root, &state)?;
                Ok(AppliedLayer {
                    info: self.info(&state, &rec),
                    diff_id: out.diff_id,
                    entries: out.entries,
                    tar_bytes: out.tar_bytes,
                })
            }
            Err(e) => {
                state.records.remove(&id);
                if let Err(cleanup) = write_state(&self.root, &state)
                    .and_then(|()| remove_tree(&self.snapshot_dir(id)))
                {
                    tracing::error!(snapshot = name, error = %cleanup, "could not remove the failed import");
                }
                Err(e)
            }
        }
    }

    fn diff(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport> {
        let (upper, lowers) = {
            let state = self.state.lock().expect("poisoned");
            let rec = state.get(key)?;
            let upper = (rec.kind != Kind::View).then(|| self.fs_dir(rec.id));
            (upper, self.lowers(&state, rec.parent)?)
        };
        diff::write_layer(upper.as_deref(), &lowers, out)
    }

    fn export(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport> {
        let layers = {
            let state = self.state.lock().expect("poisoned");
            let rec = state.get(key)?;
            if rec.kind == Kind::Importing {
                return Err(Error::Invalid(format!("snapshot {key} is being imported")));
            }
            let mut layers = Vec::new();
            if rec.kind != Kind::View {
                layers.push(self.fs_dir(rec.id));
            }
            layers.extend(self.lowers(&state, rec.parent)?);
            layers
        };
        diff::write_tree(&layers, out)
    }

    fn mount(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>> {
        self.mount_with(key, target, false)
    }

    fn mount_volatile(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>> {
        self.mount_with(key, target, true)
    }
}

impl OverlaySnapshotter {
    fn mount_with(&self, key: &str, target: &Path, volatile: bool) -> io::Result<Box<dyn Mounted>> {
        let to_io = |e: Error| io::Error::from_raw_os_error(e.errno());
        let state = self.state.lock().expect("poisoned");
        let rec = state.get(key).map_err(to_io)?.clone();
        let mut lowers = self.lowers(&state, rec.parent).map_err(to_io)?;
        drop(state);
        let upper = match rec.kind {
            Kind::Active if self.lock.is_none() => {
                return Err(io::Error::new(
                    io::ErrorKind::ReadOnlyFilesystem,
                    format!("snapshot {key} is active and the backend is open read-only"),
                ));
            }
            Kind::Active => Some((self.fs_dir(rec.id), self.snapshot_dir(rec.id).join("work"))),
            Kind::Committed => {
                lowers.insert(0, self.fs_dir(rec.id));
                None
            }
            Kind::View => None,
            Kind::Importing => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("snapshot {key} is being imported"),
                ));
            }
        };
        // An overlay needs a lower dir, and one without an upper needed two before Linux 4.13
        // or so; the empty dir makes up the numbers at no cost.
        let want = if upper.is_some() { 1 } else { 2 };
        while lowers.len() < want {
            lowers.push(self.root.join("empty"));
        }
        {
            let mut mounted = self.mounted.lock().expect("poisoned");
            if rec.kind == Kind::Active && mounted.contains(&rec.id) {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("snapshot {key} is already mounted"),
                ));
            }
            let upper = upper
                .as_ref()
                .map(|(fs, work)| (fs.as_path(), work.as_path()));
            mount_overlay(target, &lowers, upper, volatile)
                .map_err(|e| io::Error::new(e.kind(), format!("snapshot {key}: {e}")))?;
            mounted.insert(rec.id);
        }
        Ok(Box::new(OverlayMount {
            target: target.to_path_buf(),
            id: rec.id,
            mounted: self.mounted.clone(),
            done: false,
        }))
    }
}

/// Mounts an overlay of `lowers` (nearest first, at least one; two without an upper) at
/// `target`, writable into `upper` (the upper and work dirs) if given, read-only otherwise.
/// Every overlay img mounts has the options below, so that an upper dir holds full copies of
/// what changed and no redirects (see the module's doc); `volatile` adds overlayfs's
/// `volatile` where the kernel has it.
pub(crate) fn mount_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    volatile: bool,
) -> io::Result<()> {
    let mut flags = nix::mount::MsFlags::empty();
    let lower: Vec<String> = lowers.iter().map(|p| escape_option(p)).collect();
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some((fs, work)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            escape_option(fs),
            escape_option(work)
        ));
    } else {
        flags |= nix::mount::MsFlags::MS_RDONLY;
    }
    opts.push_str(",index=off,metacopy=off");
    if sys::trusted_xattrs() {
        opts.push_str(",redirect_dir=off");
    } else {
        // Without CAP_SYS_ADMIN overlayfs keeps whiteouts and opaque marks in user.* xattrs.
        // redirect_dir=off still follows redirects (redirect_always_follow), which reads
        // trusted.* xattrs, so the kernel wants nofollow beside userxattr.
        opts.push_str(",redirect_dir=nofollow,userxattr");
    }
    // overlayfs's own volatile mode skips every sync to the upper dir, which a commit makes
    // up for. Kernels before 5.10 refuse the option: they get a plain mount.
    let plain = opts.clone();
    if volatile && upper.is_some() {
        opts.push_str(",volatile");
    }
    if opts.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers make overlay options longer than a page",
                lowers.len()
            ),
        ));
    }
    if let Some((_, work)) = upper {
        // A volatile mount leaves this dir behind, and overlayfs refuses the work dir while it
        // exists, to stop a remount after a crash; a crash before the commit makes the
        // snapshot one to remove anyway (`Snapshotter::mount_volatile`).
        let marker = work.join("work/incompat/volatile");
        if marker.exists() {
            std::fs::remove_dir_all(&marker)?;
        }
    }
    let mount =
        |opts: &str| nix::mount::mount(Some("overlay"), target, Some("overlay"), flags, Some(opts));
    match mount(&opts) {
        Err(nix::Error::EINVAL) if opts != plain => mount(&plain),
        r => r,
    }
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mount overlay on {}: {e}", target.display()),
        )
    })
}

/// Unmounts the overlay at `target` (not lazily: a busy mount is an error), saying where.
pub(crate) fn umount_overlay(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("unmount {}: {e}", target.display()),
        )
    })
}

/// Escapes the characters overlayfs's option parser treats specially in a path.
fn escape_option(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A mounted overlay; unmounts on drop.
struct OverlayMount {
    target: PathBuf,
    id: u64,
    mounted: Arc<Mutex<HashSet<u64>>>,
    done: bool,
}

impl OverlayMount {
    fn umount(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        // Writes through overlayfs go straight to the upper dir, so once the umount returns
        // they are all in the snapshot (the page cache holds them until the next sync).
        umount_overlay(&self.target)?;
        self.done = true;
        self.mounted.lock().expect("poisoned").remove(&self.id);
        Ok(())
    }
}

impl Mounted for OverlayMount {
    fn path(&self) -> &Path {
        &self.target
    }

    fn unmount(mut self: Box<Self>) -> io::Result<()> {
        self.umount()
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if let Err(e) = self.umount() {
            tracing::error!(target = %self.target.display(), error = %e, "could not unmount a snapshot");
        }
    }
}

/// One entry found in a stack of overlay layers.
pub(crate) struct Hit {
    /// Index of the layer whose entry is visible.
    pub(crate) layer: usize,
    pub(crate) meta: std::fs::Metadata,
    /// For a directory, the layers whose directories merge into it, nearest first.
    pub(crate) merging: Vec<usize>,
}

/// Looks `name` up in directory `rel` of a stack of layer dirs (nearest first), as overlayfs
/// does: a whiteout ends the search, a non-directory hides everything below it, and a
/// directory merges with lower directories until an opaque one. `merging` lists the layers
/// whose `rel` takes part in the merge. `rel` never holds a symlink in any of them: it is a path
/// that was resolved through the merge, directory by directory.
pub(crate) fn lookup(
    layers: &[PathBuf],
    merging: &[usize],
    rel: &Path,
    name: &OsStr,
) -> io::Result<Option<Hit>> {
    let mut hit: Option<Hit> = None;
    for &i in merging {
        let p = layers[i].join(rel).join(name);
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if sys::is_whiteout(&p, &m)? {
            break;
        }
        match &mut hit {
            None if !m.is_dir() => {
                return Ok(Some(Hit {
                    layer: i,
                    meta: m,
                    merging: Vec::new(),
                }));
            }
            None => {
                hit = Some(Hit {
                    layer: i,
                    meta: m,
                    merging: vec![i],
                });
            }
            Some(h) => {
                if !m.is_dir() {
                    break;
                }
                h.merging.push(i);
            }
        }
        if sys::is_opaque(&p)? {
            break;
        }
    }
    Ok(hit)
}

/// The name of a path component, as bytes.
pub(crate) fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}
