//! The state directory: where one img installation keeps everything, and the lock that keeps two
//! img processes from changing it at once.
//!
//! ```text
//! <state>/lock            flock + holder's pid (image::StateLock)
//! <state>/images.json     names -> manifests; <state>/blobs/sha256/… the OCI content
//! <state>/cache/          build cache records (build::cache); sums/: COPY --from digests
//! <state>/imgfs/          the imgfs store (--backend fuse)
//! <state>/overlayfs/      the overlayfs backend's snapshots (--backend overlayfs)
//! <state>/runc/           runc's state and the bundles of running steps
//! <state>/tmp/            mount points and temporary files of running builds
//! <state>/mounts/<pid>.json  what each `img mount` process serves (`MountRecord`)
//! <state>/owners/<pid>.json  each build, for the removal of what it leaves if killed (`leftovers`)
//! <state>/config.json     settings, read at open: the layer limits (`limits::LayerLimits`)
//! ```

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use imgfs::owner::process_start_time;
use imgfs::{FuseSnapshotter, OverlaySnapshotter, Snapshotter};
use oci_spec::image::Digest;
use thiserror::Error;

use crate::build::StageState;
use crate::build::cache::Cache;
use crate::image::{Contention, ImageStore, LockError, StateLock, StoreError};
use crate::runc::{ExecError, RuncExecutor};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("failed to create the state directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to open the {backend} backend in {path}: {source}")]
    Backend {
        backend: BackendKind,
        path: PathBuf,
        source: imgfs::Error,
    },
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("failed to open the build cache: {0}")]
    Cache(std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::limits::ConfigError),
    #[error("failed to clean up after the img mount process {pid} on {}: {source}", dir.display())]
    Reap {
        pid: u32,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Which snapshot backend runs a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// imgfs over FUSE.
    #[default]
    Fuse,
    /// Kernel overlayfs.
    Overlayfs,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Fuse, BackendKind::Overlayfs];

    fn dir(self) -> &'static str {
        match self {
            BackendKind::Fuse => "imgfs",
            BackendKind::Overlayfs => "overlayfs",
        }
    }

    /// The name users pick the backend by (`--backend`, `$IMG_BACKEND`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Fuse => "fuse",
            BackendKind::Overlayfs => "overlayfs",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fuse" | "imgfs" => Ok(BackendKind::Fuse),
            "overlayfs" | "overlay" => Ok(BackendKind::Overlayfs),
            _ => Err(format!("unknown backend {s:?} (fuse or overlayfs)")),
        }
    }
}

/// A backend and which one it is.
pub type OpenBackend = (BackendKind, Box<dyn Snapshotter>);

/// What one `img mount` process serves, in `<state>/mounts/<pid>.json`. The process writes it
/// once the mount is up and removes it when the mount ends; `img umount` finds the process by
/// the directory. The record of a process that is gone is reaped (`State::reap_mount`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    pub pid: u32,
    /// When the process started (`/proc/PID/stat`'s starttime), so a reused pid is not taken
    /// for it.
    pub start_time: u64,
    /// Where the tree is mounted (absolute).
    pub dir: PathBuf,
    pub image: String,
    pub backend: BackendKind,
    /// The committed snapshot shown, or under `key`.
    pub snapshot: String,
    /// The active snapshot of a writable mount, removed when the mount ends.
    pub key: Option<String>,
}

impl MountRecord {
    /// Whether the process that wrote the record still runs. Read from `/proc/PID/stat`, which
    /// anyone may read: an ordinary user's img runs each command in a user namespace of its
    /// own, from which the serving process's other /proc entries are out of reach.
    pub fn alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// An open state directory, locked for this process.
pub struct State {
    dir: PathBuf,
    _lock: StateLock,
    pub images: ImageStore,
    pub cache: Cache,
    /// The bounds on every layer applied to this state's backends: `config.json`'s, which
    /// a command's options may override before it opens a backend.
    pub limits: crate::limits::LayerLimits,
}

/// The default state directory: `/var/lib/img` for root, else `$XDG_DATA_HOME/img` or
/// `~/.local/share/img`.
pub fn default_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/img");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("img");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/img")
}

