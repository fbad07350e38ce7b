//! A build stopped by a signal: SIGINT (to img alone or to its process group, as Ctrl-C sends
//! it) and SIGTERM stop the running step's container and leave nothing behind, on both
//! backends; after a SIGKILL the next img command removes what the build left and says so, as
//! it does for an `imgfs mount --writable` of the fuse backend's store. A signal before the
//! build has started (waiting for the state lock) ends img at once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::{BACKENDS, Rig, can_run, context};

/// A `sleep` no other test runs, so that finding its process finds this build's.
pub(crate) fn unique_sleep() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = 100_000 + (std::process::id() % 50_000) * 20 + NEXT.fetch_add(1, Ordering::Relaxed);
    n.to_string()
}

/// The pids of the processes whose command line is `sleep SECONDS`.
pub(crate) fn sleeping(seconds: &str) -> Vec<i32> {
    let want = format!("sleep\0{seconds}\0").into_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want) {
            out.push(pid);
        }
    }
    out
}

/// Starts `img build` of a RUN step that sleeps for `seconds`, and waits until it sleeps.
fn start_sleeping_build(rig: &Rig, ctx: &Path, backend: &str, seconds: &str, group: bool) -> Child {
    let log = std::fs::File::create(rig.dir.path().join(format!("build-{seconds}.log"))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_img"));
    cmd.arg("-s")
        .arg(&rig.state)
        .args(["build", "--backend", backend, "-t", "interrupted"])
        .arg(ctx)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if group {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    while sleeping(seconds).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the build ended ({status}) before its step ran:\n{}",
                build_log(rig, seconds)
            );
        }
        assert!(Instant::now() < end, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn build_log(rig: &Rig, seconds: &str) -> String {
    std::fs::read_to_string(rig.dir.path().join(format!("build-{seconds}.log"))).unwrap_or_default()
}

/// Waits (at most a minute) for `child` to exit and returns its exit code.
pub(crate) fn exit_code(child: &mut Child) -> Option<i32> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("img did not exit within a minute of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The containers runc knows in the state dir's runc root.
fn containers(rig: &Rig) -> String {
    let out = Command::new("runc")
        .arg("--root")
        .arg(rig.state.join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The mounts under the state dir.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(dir)))
        .map(str::to_owned)
        .collect()
}

/// What must hold once a build has been stopped and cleaned up after.
fn assert_nothing_left(rig: &Rig, seconds: &str, what: &str) {
    assert_eq!(
        sleeping(seconds),
        Vec::<i32>::new(),
        "{what}: the step still runs"
    );
    assert_eq!(containers(rig), "", "{what}: runc still has the container");
    assert_eq!(
        mounts_under(&rig.state),
        Vec::<String>::new(),
        "{what}: mounts left"
    );
}

#[test]
fn sigint_and_sigterm_stop_the_running_step_and_leave_nothing_behind() {
    if !can_run() {
        return;
    }
    // (signal, to the process group as a terminal's Ctrl-C sends it, expected exit status)
    let cases = [
        (Signal::SIGINT, true, 130),
        (Signal::SIGINT, false, 130),
        (Signal::SIGTERM, false, 143),
    ];
    let rig = Rig::create();
    for backend in BACKENDS {
        for (signal, group, status) in cases {
            let what = format!(
                "{backend}, {signal}{}",
                if group { " to the group" } else { "" }
            );
            let seconds = unique_sleep();
            let ctx = context(&format!("FROM busybox\nRUN sleep {seconds}\n"), &[]);
            let mut child = start_sleeping_build(&rig, ctx.path(), backend, &seconds, group);
            let pid = Pid::from_raw(child.id() as i32);
            if group {
                killpg(pid, signal).unwrap();
            } else {
                kill(pid, signal).unwrap();
            }
            let code = exit_code(&mut child);
            let log = build_log(&rig, &seconds);
            assert_eq!(code, Some(status), "{what}: exit status\n{log}");
            assert!(log.contains("interrupted by"), "{what}: {log}");
            assert_nothing_left(&rig, &seconds, &what);
            let ls = rig.img(&["ls"]);
            let stderr = String::from_utf8_lossy(&ls.stderr);
            assert!(
                !stderr.contains("removed"),
                "{what}: the build left something for the next img to remove: {stderr}"
            );
            let stdout = String::from_utf8_lossy(&ls.stdout);
            assert!(
                !stdout.contains("interrupted"),
                "{what}: an image was tagged:\n{stdout}"
            );
            let du = rig.img_ok(&["du"]);
            assert!(
                !du.contains("left by an interrupted build"),
                "{what}: a snapshot was left:\n{du}"
            );
        }
    }
}

#[test]
fn the_next_img_command_removes_what_a_killed_build_left() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    for backend in BACKENDS {
        let seconds = unique_sleep();
        let ctx = context(&format!("FROM busybox\nRUN sleep {seconds}\n"), &[]);
        let mut child = start_sleeping_build(&rig, ctx.path(), backend, &seconds, false);
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        // What the test is about: SIGKILL leaves the container running.
        assert!(
            !sleeping(&seconds).is_empty(),
            "{backend}: the step died with img"
        );

        let ls = rig.img(&["ls"]);
        assert!(ls.status.success(), "{backend}: img ls failed");
        let stderr = String::from_utf8_lossy(&ls.stderr);
        let line = format!(
            "img: removed 1 container and 1 snapshot left by img process {pid}, which is gone\n"
        );
        assert_eq!(stderr, line, "{backend}");
        assert_nothing_left(&rig, &seconds, backend);
        let du = rig.img_ok(&["du"]);
        assert!(
            !du.contains("left by an interrupted build"),
            "{backend}: a snapshot was left:\n{du}"
        );
        // Once removed, it is not reported again.
        let again = rig.img(&["ls"]);
        assert_eq!(String::from_utf8_lossy(&again.stderr), "", "{backend}");

        let ctx = context("FROM busybox\nRUN echo rebuilt > /done\n", &[]);
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            "-t",
            "rebuilt",
            ctx.path().to_str().unwrap(),
        ]);
    }
}

