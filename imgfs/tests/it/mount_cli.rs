//! The `imgfs mount` process: it reports success only once the mount is usable, commits on
//! unmount by `imgfs umount` or by a signal, keeps a second writer out of the store, and counts
//! the requests it served when asked (`--stats`).
//! Needs root and /dev/fuse: without them it passes with a note, except under CI=true.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::ok;

pub(crate) fn fuse_available() -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        "not root"
    } else if !Path::new("/dev/fuse").exists() {
        "no /dev/fuse"
    } else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must run FUSE tests: {why}"
    );
    eprintln!("skipping: {why}");
    false
}

pub(crate) fn imgfs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .args(args)
        .output()
        .unwrap()
}

/// Whether `p` is a mount point, from mountinfo; `p` itself is not looked at (a mount whose
/// server is gone answers ENOTCONN).
pub(crate) fn is_mounted(p: &Path) -> bool {
    let want = p.parent().unwrap().canonicalize().unwrap();
    let want = want.join(p.file_name().unwrap());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

/// Starts `imgfs mount ARGS.. MNT` in the foreground (stderr captured, `envs` set) and returns
/// once the mount is up.
pub(crate) fn foreground_mount(
    args: &[&str],
    mnt: &Path,
    envs: &[(&str, &str)],
) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .arg("mount")
        .args(args)
        .arg(mnt)
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !is_mounted(mnt) {
        assert!(start.elapsed().as_secs() < 20, "mount did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Ends a foreground mount with SIGTERM (which commits when `--commit` was given) and returns
/// its output, checking that it exited successfully.
pub(crate) fn terminate(child: std::process::Child) -> std::process::Output {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Unmounts when dropped, so that a failed assertion does not leave a foreground mount behind
/// (its process would hold the test's output open, and the test run would never end).
pub(crate) struct Unmount<'a>(pub(crate) &'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-uz").arg(self.0).status();
    }
}

/// A temporary directory holding a store `s` whose snapshot `base` is an empty tree, and an
/// empty mount point `m`; the directory goes away when the first value is dropped.
pub(crate) fn store_with_empty_base() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)
{
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = dir.path().join("s");
    let s = store.to_str().unwrap();
    let empty = dir.path().join("empty.tar");
    std::fs::write(&empty, [0u8; 1024]).unwrap();
    ok(imgfs(&["init", s]));
    ok(imgfs(&[
        "import",
        "--store",
        s,
        "--name",
        "base",
        empty.to_str().unwrap(),
    ]));
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    (dir, store, mnt)
}

#[test]
fn a_mount_point_that_is_not_a_directory_is_refused() {
    if !fuse_available() {
        return;
    }
    let (dir, store, _mnt) = store_with_empty_base();
    let file = dir.path().join("hostname");
    std::fs::write(&file, "kept\n").unwrap();
    let out = imgfs(&[
        "mount",
        "--store",
        store.to_str().unwrap(),
        "--snapshot",
        "base",
        "-d",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory"), "{err}");
    assert!(!is_mounted(&file));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
}

#[test]
fn daemon_mount_umount_and_signals_commit_the_writable_child() {
    if !fuse_available() {
        return;
    }
    let (dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let m = mnt.to_str().unwrap();

    // --daemon returns once the mount is usable.
    ok(imgfs(&[
        "mount",
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "--commit",
        "one",
        "-d",
        m,
    ]));
    assert!(is_mounted(&mnt));
    std::fs::write(mnt.join("f"), b"1").unwrap();
    // The mount holds the store for writing: a second writer is told who.
    let second = imgfs(&[
        "mount",
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("locked by pid"),
        "{second:?}"
    );
    // umount returns after the commit, so the store is free at once.
    ok(imgfs(&["umount", m]));
    assert!(!is_mounted(&mnt));
    assert!(ok(imgfs(&["diff", "--store", s, "base", "one"])).contains("A /f"));

    // SIGTERM unmounts and commits too.
    let args = [
        "--store",
        s,
        "--snapshot",
        "one",
        "--writable",
        "--commit",
        "two",
        "--stats",
    ];
    let child = foreground_mount(&args, &mnt, &[]);
    std::fs::write(mnt.join("g"), b"2").unwrap();
    let out = terminate(child);
    assert!(!is_mounted(&mnt));
    // --stats counted the one file created.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.split_whitespace().take(2).eq(["create", "1"])),
        "{err}"
    );
    assert!(ok(imgfs(&["diff", "--store", s, "one", "two"])).contains("A /g"));
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(fsck.contains("0 problems"), "{fsck}");
}

/// Whether the kernel offers FUSE over io_uring (Linux 6.14+, off unless the fuse module's
/// `enable_uring` is set); without it `--io-uring` is a no-op. tools/setup turns it on.
fn uring_enabled() -> bool {
    let on = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|s| s.trim() == "Y");
    if !on {
        // A kernel built without FUSE over io_uring has no such parameter: nothing to test.
        assert!(
            std::env::var("CI").as_deref() != Ok("true")
                || !Path::new("/sys/module/fuse/parameters/enable_uring").exists(),
            "CI must run the io_uring test: tools/setup turns enable_uring on"
        );
        eprintln!("skipping: /sys/module/fuse/parameters/enable_uring is not Y");
    }
    on
}

/// The /proc directories of the threads of `pid` named `prefix*`.
fn threads_named(pid: u32, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| task.unwrap().path())
        .filter(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .collect()
}

/// How many times the threads of `pid` named `prefix*` were scheduled (schedstat's third
/// field): a ring thread runs once per batch of requests it serves.
fn runs_of_threads(pid: u32, prefix: &str) -> u64 {
    threads_named(pid, prefix)
        .iter()
        .map(|task| {
            std::fs::read_to_string(task.join("schedstat"))
                .unwrap_or_default()
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The rings are imgfs's default wherever the kernel offers them, and they carry the traffic.
/// This is also the guard against a fuser rebase that switches them off without a word:
/// upstream fuser refuses FUSE_OVER_IO_URING at INIT (imgfs/vendor/fuser/PATCHED.md), and a
/// mount that was refused still works, through /dev/fuse.
#[test]
fn a_default_mount_serves_requests_through_the_rings_and_commits() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let args = [
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "--commit",
        "one",
    ];
    let child = foreground_mount(&args, &mnt, &[]);
    let _unmount = Unmount(&mnt);
    // One ring thread per possible CPU, started once the kernel has answered INIT, which
    // `foreground_mount` waited for.
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
    let start = std::time::Instant::now();
    while threads_named(child.id(), "fuser-ring-").len() < cpus
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        threads_named(child.id(), "fuser-ring-").len(),
        cpus,
        "a default mount with enable_uring=Y has no ring per CPU: FUSE over io_uring was not \
         negotiated (a fuser update that refuses it? see PATCHED.md's rebase checklist)"
    );
    let before = runs_of_threads(child.id(), "fuser-ring-");
    // Metadata, small and multi-request (1 MiB payload) data, through the rings.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/big"), &big).unwrap();
    for i in 0..200 {
        std::fs::write(mnt.join(format!("d/f{i}")), i.to_string()).unwrap();
    }
    for i in 0..100 {
        std::fs::remove_file(mnt.join(format!("d/f{i}"))).unwrap();
    }
    std::fs::rename(mnt.join("d/f150"), mnt.join("renamed")).unwrap();
    assert_eq!(std::fs::read(mnt.join("d/big")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(mnt.join("renamed")).unwrap(), "150");
    assert_eq!(std::fs::read_dir(mnt.join("d")).unwrap().count(), 100);
    let served = runs_of_threads(child.id(), "fuser-ring-") - before;
    assert!(
        served >= 100,
        "ring threads ran {served} times for 500+ requests"
    );

    terminate(child);
    assert!(!is_mounted(&mnt));
    let diff = ok(imgfs(&["diff", "--store", s, "base", "one"]));
    assert!(
        diff.contains("A /renamed") && diff.contains("A /d/big"),
        "{diff}"
    );
}

#[test]
fn what_fsync_made_durable_survives_a_killed_mount() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let args = [
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "--key",
        "k",
    ];
    let _unmount = Unmount(&mnt);
    let mut child = foreground_mount(&args, &mnt, &[]);
    // fsync of a file: its data and name; fsync of a directory: the names in it.
    let kept = mnt.join("kept");
    let mut f = std::fs::File::create(&kept).unwrap();
    std::io::Write::write_all(&mut f, b"kept data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/named"), b"x").unwrap();
    std::fs::File::open(mnt.join("d"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();

    // The killed mount's buffered log is gone; what the fsyncs wrote is not.
    let args = ["--store", s, "--snapshot", "k", "--writable"];
    let child = foreground_mount(&args, &mnt, &[]);
    assert_eq!(std::fs::read(&kept).unwrap(), b"kept data");
    assert!(
        mnt.join("d/named").exists(),
        "a name fsynced with its directory"
    );
    terminate(child);
}

/// Mounts `base` of `store` writable with `extra` flags and `--stats`, writes a file and
/// fsyncs it and the root, commits as `name` and returns what `--stats` printed.
fn fsync_under_stats(store: &str, mnt: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--store",
        store,
        "--snapshot",
        "base",
        "--writable",
        "--commit",
        name,
        "--stats",
    ];
    args.extend(extra);
    let child = foreground_mount(&args, mnt, &[]);
    let mut f = std::fs::File::create(mnt.join(name)).unwrap();
    std::io::Write::write_all(&mut f, name.as_bytes()).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    drop(f);
    std::fs::File::open(mnt).unwrap().sync_all().unwrap();
    String::from_utf8(terminate(child).stderr).unwrap()
}

#[test]
fn a_volatile_mount_syncs_nothing_until_its_commit() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let _unmount = Unmount(&mnt);
    let served = |err: &str, op: &str| {
        err.lines()
            .find(|l| l.split_whitespace().next() == Some(op))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let plain = fsync_under_stats(s, &mnt, "plain", &[]);
    assert!(served(&plain, "fsync") >= 2, "{plain}");
    assert!(!plain.contains("metadata log syncs: 0\n"), "{plain}");
    // The first fsync and fsyncdir are answered ENOSYS, after which the kernel sends no more
    // and tells callers their fsyncs succeeded (fsync_under_stats checks they do).
    let volatile = fsync_under_stats(s, &mnt, "volatile", &["--volatile"]);
    assert!(served(&volatile, "fsync") <= 1, "{volatile}");
    assert!(served(&volatile, "fsyncdir") <= 1, "{volatile}");
    assert!(
        volatile.contains("metadata log syncs: 0\n"),
        "the fsyncs were answered without syncing: {volatile}"
    );
    // The commit made it durable: a fresh process reads it back.
    let child = foreground_mount(&["--store", s, "--snapshot", "volatile"], &mnt, &[]);
    assert_eq!(std::fs::read(mnt.join("volatile")).unwrap(), b"volatile");
    terminate(child);
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(fsck.contains("0 problems"), "{fsck}");
}

#[test]
fn a_killed_volatile_mount_leaves_a_snapshot_that_removes_cleanly() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let _unmount = Unmount(&mnt);
    let args = [
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "--key",
        "k",
        "--volatile",
    ];
    let mut child = foreground_mount(&args, &mnt, &[]);
    for i in 0..50 {
        let mut f = std::fs::File::create(mnt.join(format!("f{i}"))).unwrap();
        std::io::Write::write_all(&mut f, &[i as u8; 70_000]).unwrap();
        f.sync_all().unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
    // Whatever of it survived, the store is consistent and the snapshot goes away whole.
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(fsck.contains("0 problems"), "{fsck}");
    ok(imgfs(&["rm", "--store", s, "k"]));
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(fsck.contains("0 problems"), "{fsck}");
}

/// The scheduling policies of the threads of `pid` named `prefix*` (/proc's stat field 41).
fn policies_of_threads(pid: u32, prefix: &str) -> Vec<i32> {
    threads_named(pid, prefix)
        .iter()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            // Fields after the command's closing parenthesis start at field 3.
            let (_, after) = stat.rsplit_once(')')?;
            Some(after.split_whitespace().nth(41 - 3)?.parse().unwrap())
        })
        .collect()
}

/// Makes and removes files in `dir` until `stop`.
fn churn(dir: &Path, stop: &std::sync::atomic::AtomicBool) {
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let f = dir.join(format!("f{}", i % 100));
        std::fs::write(&f, b"data").unwrap();
        std::fs::remove_file(&f).unwrap();
        i += 1;
    }
}

#[test]
fn ring_threads_idle_only_while_busy_and_not_kept_from_a_cpu() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let child = foreground_mount(
        &["--store", s, "--snapshot", "base", "--writable"],
        &mnt,
        &[],
    );
    let _unmount = Unmount(&mnt);
    let pid = child.id();
    // The ring threads start once the kernel has answered INIT.
    let start = Instant::now();
    while policies_of_threads(pid, "fuser-ring-").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "no ring threads");
        std::fs::metadata(&mnt).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let rings = |want: i32| {
        policies_of_threads(pid, "fuser-ring-")
            .iter()
            .all(|&policy| policy == want)
    };
    assert!(
        rings(libc::SCHED_OTHER),
        "an idle mount's rings run as usual"
    );

    // Busy, with CPUs to spare: the rings go SCHED_IDLE.
    let stop = AtomicBool::new(false);
    let hogs = AtomicBool::new(false);
    let cpus = std::thread::available_parallelism().unwrap().get();
    // Stops the threads below also when an assertion fails (the scope waits for them).
    struct Stop<'a>(&'a [&'a AtomicBool]);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0
                .iter()
                .for_each(|flag| flag.store(true, Ordering::Relaxed));
        }
    }
    std::thread::scope(|scope| {
        let flags = [&stop, &hogs];
        let _stop = Stop(&flags);
        scope.spawn(|| churn(&mnt, &stop));
        let start = Instant::now();
        while !rings(libc::SCHED_IDLE) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "busy rings never went SCHED_IDLE"
            );
            std::thread::sleep(Duration::from_millis(1));
        }

        // Busy, and every CPU also has a busy thread: the rings must not stay SCHED_IDLE,
        // where they would get almost no CPU.
        for _ in 0..cpus {
            scope.spawn(|| {
                while !hogs.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        let (mut idle, mut samples) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            idle += usize::from(rings(libc::SCHED_IDLE));
            samples += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        hogs.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        assert!(
            idle * 4 < samples,
            "rings were SCHED_IDLE in {idle} of {samples} looks while every CPU was busy"
        );
    });

    // Quiet again: back to SCHED_OTHER, so the next request does not wait behind other work.
    let start = Instant::now();
    while !rings(libc::SCHED_OTHER) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "quiet rings stayed SCHED_IDLE"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(child);
}

