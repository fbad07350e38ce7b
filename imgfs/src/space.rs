//! Free space: the store never lets its metadata database meet a full file system.
//!
//! Debian's librocksdb 7.8 aborts the process (an assertion in `WritableFileWriter`, added by
//! facebook/rocksdb#10489 and kept in Debian's build) when it appends to, syncs or closes a file
//! whose earlier append failed, and every later open of the database repeats the
//! write that fails, so one ENOSPC inside rocksdb used to make the store unusable, `rm` included.
//! Catching rocksdb's error is not enough (the abort comes first) and a newer rocksdb is not an
//! option (ARCHITECTURE.md, "Dependencies"), so imgfs makes sure rocksdb never starts a write that
//! cannot finish, with three rules:
//!
//! - data writes (packs, object packs, scratch files: imports, mounts, commits) leave
//!   `DATA_HEADROOM` free: they fail with ENOSPC before writing, while the metadata that records
//!   or undoes them still fits;
//! - a metadata write fails with ENOSPC unless its batch (twice: the write-ahead log, then the
//!   table a flush makes of it), the live write-ahead logs (what rocksdb's next flush, or next
//!   open, writes as a table), `META_SLACK` (manifest, options and info log) and `FREEING_ROOM`
//!   fit; only the writes that
//!   free space (removing a snapshot, rolling an import back, fsck's repairs) may use
//!   `FREEING_ROOM`;
//! - `RESERVE`, a file of `RESERVE_SIZE` in the store's root, covers a disk that something else
//!   filled (another program, the overlay backend or image blobs on the same file system): a
//!   writer that opens the store on a full disk deletes it before rocksdb opens, so `rm`, prune
//!   and `fsck --repair` can record what they free; it is written again once there is room.
//!
//! `meta` also keeps rocksdb from writing on its own: its info log is at the error level and
//! its manifest is preallocated 64 KiB at a time, not 4 MiB.
//!
//! Checking before writing was preferred to preallocating every file rocksdb writes (it names
//! them itself, and the Rust crate exposes no `Env` to do it) and to resuming rocksdb after a
//! background error (the abort comes before any error handler runs).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What data writes leave free for the metadata that records them.
pub const DATA_HEADROOM: u64 = 6 << 20;
/// What metadata writes leave free for the metadata writes that free space.
pub const FREEING_ROOM: u64 = 2 << 20;
/// What a metadata write leaves free, beyond the next flush, for rocksdb's own small files.
pub const META_SLACK: u64 = 1 << 20;
/// The size of the `RESERVE` file.
pub const RESERVE_SIZE: u64 = 4 << 20;
/// The reserve file's name in a store's root.
pub const RESERVE_NAME: &str = "RESERVE";

/// How long a measurement of the free space is trusted, minus what this process wrote since.
/// Other processes may fill the disk meanwhile; the headroom and the reserve cover that window.
const RECHECK: Duration = Duration::from_millis(50);

/// The free space of the file system that holds a directory, measured with statvfs and, between
/// measurements, reduced by what this process reserved.
pub struct Space {
    dir: PathBuf,
    probe: Mutex<Option<Probe>>,
}

#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    free: u64,
}

/// The bytes an unprivileged writer may still allocate on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

impl Space {
    pub fn new(dir: &Path) -> Space {
        Space {
            dir: dir.to_path_buf(),
            probe: Mutex::new(None),
        }
    }

    /// Takes `need` bytes, failing with `Error::NoSpace` (nothing written) unless `keep` bytes
    /// stay free after them. `what` says what the bytes are for, in the "-ing" form the error
    /// message puts after "while".
    pub fn take(&self, need: u64, keep: u64, what: impl FnOnce() -> String) -> Result<()> {
        let mut probe = self.probe.lock().expect("poisoned");
        let fresh = probe.is_some_and(|p| p.at.elapsed() < RECHECK);
        let enough = |p: &Option<Probe>| p.is_some_and(|p| p.free >= need.saturating_add(keep));
        if !fresh || !enough(&probe) {
            let free = free_bytes(&self.dir).map_err(|e| {
                Error::io(format!("measure free space of {}", self.dir.display()), e)
            })?;
            *probe = Some(Probe {
                at: Instant::now(),
                free,
            });
        }
        if !enough(&probe) {
            tracing::debug!(dir = %self.dir.display(), need, keep, free = probe.map(|p| p.free), "no space");
            return Err(Error::NoSpace(what()));
        }
        if let Some(p) = probe.as_mut() {
            p.free -= need;
        }
        Ok(())
    }
}

/// Deletes the reserve file in `root` when the file system has less free space than the store's
/// own writes leave (so something else filled it): the first thing a writer does, so that the
/// commands that free space can run on a full disk. (`img` keeps one in its state directory
/// too, for its image index and blobs.)
pub fn release_reserve_if_full(root: &Path) {
    let path = root.join(RESERVE_NAME);
    if free_bytes(root).is_ok_and(|free| free < FREEING_ROOM + META_SLACK) && path.exists() {
        tracing::warn!(dir = %root.display(), "file system nearly full: releasing the reserved space");
        let _ = std::fs::remove_file(&path);
    }
}

/// Writes the reserve file if it is missing and the file system has room for it and the data
/// headroom besides. Best effort: a store without its reserve works, it only loses the margin.
pub fn refill_reserve(root: &Path) {
    let path = root.join(RESERVE_NAME);
    if path.exists() || !free_bytes(root).is_ok_and(|free| free >= RESERVE_SIZE + 2 * DATA_HEADROOM)
    {
        return;
    }
    // fallocate allocates the blocks without writing them; zeros are the fallback where it is
    // not supported. Written under a temporary name, so a crash never leaves a short reserve.
    let tmp = root.join(format!("{RESERVE_NAME}.tmp"));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        let len = RESERVE_SIZE as libc::off_t;
        if nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len).is_err() {
            use std::io::Write;
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_SIZE / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        tracing::debug!(store = %root.display(), "cannot write the reserve file: {e}");
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Whether an I/O error says the file system (or the user's quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    // Wrapped errors (tempfile's, with the path) keep the kind but not the errno.
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// "write pack 3" -> "writing pack 3": what an error's context (an imperative) was doing, for
/// messages that read "no space left on device while writing pack 3". Verbs it does not know
/// become "trying to ...".
pub fn doing(context: &str) -> String {
    let (verb, rest) = context.split_once(' ').unwrap_or((context, ""));
    let ing = match verb {
        "write" | "create" | "size" | "measure" | "truncate" | "remove" | "rename" | "save"
        | "store" => format!("{}ing", &verb[..verb.len() - 1]),
        "append" | "open" | "sync" | "copy" | "read" | "free" | "punch" | "unpack" | "load"
        | "extract" | "link" | "persist" | "flush" => format!("{verb}ing"),
        _ => return format!("trying to {context}"),
    };
    if rest.is_empty() {
        ing
    } else {
        format!("{ing} {rest}")
    }
}

/// The message of an I/O error while doing `op` (an imperative) on `object`: "no space left on
/// device while writing OBJECT" when the disk is full, else "failed to write OBJECT: ERROR".
pub fn io_message(op: &str, object: &dyn std::fmt::Display, e: &std::io::Error) -> String {
    if is_no_space(e) {
        format!("no space left on device while {} {object}", doing(op))
    } else {
        format!("failed to {op} {object}: {e}")
    }
}