impl State {
    /// Opens (creating if needed) and locks `dir`. When another process holds the lock, calls
    /// `on_wait` once and waits for it.
    pub fn open(dir: &Path, on_wait: impl FnOnce(&Contention)) -> Result<State, StateError> {
        // runc resolves a relative root against its bundle, so every path we hand out must be
        // absolute.
        let dir = &std::path::absolute(dir).map_err(|source| StateError::Create {
            path: dir.to_owned(),
            source,
        })?;
        std::fs::create_dir_all(dir).map_err(|source| StateError::Create {
            path: dir.to_owned(),
            source,
        })?;
        let lock = StateLock::acquire(dir, true, on_wait)?;
        // Room for `img rm` and `prune` to rewrite the image index on a disk that something
        // else filled (imgfs::space): released here when the disk is full, written again when
        // there is room.
        imgfs::space::release_reserve_if_full(dir);
        imgfs::space::refill_reserve(dir);
        let images = ImageStore::open(dir)?;
        let cache = Cache::open(&dir.join("cache")).map_err(StateError::Cache)?;
        let limits = crate::limits::LayerLimits::read_config(dir)?;
        let state = State {
            dir: dir.to_owned(),
            _lock: lock,
            images,
            cache,
            limits,
        };
        // Mount points and temporary files of a build killed half-way; we hold the lock, so no
        // build is running. A killed build's mounts are still there (a dead FUSE server's as
        // "transport endpoint is not connected"), so they are detached first.
        if let Ok(entries) = std::fs::read_dir(state.scratch()) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(state.scratch());
        std::fs::create_dir_all(state.scratch()).map_err(|source| StateError::Create {
            path: state.scratch(),
            source,
        })?;
        Ok(state)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where builds put mount points and temporary files.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Opens the snapshot backend `kind`, creating its store on first use. The only place that
    /// names a concrete backend.
    pub fn backend(&self, kind: BackendKind) -> Result<Box<dyn Snapshotter>, StateError> {
        self.open_backend(kind, false)
    }

    /// The writable snapshot backend `kind`, opened (and locked) at its first use: a build whose
    /// every step is cached never opens the store (for the fuse backend, a rocksdb open that
    /// writes and syncs a manifest).
    pub fn lazy_backend(&self, kind: BackendKind) -> LazyBackend<'_> {
        LazyBackend {
            state: self,
            kind,
            opened: std::sync::OnceLock::new(),
        }
    }

    /// The snapshot backend `kind` for mounting committed snapshots only: no lock is taken, so
    /// builds and other commands can use the backend meanwhile.
    pub fn backend_read_only(&self, kind: BackendKind) -> Result<Box<dyn Snapshotter>, StateError> {
        self.open_backend(kind, true)
    }

    fn open_backend(
        &self,
        kind: BackendKind,
        read_only: bool,
    ) -> Result<Box<dyn Snapshotter>, StateError> {
        let path = self.dir.join(kind.dir());
        let opened: imgfs::Result<Box<dyn Snapshotter>> = match (kind, read_only) {
            (BackendKind::Fuse, false) => FuseSnapshotter::open_or_create(&path).map(|b| {
                // `IMG_FUSE_STEPS=fuse` serves build steps over FUSE alone: for comparisons.
                let overlaid = std::env::var_os("IMG_FUSE_STEPS").is_none_or(|v| v != "fuse");
                Box::new(b.with_overlaid_steps(overlaid)) as _
            }),
            (BackendKind::Fuse, true) => {
                FuseSnapshotter::open_read_only(&path).map(|b| Box::new(b) as _)
            }
            (BackendKind::Overlayfs, false) => {
                OverlaySnapshotter::open_or_create(&path).map(|b| Box::new(b) as _)
            }
            (BackendKind::Overlayfs, true) => {
                OverlaySnapshotter::open_read_only(&path).map(|b| Box::new(b) as _)
            }
        };
        let opened = opened.map_err(|source| StateError::Backend {
            backend: kind,
            path: path.clone(),
            source,
        })?;
        if read_only {
            return Ok(opened);
        }
        Ok(Box::new(crate::limits::LimitedSnapshotter {
            inner: opened,
            limits: self.limits,
            dir: path,
        }))
    }