#[test]
fn a_failing_ring_ends_the_connection_instead_of_leaving_callers_waiting() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    let fusectl = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(fusectl).map_or(true, |mut d| d.next().is_none()) {
        // fusectl is empty when it is not mounted (there is always this mount's connection).
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none", fusectl.to_str().unwrap()])
            .status();
    }
    ring_failure_ends_the_connection(false);
}

/// Without fusectl (a host without systemd does not mount it), the failing ring ends the
/// connection by a forced unmount. The mount runs in a mount namespace of its own where
/// fusectl is unmounted, and is reached through /proc/PID/root.
#[test]
fn a_failing_ring_ends_the_connection_where_fusectl_is_not_mounted() {
    if !fuse_available() || !uring_enabled() {
        return;
    }
    ring_failure_ends_the_connection(true);
}

/// Mounts with the ring-failure hook (in a mount namespace without fusectl when
/// `hide_fusectl`), writes until a write fails, and checks that the failure came within a
/// minute, as ENOTCONN or ECONNABORTED, and that the mount is gone and nothing committed.
fn ring_failure_ends_the_connection(hide_fusectl: bool) {
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let args = [
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "--commit",
        "one",
    ];
    let fail_after = [("IMGFS_TEST_URING_FAIL_AFTER", "200")];
    let (child, seen_at) = if hide_fusectl {
        // unshare and sh exec: the child's pid is the mount's server.
        let script = format!(
            "umount /sys/fs/fuse/connections 2>/dev/null; ls /sys/fs/fuse/connections | grep -q . && exit 3; exec {} mount \"$@\"",
            env!("CARGO_BIN_EXE_imgfs")
        );
        let child = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .args(args)
            .arg(&mnt)
            .envs(fail_after)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let root = Path::new("/proc").join(child.id().to_string()).join("root");
        let seen_at = root.join(mnt.strip_prefix("/").unwrap());
        let info = Path::new("/proc")
            .join(child.id().to_string())
            .join("mountinfo");
        let start = std::time::Instant::now();
        let want = format!(" {} ", mnt.canonicalize().unwrap().display());
        while !std::fs::read_to_string(&info).is_ok_and(|i| i.contains(&want)) {
            assert!(start.elapsed().as_secs() < 20, "mount did not come up");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (child, seen_at)
    } else {
        (foreground_mount(&args, &mnt, &fail_after), mnt.clone())
    };
    // Callers get an error once a ring fails, at the latest within the watchdog's time.
    let m = seen_at.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let failed = (0..10_000).find_map(|i| std::fs::write(m.join(format!("f{i}")), "x").err());
        let _ = tx.send(failed);
    });
    let Ok(failed) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
        // Killing the server ends the connection, so the waiting writer and this process can
        // end.
        let mut child = child;
        let _ = child.kill();
        panic!("callers still wait after the ring failed");
    };
    let failed = failed.expect("a ring failed, yet every write succeeded");
    // ECONNABORTED for requests the abort found, ENOTCONN for later ones. A forced unmount
    // that finds the mount idle takes it away, and the server then exits: a write after that
    // finds /proc/PID/root gone (ENOENT).
    let mut expected = vec![Some(libc::ECONNABORTED), Some(libc::ENOTCONN)];
    if hide_fusectl {
        expected.push(Some(libc::ENOENT));
    }
    assert!(expected.contains(&failed.raw_os_error()), "{failed}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("serving the mount failed"), "{stderr}");
    if hide_fusectl {
        assert!(stderr.contains("by a forced unmount"), "{stderr}");
    } else {
        assert!(!is_mounted(&mnt), "the dead mount is taken away");
    }
    let info = imgfs(&["info", "--store", s, "one"]);
    assert!(!info.status.success(), "nothing is committed");
}

