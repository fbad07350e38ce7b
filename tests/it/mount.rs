//! imgfs mounted with FUSE, in-process: what is written through a mount is what the snapshot
//! holds and exports; privileges are cleared as the kernel clears them on ext4; other users get
//! the kernel's permission checks; inode numbers survive copy-up and remount.
//!
//! These need root and /dev/fuse. Without them a test prints why and passes, except with
//! CI=true, where it fails: CI must run them.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use imgfs::fuse::{self, MountOptions};
use imgfs::layer::{self, ImportLimits};
use imgfs::{Store, StoreOptions};
use tests::fixtures;
use tests::gnutar::extract_with_gnu_tar;
use tests::{Manifest, assert_same};

/// True if this machine can run FUSE tests; panics under CI=true if it cannot.
fn fuse_available() -> bool {
    let missing = if !nix::unistd::Uid::effective().is_root() {
        Some("not root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run FUSE tests: {why}")
        }
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    /// A store holding the busybox root file system as `base`.
    fn new() -> Fixture {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::create(&dir.path().join("store"), StoreOptions::default()).unwrap();
        let tar = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
        layer::import_layer(&store, "base", None, &tar[..], &ImportLimits::default()).unwrap();
        Fixture { dir, store }
    }

    fn mnt(&self, name: &str) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts snapshot `name` (writable if it is active) until the returned session is dropped.
    fn mount(&self, name: &str, at: &Path) -> fuse::FuseMount {
        let tree = if self.store.stat(name).unwrap().kind == imgfs::SnapshotKind::Active {
            self.store.tree(name).unwrap()
        } else {
            self.store.tree_read_only(name).unwrap()
        };
        fuse::mount(tree, at, &MountOptions::default()).unwrap()
    }

    fn export_full(&self, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        layer::export_layer(&self.store, name, true, &mut out).unwrap();
        out
    }
}

