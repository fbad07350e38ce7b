//! Mounting a tree: `MountOptions`, the session set-up (`mount`, `session`: mount options,
//! fuser's config, readahead) and `RequestStats`, what a mount served.

use super::*;

/// Options for `mount`.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Worker threads reading `/dev/fuse` (each with its own cloned fd).
    pub threads: usize,
    /// Let every user reach the mount (`allow_other`), with the kernel checking permissions.
    pub allow_other: bool,
    /// Where to count requests and the time spent serving them (`imgfs mount --stats`).
    pub stats: Option<Arc<RequestStats>>,
    /// How long a worker polls /dev/fuse for the next request before it sleeps in read(2)
    /// (`POLL_BEFORE_READ`); zero: it sleeps at once.
    pub poll_before_read: Duration,
    /// Ask the kernel for FUSE over io_uring (the default; `imgfs mount --no-io-uring` turns it
    /// off): requests are then served by one pinned thread per CPU, on the caller's CPU. Needs
    /// Linux 6.14+ with the fuse module's `enable_uring` on; otherwise the mount serves
    /// /dev/fuse as usual. Untar 0.41-0.46 -> 0.64 of overlayfs, rm -rf -30% here.
    pub io_uring: bool,
    /// Pass reads of files stored whole in an object pack straight to the pack (FUSE
    /// passthrough), when the process may (`can_passthrough`); `imgfs mount --no-passthrough`
    /// turns it off. It costs an OPEN round trip for every file opened (see `FuseFs::open`).
    pub passthrough: bool,
    /// Let the ring threads run under SCHED_IDLE while they are busy and the CPUs are not, so
    /// the kernel wakes each caller on the CPU it waits on instead of waking another vCPU
    /// (`fuse/governor.rs`); `imgfs mount --no-idle-rings` turns it off.
    pub idle_rings: bool,
    /// Test hook, not for production: with `Some(n)` the ring that gets the n+1st request
    /// fails as a broken ring would, which must end the connection (fuser's
    /// `Config::uring_fail_after`; `imgfs mount` sets it from `IMGFS_TEST_URING_FAIL_AFTER`).
    pub uring_fail_after: Option<u64>,
    /// Answer fsync, fdatasync and fsyncdir without syncing the snapshot's scratch data or the
    /// metadata log (overlayfs's `volatile`): the first of each is answered ENOSYS, after which
    /// the kernel sends no more and reports success itself. For snapshots that are discarded
    /// after a crash anyway and made durable whole by their commit, such as a build step's.
    /// `imgfs mount --volatile` turns it on; off by default.
    pub volatile: bool,
}

/// The default polling window of a worker before read(2), through img's poll-before-read patch
/// of fuser (imgfs/vendor/fuser/PATCHED.md). A sleeping worker must be woken for each request, and on
/// this project's VMs, whose idle vCPUs halt, that costs more than serving a metadata request:
/// a GETXATTR round trip took 29 µs with sleeping workers and 17 µs with 30 µs of polling, and
/// an untar of 11,903 files 5.3 s instead of 9.0 s (docs/benchmarks.md). An idle mount polls
/// once for this long after its last request, then sleeps.
pub const POLL_BEFORE_READ: Duration = Duration::from_micros(30);

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 2,
            allow_other: true,
            stats: None,
            poll_before_read: POLL_BEFORE_READ,
            io_uring: true,
            passthrough: true,
            idle_rings: true,
            uring_fail_after: None,
            volatile: false,
        }
    }
}

/// Whether this process may register backing files with the kernel (FUSE passthrough), which
/// needs CAP_SYS_ADMIN in the initial user namespace. Root inside a user namespace (img's
/// unprivileged builds) may not, and would otherwise negotiate passthrough, lose the no-OPEN
/// fast path and then be refused at every open.
pub fn can_passthrough() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let init_ns = std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    let cap_sys_admin = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
    });
    init_ns && cap_sys_admin
}

/// How many requests of each kind a mount served and how long imgfs took to answer them
/// (from the handler's start to its reply; the kernel's round trip is not included). Tells
/// whether a workload is slow because of the requests the kernel sends or the work each costs.
#[derive(Debug, Default)]
pub struct RequestStats {
    by_op: Mutex<HashMap<&'static str, (u64, Duration)>>,
}

