//! `imgfs mount` and `imgfs umount`: the process that serves a mount, its readiness report,
//! signal handling, the commit when the mount ends, and the ownership of the writable child it
//! names itself (`imgfs::owner`).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imgfs::fuse::{self, MountOptions, RequestStats};
use imgfs::{SnapshotKind, Store};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// The arguments of `imgfs mount`.
#[derive(clap::Args)]
pub struct Args {
    /// The store directory.
    #[arg(long, short = 's', env = "IMGFS_STORE")]
    pub store: PathBuf,
    /// The snapshot to mount.
    #[arg(long)]
    pub snapshot: String,
    /// Mount a writable child of the snapshot (or the active snapshot itself).
    #[arg(long)]
    pub writable: bool,
    /// Key of the writable child (default: SNAPSHOT.mount-PID, which the next writer of the
    /// store removes if this process is killed; a child named here stays active then).
    #[arg(long, requires = "writable")]
    pub key: Option<String>,
    /// Commit the writable child under this name when unmounted.
    #[arg(long, requires = "writable")]
    pub commit: Option<String>,
    /// Detach once the mount is ready.
    #[arg(long, short = 'd')]
    pub daemon: bool,
    /// With --daemon, where messages go after detaching (default: discarded).
    #[arg(long, requires = "daemon")]
    pub log: Option<PathBuf>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Microseconds a worker polls for the next request before it sleeps (0: sleep at once).
    /// Polling spends CPU while a caller is busy and saves a wake-up per request.
    #[arg(long, default_value_t = fuse::POLL_BEFORE_READ.as_micros() as u64)]
    pub poll_us: u64,
    /// Ask for FUSE over io_uring, the default (Linux 6.14+, with
    /// /sys/module/fuse/parameters/enable_uring set to Y): one thread per CPU answers requests
    /// on the caller's CPU. Without kernel support the mount serves /dev/fuse as usual. Kept
    /// so that scripts which pass it keep working.
    #[arg(long, overrides_with = "no_io_uring")]
    pub io_uring: bool,
    /// Serve requests only through /dev/fuse, even where the kernel offers io_uring.
    #[arg(long)]
    pub no_io_uring: bool,
    /// Serve every read through imgfs. By default, when imgfs runs with CAP_SYS_ADMIN in the
    /// initial user namespace, reads of files that a layer import stored whole in an object
    /// pack (1 MiB and larger) go from the kernel straight to the pack (FUSE passthrough).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Keep the io_uring threads under the normal scheduling policy. By default they run under
    /// SCHED_IDLE while they are busy and the CPUs are not, so the kernel wakes each caller on
    /// the CPU it waits on instead of waking another one (back to normal as soon as other work
    /// keeps them waiting for a CPU; needs CAP_SYS_NICE or an RLIMIT_NICE of 20).
    #[arg(long)]
    pub no_idle_rings: bool,
    /// When the mount ends, print how many requests of each kind it served and the time
    /// imgfs spent on them, and how many times it synced the metadata log.
    #[arg(long)]
    pub stats: bool,
    /// Answer fsync, fdatasync and fsyncdir without syncing anything (as img's build steps
    /// do): what is written may be lost in a crash until --commit makes it all durable.
    #[arg(long, requires = "writable")]
    pub volatile: bool,
    /// Test hook: the ring that gets the N+1st request fails as a broken ring would (the
    /// connection must then end). Hidden, and read here rather than inside fuser so that the
    /// library never looks at the environment.
    #[arg(long, hide = true, env = "IMGFS_TEST_URING_FAIL_AFTER")]
    pub test_uring_fail_after: Option<u64>,
    pub mountpoint: PathBuf,
}