    /// Where `img mount` processes record what they serve.
    pub fn mounts_dir(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    /// Every `img mount` record, whether its process still runs or not.
    pub fn mount_records(&self) -> Vec<MountRecord> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.mounts_dir()) else {
            return out;
        };
        for e in entries.flatten() {
            if let Some(rec) = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<MountRecord>(&b).ok())
            {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| r.pid);
        out
    }

    /// Whether backend `kind` has been used in this state dir.
    pub fn backend_exists(&self, kind: BackendKind) -> bool {
        self.dir.join(kind.dir()).exists()
    }

    /// The mounts of `img mount` processes that are still alive; what dead ones left behind is
    /// cleaned up (`reap_mount`).
    pub fn mounts(&self) -> Vec<MountRecord> {
        let (alive, dead): (Vec<_>, Vec<_>) =
            self.mount_records().into_iter().partition(|r| r.alive());
        for rec in dead {
            if let Err(e) = self.reap_mount(&rec) {
                tracing::warn!(pid = rec.pid, dir = %rec.dir.display(), "{e}");
            }
        }
        alive
    }

    /// Cleans up after an `img mount` process that is gone (killed, crashed): its mount, if it
    /// is still there, is ended without waiting on a server (a FUSE connection is aborted
    /// through fusectl, then the mount detached), a writable mount's snapshot is removed, and
    /// so is the record. The caller checked that the process is gone (`MountRecord::alive`).
    pub fn reap_mount(&self, rec: &MountRecord) -> Result<(), StateError> {
        let reap = |source| StateError::Reap {
            pid: rec.pid,
            dir: rec.dir.clone(),
            source,
        };
        // Only the mount the process made: a FUSE mount names its server, `imgfs:PID`.
        let ours = match imgfs::fuse::fusectl::find(&rec.dir).map_err(reap)? {
            Some(m) if m.is_fuse() => m.source == format!("imgfs:{}", rec.pid),
            Some(m) => m.fstype == "overlay" && rec.backend == BackendKind::Overlayfs,
            None => false,
        };
        if ours {
            imgfs::fuse::fusectl::end_mount(&rec.dir).map_err(reap)?;
        }
        if let Some(key) = &rec.key {
            let backend = self.backend(rec.backend)?;
            if backend.stat(key).is_ok() {
                backend.remove(key).map_err(|source| StateError::Backend {
                    backend: rec.backend,
                    path: self.dir.join(rec.backend.dir()),
                    source,
                })?;
            }
        }
        match std::fs::remove_file(self.mounts_dir().join(format!("{}.json", rec.pid))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(reap(e)),
            _ => Ok(()),
        }
    }

    /// Removes the snapshots that writable `imgfs mount` processes, gone now, prepared in the
    /// fuse backend's store (`imgfs::owner`), and returns them. Every img command calls this,
    /// so the store is opened only when its owners' markers name a process that is gone, and
    /// then read-only first: opening it for writing costs a synced write, so only something to
    /// remove is worth it, and a store that another process has open for writing is left for a
    /// later command.
    pub fn remove_abandoned_mounts(&self) -> Result<Vec<imgfs::AbandonedMount>, StateError> {
        let kind = BackendKind::Fuse;
        let path = self.dir.join(kind.dir());
        if !self.backend_exists(kind) || !imgfs::owner::may_have_abandoned_mounts(&path) {
            return Ok(Vec::new());
        }
        let err = |source| StateError::Backend {
            backend: kind,
            path: path.clone(),
            source,
        };
        let look = FuseSnapshotter::open_read_only(&path).map_err(err)?;
        if look.store().abandoned_mounts().map_err(err)?.is_empty() {
            imgfs::owner::remove_dead_markers(&path);
            return Ok(Vec::new());
        }
        drop(look);
        match FuseSnapshotter::open_or_create(&path) {
            Ok(backend) => backend.store().remove_abandoned_mounts().map_err(err),
            Err(imgfs::Error::Locked { .. }) => Ok(Vec::new()),
            Err(e) => Err(err(e)),
        }
    }

    /// The backends that exist in this state dir (used ones), for du and prune.
    pub fn existing_backends(&self) -> Result<Vec<OpenBackend>, StateError> {
        let mut out = Vec::new();
        for kind in BackendKind::ALL {
            if self.dir.join(kind.dir()).exists() {
                out.push((kind, self.backend(kind)?));
            }
        }
        Ok(out)
    }

    pub fn executor(&self) -> Result<RuncExecutor, StateError> {
        Ok(RuncExecutor::new(&self.dir.join("runc"))?)
    }

    /// The blobs the build cache refers to: roots for garbage collection besides named images.
    pub fn cache_blobs(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = Vec::new();
        if let Ok(entries) = self.cache.entries::<StageState>() {
            for (_, state) in entries {
                out.extend(state.layers.into_iter().map(|l| l.digest));
            }
        }
        out.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        out.dedup();
        out
    }
}

