//! What a killed `imgfs mount --writable` leaves: the child it prepared under a name of its own
//! (`SNAPSHOT.mount-PID`) is owned by the process, and the next command that opens the store for
//! writing removes it once the process is gone, saying so; a clean end keeps it active, and a
//! live mount's child is never taken for abandoned. The library tests need no root; the mount
//! tests need root and /dev/fuse, as `mount_cli`'s do.

use std::path::Path;

use imgfs::owner::{PID_LABEL, START_LABEL, may_have_abandoned_mounts};
use imgfs::{AbandonedMount, Store, StoreOptions};

use crate::mount_cli::{
    Unmount, foreground_mount, fuse_available, imgfs, store_with_empty_base, terminate,
};
use crate::ok;

/// A store in a temporary directory with an empty committed snapshot `base`.
fn store_with_base() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    store.prepare("b", None).unwrap();
    store.commit("base", "b").unwrap();
    (dir, store)
}

fn owner_labels(store: &Store, name: &str) -> Vec<(String, String)> {
    let mut labels = store.stat(name).unwrap().labels;
    labels.retain(|(k, _)| k == PID_LABEL || k == START_LABEL);
    labels
}

#[test]
fn an_owned_snapshot_is_abandoned_only_once_its_process_is_gone() {
    let (dir, store) = store_with_base();
    store.prepare_owned("live", Some("base")).unwrap();
    assert_eq!(owner_labels(&store, "live").len(), 2);
    // This process owns it and runs: nothing is abandoned.
    assert_eq!(store.abandoned_mounts().unwrap(), vec![]);
    assert_eq!(store.remove_abandoned_mounts().unwrap(), vec![]);

    // Its pid, reused by a process that started at another time.
    store.prepare_owned("reused", Some("base")).unwrap();
    store.set_label("reused", START_LABEL, "1").unwrap();
    // A process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    store.prepare_owned("dead", Some("base")).unwrap();
    store
        .set_label("dead", PID_LABEL, &dead.to_string())
        .unwrap();
    // Labels that name nobody keep the snapshot: it is not known to be anyone's.
    store.prepare_owned("garbled", Some("base")).unwrap();
    store.set_label("garbled", PID_LABEL, "x").unwrap();

    let me = std::process::id();
    let abandoned = vec![
        AbandonedMount {
            snapshot: "reused".into(),
            pid: me,
        },
        AbandonedMount {
            snapshot: "dead".into(),
            pid: dead,
        },
    ];
    let ro = Store::open_read_only(&dir.path().join("s")).unwrap();
    assert_eq!(ro.abandoned_mounts().unwrap(), abandoned);
    let refused = ro.remove_abandoned_mounts().unwrap_err().to_string();
    assert!(refused.contains("read-only"), "{refused}");

    assert_eq!(store.remove_abandoned_mounts().unwrap(), abandoned);
    let left: Vec<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(left, ["base", "live", "garbled"]);
    assert_eq!(
        abandoned[1].to_string(),
        format!("snapshot dead left by imgfs mount process {dead}, which is gone")
    );
}

#[test]
fn a_release_or_a_commit_ends_the_ownership() {
    let (_dir, store) = store_with_base();
    for key in ["released", "committed"] {
        store.prepare_owned(key, Some("base")).unwrap();
        // As if its process were gone.
        store.set_label(key, START_LABEL, "1").unwrap();
        store.set_label(key, "other", "kept").unwrap();
    }
    store.release_owned("released").unwrap();
    let done = store.commit("done", "committed").unwrap();
    assert_eq!(done.labels, [("other".to_string(), "kept".to_string())]);
    for name in ["released", "done"] {
        assert_eq!(owner_labels(&store, name), vec![], "{name}");
        assert_eq!(
            store.stat(name).unwrap().labels,
            [("other".to_string(), "kept".to_string())]
        );
    }
    assert_eq!(store.remove_abandoned_mounts().unwrap(), vec![]);
}