/// Unmounts and waits for the serving threads. Retries EBUSY for a while: a process forked by
/// another test thread can hold a descriptor into this mount until it calls exec.
fn unmount(session: fuse::FuseMount, mnt: &Path) {
    for _ in 0..100 {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .output()
            .unwrap();
        if out.status.success() {
            session.join().unwrap();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} stayed busy", mnt.display());
}

fn as_user(uid: u32, script: &str, cwd: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .args(["sh", "-c", script])
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: a size query with a null buffer.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// A series of changes a build step might make, applied below `root`.
fn change_tree(root: &Path) {
    use std::os::unix::fs::symlink;
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    std::fs::create_dir_all(root.join("app/lib/deep")).unwrap();
    w("app/lib/deep/a.txt", b"alpha");
    w("app/big", &vec![0x5a; 300_000]);
    w(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n",
    );
    symlink("lib/deep/a.txt", root.join("app/link")).unwrap();
    std::fs::hard_link(root.join("app/big"), root.join("app/big-again")).unwrap();
    std::fs::set_permissions(root.join("app/big"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::lchown(root.join("app/lib"), Some(1000), Some(1000)).unwrap();
    std::fs::rename(root.join("app/lib"), root.join("app/libs")).unwrap();
    std::fs::remove_file(root.join("bin/busybox")).unwrap_or(());
    nix::unistd::mkfifo(
        &root.join("app/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    setxattr(&root.join("app/big"), "user.origin", b"test");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("app/big"))
        .unwrap();
    f.set_len(100_000).unwrap();
}

#[test]
fn what_is_written_through_a_mount_is_what_the_snapshot_holds_and_exports() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    change_tree(&mnt);
    let seen = Manifest::of_dir(&mnt).unwrap().without_mtime();
    unmount(session, &mnt);
    f.store.commit("child", "work").unwrap();

    // The same tree, mounted again from the committed snapshot.
    let again = f.mnt("again");
    let session = f.mount("child", &again);
    assert_same(&seen, &Manifest::of_dir(&again).unwrap().without_mtime());
    unmount(session, &again);

    // And as GNU tar unpacks its export. (Only the sparse file's size differs in kind: tar
    // writes its zeros out.)
    let out = f.dir.path().join("export");
    std::fs::create_dir_all(&out).unwrap();
    extract_with_gnu_tar(&f.export_full("child")[..], &out).unwrap();
    assert_same(&seen, &Manifest::of_dir(&out).unwrap().without_mtime());
    let report = imgfs::fsck::check(&f.store, false).unwrap();
    assert!(report.is_clean(), "{report}");
}

/// Runs the same privilege-changing steps on `root` and returns what each left behind.
fn privilege_steps(root: &Path) -> Vec<(String, u32, bool)> {
    let file = root.join("tool");
    let mut out = Vec::new();
    let mut record = |what: &str| {
        let m = std::fs::symlink_metadata(&file).unwrap();
        out.push((
            what.to_string(),
            m.mode() & 0o7777,
            has_xattr(&file, "security.capability"),
        ));
    };
    let caps = [
        0x01, 0, 0, 0x02, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]; // cap_net_raw+ep
    let reset = |file: &Path| {
        std::fs::write(file, b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(file, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o6777)).unwrap();
        setxattr(file, "security.capability", &caps);
    };
    reset(&file);
    record("start");
    as_user(1000, "echo more >> tool", root);
    record("write by owner");
    reset(&file);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap(),
        b"x",
    )
    .unwrap();
    record("write by root");
    reset(&file);
    std::os::unix::fs::chown(&file, Some(1000), Some(1000)).unwrap();
    record("chown by root");
    reset(&file);
    as_user(1000, "truncate -s 1 tool", root);
    record("truncate by owner");
    // Through the descriptor that created the file: imgfs answers CREATE with direct I/O,
    // where the kernel leaves clearing the bits to the file system.
    std::fs::remove_file(&file).unwrap();
    as_user(1000, "exec 3>tool && chmod 6777 tool && echo x >&3", root);
    record("write by owner through the creating descriptor");
    std::fs::remove_file(&file).unwrap();
    let mut created = std::fs::File::create(&file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o6777)).unwrap();
    setxattr(&file, "security.capability", &caps);
    std::io::Write::write_all(&mut created, b"x").unwrap();
    record("write by root through the creating descriptor");
    out
}

#[test]
fn setuid_bits_and_capabilities_are_cleared_as_the_kernel_clears_them_on_ext4() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let native = f.mnt("native");
    std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o777)).unwrap();
    let want = privilege_steps(&native);
    // The point of the test is that some steps clear something; make sure they do here.
    assert!(
        want.iter().any(|(_, mode, _)| mode & 0o4000 == 0),
        "{want:?}"
    );

    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let dir = mnt.join("tmp");
    let got = privilege_steps(&dir);
    unmount(session, &mnt);
    assert_eq!(
        got, want,
        "imgfs (left) must clear what ext4 (right) clears"
    );
}

#[test]
fn other_users_get_the_kernels_permission_checks_and_their_umask() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    std::fs::write(mnt.join("etc/secret"), b"s").unwrap();
    std::fs::set_permissions(
        mnt.join("etc/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all(mnt.join("shared")).unwrap();
    std::fs::set_permissions(mnt.join("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();

    let r = as_user(
        1000,
        "cat etc/passwd >/dev/null && ! cat etc/secret 2>/dev/null && ! touch etc/new 2>/dev/null",
        &mnt,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = as_user(
        1000,
        "umask 027 && echo hi > shared/mine && mkdir shared/d",
        &mnt,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = std::fs::metadata(mnt.join("shared/mine")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1000, 0o640));
    assert_eq!(
        std::fs::metadata(mnt.join("shared/d")).unwrap().mode() & 0o777,
        0o750
    );
    // The sticky bit: another user may not delete it.
    let r = as_user(65534, "rm -f shared/mine", &mnt);
    assert!(!r.status.success());
    unmount(session, &mnt);
}

#[test]
fn files_beyond_4_gib_and_sparse_files_read_back() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let path = mnt.join("sparse");
    let file = std::fs::File::create(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"end", 5 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"start", 10).unwrap();
    drop(file);
    let file = std::fs::File::open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), (5 << 30) + 3);
    let mut buf = [1u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, (5 << 30) - 5).unwrap();
    assert_eq!(&buf, b"\0\0\0\0\0end");
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 3 << 30).unwrap();
    assert_eq!(buf, [0; 8], "the hole reads as zeros");
    drop(file);
    unmount(session, &mnt);
    f.store.commit("child", "work").unwrap();
    // Committed: the holes became zero extents, not 5 GiB of stored chunks.
    assert!(f.store.usage("child").unwrap().bytes < 1 << 20);
}