#[test]
fn imgfs_umount_ends_a_mount_whose_process_was_killed() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let mut child = foreground_mount(
        &["--store", store.to_str().unwrap(), "--snapshot", "base"],
        &mnt,
        &[],
    );
    let _unmount = Unmount(&mnt);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(is_mounted(&mnt), "the kernel keeps a dead server's mount");
    let out = imgfs(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "imgfs umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn ending_a_mount_frees_the_callers_of_a_server_that_stopped_answering() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    // Through /dev/fuse: a ring hands a request to the server as soon as it comes, and an
    // abort leaves one handed to a stopped server waiting until that server commits it or
    // closes its ring (seen on Linux 6.18); a server that is gone closed its rings.
    let mut child = foreground_mount(
        &[
            "--store",
            store.to_str().unwrap(),
            "--snapshot",
            "base",
            "--no-io-uring",
        ],
        &mnt,
        &[],
    );
    let _unmount = Unmount(&mnt);
    // One request answered first: the server is ready before its INIT reply went out, and a
    // caller of a connection not yet initialized waits elsewhere (`fuse_get_req`).
    assert!(std::fs::metadata(mnt.join("answered")).is_err());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The signal stops a thread at its next entry into the kernel: a worker polling /dev/fuse
    // could still answer the lookup below. Wait until every thread is stopped.
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|task| {
                let stat =
                    std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
                stat.rsplit_once(") ")
                    .and_then(|(_, after)| after.chars().next())
                    .is_some_and(|state| state == 'T' || state == 't')
            })
    };
    let start = std::time::Instant::now();
    while !stopped() {
        assert!(start.elapsed().as_secs() < 20, "the server never stopped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // A lookup the kernel cannot answer from its caches waits for the stopped server.
    let missing = mnt.join("missing");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid()).unwrap();
        std::fs::metadata(missing).map(|_| ())
    });
    // Until it waits on the server: ended earlier, it would find the bare directory.
    let wchan = format!("/proc/self/task/{}/wchan", tid_rx.recv().unwrap());
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&wchan)
        .unwrap_or_default()
        .contains("request_wait_answer")
    {
        assert!(
            start.elapsed().as_secs() < 60,
            "the lookup never reached the server: {wchan}: {:?}",
            std::fs::read_to_string(&wchan)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ended = imgfs::fuse::fusectl::end_mount(&mnt).unwrap();
    assert!(ended.is_some_and(|m| m.is_fuse()));
    let start = std::time::Instant::now();
    while !caller.is_finished() {
        assert!(
            start.elapsed().as_secs() < 60,
            "the caller still waits on the aborted connection"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = caller.join().unwrap().unwrap_err();
    // ECONNABORTED for the request the abort ended, ENOTCONN for one asked after it.
    assert!(
        [Some(libc::ECONNABORTED), Some(libc::ENOTCONN)].contains(&err.raw_os_error()),
        "{err}"
    );
    assert!(!is_mounted(&mnt));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    child.wait().unwrap();
}

#[test]
fn imgfs_umount_returns_while_the_mount_process_is_an_unreaped_child() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    // This test's child, which it reaps only after `imgfs umount` has returned: until then the
    // process stays a zombie once it has exited.
    let child = foreground_mount(
        &[
            "--store",
            s,
            "--snapshot",
            "base",
            "--writable",
            "--commit",
            "after",
        ],
        &mnt,
        &[],
    );
    let _unmount = Unmount(&mnt);
    std::fs::write(mnt.join("f"), "kept\n").unwrap();
    let mut umount = Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .arg("umount")
        .arg(&mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = umount.try_wait().unwrap() {
            break status;
        }
        if start.elapsed().as_secs() > 60 {
            let _ = umount.kill();
            panic!("imgfs umount has not returned after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "imgfs umount failed");
    // It returned after the commit, as it does for a process it does not share with anyone.
    let info = imgfs(&["info", "--store", s, "after"]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ioctl on a file in the mount fails with ENOTTY, as on ext4 (Python asks TCGETS of every
/// file it opens), and leaves no line in the mount's log: fuser's default warned on each one,
/// about a thousand lines in a build that installs Python packages.
#[test]
fn ioctls_fail_with_enotty_and_log_nothing() {
    if !fuse_available() {
        return;
    }
    let (_dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    // img logs fuser's warnings (imgfs's own default hides them), so show them here too.
    let child = foreground_mount(
        &["--store", s, "--snapshot", "base", "--writable"],
        &mnt,
        &[("IMGFS_LOG", "warn")],
    );
    let _unmount = Unmount(&mnt);
    std::fs::write(mnt.join("f"), "x").unwrap();
    let file = std::fs::File::open(mnt.join("f")).unwrap();
    for _ in 0..3 {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS writes at most one termios into the buffer it is given.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::TCGETS,
                termios.as_mut_ptr(),
            )
        };
        assert_eq!(rc, -1);
        assert_eq!(nix::errno::Errno::last(), nix::errno::Errno::ENOTTY);
    }
    drop(file);
    let out = terminate(child);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("ioctl"), "{log}");
}
