//! The state lock: one process at a time may change the state dir. `flock(2)` on `<state>/lock`,
//! which holds the holder's pid so that a waiting process can say whom it waits for.
//!
//! flock rather than a lock file that exists-or-not: the kernel drops it when the holder dies,
//! however it dies, so there is no stale lock to clean up. The pid is only informative; it may be
//! stale or missing (a holder between locking and writing it), never trusted for correctness.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("failed to {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Held(Contention),
}

/// Another process holds the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contention {
    pub dir: PathBuf,
    /// The holder's pid as it wrote it, if it has.
    pub pid: Option<u32>,
}

impl fmt::Display for Contention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the lock on {} is held by ", self.dir.display())?;
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("another process"),
        }
    }
}

impl Contention {
    /// What to print before blocking: "waiting for the lock on <dir> held by pid N".
    pub fn waiting_message(&self) -> String {
        let holder = match self.pid {
            Some(pid) => format!("pid {pid}"),
            None => "another process".to_string(),
        };
        format!(
            "waiting for the lock on {} held by {holder}",
            self.dir.display()
        )
    }
}

/// The held state lock; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LockError {
    let path = path.to_path_buf();
    move |source| LockError::Io { op, path, source }
}

impl StateLock {
    /// Takes the lock on `state_dir`. When another process holds it: without `wait`, fails with
    /// [`LockError::Held`]; with `wait`, calls `on_wait` once (the binary prints
    /// [`Contention::waiting_message`]) and blocks until the lock is free.
    pub fn acquire(
        state_dir: &Path,
        wait: bool,
        on_wait: impl FnOnce(&Contention),
    ) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("open", &path))
        };
        let flock = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let contention = Contention {
                    dir: state_dir.to_path_buf(),
                    pid: read_pid(&mut file),
                };
                if !wait {
                    return Err(LockError::Held(contention));
                }
                on_wait(&contention);
                lock_blocking(file, &path)?
            }
            Err((_, errno)) => return Err(io_err("lock", &path)(errno.into())),
        };
        let mut lock = StateLock { _lock: flock, path };
        lock.write_pid()?;
        Ok(lock)
    }

    fn write_pid(&mut self) -> Result<(), LockError> {
        let file: &mut File = &mut self._lock;
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_err("write pid to", &self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_blocking(file: File, path: &Path) -> Result<Flock<File>, LockError> {
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(io_err("lock", path)(errno.into())),
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}