/// One line of `img du`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageItem {
    pub id: String,
    pub reclaimable: bool,
    pub size: u64,
    pub description: String,
}

impl State {
    /// The chain IDs of every named image's layer stacks (each prefix): the snapshots that are
    /// in use.
    /// Snapshots images use, and those `img mount` processes serve.
    fn used_chains(&self) -> Result<BTreeSet<String>, StateError> {
        let mut used = BTreeSet::new();
        for m in self.mounts() {
            used.insert(m.snapshot);
            used.extend(m.key);
        }
        for image in self.images.list()? {
            for c in crate::image::chain_ids(&image.config.rootfs.diff_ids) {
                used.insert(c.to_string());
            }
        }
        Ok(used)
    }

    /// What takes space, and what `prune` would free: blobs no image names (build cache layers,
    /// leftovers), build cache records, and snapshots of layer stacks no image uses.
    pub fn disk_usage(&self) -> Result<Vec<UsageItem>, StateError> {
        let mut items = Vec::new();
        let garbage = self.images.reclaimable(&[])?;
        let cache_blobs: HashSet<Digest> = self.cache_blobs().into_iter().collect();
        let mut named: HashSet<Digest> = HashSet::new();
        for image in self.images.list()? {
            for l in image.manifest.layers() {
                if named.insert(l.digest().clone()) {
                    items.push(UsageItem {
                        id: l.digest().to_string(),
                        reclaimable: false,
                        size: l.size(),
                        description: match &image.name {
                            Some(name) => format!("layer of {}", name.familiar()),
                            None => format!("layer of image {}", image.id()),
                        },
                    });
                }
            }
        }
        for b in &garbage.blobs {
            items.push(UsageItem {
                id: b.digest.to_string(),
                reclaimable: true,
                size: b.size,
                description: if cache_blobs.contains(&b.digest) {
                    "build cache layer".to_owned()
                } else {
                    "unreferenced blob".to_owned()
                },
            });
        }
        for t in &garbage.temp_files {
            let size = std::fs::metadata(t).map(|m| m.len()).unwrap_or(0);
            items.push(UsageItem {
                id: t.display().to_string(),
                reclaimable: true,
                size,
                description: "temporary file".to_owned(),
            });
        }
        let records = self
            .cache
            .entries::<StageState>()
            .map_err(StateError::Cache)?;
        if !records.is_empty() {
            let size = records
                .iter()
                .map(|(k, _)| {
                    std::fs::metadata(self.dir.join("cache").join(format!("{}.json", k.as_str())))
                        .map(|m| m.len())
                        .unwrap_or(0)
                })
                .sum();
            items.push(UsageItem {
                id: "cache".to_owned(),
                reclaimable: true,
                size,
                description: format!("{} build cache records", records.len()),
            });
        }
        let used = self.used_chains()?;
        for (kind, backend) in self.existing_backends()? {
            for info in backend.walk().map_err(|source| StateError::Backend {
                backend: kind,
                path: self.dir.join(kind.dir()),
                source,
            })? {
                let size = backend.usage(&info.name).map(|u| u.bytes).unwrap_or(0);
                let in_use = used.contains(&info.name);
                items.push(UsageItem {
                    id: info.name.clone(),
                    reclaimable: !in_use,
                    size,
                    description: match (in_use, info.kind) {
                        (true, _) => format!("{kind} snapshot of an image's layers"),
                        (false, imgfs::SnapshotKind::Committed) => {
                            format!("{kind} snapshot of build cache layers")
                        }
                        (false, _) => format!("{kind} snapshot left by an interrupted build"),
                    },
                });
            }
        }
        Ok(items)
    }

