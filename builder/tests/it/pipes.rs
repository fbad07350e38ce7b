//! img whose output is a pipe nobody reads any more (`img -d build 2>&1 | head -3`,
//! `img ls | true`): img stops, unmounts and exits as SIGPIPE would have it (141) or with its
//! own error, and leaves the state usable. A hang here is the bug (issue 19), so each wait has a
//! deadline, and a run past it is killed and its mounts taken away before the test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Rig, can_run, context, img_command};

/// Far beyond what these builds take, even on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(180);

/// A Dockerfile with steps after the first lines of output, a RUN among them, built on a FUSE
/// mount whose serving threads log every request under `-d`.
const DOCKERFILE: &str = "FROM busybox\n\
     RUN echo one > /one && ls -l / && cat /one\n\
     WORKDIR /data\n\
     RUN for i in 1 2 3 4 5 6 7 8; do echo line $i; done > /data/lines && cat /data/lines\n\
     COPY a.txt /a.txt\n\
     RUN cat /a.txt /data/lines\n";

/// Waits for `child` until `DEADLINE`; past it, kills it, takes its mounts away and fails.
fn wait(child: &mut Child, state: &Path, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let left = mounts_under(state);
            // img is dead, so the kernel ended the connections: detaching needs no server.
            for m in &left {
                let _ = nix::mount::umount2(Path::new(m), nix::mount::MntFlags::MNT_DETACH);
            }
            panic!("{what} still runs after {DEADLINE:?}; its mounts were {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mount points under `state` that this mount namespace lists.
fn mounts_under(state: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", state.display());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// 141 (the status of a process killed by SIGPIPE, which img exits with) or img's own error
/// status; not success, and not death by a signal (an abort, a panic while panicking).
fn assert_clean_failure(status: ExitStatus, stderr: &str) {
    match status.code() {
        Some(141) => {}
        Some(c) if c != 0 && c != 101 => {}
        _ => panic!("img ended with {status}, not 141 or its own error:\n{stderr}"),
    }
}

/// The state is free and whole: another command takes the lock, reads and answers at once.
fn assert_state_usable(rig: &Rig) {
    let mut ls = img_command(rig.dir.path())
        .arg("-s")
        .arg(&rig.state)
        .arg("ls")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    ls.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = wait(&mut ls, &rig.state, "img ls");
    assert!(status.success(), "img ls: {status}");
    assert!(out.contains("busybox"), "{out}");
    assert_eq!(mounts_under(&rig.state), Vec::<String>::new());
    let du = rig.img_ok(&["du"]);
    assert!(!du.contains("interrupted"), "{du}");
}

#[test]
fn a_debug_build_piped_to_head_stops_unmounts_and_leaves_the_state_usable() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(DOCKERFILE, &[("a.txt", "a\n")]);
    // `img -d build --backend fuse ... 2>&1 | head -3`.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = img_command(rig.dir.path())
        .arg("-s")
        .arg(&rig.state)
        .args([
            "-d",
            "build",
            "--no-cache",
            "--backend",
            "fuse",
            "-t",
            "piped",
        ])
        .arg(ctx.path())
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut head = BufReader::new(reader);
    for _ in 0..3 {
        let mut line = String::new();
        head.read_line(&mut line).unwrap();
    }
    drop(head);
    let status = wait(&mut child, &rig.state, "img -d build | head -3");
    assert_clean_failure(status, "(its output went to the closed pipe)");
    assert_state_usable(&rig);
    // Nothing half-built was tagged.
    assert!(!rig.img_ok(&["ls"]).contains("piped"));
}

#[test]
fn a_build_whose_stdout_is_closed_stops_with_sigpipes_status() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(DOCKERFILE, &[("a.txt", "a\n")]);
    // `img -d build -o type=tar,dest=- ... | head -c 512`: the tree (busybox, a megabyte) is
    // far more than a pipe holds.
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = img_command(rig.dir.path())
        .arg("-s")
        .arg(&rig.state)
        .args(["-d", "build", "--backend", "fuse", "-o", "type=tar,dest=-"])
        .arg(ctx.path())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Standard error (debug logs, far more than a pipe holds) is read to its end meanwhile, so
    // that img never waits for us.
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut first = [0u8; 512];
    reader.read_exact(&mut first).unwrap();
    drop(reader);
    let status = wait(&mut child, &rig.state, "img build -o - | head -c 512");
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(141), "img ended with {status}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_state_usable(&rig);
}

#[test]
fn commands_whose_stdout_is_closed_exit_with_sigpipes_status() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    for args in [&["ls"][..], &["du"], &["inspect", "busybox"], &["version"]] {
        // `img ls | true`, once `true` has gone.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = img_command(rig.dir.path())
            .arg("-s")
            .arg(&rig.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = wait(&mut child, &rig.state, &format!("img {args:?}"));
        assert_eq!(status.code(), Some(141), "img {args:?}: {status}\n{err}");
        assert!(!err.contains("panicked"), "img {args:?}: {err}");
    }
    assert_state_usable(&rig);
}

/// A RUN step that keeps writing after its reader has gone is stopped at once (its container
/// killed), not left to run to its end with its output thrown away.
#[test]
fn a_closed_output_stops_the_running_step() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nRUN echo started; while true; do echo tick-tock; sleep 0.2; done\n",
        &[],
    );
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = img_command(rig.dir.path())
        .arg("-s")
        .arg(&rig.state)
        .args(["build", "--no-cache", "--backend", "fuse", "-t", "endless"])
        .arg(ctx.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut head = BufReader::new(reader);
    loop {
        let mut line = String::new();
        assert_ne!(
            head.read_line(&mut line).unwrap(),
            0,
            "the build ended early"
        );
        if line.contains("started") {
            break;
        }
    }
    drop(head);
    let status = wait(
        &mut child,
        &rig.state,
        "an endless RUN whose output was closed",
    );
    assert_eq!(status.code(), Some(141), "{status}");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains("echo tick-tock")),
        "the step's shell is still running:\n{ps}"
    );
    assert_state_usable(&rig);
    assert!(!rig.img_ok(&["ls"]).contains("endless"));
}
