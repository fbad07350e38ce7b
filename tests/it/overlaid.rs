//! Build steps of the fuse backend on kernel overlayfs over imgfs (`FuseSnapshotter::
//! mount_volatile`): what a step writes through the overlay must end up in the snapshot exactly
//! as if the step had written it through imgfs's own FUSE mount. Needs root, as every overlay
//! mount of the test suite does.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgfs::layer::ImportLimits;
use imgfs::{FuseSnapshotter, Snapshotter, Store, StoreOptions};
use tests::LayerBuilder;

fn base_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("d", 0o755)
        .file("d/x", 0o644, b"x")
        .file("d/y", 0o644, b"y")
        .dir("e", 0o755)
        .file("e/z", 0o644, b"z")
        .dir("e/sub", 0o755)
        .file("e/sub/w", 0o644, b"w")
        .file("a", 0o644, b"aaaa")
        .file("t", 0o644, [7u8; 200_000])
        .finish()
}

/// What a build step might do, through the mount at `m`: every kind of entry created, changed,
/// renamed and removed, in lower directories and new ones. Times are set last, the same for
/// every run, so that two runs give the same layer.
fn step(m: &Path) {
    fs::create_dir(m.join("new")).unwrap();
    fs::write(m.join("new/f"), b"new file").unwrap();
    xattr::set(m.join("new/f"), "user.note", b"kept").unwrap();
    std::os::unix::fs::chown(m.join("new/f"), Some(1000), Some(1001)).unwrap();
    fs::hard_link(m.join("new/f"), m.join("new/g")).unwrap();
    fs::rename(m.join("new/g"), m.join("new/g2")).unwrap();
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("a"))
        .unwrap();
    std::io::Write::write_all(&mut a, b"more").unwrap();
    drop(a);
    fs::set_permissions(m.join("d/y"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(m.join("d/y"), m.join("d/yy")).unwrap();
    fs::remove_file(m.join("d/x")).unwrap();
    fs::remove_dir_all(m.join("e")).unwrap();
    fs::create_dir(m.join("e")).unwrap();
    fs::write(m.join("e/n"), b"in the new e").unwrap();
    std::os::unix::fs::symlink("a", m.join("s")).unwrap();
    nix::unistd::mkfifo(
        &m.join("p"),
        nix::sys::stat::Mode::from_bits(0o640).unwrap(),
    )
    .unwrap();
    let sparse = fs::File::create(m.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 4 << 20).unwrap();
    drop(sparse);
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("t"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let paths = [
        "", "a", "d", "d/yy", "e", "e/n", "new", "new/f", "new/g2", "s", "p", "sparse", "t",
    ];
    set_times(m, &paths, 1_000_000_000, 123_456_789);
}

/// Gives each of `paths` under `m` the access and modification time `sec`.`nsec`, so that two
/// runs of a step give the same layer.
fn set_times(m: &Path, paths: &[&str], sec: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, nsec);
    for p in paths {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &m.join(p),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

/// A second step, on top of the first: it changes what the first one wrote (a file removed
/// from its new dir, a dir of it replaced, a symlink of it turned into a dir, a file it copied
/// up changed again) and what the base has.
fn step2(m: &Path) {
    fs::remove_file(m.join("e/n")).unwrap();
    fs::write(m.join("e/n2"), b"second").unwrap();
    fs::remove_dir_all(m.join("new")).unwrap();
    fs::create_dir(m.join("new")).unwrap();
    fs::write(m.join("new/h"), b"h").unwrap();
    fs::remove_file(m.join("s")).unwrap();
    fs::create_dir(m.join("s")).unwrap();
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("a"))
        .unwrap();
    std::io::Write::write_all(&mut a, b", again").unwrap();
    drop(a);
    fs::rename(m.join("d/yy"), m.join("d/z")).unwrap();
    fs::set_permissions(m.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(m.join("sparse"), m.join("d/sparse-link")).unwrap();
    let paths = [
        "",
        "a",
        "d",
        "d/z",
        "e",
        "e/n2",
        "new",
        "new/h",
        "s",
        "d/sparse-link",
    ];
    set_times(m, &paths, 1_100_000_000, 5);
}

/// A step that only reads: it leaves no layer.
fn read_only_step(m: &Path) {
    assert_eq!(fs::read(m.join("new/h")).unwrap(), b"h");
    assert!(!m.join("e/n").exists() && !m.join("new/f").exists());
}

/// The last step: one new file.
fn step4(m: &Path) {
    fs::write(m.join("e/last"), b"last").unwrap();
    set_times(m, &["e", "e/last"], 1_200_000_000, 0);
}

/// What a sequence of steps left: each step's layer (empty if it changed nothing), the
/// whole tree exported after it, and the type and lower dirs of each step's mount.
#[derive(Default)]
struct Steps {
    layers: Vec<Vec<u8>>,
    wholes: Vec<Vec<u8>>,
    kinds: Vec<String>,
    lowers: Vec<usize>,
}

/// Imports `base_layer` into `s` as the committed snapshot `base`.
fn apply_base(s: &FuseSnapshotter) {
    let layer = base_layer();
    s.apply("base", None, &mut &layer[..], &ImportLimits::default())
        .unwrap();
}

/// Runs `steps` one after the other on `s`, as a build does: each in a volatile mount of a
/// fresh child of the last snapshot committed, its layer exported, committed if it changed
/// something and removed if not.
fn run_steps(s: &FuseSnapshotter, mnt: &Path, steps: &[fn(&Path)]) -> Steps {
    apply_base(s);
    let mut parent = "base".to_string();
    let mut out = Steps::default();
    for (i, f) in steps.iter().enumerate() {
        let key = format!("step{i}");
        s.prepare(&key, Some(&parent)).unwrap();
        let m = s.mount_volatile(&key, mnt).unwrap();
        let (kind, options) = mount_of(mnt);
        out.kinds.push(kind);
        out.lowers.push(lower_dirs(&options));
        if i == 0 {
            let again = tempfile::tempdir_in("/var/tmp").unwrap();
            assert!(
                s.mount_volatile(&key, again.path()).is_err()
                    && s.mount(&key, again.path()).is_err(),
                "an active snapshot mounts once at a time"
            );
        }
        f(mnt);
        m.unmount().unwrap();
        let mut layer = Vec::new();
        if s.diff(&key, &mut layer).unwrap().entries == 0 {
            s.remove(&key).unwrap();
            layer.clear();
        } else {
            parent = format!("layer{i}");
            s.commit(&parent, &key).unwrap();
        }
        let mut whole = Vec::new();
        s.export(&parent, &mut whole).unwrap();
        out.layers.push(layer);
        out.wholes.push(whole);
    }
    out
}

/// Runs `step` in a volatile mount of a child of the base, commits it and returns its layer
/// and the whole tree exported, with the mount's file system type.
fn run_step(s: &FuseSnapshotter, mnt: &Path) -> (Vec<u8>, Vec<u8>, String) {
    let mut out = run_steps(s, mnt, &[step]);
    (
        out.layers.remove(0),
        out.wholes.remove(0),
        out.kinds.remove(0),
    )
}

/// The file system type and super options of the mount at `path`, from /proc/self/mountinfo.
fn mount_of(path: &Path) -> (String, String) {
    let want = path.canonicalize().unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == want.to_str())
        .unwrap_or_else(|| panic!("{} is not mounted", want.display()));
    let mut after = line.split(" - ").nth(1).unwrap().split(' ');
    let kind = after.next().unwrap().to_string();
    (kind, after.nth(1).unwrap_or_default().to_string())
}

/// How many lower dirs an overlay's super options name (0 for another file system).
fn lower_dirs(options: &str) -> usize {
    options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map_or(0, |l| l.split(':').count())
}

/// Whether `dir` has ext4's FS_TOPDIR_FL (`chattr +T`).
fn is_top_dir(dir: &Path) -> bool {
    let f = fs::File::open(dir).unwrap();
    let mut flags: libc::c_int = 0;
    // SAFETY: the ioctl writes one int at the pointer, which outlives the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FS_IOC_GETFLAGS,
            &mut flags,
        )
    };
    assert_eq!(r, 0, "FS_IOC_GETFLAGS on {}", dir.display());
    flags & 0x0002_0000 != 0
}

