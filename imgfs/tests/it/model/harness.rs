//! The harness: one run of a sequence on both sides, checked after every step and commit, after
//! reopening the store, and after removing each snapshot.

use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgfs::{Store, StoreOptions, Tree};

use super::CHUNK;
use super::apply::{apply_plain, apply_tree, both_allowed, os_errno};
use super::ops::{Op, Pick};
use super::snap::{Snap, diff, join, plain_snap, tree_snap};

/// One run: a store, its active snapshot, the plain directory, what each committed snapshot
/// looked like when it was committed, and the operations run so far.
pub(super) struct Harness {
    _dir: tempfile::TempDir,
    pub(super) plain: PathBuf,
    store_root: PathBuf,
    store: Option<Store>,
    tree: Option<Tree>,
    active: String,
    committed: Vec<(String, Snap)>,
    log: Vec<String>,
}

impl Harness {
    pub(super) fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        // imgfs's base snapshot starts with a 0755 root owned by root.
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::lchown(&plain, Some(0), Some(0)).unwrap();
        let store_root = dir.path().join("store");
        let store = Store::create(
            &store_root,
            StoreOptions {
                chunk_size: CHUNK as u32,
            },
        )
        .unwrap();
        let active = "active-0".to_string();
        store.prepare(&active, None).unwrap();
        let tree = store.tree(&active).unwrap();
        Harness {
            _dir: dir,
            plain,
            store_root,
            store: Some(store),
            tree: Some(tree),
            active,
            committed: Vec::new(),
            log: Vec::new(),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("an open store")
    }

    pub(super) fn tree(&self) -> &Tree {
        self.tree.as_ref().expect("an active tree")
    }

