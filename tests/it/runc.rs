//! RUN steps through the runc executor on a FUSE-mounted imgfs snapshot: output, exit codes,
//! users, and no trace of runc's mount points in the layer.

use std::io::Read;

use builder::runc::{Executor, RunRequest, RuncExecutor};
use imgfs::layer::ImportLimits;
use imgfs::{FuseSnapshotter, Snapshotter};
use tests::fixtures;

struct Rig {
    dir: tempfile::TempDir,
    backend: FuseSnapshotter,
    exec: RuncExecutor,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let backend = FuseSnapshotter::open_or_create(&dir.path().join("imgfs")).unwrap();
        let tar = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
        backend
            .apply("base", None, &mut &tar[..], &ImportLimits::default())
            .unwrap();
        let exec = RuncExecutor::new(&dir.path().join("runc")).unwrap();
        Rig { dir, backend, exec }
    }

    /// Runs `script` with sh on a new child of `base` as `uid`; returns the code, the output and
    /// the layer's entry names.
    fn run(&self, script: &str, uid: u32) -> (i32, String, Vec<String>) {
        let key = format!("step-{}", rand_suffix());
        self.backend.prepare(&key, Some("base")).unwrap();
        let mnt = self.dir.path().join(&key);
        std::fs::create_dir(&mnt).unwrap();
        let mount = self.backend.mount(&key, &mnt).unwrap();
        let req = RunRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![tests::images::DEFAULT_PATH.into()],
            cwd: "/".into(),
            uid,
            gid: uid,
            additional_gids: vec![],
            files: vec![],
            hostname: "img".into(),
        };
        let mut log = Vec::new();
        let code = self.exec.run(&mnt, &req, &mut log).unwrap();
        mount.unmount().unwrap();
        let mut layer = Vec::new();
        self.backend.diff(&key, &mut layer).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&layer[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(e.path().unwrap().display().to_string());
            e.read_to_end(&mut Vec::new()).unwrap();
        }
        (code, String::from_utf8_lossy(&log).into_owned(), names)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn run_streams_output_and_reports_the_exit_code() {
    if !tests::can_run(true, &["runc"]) {
        return;
    }
    let rig = Rig::new();
    let (code, out, _) = rig.run("echo to-stdout; echo to-stderr >&2; exit 3", 0);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("to-stdout") && out.contains("to-stderr"),
        "{out}"
    );
}

#[test]
fn the_layer_holds_the_steps_changes_and_no_mount_points() {
    if !tests::can_run(true, &["runc"]) {
        return;
    }
    let rig = Rig::new();
    let (code, out, names) = rig.run(
        "cat /etc/hosts >/dev/null && test -d /proc/self && echo made > /root/file && id -u",
        0,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "0");
    // busybox's root file system has no /proc, /dev, /sys, /etc/hosts or /etc/resolv.conf:
    // runc creates them as mount points, and they must not end up in the layer.
    assert_eq!(names, ["root/", "root/file"], "{names:?}");
}

#[test]
fn run_as_another_user() {
    if !tests::can_run(true, &["runc"]) {
        return;
    }
    let rig = Rig::new();
    let (code, out, _) = rig.run("id -u; id -g; touch /root/x", 1000);
    assert_ne!(code, 0, "user 1000 cannot write to /root (0700)");
    // stdout and stderr are separate pipes, so their order in the log is not fixed, and under
    // load runc's own warnings (cgroup removal retries) join the log: keep the numbers only.
    let stdout: Vec<&str> = out
        .lines()
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(stdout, ["1000", "1000"], "{out}");
    assert!(out.contains("Permission denied"), "{out}");
}