/// A dir for a test's stores, with an empty mount point `mnt` in it.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (dir, mnt)
}

fn store(dir: &Path, name: &str) -> FuseSnapshotter {
    FuseSnapshotter::new(Store::create(&dir.join(name), StoreOptions::default()).unwrap())
}

#[test]
fn a_step_on_overlayfs_over_imgfs_leaves_what_imgfs_alone_would() {
    let (dir, mnt) = scratch();
    let overlaid = store(dir.path(), "overlaid");
    let plain = store(dir.path(), "plain").with_overlaid_steps(false);
    let (layer, whole, kind) = run_step(&overlaid, &mnt);
    assert_eq!(kind, "overlay", "the step ran on overlayfs");
    let (want_layer, want_whole, kind) = run_step(&plain, &mnt);
    assert!(
        kind.starts_with("fuse"),
        "the step ran on imgfs alone: {kind}"
    );
    let names = tests::layer::listing(&layer);
    assert_eq!(names, tests::layer::listing(&want_layer));
    assert!(layer == want_layer, "same entries, different bytes");
    assert!(whole == want_whole, "the exports differ");
    for want in ["d/.wh.x", "d/.wh.y", "e/.wh..wh..opq", "new/g2", "sparse"] {
        assert!(
            names.iter().any(|l| l.starts_with(&format!("{want} "))),
            "{want} in {names:#?}"
        );
    }
    let steps = dir.path().join("overlaid/steps");
    if nix::sys::statfs::statfs(&steps).unwrap().filesystem_type()
        == nix::sys::statfs::EXT4_SUPER_MAGIC
    {
        assert!(
            is_top_dir(&steps),
            "ext4 spreads the steps' dirs over groups"
        );
    }
    // The snapshot reads back through imgfs alone: a committed one mounts over FUSE.
    let m = overlaid.mount("layer0", &mnt).unwrap();
    assert_eq!(fs::read(mnt.join("new/g2")).unwrap(), b"new file");
    assert_eq!(fs::metadata(mnt.join("new/g2")).unwrap().nlink(), 2);
    assert_eq!(fs::read(mnt.join("t")).unwrap(), vec![7u8; 1000]);
    assert_eq!(
        xattr::get(mnt.join("new/f"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"kept"[..])
    );
    assert!(!mnt.join("e/sub").exists());
    m.unmount().unwrap();
    // Nothing of the step is left beside the store once the backend is gone.
    drop(overlaid);
    assert_eq!(fs::read_dir(&steps).unwrap().count(), 0);
    assert_eq!(mounts_under(&steps), 0);
}

/// How many mounts there are at or below `dir`.
fn mounts_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(&dir))
        .count()
}