/// Forks; the parent waits until the child says the mount is ready (exit 0) or dies (exit 1,
/// after the child printed why). Must run before any thread exists: rocksdb and fuser start some.
fn daemonize() -> Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe().context("cannot create a pipe")?;
    // SAFETY: `run` calls this before anything starts a thread, so the child is a complete copy
    // of a single-threaded process.
    match unsafe { nix::unistd::fork() }.context("cannot fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write);
            let mut byte = [0u8; 1];
            let ready = matches!(std::fs::File::from(read).read(&mut byte), Ok(1));
            std::process::exit(if ready { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Child => {
            drop(read);
            nix::unistd::setsid().context("setsid")?;
            Ok(write)
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let ready_pipe = if args.daemon {
        Some(daemonize()?)
    } else {
        None
    };
    // Block the termination signals in every thread (threads inherit the mask); one thread waits
    // for them and unmounts, so every way out goes through the unmount and the commit.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("cannot block signals")?;

    let store = if args.writable {
        let store = Store::open(&args.store);
        if let Ok(store) = &store {
            crate::remove_abandoned_mounts(store);
        }
        store
    } else {
        Store::open_read_only(&args.store)
    }
    .with_context(|| format!("cannot open store {}", args.store.display()))?;
    let rec = store.stat(&args.snapshot)?;
    // `owned`: the child this process prepared under a name of its own, which nobody else
    // knows of; if the process is killed, the next writer removes it (`imgfs::owner`). A child
    // named with --key is the user's, who can find it again by that name.
    let (key, owned) = match (args.writable, rec.kind) {
        (false, _) => (args.snapshot.clone(), false),
        (true, SnapshotKind::Committed) => match &args.key {
            Some(key) => {
                store.prepare(key, Some(&args.snapshot))?;
                (key.clone(), false)
            }
            None => {
                let key = format!("{}.mount-{}", args.snapshot, std::process::id());
                store.prepare_owned(&key, Some(&args.snapshot))?;
                (key, true)
            }
        },
        (true, SnapshotKind::Active) => (args.snapshot.clone(), false),
        (true, _) => bail!("snapshot {} is neither committed nor active", args.snapshot),
    };
    let stats = args.stats.then(|| Arc::new(RequestStats::default()));
    let background = match start(&store, &key, &args, &stats) {
        Ok(background) => background,
        Err(e) => {
            // Nothing was mounted, so nothing was written: the child would only pin its parent.
            if owned {
                match store.remove(&key) {
                    Ok(()) => imgfs::owner::remove_marker(store.root(), std::process::id()),
                    Err(rm) => eprintln!("imgfs: cannot remove snapshot {key}: {rm:#}"),
                }
            }
            return Err(e);
        }
    };
    if let Some(pipe) = ready_pipe {
        let _ = std::fs::File::from(pipe).write_all(b"1");
        // Let go of the caller's terminal or pipes: whoever started us may be waiting for EOF.
        detach_stdio(args.log.as_deref())?;
    }
    // fuser's own unmounter is emptied when the session starts serving, so unmount by path.
    let mountpoint = args.mountpoint.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("imgfs: {sig}: unmounting");
            if let Err(e) = unmount_path(&mountpoint) {
                eprintln!("imgfs: unmount failed: {e:#}");
            }
        }
    });
    let served = background.join();
    // From here on every way out keeps the child active, as a clean end of a mount does.
    let release = || -> Result<()> {
        if owned {
            store.release_owned(&key).with_context(|| {
                format!("cannot keep snapshot {key}: the next writer of the store removes it")
            })?;
        }
        Ok(())
    };
    if let Err(e) = served {
        // A failed session (an io_uring queue that failed ends the connection) leaves a dead
        // mount behind; take it away.
        let _ = unmount_path(&args.mountpoint);
        if let Err(r) = release() {
            eprintln!("imgfs: {r:#}");
        }
        return Err(anyhow::Error::new(e).context("serving the mount failed"));
    }
    if let Some(stats) = stats {
        eprint!("{}", stats.report());
        eprintln!("metadata log syncs: {}", store.log_syncs());
    }

    if let Some(name) = &args.commit {
        // A commit drops the owner labels itself, in the same write.
        match store.commit(name, &key) {
            Ok(rec) => eprintln!("imgfs: committed {key} as {}", rec.name),
            Err(e) => {
                if let Err(r) = release() {
                    eprintln!("imgfs: {r:#}");
                }
                return Err(anyhow::Error::new(e).context(format!("cannot commit {key} as {name}")));
            }
        }
    } else if args.writable {
        release()?;
        eprintln!("imgfs: snapshot {key} stays active");
    }
    Ok(())
}

/// Mounts the snapshot `key` and starts serving it. On failure nothing is mounted and the
/// snapshot's tree is closed again.
fn start(
    store: &Store,
    key: &str,
    args: &Args,
    stats: &Option<Arc<RequestStats>>,
) -> Result<fuser::BackgroundSession> {
    let tree = if args.writable {
        store.tree(key)?
    } else {
        store.tree_read_only(key)?
    };
    let opts = MountOptions {
        threads: args.threads,
        stats: stats.clone(),
        poll_before_read: Duration::from_micros(args.poll_us),
        io_uring: !args.no_io_uring,
        passthrough: !args.no_passthrough,
        idle_rings: !args.no_idle_rings,
        uring_fail_after: args.test_uring_fail_after,
        volatile: args.volatile,
        ..Default::default()
    };
    let (session, _) = fuse::session(tree, &args.mountpoint, &opts)
        .with_context(|| format!("cannot mount {}", args.mountpoint.display()))?;
    let background = session.spawn().context("cannot start serving the mount")?;
    let what = if args.writable {
        "writable snapshot"
    } else {
        "snapshot"
    };
    eprintln!(
        "imgfs: mounted {what} {key} at {}",
        args.mountpoint.display()
    );
    Ok(background)
}

fn detach_stdio(log: Option<&Path>) -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    let out = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("cannot open log {}", p.display()))?,
        None => null.try_clone().context("dup /dev/null")?,
    };
    nix::unistd::dup2_stdin(&null).context("dup2")?;
    nix::unistd::dup2_stdout(&out).context("dup2")?;
    nix::unistd::dup2_stderr(&out).context("dup2")?;
    Ok(())
}