#[test]
fn inode_numbers_survive_copy_up_and_remount() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let before = std::fs::metadata(mnt.join("etc/passwd")).unwrap();
    std::fs::write(mnt.join("etc/passwd"), b"changed\n").unwrap();
    std::fs::hard_link(mnt.join("etc/passwd"), mnt.join("etc/passwd.hard")).unwrap();
    let after = std::fs::metadata(mnt.join("etc/passwd")).unwrap();
    let link = std::fs::metadata(mnt.join("etc/passwd.hard")).unwrap();
    assert_eq!(before.ino(), after.ino(), "copy-up keeps the inode number");
    assert_eq!((link.ino(), link.nlink()), (after.ino(), 2));
    unmount(session, &mnt);
    f.store.commit("child", "work").unwrap();

    let again = f.mnt("again");
    let session = f.mount("child", &again);
    let remounted = std::fs::metadata(again.join("etc/passwd")).unwrap();
    assert_eq!((remounted.ino(), remounted.nlink()), (after.ino(), 2));
    assert_eq!(
        std::fs::read(again.join("etc/passwd")).unwrap(),
        b"changed\n"
    );
    unmount(session, &again);
}

#[test]
fn a_read_only_mount_works_beside_a_writer_and_refuses_writes() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    // `f.store` is this process's writer; a read-only open serves the mount.
    let ro = Store::open_read_only(f.store.root()).unwrap();
    let mnt = f.mnt("m");
    let session = fuse::mount(
        ro.tree_read_only("base").unwrap(),
        &mnt,
        &MountOptions::default(),
    )
    .unwrap();
    assert!(mnt.join("bin/sh").symlink_metadata().is_ok());
    let err = std::fs::write(mnt.join("etc/x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    unmount(session, &mnt);
    // A second writer of one active snapshot is refused.
    f.store.prepare("work", Some("base")).unwrap();
    let _first = f.store.tree("work").unwrap();
    let second = f.store.tree("work").map(|_| ()).unwrap_err();
    assert!(
        second.to_string().contains("already open for writing"),
        "{second}"
    );
}

#[test]
fn big_layer_files_are_read_from_their_object_pack_and_cannot_change_while_so_open() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let content = tests::layer::noise(7, 3_000_000);
    let tar = tests::LayerBuilder::new()
        .file("big", 0o644, &content)
        .finish();
    layer::import_layer(
        &f.store,
        "big",
        Some("base"),
        &tar[..],
        &ImportLimits::default(),
    )
    .unwrap();
    for passthrough in [false, true] {
        let key = format!("work-{passthrough}");
        f.store.prepare(&key, Some("big")).unwrap();
        let mnt = f.mnt(&key);
        let stats = std::sync::Arc::new(fuse::RequestStats::default());
        let opts = MountOptions {
            passthrough,
            stats: Some(stats.clone()),
            ..Default::default()
        };
        let session = fuse::mount(f.store.tree(&key).unwrap(), &mnt, &opts).unwrap();
        let big = mnt.join("big");
        assert!(std::fs::read(&big).unwrap() == content, "content differs");
        let reads = stats.count("read");
        if !passthrough {
            assert!(reads > 0, "without passthrough imgfs serves the reads");
            unmount(session, &mnt);
            continue;
        }
        assert_eq!(reads, 0, "the kernel read the object pack itself");

        let reader = std::fs::File::open(&big).unwrap();
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&big)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
        let err = nix::unistd::truncate(&big, 10).unwrap_err();
        assert_eq!(err, nix::errno::Errno::ETXTBSY);
        let second = std::fs::File::open(&big).unwrap();
        let mut head = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&second, &mut head, 100).unwrap();
        assert_eq!(head[..], content[100..116]);
        drop((reader, second));

        // Closed: the file can be written, and later opens read through imgfs.
        let writer = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&writer, b"changed", 100).unwrap();
        let reader = std::fs::File::open(&big).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&writer, b"again", 200).unwrap();
        drop(writer);
        let mut want = content.clone();
        want[100..107].copy_from_slice(b"changed");
        want[200..205].copy_from_slice(b"again");
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &reader, &mut got).unwrap();
        assert!(
            got == want,
            "a reader opened beside a writer sees its writes"
        );
        drop(reader);
        unmount(session, &mnt);
    }
    // The object pack, and the snapshot it belongs to, are unchanged.
    let tree = f.store.tree_read_only("big").unwrap();
    let ino = tree.resolve(b"/big", false).unwrap();
    assert!(tree.read(ino, 0, content.len() as u32).unwrap() == content);
    let report = imgfs::fsck::check(&f.store, false).unwrap();
    assert!(report.is_clean(), "{report}");
}