#[test]
fn a_signal_while_waiting_for_the_state_lock_ends_img_at_once() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let lock = std::fs::File::open(rig.state.join("lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let ctx = context("FROM busybox\nRUN true\n", &[]);
    let log_path = rig.dir.path().join("waiting.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_img"))
        .arg("-s")
        .arg(&rig.state)
        .args(["build", "-t", "never"])
        .arg(ctx.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("waiting for the lock")
    {
        assert!(Instant::now() < end, "img never waited for the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // Nothing has started that needs cleaning up, so nothing waits for the lock's holder.
    assert_eq!(exit_code(&mut child), Some(143));
}

#[test]
fn the_next_img_command_removes_the_snapshot_of_a_killed_imgfs_mount() {
    if !can_run() {
        return;
    }
    if crate::test_user().is_some() {
        // An ordinary user's imgfs mount needs user_allow_other in /etc/fuse.conf, which
        // tools/setup does not set; the root pass runs the same code.
        return;
    }
    let rig = Rig::create();
    let ctx = context("FROM busybox\nRUN echo x > /x\n", &[]);
    rig.img_ok(&[
        "build",
        "--backend",
        "fuse",
        "-t",
        "built",
        ctx.path().to_str().unwrap(),
    ]);
    let store = rig.state.join("imgfs");
    let listed = crate::full_disk::imgfs()
        .args(["list", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let snapshot = listed
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("committed"))
        .filter_map(|l| l.split_whitespace().next())
        .next_back()
        .unwrap_or_else(|| panic!("no committed snapshot in the fuse store:\n{listed}"))
        .to_owned();
    let mnt = rig.dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = crate::full_disk::imgfs()
        .args(["mount", "--store"])
        .arg(&store)
        .args(["--snapshot", &snapshot, "--writable"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while mounts_under(&mnt).is_empty() {
        assert!(Instant::now() < end, "the imgfs mount did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(mnt.join("written"), "x").unwrap();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);

    let ls = rig.img(&["ls"]);
    assert!(ls.status.success(), "img ls failed");
    let key = format!("{snapshot}.mount-{pid}");
    assert_eq!(
        String::from_utf8_lossy(&ls.stderr),
        format!("img: removed snapshot {key} left by imgfs mount process {pid}, which is gone\n")
    );
    let du = rig.img_ok(&["du"]);
    assert!(!du.contains(&key), "{du}");
    let again = rig.img(&["ls"]);
    assert_eq!(String::from_utf8_lossy(&again.stderr), "");
}