    /// Frees what `disk_usage` reports as reclaimable; returns the bytes freed.
    pub fn prune(&self) -> Result<u64, StateError> {
        let before: u64 = self
            .disk_usage()?
            .iter()
            .filter(|i| i.reclaimable)
            .map(|i| i.size)
            .sum();
        for (key, _) in self
            .cache
            .entries::<StageState>()
            .map_err(StateError::Cache)?
        {
            self.cache.remove(&key).map_err(StateError::Cache)?;
        }
        self.cache.clear_sums().map_err(StateError::Cache)?;
        self.images.prune(&[])?;
        let used = self.used_chains()?;
        for (kind, backend) in self.existing_backends()? {
            let err = |source| StateError::Backend {
                backend: kind,
                path: self.dir.join(kind.dir()),
                source,
            };
            // Children before parents; an in-use snapshot's ancestors are all in use.
            for info in backend.walk().map_err(err)?.into_iter().rev() {
                if !used.contains(&info.name) {
                    backend.remove(&info.name).map_err(err)?;
                }
            }
        }
        Ok(before)
    }
}

/// `State::lazy_backend`: a writable backend opened at the first call that needs it. A failed
/// open fails that call and every later one, with the open's error.
pub struct LazyBackend<'a> {
    state: &'a State,
    kind: BackendKind,
    opened: std::sync::OnceLock<Result<Box<dyn Snapshotter>, String>>,
}

impl LazyBackend<'_> {
    fn get(&self) -> Result<&dyn Snapshotter, &str> {
        self.opened
            .get_or_init(|| {
                tracing::debug!(backend = %self.kind, "opening the snapshot backend");
                self.state.backend(self.kind).map_err(|e| e.to_string())
            })
            .as_ref()
            .map(|b| b.as_ref())
            .map_err(String::as_str)
    }

    fn store(&self) -> imgfs::Result<&dyn Snapshotter> {
        self.get().map_err(|e| imgfs::Error::Io {
            context: "opening the snapshot backend".to_owned(),
            source: std::io::Error::other(e.to_owned()),
        })
    }

    fn io(&self) -> std::io::Result<&dyn Snapshotter> {
        self.get().map_err(|e| std::io::Error::other(e.to_owned()))
    }
}

impl Snapshotter for LazyBackend<'_> {
    fn backend(&self) -> &'static str {
        self.kind.name()
    }
    fn prepare(&self, key: &str, parent: Option<&str>) -> imgfs::Result<imgfs::SnapshotInfo> {
        self.store()?.prepare(key, parent)
    }
    fn view(&self, key: &str, parent: &str) -> imgfs::Result<imgfs::SnapshotInfo> {
        self.store()?.view(key, parent)
    }
    fn commit(&self, name: &str, key: &str) -> imgfs::Result<imgfs::SnapshotInfo> {
        self.store()?.commit(name, key)
    }
    fn remove(&self, key: &str) -> imgfs::Result<()> {
        self.store()?.remove(key)
    }
    fn stat(&self, key: &str) -> imgfs::Result<imgfs::SnapshotInfo> {
        self.store()?.stat(key)
    }
    fn walk(&self) -> imgfs::Result<Vec<imgfs::SnapshotInfo>> {
        self.store()?.walk()
    }
    fn usage(&self, key: &str) -> imgfs::Result<imgfs::Usage> {
        self.store()?.usage(key)
    }
    fn apply(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &mut dyn std::io::Read,
        limits: &imgfs::layer::ImportLimits,
    ) -> imgfs::Result<imgfs::AppliedLayer> {
        self.store()?.apply(name, parent, layer, limits)
    }
    fn diff(
        &self,
        key: &str,
        out: &mut dyn std::io::Write,
    ) -> imgfs::Result<imgfs::layer::ExportReport> {
        self.store()?.diff(key, out)
    }
    fn export(
        &self,
        key: &str,
        out: &mut dyn std::io::Write,
    ) -> imgfs::Result<imgfs::layer::ExportReport> {
        self.store()?.export(key, out)
    }
    fn mount(&self, key: &str, target: &Path) -> std::io::Result<Box<dyn imgfs::Mounted>> {
        self.io()?.mount(key, target)
    }
    fn mount_volatile(&self, key: &str, target: &Path) -> std::io::Result<Box<dyn imgfs::Mounted>> {
        self.io()?.mount_volatile(key, target)
    }
}