/// Blocks the scratch files of a store take on disk.
fn scratch_blocks(store: &Path) -> u64 {
    std::fs::read_dir(store.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks())
        .sum()
}

fn fsync_dir(dir: &Path) {
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

#[test]
fn an_fsync_frees_the_data_of_deleted_files_nothing_can_reach_but_not_of_open_ones() {
    use std::io::{Read, Seek};
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let store = f.dir.path().join("store");
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    for name in ["gone", "open"] {
        std::fs::write(mnt.join(name), &data).unwrap();
    }
    fsync_dir(&mnt);
    let written = scratch_blocks(&store);
    assert!(written >= 2 * 1_000_000 / 512, "{written} blocks");

    let mut open = std::fs::File::open(mnt.join("open")).unwrap();
    std::fs::remove_file(mnt.join("gone")).unwrap();
    std::fs::remove_file(mnt.join("open")).unwrap();
    // The kernel forgets "gone" once its last reference goes, shortly after the unlink.
    let start = std::time::Instant::now();
    loop {
        fsync_dir(&mnt);
        let now = scratch_blocks(&store);
        if now <= written - 1_000_000 / 512 {
            assert!(
                now >= 1_000_000 / 512,
                "the open file's data went too: {now}"
            );
            break;
        }
        assert!(
            start.elapsed().as_secs() < 20,
            "{now} of {written} blocks left"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut back = Vec::new();
    open.rewind().unwrap();
    open.read_to_end(&mut back).unwrap();
    assert!(
        back == data,
        "an unlinked file still open reads what was written"
    );
    drop(open);
    let start = std::time::Instant::now();
    while scratch_blocks(&store) > written / 10 {
        assert!(start.elapsed().as_secs() < 20, "closed orphan's data stays");
        fsync_dir(&mnt);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unmount(session, &mnt);
    f.store.commit("child", "work").unwrap();
    let report = imgfs::fsck::check(&f.store, false).unwrap();
    assert!(report.is_clean(), "{report}");
    let again = f.mnt("again");
    let session = f.mount("child", &again);
    assert!(!again.join("gone").exists() && !again.join("open").exists());
    unmount(session, &again);
}

/// A layer holding `sparse`, a file of `size` bytes whose only data is `data` at `at`, as GNU
/// tar archives it with `--sparse --format=FORMAT` (gnu: GNU sparse headers; posix: PAX
/// sparse 1.0).
fn sparse_layer(format: &str, size: u64, at: u64, data: &[u8]) -> Vec<u8> {
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = std::fs::File::create(src.path().join("sparse")).unwrap();
    file.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, data, at).unwrap();
    let out = Command::new("tar")
        .args(["--sparse", &format!("--format={format}"), "-cf", "-", "-C"])
        .arg(src.path())
        .arg("sparse")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A sparse file seen through the mount shows its holes to SEEK_DATA and SEEK_HOLE, which
/// sparse-aware copies (cp, tar --sparse) use to skip them.
#[test]
fn a_sparse_file_shows_its_holes_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let layer = sparse_layer("gnu", 64 << 20, 8 << 20, b"data");
    layer::import_layer(
        &f.store,
        "sparse",
        None,
        &layer[..],
        &ImportLimits::default(),
    )
    .unwrap();
    let mnt = f.mnt("mnt");
    let session = f.mount("sparse", &mnt);
    let seen = std::fs::File::open(mnt.join("sparse")).unwrap();
    let seek = |offset: i64, whence| nix::unistd::lseek(&seen, offset, whence);
    use nix::unistd::Whence::{SeekData, SeekHole};
    let chunk = imgfs::store::DEFAULT_CHUNK_SIZE as i64;
    assert_eq!(seek(0, SeekData), Ok(8 << 20));
    assert_eq!(seek(8 << 20, SeekHole), Ok((8 << 20) + chunk));
    assert_eq!(seek(0, SeekHole), Ok(0));
    assert_eq!(
        seek((8 << 20) + chunk, SeekData),
        Err(nix::errno::Errno::ENXIO)
    );
    drop(seen);
    unmount(session, &mnt);
}

/// The bytes stat reports a file takes on disk (st_blocks of 512 bytes), which `du` sums.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A large sparse file imported from a layer takes, as `du` sees it through the mount, about
/// its data and not its size: the holes stay holes, as they do on ext4 and overlayfs.
#[test]
fn an_imported_sparse_file_takes_only_its_data_on_disk() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let (size, data) = (256u64 << 20, vec![0xa5u8; 1 << 20]);
    let chunk = imgfs::store::DEFAULT_CHUNK_SIZE as u64;
    for format in ["gnu", "posix"] {
        let layer = sparse_layer(format, size, 100 << 20, &data);
        layer::import_layer(&f.store, format, None, &layer[..], &ImportLimits::default()).unwrap();
        let mnt = f.mnt(format);
        let session = f.mount(format, &mnt);
        let file = mnt.join("sparse");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
        let on_disk = allocated(&file);
        assert!(
            (data.len() as u64..=data.len() as u64 + 2 * chunk).contains(&on_disk),
            "{format}: {on_disk} bytes allocated for {} bytes of data",
            data.len()
        );
        unmount(session, &mnt);
    }
}

/// A file given a size and nothing else (`truncate -s 1G`) takes nothing on disk.
#[test]
fn a_file_only_truncated_to_a_size_takes_no_blocks() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let path = mnt.join("empty");
    let out = Command::new("truncate")
        .args(["-s", "1G"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 30);
    assert_eq!(allocated(&path), 0);
    unmount(session, &mnt);
}

/// Writes into a sparse file, and holes punched in it, change what stat reports at once: the
/// kernel's cached attributes and imgfs's cached count both follow every change, and the
/// commit keeps the count.
#[test]
fn writes_and_punched_holes_change_the_blocks_of_a_sparse_file_at_once() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let path = mnt.join("sparse");
    let mib = 1u64 << 20;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(64 * mib).unwrap();
    assert_eq!(allocated(&path), 0);
    let data = vec![0x5au8; mib as usize];
    std::os::unix::fs::FileExt::write_all_at(&file, &data, 32 * mib).unwrap();
    assert_eq!(allocated(&path), mib, "after one write");
    std::os::unix::fs::FileExt::write_all_at(&file, &data, 8 * mib).unwrap();
    assert_eq!(allocated(&path), 2 * mib, "after a second write");
    nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        8 * mib as i64,
        mib as i64,
    )
    .unwrap();
    assert_eq!(allocated(&path), mib, "after a punched hole");
    drop(file);
    unmount(session, &mnt);
    f.store.commit("child", "work").unwrap();
    let again = f.mnt("again");
    let session = f.mount("child", &again);
    assert_eq!(allocated(&again.join("sparse")), mib, "once committed");
    unmount(session, &again);
}

