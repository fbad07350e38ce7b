//! Fixtures for the imgfs benchmarks in `benches/`: generated layer tars, stores holding a base
//! snapshot of a chosen size, chains of snapshots, and the cached root file system tar. Nothing
//! here is timed; it only builds what the timed code runs against.

use std::path::PathBuf;

use anyhow::{Context, Result};
use imgfs::layer::{ImportLimits, import_layer};
use imgfs::{Ino, Store, StoreOptions};

/// Where the benchmarks put their stores and extracted trees: a directory on the disk being
/// measured (not a tmpfs). `IMG_BENCH_DIR` overrides it.
pub fn scratch_root() -> PathBuf {
    std::env::var_os("IMG_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from)
}

/// A fresh, empty directory under `scratch_root`, deleted when dropped.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let root = scratch_root();
    std::fs::create_dir_all(&root)
        .with_context(|| format!("failed to create {}", root.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .with_context(|| format!("failed to create a scratch directory in {}", root.display()))
}

/// The name of directory `d` in a generated tree.
pub fn dir_name(d: usize) -> String {
    format!("d{d:03}")
}

/// The name of file `f` in a directory of a generated tree.
pub fn file_name(f: usize) -> String {
    format!("f{f:04}")
}

/// A layer tar of `dirs` directories holding `files` files each, every file a few bytes of its
/// own content (so each is one distinct chunk). It has `dirs * (files + 1)` entries.
pub fn tree_tar(dirs: usize, files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::with_capacity(dirs * (files + 1) * 1024 + 1024));
    for d in 0..dirs {
        let dir = dir_name(d);
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .expect("writing to a Vec cannot fail");
        for f in 0..files {
            let body = format!("{dir}/{}\n", file_name(f));
            let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
            b.append_data(&mut h, &body[..body.len() - 1], body.as_bytes())
                .expect("writing to a Vec cannot fail");
        }
    }
    b.into_inner().expect("writing to a Vec cannot fail")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A store in its own scratch directory. Fields drop in order: the store closes before its
/// directory is deleted.
pub struct Fixture {
    pub store: Store,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// An empty store.
    pub fn empty(prefix: &str) -> Result<Fixture> {
        let dir = scratch_dir(prefix)?;
        let store = Store::create(&dir.path().join("store"), StoreOptions::default())
            .context("failed to create the benchmark store")?;
        Ok(Fixture { store, _dir: dir })
    }

    /// A store whose committed snapshot `base` is a generated tree of `dirs` x `files` files,
    /// imported from a tar as a pulled image layer would be.
    pub fn with_base(prefix: &str, dirs: usize, files: usize) -> Result<Fixture> {
        let fx = Fixture::empty(prefix)?;
        let tar = tree_tar(dirs, files);
        import_layer(&fx.store, "base", None, &tar[..], &ImportLimits::default())
            .with_context(|| format!("failed to import a {dirs}x{files} tree"))?;
        Ok(fx)
    }
}

/// The inode of `d{d}/f{f}` in snapshot `name`.
pub fn file_ino(store: &Store, name: &str, d: usize, f: usize) -> Result<Ino> {
    let tree = store.tree_read_only(name)?;
    let (dir, _) = tree.lookup(Ino::ROOT, dir_name(d).as_bytes())?;
    Ok(tree.lookup(dir, file_name(f).as_bytes())?.0)
}

/// Prepares `key` on `parent`, writes `content` over the start of each file in `files`, and
/// commits it as `name`.
pub fn commit_writes(
    store: &Store,
    name: &str,
    parent: &str,
    files: &[(usize, usize)],
    content: &[u8],
) -> Result<()> {
    let key = format!("{name}-active");
    store.prepare(&key, Some(parent))?;
    {
        let tree = store.tree(&key)?;
        for &(d, f) in files {
            let (dir, _) = tree.lookup(Ino::ROOT, dir_name(d).as_bytes())?;
            let (ino, _) = tree.lookup(dir, file_name(f).as_bytes())?;
            tree.write(ino, 0, content)?;
        }
    }
    store
        .commit(name, &key)
        .with_context(|| format!("failed to commit {name}"))?;
    Ok(())
}

/// The root file system tar that `bench/rootfs.sh` builds, if it has been built.
/// `IMG_ROOTFS_TAR` overrides the path.
pub fn rootfs_tar() -> Option<PathBuf> {
    let path = std::env::var_os("IMG_ROOTFS_TAR").map_or_else(
        || PathBuf::from("/var/tmp/img-fixtures/bookworm-minbase.tar"),
        PathBuf::from,
    );
    path.is_file().then_some(path)
}