    /// The concrete path a pick names now, read from the plain directory (which agrees with
    /// imgfs, or the run has already failed).
    fn pick(&self, pick: &Pick) -> String {
        fn walk(root: &Path, rel: &str, all: &mut Vec<String>, dirs: &mut Vec<String>) {
            let mut names: Vec<String> = std::fs::read_dir(root.join(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                let path = join(rel, &name);
                all.push(path.clone());
                if std::fs::symlink_metadata(root.join(&path))
                    .unwrap()
                    .is_dir()
                {
                    dirs.push(path.clone());
                    walk(root, &path, all, dirs);
                }
            }
        }
        let (mut all, mut dirs) = (Vec::new(), vec![String::new()]);
        match pick {
            Pick::Path(p) => p.clone(),
            Pick::Existing(n) => {
                walk(&self.plain, "", &mut all, &mut dirs);
                // With nothing there yet, name something that does not exist.
                all.get(n % all.len().max(1)).cloned().unwrap_or("a".into())
            }
            Pick::In(n, name) => {
                walk(&self.plain, "", &mut all, &mut dirs);
                join(&dirs[n % dirs.len()], name)
            }
        }
    }

    /// Runs one operation on both sides and compares the results.
    pub(super) fn step(&mut self, op: &Op) -> Result<(), String> {
        self.log.push(format!("{op:?}"));
        match op {
            Op::Commit => return self.commit(),
            Op::Reopen => return self.reopen(),
            Op::Read { path, offset, len } => return self.read(path, *offset, *len),
            _ => {}
        }
        let plain = apply_plain(&self.plain, op);
        let tree = apply_tree(self.tree(), op);
        let tree_errno = tree.as_ref().map_err(|e| e.errno()).copied();
        match (plain, tree_errno) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(p), Err(t)) if p == t || both_allowed(op, p, t) => Ok(()),
            (p, _) => Err(format!(
                "{op:?}: the plain directory says {}, imgfs says {}",
                show_errno(p),
                match tree {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("{} ({e})", errno_name(e.errno())),
                }
            )),
        }
    }

    /// Reads a range on both sides; both must fail alike or return the same bytes.
    fn read(&self, path: &str, offset: u64, len: u32) -> Result<(), String> {
        let plain = std::fs::File::open(self.plain.join(path))
            .and_then(|f| {
                let mut buf = vec![0u8; len as usize];
                let mut n = 0;
                // pread returns short counts only at the end of the file.
                loop {
                    let k = f.read_at(&mut buf[n..], offset + n as u64)?;
                    n += k;
                    if k == 0 || n == buf.len() {
                        break;
                    }
                }
                buf.truncate(n);
                Ok(buf)
            })
            .map_err(os_errno);
        let t = self.tree();
        let tree = t
            .resolve(path.as_bytes(), true)
            .and_then(|ino| t.read(ino, offset, len));
        match (&plain, &tree) {
            (Ok(p), Ok(t)) if p == t => Ok(()),
            (Err(p), Err(t)) if *p == t.errno() => Ok(()),
            (Ok(p), Ok(t)) => Err(format!(
                "read {path:?} at {offset}: the plain directory returns {} bytes, imgfs {} \
                 bytes, first difference at byte {}",
                p.len(),
                t.len(),
                p.iter()
                    .zip(t)
                    .position(|(x, y)| x != y)
                    .unwrap_or(p.len().min(t.len()))
            )),
            _ => Err(format!(
                "read {path:?} at {offset}: the plain directory says {}, imgfs says {}",
                show_errno(plain.map(drop)),
                match tree {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("{} ({e})", errno_name(e.errno())),
                }
            )),
        }
    }

    /// Commits the active snapshot, checks the committed tree and the new child against the
    /// plain directory, and checks that every earlier commit still reads as it did.
    fn commit(&mut self) -> Result<(), String> {
        let name = format!("snap-{}", self.committed.len());
        drop(self.tree.take());
        self.store()
            .commit(&name, &self.active)
            .map_err(|e| format!("commit {name}: {e}"))?;
        self.active = format!("active-{}", self.committed.len() + 1);
        self.store()
            .prepare(&self.active, Some(&name))
            .map_err(|e| format!("prepare on {name}: {e}"))?;
        self.tree = Some(self.store().tree(&self.active).unwrap());
        self.committed.push((name, plain_snap(&self.plain)));
        self.check()
    }

    /// Compares the active tree with the plain directory, and every committed snapshot with what
    /// it looked like when it was committed.
    fn check(&self) -> Result<(), String> {
        check_tree(
            &format!("active {}", self.active),
            self.tree(),
            &plain_snap(&self.plain),
        )?;
        for (name, snap) in &self.committed {
            let t = self
                .store()
                .tree(name)
                .map_err(|e| format!("open {name}: {e}"))?;
            check_tree(&format!("committed {name}"), &t, snap)?;
        }
        Ok(())
    }

    /// Closes and reopens the store, and checks everything again: nothing may live only in the
    /// memory of the process that wrote it.
    fn reopen(&mut self) -> Result<(), String> {
        drop(self.tree.take());
        // The old store must be gone first: it holds the store's lock.
        drop(self.store.take());
        let store = Store::open(&self.store_root).map_err(|e| format!("reopen: {e}"))?;
        self.tree = Some(store.tree(&self.active).unwrap());
        self.store = Some(store);
        self.check()
    }

    /// Removes the active snapshot, then the committed ones newest first, checking after each
    /// removal that the older ones still read as they did: chunks they share with a removed
    /// snapshot must survive it.
    fn remove_all(&mut self) -> Result<(), String> {
        drop(self.tree.take());
        let store = self.store.take().expect("an open store");
        store
            .remove(&self.active)
            .map_err(|e| format!("remove {}: {e}", self.active))?;
        while let Some((name, _)) = self.committed.pop() {
            store
                .usage(&name)
                .map_err(|e| format!("usage of {name}: {e}"))?;
            store
                .remove(&name)
                .map_err(|e| format!("remove {name}: {e}"))?;
            for (older, snap) in &self.committed {
                let t = store
                    .tree(older)
                    .map_err(|e| format!("open {older} after removing {name}: {e}"))?;
                check_tree(
                    &format!("committed {older} after removing {name}"),
                    &t,
                    snap,
                )?;
            }
        }
        Ok(())
    }

    /// Runs `ops`, checks the trees, reopens the store, checks them again, and removes every
    /// snapshot.
    pub(super) fn run(&mut self, ops: impl IntoIterator<Item = Op<Pick>>) -> Result<(), String> {
        let result = (|| {
            for op in ops {
                let op = op.map(|p| self.pick(p));
                self.step(&op)?;
            }
            self.check()?;
            self.log
                .push("(check, reopen, check, remove every snapshot)".into());
            self.reopen()?;
            self.remove_all()
        })();
        result.map_err(|e| format!("{e}\nthe sequence as run:\n  {}", self.log.join("\n  ")))
    }
}

pub(super) fn check_tree(what: &str, t: &Tree, expected: &Snap) -> Result<(), String> {
    let actual = tree_snap(t).map_err(|e| format!("{what}: {e}"))?;
    match diff(expected, &actual) {
        None => Ok(()),
        Some(d) => Err(format!("{what} differs from the model:\n{d}")),
    }
}

pub(super) fn errno_name(e: i32) -> String {
    format!("{} ({})", io::Error::from_raw_os_error(e), e)
}

pub(super) fn show_errno(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => errno_name(e),
    }
}