/// A file of data in many chunks takes its whole size, rounded up to blocks, whether its
/// chunks are dirty (written through the mount) or stored (committed).
#[test]
fn a_dense_file_of_many_chunks_takes_its_whole_size() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    f.store.prepare("work", Some("base")).unwrap();
    let mnt = f.mnt("m");
    let session = f.mount("work", &mnt);
    let size = (3 << 20) + 100;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(mnt.join("dense"), &data).unwrap();
    let expect = (size as u64).div_ceil(512) * 512;
    assert_eq!(allocated(&mnt.join("dense")), expect, "written");
    unmount(session, &mnt);
    f.store.commit("child", "work").unwrap();
    let again = f.mnt("again");
    let session = f.mount("child", &again);
    assert_eq!(allocated(&again.join("dense")), expect, "committed");
    unmount(session, &again);
}

/// A mount whose serving session ended on its own (a failed ring, the FUSE test hook) while a
/// file in it is still open cannot be unmounted the ordinary way (EBUSY); `unmount` must still
/// take it away, through fusectl and a detach, instead of leaving a dead mount behind.
#[test]
fn unmounting_a_mount_whose_server_is_gone_takes_it_away_even_while_busy() {
    if !fuse_available() {
        return;
    }
    if std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .map_or(true, |s| s.trim() != "Y")
    {
        // The hook fails a ring; without rings the session cannot end this way. tools/setup
        // turns rings on, so CI must have them.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/sys/module/fuse/parameters/enable_uring is not Y"
        );
        eprintln!("skipping: /sys/module/fuse/parameters/enable_uring is not Y");
        return;
    }
    let f = Fixture::new();
    let at = f.mnt("gone");
    let tree = f.store.tree_read_only("base").unwrap();
    let opts = MountOptions {
        uring_fail_after: Some(50),
        ..MountOptions::default()
    };
    let m = fuse::mount(tree, &at, &opts).unwrap();
    // Keeps the mount busy.
    let held = std::fs::File::open(&at).unwrap();
    // Each name is new to the kernel, so each lookup is a request. A lookup the failed ring had
    // taken may wait until the connection is aborted, which the unmount below does: so they
    // run on a thread of their own, as a program using the mount would. They go on until one
    // fails: the kernel sends requests to the rings only once every queue has registered,
    // which on a machine's first mount can take longer than thousands of lookups.
    let dir = at.clone();
    let start = std::time::Instant::now();
    let lookups = std::thread::spawn(move || {
        (0u64..).find_map(|i| match std::fs::metadata(dir.join(format!("n{i}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Some(Some(e)),
            _ if start.elapsed().as_secs() >= 60 => Some(None),
            _ => None,
        })
    });
    while m.serving() {
        if start.elapsed().as_secs() >= 90 {
            // Served to the end by this process: unmount before failing, or its exit would
            // wait forever on a request only it could answer.
            drop(held);
            let _ = m.unmount();
            panic!("the session never ended");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The session's own error (the failed ring) may come back; the mount must be gone anyway.
    let _ = m.unmount();
    let failed = lookups.join().unwrap().flatten();
    assert!(failed.is_some(), "the ring never failed");
    let listed = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == at.to_str());
    assert!(!listed, "{} is still mounted", at.display());
    drop(held);
}
