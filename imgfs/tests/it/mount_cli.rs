//! The `imgfs mount` process: it reports success only once the mount is usable, commits on
//! unmount by `imgfs umount` or by a signal, keeps a second writer out of the store, and counts
//! the requests it served when asked (`--stats`).
//! Needs root and /dev/fuse: without them it passes with a note, except under CI=true.

use std::path::Path;
use std::process::{Command, Stdio};

fn fuse_available() -> bool {
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

fn imgfs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_mounted(p: &Path) -> bool {
    let want = p.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

#[test]
fn daemon_mount_umount_and_signals_commit_the_writable_child() {
    if !fuse_available() {
        return;
    }
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
    let child = Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .args([
            "mount",
            "--store",
            s,
            "--snapshot",
            "one",
            "--writable",
            "--commit",
            "two",
            "--stats",
            m,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !is_mounted(&mnt) {
        assert!(start.elapsed().as_secs() < 20, "mount did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(mnt.join("g"), b"2").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
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
