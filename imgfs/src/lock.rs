//! The lock that makes one process the only writer of a store directory, for both backends:
//! `flock(2)` on `<root>/LOCK`, which also holds the holder's pid for error messages.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The pid written in the lock of the store in `root` if a live process holds it ("unknown"
/// if it holds it without having written it), `None` if nobody does. Takes nothing and writes
/// nothing, but holds a shared lock for the moment of the probe, during which a writer opening
/// the store would fail as locked: ask only when the answer matters.
pub(crate) fn holder(root: &Path) -> Option<String> {
    let path = root.join("LOCK");
    let f = std::fs::File::open(&path).ok()?;
    // SAFETY: flock on an fd we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // Closing `f` drops the probe's lock at once.
        return None;
    }
    let pid = std::fs::read_to_string(&path).unwrap_or_default();
    let pid = pid.trim();
    Some(if pid.is_empty() {
        "unknown".into()
    } else {
        pid.into()
    })
}

/// Takes the lock of the store in `root`, or fails with `Error::Locked` naming the holder's pid.
/// The kernel drops the lock when its holder dies, however it dies.
pub(crate) fn lock_dir(root: &Path) -> Result<File> {
    let path = root.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("open {}", path.display()))?;
    // A lock that names our own pid may be held by a child we are starting: between fork and
    // exec it shares our descriptors, this LOCK's included (seen in tests that spawn processes
    // while others reopen a store). That clears within milliseconds, so wait for it a little;
    // a lock held by another process fails at once.
    let own = std::process::id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    // SAFETY: flock on an fd we own; no memory is involved.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(&path).unwrap_or_default();
        let pid = pid.trim();
        if pid == own && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            continue;
        }
        return Err(Error::Locked {
            path: root.to_path_buf(),
            pid: if pid.is_empty() {
                "unknown".into()
            } else {
                pid.into()
            },
        });
    }
    f.set_len(0)
        .ctx(|| format!("truncate {}", path.display()))?;
    write!(f, "{}", std::process::id()).ctx(|| format!("write {}", path.display()))?;
    Ok(f)
}