#[test]
fn the_steps_of_a_build_stack_their_upper_dirs_over_one_fuse_mount() {
    let (dir, mnt) = scratch();
    let overlaid = store(dir.path(), "overlaid");
    let plain = store(dir.path(), "plain").with_overlaid_steps(false);
    let steps: [fn(&Path); 4] = [step, step2, read_only_step, step4];
    let got = run_steps(&overlaid, &mnt, &steps);
    let want = run_steps(&plain, &mnt, &steps);
    assert!(got.kinds.iter().all(|k| k == "overlay"), "{:?}", got.kinds);
    // Each step's overlay has the upper dirs of the steps before it over the FUSE lower, the
    // read-only one's too.
    assert_eq!(got.lowers, [1, 2, 3, 4]);
    for i in 0..steps.len() {
        let names = tests::layer::listing(&got.layers[i]);
        assert_eq!(names, tests::layer::listing(&want.layers[i]), "step {i}");
        assert!(got.layers[i] == want.layers[i], "step {i}: different bytes");
        assert!(
            got.wholes[i] == want.wholes[i],
            "step {i}: the exports differ"
        );
    }
    assert!(got.layers[2].is_empty(), "the read-only step left a layer");
    let names = tests::layer::listing(&got.layers[1]);
    for want in [
        "e/.wh.n",
        "new/.wh..wh..opq",
        "d/.wh.yy",
        "d/sparse-link",
        "s/",
    ] {
        assert!(
            names.iter().any(|l| l.starts_with(&format!("{want} "))),
            "{want} in {names:#?}"
        );
    }
    // One stack for all four steps: one scratch dir, one FUSE mount, until the backend goes.
    let scratch = dir.path().join("overlaid/steps");
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 1);
    assert_eq!(mounts_under(&scratch), 1);

    // A view of the last snapshot (what a `COPY --from` of the stage reads) is a read-only
    // overlay of the stack, showing what imgfs shows.
    for s in [&overlaid, &plain] {
        s.view("seen", "layer3").unwrap();
    }
    let view = overlaid.mount("seen", &mnt).unwrap();
    assert_eq!(mount_of(&mnt).0, "overlay");
    assert!(
        fs::write(mnt.join("new/h"), b"no").is_err(),
        "the view is read-only"
    );
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let want = plain.mount("seen", &other).unwrap();
    assert!(mount_of(&other).0.starts_with("fuse"));
    let (got_tree, want_tree) = (tree_of(&mnt), tree_of(&other));
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        got_tree == want_tree,
        "the overlay shows {:#?}\nimgfs shows {:#?}",
        only(&got_tree, &want_tree),
        only(&want_tree, &got_tree)
    );
    want.unmount().unwrap();
    // The view keeps the stack's FUSE mount and dirs until it is unmounted.
    drop(overlaid);
    assert_eq!(mounts_under(&scratch), 1);
    assert_eq!(fs::read(mnt.join("e/last")).unwrap(), b"last");
    view.unmount().unwrap();
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    assert_eq!(mounts_under(&scratch), 0);
}