/// Unmounts a FUSE mount: umount2(2) as root, fusermount3 otherwise. A mount still busy after
/// two seconds of retries is detached lazily: it disappears from the tree now and ends when the
/// last file in it is closed.
fn unmount_path(mountpoint: &Path) -> Result<()> {
    use nix::mount::{MntFlags, umount2};
    let root = nix::unistd::Uid::effective().is_root();
    let attempt = |lazy: bool| -> Result<bool> {
        if root {
            let flags = if lazy {
                MntFlags::MNT_DETACH
            } else {
                MntFlags::empty()
            };
            return match umount2(mountpoint, flags) {
                Ok(()) => Ok(true),
                Err(nix::errno::Errno::EBUSY) => Ok(false),
                Err(e) => Err(anyhow::anyhow!(
                    "cannot unmount {}: {e}",
                    mountpoint.display()
                )),
            };
        }
        let out = std::process::Command::new("fusermount3")
            .arg(if lazy { "-uz" } else { "-u" })
            .arg(mountpoint)
            .output()
            .context("cannot run fusermount3")?;
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("busy") {
            return Ok(false);
        }
        bail!("fusermount3 -u {}: {}", mountpoint.display(), err.trim())
    };
    for _ in 0..40 {
        if attempt(false)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "imgfs: {} is busy; detaching it lazily",
        mountpoint.display()
    );
    attempt(true).map(|_| ())
}

/// The pid of the imgfs process serving `mountpoint`, from its file-system name (`imgfs:PID`),
/// and the mount as mountinfo lists it. Read from /proc/self/mountinfo only: stat(2) of the
/// mount point would ask the server, which may be gone.
fn server_of(mountpoint: &Path) -> Result<Option<(i32, fuse::fusectl::MountEntry)>> {
    let want = mount_point_path(mountpoint)
        .with_context(|| format!("cannot resolve {}", mountpoint.display()))?;
    let Some(mount) = fuse::fusectl::find(&want).context("cannot read /proc/self/mountinfo")?
    else {
        return Ok(None);
    };
    match mount.source.strip_prefix("imgfs:").map(str::parse) {
        Some(Ok(pid)) => Ok(Some((pid, mount))),
        _ => bail!(
            "{} is not an imgfs mount (its source is {})",
            mountpoint.display(),
            mount.source
        ),
    }
}

/// The absolute path of `dir` without symlinks, resolved without looking at `dir` itself.
fn mount_point_path(dir: &Path) -> std::io::Result<PathBuf> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    match (parent, dir.file_name()) {
        (Some(p), Some(name)) => Ok(std::fs::canonicalize(p)?.join(name)),
        (None, Some(name)) => Ok(std::env::current_dir()?.join(name)),
        _ => std::fs::canonicalize(dir),
    }
}

/// Unmounts an imgfs mount and waits for its process to finish (its commit included), so the
/// store is free for the next command when this returns. A mount whose process is gone
/// (killed) is ended at once, its FUSE connection aborted: there is nothing to wait for.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let Some((pid, _)) = server_of(mountpoint)? else {
        bail!("{} is not mounted", mountpoint.display());
    };
    if !Path::new(&format!("/proc/{pid}")).exists() {
        let path = mount_point_path(mountpoint)?;
        fuse::fusectl::end_mount(&path)
            .with_context(|| format!("cannot end the mount {}", mountpoint.display()))?;
        eprintln!(
            "imgfs: the process {pid} serving {} was gone; its mount is removed",
            mountpoint.display()
        );
        return Ok(());
    }
    // Opened before the unmount, so that it names that process whatever happens to the pid.
    let exited = ProcessExit::open(pid)?;
    unmount_path(mountpoint)?;
    if !exited.wait(Duration::from_secs(600))? {
        bail!("imgfs process {pid} is still running 10 minutes after the unmount");
    }
    Ok(())
}

/// A pidfd: the kernel's word that a process has exited. Its /proc entry is no such word: it
/// stays while the process is a zombie, and a mount process started by `umount`'s caller stays
/// one until that caller reaps it, which may be after `umount` returns.
struct ProcessExit(OwnedFd);

impl ProcessExit {
    fn open(pid: i32) -> Result<ProcessExit> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot watch imgfs process {pid}"));
        }
        // SAFETY: the descriptor is new and nothing else owns it.
        Ok(ProcessExit(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as i32)
        }))
    }

    /// Waits up to `timeout` for the process to exit; whether it has.
    fn wait(&self, timeout: Duration) -> Result<bool> {
        use std::os::fd::AsRawFd;
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one pollfd that lives across the call.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                n if n > 0 => return Ok(true),
                0 => return Ok(false),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e).context("cannot wait for the imgfs process");
                    }
                }
            }
        }
    }
}
