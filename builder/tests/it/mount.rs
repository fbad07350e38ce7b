//! `img mount` and `img umount` on both backends: the image's tree or one layer's, read-only
//! or writable (changes dropped at umount), builds going on beside a read-only mount, and the
//! errors for an unknown image, a layer out of range and a directory that is not mounted.
//!
//! As an ordinary user (`IMG_TEST_USER`) the mount lives in img's namespaces: the checks run
//! through the `nsenter` command that `img mount` prints.

use std::path::Path;
use std::process::{Command, Output};

use crate::{BACKENDS, Rig, can_run, context, test_user};

/// Runs `script` with sh where the mount is visible: here for root, else as the test user
/// inside the namespaces that `img mount` named on its standard error.
fn look(mount_stderr: &str, script: &str) -> Output {
    let Some(user) = test_user() else {
        return Command::new("sh").arg("-c").arg(script).output().unwrap();
    };
    let enter = mount_stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("nsenter "))
        .unwrap_or_else(|| panic!("img mount named no namespace to enter:\n{mount_stderr}"));
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .args(enter.split_whitespace())
        .args(["sh", "-c", script])
        .output()
        .unwrap()
}

fn look_ok(mount_stderr: &str, script: &str) -> String {
    let out = look(mount_stderr, script);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `img mount` that must succeed; returns its standard error (the nsenter hint).
fn mount(rig: &Rig, args: &[&str]) -> String {
    let mut all = vec!["mount"];
    all.extend_from_slice(args);
    let out = rig.img(&all);
    assert!(
        out.status.success(),
        "img {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mount_point(rig: &Rig, name: &str) -> std::path::PathBuf {
    let dir = rig.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    if let Some(user) = test_user() {
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    }
    dir
}

fn no_records(state: &Path) {
    let left: Vec<_> = std::fs::read_dir(state.join("mounts"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "mount records left: {left:?}");
}

#[test]
fn an_image_mounts_read_only_whole_or_as_of_a_layer_and_unmounts() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nRUN echo one > /one\nRUN echo two > /two && rm /one\n",
        &[],
    );
    for backend in BACKENDS {
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            "-t",
            "layers",
            ctx.path().to_str().unwrap(),
        ]);
        let dir = mount_point(&rig, &format!("ro-{backend}"));
        let d = dir.to_str().unwrap();

        let hint = mount(&rig, &["--backend", backend, "layers", d]);
        assert_eq!(look_ok(&hint, &format!("cat {d}/two")), "two\n");
        assert!(!look(&hint, &format!("test -e {d}/one")).status.success());
        let write = look(&hint, &format!("touch {d}/new"));
        assert!(
            !write.status.success(),
            "{backend}: a read-only mount took a write"
        );
        assert!(
            String::from_utf8_lossy(&write.stderr).contains("Read-only"),
            "{}",
            String::from_utf8_lossy(&write.stderr)
        );
        // A read-only mount holds no lock: builds on the same backend go on.
        let other = context("FROM busybox\nRUN echo beside > /beside\n", &[]);
        rig.img_ok(&[
            "build",
            "--backend",
            backend,
            other.path().to_str().unwrap(),
        ]);
        // Mounting on it again is refused.
        let again = rig.img(&["mount", "--backend", backend, "layers", d]);
        assert!(!again.status.success());
        rig.img_ok(&["umount", d]);
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{backend}: {d} still shows the image after umount"
        );
        no_records(&rig.state);

        // busybox is layer 1; layer 2 added /one, layer 3 removed it.
        let hint = mount(&rig, &["--backend", backend, "--layer", "2", "layers", d]);
        assert_eq!(look_ok(&hint, &format!("cat {d}/one")), "one\n");
        assert!(!look(&hint, &format!("test -e {d}/two")).status.success());
        rig.img_ok(&["umount", d]);
        no_records(&rig.state);
    }
}

#[test]
fn a_writable_mount_takes_changes_and_drops_them_at_umount() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    for backend in BACKENDS {
        let dir = mount_point(&rig, &format!("rw-{backend}"));
        let d = dir.to_str().unwrap();
        let hint = mount(&rig, &["--backend", backend, "--writable", "busybox", d]);
        look_ok(
            &hint,
            &format!("echo changed > {d}/etc/motd && rm {d}/bin/ls"),
        );
        assert_eq!(look_ok(&hint, &format!("cat {d}/etc/motd")), "changed\n");
        rig.img_ok(&["umount", d]);
        no_records(&rig.state);

        let hint = mount(&rig, &["--backend", backend, "busybox", d]);
        assert!(
            !look(&hint, &format!("test -e {d}/etc/motd"))
                .status
                .success()
        );
        look_ok(&hint, &format!("test -e {d}/bin/ls"));
        rig.img_ok(&["umount", d]);
    }
    // Nothing of the writable snapshots is left to prune or to show.
    let du = rig.img_ok(&["du"]);
    assert!(!du.contains("interrupted"), "{du}");
}

#[test]
fn mount_errors_name_the_image_the_layer_and_the_directory() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let dir = mount_point(&rig, "mnt");
    let d = dir.to_str().unwrap();
    let err = |args: &[&str]| {
        let out = rig.img(args);
        assert!(!out.status.success(), "img {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["mount", "nosuch", d]);
    assert!(e.contains("nosuch"), "{e}");
    let e = err(&["mount", "--layer", "2", "busybox", d]);
    assert!(e.contains("has 1 layer; --layer takes 1 to 1"), "{e}");
    let e = err(&["mount", "busybox", &format!("{d}/missing")]);
    assert!(e.contains("missing"), "{e}");
    let e = err(&["umount", d]);
    assert!(e.contains("is not mounted by img mount"), "{e}");
    no_records(&rig.state);
}

/// The pid of the one `img mount` process serving now, from its record.
fn serving_pid(state: &Path) -> i32 {
    let records: Vec<_> = std::fs::read_dir(state.join("mounts"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let path = records[0].path();
    let stem = path.file_stem().unwrap().to_str().unwrap();
    stem.parse().unwrap()
}

fn mounted_here(dir: &Path) -> bool {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir))
}

#[test]
fn umount_cleans_up_after_a_killed_mount_process() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    for backend in BACKENDS {
        let dir = mount_point(&rig, &format!("killed-{backend}"));
        let d = dir.to_str().unwrap();
        let hint = mount(&rig, &["--backend", backend, "--writable", "busybox", d]);
        look_ok(&hint, &format!("echo changed > {d}/etc/motd"));
        let pid = serving_pid(&rig.state);
        // The writable snapshot's name (`img mount --serve`'s).
        let key = format!("img-mount-{pid}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        while Path::new(&format!("/proc/{pid}/exe")).exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        let out = rig.img(&["umount", d]);
        assert!(
            out.status.success(),
            "{backend}: img umount after kill -9: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!mounted_here(&dir), "{backend}: {d} is still mounted");
        no_records(&rig.state);
        // The writable snapshot went with the mount; nothing of it is left to prune.
        let du = rig.img_ok(&["du"]);
        assert!(!du.contains(&key), "{backend}: {du}");
        rig.img_ok(&["prune"]);
        // The directory is usable again: a new mount on it works.
        let hint = mount(&rig, &["--backend", backend, "busybox", d]);
        look_ok(&hint, &format!("test -e {d}/bin/ls"));
        rig.img_ok(&["umount", d]);
        no_records(&rig.state);
    }
}