/// Every entry under `root`, a line each: path, type, mode, owner, size (of all but
/// directories, whose size each file system counts its own way), mtime, links (of files),
/// xattrs, and the content or link target.
fn tree_of(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                dirs.push(p.clone());
                String::new()
            } else if m.is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&fs::read(&p).unwrap(), &mut h);
                format!(
                    "content {:x} links {}",
                    std::hash::Hasher::finish(&h),
                    m.nlink()
                )
            } else {
                format!("rdev {}", m.rdev())
            };
            let mut xattrs: Vec<_> = xattr::list(&p)
                .unwrap()
                .map(|n| format!("{n:?}={:?}", xattr::get(&p, &n).unwrap()))
                .collect();
            xattrs.sort();
            out.push(format!(
                "{} {:o} {}:{} {} {}.{} {xattrs:?} {what}",
                p.strip_prefix(root).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.len() },
                m.mtime(),
                m.mtime_nsec(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_step_on_a_snapshot_written_before_gets_a_stack_of_its_own() {
    let (dir, mnt) = scratch();
    let s = store(dir.path(), "store");
    apply_base(&s);
    s.prepare("step", Some("base")).unwrap();
    let m = s.mount("step", &mnt).unwrap();
    fs::write(mnt.join("before"), b"written over FUSE").unwrap();
    m.unmount().unwrap();
    let m = s.mount_volatile("step", &mnt).unwrap();
    assert_eq!(mount_of(&mnt).0, "overlay");
    assert_eq!(fs::read(mnt.join("before")).unwrap(), b"written over FUSE");
    fs::write(mnt.join("after"), b"written on the overlay").unwrap();
    m.unmount().unwrap();
    // Its FUSE lower showed the snapshot itself, which the fold changed: the stack ended.
    let scratch = dir.path().join("store/steps");
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    assert_eq!(mounts_under(&scratch), 0);
    s.commit("layer", "step").unwrap();
    let mut layer = Vec::new();
    s.diff("layer", &mut layer).unwrap();
    let names = tests::layer::listing(&layer);
    for want in ["before", "after"] {
        assert!(
            names.iter().any(|l| l.starts_with(&format!("{want} "))),
            "{want} in {names:#?}"
        );
    }
}

#[test]
fn what_a_killed_step_left_goes_when_the_store_is_next_opened() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = dir.path().join("store");
    drop(FuseSnapshotter::open_or_create(&root).unwrap());
    // A step's scratch dir as a killed process leaves it: its upper dir with what the step
    // wrote, and its FUSE lower still mounted (a tmpfs stands in for the dead mount).
    let left = root.join("steps/42");
    fs::create_dir_all(left.join("upper/usr")).unwrap();
    fs::write(left.join("upper/usr/f"), b"half a step").unwrap();
    fs::create_dir_all(left.join("lower")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &left.join("lower"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let s = FuseSnapshotter::open_or_create(&root).unwrap();
    let gone = !left.exists();
    if !gone {
        let _ = nix::mount::umount2(&left.join("lower"), nix::mount::MntFlags::MNT_DETACH);
    }
    assert!(gone, "{} is still there", left.display());
    drop(s);
}

#[test]
fn a_step_whose_overlay_cannot_be_made_runs_on_imgfs_alone() {
    let (dir, mnt) = scratch();
    let s = store(dir.path(), "store");
    // A file where the steps' scratch dirs go: the overlay cannot be set up.
    fs::write(dir.path().join("store/steps"), b"in the way").unwrap();
    let (layer, _, kind) = run_step(&s, &mnt);
    assert!(
        kind.starts_with("fuse"),
        "the step ran on imgfs alone: {kind}"
    );
    let names = tests::layer::listing(&layer);
    assert!(
        names.iter().any(|l| l.starts_with("e/.wh..wh..opq ")),
        "{names:#?}"
    );
}