impl RequestStats {
    pub(super) fn record(&self, op: &'static str, took: Duration) {
        let mut by_op = self.by_op.lock().expect("poisoned");
        let e = by_op.entry(op).or_default();
        e.0 += 1;
        e.1 += took;
    }

    /// How many requests of kind `op` (`"read"`, `"open"`, ...) were served.
    pub fn count(&self, op: &str) -> u64 {
        self.by_op
            .lock()
            .expect("poisoned")
            .get(op)
            .map_or(0, |e| e.0)
    }

    /// One line per kind of request, the most time first: name, count, mean and total time.
    pub fn report(&self) -> String {
        let by_op = self.by_op.lock().expect("poisoned");
        let mut rows: Vec<_> = by_op.iter().collect();
        rows.sort_by_key(|(_, (_, total))| std::cmp::Reverse(*total));
        let mut out = format!(
            "{:<12} {:>9} {:>10} {:>10}\n",
            "request", "count", "mean µs", "total s"
        );
        for (op, (n, total)) in rows {
            out += &format!(
                "{op:<12} {n:>9} {:>10.1} {:>10.3}\n",
                total.as_secs_f64() * 1e6 / *n as f64,
                total.as_secs_f64()
            );
        }
        out
    }
}

/// Mounts `tree` at `mountpoint` and serves it on background threads until the returned guard
/// is unmounted or dropped.
pub fn mount(tree: Tree, mountpoint: &Path, opts: &MountOptions) -> std::io::Result<FuseMount> {
    let (session, _) = session(tree, mountpoint, opts)?;
    Ok(FuseMount {
        path: mountpoint.to_owned(),
        session: Some(session.spawn()?),
    })
}

/// Mounts `tree` and returns the session (not yet serving) and a handle that unmounts it.
pub fn session(
    tree: Tree,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<(fuser::Session<FuseFs>, fuser::SessionUnmounter)> {
    // The kernel mounts a regular file's tree over a regular file; nobody means that.
    if !std::fs::metadata(mountpoint)?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("mount point {} is not a directory", mountpoint.display()),
        ));
    }
    let writable = tree.is_writable();
    let mut mount_options = vec![
        MountOption::FSName(format!("imgfs:{}", std::process::id())),
        MountOption::Subtype("imgfs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    mount_options.push(if writable {
        MountOption::RW
    } else {
        MountOption::RO
    });
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    config.poll_before_read = (!opts.poll_before_read.is_zero()).then_some(opts.poll_before_read);
    config.io_uring = opts.io_uring;
    if opts.idle_rings {
        config.ring_observer = Some(Arc::new(governor::Governor::default()));
    }
    config.uring_fail_after = opts.uring_fail_after;
    let mut fs = FuseFs::new(tree, opts.stats.clone());
    fs.passthrough_wanted = opts.passthrough && can_passthrough();
    fs.volatile = opts.volatile;
    let mut session = fuser::Session::new(fs, mountpoint, &config)?;
    let unmounter = session.unmount_callable();
    if let Some(device) = session.device() {
        set_readahead(device, READAHEAD_KIB);
    }
    Ok((session, unmounter))
}

/// Readahead of a mount, in KiB: one READ request can carry 1 MiB (FUSE_MAX_PAGES), but the
/// kernel starts a FUSE mount's readahead at 128 KiB and the INIT reply cannot raise it. With
/// 1 MiB a cold sequential read of a 1 GiB file took 1.1 s instead of 1.9 s here, and a warm
/// one 0.21 s instead of 0.44 s (docs/benchmarks.md).
const READAHEAD_KIB: u32 = 1024;

/// Sets the readahead of the mount with device number `(major, minor)` (fuser's
/// `Session::device`, read from /proc/self/mountinfo) through its sysfs entry. Best effort:
/// only root may write there, and an unprivileged mount keeps the default.
fn set_readahead((major, minor): (u32, u32), kib: u32) {
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, kib.to_string()) {
        tracing::debug!(%knob, "cannot set readahead: {e}");
    }
}