/// The names `imgfs list` shows.
fn snapshots(store: &str) -> Vec<String> {
    ok(imgfs(&["list", "--store", store]))
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Mounts `base` writable under the default key, writes a file, SIGKILLs the mount process
/// and ends its dead mount; returns the key and the pid.
fn kill_a_writable_mount(store: &str, mnt: &Path) -> (String, u32) {
    let args = ["--store", store, "--snapshot", "base", "--writable"];
    let mut child = foreground_mount(&args, mnt, &[]);
    std::fs::write(mnt.join("f"), b"data").unwrap();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    ok(imgfs(&["umount", mnt.to_str().unwrap()]));
    let key = format!("base.mount-{pid}");
    assert!(snapshots(store).contains(&key), "the mount prepared {key}");
    (key, pid)
}

fn removed_line(key: &str, pid: u32) -> String {
    format!("imgfs: removed snapshot {key} left by imgfs mount process {pid}, which is gone\n")
}

#[test]
fn the_next_writer_removes_the_snapshot_of_a_killed_writable_mount() {
    if !fuse_available() {
        return;
    }
    let (dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let layer = dir.path().join("empty.tar");
    let layer = layer.to_str().unwrap();
    let _unmount = Unmount(&mnt);

    // fsck reports it, and is not failed by it.
    let (key, pid) = kill_a_writable_mount(s, &mnt);
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(
        fsck.contains(&format!(
            "abandoned: snapshot {key} left by imgfs mount process {pid}, which is gone"
        )),
        "{fsck}"
    );
    assert!(fsck.contains(" 0 problems"), "{fsck}");
    assert!(snapshots(s).contains(&key), "fsck removed {key}");

    let writers: [&[&str]; 3] = [
        &["import", "--store", s, "--name", "other", layer],
        &["rm", "--store", s, "other"],
        &["fsck", "--repair", s],
    ];
    for (i, args) in writers.iter().enumerate() {
        // The first round removes what the fsck above left.
        let (key, pid) = if i == 0 {
            (key.clone(), pid)
        } else {
            kill_a_writable_mount(s, &mnt)
        };
        // What img reads before it opens the store at all.
        assert!(may_have_abandoned_mounts(&store), "imgfs {args:?}");
        let out = imgfs(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "imgfs {args:?}: {stderr}");
        assert_eq!(stderr, removed_line(&key, pid), "imgfs {args:?}");
        assert!(!snapshots(s).contains(&key), "imgfs {args:?} kept {key}");
        assert!(!may_have_abandoned_mounts(&store), "imgfs {args:?}");
    }

    // A writable mount is a writer too.
    let (key, pid) = kill_a_writable_mount(s, &mnt);
    let args = [
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "--commit",
        "c",
    ];
    let out = terminate(foreground_mount(&args, &mnt, &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&removed_line(&key, pid)), "{stderr}");
    assert_eq!(snapshots(s), ["base", "c"]);
    // Its own marker went with its commit.
    assert_eq!(std::fs::read_dir(store.join("owners")).unwrap().count(), 0);
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(!fsck.contains("abandoned"), "{fsck}");
    assert!(fsck.contains(" 0 problems"), "{fsck}");
}

#[test]
fn a_writable_mount_that_ends_cleanly_keeps_its_snapshot_from_later_writers() {
    if !fuse_available() {
        return;
    }
    let (dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let m = mnt.to_str().unwrap();
    let _unmount = Unmount(&mnt);

    // Ended by SIGTERM.
    let args = ["--store", s, "--snapshot", "base", "--writable"];
    let child = foreground_mount(&args, &mnt, &[]);
    std::fs::write(mnt.join("f"), b"by sigterm").unwrap();
    let signalled = format!("base.mount-{}", child.id());
    let out = terminate(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("imgfs: snapshot {signalled} stays active")),
        "{stderr}"
    );
    // Ended by imgfs umount (the daemon's key is on its standard error, before it detaches).
    let out = ok_stderr(imgfs(&[
        "mount",
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        "-d",
        m,
    ]));
    let unmounted = out
        .split_whitespace()
        .find(|w| w.starts_with("base.mount-"))
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_owned();
    std::fs::write(mnt.join("f"), b"by umount").unwrap();
    ok(imgfs(&["umount", m]));

    let layer = dir.path().join("empty.tar");
    let out = imgfs(&[
        "import",
        "--store",
        s,
        "--name",
        "other",
        layer.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing removed");
    assert_eq!(
        std::fs::read_dir(store.join("owners")).unwrap().count(),
        0,
        "a clean end removes its marker"
    );
    for (key, content) in [(&signalled, "by sigterm"), (&unmounted, "by umount")] {
        let info = ok(imgfs(&["info", "--store", s, key]));
        assert!(info.contains("kind:    active"), "{info}");
        assert!(!info.contains("imgfs.mount"), "{info}");
        let child = foreground_mount(&["--store", s, "--snapshot", key, "--writable"], &mnt, &[]);
        assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), content);
        terminate(child);
    }
}

/// The stderr of a command that must have succeeded.
fn ok_stderr(out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_live_writable_mounts_snapshot_is_not_abandoned() {
    if !fuse_available() {
        return;
    }
    let (dir, store, mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let _unmount = Unmount(&mnt);
    let args = ["--store", s, "--snapshot", "base", "--writable"];
    let child = foreground_mount(&args, &mnt, &[]);
    let key = format!("base.mount-{}", child.id());
    assert!(!may_have_abandoned_mounts(&store));
    // fsck opens the store read-only beside the mount, and asks whether the owner runs.
    let fsck = ok(imgfs(&["fsck", s]));
    assert!(!fsck.contains("abandoned"), "{fsck}");
    // No second writer opens the store while the mount holds it, so none can remove anything.
    let layer = dir.path().join("empty.tar");
    let out = imgfs(&[
        "import",
        "--store",
        s,
        "--name",
        "other",
        layer.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("locked by pid"), "{stderr}");
    terminate(child);
    assert!(snapshots(s).contains(&key));
}

#[test]
fn a_writable_mount_that_fails_to_start_leaves_no_snapshot() {
    // Needs no FUSE: the mount point is refused before anything is mounted.
    let (dir, store, _mnt) = store_with_empty_base();
    let s = store.to_str().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = imgfs(&[
        "mount",
        "--store",
        s,
        "--snapshot",
        "base",
        "--writable",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(snapshots(s), ["base"]);
    assert!(!may_have_abandoned_mounts(&store));
}
